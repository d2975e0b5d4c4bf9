"""``minisd serve``: its flags, and the server they start."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from minisd.web.limits import Limits

DEFAULT_PORT = 7860  # Gradio's
DEFAULT_VAE = "vae2d"  # checkpoints/vae2d: the chapter-2 VAE with a 2-d latent


def add_serve_command(commands: Any, common: Any, positive_int: Any) -> None:
    limits = Limits()
    serve = commands.add_parser(
        "serve", help="a local web page: type a prompt and watch the picture form (needs the web extra)",
        description="Serve a web page on this machine: text-to-image with live denoising, attention maps, "
                    "image-to-image and inpainting, and the VAE and diffusion chapters. Listens on 127.0.0.1 only "
                    "unless --host says otherwise. Needs the optional extra: pip install 'minisd[web]'.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens the page to "
                            "the network, with a warning)")
    serve.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--runs", default="runs",
                       help="folder whose text-to-image runs the page offers beside the shipped models "
                            "(default: runs)")
    serve.add_argument("--model", action="append", default=[], metavar="FOLDER",
                       help="a text-to-image model the page offers too, first in its list: a model or run folder, or a "
                            "Stable Diffusion folder in diffusers' layout (repeat for several)")
    serve.add_argument("--vae", help=f"the 2-d VAE of the latent-plane tab: a run or checkpoint folder (default: "
                                     f"the shipped checkpoints/{DEFAULT_VAE})")
    serve.add_argument("--outputs", default="outputs/serve",
                       help="folder the page writes its PNGs into, one subfolder per generation "
                            "(default: outputs/serve)")
    serve.add_argument("--max-steps", type=positive_int, default=limits.max_steps,
                       help=f"most sampling steps a request may ask for (default {limits.max_steps})")
    serve.add_argument("--max-images", type=positive_int, default=limits.max_images,
                       help=f"most images per request (default {limits.max_images})")
    serve.add_argument("--max-prompt", type=positive_int, default=limits.max_prompt_chars,
                       help=f"most characters in a prompt (default {limits.max_prompt_chars})")
    serve.add_argument("--max-upload-mb", type=float, default=limits.max_upload_bytes / 2**20,
                       help=f"largest upload in MiB (default {limits.max_upload_bytes / 2**20:g})")
    serve.add_argument("--queue", type=int, default=limits.queue_size,
                       help=f"requests that may wait while one runs; more are told the server is busy "
                            f"(default {limits.queue_size})")
    common(serve, data=False)
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    from minisd.errors import ConfigError
    from minisd.pipelines import resolve_model
    from minisd.shipped import SHIPPED_MODELS
    from minisd.runtime import resolve_device
    from minisd.web.app import import_gradio, serve
    from minisd.web.studio import Studio, find_models

    import_gradio()  # before any model is loaded: say at once what is missing
    if not 0 < args.max_upload_mb <= 1024:
        raise ConfigError(f"--max-upload-mb must be above 0 and at most 1024, got {args.max_upload_mb}")
    limits = Limits(max_prompt_chars=args.max_prompt, max_steps=args.max_steps, max_images=args.max_images,
                    max_upload_bytes=int(args.max_upload_mb * 2**20), queue_size=args.queue)
    vae = resolve_model(args.vae).folder if args.vae else SHIPPED_MODELS / DEFAULT_VAE
    given = {}
    for name in args.model:  # checked before the server starts: a mistyped folder is one line, not a broken page
        location = resolve_model(name)
        if not location.is_text_to_image_folder:
            raise ConfigError(f"--model {name}: not a text-to-image model (a model folder, a text-to-image run, or a "
                              f"Stable Diffusion folder)")
        given[name] = location.folder

    def models() -> dict[str, Path]:
        return {**given, **find_models(SHIPPED_MODELS, Path(args.runs))}

    studio = Studio(models(), Path(args.outputs), limits=limits, device=str(resolve_device(args.device)),
                    vae=vae if vae.exists() else None, rescan=models)
    serve(studio, host=args.host, port=args.port)
