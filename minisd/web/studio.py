"""What the page does, without the page: models by name, one generation as a stream of steps, the PNGs it
writes, and the pictures of the earlier chapters. :mod:`minisd.web.app` draws the page around this; the tests
drive it directly.

Every generation goes through :class:`minisd.pipelines.TextToImagePipeline`, exactly as ``minisd generate``
does, and writes each image as a PNG with the same settings (``image_index`` marks which image of the batch),
so ``minisd generate --from minisd-7-0.png`` makes the identical image again.
"""

from __future__ import annotations

import queue
import secrets
import itertools
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from minisd.errors import ConfigError, MinisdError
from minisd.figures.text_to_image import noised_and_estimated
from minisd.figures.vae import decoded_plane
from minisd.generate import unknown_words_note
from minisd.web.limits import LATENT_EXTENT, Limits, RequestError
from minisd.web.pictures import attention_overlays, enlarge, tensor_grid

#: The samplers the page offers: each takes a fixed number of steps, so the live preview shows every one.
PAGE_SAMPLERS = ("dpmpp_2m", "dpmpp_2m_sde", "ddim", "ddpm", "euler", "euler_ancestral", "heun", "pc")
INIT_IMAGE_FILE, MASK_FILE = "init-image.png", "mask.png"


def find_models(shipped: Path, runs: Path | None) -> dict[str, Path]:
    """The text-to-image models the page may use, by the name the page shows: the shipped ones by their
    name (``mnist``), a run under ``runs`` by its path (``runs/my_model``), as ``--model`` takes them."""
    from minisd.pipelines import resolve_model

    def is_text_to_image(folder: Path) -> bool:
        try:
            return resolve_model(folder).is_text_to_image_folder
        except MinisdError:  # a run still training, or of another kind
            return False

    models = {p.name: p for p in sorted(shipped.iterdir()) if is_text_to_image(p)} if shipped.is_dir() else {}
    if runs is not None and runs.is_dir():
        models.update({str(run): run for run in sorted(runs.iterdir()) if run.is_dir() and is_text_to_image(run)})
    return models


@dataclass
class GenerationRequest:
    """One checked request (:meth:`Studio.request` builds it from what the browser sent)."""

    prompt: str
    model: str
    negative_prompt: str | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    num_images: int = 1
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float | None = None
    notes: list[str] = field(default_factory=list)
    #: A model this server offers that knows the prompt's words this model never read (the page offers to switch).
    suggested_model: str | None = None


@dataclass
class Generation:
    """A finished generation: the PNG files (one per image), their settings, the attention maps of the first
    image (one picture per prompt token), and the first image for the chapter tabs."""

    files: list[Path]
    settings: dict[str, Any]
    attention: list[tuple[Image.Image, str]] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)


class Studio:
    """Models by name, loaded once; generations written under ``outputs``."""

    def __init__(self, models: dict[str, Path], outputs: Path, *, limits: Limits | None = None,
                 device: str = "cpu", vae: Path | None = None, rescan: Callable[[], dict[str, Path]] | None = None,
                 threads: int | None = None):
        if not models:
            raise MinisdError("no text-to-image model to serve: the shipped checkpoints/ are missing and no run "
                              "under --runs has a model folder")
        self.models, self.outputs, self.device = dict(models), Path(outputs), device
        self.limits = limits or Limits()
        self.vae_path, self._rescan = vae, rescan
        self._pipelines: dict[str, Any] = {}
        self._vae: Any = None
        self._load_lock = threading.Lock()
        self._generating = threading.Lock()
        # Generations run in a worker thread, which would start with OpenMP's default thread count, not the one
        # the command set (--threads): the count changes the order of float sums, and so the last bit of a pixel.
        self.threads = threads or torch.get_num_threads()

    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    def refresh(self) -> list[str]:
        """Look again for models (``rescan``): a run that finished since the server started joins the list."""
        if self._rescan is not None:
            with self._load_lock:
                self.models = {**self._rescan(), **self.models}
        return self.model_names

    def pipeline(self, name: Any):
        """The pipeline of a model the server offers; any other name is refused (never read as a path)."""
        if not isinstance(name, str) or name not in self.models:
            raise RequestError(f"unknown model {name!r}; this server offers {', '.join(self.models)}")
        with self._load_lock:
            if name not in self._pipelines:
                from minisd.pipelines import load

                self._pipelines[name] = load(self.models[name], device=self.device)
        return self._pipelines[name]

    def request(self, *, prompt: Any, model: Any, negative_prompt: Any = None, sampler: Any = None,
                steps: Any = None, guidance_scale: Any = None, seed: Any = None, num_images: Any = 1,
                init_image: bytes | Image.Image | None = None, mask: bytes | Image.Image | None = None,
                strength: Any = None) -> GenerationRequest:
        """Check every value as the browser sent it (uploads as bytes, or as images the page decoded); a seed of
        None draws a random one."""
        limits = self.limits
        pipe = self.pipeline(model)
        if sampler not in (None, "") and sampler not in PAGE_SAMPLERS:
            raise RequestError(f"unknown sampler {sampler!r}; the page offers {', '.join(PAGE_SAMPLERS)}")
        checked = GenerationRequest(
            prompt=limits.prompt(prompt), model=model,
            negative_prompt=limits.prompt(negative_prompt, "the negative prompt", required=False) or None,
            sampler=sampler or None, steps=None if steps is None else limits.steps(steps),
            guidance_scale=None if guidance_scale is None else limits.guidance(guidance_scale),
            seed=secrets.randbelow(2**32) if seed is None else limits.seed(seed),
            num_images=limits.images(num_images))
        if mask is not None and init_image is None:
            raise RequestError("inpainting repaints part of an image: upload the image as well as the mask")
        if init_image is not None:
            checked.init_image = self._image(init_image, "the init image")
            checked.strength = None if strength is None else limits.strength(strength)
        if mask is not None:
            checked.mask = self._image(mask, "the mask")
            if checked.mask.size != checked.init_image.size:
                raise RequestError(f"the mask is {checked.mask.size[0]}x{checked.mask.size[1]} pixels but the "
                                   f"image is {checked.init_image.size[0]}x{checked.init_image.size[1]}: draw the "
                                   f"mask on the image itself")
        if checked.init_image is not None:
            checked.init_image = _fit(checked.init_image, pipe.image_shape)
        if checked.mask is not None:
            checked.mask = _fit(checked.mask.convert("L"), pipe.image_shape, Image.NEAREST)
            if checked.mask.getbbox() is None:
                raise RequestError("the mask has nothing painted at the model's size: paint over the part to "
                                   "redraw")
        tokenizer = pipe.model.tokenizer
        try:  # the text encoder's own limit (in tokens), before any work
            tokenizer(checked.prompt)
            tokenizer(checked.negative_prompt or "", allow_empty=True)
        except ConfigError as err:
            raise RequestError(str(err)) from None
        for text in filter(None, (checked.prompt, checked.negative_prompt)):
            found = unknown_words_note(text, tokenizer, model, self.models)
            if found is not None:
                note, known_by = found
                checked.notes.append(note + (f": choose {known_by[0]} in the Model list" if known_by else ""))
                checked.suggested_model = checked.suggested_model or (known_by[0] if known_by else None)
        return checked

    def _image(self, value: Any, what: str) -> Image.Image:
        # Turned as its EXIF orientation says (as viewers show it, and as minisd generate reads the file): the
        # PNG saved beside the outputs keeps no EXIF.
        if isinstance(value, (bytes, bytearray)):
            return ImageOps.exif_transpose(self.limits.upload(bytes(value), what))
        if isinstance(value, Image.Image):
            return ImageOps.exif_transpose(self.limits.image_size(value, what))
        raise RequestError(f"{what} must be an image, got {type(value).__name__}")

    def generate(self, request: GenerationRequest) -> Iterator[dict[str, Any]]:
        """Run one generation, yielding ``{"step", "steps", "t", "preview"}`` after each sampling step (the x0
        estimate of every image, as one picture), then ``{"done": Generation}``."""
        events: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._run, args=(request, events), daemon=True)
        worker.start()
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if "done" in event:
                return

    def _run(self, request: GenerationRequest, events: queue.Queue) -> None:
        # One generation at a time, also when a page that started one has gone (its stream is closed, but the
        # model call runs to its end, and the next one waits for it).
        with self._generating:
            torch.set_num_threads(self.threads)
            folder = self._new_folder(request.seed)
            try:
                events.put({"done": self._generate(request, events, folder)})
            except BaseException as err:  # handed to the page's thread, which raises it there
                shutil.rmtree(folder, ignore_errors=True)  # a failed generation leaves nothing behind
                events.put(err)

    def _generate(self, request: GenerationRequest, events: queue.Queue, folder: Path) -> Generation:
        from minisd.pipelines.inputs import load_image, load_mask, sha256_file
        from minisd.pipelines.png_settings import save_png
        from minisd.version import __version__

        pipe = self.pipeline(request.model)
        channels, height, width = pipe.image_shape
        inputs: dict[str, Any] = {}
        recorded: dict[str, Any] = {}
        files_in: list[Path] = []
        # An upload is saved, then read back as minisd generate reads --init-image and --mask: the settings
        # name these files and their sha256, so that --from beside them makes the same image.
        for key, image, name in (("init_image", request.init_image, INIT_IMAGE_FILE),
                                 ("mask", request.mask, MASK_FILE)):
            if image is None:
                continue
            path = folder / name
            image.save(path, format="PNG")
            files_in.append(path)
            recorded[key], recorded[f"{key}_sha256"] = name, sha256_file(path)
        if request.init_image is not None:
            inputs["image"] = load_image(folder / INIT_IMAGE_FILE, size=(height, width), channels=channels)
        if request.mask is not None:
            inputs["mask_image"] = load_mask(folder / MASK_FILE, size=(height, width))

        def on_step(info: dict[str, Any]) -> None:
            events.put({"step": int(info["step"]) + 1, "steps": info["steps"], "t": float(info["t"]),
                        "preview": enlarge(tensor_grid(info["x0_preview"].clamp(0, 1)))})

        guidance = pipe.model.guidance_scale if request.guidance_scale is None else request.guidance_scale
        output = pipe(request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                      guidance_scale=request.guidance_scale, sampler=request.sampler,
                      generator=torch.Generator(pipe.device).manual_seed(request.seed),
                      num_images_per_prompt=request.num_images, output_type="pt", strength=request.strength,
                      callback=on_step, return_attention=guidance > 0, **inputs)
        settings = {**output.settings, "seed": request.seed, "minisd_version": __version__, "model": request.model,
                    **recorded}
        from minisd.images import to_pil

        files = [save_png(image, folder / f"minisd-{request.seed}-{i}.png", {**settings, "image_index": i})
                 for i, image in enumerate(to_pil(output.images))]
        attention = []
        if output.attention_maps is not None:
            attention = attention_overlays(output.images[0], output.attention_maps[:, 0].mean(0), output.tokens[0])
        return Generation(files=files, settings=settings, attention=attention, inputs=files_in)

    def _new_folder(self, seed: int) -> Path:
        """A new folder for one generation, named by the time and the seed (never one that exists: the outputs
        of earlier servers in the same folder stay as they are)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for attempt in itertools.count():
            folder = self.outputs / (f"{stamp}-{seed}" + (f"-{attempt}" if attempt else ""))
            try:
                folder.mkdir(parents=True)
                return folder
            except FileExistsError:
                continue
        raise AssertionError("unreachable")

    # ---- the earlier chapters ----------------------------------------------------------------------------

    @property
    def vae(self):
        """The 2-d VAE of the latent-plane tab (``--vae``), loaded on first use; None without one."""
        if self.vae_path is None:
            return None
        with self._load_lock:
            if self._vae is None:
                from minisd.pipelines import load

                vae = load(self.vae_path, device=self.device)
                if getattr(vae, "hparams", {}).get("latent_dim") != 2:  # kept only once checked
                    raise MinisdError(f"{self.vae_path} is not a VAE with a 2-d latent: the plane needs one")
                self._vae = vae
        return self._vae

    def decode_latent(self, z0: Any, z1: Any) -> Image.Image:
        """The VAE's decoded image (its Bernoulli means) at the latent point (z0, z1)."""
        point = (torch.tensor([self.limits.latent(z0, "z[0]")]), torch.tensor([self.limits.latent(z1, "z[1]")]))
        return enlarge(tensor_grid(decoded_plane(self._need_vae(), *point)), 256)

    def latent_plane(self, side: int = 15) -> Image.Image:
        """Decoded images on a ``side`` x ``side`` grid over [-3, 3]^2, z[1] growing upwards (the clickable map)."""
        values = torch.linspace(-LATENT_EXTENT, LATENT_EXTENT, side)
        return enlarge(tensor_grid(decoded_plane(self._need_vae(), values, values), nrow=side, padding=0), 480)

    def _need_vae(self):
        if self.vae is None:
            raise RequestError("this server has no 2-d VAE: start it with --vae RUN (minisd train --config vae2d)")
        return self.vae

    @torch.no_grad()
    def noising(self, image: bytes | Image.Image | None, model: Any, prompt: Any, levels: int = 8, seed: int = 0,
                image_path: Path | None = None) -> tuple[list[tuple[Image.Image, str]], list[tuple[Image.Image, str]]]:
        """One image noised to ``levels`` times t in (0, 1] by the model's own schedule in its latent space,
        decoded (what the diffusion model sees), and the model's estimate of the clean image from each (what it
        makes of it, given ``prompt``). ``image`` is an upload; without one, ``image_path``, an image this server
        wrote (the page's last generation), is used."""
        from minisd.pipelines.inputs import image_to_tensor

        pipe = self.pipeline(model)
        text = self.limits.prompt(prompt, required=False)
        if image is not None:
            picture = self._image(image, "the image")
        elif image_path is not None:
            if not Path(image_path).resolve().is_relative_to(self.outputs.resolve()):
                raise RequestError("the image must be an upload or one this server generated")
            picture = Image.open(image_path)
        else:
            raise RequestError("upload an image, or generate one first")
        channels, height, width = pipe.image_shape
        picture = _fit(picture, pipe.image_shape)
        pixels = image_to_tensor(picture, size=(height, width), channels=channels, label="the image")
        ts, sigma, noised, denoised = noised_and_estimated(pipe, pixels, text, levels, seed)
        captions = [f"t={t:.2f} σ={s:.2f}" for t, s in zip(ts.tolist(), sigma.tolist())]
        return ([(enlarge(tensor_grid(x[None])), c) for x, c in zip(noised, captions)],
                [(enlarge(tensor_grid(x[None])), c) for x, c in zip(denoised, captions)])


def latent_point(x: float, y: float, size: tuple[int, int]) -> tuple[float, float]:
    """The point (z[0], z[1]) of the latent plane under pixel (x, y) of :meth:`Studio.latent_plane`'s picture of
    ``size`` (width, height): x grows to the right with z[0], y downwards against z[1]."""
    width, height = size
    return (round(-LATENT_EXTENT + (x + 0.5) / width * 2 * LATENT_EXTENT, 2),
            round(LATENT_EXTENT - (y + 0.5) / height * 2 * LATENT_EXTENT, 2))


def _fit(image: Image.Image, image_shape: tuple[int, int, int], resample: int = Image.LANCZOS) -> Image.Image:
    """Any upload at the model's size: cropped about its centre to the model's aspect, then resized."""
    _, height, width = image_shape
    return image if image.size == (width, height) else ImageOps.fit(image, (width, height), resample)
