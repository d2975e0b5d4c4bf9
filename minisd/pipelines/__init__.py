"""Pipelines: what users call to make images (prompt, negative prompt, init image, mask -> images).

:func:`load` is ``minisd.load``: a name or path (resolved by :func:`resolve_model`: a shipped model, a model
folder, a run folder) gives a :class:`TextToImagePipeline` for a text-to-image model, any other checkpoint its
model. Settings stored inside PNGs are in :mod:`minisd.pipelines.png_settings`; a user's init image and mask are
read by :mod:`minisd.pipelines.inputs`.
"""

from minisd.pipelines.loading import ModelLocation, load, resolve_model, shipped_models
from minisd.pipelines.text_to_image import PipelineOutput, TextToImagePipeline

__all__ = ["load", "resolve_model", "shipped_models", "ModelLocation", "PipelineOutput", "TextToImagePipeline"]
