"""Autoencoder and VAE: the path's architecture, the ELBO's terms, the importance-weighted bound."""

import math

import pytest
import torch
from torch import nn

from minisd.figures import vae as vae_figures
from minisd.models import VAE, Autoencoder, build_model
from minisd.distributions import sample_normal


def linear_sizes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_path_vae_has_the_classic_784_256_2_architecture():
    vae = VAE(image_shape=(1, 28, 28), latent_dim=2, hidden=[256])
    assert linear_sizes(vae.encoder) == [(784, 256), (256, 4)]  # mean and log-variance, 2 each
    assert linear_sizes(vae.decoder) == [(2, 256), (256, 784)]
    assert [type(m) for m in vae.encoder.modules() if isinstance(m, nn.ReLU)] == [nn.ReLU]


def test_burda_vae_has_two_hidden_layers_of_200_and_50_latents():
    vae = VAE(latent_dim=50, hidden=[200, 200], activation="tanh")
    assert linear_sizes(vae.encoder) == [(784, 200), (200, 200), (200, 100)]
    assert linear_sizes(vae.decoder) == [(50, 200), (200, 200), (200, 784)]


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (1, 8, 8)])
@pytest.mark.parametrize("model_type", ["vae", "autoencoder"])
def test_conv_models_map_images_to_images(model_type, image_shape):
    model = build_model({"type": model_type, "image_shape": image_shape, "latent_dim": 3, "arch": "conv",
                         "width": 8, "depth": 2})
    images = torch.rand(5, *image_shape)
    loss, logs = model.loss({"image": images})
    loss.backward()
    assert loss.shape == () and math.isfinite(loss.item())
    codes = model.encode(images)
    codes = codes[0] if isinstance(codes, tuple) else codes
    assert model.decode(codes).shape == images.shape


def test_elbo_is_reconstruction_minus_prior_kl():
    torch.manual_seed(0)
    vae = VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=[16])
    images = torch.bernoulli(torch.rand(7, 1, 8, 8))
    elbo, reconstruction, prior_kl = vae.elbo(images)
    torch.testing.assert_close(elbo, reconstruction - prior_kl)
    # The prior term in closed form (Luo 2022 eq. 19, Gaussian q against N(0, I)).
    mean, log_var = vae.encode(images)
    expected_kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(-1)
    torch.testing.assert_close(prior_kl, expected_kl)


def test_reparameterised_sample_carries_gradient_to_mean_and_log_variance():
    mean = torch.zeros(4, 2, requires_grad=True)
    log_var = torch.zeros(4, 2, requires_grad=True)
    sample_normal(mean, log_var, num_samples=3).square().sum().backward()
    assert mean.grad.abs().sum() > 0 and log_var.grad.abs().sum() > 0


def test_importance_weighted_bound_tightens_with_more_samples():
    torch.manual_seed(0)
    vae = VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=[16])
    images = torch.bernoulli(torch.rand(64, 1, 8, 8))
    bounds = {}
    for k in (1, 10, 200):
        torch.manual_seed(1)
        bounds[k] = -vae.nll({"image": images}, num_samples=k)["nats"].mean().item()
    assert bounds[1] < bounds[10] < bounds[200]


def test_importance_weighted_bound_is_exact_when_q_is_the_prior_and_decoder_ignores_z():
    # With a decoder that ignores z, log p(x) = log p(x|z) for every z, so every K gives it exactly.
    vae = VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=[16])
    with torch.no_grad():
        for layer in (vae.decoder[0][0], vae.encoder[1][-1]):
            layer.weight.zero_()
        vae.encoder[1][-1].bias.zero_()  # q(z|x) = N(0, I) = p(z)
    images = torch.bernoulli(torch.rand(8, 1, 8, 8))
    logits = vae.decode(torch.zeros(1, 2)).expand(8, -1, -1, -1)
    exact = VAE.bernoulli_log_likelihood(images, logits)
    for k in (1, 50):
        torch.testing.assert_close(-vae.nll({"image": images}, num_samples=k)["nats"], exact)
    bits = vae.nll({"image": images})["bits_per_dim"]
    torch.testing.assert_close(bits, -exact / (64 * math.log(2)))


def test_samples_are_images_in_unit_range_and_repeat_with_the_seed():
    vae = VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=[16])
    first = vae.sample(6, generator=torch.Generator().manual_seed(5))
    again = vae.sample(6, generator=torch.Generator().manual_seed(5))
    other = vae.sample(6, generator=torch.Generator().manual_seed(6))
    assert first.shape == (6, 1, 8, 8) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_autoencoder_cannot_sample_and_reconstructs_in_unit_range():
    model = Autoencoder(image_shape=(1, 8, 8), latent_dim=2, hidden=[16])
    assert not model.can_sample
    out = model.reconstruct(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 1, 8, 8) and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("model_type", ["vae", "autoencoder"])
def test_latent_manifold_is_labelled_in_latent_coordinates_with_z1_growing_upwards(model_type, digits_test, tmp_path,
                                                                                    monkeypatch):
    drawn = []
    monkeypatch.setattr(vae_figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    torch.manual_seed(0)
    model = build_model({"type": model_type, "image_shape": (1, 8, 8), "latent_dim": 2, "hidden": [16]})
    with torch.no_grad():
        vae_figures.latent_manifold_figure(model, digits_test, tmp_path / "manifold.png", side=5)
    ax = drawn[0].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z[0]", "z[1]")
    ticks = {}
    for axis, positions, labels in (("x", ax.get_xticks(), ax.get_xticklabels()),
                                    ("y", ax.get_yticks(), ax.get_yticklabels())):
        values = [float(label.get_text().replace("\N{MINUS SIGN}", "-")) for label in labels]
        assert len(values) >= 3 and values == sorted(values)
        ticks[axis] = dict(zip(values, positions))
    x_positions, y_positions = list(ticks["x"].values()), list(ticks["y"].values())
    assert x_positions == sorted(x_positions)  # z[0] grows to the right ...
    assert y_positions == sorted(y_positions, reverse=True)  # ... and z[1] upwards, as in latent_space_figure
    if model_type == "vae":
        # The middle cell of 5 decodes the prior's median, z = 0: its tick sits at the grid's middle pixel.
        height, width = ax.images[0].get_array().shape
        assert ticks["x"][0.0] == pytest.approx((width - 1) / 2) and ticks["y"][0.0] == pytest.approx((height - 1) / 2)
