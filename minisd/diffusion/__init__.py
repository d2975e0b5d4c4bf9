"""The math every diffusion-family model shares: schedules, parameterisations, the denoiser interface,
losses, samplers and likelihood bounds (Luo 2022, "Variational Diffusion Models" and after)."""

from minisd.diffusion.denoiser import Denoiser, NetworkDenoiser, expand_like
from minisd.diffusion.parameterisation import PREDICTIONS, eps_from_x0, from_x0, to_x0
from minisd.diffusion.schedules import (SCHEDULES, CosineSchedule, LearnedSchedule, LinearBetaSchedule,
                                        NoiseSchedule, build_schedule)

__all__ = ["Denoiser", "NetworkDenoiser", "expand_like", "PREDICTIONS", "eps_from_x0", "from_x0", "to_x0",
           "SCHEDULES", "CosineSchedule", "LearnedSchedule", "LinearBetaSchedule", "NoiseSchedule",
           "build_schedule"]
