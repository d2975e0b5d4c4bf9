"""The shipped evaluation classifier: one classifier (checkpoints/classifier_mnist) behind every FID-MNIST of the
docs, named by ``--fid-classifier`` alone or by its name, and ``minisd eval`` of a classifier (its accuracy)."""

import json
from pathlib import Path

import pytest
import torch
from real_data import REAL_DATA_DIR, needs_real_data

import minisd
from minisd.cli import main
from minisd.eval.report import check_adherence_request
from minisd.models.classifier import Classifier
from minisd.shipped import SHIPPED_CLASSIFIERS, shipped_models

TINY_VAE = ["--set", "data.dataset=digits", "--set", "model.hidden=[32]", "--set", "train.steps=30",
            "--set", "train.batch_size=64", "--set", "train.eval_every=0", "--no-progress"]


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "minisd: error:" in err and "Traceback" not in err
    return err


pytestmark = pytest.mark.xdist_group("test_evaluation_classifier")  # one worker: its module fixtures are trained once


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """A tiny VAE and a tiny classifier of the built-in digits (no classifier of digits is shipped)."""
    folder = tmp_path_factory.mktemp("evaluation_classifier")
    assert main(["train", "--config", "vae2d", *TINY_VAE, "--out", str(folder / "vae")]) == 0
    assert main(["train", "--config", "classifier_mnist", "--set", "data.dataset=digits", "--set", "train.steps=60",
                 "--set", "train.batch_size=64", "--set", "train.eval_every=0", "--no-progress",
                 "--out", str(folder / "classifier")]) == 0
    return folder / "vae", folder / "classifier"


def test_the_shipped_mnist_classifier_is_a_classifier_of_mnist():
    classifier = minisd.load(SHIPPED_CLASSIFIERS["mnist"])
    assert isinstance(classifier, Classifier) and not classifier.training
    assert classifier.hparams["image_shape"] == [1, 28, 28] and classifier.hparams["num_classes"] == 10
    config = json.loads((shipped_models()["classifier_mnist"] / "config.json").read_text())
    assert config["data"]["dataset"] == "mnist" and config["data"]["binarize"] is False


@needs_real_data
def test_eval_of_the_shipped_classifier_reports_its_mnist_test_accuracy(tmp_path, capsys):
    out = tmp_path / "accuracy.json"
    assert main(["eval", "classifier_mnist", "--limit", "2000", "--data-dir", str(REAL_DATA_DIR),
                 "--json", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    assert results["num_images"] == 2000 and results["accuracy"] > 0.98 and results["cross_entropy_nats"] < 0.1
    assert "test accuracy:" in capsys.readouterr().out


def test_eval_of_a_classifier_counts_what_its_predictions_get_right(digits_runs, digits_test, tmp_path):
    _, classifier_run = digits_runs
    out = tmp_path / "accuracy.json"
    assert main(["eval", str(classifier_run), "--json", str(out), "--no-progress"]) == 0
    classifier = minisd.load(classifier_run)
    expected = (classifier.predict(digits_test.images) == digits_test.labels).float().mean().item()
    results = json.loads(out.read_text())
    assert results["num_images"] == len(digits_test) and results["accuracy"] == pytest.approx(expected, abs=1e-6)
    logits = classifier.logits(digits_test.images)
    assert results["cross_entropy_nats"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, digits_test.labels).item(), rel=1e-4)


def test_fid_classifier_alone_means_the_one_shipped_for_the_models_dataset(digits_runs, capsys):
    vae, _ = digits_runs
    err = error_of(capsys, ["eval", str(vae), "--fid-classifier", "--skip-likelihood"])
    assert "--fid-classifier: no classifier of digits is shipped" in err


@pytest.mark.parametrize("classifier, message", [
    ("{vae}", "FID is measured on the features of a classifier"),
    ("mnist", "a text-to-image model, not a classifier"),
    ("no_such_classifier", "--fid-classifier: no model 'no_such_classifier'"),
    ("classifier_mnist", "the classifier was trained on mnist, the model on digits"),
    ("{classifier} --fid-samples 5000", "the digits test split has 297"),
])
def test_a_wrong_fid_request_is_refused_before_sampling(classifier, message, digits_runs, capsys):
    vae, classifier_run = digits_runs
    argument = classifier.format(vae=vae, classifier=classifier_run).split()
    assert message in error_of(capsys, ["eval", str(vae), "--skip-likelihood", "--fid-classifier", *argument])


def test_a_shipped_classifier_name_measures_the_same_fid_as_its_folder(digits_runs, tmp_path, monkeypatch):
    """A name goes through the resolver: a classifier run shipped under a name gives the FID of its folder."""
    import minisd.shipped

    vae, classifier_run = digits_runs
    shipped = tmp_path / "checkpoints"
    (shipped / "classifier_digits").parent.mkdir()
    (shipped / "classifier_digits").symlink_to(classifier_run / "checkpoint")
    monkeypatch.setattr(minisd.shipped, "SHIPPED_MODELS", shipped)
    monkeypatch.setitem(minisd.shipped.SHIPPED_CLASSIFIERS, "digits", "classifier_digits")
    results = {}
    for name, argument in (("folder", [str(classifier_run)]), ("name", ["classifier_digits"]), ("auto", [])):
        out = tmp_path / f"{name}.json"
        assert main(["eval", str(vae), "--skip-likelihood", "--fid-samples", "100", "--fid-classifier", *argument,
                     "--json", str(out), "--no-progress"]) == 0
        results[name] = json.loads(out.read_text())["FID-digits"]
    assert results["folder"] == results["name"] == results["auto"] > 0


def test_eval_of_a_classifier_refuses_the_options_of_generative_models(digits_runs, capsys):
    _, classifier_run = digits_runs
    for option in (["--steps", "3"], ["--fid-classifier"], ["--bound-steps", "10"]):
        assert "not for a classifier" in error_of(capsys, ["eval", str(classifier_run), *option])


def test_prompt_adherence_of_an_mnist_model_is_read_by_the_shipped_classifier_by_default():
    folder = shipped_models()["mnist"]
    dataset, classifier = check_adherence_request(folder, classifier=None, json_path=None, overwrite=False,
                                                  unsupported_options=[])
    assert (dataset, Path(classifier)) == ("mnist", shipped_models()["classifier_mnist"])
    assert check_adherence_request(folder, classifier="classifier_mnist", json_path=None, overwrite=False,
                                   unsupported_options=[]) == (dataset, classifier)
