"""Stable Diffusion itself (Rombach et al. 2022; the published 1.x and 2.x models), run by minisd's own modules.

The path's last step. The three parts of chapter 7's text-to-image model are the three parts of Stable Diffusion,
only larger and trained on billions of captioned pictures instead of MNIST:

    the text            CLIP's text transformer (:class:`~minisd.text.TextEncoder`, causal) and its byte-level BPE
                        tokenizer (:class:`~minisd.text.clip_tokenizer.ClipTokenizer`), frozen, as chapter 7's;
    the picture         a UNet with cross-attention (:class:`~minisd.nn.UNet`) on the latents of a KL autoencoder
                        (:class:`~minisd.models.latent_autoencoder.LatentAutoencoder`, factor 8, 4 channels);
    the noise levels    1000 discrete steps (:class:`~minisd.diffusion.discrete.DiscreteSchedule`), predicting eps
                        (1.x, 2.x-base) or v (2.x at 768 pixels).

:func:`load_stable_diffusion` builds each from a diffusers folder's configs (:mod:`minisd.models.sd_configs`) and
fills it from its safetensors (:mod:`minisd.models.sd_weights`). The result has the interface of
:class:`~minisd.models.latent_diffusion.LatentDiffusion`, so :class:`minisd.pipelines.TextToImagePipeline` runs it
with chapter 4's samplers and chapter 6's guidance, unchanged.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minisd.diffusion.denoiser import NetworkDenoiser
from minisd.diffusion.discrete import DiscreteSchedule, clip_range, default_spacing, training_betas
from minisd.errors import CheckpointError, ConfigError
from minisd.models.latent_autoencoder import LatentAutoencoder
from minisd.models.sd_configs import (INDEX, PIPELINES, Config, autoencoder_settings, read_index, read_json, safe_child,
                                      scheduler_settings, text_encoder_settings, unet_settings)
from minisd.models.sd_weights import (TEXT_ENCODER_NAMES, UNET_NAMES, codec_names, fingerprint, load_weights,
                                      weights_file)
from minisd.nn.latent_codec import downsampling_factor
from minisd.nn.unet import UNet
from minisd.text.clip_tokenizer import ClipTokenizer
from minisd.text.encoder import TextEncoder

MAX_SIDE = 4096  # pixels: a 4096x4096 picture is 16 times SD 1.x's training size, far past where it draws well


class StableDiffusion(nn.Module):
    """A published Stable Diffusion model: ``autoencoder``, ``text_encoder`` with ``tokenizer``, and ``denoiser``
    (the UNet with its schedule and prediction), plus the defaults diffusers samples it with."""

    published = True  # the pipeline warns where diffusers' conventions differ from minisd's (a guidance below 1)

    def __init__(self, unet: UNet, autoencoder: LatentAutoencoder, text_encoder: TextEncoder, tokenizer: ClipTokenizer,
                 schedule: DiscreteSchedule, prediction: str, sampler: str, sample_size: int):
        super().__init__()
        self.denoiser = NetworkDenoiser(unet, schedule, prediction)
        self.autoencoder, self.text_encoder, self.tokenizer = autoencoder, text_encoder, tokenizer
        factor = downsampling_factor(autoencoder.hparams["channel_mults"])
        self.image_shape = (autoencoder.image_shape[0], sample_size * factor, sample_size * factor)
        # diffusers' defaults for these pipelines: 50 steps at guidance 7.5 (its guidance_scale is Luo's gamma).
        self.sampler, self.sample_steps, self.guidance_scale, self.guidance_interval = sampler, 50, 7.5, None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def size_multiple(self) -> int:
        """Pictures of any size this multiple of pixels (the autoencoder's factor, 8) can be drawn."""
        return downsampling_factor(self.autoencoder.hparams["channel_mults"])

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """The latents ``(channels, height / 8, width / 8)`` of a ``height`` x ``width`` picture; each side must be a
        multiple of the autoencoder's factor 8 (as diffusers asks), from 8 to 4096."""
        factor = downsampling_factor(self.autoencoder.hparams["channel_mults"])
        for name, side in (("height", height), ("width", width)):
            if isinstance(side, bool) or not isinstance(side, int) or not factor <= side <= MAX_SIDE or side % factor:
                raise ConfigError(f"the {name} must be a multiple of {factor} from {factor} to {MAX_SIDE} pixels "
                                  f"(the autoencoder halves each side {factor.bit_length() - 1} times), got {side!r}")
        return (self.autoencoder.latent_channels, height // factor, width // factor)

    def sampling_options(self, sampler: str) -> dict[str, Any]:
        """How ``sampler`` runs on this model, as diffusers runs the scheduler it corresponds to: the folder's timestep
        spacing, and the range x0_hat is clipped to (``clip``: the denoiser's, as DDPMScheduler clips; ``clip_x0``:
        DDIM's own, where it differs). None: not clipped."""
        schedule = self.denoiser.schedule
        clip = clip_range(schedule, sampler)
        if sampler == "ddim" and clip is not None:
            return {"spacing": default_spacing(schedule, sampler), "clip": None, "clip_x0": clip}
        return {"spacing": default_spacing(schedule, sampler), "clip": clip}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], *, allow_empty: bool = False) -> dict[str, torch.Tensor]:
        """The context ``(B, 77, dim)``: CLIP's last hidden states of the padded prompts, all 77 attended to, as SD was
        trained (no mask). ``allow_empty`` is accepted for the pipeline's sake: the empty prompt is always valid here."""
        for prompt in prompts if not allow_empty else ():
            cut = self.tokenizer.truncated(prompt) if isinstance(prompt, str) else ""
            if cut:
                warnings.warn(f"the prompt is longer than the {self.tokenizer.max_length} tokens CLIP reads; this part "
                              f"was left out: {cut!r}", stacklevel=3)
        ids = self.tokenizer(list(prompts)).to(self.device)
        return {"context": self.text_encoder(ids)}

    @torch.no_grad()
    def encode_init_image(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Latents of init images in [0, 1], drawn from the posterior with ``generator`` as diffusers' image-to-image
        pipeline draws them (so that the same seed gives the same picture there)."""
        return self.autoencoder.encode(images, sample=True, generator=generator)


def is_stable_diffusion_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a diffusers Stable Diffusion folder (its ``model_index.json`` names such a pipeline)."""
    file = Path(path) / INDEX
    if not file.is_file():
        return False
    try:
        return read_json(file).get("_class_name") in PIPELINES
    except CheckpointError:
        return False


def _part(folder: Path, name: str) -> Path:
    part = safe_child(folder, name)
    if not part.is_dir():
        raise CheckpointError(f"{part} is missing: the Stable Diffusion folder is incomplete")
    return part


def stable_diffusion_fingerprint(folder: str | os.PathLike) -> str:
    """An identifier of the folder's weights (:func:`minisd.models.sd_weights.fingerprint`), for PNG settings."""
    folder = Path(folder)
    return fingerprint([weights_file(_part(folder, name)) for name in ("unet", "vae", "text_encoder")])


def load_unet(part: Path, settings: dict[str, Any] | None = None) -> tuple[UNet, int]:
    """SD's UNet from its folder (``unet/``: config.json and the safetensors), and its latent sample size.
    ``settings``: the config already read by :func:`~minisd.models.sd_configs.unet_settings`."""
    settings = dict(settings or unet_settings(Config(part / "config.json")))
    sample_size = settings.pop("sample_size")
    with torch.device("meta"):  # shapes only: nothing is allocated before the weights are checked against them
        unet = UNet(**settings)
    return load_weights(unet, weights_file(part), UNET_NAMES, part / "config.json"), sample_size


def load_autoencoder(part: Path, settings: dict[str, Any] | None = None) -> LatentAutoencoder:
    """SD's autoencoder from its folder (``vae/``), its latent scale from ``scaling_factor``."""
    settings = dict(settings or autoencoder_settings(Config(part / "config.json")))
    latent_scale = settings.pop("latent_scale")
    with torch.device("meta"):
        autoencoder = LatentAutoencoder(**settings)
    return load_weights(autoencoder, weights_file(part), codec_names(settings), part / "config.json",
                        buffers={"latent_scale": torch.tensor(latent_scale)})


def load_text_encoder(part: Path, settings: dict[str, Any] | None = None) -> TextEncoder:
    """CLIP's text transformer from its folder (``text_encoder/``, transformers' layout)."""
    with torch.device("meta"):
        text_encoder = TextEncoder(**(settings or text_encoder_settings(Config(part / "config.json"))))
    return load_weights(text_encoder, weights_file(part), TEXT_ENCODER_NAMES, part / "config.json")


def load_stable_diffusion(folder: str | os.PathLike, device: str | torch.device = "cpu") -> StableDiffusion:
    """Build :class:`StableDiffusion` from a diffusers folder: every config checked, then every part built on the
    meta device and filled from its safetensors. Nothing is downloaded and no code from the folder is run."""
    folder = Path(folder)
    classes = read_index(folder)
    parts = {name: _part(folder, name) for name in ("unet", "vae", "text_encoder", "scheduler", "tokenizer")}
    # Every config first (cheap, and each problem named before any weight is read), then the weights.
    unet_config, vae_config, text_config = (parts[name] / "config.json" for name in ("unet", "vae", "text_encoder"))
    unet, vae = unet_settings(Config(unet_config)), autoencoder_settings(Config(vae_config))
    text = text_encoder_settings(Config(text_config))
    scheduler = scheduler_settings(Config(parts["scheduler"] / "scheduler_config.json"), classes["scheduler"])
    tokenizer = ClipTokenizer.from_folder(parts["tokenizer"])
    if unet["context_dim"] != text["dim"]:
        raise CheckpointError(f"{unet_config} cross-attends to {unet['context_dim']} features, but {text_config} "
                              f"gives {text['dim']}: the parts are of different models")
    if unet["in_channels"] != vae["latent_channels"]:
        raise CheckpointError(f"{unet_config} takes {unet['in_channels']} channels, but {vae_config} makes "
                              f"{vae['latent_channels']}-channel latents (an inpainting UNet, with its 9 channels, "
                              f"needs the inpainting pipeline, which minisd does not have)")
    if tokenizer.max_length > text["max_length"] or tokenizer.vocab_size > text["vocab_size"]:
        raise CheckpointError(f"the tokenizer ({tokenizer.vocab_size} tokens, {tokenizer.max_length} positions) does "
                              f"not fit {text_config} ({text['vocab_size']}, {text['max_length']})")
    unet_module, sample_size = load_unet(parts["unet"], unet)
    betas = training_betas(**scheduler["schedule"]) if scheduler["betas"] is None else torch.tensor(scheduler["betas"])
    schedule = DiscreteSchedule(betas, steps_offset=scheduler["steps_offset"],
                                set_alpha_to_one=scheduler["set_alpha_to_one"],
                                timestep_spacing=scheduler["timestep_spacing"], clip_sample=scheduler["clip_sample"],
                                clip_sample_range=scheduler["clip_sample_range"])
    model = StableDiffusion(unet_module, load_autoencoder(parts["vae"], vae), load_text_encoder(parts["text_encoder"], text),
                            tokenizer, schedule, scheduler["prediction"], scheduler["sampler"], sample_size)
    return model.to(device).eval()
