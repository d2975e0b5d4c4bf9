"""The latent autoencoder of Stable Diffusion: factor-4 latents of 4 channels, its KL term, the latent scale,
the latent cache, and the reconstruction report."""

import math

import pytest
import torch

from minisd.errors import ConfigError
from minisd.eval.reconstruction import reconstruction_report
from minisd.models import MODELS, Classifier, build_model
from minisd.models.latent_autoencoder import LatentAutoencoder, encode_dataset
from minisd.train.config import load_run_config

TINY = dict(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1)  # 8x8 digits -> 4x2x2 latents


@pytest.mark.parametrize(("image_shape", "latent_shape"), [((1, 28, 28), (4, 7, 7)), ((3, 32, 32), (4, 8, 8))])
def test_encoder_shrinks_each_side_by_4_into_4_channels_and_decoder_restores_the_image_shape(image_shape,
                                                                                                latent_shape):
    model = LatentAutoencoder(image_shape=image_shape, base_channels=8)
    images = torch.rand(2, *image_shape)
    latents = model.encode(images)
    assert model.latent_shape == latent_shape
    assert latents.shape == (2, *latent_shape)
    assert model.decode(latents).shape == (2, *image_shape)
    assert model.reconstruct(images).shape == (2, *image_shape)


def test_decode_maps_model_space_to_the_unit_interval_and_clamps_beyond_it(monkeypatch):
    model = LatentAutoencoder(image_shape=(1, 8, 8), **TINY)
    decoded = torch.linspace(-3, 3, 64).view(1, 1, 8, 8)  # the decoder's raw output, in model space [-1, 1]
    monkeypatch.setattr(model.decoder, "forward", lambda latents: decoded)
    images = model.decode(torch.zeros(1, *model.latent_shape))
    torch.testing.assert_close(images, ((decoded + 1) / 2).clamp(0, 1))
    assert images.min() == 0 and images.max() == 1


@pytest.mark.parametrize("bad", [dict(image_shape=(1, 30, 30)), dict(base_channels=12), dict(reconstruction="l2"),
                                 dict(kl_weight=-1.0), dict(latent_channels=0), dict(channel_mults=())])
def test_unusable_hyper_parameters_are_refused_with_a_config_error(bad):
    with pytest.raises(ConfigError):
        LatentAutoencoder(**{"base_channels": 8, **bad})


@pytest.mark.parametrize("reconstruction", ["l1", "mse"])
def test_kl_term_is_the_closed_form_gaussian_kl_and_the_loss_adds_it_with_its_weight(reconstruction, monkeypatch):
    model = LatentAutoencoder(image_shape=(1, 8, 8), kl_weight=0.25, reconstruction=reconstruction, **TINY)
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(3, *model.latent_shape, generator=generator)
    logvar = torch.randn(3, *model.latent_shape, generator=generator)
    monkeypatch.setattr(model, "posterior", lambda images: (mean, logvar))

    loss, logs = model.loss({"image": torch.rand(3, 1, 8, 8)})

    # KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2), summed over the 16 elements.
    expected_kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
    assert logs["kl"] == pytest.approx(expected_kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx(logs["reconstruction"] + 0.25 * logs["kl"], rel=1e-5)


def test_loss_falls_and_reconstructions_sharpen_when_overfitting_sixteen_digits(digits_train):
    torch.manual_seed(0)
    model = LatentAutoencoder(image_shape=(1, 8, 8), **TINY)
    batch = {"image": digits_train.images[:16]}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first_loss, _ = model.loss(batch)
    for _ in range(100):
        loss, logs = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logs["loss"] < 0.15 * first_loss.item()
    assert reconstruction_report(model, batch["image"])["mse"] < 0.02  # their mean image scores 0.07


def test_fitted_latent_scale_gives_encoded_latents_unit_std_and_survives_a_state_dict_round_trip(digits_train):
    torch.manual_seed(0)
    model = LatentAutoencoder(image_shape=(1, 8, 8), **TINY)
    images = digits_train.images[:200]
    unscaled_std = model.encode(images).std().item()

    scale = model.fit_latent_scale(images, batch_size=64)

    assert scale == pytest.approx(1 / unscaled_std, rel=1e-4)
    assert model.encode(images).std().item() == pytest.approx(1.0, rel=1e-4)
    assert "latent_scale" in model.state_dict()
    rebuilt = LatentAutoencoder(**model.hparams)
    assert rebuilt.latent_scale.item() == 1.0
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.latent_scale.item() == scale
    torch.testing.assert_close(rebuilt.encode(images), model.encode(images))


def test_decode_undoes_the_latent_scale(digits_train):
    torch.manual_seed(0)
    model = LatentAutoencoder(image_shape=(1, 8, 8), **TINY)
    images = digits_train.images[:50]
    before = model.reconstruct(images)
    model.fit_latent_scale(images)
    assert model.latent_scale.item() != 1.0
    torch.testing.assert_close(model.reconstruct(images), before)


def test_sampled_encoding_draws_from_the_posterior_with_the_given_generator(digits_train):
    model = LatentAutoencoder(image_shape=(1, 8, 8), **TINY)
    images = digits_train.images[:4]
    first = model.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    again = model.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, model.encode(images))


def test_encode_dataset_matches_encode_on_the_whole_batch_and_keeps_the_training_mode(digits_train):
    model = LatentAutoencoder(image_shape=(1, 8, 8), **TINY).train()
    images = digits_train.images[:10]
    cached = encode_dataset(model, images, batch_size=3)  # chunks of 3, 3, 3, 1
    assert model.training
    assert not cached.requires_grad
    torch.testing.assert_close(cached, model.encode(images).detach())


def test_reconstruction_report_gives_mse_psnr_and_fid_of_known_reconstructions(digits_test):
    class ShiftedCopy(torch.nn.Module):
        """An "autoencoder" that returns each image brightened by a known amount."""

        def __init__(self, shift: float):
            super().__init__()
            self.shift = torch.nn.Parameter(torch.tensor(shift))

        def reconstruct(self, images):
            return images + self.shift

    torch.manual_seed(0)
    classifier = Classifier(image_shape=(1, 8, 8), channels=[4, 8], hidden=16).eval()
    images = digits_test.images[:200]

    perfect = reconstruction_report(ShiftedCopy(0.0), images, classifier, batch_size=64)
    shifted = reconstruction_report(ShiftedCopy(0.1), images, classifier, batch_size=64)

    assert perfect["mse"] == 0 and perfect["psnr"] == math.inf and perfect["fid"] == pytest.approx(0, abs=1e-6)
    assert shifted["mse"] == pytest.approx(0.01, rel=1e-4)
    assert shifted["psnr"] == pytest.approx(20.0, rel=1e-4)
    assert shifted["fid"] > 0 and shifted["num_images"] == 200


def test_autoencoder_is_registered_for_checkpoints():
    assert MODELS["latent_autoencoder"] is LatentAutoencoder


@pytest.mark.parametrize(("preset", "image_shape", "latent_shape"),
                         [("latent_autoencoder_mnist", (1, 28, 28), (4, 7, 7)),
                          ("latent_autoencoder_shapes", (3, 32, 32), (4, 8, 8))])
def test_presets_validate_and_build_factor_4_autoencoders(preset, image_shape, latent_shape):
    config = load_run_config(preset)
    model = build_model({**config["model"], "image_shape": list(image_shape)})  # the run sets it from the data
    assert isinstance(model, LatentAutoencoder) and model.latent_shape == latent_shape
