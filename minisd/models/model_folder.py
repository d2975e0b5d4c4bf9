"""A whole text-to-image model as one folder, in the shape of a diffusers model folder:

    model_index.json        names the parts and holds the composition's own settings
    autoencoder/            config.json, model.safetensors                 (a LatentAutoencoder)
    text_encoder/           config.json, model.safetensors, tokenizer.json (a ContrastiveTextImage)
    unet/                   config.json, model.safetensors                 (the latent DiffusionModel)
    README.md               the model card (how it was trained, how long, its metrics), when given

The weights are stored in float16 and loaded as float32. Each part is a folder :func:`minisd.load` reads on its own (``minisd.load("checkpoints/mnist/unet")``), with
the sha256 of each of its files in its ``config.json``; ``model_index.json`` records the sha256 of each part's
``config.json``, so one hash fingerprints the whole model (:func:`model_hash`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from minisd.diffusion.guidance import check_interval
from minisd.diffusion.samplers import MAX_STEPS, SAMPLERS
from minisd.errors import CheckpointError, ConfigError
from minisd.models.latent_diffusion import LatentDiffusion
from minisd.models.files import load, save_model
from minisd.version import __version__

INDEX = "model_index.json"
RUN_MODEL_FOLDER = "model"  # where a text-to-image training run (minisd.train.text_to_image) writes its model folder
PARTS = {"autoencoder": "autoencoder", "text_encoder": "text_encoder", "unet": "diffusion"}  # folder -> attribute


def _is_interval(value: Any) -> bool:
    try:
        check_interval(value)
    except ConfigError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What each setting of the index's "model" table must be (the LatentDiffusion constructor's own settings).
_SETTING_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "image_shape": ("three positive whole numbers", lambda v: isinstance(v, list) and len(v) == 3 and all(
        isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in v)),
    "p_uncond": ("a probability below 1", lambda v: _is_number(v) and 0 <= v < 1),
    "guidance_scale": ("a finite number, 0 or more", lambda v: _is_number(v) and v >= 0),
    "sampler": (f"one of {sorted(SAMPLERS)}", lambda v: isinstance(v, str) and v in SAMPLERS),
    "sample_steps": (f"a whole number from 1 to {MAX_STEPS}",
                     lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_STEPS),
    "guidance_interval": ("two log-SNR values [low, high], low < high", lambda v: isinstance(v, list) and _is_interval(v)),
}


def is_model_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / INDEX).is_file()


def save_model_folder(model: LatentDiffusion, folder: str | os.PathLike, *, data: dict | None = None,
                      card: str | None = None) -> Path:
    """Write ``model`` as a model folder (see the module docstring); ``folder`` must not exist yet. Written into a
    temporary sibling and renamed, so a crash leaves no half-written model under the name. ``data``: the data
    table it was trained on (``{"dataset": "mnist"}``), kept in the index so evaluations know the test set."""
    folder = Path(folder)
    if folder.exists():
        raise CheckpointError(f"{folder} already exists; a model folder is written only where none is")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        parts = {}
        for name, attribute in PARTS.items():
            # float16: half the size (a shipped model must stay small), and no visible change in the images.
            part = save_model(tmp / name, getattr(model, attribute), dtype=torch.float16)
            parts[name] = {"type": getattr(model, attribute).model_type,
                           "config_sha256": hashlib.sha256((part / "config.json").read_bytes()).hexdigest()}
        index = {"_class_name": "LatentDiffusion", "minisd_version": __version__, "parts": parts,
                 "model": {key: model.hparams[key] for key in _SETTING_RULES if key in model.hparams}, "data": data or {}}
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if card is not None:
            (tmp / "README.md").write_text(card)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _check_settings(folder: Path, settings: dict) -> None:
    """Refuse a ``model`` table the constructor would not take, naming the setting (a damaged or edited index)."""
    for key, value in settings.items():
        if key not in _SETTING_RULES:
            raise CheckpointError(f"{folder / INDEX} has an unknown model setting {key!r} (known: "
                                  f"{', '.join(_SETTING_RULES)}); the model folder is damaged or from another version")
        description, is_valid = _SETTING_RULES[key]
        if not is_valid(value):
            raise CheckpointError(f"{folder / INDEX} has model setting {key} = {value!r}, which should be "
                                  f"{description}; the model folder is damaged")


def _read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / INDEX).read_text())
        if not isinstance(index.get("parts"), dict) or not isinstance(index.get("model"), dict):
            raise ValueError("no parts or model table")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{folder / INDEX} is damaged ({err}); the model folder cannot be read") from None
    missing = {name for name in PARTS if not isinstance(index["parts"].get(name), dict)}
    if missing:
        raise CheckpointError(f"{folder / INDEX} names no {', '.join(sorted(missing))}: the model folder is incomplete")
    _check_settings(folder, index["model"])
    return index


def read_model_index(folder: str | os.PathLike) -> dict:
    """The ``model_index.json`` of a model folder: its parts, settings and ``data`` table."""
    return _read_index(Path(folder))


def model_hash(folder: str | os.PathLike) -> str:
    """The first 10 hex digits of the sha256 of ``model_index.json``, which vouches for every part's files."""
    return hashlib.sha256((Path(folder) / INDEX).read_bytes()).hexdigest()[:10]


def load_model_folder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> LatentDiffusion:
    """The :class:`LatentDiffusion` model of a model folder, every file checked against its sha256."""
    folder = Path(folder)
    index = _read_index(folder)
    parts = {}
    for name, attribute in PARTS.items():
        config_bytes = (folder / name / "config.json").read_bytes() if (folder / name / "config.json").is_file() else b""
        if hashlib.sha256(config_bytes).hexdigest() != index["parts"][name].get("config_sha256"):
            raise CheckpointError(f"{folder / name / 'config.json'} is missing or does not match {folder / INDEX}: "
                                  f"the model folder is damaged or mixes parts of different models")
        parts[attribute] = load(folder / name)
    return LatentDiffusion.from_parts(**parts, **{k: v for k, v in index["model"].items() if k != "image_shape"}
                                      ).to(device).eval()
