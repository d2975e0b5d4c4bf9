"""One resolver for what a model name or path means: a shipped name, a model folder, a text-to-image run, a run or
checkpoint of any other model; everything else is one clear error."""

import os
import shutil

import pytest

import minisd
from minisd.errors import CheckpointError, ConfigError
from minisd.pipelines import TextToImagePipeline, resolve_model
from minisd.shipped import DEFAULT_MODEL, SHIPPED_MODELS
from t2i_fixtures import text_to_image_run  # noqa: F401  (a fixture)


def test_a_shipped_name_is_its_model_folder_and_none_is_the_default():
    assert resolve_model("shapes").folder == SHIPPED_MODELS / "shapes"
    assert resolve_model("shapes").name == "shapes" and resolve_model("shapes").is_text_to_image_folder
    assert resolve_model(None).folder == SHIPPED_MODELS / DEFAULT_MODEL
    vae = resolve_model("vae2d")
    assert not vae.is_text_to_image_folder and (vae.folder / "config.json").is_file()


def test_a_text_to_image_run_is_its_model_folder_named_after_the_run(text_to_image_run):
    run = resolve_model(text_to_image_run)
    assert run.folder == text_to_image_run / "model" and run.name == text_to_image_run.name
    assert resolve_model(text_to_image_run / "model").folder == text_to_image_run / "model"
    stage = resolve_model(text_to_image_run / "unet")  # the UNet stage's checkpoint holds the whole model
    assert stage.folder == text_to_image_run / "unet" / "checkpoint" and not stage.is_text_to_image_folder
    assert isinstance(minisd.load(text_to_image_run / "unet"), TextToImagePipeline)


def test_a_folder_of_the_users_is_never_hidden_by_a_shipped_name(tmp_path, monkeypatch):
    shutil.copytree(SHIPPED_MODELS / "vae2d", tmp_path / "mnist")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("mnist").folder.resolve() == (tmp_path / "mnist").resolve()


def test_what_is_no_model_is_one_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"no model 'mnsit': not a folder, and not one of the shipped models"):
        resolve_model("mnsit")
    with pytest.raises(CheckpointError, match="there is no such folder"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a minisd checkpoint"):
        resolve_model(tmp_path / "empty")


def test_commands_take_a_shipped_name_as_they_take_its_folder(tmp_path, monkeypatch, capsys):
    from minisd.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sample", "vae2d", "--n", "4", "--no-progress"]) == 0
    assert (tmp_path / "outputs" / "vae2d" / "samples" / "seed0.png").is_file()  # not inside checkpoints/
    capsys.readouterr()
    # eval reads the shipped checkpoint's own config, which names its dataset (binarised MNIST)
    if os.environ.get("MINISD_DATA"):
        assert main(["eval", "vae2d", "--num-samples", "1", "--limit", "200", "--no-progress"]) == 0
        assert "test ELBO:" in capsys.readouterr().out
