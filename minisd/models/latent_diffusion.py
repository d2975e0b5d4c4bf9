"""Chapter "Stable Diffusion": a text-to-image model in the latent space of an autoencoder (Rombach et al. 2022).

Three parts answer the three questions of text-to-image generation, and this class only composes them:

- how to understand the text: ``text_encoder``, the text tower of a CLIP-style model trained here
  (:class:`~minisd.models.clip.ContrastiveTextImage`), frozen; its per-token embeddings are the context;
- how to make a picture: ``diffusion``, a :class:`~minisd.models.diffusion.DiffusionModel` whose UNet works on
  the autoencoder's latents ``(4, H/4, W/4)`` instead of pixels and cross-attends to the context;
- how to make the picture follow the text: conditioning dropout (``p_uncond``) in training, so that the same
  network also predicts without the text, which classifier-free guidance combines at sampling time
  (:mod:`minisd.diffusion.guidance`; Luo (2022), section "Guidance").

``autoencoder`` (:class:`~minisd.models.latent_autoencoder.LatentAutoencoder`) maps images to latents and back,
and is frozen too: only the diffusion model trains here. What a user calls is the pipeline,
:class:`minisd.pipelines.TextToImagePipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from minisd import batch_rows
from minisd.diffusion.guidance import check_interval
from minisd.errors import ConfigError
from minisd.models.base import Model
from minisd.models.clip import ContrastiveTextImage
from minisd.models.diffusion import DiffusionModel
from minisd.models.latent_autoencoder import LatentAutoencoder


class LatentDiffusion(Model):
    """A frozen autoencoder, a frozen text encoder and a trainable latent diffusion model with cross-attention.

    ``autoencoder``, ``text_encoder``: the hyper-parameters of the two frozen parts (their weights come from
    their own training runs, see :mod:`minisd.train.text_to_image`); ``unet``: those of the latent
    :class:`DiffusionModel` (its ``image_shape`` and ``context_dim`` follow from the other two).
    ``p_uncond``: the probability that a training caption is replaced by the empty prompt. ``guidance_scale``,
    ``sampler``, ``sample_steps`` and ``guidance_interval`` (log-SNR ``[low, high)``; None: every step) are the
    pipeline's defaults.
    """

    model_type = "latent_diffusion"
    needs_captions = True
    extra_file_names = ("tokenizer.json",)

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), autoencoder: dict | None = None,
                 text_encoder: dict | None = None, unet: dict | None = None, p_uncond: float = 0.1,
                 guidance_scale: float = 4.0, sampler: str = "dpmpp_2m", sample_steps: int = 20,
                 guidance_interval: Sequence[float] | None = None):
        autoencoder, text_encoder, unet = dict(autoencoder or {}), dict(text_encoder or {}), dict(unet or {})
        # The default guidance interval (log-SNR, see ClassifierFreeGuidance) is kept only when given, so that the
        # config of a model without one reads as it always did.
        interval = check_interval(guidance_interval)
        super().__init__(image_shape=list(image_shape), autoencoder=autoencoder, text_encoder=text_encoder,
                         unet=unet, p_uncond=p_uncond, guidance_scale=guidance_scale, sampler=sampler,
                         sample_steps=sample_steps, **({} if interval is None else {"guidance_interval": list(interval)}))
        if not 0 <= p_uncond < 1:
            raise ValueError(f"p_uncond is a probability below 1, got {p_uncond}")
        self.image_shape = tuple(image_shape)
        self.p_uncond, self.guidance_scale = p_uncond, guidance_scale
        self.sampler, self.sample_steps = sampler, sample_steps
        self.guidance_interval = interval  # None: guide at every step
        self.autoencoder = LatentAutoencoder(**autoencoder, image_shape=self.image_shape).requires_grad_(False)
        self.text_encoder = ContrastiveTextImage(**text_encoder, image_shape=self.image_shape).requires_grad_(False)
        self.diffusion = DiffusionModel(**{**unet, "image_shape": list(self.autoencoder.latent_shape),
                                           "context_dim": self.text_encoder.hparams["text_dim"],
                                           "num_classes": None, "p_uncond": 0.0})

    @classmethod
    def from_parts(cls, autoencoder: Model, text_encoder: Model, diffusion: DiffusionModel,
                   **settings) -> LatentDiffusion:
        """Compose trained parts (their weights and the text encoder's tokenizer are kept as they are)."""
        def own(hparams: dict, *drop: str) -> dict:
            return {k: v for k, v in hparams.items() if k not in ("image_shape", *drop)}

        model = cls(image_shape=tuple(autoencoder.image_shape), autoencoder=own(autoencoder.hparams),
                    text_encoder=own(text_encoder.hparams),
                    unet=own(diffusion.hparams, "context_dim", "num_classes", "p_uncond"), **settings)
        model.autoencoder = autoencoder.requires_grad_(False)
        model.text_encoder = text_encoder.requires_grad_(False)
        model.diffusion = diffusion
        return model

    # The frozen parts keep eval mode (no dropout) while the diffusion model trains.
    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.autoencoder.eval()
        self.text_encoder.eval()
        return self

    @property
    def tokenizer(self):
        return self.text_encoder.tokenizer

    # --- what the text-to-image pipeline asks of a model (StableDiffusion answers the same) --------------

    @property
    def denoiser(self):
        """The latent diffusion model's denoiser: D(z_t, t, context) -> z0_hat."""
        return self.diffusion.denoiser

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """The latents of a ``height`` x ``width`` picture: this model draws only the size it was trained on."""
        if (height, width) != tuple(self.image_shape[1:]):
            raise ConfigError(f"this model draws {self.image_shape[1]}x{self.image_shape[2]} pictures, the size it was "
                              f"trained on; {height}x{width} was asked")
        return self.autoencoder.latent_shape

    def sampling_options(self, sampler: str) -> dict[str, Any]:
        """How ``sampler`` runs: on the samplers' default grid (uniform in log-SNR), x0_hat unclipped (latents are
        not bounded)."""
        return {"clip": None}

    @torch.no_grad()
    def encode_init_image(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Latents of init images in [0, 1]: the posterior means (the autoencoder's posterior is narrow; ``generator``
        is not used)."""
        return self.autoencoder.encode(images)

    def extra_files(self) -> dict[str, bytes]:
        return self.text_encoder.extra_files()

    def load_extra_files(self, files: dict[str, bytes]) -> None:
        self.text_encoder.load_extra_files(files)

    def prepare(self, train_set: Any) -> None:
        if self.text_encoder.tokenizer is None:
            raise ValueError("a latent diffusion model is assembled from a trained text encoder: "
                             "train it with `minisd train --config text2image_mnist` (minisd.train.text_to_image)")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], *, allow_empty: bool = False) -> dict[str, torch.Tensor]:
        """The conditioning dict of ``prompts``: ``context`` ``(B, L, D)``, the text encoder's per-token embeddings,
        and ``context_mask`` ``(B, L)``. With ``allow_empty``, the empty prompt "" (the unconditional branch's
        condition, as conditioning dropout trained it) is allowed; a user's empty prompt is refused."""
        context, mask = self.text_encoder.encode_text(list(prompts), allow_empty=allow_empty)
        return {"context": context, "context_mask": mask}

    def condition(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.encode_prompts(batch["caption"], allow_empty=True)

    def drop_captions(self, captions: list[str]) -> list[str]:
        """Conditioning dropout (Ho & Salimans 2022): each caption becomes "" with probability ``p_uncond``."""
        dropped = batch_rows.bernoulli(self.p_uncond, (len(captions),))
        return ["" if drop else caption for caption, drop in zip(captions, dropped.tolist())]

    def latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's latents: cached ones (``batch["latent"]``, see :func:`encode_dataset`), else encoded now."""
        if "latent" in batch:
            return batch["latent"]
        with torch.no_grad():
            return self.autoencoder.encode(batch["image"])

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        captions = self.drop_captions(batch["caption"]) if self.training else batch["caption"]
        # A batch of reflow pairs carries each latent's own starting noise (minisd.train.reflow).
        loss = self.diffusion.loss_on(self.latents(batch), self.encode_prompts(captions, allow_empty=True),
                                      noise=batch.get("noise")).mean()
        return loss, {"loss": loss.item()}
