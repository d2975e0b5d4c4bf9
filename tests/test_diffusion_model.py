"""The diffusion model end to end: train, sample with every sampler, bound, through the CLI and the API."""

import json

import pytest
import torch
from PIL import Image

import minisd
from minisd.cli import main
from minisd.data import idx
from minisd.diffusion.samplers import SAMPLERS
from minisd.models import DiffusionModel

TINY = ["--set", "data.dataset=digits", "--set", "model.base_channels=8", "--set", "model.channel_mults=[1, 2]",
        "--set", "train.steps=20", "--set", "train.batch_size=32", "--set", "train.eval_every=0", "--no-progress"]


pytestmark = pytest.mark.xdist_group("test_diffusion_model")  # one worker: its module fixtures are trained once


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("diffusion") / "run"
    assert main(["train", "--config", "diffusion_mnist", *TINY, "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_from_the_command_line_and_repeats_with_the_seed(diffusion_run, tmp_path, sampler):
    # The ode sampler's default dopri5 spends hundreds of evaluations on the barely trained network's flow; rk4 runs
    # the same path from the command line in 9 (dopri5's is run by tests/test_score_cli.py, on a toy).
    own_args = ["--ode-method", "rk4"] if sampler == "ode" else []
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for path in paths:
        assert main(["sample", str(diffusion_run), "--sampler", sampler, "--steps", "3", "--n", "4",
                     "--seed", "7", *own_args, "--out", str(path)]) == 0
    assert Image.open(paths[0]).tobytes() == Image.open(paths[1]).tobytes()


def test_sampling_shows_its_progress_over_every_batch_unless_asked_not_to(diffusion_run, tmp_path, capsys):
    argv = ["sample", str(diffusion_run), "--steps", "3", "--n", "300"]
    assert main([*argv, "--out", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert "sampling 300 images (dpmpp_2m_sde, 3 steps)" in err and "/6 [" in err  # 2 batches of 3 steps
    assert main([*argv, "--out", str(tmp_path / "b.png"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("vae") / "run"
    assert main(["train", "--config", "vae2d", "--set", "data.dataset=digits", "--set", "train.steps=5",
                 "--set", "train.batch_size=32", "--no-progress", "--out", str(run)]) == 0
    return run


def test_vae_refuses_sampler_options(vae_run, tmp_path, capsys):
    assert main(["sample", str(vae_run), "--steps", "5", "--out", str(tmp_path / "x.png")]) == 2
    assert "for diffusion models" in capsys.readouterr().err


@pytest.mark.parametrize("prediction", ["x0", "eps", "v", "score"])
@pytest.mark.parametrize("weighting", ["simple", "min_snr", "vlb"])
def test_every_parameterisation_and_weighting_gives_a_finite_loss_and_gradient(prediction, weighting):
    model = DiffusionModel(image_shape=(1, 8, 8), schedule="learned" if weighting == "vlb" else "linear",
                           prediction=prediction, weighting=weighting, base_channels=8, channel_mults=[1, 2])
    loss, logs = model.loss({"image": torch.rand(4, 1, 8, 8)})
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_bound_in_bits_per_dim_is_finite_and_continuous_time_is_tighter(diffusion_run):
    model = minisd.load(diffusion_run)
    images = minisd.data.load_dataset("digits", "test").images[:32]
    torch.manual_seed(0)
    continuous = model.nll({"image": images}, num_samples=4)["bits_per_dim"].mean()
    torch.manual_seed(0)
    discrete = model.nll({"image": images}, num_samples=4, num_steps=10)["bits_per_dim"].mean()
    assert torch.isfinite(continuous) and 0 < continuous < discrete


def test_learned_schedule_model_trains_checkpoints_resumes_and_loads(tmp_path):
    # safetensors refuses tensors that share memory: a schedule registered twice killed the first checkpoint.
    run = tmp_path / "run"
    learned = [*TINY, "--set", "model.schedule=learned", "--set", "model.weighting=vlb", "--set", "train.steps=6",
               "--set", "train.checkpoint_every=3", "--out", str(run)]
    assert main(["train", "--config", "diffusion_mnist", *learned]) == 0
    assert main(["train", "--out", str(run), "--resume", "--set", "train.steps=9", "--no-progress"]) == 0
    model = minisd.load(run)
    assert json.loads((run / "checkpoint/config.json").read_text())["step"] == 9
    keys = list(model.state_dict())
    assert any("schedule" in key for key in keys) and not any(key.startswith("schedule.") for key in keys)
    assert torch.isfinite(model.nll({"image": torch.rand(2, 1, 8, 8)})["bits_per_dim"]).all()


def test_label_dropout_trains_the_null_label_and_only_in_training():
    model = DiffusionModel(image_shape=(1, 8, 8), base_channels=8, channel_mults=[1, 2], num_classes=10, p_uncond=0.5)
    seen = []
    network = model.denoiser.network
    network.register_forward_pre_hook(lambda module, args: seen.append(args[2]["label"].clone()))
    batch = {"image": torch.rand(400, 1, 8, 8), "label": torch.randint(0, 10, (400,))}
    torch.manual_seed(0)
    model.train().loss(batch)
    dropped = (seen[-1] == model.num_classes).float().mean().item()
    assert 0.4 < dropped < 0.6 and torch.equal(seen[-1][seen[-1] != 10], batch["label"][seen[-1] != 10])
    model.eval().loss(batch)
    assert torch.equal(seen[-1], batch["label"])


@pytest.mark.slow  # 400 training steps: make test-slow
def test_class_conditional_samples_follow_the_requested_label(tmp_path):
    # Trained briefly on the 8x8 digits, then sampled from the same noise with label 0 and with label 1:
    # each set of samples must look more like real images of its own label than of the other.
    run = tmp_path / "run"
    assert main(["train", "--config", "diffusion_mnist", *TINY, "--set", "model.base_channels=16",
                 "--set", "model.num_classes=10", "--set", "model.p_uncond=0.1", "--set", "train.steps=400",
                 "--set", "train.batch_size=64", "--set", "train.lr=2e-3", "--out", str(run)]) == 0
    model = minisd.load(run)
    data = minisd.data.load_dataset("digits", "train")
    means = {label: data.images[data.labels == label].mean(0) for label in (0, 1)}
    samples = {label: model.sample(64, steps=10, cond=torch.full((64,), label), generator=torch.Generator().manual_seed(0))
               for label in (0, 1)}
    assert not torch.allclose(samples[0], samples[1])
    for label, other in ((0, 1), (1, 0)):
        mean = samples[label].mean(0)
        assert (mean - means[label]).norm() < (mean - means[other]).norm()


def test_diffusion_figures_with_and_without_a_model(diffusion_run, tmp_path, monkeypatch):
    # Without local MNIST the noising figure falls back to a built-in digit; never touch the network here.
    monkeypatch.setitem(idx.MIRRORS, "mnist", [(tmp_path / "no-mirror").as_uri() + "/"])
    assert main(["figures", "diffusion", "--out", str(tmp_path / "plain")]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").glob("*.png")) == ["noising.png", "schedules.png"]
    assert main(["figures", "diffusion", str(diffusion_run), "--out", str(tmp_path / "model")]) == 0
    assert len(list((tmp_path / "model").glob("*.png"))) == 4


def test_eval_scores_fid_with_the_chosen_sampler_and_records_its_evaluations(diffusion_run, tmp_path, capsys,
                                                                             monkeypatch):
    calls = []  # (sampler, steps) of every sampler call; the untrained model's samples alone cannot tell them apart

    def spy(name):
        def recorded(denoiser, x, ts, **kwargs):
            calls.append((name, len(ts) - 1))
            return SAMPLERS[name](denoiser, x, ts, **kwargs)
        return recorded

    monkeypatch.setattr("minisd.diffusion.samplers.SAMPLERS", {name: spy(name) for name in SAMPLERS})
    classifier = tmp_path / "classifier"
    assert main(["train", "--config", "classifier_mnist", "--set", "data.dataset=digits", "--set", "train.steps=30",
                 "--set", "train.batch_size=64", "--set", "train.eval_every=0", "--no-progress",
                 "--out", str(classifier)]) == 0
    fid_args = ["eval", str(diffusion_run), "--fid-classifier", str(classifier), "--fid-samples", "64",
                "--skip-likelihood"]
    results = {}
    for name, options in (("heun", ["--sampler", "heun", "--steps", "3"]),
                          ("heun_again", ["--sampler", "heun", "--steps", "3"]),
                          ("ddpm", ["--sampler", "ddpm", "--steps", "3", "--spacing", "uniform"])):
        out = tmp_path / f"{name}.json"
        assert main([*fid_args, *options, "--json", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    assert "by heun in 3 steps (5 denoiser evaluations)" in capsys.readouterr().out
    assert (results["heun"]["sampler"], results["heun"]["sampler_steps"], results["heun"]["sampler_evaluations"]) \
        == ("heun", 3, 5)
    assert results["ddpm"]["sampler_spacing"] == "uniform" and results["ddpm"]["sampler_evaluations"] == 3
    assert results["heun"]["FID-digits"] == results["heun_again"]["FID-digits"]  # same seed, same samples
    assert calls == [("heun", 3)] * 2 + [("ddpm", 3)]  # 64 samples: one batch per evaluation


def test_eval_refuses_sampler_options_without_fid(diffusion_run, capsys):
    assert main(["eval", str(diffusion_run), "--sampler", "ddim", "--limit", "8"]) == 2
    assert "pass --fid-classifier too" in capsys.readouterr().err


def test_eval_reports_the_bound_and_its_terms_in_continuous_and_discrete_time(diffusion_run, tmp_path):
    results = {}
    for name, options in (("continuous", []), ("discrete", ["--bound-steps", "10"])):
        out = tmp_path / f"{name}.json"
        assert main(["eval", str(diffusion_run), "--limit", "16", "-k", "2", "--json", str(out), *options]) == 0
        results[name] = json.loads(out.read_text())
    assert results["continuous"]["bound_time"] == "continuous"
    assert results["discrete"]["bound_time"] == "discrete, T = 10"
    for result in results.values():
        terms = sum(result[f"{term}_bits_per_dim"] for term in ("prior", "reconstruction", "diffusion"))
        assert terms == pytest.approx(result["nll_bound_bits_per_dim"], rel=1e-5)
    # The same seed draws the same reconstruction noise: only the diffusion term changes with T.
    assert results["discrete"]["prior_bits_per_dim"] == results["continuous"]["prior_bits_per_dim"]
    assert results["discrete"]["diffusion_bits_per_dim"] != results["continuous"]["diffusion_bits_per_dim"]


def test_vae_refuses_bound_steps(vae_run, capsys):
    assert main(["eval", str(vae_run), "--bound-steps", "10", "--limit", "8"]) == 2
    assert "a vae has none" in capsys.readouterr().err


def test_sampling_clips_x0_predictions_to_the_data_range_unless_asked_not_to(diffusion_run):
    model = minisd.load(diffusion_run)
    for clip in (True, False):
        predictions = []
        model.sample(4, steps=5, clip_denoised=clip, generator=torch.Generator().manual_seed(0),
                     callback=lambda info: predictions.append(info["x0_pred"]))
        largest = torch.stack(predictions).abs().max().item()
        # The tiny model's raw estimate where sampling starts (alpha = 0.0067, its error times 150) leaves [-1, 1].
        assert largest <= 1 if clip else largest > 1
