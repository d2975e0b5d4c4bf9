"""minisd train on a distillation config: the teacher's pairs, the student, the model folder, resume."""

import json

import pytest
import torch
from real_data import needs_real_data

import minisd
from minisd.errors import ConfigError
from minisd.train.command import run_training


TINY = ["distill.pairs=6", "distill.chunk=4", "distill.steps=2", "student.train.steps=2",
        "student.train.batch_size=4", "student.train.checkpoint_every=2", "student.train.warmup_steps=1"]


@needs_real_data  # the student trains on MNIST's captions
def test_a_tiny_distillation_writes_a_few_step_model_and_resumes(tmp_path):
    out = tmp_path / "fast"
    run_training("mnist_fast", TINY, out=out, progress=False)
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["pairs-00000.safetensors", "pairs-00001.safetensors"]
    pipe = minisd.load(out)
    assert (pipe.model.sampler, pipe.model.sample_steps, pipe.model.guidance_scale) == ("euler", 4, 1.0)
    assert pipe.model.diffusion.schedule.name == "flow"
    images = pipe("a handwritten digit 3", generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (1, 1, 28, 28) and torch.isfinite(images).all()
    # A crash that lost a chunk: the same command with --resume makes that chunk alone again, the same to the bit
    # (its captions' words are drawn from the run's seed, its noise from the chunk's).
    lost = out / "pairs" / "pairs-00001.safetensors"
    before = lost.read_bytes()
    lost.unlink()
    run_training(None, ["student.train.steps=4"], out=out, resume=True, progress=False)
    assert lost.read_bytes() == before


def test_pairs_read_back_keep_the_captions_they_were_drawn_for(tmp_path):
    from safetensors.torch import save_file

    from minisd.train.config import DistillConfig
    from minisd.train.distill import _pairs

    settings = DistillConfig(teacher="mnist", pairs=3, chunk=2)
    for index, captions in enumerate((["a 1", "a 2"], ["a 3"])):
        save_file({"noise": torch.zeros(len(captions), 4), "latent": torch.zeros(len(captions), 4)},
                  tmp_path / f"pairs-{index:05d}.safetensors", metadata={"captions": json.dumps(captions)})
    # Every chunk is on disk, so no teacher is needed; this run's captions differ from those of the files.
    pairs = _pairs(None, settings, tmp_path, ["a 7", "a 8", "a 9"], progress=False)
    assert pairs["caption"] == ["a 1", "a 2", "a 3"] and pairs["latent"].shape == (3, 4)


@pytest.mark.parametrize("override, message", [
    ("distill.sampler=\"dpmpp_2m_sde\"", "fresh noise"),
    ("distill.teacher=\"no-such-model\"", "no-such-model"),
    ("distill.colour=3", "unknown distill settings"),
    ("student.model.unet.base_channels=32", "init_from_teacher"),
])
def test_bad_distillation_configs_are_refused_in_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_training("mnist_fast", [*TINY, override], out=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists(), "refused before any work: no run folder, no data read, no pairs drawn"


TINY_CONSISTENCY = ["distill.steps=4", "student.train.steps=2", "student.train.batch_size=4",
                    "student.train.checkpoint_every=2", "student.train.warmup_steps=1", "data.num_images=64"]


@needs_real_data
def test_a_tiny_consistency_distillation_saves_the_student_alone(tmp_path):
    from safetensors import safe_open

    from minisd.models.latent_diffusion import LatentDiffusion
    from minisd.train.distill import load_teacher

    out = tmp_path / "consistency"
    run_training("mnist_consistency", TINY_CONSISTENCY, out=out, progress=False)
    assert not (out / "pairs").exists()  # no teacher pairs: the teacher steps inside the loss
    pipe = minisd.load(out)
    assert type(pipe.model) is LatentDiffusion
    assert (pipe.model.sampler, pipe.model.sample_steps, pipe.model.guidance_scale) == ("ddim", 4, 1.0)
    assert pipe.model.diffusion.denoiser.prediction == "flow"
    # The checkpoint holds the student and nothing of the teacher: the names of one model's weights.
    with safe_open(out / "student" / "checkpoint" / "model.safetensors", "pt") as weights:
        assert set(weights.keys()) == set(load_teacher("mnist").state_dict())
    images = pipe("a handwritten digit 3", generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (1, 1, 28, 28) and torch.isfinite(images).all()


@pytest.mark.parametrize("override, message", [
    ("distill.method=\"progressive\"", "distill.method must be one of"),
    ("distill.sampler=\"dpmpp_2m\"", "steps the teacher by DDIM"),
])
def test_bad_consistency_configs_are_refused_in_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_training("mnist_consistency", [*TINY_CONSISTENCY, override], out=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_the_shipped_few_step_model_draws_the_asked_digit_in_four_evaluations():
    """checkpoints/mnist-fast: within 15 MB, with its card and its defaults, and a smoke test of its weights (the
    acceptance measure, 2000 samples and FID, is `minisd eval mnist-fast`: docs/08-flow-matching.md 8.6)."""
    from minisd.shipped import SHIPPED_MODELS

    folder = SHIPPED_MODELS / "mnist-fast"
    assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) <= 15 * 2**20
    assert "minisd train --config mnist_fast" in (folder / "README.md").read_text()
    pipe = minisd.load("mnist-fast")
    assert (pipe.model.sampler, pipe.model.sample_steps, pipe.model.guidance_scale) == ("euler", 4, 1.0)
    classifier = minisd.load("classifier_mnist")
    prompts = [f"a handwritten digit {k}" for k in range(10)]
    images = pipe(prompts, num_images_per_prompt=5, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images
    asked = torch.arange(10).repeat_interleave(5)
    assert (classifier.predict(images) == asked).float().mean() >= 0.96
