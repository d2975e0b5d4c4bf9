"""``minisd generate``: prompt in, PNG out, every setting stored in the PNG so ``--from`` makes it again.

The flags map one to one onto :class:`minisd.pipelines.TextToImagePipeline`'s arguments:
``--negative-prompt`` -> ``negative_prompt``, ``--steps`` -> ``num_inference_steps``, ``--guidance`` ->
``guidance_scale``, ``--sampler``, ``--seed`` -> ``generator``, ``--n`` -> ``num_images_per_prompt``,
``--init-image`` -> ``image``, ``--strength``, ``--mask`` -> ``mask_image``, and each sampler's own arguments
(``--eta``, ``--snr``, ``--ode-method`` -> ``method``, ...: :mod:`minisd.sampler_options`). Everything is checked
(output path, prompt, files, sampler arguments) before the model runs, and nothing is written unless the whole
generation succeeded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from minisd.errors import ConfigError, MinisdError
from minisd.sampler_options import SAMPLER_OPTIONS, add_sampler_option_flags, given_sampler_args

from minisd.shipped import DEFAULT_MODEL

# The settings --from may take from a PNG, and the flag each comes from (a sampler's own arguments are stored under
# their names, as the flags of SAMPLER_OPTIONS are).
_FLAG_OF_SETTING = {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "steps": "steps",
                    "sampler": "sampler", "guidance_scale": "guidance", "guidance_interval": "guidance_interval",
                    "strength": "strength",
                    "num_images": "n", "init_image": "init_image", "mask": "mask", "model": "model",
                    "height": "height", "width": "width",
                    **{option.name: option.name for option in SAMPLER_OPTIONS}}


def _tokenizer_of(folder: Path) -> Any:
    """The tokenizer of a text-to-image model (a model folder or the run that trained one), read alone, without the
    weights; None for anything else or a tokenizer that cannot be read."""
    from minisd.models.clip import TOKENIZER_FILE
    from minisd.pipelines import resolve_model
    from minisd.text.tokenizer import Tokenizer

    try:
        location = resolve_model(folder)
        return Tokenizer.load(location.folder / "text_encoder" / TOKENIZER_FILE) if location.is_text_to_image_folder \
            else None
    except MinisdError:
        return None


def unknown_words_note(text: str, tokenizer: Any, model_name: str,
                       models: dict[str, Path]) -> tuple[str, list[str]] | None:
    """What to tell a user whose prompt ``text`` has words the model ``model_name`` never read in its captions
    (``tokenizer``: its tokenizer): the note, and the names among ``models`` (name -> folder) whose tokenizers know
    every one of those words, so the user can switch. None when the model knows every word.

    The words become one ``[UNK]`` token each, which the model learnt nothing about: the image ignores them.
    """
    unknown = tokenizer.unknown_words(text)
    if not unknown:
        return None
    words = ", ".join(map(repr, unknown))
    known_by = [name for name, folder in models.items() if name != model_name
                and (other := _tokenizer_of(Path(folder))) is not None and not other.unknown_words(" ".join(unknown))]
    note = f"{words} {'is' if len(unknown) == 1 else 'are'} not in the {model_name} model's vocabulary"
    if known_by:
        models_word = "model knows" if len(known_by) == 1 else "models know"
        note += f"; the {' and '.join(known_by)} {models_word} {'it' if len(unknown) == 1 else 'them'}"
    else:
        note += f" ({'it is' if len(unknown) == 1 else 'they are'} read as an unknown word)"
    return note, known_by


def _settings_from_png(args: argparse.Namespace) -> None:
    """Fill ``args`` from the settings a PNG stores (``--from``); flags given explicitly are kept (every flag of
    :data:`_FLAG_OF_SETTING` defaults to None, so an explicit 0, ``--seed 0`` or ``--guidance 0``, is kept too)."""
    from minisd.pipelines.png_settings import check_recorded_inputs, read_settings

    settings = read_settings(args.from_png)
    check_recorded_inputs(settings, args.from_png)
    if not isinstance(settings.get("prompt"), str):
        raise MinisdError(f"{args.from_png} records no prompt of its own; it cannot be made again")
    for key, flag in _FLAG_OF_SETTING.items():
        if getattr(args, flag, None) is None and settings.get(key) is not None:
            setattr(args, flag, settings[key])
    if args.n is None:
        args.n = 1
    args.image_index = settings.get("image_index")
    args.recorded_model_hash = settings.get("model_hash")


def _check_strength(args: argparse.Namespace) -> None:
    if args.strength is not None and args.init_image is None:
        raise ConfigError("--strength says how much of --init-image to redraw: give --init-image too")
    if args.mask is not None and args.init_image is None:
        raise ConfigError("--mask marks what to repaint in --init-image: give --init-image too")


def _outputs(args: argparse.Namespace, count: int) -> list[Path]:
    """The files to write: one grid, or numbered files ``out-0.png``, ``out-1.png`` ... with ``--separate``."""
    out = Path(args.out)
    if args.separate and count > 1 and args.image_index is None:
        return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]
    return [out]


def run_generate(args: argparse.Namespace) -> list[Path]:
    import torch
    from tqdm import tqdm

    from minisd.images import make_grid, to_pil
    from minisd.outputs import check_writable
    from minisd.pipelines import TextToImagePipeline, load
    from minisd.pipelines.inputs import image_to_tensor, load_mask, open_image, sha256_file
    from minisd.pipelines.loading import shipped_text_to_image_models
    from minisd.pipelines.png_settings import save_png
    from minisd.runtime import resolve_device
    from minisd.version import __version__

    args.image_index = None
    if args.from_png is not None:
        _settings_from_png(args)
    if args.prompt is None:
        raise ConfigError("give a prompt, e.g. minisd generate \"a handwritten digit 7\", or --from IMAGE.png")
    sampler_args = given_sampler_args(args)
    from minisd.diffusion.samplers import check_sampler_args, check_steps, check_strength

    # Before the work (with the model's own sampler, the pipeline checks its arguments later).
    if args.sampler is not None:
        check_sampler_args(args.sampler, **sampler_args)
    if args.steps is not None:
        check_steps(args.steps)
    if args.strength is not None:
        check_strength(args.strength)
    if args.n is None:
        args.n = 1
    if args.seed is None:
        args.seed = 0
    _check_strength(args)
    outputs = _outputs(args, args.n)
    for out in outputs:  # before the work: a refused path must not cost a generation
        check_writable(out, args.overwrite, suffixes=(".png",), what="image")

    folder = args.model or DEFAULT_MODEL
    pipe = load(folder, device=resolve_device(args.device))
    if not isinstance(pipe, TextToImagePipeline):
        raise ConfigError(f"{folder} is a {pipe.model_type} checkpoint, not a text-to-image model; "
                          f"use minisd sample for it")
    recorded = getattr(args, "recorded_model_hash", None)
    if recorded and recorded != pipe.weights_hash:
        raise MinisdError(f"{args.from_png} was made by a model with hash {recorded}, but {folder} has hash "
                          f"{pipe.weights_hash}: another model would make another image; give --model the original")
    for text in filter(None, (args.prompt, args.negative_prompt)):
        found = unknown_words_note(text, pipe.model.tokenizer, folder, shipped_text_to_image_models())
        if found is not None:
            note, known_by = found
            print(f"minisd: note: {note}" + (f": --model {known_by[0]}" if known_by else ""), file=sys.stderr)
    init_image = None if args.init_image is None else open_image(args.init_image, "init image")
    channels, default_height, default_width = pipe.default_size(init_image)
    height, width = args.height or default_height, args.width or default_width
    inputs: dict[str, Any] = {}
    if args.init_image is not None:
        inputs["image"] = image_to_tensor(init_image, size=(height, width), channels=channels,
                                          label=f"the init image {args.init_image}")
    if args.mask is not None:
        inputs["mask_image"] = load_mask(args.mask, size=(height, width))

    generator = torch.Generator(pipe.device).manual_seed(args.seed)
    bars: list[tqdm] = []  # a progress bar on stderr from the first step on (a published model takes minutes)

    def on_step(info: dict[str, Any]) -> None:
        if not bars:
            bars.append(tqdm(total=info["steps"], desc="sampling", unit="step", leave=False))
        bars[0].update(1)

    try:
        output = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, guidance_interval=args.guidance_interval, sampler=args.sampler,
                      generator=generator,
                      num_images_per_prompt=args.n, output_type="pt", strength=args.strength, height=height,
                      width=width, callback=on_step, callback_preview=False, **inputs, **sampler_args)
    finally:
        for bar in bars:
            bar.close()
    settings = {**output.settings, "seed": args.seed, "minisd_version": __version__,
                "model": args.model or DEFAULT_MODEL}
    for key, path in (("init_image", args.init_image), ("mask", args.mask)):
        if path is not None:
            settings[key], settings[f"{key}_sha256"] = str(path), sha256_file(path)
    images = output.images
    if args.image_index is not None:  # --from one file of a --separate set
        images, settings["image_index"] = images[args.image_index:args.image_index + 1], args.image_index
    if len(outputs) == 1:
        picture = images[0] if len(images) == 1 else make_grid(images, padding=2 if len(images) > 1 else 0)
        return [save_png(to_pil(picture[None])[0], outputs[0], settings, overwrite=args.overwrite)]
    return [save_png(image, out, {**settings, "image_index": i}, overwrite=args.overwrite)
            for i, (image, out) in enumerate(zip(to_pil(images), outputs))]


def generate_png(prompt: str, out: str | Path, *, model: str | None = None, n: int = 1, seed: int = 0,
                 device: str = "auto", overwrite: bool = False, **options: Any) -> Path:
    """``minisd generate PROMPT --out OUT`` from Python, with the command's defaults (``options``: any other flag by
    its attribute name, e.g. ``guidance=2.0``); returns the PNG written."""
    flags = {"prompt": prompt, "out": str(out), "model": model, "n": n, "seed": seed, "device": device,
             "overwrite": overwrite, "negative_prompt": None, "steps": None, "guidance": None,
             "guidance_interval": None, "sampler": None,
             "separate": False, "init_image": None, "strength": None, "mask": None, "from_png": None,
             "height": None, "width": None,
             **{option.name: None for option in SAMPLER_OPTIONS}}
    unknown = set(options) - set(flags)
    if unknown:
        raise ConfigError(f"unknown generate options {sorted(unknown)}")
    return run_generate(argparse.Namespace(**{**flags, **options}))[0]


def add_generate_command(commands: Any, common: Any, positive_int: Any, seed: Any,
                         non_negative: Any, sampler_choices: Any) -> None:
    """The ``generate`` sub-command's flags (named like ``minisd sample``'s)."""
    generate = commands.add_parser("generate", help="make images from a text prompt (text-to-image)",
                                   description="Make images from a text prompt with a text-to-image model; "
                                               "every setting is stored in the PNG (--from makes it again).")
    generate.add_argument("prompt", nargs="?", help="what to draw, e.g. \"a handwritten digit 7\"")
    generate.add_argument("--out", default="generated.png", help="PNG to write (default: generated.png)")
    generate.add_argument("--negative-prompt", help="what to steer away from (the unconditional branch's prompt)")
    generate.add_argument("--steps", type=positive_int, help="sampling steps, at most 1000 (default: the model's, 20)")
    generate.add_argument("--guidance", type=non_negative, help="classifier-free guidance scale (0: ignore the "
                                                                "prompt, 1: plain conditional; default: the model's)")
    generate.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                          help="guide only where the log-SNR is in [LOW, HIGH), e.g. -1 3 (default: the model's; -99 99: "
                               "every step)")
    generate.add_argument("--sampler", choices=sampler_choices, metavar="SAMPLER",
                          help="diffusion sampler (default: the model's): %(choices)s")
    add_sampler_option_flags(generate)
    generate.add_argument("--seed", type=seed, help="random seed (default 0): the same seed gives the same image")
    generate.add_argument("--n", type=positive_int, help="number of images (default 1), in one grid PNG unless "
                                                         "--separate")
    generate.add_argument("--separate", action="store_true", help="write numbered files OUT-0.png, OUT-1.png ... "
                                                                  "instead of one grid")
    generate.add_argument("--height", type=positive_int, help="picture height in pixels (default: the model's; a "
                                                              "Stable Diffusion folder draws multiples of 8)")
    generate.add_argument("--width", type=positive_int, help="picture width in pixels (default: the model's)")
    generate.add_argument("--init-image", help="image-to-image: the PNG to start from (resized to the picture's size)")
    generate.add_argument("--strength", type=float, help="how much of the init image to redraw, in (0, 1] "
                                                         "(default 0.8; 1 with --mask)")
    generate.add_argument("--mask", help="inpainting: white where to repaint, black where to keep the init image")
    generate.add_argument("--model", help=f"model folder, run folder, shipped model name, or a Stable Diffusion "
                                          f"folder in diffusers' layout (default: {DEFAULT_MODEL}, from checkpoints/)")
    generate.add_argument("--from", dest="from_png", metavar="PNG", help="make the image stored in this PNG "
                                                                         "again, with its settings")
    generate.add_argument("--overwrite", action="store_true", help="replace existing output files")
    common(generate, data=False)

    def run(args: argparse.Namespace) -> None:
        for path in run_generate(args):
            print(path)

    generate.set_defaults(func=run)
