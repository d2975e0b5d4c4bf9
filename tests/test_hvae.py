"""Hierarchical VAE: the ELBO's named terms, the single-level case, the importance-weighted bound, training."""

import math

import pytest
import torch

import minisd
from minisd import models
from minisd.data import binarized_once
from minisd.models import VAE
from minisd.models.hvae import HierarchicalVAE
from minisd.distributions import kl_normal, sample_normal
from minisd.train import TrainConfig, save_checkpoint, train
from minisd.train.loop import evaluate_loss

TWO_LEVELS = dict(image_shape=(1, 8, 8), latent_dims=[6, 3], hidden=[[16], [8]])


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)))


def test_burda_two_layer_architecture_by_default():
    hvae = HierarchicalVAE()
    sizes = [[(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]
             for net in [*hvae.encoders, *hvae.decoders]]
    assert sizes == [[(784, 100), (100, 100), (100, 200)], [(100, 50), (50, 50), (50, 100)],   # q(z1|x), q(z2|z1)
                     [(100, 100), (100, 100), (100, 784)], [(50, 50), (50, 50), (50, 200)]]  # p(x|z1), p(z1|z2)


def test_elbo_terms_have_one_value_per_image_and_sum_to_the_elbo():
    torch.manual_seed(0)
    hvae = HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=[6, 4, 2], hidden=[[16], [8], [8]])
    images = binary_images(5)
    elbo, terms = hvae.elbo(images)
    assert set(terms) == {"reconstruction", "consistency_1", "consistency_2", "prior_matching"}
    assert elbo.shape == (5,) and all(term.shape == (5,) for term in terms.values())
    consistency = terms["consistency_1"] + terms["consistency_2"]
    torch.testing.assert_close(elbo, terms["reconstruction"] - terms["prior_matching"] - consistency)
    assert hvae.log_importance_weights(images, num_samples=7).shape == (7, 5)
    _, logs = hvae.loss({"image": images})
    assert logs["kl"] == pytest.approx(logs["kl_z1"] + logs["kl_z2"] + logs["kl_z3"])


def test_single_level_elbo_is_the_vae_elbo_computed_by_hand():
    torch.manual_seed(0)
    hvae = HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=[3], hidden=[[16]])
    images = binary_images(7)
    torch.manual_seed(1)
    elbo, terms = hvae.elbo(images)

    mean, log_var = hvae.encoders[0](images.flatten(1)).chunk(2, dim=-1)
    torch.manual_seed(1)  # the same noise: the ELBO is a single-sample estimate
    latents = sample_normal(mean, log_var, num_samples=1)[0]
    reconstruction = VAE.bernoulli_log_likelihood(images, hvae.decoders[0](latents).unflatten(-1, (1, 8, 8)))
    prior_kl = kl_normal(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var)).sum(-1)
    assert set(terms) == {"reconstruction", "prior_matching"}  # no level in between, so no consistency term
    torch.testing.assert_close(elbo, reconstruction - prior_kl)


def test_single_level_hvae_with_vae_weights_is_the_vae():
    torch.manual_seed(0)
    vae = VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=[16], activation="tanh")
    hvae = HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=[3], hidden=[[16]])
    # The VAE's MLP encoder is Sequential(Flatten, mlp) and its decoder Sequential(mlp, Unflatten).
    renamed = {k.replace("encoder.1.", "encoders.0.").replace("decoder.0.", "decoders.0."): v
               for k, v in vae.state_dict().items()}
    hvae.load_state_dict({**renamed, "training_steps": hvae.training_steps})
    images = binary_images(7)

    def outputs(model):
        torch.manual_seed(2)
        elbo = model.elbo(images)[0]
        log_weights = model.log_importance_weights(images, num_samples=5)
        return elbo, log_weights, model.sample(4, generator=torch.Generator().manual_seed(3))

    torch.testing.assert_close(outputs(hvae), outputs(vae))


def test_mean_importance_weight_is_the_elbo_in_expectation():
    # elbo() integrates the top level's KL exactly; the weights score the sampled z_T instead.
    # Same expectation, different noise: compare means within their Monte Carlo error.
    torch.manual_seed(0)
    hvae = HierarchicalVAE(**TWO_LEVELS)
    images = binary_images(4)
    num_samples = 4000
    with torch.no_grad():
        elbos = hvae.elbo(images.repeat(num_samples, 1, 1, 1))[0].view(num_samples, 4)
        log_weights = hvae.log_importance_weights(images, num_samples)
    standard_error = ((elbos.var(0) + log_weights.var(0)) / num_samples).sqrt()
    assert ((elbos.mean(0) - log_weights.mean(0)).abs() < 4 * standard_error).all()


def test_importance_weighted_bound_tightens_with_more_samples():
    torch.manual_seed(0)
    hvae = HierarchicalVAE(**TWO_LEVELS)
    images = binary_images(64)
    bounds = {}
    for k in (1, 10, 200):
        torch.manual_seed(1)
        bounds[k] = -hvae.nll({"image": images}, num_samples=k)["nats"].mean().item()
    assert bounds[1] < bounds[10] < bounds[200]
    bits = hvae.nll({"image": images})["bits_per_dim"]
    assert bits.shape == (64,) and (bits > 0).all()


def test_samples_are_images_in_unit_range_and_repeat_with_the_seed():
    hvae = HierarchicalVAE(**TWO_LEVELS)
    first = hvae.sample(6, generator=torch.Generator().manual_seed(5))
    again = hvae.sample(6, generator=torch.Generator().manual_seed(5))
    other = hvae.sample(6, generator=torch.Generator().manual_seed(6))
    assert first.shape == (6, 1, 8, 8) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_training_lowers_the_test_loss(tmp_path, digits_train, digits_test):
    torch.manual_seed(0)
    hvae = HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=[8, 4], hidden=[[32], [16]])
    test_images = binarized_once(digits_test)  # the very images train() evaluates on
    before = evaluate_loss(hvae, test_images, batch_size=500)["loss"]
    config = TrainConfig(steps=200, batch_size=50, lr=3e-3, warmup_steps=10, eval_every=0, checkpoint_every=0)
    result = train(hvae, digits_train, config, tmp_path, eval_set=digits_test, binarize_data=True, progress=False)
    assert math.isfinite(result["eval"]["loss"]) and result["eval"]["loss"] < 0.8 * before


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "hvae", HierarchicalVAE)  # until minisd.models registers it
    torch.manual_seed(0)
    hvae = HierarchicalVAE(**TWO_LEVELS)
    save_checkpoint(tmp_path, config={}, model=hvae, ema_model=hvae)
    loaded = minisd.load(tmp_path)
    assert isinstance(loaded, HierarchicalVAE) and loaded.hparams == hvae.hparams
    samples = [model.sample(3, generator=torch.Generator().manual_seed(4)) for model in (hvae, loaded)]
    torch.testing.assert_close(*samples)


def test_kl_warmup_scales_only_the_rates_and_logs_the_true_elbo():
    torch.manual_seed(0)
    model = HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=[4, 2], hidden=[[8], [8]], kl_warmup_steps=4)
    batch = {"image": torch.bernoulli(torch.rand(16, 1, 8, 8))}
    for step in range(6):
        torch.manual_seed(1)
        loss, logs = model.loss(batch)
        torch.manual_seed(1)
        elbo, terms = model.elbo(batch["image"])
        beta = min(1.0, step / 4)
        expected = -(terms["reconstruction"] - beta * (terms["reconstruction"] - elbo)).mean()
        torch.testing.assert_close(loss, expected)
        assert logs["elbo"] == pytest.approx(elbo.mean().item(), rel=1e-5)
    assert model.training_steps.item() == 6
    model.eval()
    torch.manual_seed(1)
    loss, _ = model.loss(batch)
    torch.manual_seed(1)
    torch.testing.assert_close(loss, -model.elbo(batch["image"])[0].mean())  # evaluation: the plain bound
