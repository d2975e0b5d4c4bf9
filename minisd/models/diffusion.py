"""Chapter "Variational diffusion models": DDPM / VDM on images (Luo 2022, "Variational Diffusion Models").

The model is a UNet behind the denoiser interface, a noise schedule, and a choice of what the
network predicts (x0, eps, v, score) and how the denoising errors are weighted. Training draws
t, noises the image to x_t = alpha_t x0 + sigma_t eps and regresses; sampling runs any sampler of
``minisd.diffusion.samplers``; ``nll`` is the variational bound in bits per dimension.
Images arrive in [0, 1] and are modelled in [-1, 1].
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from minisd import batch_rows
from minisd.diffusion import NetworkDenoiser, build_schedule
from minisd.diffusion.denoiser import ClippedDenoiser
from minisd.diffusion.likelihood import prior_term, reconstruction_term, variational_bound
from minisd.diffusion.losses import TIME_SAMPLINGS, WEIGHTINGS, denoising_loss
from minisd.diffusion.probability_flow import ode_bits_per_dim
from minisd.diffusion.samplers import sample as run_sampler
from minisd.models.base import Model
from minisd.nn.unet import UNet


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return images * 2 - 1


def to_8bit_grid(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> the 256 levels k / 127.5 - 1 in [-1, 1] that the likelihood is defined on."""
    return (images * 255).round() / 127.5 - 1


class DiffusionModel(Model):
    """A diffusion model of images with a UNet denoiser; every schedule, parameterisation and weighting."""

    model_type = "diffusion"
    can_sample = True
    has_samplers = True
    data_key = "image"     # where a batch holds the data: images (B, C, H, W) in [0, 1]
    bounded_data = True    # the modelled data lie in [-1, 1], so sampling may clip x0-predictions there

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), schedule: str = "cosine",
                 schedule_args: dict[str, float] | None = None, noise_levels: int | None = None,
                 prediction: str = "eps", weighting: str = "simple", min_snr_gamma: float = 5.0,
                 base_channels: int = 32, channel_mults: list[int] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_levels: list[int] | None = None, num_heads: int = 4, dropout: float = 0.0,
                 num_classes: int | None = None, p_uncond: float = 0.0, context_dim: int | None = None,
                 sampler: str = "dpmpp_2m_sde", sample_steps: int = 20, time_sampling: str = "uniform"):
        super().__init__(image_shape=list(image_shape), schedule=schedule, schedule_args=schedule_args,
                         noise_levels=noise_levels, prediction=prediction, weighting=weighting, min_snr_gamma=min_snr_gamma, base_channels=base_channels,
                         channel_mults=list(channel_mults), num_res_blocks=num_res_blocks,
                         attention_levels=None if attention_levels is None else list(attention_levels),
                         num_heads=num_heads, dropout=dropout, num_classes=num_classes, p_uncond=p_uncond,
                         context_dim=context_dim, sampler=sampler, sample_steps=sample_steps,
                         **({} if time_sampling == "uniform" else {"time_sampling": time_sampling}))
        self.image_shape = tuple(image_shape)
        network = UNet(in_channels=image_shape[0], base_channels=base_channels, channel_mults=channel_mults,
                       num_res_blocks=num_res_blocks, attention_levels=attention_levels, num_heads=num_heads,
                       dropout=dropout, num_classes=num_classes, context_dim=context_dim)
        self.set_up_diffusion(network, schedule=schedule, schedule_args=schedule_args, noise_levels=noise_levels,
                              prediction=prediction, weighting=weighting, min_snr_gamma=min_snr_gamma,
                              num_classes=num_classes, p_uncond=p_uncond, sampler=sampler, sample_steps=sample_steps,
                              time_sampling=time_sampling)

    def set_up_diffusion(self, network: torch.nn.Module, *, schedule: str, schedule_args: dict[str, float] | None,
                         noise_levels: int | None, prediction: str, weighting: str, min_snr_gamma: float,
                         num_classes: int | None, p_uncond: float, sampler: str, sample_steps: int,
                         time_sampling: str = "uniform") -> None:
        """Check the diffusion settings and put ``network`` behind the denoiser interface (any data shape)."""
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}")
        self.time_sampling = time_sampling
        if not 0 <= p_uncond < 1:
            raise ValueError(f"p_uncond is a probability below 1, got {p_uncond}")
        if noise_levels is not None and noise_levels < 2:
            raise ValueError(f"noise_levels is a ladder of at least 2 levels (or none: every t), got {noise_levels}")
        self.weighting, self.min_snr_gamma, self.noise_levels = weighting, min_snr_gamma, noise_levels
        self.num_classes, self.p_uncond = num_classes, p_uncond
        self.sampler, self.sample_steps = sampler, sample_steps
        # The schedule is registered once, inside the denoiser: a second registration (self.schedule =
        # ...) would put a learned schedule's parameters in the state dict twice, sharing memory, which
        # safetensors refuses to save.
        self.denoiser = NetworkDenoiser(network, build_schedule(schedule, **(schedule_args or {})), prediction)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The shape of one example the model makes: ``(C, H, W)``."""
        return self.image_shape

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Data as the batch holds it -> the modelled space: images in [0, 1] -> [-1, 1]."""
        return to_model_range(data)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The modelled space -> data: [-1, 1] -> images in [0, 1]."""
        return ((x + 1) / 2).clamp(0, 1)

    @property
    def schedule(self):
        """The noise schedule (the denoiser's: the one instance, learned or not)."""
        return self.denoiser.schedule

    def condition(self, batch: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """What the network is conditioned on, as the one conditioning dict: ``{"label": (B,)}`` for a
        class-conditional model, else None (the UNet then takes the null label, if it has labels at all)."""
        if self.num_classes is None or batch.get("label") is None:
            return None
        return {"label": batch["label"]}

    def null_condition(self, n: int) -> dict[str, torch.Tensor] | None:
        """The unconditional branch's condition for ``n`` examples: the null label, index ``num_classes``."""
        if self.num_classes is None:
            return None
        return {"label": torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)}

    def drop_condition(self, cond: dict[str, torch.Tensor] | None, n: int) -> dict[str, torch.Tensor] | None:
        """Conditioning dropout (Ho & Salimans 2022): each example's label becomes the null label with probability
        ``p_uncond``, so one network learns both p(x | y) and p(x), which classifier-free guidance combines."""
        if cond is None or self.p_uncond == 0 or "label" not in cond:
            return cond
        dropped = batch_rows.bernoulli(self.p_uncond, (n,), device=cond["label"].device)
        return {**cond, "label": torch.where(dropped, self.num_classes, cond["label"])}

    def loss_on(self, x0: torch.Tensor, cond: dict[str, torch.Tensor] | None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """The per-example training loss ``(B,)`` of data ``x0`` already in the modelled space (pixels in
        [-1, 1], or an autoencoder's latents), conditioned on ``cond``; ``noise``: each example's own eps (reflow's
        pairs, see :func:`~minisd.diffusion.losses.denoising_loss`), else a fresh draw."""
        per_example = denoising_loss(self.denoiser, x0, weighting=self.weighting, cond=cond,
                                     min_snr_gamma=self.min_snr_gamma, noise_levels=self.noise_levels,
                                     time_sampling=self.time_sampling, noise=noise)
        if self.weighting == "vlb":
            # The whole bound, so that a learned schedule's end points are trained too (VDM, sec. 5).
            per_example = per_example + prior_term(self.schedule, x0) + reconstruction_term(self.schedule, x0)
        return per_example

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = self.encode(batch[self.data_key])
        cond = self.condition(batch)
        if self.training:
            cond = self.drop_condition(cond, len(x0))
        loss = self.loss_on(x0, cond).mean()
        return loss, {"loss": loss.item()}

    @torch.no_grad()
    def nll(self, batch: dict[str, Any], num_samples: int = 1, num_steps: int | None = None) -> dict[str, torch.Tensor]:
        """The variational bound on -log p(x) of 8-bit images, per image ``(B,)``: ``nats``, ``bits_per_dim``,
        and its three terms in nats, ``prior``, ``reconstruction`` and ``diffusion``.

        An average of ``num_samples`` one-sample estimates; ``num_steps=None`` is continuous time,
        ``num_steps=T`` the bound of the T-step discrete-time model.
        """
        x0 = to_8bit_grid(batch["image"])
        estimates = [variational_bound(self.denoiser, x0, num_steps=num_steps, cond=self.condition(batch))
                     for _ in range(num_samples)]
        return {key: torch.stack([e[key] for e in estimates]).mean(0) for key in estimates[0]}

    def ode_nll(self, batch: dict[str, Any], *, divergence: str = "hutchinson", rtol: float = 1e-5, atol: float = 1e-5,
                generator: torch.Generator | None = None) -> dict[str, Any]:
        """-log P(x) of 8-bit images by the probability-flow ODE, per image ``(B,)``: ``nats``, ``bits_per_dim``,
        and ``nfe``, the denoiser evaluations of the solve. The same model seen as a flow (chapter "Score-based
        generative models"): uniform dequantisation, then the instantaneous change of variables with Hutchinson's
        trace estimate (see :func:`minisd.diffusion.probability_flow.ode_bits_per_dim`). It bounds the same
        discrete likelihood as :meth:`nll`, the variational bound."""
        return ode_bits_per_dim(self.denoiser, batch["image"], cond=self.condition(batch), generator=generator,
                                divergence=divergence, rtol=rtol, atol=atol)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None, cond: Any = None, clip_denoised: bool = True,
               callback: Callable[[dict], None] | None = None, image: torch.Tensor | None = None,
               strength: float = 1.0, **sampler_args: Any) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [0, 1], by ``sampler`` (default: the model's) in ``steps`` steps.

        ``image`` ``(n, C, H, W)`` in [0, 1] with ``strength`` in (0, 1]: image-to-image, see
        :func:`minisd.diffusion.samplers.sample`. A model trained on a ladder of ``noise_levels`` samples on it: its
        grid runs uniformly in t from 1 to 1 / (L - 1), which is the ladder when ``steps`` is L - 1 (its default).

        ``clip_denoised``: clip every x0-prediction to the data range [-1, 1] (Ho et al. 2020), which keeps
        the first, noisiest steps (alpha = 0.0067 at the start) from carrying an error amplified by 1 / alpha
        into the image: see :class:`minisd.diffusion.denoiser.ClippedDenoiser`.
        """
        denoiser = ClippedDenoiser(self.denoiser) if clip_denoised and self.bounded_data else self.denoiser
        if self.noise_levels is not None:
            # A model trained on a ladder of L levels t_i = i / (L - 1) (NCSN) samples on that ladder: L - 1 steps
            # from t = 1 down to t = 1 / (L - 1) visit every level but the least noisy, sigma_min, where the
            # denoised estimate (Tweedie) takes the last step instead.
            for key, value in (("t_max", 1.0), ("t_min", 1 / (self.noise_levels - 1)), ("spacing", "uniform")):
                sampler_args.setdefault(key, value)
        x0 = run_sampler(denoiser, (n, *self.example_shape), sampler=sampler or self.sampler,
                         steps=steps or self.sample_steps, generator=generator, cond=cond, callback=callback,
                         device=self.device, x_start=None if image is None else self.encode(image.to(self.device)),
                         strength=strength, **sampler_args)
        return self.decode(x0)
