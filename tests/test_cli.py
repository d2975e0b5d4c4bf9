"""The command line: the user's path end to end, and clear refusals."""

import json

import pytest
from PIL import Image

import minisd
from minisd.cli import main
from minisd.data import idx

TINY = ["--set", "data.dataset=digits", "--set", "model.hidden=[32]", "--set", "train.steps=30",
        "--set", "train.batch_size=64", "--set", "train.eval_every=0", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "vae"
    assert main(["train", "--config", "vae2d", *TINY, "--out", str(run)]) == 0
    return run


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "minisd: error:" in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["train", "sample", "eval", "figures", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: minisd" in capsys.readouterr().out


def test_train_writes_checkpoint_metrics_and_result(trained_run):
    assert (trained_run / "checkpoint" / "model.safetensors").is_file()
    assert json.loads((trained_run / "result.json").read_text())["step"] == 30
    assert isinstance(minisd.load(trained_run), minisd.models.VAE)


def test_sample_writes_png_grid_and_same_seed_gives_same_image(trained_run, tmp_path):
    paths = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for path, seed in zip(paths, (1, 1, 2)):
        assert main(["sample", str(trained_run), "--n", "9", "--seed", str(seed), "--out", str(path)]) == 0
    pixels = [Image.open(p).tobytes() for p in paths]
    assert pixels[0] == pixels[1] != pixels[2]


def test_eval_reports_elbo_and_tighter_iwae_bound(trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained_run), "-k", "20", "--json", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    assert results["binarized"] and results["dataset"] == "digits"
    assert results["log_likelihood_iwae_k20_nats"] > results["elbo_nats"]
    assert "ELBO" in capsys.readouterr().out


def test_figures_for_a_2d_vae(trained_run, tmp_path):
    assert main(["figures", "vae", str(trained_run), "--out", str(tmp_path)]) == 0
    for name in ("reconstructions", "latent_space", "latent_manifold", "samples", "training_curve"):
        assert Image.open(tmp_path / f"{name}.png").size[0] > 100


def test_existing_outputs_are_never_overwritten_unless_asked(trained_run, tmp_path, capsys):
    assert "already holds a run" in error_of(capsys, ["train", "--config", "vae2d", *TINY, "--out", str(trained_run)])
    png = tmp_path / "s.png"
    png.write_bytes(b"precious")
    assert "already exists" in error_of(capsys, ["sample", str(trained_run), "--out", str(png)])
    assert png.read_bytes() == b"precious"
    assert main(["sample", str(trained_run), "--out", str(png), "--overwrite"]) == 0
    assert png.read_bytes() != b"precious"


@pytest.mark.parametrize("argv, expected", [
    (["train", "--config", "no-such-preset"], "not one of the presets"),
    (["train", "--config", "vae2d", "--set", "steps=5"], "section.key=value"),
    (["train", "--config", "vae2d", "--set", "train.stepz=5"], "unknown train settings ['stepz']"),
    (["train", "--config", "vae2d", "--set", "model.type=gan"], "unknown model type 'gan'"),
    (["train", "--config", "vae2d", "--set", "data.dataset=cifar"], "unknown dataset 'cifar'"),
    (["train", "--config", "vae2d", "--resume", "--out", "/nonexistent/run"], "nothing to resume"),
    (["sample", "/nonexistent/run"], "no model '/nonexistent/run': there is no such folder"),
    (["figures", "vae"], "needs a checkpoint"),
])
def test_bad_arguments_give_one_clear_line_and_exit_2(argv, expected, capsys, tmp_path):
    if "--out" not in argv and argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "run")]
    assert expected in error_of(capsys, argv)


def test_argparse_rejects_nonpositive_counts(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["sample", "x", "--n", "0"])
    assert exited.value.code == 2
    assert "positive" in capsys.readouterr().err


def test_missing_mnist_is_one_clear_error_naming_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(idx.MIRRORS, "mnist", [(tmp_path / "no-mirror").as_uri() + "/"])
    (tmp_path / "empty").mkdir()
    err = error_of(capsys, ["train", "--config", "vae2d", "--data-dir", str(tmp_path / "empty"),
                            "--out", str(tmp_path / "run")])
    assert "train-images-idx3-ubyte.gz" in err and "MINISD_DATA" in err


def test_resume_continues_to_more_steps(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    argv = ["train", "--config", "vae2d", *TINY, "--set", "train.steps=40", "--out", str(run), "--resume"]
    assert main(argv) == 0
    assert json.loads((run / "result.json").read_text())["step"] == 40


def test_resume_reads_the_saved_config_and_extends_only_the_steps(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["train", "--out", str(run), "--resume", "--set", "train.steps=35", "--no-progress"]) == 0
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert config["step"] == 35 and config["model"]["hidden"] == [32] and config["data"]["dataset"] == "digits"


def test_probability_figures_from_cli_refuse_to_overwrite(tmp_path, capsys):
    assert main(["figures", "probability", "--out", str(tmp_path)]) == 0
    written = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
    assert len(written) == 8
    assert "already exists" in error_of(capsys, ["figures", "probability", "--out", str(tmp_path)])
    assert written == {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}


def test_eval_reports_fid_on_our_classifier_and_refuses_a_mismatched_one(trained_run, tmp_path, capsys):
    classifier = tmp_path / "classifier"
    assert main(["train", "--config", "classifier_mnist", "--set", "data.dataset=digits", "--set", "train.steps=60",
                 "--set", "train.batch_size=64", "--set", "train.eval_every=0", "--no-progress",
                 "--out", str(classifier)]) == 0
    out = tmp_path / "fid.json"
    assert main(["eval", str(trained_run), "--fid-classifier", str(classifier), "--fid-samples", "200",
                 "--skip-likelihood", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["FID-digits"] > 0 and 0 <= results["classes_tv_from_test"] <= 1
    assert "not Inception FID" in capsys.readouterr().out
    config_path = classifier / "checkpoint" / "config.json"
    config = json.loads(config_path.read_text())
    config["data"]["dataset"] = "mnist"
    config_path.write_text(json.dumps(config))
    assert "FID needs a classifier of the model's dataset" in error_of(
        capsys, ["eval", str(trained_run), "--fid-classifier", str(classifier), "--skip-likelihood"])
