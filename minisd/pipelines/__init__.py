"""Pipelines: what users call to make images (prompt, negative prompt, init image, mask -> images).

:func:`load` is ``minisd.load``: a text-to-image model folder (or the run folder that trained one) gives a
:class:`TextToImagePipeline`, any other checkpoint its model. Settings stored inside PNGs are in
:mod:`minisd.pipelines.png_settings`; a user's init image and mask are read by :mod:`minisd.pipelines.inputs`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from minisd.models.latent_diffusion import LatentDiffusion
from minisd.pipelines.model_folder import is_model_folder, load_model_folder, model_hash, save_model_folder
from minisd.pipelines.text_to_image import PipelineOutput, TextToImagePipeline

TEXT_TO_IMAGE_RUN_MODEL = "model"  # where a text-to-image training run puts its model folder


def load(path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"):
    """A trained model: a :class:`TextToImagePipeline` for a text-to-image model folder, the run folder that
    trained one, or its ``unet`` stage's checkpoint; else the model of a checkpoint or run folder (``ema``: its
    averaged weights), in eval mode."""
    from minisd.train.checkpoint import load as load_checkpoint

    path = Path(path)
    for folder in (path, path / TEXT_TO_IMAGE_RUN_MODEL):
        if is_model_folder(folder):
            return TextToImagePipeline(load_model_folder(folder, device), name=folder.resolve().name if
                                       folder == path else path.resolve().name, weights_hash=model_hash(folder))
    model = load_checkpoint(path, ema=ema, device=device)
    if isinstance(model, LatentDiffusion):  # a text-to-image run's UNet stage, mid-training or done
        from minisd.train.checkpoint import find_checkpoint, weights_hash

        return TextToImagePipeline(model, name=path.resolve().name, weights_hash=weights_hash(find_checkpoint(path)))
    return model


__all__ = ["load", "PipelineOutput", "TextToImagePipeline", "is_model_folder", "load_model_folder", "model_hash",
           "save_model_folder"]
