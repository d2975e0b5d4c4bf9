"""The text-to-image pipeline: prompt in, image out, in the call convention of diffusers.

    pipe = minisd.load("checkpoints/mnist")
    out = pipe("a handwritten digit 7", num_inference_steps=20, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(0), num_images_per_prompt=4)
    out.images  # a list of PIL images

One call, in the order of Stable Diffusion's own:

1. the prompts (and negative prompts) go through the frozen text encoder into per-token contexts;
2. the latent diffusion model's denoiser is wrapped: classifier-free guidance (the negative prompt, or the
   empty prompt, is the unconditional branch), then inpainting when there is a mask;
3. a sampler of :mod:`minisd.diffusion.samplers` runs from noise, or from the encoded init image noised to
   ``strength`` (image-to-image);
4. the autoencoder decodes the latents into images.
Nothing here knows how a sampler or a guidance works: each is a function or a wrapper over the denoiser.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from PIL import Image

from minisd.diffusion.denoiser import ClippedDenoiser
from minisd.diffusion.guidance import ClassifierFreeGuidance, check_interval, check_scale
from minisd.diffusion.inpainting import InpaintingDenoiser
from minisd.diffusion.samplers import check_sampler_args
from minisd.diffusion.samplers import sample as run_sampler
from minisd.errors import ConfigError
from minisd.images import to_pil
from minisd.models.latent_diffusion import LatentDiffusion
from minisd.nn.attention import record_cross_attention
from minisd.pipelines.inputs import image_to_tensor, mask_to_tensor

DEFAULT_IMG2IMG_STRENGTH = 0.8  # diffusers' default: keeps the layout, redraws the details


@dataclass
class PipelineOutput:
    """What a pipeline call returns: ``images`` (PIL images, or a tensor ``(N, C, H, W)`` in [0, 1] with
    ``output_type="pt"``), the ``settings`` it ran with, and with ``return_attention=True`` the cross-attention
    maps ``(steps, N, L, h, w)`` of each prompt token over the latent grid, with the ``tokens`` they belong to."""

    images: list[Image.Image] | torch.Tensor
    settings: dict[str, Any]
    attention_maps: torch.Tensor | None = None
    tokens: list[list[str]] = field(default_factory=list)


def _as_list(prompts: str | list[str], what: str) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ConfigError(f"no {what} given")
    return prompts


def _check_guidance(scale: Any) -> float:
    scale = check_scale(scale)
    if scale < 0:
        raise ConfigError(f"the guidance scale must be 0 or more (0: ignore the prompt, 1: plain conditional), "
                          f"got {scale}")
    return float(scale)


class TextToImagePipeline:
    """Text-to-image, image-to-image and inpainting with one :class:`LatentDiffusion` model.

    ``name`` and ``weights_hash`` identify the model in the settings every output carries (and a PNG stores).
    """

    def __init__(self, model: LatentDiffusion, *, name: str = "model", weights_hash: str = ""):
        self.model, self.name, self.weights_hash = model.eval(), name, weights_hash

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.model.image_shape

    def to(self, device: str | torch.device) -> TextToImagePipeline:
        self.model.to(device)
        return self

    def _image(self, image: Image.Image | torch.Tensor, label: str, height: int, width: int) -> torch.Tensor:
        channels = self.image_shape[0]
        if isinstance(image, Image.Image):
            return image_to_tensor(image, size=(height, width), channels=channels, label=label)
        if image.dim() == 3:
            image = image[None]
        if tuple(image.shape[1:]) != (channels, height, width):
            raise ConfigError(f"{label} has shape {tuple(image.shape[1:])}; the pictures asked for are "
                              f"{(channels, height, width)}")
        return image.float()

    def default_size(self, image: Image.Image | torch.Tensor | None) -> tuple[int, int, int]:
        """The picture's shape when the caller gives no height or width: the model's own, or for a model that draws
        any size (a published one), the init image's, rounded down to the size multiple, as diffusers does."""
        multiple = getattr(self.model, "size_multiple", None)
        if image is None or multiple is None:
            return self.image_shape
        height, width = (image.height, image.width) if isinstance(image, Image.Image) else tuple(image.shape[-2:])
        return (self.image_shape[0], max(multiple, height - height % multiple), max(multiple, width - width % multiple))

    def _mask(self, mask: Image.Image | torch.Tensor, height: int, width: int) -> torch.Tensor:
        if isinstance(mask, Image.Image):
            return mask_to_tensor(mask, size=(height, width))
        mask = mask[None] if mask.dim() == 3 else mask
        if tuple(mask.shape[-2:]) != (height, width):
            raise ConfigError(f"the mask is {tuple(mask.shape[-2:])}; this model makes {height}x{width} images")
        return (mask >= 0.5).float()

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
                 generator: torch.Generator | None = None, num_images_per_prompt: int = 1, output_type: str = "pil",
                 callback: Callable[[dict[str, Any]], None] | None = None, callback_preview: bool = True,
                 image: Image.Image | torch.Tensor | None = None, strength: float | None = None,
                 mask_image: Image.Image | torch.Tensor | None = None, return_attention: bool = False,
                 height: int | None = None, width: int | None = None, latents: torch.Tensor | None = None,
                 guidance_interval: tuple[float, float] | None = None, **sampler_args: Any) -> PipelineOutput:
        """Images for ``prompt`` (one or a list; ``num_images_per_prompt`` each, in prompt order).

        ``negative_prompt``: what the unconditional branch of classifier-free guidance is conditioned on (one,
        or one per prompt); ``guidance_scale`` (default: the model's): 0 ignores the prompt, 1 is the plain
        conditional model, more follows the prompt harder (Luo (2022), section "Classifier-Free Guidance").
        ``guidance_interval`` ``(low, high)``: guide only the steps whose log-SNR is in ``[low, high)`` (default: the
        model's; ``(-inf, inf)`` guides every step).
        ``image``: an init image ``(C, H, W)``/``(1, C, H, W)`` tensor in [0, 1] or a PIL image, redrawn from
        ``strength`` (default 0.8; 1 redraws everything); with ``mask_image`` (white = repaint) only the
        masked region is redrawn (``strength`` default 1) and the rest is the init image as the autoencoder
        reconstructs it. ``generator`` fixes every noise draw; without one a seed is drawn (leaving torch's global
        RNG as it was) and returned as ``settings["seed"]``. ``callback`` gets, after every step, a dict with ``step`` (from 0), ``steps`` (how many run:
        ``floor(strength * steps)`` from an init image), ``t``, ``latents`` and ``x0_preview`` (the current estimate
        of the images, decoded; left out with ``callback_preview=False``, which saves a decode a step).
        ``height`` and ``width``: the picture's size (default: the model's own, or a published model's init
        image's; a model of chapter 7 draws only its own). ``latents``: the standard normal starting noise ``(N, C, h, w)``, as in diffusers
        (the sampler scales it as its grid asks); by default drawn from ``generator``.
        """
        model = self.model
        prompts = _as_list(prompt, "prompt")
        negatives = [""] * len(prompts) if negative_prompt is None else _as_list(negative_prompt, "negative prompt")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ConfigError(f"{len(negatives)} negative prompts for {len(prompts)} prompts: give one, or one each")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
                or num_images_per_prompt < 1:
            raise ConfigError(f"num_images_per_prompt must be a whole number, at least 1, got {num_images_per_prompt!r}")
        if output_type not in ("pil", "pt", "np"):
            raise ConfigError(f"output_type is 'pil', 'pt' or 'np', not {output_type!r}")
        steps = model.sample_steps if num_inference_steps is None else num_inference_steps
        scale = _check_guidance(model.guidance_scale if guidance_scale is None else guidance_scale)
        sampler = sampler or model.sampler
        interval = check_interval(model.guidance_interval if guidance_interval is None else guidance_interval)
        if scale < 1 and getattr(model, "published", False):
            # Code written for diffusers passes guidance_scale=0.0 (SD-Turbo's examples) to mean "no guidance".
            warnings.warn(f"guidance_scale {scale:g} mixes in the unconditional prediction (at 0 the prompt is "
                          f"ignored); diffusers reads every scale up to 1 as no guidance, which is 1 here", stacklevel=2)
        if mask_image is not None and image is None:
            raise ConfigError("inpainting needs the image to repaint (image=) as well as the mask")
        if strength is None:
            strength = 1.0 if mask_image is not None else DEFAULT_IMG2IMG_STRENGTH
        check_sampler_args(sampler, steps=steps, strength=strength, **sampler_args)  # before any work
        _, default_height, default_width = self.default_size(image)
        height, width = height or default_height, width or default_width
        latent_shape = model.latent_shape(height, width)
        if return_attention and scale == 0:
            # Guidance 0 runs the unconditional branch alone: the prompt's tokens are never attended to.
            raise ConfigError("attention maps show where the prompt acts, and at guidance_scale 0 it does not: "
                              "use a guidance scale above 0")

        repeat = num_images_per_prompt
        n = len(prompts) * repeat
        cond = model.encode_prompts([p for p in prompts for _ in range(repeat)])  # checks every prompt
        # An empty negative prompt is no negative prompt: the empty text the unconditional branch trained on.
        uncond = model.encode_prompts([p for p in negatives for _ in range(repeat)], allow_empty=True)
        denoiser = ClassifierFreeGuidance(model.denoiser, scale, uncond, interval)
        seed = None
        if generator is None:
            # A seed of our own, drawn without torch.seed(), which would reseed the caller's global RNG; it is
            # recorded in the settings, so the images can be made again.
            seed = secrets.randbits(63)
            generator = torch.Generator(self.device).manual_seed(seed)
        x_start = mask = None
        if image is not None:
            pixels = self._image(image, "the init image", height, width).to(self.device)
            if len(pixels) not in (1, n):
                raise ConfigError(f"{len(pixels)} init images for {n} images: give one, or one per image")
            x_start = model.encode_init_image(pixels, generator)  # one draw per init image, then repeated
            x_start = x_start.expand(n, -1, -1, -1) if len(x_start) == 1 else x_start
            if mask_image is not None:
                mask = self._mask(mask_image, height, width).to(self.device)
                # A latent cell is repainted if any pixel it covers is: the autoencoder's receptive field
                # mixes neighbouring pixels, so a partly masked cell cannot be kept as it was.
                latent_mask = F.adaptive_max_pool2d(mask, x_start.shape[-2:])
                denoiser = InpaintingDenoiser(denoiser, x_start, latent_mask)

        recorder = record_cross_attention(model.denoiser.network) if return_attention else None
        step_callback = None
        if callback is not None or recorder is not None:
            def step_callback(info: dict[str, Any]) -> None:
                if recorder is not None:
                    recorder.end_step()
                if callback is not None:
                    preview = {"x0_preview": model.autoencoder.decode(info["x0_pred"])} if callback_preview else {}
                    callback({"step": info["step"], "steps": info["steps"], "t": info["t"], "latents": info["x"],
                              **preview})

        options = model.sampling_options(sampler)
        clip = options.pop("clip")
        if clip is not None:
            denoiser = ClippedDenoiser(denoiser, -clip, clip)
        try:
            latents = run_sampler(denoiser, (n, *latent_shape), sampler=sampler, steps=steps,
                                  generator=generator, cond=cond, callback=step_callback, device=self.device,
                                  x_start=x_start, strength=strength if x_start is not None else 1.0, noise=latents,
                                  **options, **sampler_args)
        finally:
            if recorder is not None:
                recorder.close()
        images = model.autoencoder.decode(latents).clamp(0, 1)
        if mask is not None:
            # The latents outside the mask are the init image's, but the decoder's convolutions and group norms
            # see the whole latent grid: what was painted would shift the kept pixels too. Outside the mask the
            # image is therefore the kept latents decoded alone, the init image up to the autoencoder's error.
            images = mask * images + (1 - mask) * model.autoencoder.decode(x_start).clamp(0, 1)

        settings = {"prompt": prompts[0] if len(prompts) == 1 else prompts,
                    "negative_prompt": None if negative_prompt is None else negative_prompt,
                    "steps": steps, "sampler": sampler, "guidance_scale": scale,
                    **({"guidance_interval": list(interval)} if interval is not None else {}),
                    "strength": strength if image is not None else None,
                    "width": width, "height": height, "num_images": n,
                    "model": self.name, "model_hash": self.weights_hash,
                    "seed": seed, **sampler_args}  # the seed drawn here (None: the caller's generator)
        images = {"pil": to_pil, "pt": torch.Tensor.cpu,  # "np": (N, H, W, C) in [0, 1], as diffusers gives it
                  "np": lambda x: x.permute(0, 2, 3, 1).cpu().numpy()}[output_type](images)
        output = PipelineOutput(images=images, settings=settings)
        if recorder is not None:
            output.attention_maps = recorder.maps(n, latent_shape[1:])
            output.tokens = [model.tokenizer.tokens(p) for p in prompts for _ in range(repeat)]
        return output
