"""Inpainting as a denoiser wrapper (:class:`minisd.diffusion.inpainting.InpaintingDenoiser`), checked on the
sampler's own states, not on the final image (which the text-to-image pipeline pastes over anyway).

The wrapper's estimate is x0_known wherever the mask is 0. A sampler's update is affine in (x_t, x0_pred), so the
known region of a state started at the forward process, x_T = alpha_T x0_known + sigma_T eps, stays on it:

- deterministic samplers (DDIM with eta = 0, Euler, Heun, DPM-Solver++(2M)) keep the very same eps, so
  x_t = alpha_t x0_known + sigma_t eps there at every step, exactly (eps_pred = (x_t - alpha_t x0_known) / sigma_t
  is eps, and the step lands on alpha_s x0_known + sigma_s eps: Luo (2022) eq. 70 at the next time);
- stochastic ones (DDPM, DPM-Solver++(2M) SDE) redraw part of the noise each step, so there
  (x_t - alpha_t x0_known) / sigma_t is a fresh standard normal at every step: mean 0, variance 1;
- at t = 0 every sampler returns x0_pred, so the known region is x0_known itself.

A denoiser that ignores the known data breaks all three, so each test fails without the wrapper.
"""

import pytest
import torch

from minisd.diffusion import build_schedule
from minisd.diffusion.inpainting import InpaintingDenoiser
from minisd.diffusion.samplers import sample
from minisd.diffusion.sampling_steps import grid_alphas_sigmas

SHAPE = (64, 1, 8, 8)
STEPS = 8


class WrongDenoiser:
    """A denoiser that knows nothing of the data: x0_hat = 0.3 + 0.1 x_t everywhere."""

    def __init__(self):
        self.schedule = build_schedule("cosine").to(torch.float64)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return 0.3 + 0.1 * x_t


def known_data_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    """Data of random signs (far from the wrong denoiser's 0.3), and a mask repainting the left half."""
    known = torch.randint(0, 2, SHAPE, generator=torch.Generator().manual_seed(1)).double() * 2 - 1
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :4] = 1
    return known, mask


def states(sampler: str, inpaint: bool = True, **sampler_args) -> tuple[list[dict], torch.Tensor]:
    """Every state the sampler passes through (``{"t", "x"}``), starting from the known data noised to the start
    of the grid (strength 1, as the pipeline inpaints), and the start noise eps."""
    denoiser = WrongDenoiser()
    known, mask = known_data_and_mask()
    wrapped = InpaintingDenoiser(denoiser, known, mask) if inpaint else denoiser
    seen: list[dict] = []
    sample(wrapped, SHAPE, sampler=sampler, steps=STEPS, generator=torch.Generator().manual_seed(0),
           dtype=torch.float64, x_start=known, strength=1.0, callback=seen.append, **sampler_args)
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # _start's draw
    return seen, eps


def noise_levels(info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of the state's time, with the samplers' t = 0: clean data, alpha = 1 and sigma = 0."""
    _, alpha, sigma = grid_alphas_sigmas(WrongDenoiser(), info["t"].reshape(1), info["x"])
    return alpha, sigma


def known_region(x: torch.Tensor) -> torch.Tensor:
    return x[..., 4:]


@pytest.mark.parametrize("sampler, args", [("ddim", {}), ("euler", {}), ("heun", {}), ("dpmpp_2m", {}),
                                           ("euler_ancestral", {"eta": 0.0})])
def test_deterministic_samplers_keep_the_known_region_on_the_forward_process_of_its_start_noise(sampler, args):
    known, _ = known_data_and_mask()
    seen, eps = states(sampler, **args)
    assert len(seen) == STEPS
    for info in seen:
        alpha, sigma = noise_levels(info)
        expected = alpha * known + sigma * eps
        assert torch.allclose(known_region(info["x"]), known_region(expected), atol=1e-9), (sampler, info["step"])
    assert torch.allclose(known_region(seen[-1]["x"]), known_region(known), atol=1e-12)  # t = 0: the data


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m_sde"])
def test_stochastic_samplers_keep_the_known_region_on_the_forward_marginal_at_every_step(sampler):
    known, _ = known_data_and_mask()
    seen, _ = states(sampler)
    for info in seen[:-1]:
        alpha, sigma = noise_levels(info)
        standardised = known_region((info["x"] - alpha * known) / sigma)  # 2048 values: N(0, 1) if on the marginal
        assert abs(standardised.mean().item()) < 0.1 and abs(standardised.std().item() - 1) < 0.1, info["step"]
    assert torch.equal(known_region(seen[-1]["x"]), known_region(known))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m_sde"])
def test_without_the_wrapper_the_known_region_drifts(sampler):
    """The tests above see the wrapper's work: the bare denoiser ends elsewhere."""
    known, _ = known_data_and_mask()
    seen, _ = states(sampler, inpaint=False)
    assert (known_region(seen[-1]["x"]) - known_region(known)).abs().mean() > 0.5
