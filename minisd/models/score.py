"""Chapter "Score-based generative models": a score model of points in R^D, for the 2-D toys.

The same diffusion model as :class:`~minisd.models.diffusion.DiffusionModel` (schedule, parameterisation,
weighting, every sampler), with an MLP in place of the UNet and points in place of images. Trained with
eps-prediction and the ``simple`` weighting it is denoising score matching, score = -eps / sigma_t (Luo 2022
eq. 151); on the ``ve`` schedule with ``noise_levels`` it is NCSN (Song & Ermon 2019). Its likelihood is exact,
by the probability-flow ODE with the exact divergence: see :meth:`ScoreModel.nll`.

A batch holds points as ``{"x": (B, D)}`` (:class:`minisd.data.toys.PointDataset`), modelled as they are.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from minisd.diffusion.probability_flow import ode_log_likelihood
from minisd.models.base import Model
from minisd.models.diffusion import DiffusionModel
from minisd.nn.point_network import PointDenoisingMLP


class ScoreModel(DiffusionModel):
    """A diffusion / score model of points ``(D,)`` with a time-conditioned MLP."""

    model_type = "score"
    shape_setting = "data_shape"
    data_key = "x"
    bounded_data = False  # points are unbounded: sampling never clips x0-predictions

    def __init__(self, data_shape: list[int] = (2,), schedule: str = "ve", schedule_args: dict[str, float] | None = None,
                 noise_levels: int | None = None, prediction: str = "eps", weighting: str = "simple",
                 min_snr_gamma: float = 5.0, hidden: list[int] = (128, 128, 128), embedding_dim: int = 64,
                 sampler: str = "pc", sample_steps: int = 100):
        Model.__init__(self, data_shape=list(data_shape), schedule=schedule, schedule_args=schedule_args,
                       noise_levels=noise_levels, prediction=prediction, weighting=weighting,
                       min_snr_gamma=min_snr_gamma, hidden=list(hidden), embedding_dim=embedding_dim,
                       sampler=sampler, sample_steps=sample_steps)
        if len(data_shape) != 1:
            raise ValueError(f"a score model of points takes data_shape (D,), got {list(data_shape)}")
        self.data_shape = tuple(data_shape)
        network = PointDenoisingMLP(data_shape[0], hidden=hidden, embedding_dim=embedding_dim)
        self.set_up_diffusion(network, schedule=schedule, schedule_args=schedule_args, noise_levels=noise_levels,
                              prediction=prediction, weighting=weighting, min_snr_gamma=min_snr_gamma,
                              num_classes=None, p_uncond=0.0, sampler=sampler, sample_steps=sample_steps)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self.data_shape

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        return data

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def nll(self, batch: dict[str, Any], *, divergence: str = "exact", rtol: float = 1e-5, atol: float = 1e-5,
            generator: torch.Generator | None = None) -> dict[str, Any]:
        """-log p(x) of points, exact up to the solver's tolerance, per point ``(B,)``: ``nats``, ``nats_per_dim``, and
        ``nfe``. The probability-flow ODE from t = 0 (the data blurred by the schedule's smallest noise, sigma_min
        on ``ve``) to the prior, with the exact divergence: two vector-Jacobian products per evaluation in 2-D
        (see :func:`minisd.diffusion.probability_flow.ode_log_likelihood`)."""
        result = ode_log_likelihood(self.denoiser, batch[self.data_key].to(self.device), divergence=divergence,
                                    rtol=rtol, atol=atol, generator=generator)
        nats = -result["log_prob"]
        return {"nats": nats, "nats_per_dim": nats / math.prod(self.data_shape), "nfe": result["nfe"]}

    def ode_nll(self, batch: dict[str, Any], **ode_args: Any) -> dict[str, Any]:
        """For points the ODE likelihood is the likelihood: :meth:`nll` (no 8-bit dequantisation)."""
        return self.nll(batch, **ode_args)
