"""``minisd generate`` through the real command line: every bad input is one line and exit 2 and leaves every
file as it was; the PNG stores every setting, and ``--from`` makes the identical image again.

Each case runs ``python -m minisd generate ... --model RUN`` in a fresh process (the pattern and the checks of
tests/test_cli_errors.py), with the tiny text-to-image run of :mod:`t2i_fixtures` and 2 sampling steps.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minisd.models.model_folder import model_hash
from minisd.pipelines.inputs import sha256_file
from minisd.pipelines.png_settings import PARAMETERS_CHUNK, SETTINGS_CHUNK, read_settings
from minisd.version import __version__
from cli_process import run_minisd
from t2i_fixtures import text_to_image_run  # noqa: F401  (a fixture)
from test_cli_errors import CACHE, assert_one_line_error, snapshot

PROMPT = "a red circle"
FAST = ["--steps", "2"]
SIZE = 32  # the tiny run's images are 32x32 RGB


def minisd_generate(argv: list[str], cwd: Path) -> list[str]:
    """Run ``minisd generate ARGV`` in a process of its own in ``cwd``; it must succeed. Returns its stdout lines."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": CACHE}
    done = run_minisd(["generate", *argv], cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def save_image(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Inputs of every kind in ``tmp_path`` (the working directory of each case): good and bad init images
    and masks, a PNG without settings, a text file, a folder."""
    rng = np.random.default_rng(0)
    left_half = np.zeros((SIZE, SIZE), np.uint8)
    left_half[:, :SIZE // 2] = 255
    paths = {
        "init": save_image(tmp_path / "init.png", rng.integers(0, 256, (SIZE, SIZE, 3))),
        "grey_init": save_image(tmp_path / "grey.png", rng.integers(0, 256, (SIZE, SIZE))),
        "small_init": save_image(tmp_path / "small.png", rng.integers(0, 256, (28, 28, 3))),
        "mask": save_image(tmp_path / "mask.png", left_half),
        "small_mask": save_image(tmp_path / "small_mask.png", left_half[:16, :16]),
        "black_mask": save_image(tmp_path / "black.png", np.zeros((SIZE, SIZE))),
        "plain_png": save_image(tmp_path / "plain.png", np.zeros((SIZE, SIZE))),
        "text": tmp_path / "notes.txt",
        "folder": tmp_path / "folder",
        "existing_out": tmp_path / "existing.png",
    }
    paths["text"].write_text("not an image\n")
    paths["folder"].mkdir()
    paths["existing_out"].write_bytes(b"an earlier result")
    return paths


def settings_of(path: Path) -> dict:
    return read_settings(path)


def pixels_of(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing changed

# (case id, the arguments after "generate", with {name} for a path of the `files` fixture, words of the error)
BAD_INPUTS = [
    ("empty-prompt", ["", "--out", "o.png"], "empty"),
    ("whitespace-prompt", ["   ", "--out", "o.png"], "empty"),
    ("over-long-prompt", [" ".join(["circle"] * 100), "--out", "o.png"], "tokens long"),
    ("unknown-sampler", [PROMPT, "--sampler", "nonsense", "--out", "o.png"], "--sampler"),
    ("zero-steps", [PROMPT, "--steps", "0", "--out", "o.png"], "--steps"),
    ("too-many-steps", [PROMPT, "--steps", "1001", "--out", "o.png"], "1 to 1000"),
    ("nan-guidance", [PROMPT, "--guidance", "nan", "--out", "o.png"], "--guidance"),
    ("infinite-guidance", [PROMPT, "--guidance", "inf", "--out", "o.png"], "--guidance"),
    ("negative-guidance", [PROMPT, "--guidance", "-1", "--out", "o.png"], "--guidance"),
    ("reversed-guidance-interval", [PROMPT, "--guidance-interval", "3", "-1", "--out", "o.png"], "guidance interval"),
    ("zero-strength", [PROMPT, "--init-image", "{init}", "--strength", "0", "--out", "o.png"], "strength"),
    ("strength-above-one", [PROMPT, "--init-image", "{init}", "--strength", "1.5", "--out", "o.png"], "strength"),
    ("nan-strength", [PROMPT, "--init-image", "{init}", "--strength", "nan", "--out", "o.png"], "strength"),
    ("strength-without-init-image", [PROMPT, "--strength", "0.5", "--out", "o.png"], "--init-image"),
    ("missing-init-image", [PROMPT, "--init-image", "nowhere.png", "--out", "o.png"], "does not exist"),
    ("init-image-is-text", [PROMPT, "--init-image", "{text}", "--out", "o.png"], "not an image"),
    ("init-image-is-a-folder", [PROMPT, "--init-image", "{folder}", "--out", "o.png"], "is a folder"),
    ("init-image-of-another-size", [PROMPT, "--init-image", "{small_init}", "--out", "o.png"], "resize it to 32x32"),
    ("missing-mask", [PROMPT, "--init-image", "{init}", "--mask", "nowhere.png", "--out", "o.png"],
     "does not exist"),
    ("mask-of-another-size", [PROMPT, "--init-image", "{init}", "--mask", "{small_mask}", "--out", "o.png"],
     "resize it to 32x32"),
    ("all-black-mask", [PROMPT, "--init-image", "{init}", "--mask", "{black_mask}", "--out", "o.png"],
     "no white pixels"),
    ("mask-without-init-image", [PROMPT, "--mask", "{mask}", "--out", "o.png"], "--init-image"),
    ("from-png-without-settings", ["--from", "{plain_png}", "--out", "o.png"], "no minisd settings"),
    ("from-missing-file", ["--from", "nowhere.png", "--out", "o.png"], "does not exist"),
    ("from-text-file", ["--from", "{text}", "--out", "o.png"], "not an image"),
    ("existing-out", [PROMPT, "--out", "{existing_out}"], "already exists"),
    ("out-not-png", [PROMPT, "--out", "o.jpg"], ".png"),
    ("no-prompt", ["--out", "o.png"], "give a prompt"),
]


@pytest.mark.parametrize("argv, expected", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_changes_no_file(text_to_image_run, files, tmp_path, argv, expected):
    argv = [arg.format(**files) for arg in argv]
    # FAST first: a case's own --steps comes later and wins.
    assert_one_line_error(["generate", *FAST, *argv, "--model", str(text_to_image_run)], tmp_path, expected)


def test_a_model_that_does_not_exist_is_one_line(tmp_path):
    assert_one_line_error(["generate", PROMPT, "--model", str(tmp_path / "no-such-model"), "--out", "o.png"],
                          tmp_path, "no model")


def test_a_separate_file_that_exists_is_refused_before_any_other_is_written(text_to_image_run, tmp_path):
    (tmp_path / "out-1.png").write_bytes(b"an earlier result")
    assert_one_line_error(["generate", PROMPT, "--n", "3", "--separate", "--out", "out.png", *FAST,
                           "--model", str(text_to_image_run)], tmp_path, "out-1.png already exists")


# ---------------------------------------------------------------- success: grids, numbered files, settings


def test_n_4_makes_one_grid_png_holding_every_setting_and_from_remakes_it_identically(text_to_image_run, tmp_path):
    before = set(snapshot(tmp_path))
    printed = minisd_generate([PROMPT, "--n", "4", "--seed", "7", "--guidance", "3", "--sampler", "ddim",
                               "--eta", "1", "--negative-prompt", "a blue square", *FAST,
                               "--model", str(text_to_image_run), "--out", "out.png"], tmp_path)
    assert printed == ["out.png"] and set(snapshot(tmp_path)) - before == {"out.png"}
    with Image.open(tmp_path / "out.png") as image:
        assert image.format == "PNG" and image.size == (2 * SIZE + 3 * 2, 2 * SIZE + 3 * 2)  # 2x2, padding 2
        chunks = dict(image.text)
    settings = json.loads(chunks[SETTINGS_CHUNK])
    assert settings == settings_of(tmp_path / "out.png")
    expected = {"prompt": PROMPT, "negative_prompt": "a blue square", "seed": 7, "steps": 2, "sampler": "ddim",
                "eta": 1.0, "guidance_scale": 3.0, "num_images": 4, "width": SIZE, "height": SIZE,
                "model": str(text_to_image_run), "model_hash": model_hash(text_to_image_run / "model"),
                "minisd_version": __version__}
    assert {key: settings.get(key) for key in expected} == expected
    parameters = chunks[PARAMETERS_CHUNK]
    assert parameters.startswith(f"{PROMPT}\nNegative prompt: a blue square\n")
    for text in ("Steps: 2", "Sampler: ddim", "CFG scale: 3.0", "Seed: 7", "Size: 32x32", "Eta: 1.0",
                 f"Model hash: {settings['model_hash']}", f"Version: minisd {__version__}"):
        assert text in parameters, (text, parameters)

    # ddim with eta 1 draws fresh noise at every step: the seed and eta must both come back from the PNG.
    minisd_generate(["--from", "out.png", "--out", "again.png"], tmp_path)
    assert pixels_of(tmp_path / "again.png") == pixels_of(tmp_path / "out.png")
    assert settings_of(tmp_path / "again.png") == settings


def test_a_samplers_own_options_are_stored_and_from_remakes_the_image_with_them(text_to_image_run, tmp_path):
    # pc draws fresh noise in every corrector and predictor step, so its every option shows in the pixels.
    options = {"corrector_steps": 2, "snr": 0.3, "predictor": "euler_maruyama"}
    minisd_generate([PROMPT, "--sampler", "pc", "--corrector-steps", "2", "--snr", "0.3", "--predictor",
                     "euler_maruyama", *FAST, "--model", str(text_to_image_run), "--out", "pc.png"], tmp_path)
    settings = settings_of(tmp_path / "pc.png")
    assert {key: settings.get(key) for key in options} == options
    with Image.open(tmp_path / "pc.png") as image:
        for text in ("Sampler: pc", "Corrector steps: 2", "Snr: 0.3", "Predictor: euler_maruyama"):
            assert text in image.text[PARAMETERS_CHUNK], (text, image.text[PARAMETERS_CHUNK])
    minisd_generate(["--from", "pc.png", "--out", "again.png"], tmp_path)
    assert pixels_of(tmp_path / "again.png") == pixels_of(tmp_path / "pc.png")
    assert settings_of(tmp_path / "again.png") == settings


def test_a_guidance_interval_is_stored_and_from_remakes_the_image_with_it(text_to_image_run, tmp_path):
    common = [PROMPT, *FAST, "--guidance", "4", "--model", str(text_to_image_run)]
    minisd_generate([*common, "--guidance-interval", "-2", "2", "--out", "interval.png"], tmp_path)
    minisd_generate([*common, "--out", "everywhere.png"], tmp_path)
    assert settings_of(tmp_path / "interval.png")["guidance_interval"] == [-2.0, 2.0]
    assert "guidance_interval" not in settings_of(tmp_path / "everywhere.png")
    assert pixels_of(tmp_path / "interval.png") != pixels_of(tmp_path / "everywhere.png")
    minisd_generate(["--from", "interval.png", "--out", "again.png"], tmp_path)
    assert pixels_of(tmp_path / "again.png") == pixels_of(tmp_path / "interval.png")


def test_from_with_an_explicit_seed_0_uses_seed_0_not_the_pngs(text_to_image_run, tmp_path):
    minisd_generate([PROMPT, "--seed", "5", *FAST, "--model", str(text_to_image_run), "--out", "seed5.png"],
                    tmp_path)
    minisd_generate(["--from", "seed5.png", "--seed", "0", "--out", "again.png"], tmp_path)
    assert settings_of(tmp_path / "again.png") == {**settings_of(tmp_path / "seed5.png"), "seed": 0}
    assert pixels_of(tmp_path / "again.png") != pixels_of(tmp_path / "seed5.png")


def test_n_3_separate_makes_numbered_pngs_and_from_one_remakes_that_image(text_to_image_run, tmp_path):
    before = set(snapshot(tmp_path))
    printed = minisd_generate([PROMPT, "--n", "3", "--separate", *FAST, "--model", str(text_to_image_run),
                               "--out", "out.png"], tmp_path)
    names = ["out-0.png", "out-1.png", "out-2.png"]
    assert printed == names and set(snapshot(tmp_path)) - before == set(names)
    for index, name in enumerate(names):
        with Image.open(tmp_path / name) as image:
            assert image.size == (SIZE, SIZE)
        assert settings_of(tmp_path / name)["image_index"] == index
    assert len({pixels_of(tmp_path / name) for name in names}) == 3  # three different images
    minisd_generate(["--from", "out-1.png", "--out", "again.png"], tmp_path)
    assert pixels_of(tmp_path / "again.png") == pixels_of(tmp_path / "out-1.png")
    assert settings_of(tmp_path / "again.png") == settings_of(tmp_path / "out-1.png")


def test_a_grey_init_image_and_a_mask_work_end_to_end_recorded_with_sha256_and_remade_by_from(
        text_to_image_run, files, tmp_path):
    # The model makes RGB images: a grey init image is read as RGB, not refused.
    minisd_generate([PROMPT, "--init-image", "grey.png", "--mask", "mask.png", "--strength", "0.5", *FAST,
                     "--model", str(text_to_image_run), "--out", "out.png"], tmp_path)
    settings = settings_of(tmp_path / "out.png")
    assert settings["init_image"] == "grey.png" and settings["mask"] == "mask.png" and settings["strength"] == 0.5
    assert settings["init_image_sha256"] == sha256_file(files["grey_init"])
    assert settings["mask_sha256"] == sha256_file(files["mask"])
    with Image.open(tmp_path / "out.png") as image:
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)
    minisd_generate(["--from", "out.png", "--out", "again.png"], tmp_path)
    assert pixels_of(tmp_path / "again.png") == pixels_of(tmp_path / "out.png")
    # A changed init image would make another picture: --from refuses it rather than remake something else.
    save_image(files["grey_init"], np.zeros((SIZE, SIZE)))
    assert_one_line_error(["generate", "--from", "out.png", "--out", "third.png"], tmp_path, "has changed")


def test_words_only_another_shipped_model_read_are_noted_with_that_model(tmp_path, capsys):
    """A shapes prompt on the digits model makes noise: the note names the words and the model that knows them."""
    from minisd.cli import main

    assert main(["generate", "a red circle left of a blue square", "--model", "mnist", "--steps", "1",
                 "--out", str(tmp_path / "o.png"), "--device", "cpu"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert notes == ["minisd: note: 'red', 'circle', 'blue', 'square' are not in the mnist model's vocabulary; "
                     "the shapes model knows them: --model shapes"]
