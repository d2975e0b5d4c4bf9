"""The chapter "Score-based generative models": its figures, from the library and from ``minisd figures score``."""

import functools

import pytest
from PIL import Image

import minisd
import minisd.figures.score as score_figures
from minisd.cli import main
from minisd.figures.score import FIGURE_NAMES, make_score_figures

TINY_SCORE = ["--config", "score_toy", "--set", "data.dataset=gmm", "--set", "data.num_images=512",
              "--set", "model.hidden=[32, 32]", "--set", "model.embedding_dim=16", "--set", "train.steps=30",
              "--set", "train.batch_size=64", "--set", "train.log_every=10", "--no-progress"]
# Few grid points, steps and samples: the pictures are coarse, every code path runs.
SMALL = {"grid_size": 6, "steps": 6, "num_samples": 64}


@pytest.fixture(scope="module")
def score_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("score") / "gmm"
    assert main(["train", *TINY_SCORE, "--out", str(run)]) == 0
    return run


def assert_figures(paths: dict, folder) -> None:
    assert list(paths) == list(FIGURE_NAMES)
    for name, path in paths.items():
        assert path == folder / f"{name}.png"
        with Image.open(path) as image:
            assert image.width > 300 and image.height > 200


def test_score_figures_are_drawn_from_a_trained_model(score_run, tmp_path):
    paths = make_score_figures(tmp_path / "figures", model=minisd.load(score_run), **SMALL)
    assert_figures(paths, tmp_path / "figures")


def test_score_figures_without_a_model_train_one_on_the_gmm_toy_first(tmp_path):
    paths = make_score_figures(tmp_path, train_steps=5, train_overrides=("model.hidden=[16]", "data.num_images=256"),
                               **SMALL)
    assert_figures(paths, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{name}.png" for name in FIGURE_NAMES)


def test_score_figures_keep_existing_figures_unless_overwrite(score_run, tmp_path):
    (tmp_path / "density.png").write_bytes(b"mine")
    with pytest.raises(minisd.MinisdError, match="already exists"):
        make_score_figures(tmp_path, model=minisd.load(score_run), **SMALL)
    assert (tmp_path / "density.png").read_bytes() == b"mine"
    assert not (tmp_path / "score_field.png").exists()  # refused before any work


def test_cli_figures_score_writes_the_four_figures(score_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(score_figures, "make_score_figures", functools.partial(make_score_figures, **SMALL))
    out = tmp_path / "figures"
    assert main(["figures", "score", str(score_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{name}.png" for name in FIGURE_NAMES)
    printed = capsys.readouterr().out
    assert all(f"{name}: {out / name}.png" in printed for name in FIGURE_NAMES)


def test_cli_figures_score_refuses_a_model_that_is_not_a_score_model(tmp_path, capsys):
    vae = tmp_path / "vae"
    assert main(["train", "--config", "vae2d", "--set", "data.dataset=digits", "--set", "model.hidden=[16]",
                 "--set", "train.steps=2", "--set", "train.batch_size=16", "--set", "train.eval_every=0",
                 "--no-progress", "--out", str(vae)]) == 0
    capsys.readouterr()
    assert main(["figures", "score", str(vae), "--out", str(tmp_path / "figures")]) == 2
    err = capsys.readouterr().err
    assert "holds a vae model, not one that minisd figures score draws" in err and "Traceback" not in err
    assert not (tmp_path / "figures").exists()
