"""A whole text-to-image model as one folder, in the shape of a diffusers model folder:

    model_index.json        names the parts and holds the composition's own settings
    autoencoder/            config.json, model.safetensors                 (a LatentAutoencoder)
    text_encoder/           config.json, model.safetensors, tokenizer.json (a ContrastiveTextImage)
    unet/                   config.json, model.safetensors                 (the latent DiffusionModel)
    README.md               the model card (how it was trained, how long, its metrics), when given

Each part is a folder :func:`minisd.load` reads on its own (``minisd.load("checkpoints/mnist/unet")``), with
the sha256 of each of its files in its ``config.json``; ``model_index.json`` records the sha256 of each part's
``config.json``, so one hash fingerprints the whole model (:func:`model_hash`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from minisd.errors import CheckpointError
from minisd.models.latent_diffusion import LatentDiffusion
from minisd.train.checkpoint import load, save_model
from minisd.version import __version__

INDEX = "model_index.json"
PARTS = {"autoencoder": "autoencoder", "text_encoder": "text_encoder", "unet": "diffusion"}  # folder -> attribute
_OWN_SETTINGS = ("image_shape", "p_uncond", "guidance_scale", "sampler", "sample_steps")


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
            part = save_model(tmp / name, getattr(model, attribute))
            parts[name] = {"type": getattr(model, attribute).model_type,
                           "config_sha256": hashlib.sha256((part / "config.json").read_bytes()).hexdigest()}
        index = {"_class_name": "LatentDiffusion", "minisd_version": __version__, "parts": parts,
                 "model": {key: model.hparams[key] for key in _OWN_SETTINGS}, "data": data or {}}
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if card is not None:
            (tmp / "README.md").write_text(card)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / INDEX).read_text())
        if not isinstance(index.get("parts"), dict) or not isinstance(index.get("model"), dict):
            raise ValueError("no parts or model table")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{folder / INDEX} is damaged ({err}); the model folder cannot be read") from None
    missing = set(PARTS) - set(index["parts"])
    if missing:
        raise CheckpointError(f"{folder / INDEX} names no {', '.join(sorted(missing))}: the model folder is incomplete")
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
