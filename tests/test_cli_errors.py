"""Every bad input a user can give the command line: one line, exit status 2, and nothing left behind.

Each case runs the real command (``minisd ...`` in a process of its own, forked from this one: see
tests/cli_process.py) and checks that it exits with status 2, prints exactly one line on stderr, starting
``minisd: error:``, with no traceback, and creates or changes no file: the whole temporary folder (run folders,
outputs, the working directory) is compared file by file before and after.
"""

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest

from cli_process import run_minisd
from minisd.cli import main

CACHE = tempfile.mkdtemp(prefix="minisd-test-cache-")
TINY_VAE = ["--config", "vae2d", "--set", "data.dataset=digits", "--set", "model.hidden=[32]",
            "--set", "train.steps=20", "--set", "train.batch_size=64", "--set", "train.eval_every=0", "--no-progress"]
TINY_DIFFUSION = ["--config", "diffusion_mnist", "--set", "data.dataset=digits", "--set", "model.base_channels=8",
                  "--set", "model.channel_mults=[1, 2]", "--set", "train.steps=10", "--set", "train.batch_size=32",
                  "--set", "train.eval_every=0", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny VAE run and a tiny diffusion run on the built-in digits; each case works on its own copy."""
    root = tmp_path_factory.mktemp("trained")
    assert main(["train", *TINY_VAE, "--out", str(root / "vae")]) == 0
    assert main(["train", *TINY_DIFFUSION, "--out", str(root / "diffusion")]) == 0
    return root


def _can_write_into(folder: Path) -> bool:
    try:
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no file can be created in: a 0o555 folder, or /proc where permission bits do not stop root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if _can_write_into(folder):
        folder.chmod(0o755)
        folder = Path("/proc")
        if not folder.is_dir() or _can_write_into(folder):
            pytest.skip("no folder on this machine refuses new files")
    yield folder
    if folder != Path("/proc"):
        folder.chmod(0o755)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file under ``root`` with its size, modification time and content; every folder by name."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir():
            state[key] = ("folder",)
        else:
            state[key] = (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes())
    return state


def assert_one_line_error(argv: list[str], cwd: Path, expected: str) -> None:
    """Run ``minisd ARGV`` in a process of its own in ``cwd`` and check the contract of this file."""
    env = {k: v for k, v in os.environ.items() if k != "MINISD_DATA"}
    env.update(OMP_NUM_THREADS="1", XDG_CACHE_HOME=CACHE)  # no download may land in the user's cache
    before = snapshot(cwd)
    done = run_minisd(argv, cwd=cwd, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("minisd: error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert expected in lines[0], lines[0]
    assert snapshot(cwd) == before, "a failed command created or changed files"


def _copy(trained: Path, name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(trained / name, run)
    return run


# ---------------------------------------------------------------- 1. damaged checkpoints


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))  # nothing is ever unpickled: it must be refused


def _flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(10, 30):  # inside the JSON header that follows the 8-byte length
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {"truncated": _truncate, "empty": _empty, "pickle": _pickle, "flipped-header": _flip_header}


@pytest.mark.parametrize("checksums", [True, False], ids=["sha256-in-config", "format-1-without-checksums"])
@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("weights", ["ema.safetensors", "model.safetensors"])
def test_damaged_weight_file_is_one_line_naming_it(trained, tmp_path, weights, damage, checksums):
    run = _copy(trained, "vae", tmp_path)
    if not checksums:  # a checkpoint written before checksums: the file's own format must catch the damage
        config_path = run / "checkpoint" / "config.json"
        config = json.loads(config_path.read_text())
        del config["files"]
        config_path.write_text(json.dumps(config))
    DAMAGES[damage](run / "checkpoint" / weights)
    raw = ["--raw-weights"] if weights == "model.safetensors" else []
    assert_one_line_error(["sample", str(run), *raw, "--out", str(tmp_path / "s.png")], tmp_path, weights)


@pytest.mark.parametrize("config_text, expected", [
    ("{not json", "not valid JSON"),
    (json.dumps({"step": 20, "data": {"dataset": "digits"}}), "no model section"),
], ids=["not-json", "no-model-key"])
def test_damaged_config_json_is_one_line(trained, tmp_path, config_text, expected):
    run = _copy(trained, "vae", tmp_path)
    (run / "checkpoint" / "config.json").write_text(config_text)
    assert_one_line_error(["sample", str(run), "--out", str(tmp_path / "s.png")], tmp_path, expected)
    assert_one_line_error(["eval", str(run), "--no-progress"], tmp_path, expected)


@pytest.mark.parametrize("damage, expected", [
    (lambda config: config.pop("data"), "names no dataset"),
    (lambda config: config.update(data="mnist"), "data entry is not a table"),
    (lambda config: config.update(step="twenty"), "step is not a whole number"),
    (lambda config: config.update(files=["ema.safetensors"]), "files entry is not a table"),
    (lambda config: config["model"].update(type="os.system"), "unknown model type 'os.system'"),
    (lambda config: config["model"].update(hidden="wide"), "model.hidden must be a list of integers"),
], ids=["no-data", "data-not-a-table", "step", "files", "unregistered-type", "hidden-type"])
def test_config_json_with_a_wrong_entry_is_one_line(trained, tmp_path, damage, expected):
    run = _copy(trained, "vae", tmp_path)
    config_path = run / "checkpoint" / "config.json"
    config = json.loads(config_path.read_text())
    damage(config)
    config_path.write_text(json.dumps(config))
    assert_one_line_error(["eval", str(run), "--no-progress"], tmp_path, expected)


def test_config_whose_layer_sizes_do_not_match_the_weights_is_one_line(trained, tmp_path):
    run = _copy(trained, "vae", tmp_path)
    config_path = run / "checkpoint" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["hidden"] = [64]  # trained with [32]
    config_path.write_text(json.dumps(config))
    assert_one_line_error(["sample", str(run), "--out", str(tmp_path / "s.png")], tmp_path, "does not fit")


def test_tensor_data_overwritten_in_place_is_refused_by_its_checksum(trained, tmp_path):
    run = _copy(trained, "vae", tmp_path)
    weights = run / "checkpoint" / "ema.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:-60] = bytes(40)  # zeros over tensor data: still a valid safetensors file
    weights.write_bytes(bytes(data))
    assert_one_line_error(["sample", str(run), "--out", str(tmp_path / "s.png")], tmp_path, "sha256")


# ---------------------------------------------------------------- 1-2. settings


@pytest.mark.parametrize("setting, expected", [
    ("train.steps=abc", "train.steps must be an integer, got 'abc'"),
    ("train.lr=fast", "train.lr must be a finite number, got 'fast'"),
    ("train.steps=1.5", "train.steps must be an integer, got 1.5"),
    ("train.lr=nan", "train.lr must be a finite number, got nan"),
    ("train.lr=0", "train.lr must be greater than 0"),
    ("train.checkpoint_every=-1", "train.checkpoint_every must be 0 or more"),
    ("train.ema_decay=2", "train.ema_decay must be at least 0 and below 1"),
    ("train.batch_size=0", "train.batch_size must be at least 1"),
    ("data.binarize=maybe", "data.binarize must be true or false"),
    ("model.hidden=abc", "model.hidden must be a list of integers"),
    ("model.latent_dim=-2", "cannot build a vae"),
])
def test_bad_setting_is_one_line_and_leaves_no_run_folder(tmp_path, setting, expected):
    assert_one_line_error(["train", *TINY_VAE, "--set", setting, "--out", str(tmp_path / "run")], tmp_path, expected)


def test_failed_train_does_not_block_the_corrected_command(tmp_path):
    argv = ["train", *TINY_VAE, "--out", str(tmp_path / "run")]
    assert_one_line_error([*argv, "--set", "train.lr=fast"], tmp_path, "train.lr")
    assert main(argv) == 0


# ---------------------------------------------------------------- 1. outputs that cannot be written


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file"


@pytest.mark.parametrize("where", ["read-only", "under-a-file"])
@pytest.mark.parametrize("command", ["sample", "train", "eval --json", "figures vae", "figures probability"])
def test_output_that_cannot_be_written_fails_before_any_work(trained, tmp_path, read_only_dir, where, command):
    run = _copy(trained, "vae", tmp_path)
    folder = read_only_dir if where == "read-only" else _under_a_file(tmp_path)
    argv = {
        "sample": ["sample", str(run), "--out", str(folder / "s.png")],
        "train": ["train", *TINY_VAE, "--out", str(folder / "run")],
        "eval --json": ["eval", str(run), "-k", "5", "--json", str(folder / "e.json"), "--no-progress"],
        "figures vae": ["figures", "vae", str(run), "--out", str(folder / "figures")],
        "figures probability": ["figures", "probability", "--out", str(folder / "figures")],
    }[command]
    assert_one_line_error(argv, tmp_path, "not writable" if where == "read-only" else "is a file, not a folder")


def test_sample_out_without_an_image_extension_fails_before_any_work(trained, tmp_path):
    run = _copy(trained, "vae", tmp_path)
    assert_one_line_error(["sample", str(run), "--out", str(tmp_path / "samples")], tmp_path, "must end in .png")


# ---------------------------------------------------------------- 1-2. arguments


def test_unknown_device_is_one_line(trained, tmp_path):
    run = _copy(trained, "vae", tmp_path)
    assert_one_line_error(["sample", str(run), "--device", "tpu", "--out", str(tmp_path / "s.png")], tmp_path,
                          "unknown device 'tpu'")
    assert_one_line_error(["train", *TINY_VAE, "--device", "tpu", "--out", str(tmp_path / "run")], tmp_path,
                          "unknown device 'tpu'")


@pytest.mark.parametrize("sampler_args, expected", [
    (["--eta", "-5"], "--eta: must be a finite number, 0 or more"),
    (["--sampler", "euler_ancestral", "--eta", "-5"], "--eta: must be a finite number, 0 or more"),
    (["--eta", "nan"], "--eta: must be a finite number, 0 or more"),
    (["--sampler", "ddim", "--eta", "2"], "ddim needs a finite 0 <= eta <= 1"),
    (["--sampler", "ddpm", "--eta", "0.5"], "the ddpm sampler takes no eta"),
    (["--sampler", "no-such-sampler"], "invalid choice: 'no-such-sampler'"),
    (["--steps", "0"], "--steps: must be a positive integer"),
])
def test_bad_sampler_arguments_are_one_line(trained, tmp_path, sampler_args, expected):
    run = _copy(trained, "diffusion", tmp_path)
    assert_one_line_error(["sample", str(run), *sampler_args, "--out", str(tmp_path / "s.png")], tmp_path, expected)


@pytest.mark.parametrize("argv, expected", [
    (["sample", "{vae}", "--seed", "99999999999999999999999"], "--seed: must be from 0 to 2**63 - 1"),
    (["sample", "{vae}", "--seed", "-1"], "--seed: must be from 0"),
    (["eval", "{vae}", "--fid-classifier", "{vae}", "--skip-likelihood"],
     "FID is measured on the features of a classifier"),
    (["eval", "{vae}", "--fid-classifier", "{tmp}/no-classifier"], "--fid-classifier: no model"),
    (["eval", "{vae}", "--bound-steps", "10"], "a vae has none"),
    (["sample", "{vae}", "--steps", "5"], "are for diffusion models"),
    (["train", "--config", "vae2d", "--data-dir", "{tmp}/a-file", "--out", "{tmp}/run"], "is a file, not a folder"),
    (["train", "--config", "{tmp}/a-file", "--out", "{tmp}/run"], "not valid TOML"),
    (["train", "--config", "vae2d", "--set", "model.kl_reduction=max", "--set", "data.dataset=digits",
      "--out", "{tmp}/run"], "kl_reduction must be one of"),
    (["train", "--out", "{tmp}/run"], "--config is needed"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--config", "vae2d", "--resume", "--overwrite", "--out", "{vae}"], "pass one of them"),
])
def test_more_bad_arguments_are_one_line(trained, tmp_path, argv, expected):
    run = _copy(trained, "vae", tmp_path)
    (tmp_path / "a-file").write_bytes(b"\x00\xff not a folder, not TOML")
    argv = [arg.format(vae=run, tmp=tmp_path) for arg in argv]
    assert_one_line_error(argv, tmp_path, expected)


def test_figures_of_another_chapter_are_one_line(trained, tmp_path):
    run = _copy(trained, "vae", tmp_path)
    assert_one_line_error(["figures", "diffusion", str(run), "--out", str(tmp_path / "f")], tmp_path,
                          "holds a vae model")


def test_sampling_that_gives_nan_stops_without_writing_an_image(trained, tmp_path):
    import minisd
    from minisd.train.checkpoint import save_checkpoint

    run = _copy(trained, "diffusion", tmp_path)
    model = minisd.load(run)
    for parameter in model.parameters():
        parameter.data.fill_(float("nan"))  # a model trained into NaN, saved with valid checksums
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    save_checkpoint(run, config={k: config[k] for k in ("data", "train")}, model=model, ema_model=model, step=1)
    assert_one_line_error(["sample", str(run), "--steps", "3", "--no-progress", "--out", str(tmp_path / "s.png")],
                          tmp_path, "NaN or infinite values")


# ---------------------------------------------------------------- 5. no side effects


def test_sample_from_a_missing_run_creates_nothing(tmp_path):
    assert_one_line_error(["sample", str(tmp_path / "no" / "such" / "run")], tmp_path, "there is no such folder")
    assert not (tmp_path / "no").exists()


def test_mistyped_data_folder_is_refused_and_not_created(tmp_path):
    assert_one_line_error(["train", "--config", "vae2d", "--data-dir", str(tmp_path / "dtaa"),
                           "--out", str(tmp_path / "run")], tmp_path, "does not exist")
    assert not (tmp_path / "dtaa").exists()


# ---------------------------------------------------------------- 4. resume continues the saved run


@pytest.mark.parametrize("change, expected", [
    ("train.lr=0.5", "train.lr: 0.002 -> 0.5"),
    ("model.hidden=[64]", "model.hidden: [32] -> [64]"),
    ("data.dataset=mnist", "data.dataset: 'digits' -> 'mnist'"),
])
def test_resume_refuses_a_command_line_that_changes_the_run(trained, tmp_path, change, expected):
    run = _copy(trained, "vae", tmp_path)
    assert_one_line_error(["train", *TINY_VAE, "--set", "train.steps=40", "--set", change, "--out", str(run),
                           "--resume"], tmp_path, expected)


def test_resume_without_more_steps_is_one_line(trained, tmp_path):
    run = _copy(trained, "vae", tmp_path)
    assert_one_line_error(["train", "--out", str(run), "--resume"], tmp_path, "has already trained 20 steps")
