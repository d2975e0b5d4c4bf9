"""What a model name or path means, in one place: ``minisd.load``, ``generate``, ``eval``, ``serve`` and every
command's ``--model`` or checkpoint argument go through :func:`resolve_model`.

    a shipped name           "mnist"                  -> checkpoints/mnist (a model folder)
    a model folder           "checkpoints/shapes"     -> itself (it holds model_index.json)
    a text-to-image run      "runs/t2i"               -> runs/t2i/model, named after the run
    a run or checkpoint      "runs/vae", ".../unet"   -> its checkpoint (RUN/checkpoint, or the folder itself)
    a Stable Diffusion folder  "~/sd-1.5"             -> itself (diffusers' layout: model_index.json names its pipeline)

A path that exists is always taken as a path, so a folder of the user's never hides behind a shipped name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from minisd.errors import CheckpointError, ConfigError
from minisd.models.files import find_checkpoint, load as load_saved_model, weights_hash
from minisd.models.latent_diffusion import LatentDiffusion
from minisd.models.model_folder import RUN_MODEL_FOLDER, is_model_folder, load_model_folder, model_hash
from minisd.models.stable_diffusion import (is_stable_diffusion_folder, load_stable_diffusion,
                                            stable_diffusion_fingerprint)
from minisd.pipelines.text_to_image import TextToImagePipeline
from minisd.shipped import DEFAULT_MODEL, shipped_models


@dataclass(frozen=True)
class ModelLocation:
    """Where a model is: ``folder`` to read (a model folder when ``is_text_to_image_folder``, else a saved model or
    checkpoint) and ``name``, what settings, PNGs and the page call it (a shipped name, or the run's folder name)."""

    folder: Path
    name: str
    is_text_to_image_folder: bool
    is_stable_diffusion: bool = False  # a published model's diffusers folder (minisd.models.stable_diffusion)


def shipped_text_to_image_models() -> dict[str, Path]:
    """The shipped text-to-image models (model folders) by name."""
    return {name: folder for name, folder in shipped_models().items() if is_model_folder(folder)}


def resolve_model(name_or_path: str | os.PathLike | None) -> ModelLocation:
    """The :class:`ModelLocation` a name or path means (see the module docstring); None means the default model.
    Anything else is one :class:`ConfigError` that names the shipped models."""
    given = str(DEFAULT_MODEL if name_or_path is None else name_or_path)
    path = Path(given)
    if not path.exists():
        shipped = shipped_models()
        if given in shipped:
            path = shipped[given]
        elif os.sep in given or given.startswith((".", "~")):  # a path, not a name: say it is missing
            raise CheckpointError(f"no model {given!r}: there is no such folder")
        else:
            raise ConfigError(f"no model {given!r}: not a folder, and not one of the shipped models {sorted(shipped)}")
    if is_stable_diffusion_folder(path):
        return ModelLocation(path, path.resolve().name, True, is_stable_diffusion=True)
    for folder in (path, path / RUN_MODEL_FOLDER):
        if is_model_folder(folder):
            return ModelLocation(folder, path.resolve().name, True)
    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"{path} is not a minisd checkpoint: expected a model folder (model_index.json), a "
                              f"saved model or checkpoint (config.json), or a run folder holding one")
    return ModelLocation(checkpoint, path.resolve().name, False)


def load(name_or_path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"):
    """A trained model, by name or path (:func:`resolve_model`): a :class:`TextToImagePipeline` for a text-to-image
    model folder, the run that trained one, or its ``unet`` stage's checkpoint (mid-training or done); else the
    model of a checkpoint or run folder (``ema``: its averaged weights), in eval mode."""
    location = resolve_model(name_or_path)
    if location.is_stable_diffusion:
        return TextToImagePipeline(load_stable_diffusion(location.folder, device), name=location.name,
                                   weights_hash=stable_diffusion_fingerprint(location.folder))
    if location.is_text_to_image_folder:
        return TextToImagePipeline(load_model_folder(location.folder, device), name=location.name,
                                   weights_hash=model_hash(location.folder))
    model = load_saved_model(location.folder, ema=ema, device=device)
    if isinstance(model, LatentDiffusion):
        return TextToImagePipeline(model, name=location.name, weights_hash=weights_hash(location.folder))
    return model
