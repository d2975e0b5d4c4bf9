"""Evaluation with a classifier: the classifier itself, FID-MNIST/FID-Fashion, class histograms."""

import math

import pytest
import scipy.linalg
import torch

import minisd
import minisd.models
from minisd.eval.class_histogram import class_balance, class_distribution, label_distribution, total_variation
from minisd.eval.fid import feature_statistics, fid, frechet_distance
from minisd.models.classifier import Classifier
from minisd.train import TrainConfig, load_run_config, train

TINY = dict(image_shape=(1, 8, 8), channels=[8, 16], hidden=32, dropout=0.1)


def test_classifier_is_registered_for_checkpoints():
    assert minisd.models.MODELS["classifier"] is Classifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_train, digits_test):
    """A tiny classifier trained on the 8x8 digits for ~1 s through the training loop: (result, EMA classifier)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("classifier")
    config = TrainConfig(steps=300, batch_size=50, lr=3e-3, warmup_steps=20, eval_every=0, checkpoint_every=0,
                         log_every=100)
    result = train(Classifier(**TINY), digits_train, config, run_dir, eval_set=digits_test, progress=False,
                   device="cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(minisd.models.MODELS, "classifier", Classifier)
        classifier = minisd.load(run_dir)  # the EMA weights, in eval mode
    return result, classifier


def add_noise(images: torch.Tensor, std: float) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    return (images + std * noise).clamp(0, 1)


# --- The classifier ---------------------------------------------------------------------------------


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (1, 8, 8)])
def test_classifier_maps_images_to_features_logits_and_labels(image_shape):
    classifier = Classifier(image_shape=image_shape, channels=[4, 8], hidden=16).eval()
    images = torch.rand(5, *image_shape)
    assert classifier.features(images).shape == (5, classifier.num_features) == (5, 16)
    assert classifier.logits(images).shape == (5, 10)
    labels = classifier.predict(images)
    assert labels.dtype == torch.int64 and torch.equal(labels, classifier.logits(images).argmax(1))


def test_classifier_learns_digits(trained, digits_test):
    result, classifier = trained
    assert result["eval"]["accuracy"] >= 0.9
    # The loop's evaluation averages per-batch accuracies over the test set: it is the test accuracy.
    test_accuracy = (classifier.predict(digits_test.images) == digits_test.labels).double().mean().item()
    assert test_accuracy == pytest.approx(result["eval"]["accuracy"], abs=1e-6)


def test_features_do_not_depend_on_dropout(trained, digits_test):
    _, classifier = trained
    images = digits_test.images[:20]
    torch.testing.assert_close(classifier.train().features(images), classifier.eval().features(images))


@pytest.mark.parametrize("preset, dataset", [("classifier_mnist", "mnist"), ("classifier_fashion", "fashion-mnist")])
def test_classifier_presets_train_on_grey_levels_of_their_dataset(preset, dataset):
    config = load_run_config(preset)
    assert config["data"] == {"dataset": dataset, "binarize": False}
    model = minisd.models.build_model({**config["model"], "image_shape": [1, 28, 28]})
    assert isinstance(model, Classifier) and model.num_features == 128


# --- The Fréchet distance -----------------------------------------------------------------------------


def random_covariance(dim: int, seed: int) -> torch.Tensor:
    factor = torch.randn(dim, 2 * dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return factor @ factor.T / (2 * dim)


def test_frechet_distance_of_identical_gaussians_is_zero():
    mean, cov = torch.randn(6, dtype=torch.float64), random_covariance(6, seed=0)
    assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0, abs=1e-10)


def test_frechet_distance_of_identical_singular_gaussians_is_zero():
    # Rank 2 in 6 dimensions: the case where the square root of cov1 cov2 is hardest to take.
    factor = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, cov = torch.zeros(6, dtype=torch.float64), factor @ factor.T
    assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0, abs=1e-7)


def test_frechet_distance_matches_closed_form_for_commuting_covariances():
    # Diagonal covariances commute, and then d^2 = ||mu1 - mu2||^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2.
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([0.5, 1.0, 1.0])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = (mu1 - mu2).square().sum() + (var1.sqrt() - var2.sqrt()).square().sum()  # 9.25 + 5
    assert frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2)) == pytest.approx(expected.item(), rel=1e-12)
    assert expected.item() == pytest.approx(14.25)


def test_frechet_distance_matches_scipy_sqrtm_for_non_commuting_covariances():
    # The textbook computation, with the matrix square root of the non-symmetric product cov1 cov2.
    mu1, mu2 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    cov1, cov2 = random_covariance(5, seed=1), random_covariance(5, seed=2)
    cross_term = scipy.linalg.sqrtm((cov1 @ cov2).numpy()).real.trace()
    expected = ((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace()).item() - 2 * cross_term
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_accepts_numpy_and_is_symmetric_and_positive():
    mu1, mu2 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    cov1, cov2 = random_covariance(5, seed=1), random_covariance(5, seed=2)
    forward = frechet_distance(mu1.numpy(), cov1.numpy(), mu2.numpy(), cov2.numpy())
    assert forward == pytest.approx(frechet_distance(mu2, cov2, mu1, cov1), rel=1e-10)
    assert forward > 0
    # Equal means, different covariances: only the covariance term is left, still positive.
    assert frechet_distance(mu1, cov1, mu1, cov2) > 0


# --- FID with a trained classifier --------------------------------------------------------------------


def test_feature_statistics_are_the_mean_and_covariance_of_the_features(trained, digits_test):
    _, classifier = trained
    mean, cov = feature_statistics(classifier, digits_test.images, batch_size=64)  # several batches
    features = classifier.features(digits_test.images).double()
    torch.testing.assert_close(mean, features.mean(0))
    torch.testing.assert_close(cov, torch.cov(features.T))


def test_fid_of_a_set_with_itself_is_near_zero(trained, digits_test):
    _, classifier = trained
    # Shuffled, so the two sets' statistics are summed in another order and are not bit-identical.
    shuffled = digits_test.images[torch.randperm(len(digits_test), generator=torch.Generator().manual_seed(0))]
    self_distance = fid(classifier, digits_test.images, shuffled)
    scale = feature_statistics(classifier, digits_test.images)[1].trace().item()  # typical size of the terms
    assert scale > 1  # the features are not trivially small, so near zero means something
    assert self_distance < 1e-8 * scale


def test_fid_between_two_real_samples_is_far_below_fid_to_noisy_images(trained, digits_train, digits_test):
    _, classifier = trained
    real_to_real = fid(classifier, digits_train.images, digits_test.images)
    real_to_noisy = fid(classifier, digits_train.images, add_noise(digits_test.images, std=0.5))
    assert 0 < real_to_real < real_to_noisy / 5


def test_fid_grows_when_images_are_corrupted_with_more_noise(trained, digits_test):
    _, classifier = trained
    distances = [fid(classifier, digits_test.images, add_noise(digits_test.images, std)) for std in (0.1, 0.3, 0.6)]
    assert distances[0] < distances[1] < distances[2]


def test_fid_grows_when_classes_go_missing(trained, digits_train, digits_test):
    # Sharp real digits, but only 0-4: the mode collapse FID is meant to catch.
    _, classifier = trained
    half_the_classes = digits_train.images[digits_train.labels < 5]
    assert fid(classifier, half_the_classes, digits_test.images) > 3 * fid(classifier, digits_train.images,
                                                                            digits_test.images)


# --- Class histograms ---------------------------------------------------------------------------------


def test_class_distribution_sums_to_one_and_counts_predictions(trained, digits_test):
    _, classifier = trained
    distribution = class_distribution(classifier, digits_test.images, batch_size=64)
    assert distribution.shape == (10,) and distribution.sum().item() == pytest.approx(1)
    counts = torch.bincount(classifier.predict(digits_test.images), minlength=10)
    torch.testing.assert_close(distribution, counts.double() / len(digits_test))


def test_total_variation_of_one_class_against_uniform_is_nine_tenths():
    one_class = torch.zeros(10).index_fill_(0, torch.tensor([3]), 1.0)
    assert total_variation(one_class, torch.full((10,), 0.1)) == pytest.approx(0.9)
    assert total_variation(one_class, one_class) == 0


def test_class_balance_flags_samples_of_a_single_class(trained, digits_test):
    _, classifier = trained
    real = class_balance(classifier, digits_test.images, test_labels=digits_test.labels)
    zeros_only = class_balance(classifier, digits_test.images[digits_test.labels == 0], test_labels=digits_test.labels)
    assert real["tv_from_test"] < 0.1 and real["tv_from_uniform"] < 0.15
    assert zeros_only["tv_from_uniform"] > 0.8 and zeros_only["tv_from_test"] > 0.8
    assert math.isclose(label_distribution(digits_test.labels, 10).sum().item(), 1)


def test_evaluations_give_the_model_every_key_of_the_datasets_batches():
    # Conditioning must reach the model in evaluation as in training: labels, captions, attributes.
    from torch import nn

    from minisd.data.shapes import make_shapes
    from minisd.eval import evaluate_likelihood
    from minisd.models.base import Model
    from minisd.train.loop import evaluate_loss

    class Spy(Model):
        model_type = "spy"

        def __init__(self):
            super().__init__()
            self.weight, self.seen = nn.Parameter(torch.zeros(())), []

        def loss(self, batch):
            self.seen.append(set(batch))
            return self.weight * 0, {"loss": 0.0}

        def nll(self, batch, num_samples=1):
            self.seen.append(set(batch))
            zeros = torch.zeros(len(batch["image"]))
            return {"nats": zeros, "bits_per_dim": zeros}

    spy, data = Spy(), make_shapes(20, seed=0)
    evaluate_loss(spy, data, batch_size=8)
    evaluate_likelihood(spy, data, batch_size=8)
    assert len(spy.seen) == 6 and all(keys >= {"image", "label", "caption", "attributes"} for keys in spy.seen)


def test_evaluate_loss_with_a_limit_averages_the_first_examples_only():
    """train.eval_images: a short run's evaluation on the first N test images (26% of a 60-step-per-stage
    text-to-image run was its stages' evaluations on all 10,000)."""
    from torch import nn

    from minisd.data.shapes import make_shapes
    from minisd.models.base import Model
    from minisd.train.loop import evaluate_loss

    class MeanPixel(Model):
        model_type = "mean_pixel"

        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(()))

        def loss(self, batch):
            value = batch["image"].mean()
            return value, {"loss": value.item()}

    model, data = MeanPixel(), make_shapes(20, seed=0)
    assert evaluate_loss(model, data, batch_size=8, limit=12)["loss"] == pytest.approx(data.images[:12].mean().item())
    assert evaluate_loss(model, data, batch_size=8, limit=100)["loss"] == pytest.approx(data.images.mean().item())
