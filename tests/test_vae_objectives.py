"""The VAE's two training objectives: the ELBO (KL summed) and the Keras example's loss (KL averaged)."""

import pytest
import torch

import minisd
from minisd.errors import MinisdError
from minisd.models import VAE, build_model
from minisd.train import TrainConfig, load_run_config, train

TINY = dict(image_shape=(1, 8, 8), latent_dim=4, hidden=[16])  # 4 latents: KL / 4 is not KL / 2


def same_vae_on_both_objectives() -> tuple[VAE, VAE, dict[str, torch.Tensor]]:
    """A VAE on the Keras objective, the same weights on the ELBO, and a batch of binary images."""
    torch.manual_seed(0)
    keras = VAE(**TINY, kl_reduction="mean")
    elbo_vae = VAE(**TINY)
    elbo_vae.load_state_dict(keras.state_dict())
    return keras, elbo_vae, {"image": torch.bernoulli(torch.rand(16, 1, 8, 8))}


def test_mean_kl_reduction_trains_on_reconstruction_plus_kl_over_latent_dim_and_logs_the_elbo():
    keras, elbo_vae, batch = same_vae_on_both_objectives()
    torch.manual_seed(1)
    loss, logs = keras.loss(batch)
    torch.manual_seed(1)
    elbo, reconstruction, prior_kl = elbo_vae.elbo(batch["image"])
    torch.manual_seed(1)
    elbo_loss, elbo_logs = elbo_vae.loss(batch)
    assert prior_kl.mean() > 0.1  # else the two objectives could not be told apart
    torch.testing.assert_close(loss, -(reconstruction - prior_kl / 4).mean())
    torch.testing.assert_close(elbo_loss, -elbo.mean())
    for name, value in (("elbo", elbo.mean()), ("reconstruction", -reconstruction.mean()), ("kl", prior_kl.mean())):
        assert logs[name] == pytest.approx(value.item(), rel=1e-6) == elbo_logs[name]


def test_likelihood_bounds_do_not_depend_on_the_training_objective():
    keras, elbo_vae, batch = same_vae_on_both_objectives()
    bounds = []
    for model in (keras, elbo_vae):
        torch.manual_seed(2)
        bounds.append(model.nll(batch, num_samples=10)["nats"])
    torch.testing.assert_close(*bounds)


def test_unknown_kl_reduction_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"\['sum', 'mean'\], not 'max'"):
        VAE(**TINY, kl_reduction="max")
    with pytest.raises(MinisdError, match="kl_reduction"):
        build_model({"type": "vae", "kl_reduction": "max"})


def test_keras_preset_is_the_path_vae_preset_with_the_kl_averaged():
    keras, path_vae = load_run_config("vae2d_keras"), load_run_config("vae2d")
    assert keras["model"].pop("kl_reduction") == "mean"
    assert keras == path_vae


def test_kl_reduction_survives_a_checkpoint_round_trip(tmp_path, digits_train):
    torch.manual_seed(0)
    model = VAE(**TINY, kl_reduction="mean")
    config = TrainConfig(steps=3, batch_size=16, warmup_steps=1, eval_every=0, checkpoint_every=0)
    train(model, digits_train, config, tmp_path, binarize_data=True, progress=False)
    loaded = minisd.load(tmp_path)
    assert loaded.hparams == model.hparams and loaded.hparams["kl_reduction"] == "mean"
    assert loaded.kl_reduction == "mean"
