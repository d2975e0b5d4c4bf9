"""The training loop: exact resume, torchrun, NaN handling, checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import minisd
from minisd.errors import MinisdError
from minisd.models import VAE, Autoencoder
from minisd.train import TrainConfig, TrainingDiverged, train
from minisd.models.files import find_checkpoint
from minisd.train.config import list_presets, load_run_config
from minisd.train.optim import learning_rate

TINY = dict(image_shape=(1, 8, 8), latent_dim=2, hidden=[32])


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(steps=40, batch_size=50, lr=3e-3, warmup_steps=5, log_every=5, eval_every=20,
                    checkpoint_every=10, seed=3)
    return TrainConfig(**{**settings, **overrides})


class CrashAfter(VAE):
    """A VAE whose loss raises after ``crash_at`` calls: a stand-in for a killed process."""

    crash_at = 10**9

    def loss(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > self.crash_at:
            raise RuntimeError("simulated crash")
        return super().loss(batch)


class NaNAt(VAE):
    """A VAE whose loss becomes NaN at training step ``nan_at`` (counting from 0)."""

    nan_at = 7

    def loss(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        loss, logs = super().loss(batch)
        if self.training and self.calls == self.nan_at + 1:
            loss = loss * float("nan")
        return loss, logs


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    folder = run_dir / "checkpoint"
    return {f"{name}/{k}": v for name in ("model", "ema", "optimizer")
            for k, v in load_file(str(folder / f"{name}.safetensors")).items()}


def test_resumed_run_ends_bit_identical_to_uninterrupted_run_despite_a_partial_log_line(tmp_path, digits_train, digits_test):
    config = tiny_config()
    torch.manual_seed(0)
    train(VAE(**TINY), digits_train, config, tmp_path / "straight", eval_set=digits_test,
          binarize_data=True, progress=False)

    torch.manual_seed(0)
    crashing = CrashAfter(**TINY)
    crashing.crash_at = 25  # after the checkpoint at step 20, before the one at step 30
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashing, digits_train, config, tmp_path / "resumed", eval_set=digits_test,
              binarize_data=True, progress=False)
    assert json.loads((tmp_path / "resumed/checkpoint/config.json").read_text())["step"] == 20
    with (tmp_path / "resumed/metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 26, "loss": 1')  # the partial last line of a process killed while writing it
    torch.manual_seed(123)  # a different initialisation: resuming must overwrite it all
    train(VAE(**TINY), digits_train, config, tmp_path / "resumed", eval_set=digits_test,
          binarize_data=True, resume=True, progress=False)

    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key

    def losses(run):
        return [(r["step"], r.get("loss"), r.get("eval/loss")) for r in
                map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())]
    assert losses("straight") == losses("resumed")


def test_a_convolutional_model_trains_channels_last_and_resumes_bit_identical(tmp_path, digits_train):
    """The loop lays 4-d weights out channels-last and updates them with fused AdamW, which walks weights, gradients
    and moments as flat arrays: a resumed run must lay the moments it reads (stored contiguous) out as the weights."""
    from minisd.models import DiffusionModel

    def tiny_unet_model() -> DiffusionModel:
        torch.manual_seed(0)
        return DiffusionModel(image_shape=(1, 8, 8), base_channels=8, channel_mults=[1, 2], num_heads=2)

    config = tiny_config(steps=12, batch_size=20, log_every=3, eval_every=0, checkpoint_every=6)
    straight = tiny_unet_model()
    train(straight, digits_train, config, tmp_path / "straight", progress=False)
    assert straight.denoiser.network.input_conv.weight.is_contiguous(memory_format=torch.channels_last)

    crashing, calls = tiny_unet_model(), []
    plain_loss = crashing.loss

    def crash_after_eight_steps(batch):
        calls.append(1)
        if len(calls) > 8:  # after the checkpoint at step 6
            raise RuntimeError("simulated crash")
        return plain_loss(batch)

    crashing.loss = crash_after_eight_steps
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashing, digits_train, config, tmp_path / "resumed", progress=False)
    train(tiny_unet_model(), digits_train, config, tmp_path / "resumed", resume=True, progress=False)
    straight_weights, resumed_weights = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight_weights.keys() == resumed_weights.keys()
    for key in straight_weights:
        assert torch.equal(straight_weights[key], resumed_weights[key]), key


def test_the_ema_averages_the_trained_parameters_and_keeps_the_frozen_ones():
    from minisd.train.optim import EMA

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    model[1].requires_grad_(False)
    ema = EMA(model, decay=0.9)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    ema.update(step=1000)  # past the ramp: the decay itself
    averaged = list(ema.model.parameters())
    for index in (0, 1):  # the trained layer: 0.9 old + 0.1 new
        torch.testing.assert_close(averaged[index], 0.9 * before[index] + 0.1 * (before[index] + 1))
    for index in (2, 3):  # the frozen layer keeps its value (a frozen weight does not change in training)
        assert torch.equal(averaged[index], before[index])


def minisd_command(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """``minisd ARGS`` in new processes of one CPU thread each: ``torchrun --nproc_per_node PROCESSES`` above 1."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return subprocess.run([sys.executable, *(torchrun if processes > 1 else []), "-m", "minisd", *args],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)


@pytest.mark.xdist_group("torchrun")  # one torchrun at a time: each launch takes free ports of the machine
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    settings = ["--config", "autoencoder", "--set", "data.dataset=digits", "--set", "model.hidden=[32]",
                "--set", "train.steps=12", "--set", "train.batch_size=64", "--set", "train.eval_every=0",
                "--set", "train.checkpoint_every=0", "--no-progress", "--device", "cpu"]
    one = minisd_command("train", *settings, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = minisd_command("train", *settings, "--out", str(tmp_path / "two"), processes=2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("trained 12 steps") == 1, "the summary is printed by rank 0 only"

    single, double = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    # Metrics are averaged over the two ranks, and only rank 0 writes them.
    def train_records(run):
        records = map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
        return [r for r in records if "loss" in r]
    one_log, two_log = train_records("one"), train_records("two")
    assert [r["step"] for r in one_log] == [r["step"] for r in two_log]
    assert two_log[-1]["loss"] == pytest.approx(one_log[-1]["loss"], rel=1e-4)
    assert single["model/decoder.0.0.weight"].abs().sum() > 0  # the run actually trained something


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, digits_train):
    config = tiny_config(checkpoint_every=5, eval_every=0)
    with pytest.raises(TrainingDiverged) as raised:
        train(NaNAt(**TINY), digits_train, config, tmp_path / "run", progress=False)
    message = str(raised.value)
    assert "step 7" in message and "step 5" in message and "train.lr" in message
    model = minisd.load(tmp_path / "run")
    assert json.loads((tmp_path / "run/checkpoint/config.json").read_text())["step"] == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, digits_train):
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written"):
        train(NaNAt(**TINY), digits_train, tiny_config(checkpoint_every=0, eval_every=0), tmp_path / "run",
              progress=False)
    assert not (tmp_path / "run").exists()


def test_checkpoint_records_the_thread_count_that_resume_needs_for_identical_bits(tmp_path, digits_train):
    train(Autoencoder(**TINY), digits_train, tiny_config(steps=5, eval_every=0), tmp_path, progress=False)
    assert json.loads((tmp_path / "checkpoint/config.json").read_text())["threads"] == torch.get_num_threads()


def test_nan_loss_in_cli_is_one_line_and_exit_2(tmp_path, capsys):
    from minisd.cli import main

    code = main(["train", "--config", "vae2d", "--set", "data.dataset=digits", "--set", "train.lr=1e30",
                 "--set", "train.grad_clip=0", "--set", "train.steps=50", "--set", "train.batch_size=64",
                 "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "minisd: error:" in capsys.readouterr().err


def test_checkpoint_survives_crash_between_renames(tmp_path, digits_train):
    train(Autoencoder(**TINY), digits_train, tiny_config(steps=10, eval_every=0), tmp_path, progress=False)
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")  # the state right after the first rename
    assert find_checkpoint(tmp_path) == tmp_path / ".checkpoint.old"
    assert isinstance(minisd.load(tmp_path), Autoencoder)


def test_checkpoint_never_builds_an_unregistered_type(tmp_path, digits_train):
    train(Autoencoder(**TINY), digits_train, tiny_config(steps=5, eval_every=0), tmp_path, progress=False)
    config_path = tmp_path / "checkpoint/config.json"
    config = json.loads(config_path.read_text())
    config["model"]["type"] = "os.system"
    config_path.write_text(json.dumps(config))
    with pytest.raises(MinisdError, match="unknown model type 'os.system'"):
        minisd.load(tmp_path)


def test_learning_rate_warms_up_then_decays_to_floor():
    kwargs = dict(lr=1.0, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    rates = [learning_rate(step, **kwargs) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert learning_rate(100, **kwargs) == pytest.approx(0.1)


def test_training_lowers_the_test_loss(tmp_path, digits_train, digits_test):
    torch.manual_seed(0)
    result = train(VAE(**TINY), digits_train, tiny_config(steps=150, eval_every=0), tmp_path,
                   eval_set=digits_test, binarize_data=True, progress=False)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert result["eval"]["loss"] < 0.8 * first["loss"]


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_builds_its_model_and_training_config(preset):
    from minisd.data.toys import TOYS
    from minisd.train.config import STAGES, is_distill_config, is_text_to_image_config, stage_config, student_config

    # The folder preset names a folder of the user's (--data replaces it); shapes, 3x32x32 too, stands in for it.
    config = load_run_config(preset, ["data.dataset=shapes"] if preset == "text2image_folder" else [])
    runs = ([stage_config(config, stage) for stage in STAGES] if is_text_to_image_config(config) else
            [student_config(config)] if is_distill_config(config) else [config])
    for run in runs:
        assert set(run) >= {"model", "data", "train"}
        assert run["data"]["dataset"] in ("mnist", "fashion-mnist", "digits", "shapes", *TOYS)
        shape = {"shapes": [3, 32, 32], **{toy: [2] for toy in TOYS}}.get(run["data"]["dataset"], [1, 28, 28])
        if run["model"]["type"] != "latent_diffusion":  # built from its trained parts (test_text_to_image.py)
            shape_setting = minisd.models.MODELS[run["model"]["type"]].shape_setting
            model = minisd.models.build_model({**run["model"], shape_setting: shape})
            assert sum(p.numel() for p in model.parameters()) > 0
        TrainConfig(**run["train"])


def test_threads_come_from_the_option_then_the_environment_then_the_cores(monkeypatch):
    from minisd.runtime import available_cores, configure_threads

    for variable in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(variable, raising=False)
    assert configure_threads() == available_cores() == torch.get_num_threads()
    assert os.environ["GOMP_SPINCOUNT"] == "1000"  # idle OpenMP workers sleep soon (benchmarks/README.md)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads() == 1 == torch.get_num_threads()
    assert configure_threads(2) == 2 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(MinisdError, match="OMP_NUM_THREADS"):
        configure_threads()
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's own OpenMP policy is left alone
    configure_threads(1)
    assert "GOMP_SPINCOUNT" not in os.environ
