"""Reflow: training on a model's own couplings of noise and data straightens the paths to one step."""

import pytest
import torch

import minisd
from minisd.diffusion.losses import denoising_loss
from minisd.diffusion.samplers import SAMPLERS
from minisd.models.score import ScoreModel
from minisd.train.reflow import teacher_pairs


def test_paired_noise_makes_one_euler_step_land_on_the_coupled_point():
    """Couplings z -> A z + b (a straight, non-crossing map): a flow model trained on them with reflow's paired noise
    carries z to A z + b in one step; trained on the same data with fresh noise it cannot (it learns the average)."""
    torch.manual_seed(0)
    A, b = torch.tensor([[0.5, 0.4], [-0.3, 0.6]]), torch.tensor([1.0, -0.5])
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    x = z @ A.T + b
    errors = {}
    for paired in (True, False):
        torch.manual_seed(0)
        model = ScoreModel(schedule="flow", prediction="flow", hidden=[64, 64])
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(400):
            rows = torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(step))
            loss = denoising_loss(model.denoiser, x[rows], noise=z[rows] if paired else None,
                                  generator=torch.Generator().manual_seed(10_000 + step)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            one_step = SAMPLERS["euler"](model.denoiser, z[:64], torch.tensor([1.0, 0.0]))
        errors[paired] = (one_step - x[:64]).norm(dim=-1).mean().item()
    assert errors[True] < 0.1 < errors[False], errors


@pytest.fixture(scope="module")
def teacher():
    return minisd.load("mnist")  # the shipped digits model (3.3M parameters)


def test_teacher_pairs_are_what_the_pipeline_draws_from_the_same_noise(teacher):
    captions = ["a handwritten digit 3", "a handwritten 7", "a thin digit 1"]
    noise, latents = teacher_pairs(teacher.model, captions, guidance_scale=4.0, sampler="dpmpp_2m", steps=4,
                                   batch_size=2, seed=5)
    assert noise.shape == latents.shape == (3, 4, 7, 7)
    # Batch 1 (the third caption) alone, from its own seed: the same pair, so a generation can resume.
    again = teacher_pairs(teacher.model, captions[2:], guidance_scale=4.0, sampler="dpmpp_2m", steps=4, seed=6)
    assert torch.equal(again[0], noise[2:]) and torch.allclose(again[1], latents[2:], atol=1e-5)
    pictures = teacher(captions[:2], guidance_scale=4.0, sampler="dpmpp_2m", num_inference_steps=4, latents=noise[:2],
                       output_type="pt").images
    assert torch.allclose(teacher.model.autoencoder.decode(latents[:2]), pictures, atol=1e-5)


def test_teacher_pairs_refuse_a_sampler_that_draws_fresh_noise(teacher):
    with pytest.raises(ValueError, match="deterministic"):
        teacher_pairs(teacher.model, ["a handwritten digit 3"], guidance_scale=4.0, sampler="dpmpp_2m_sde")
