"""One saved model: a folder with ``config.json`` and ``model.safetensors`` (and, from training, ``ema.safetensors``).

This is the layer every user of a saved model stands on (diffusers keeps the same in ``ModelMixin``): the
pipelines, training, evaluation and the command line load and save through it, and it imports nothing above
:mod:`minisd.models`. Nothing is pickled; loading builds only model types that :data:`minisd.models.MODELS`
registers. ``config.json`` records the sha256 of every other file of the folder, and loading checks it, so a
weight file changed or damaged after it was written is refused by name instead of giving garbage; then the
model section is checked against the model's constructor, and the weights against the model it describes.
Each failure is one :class:`CheckpointError` naming the file.

A training run keeps its latest checkpoint (the same layout plus the training state, see
:mod:`minisd.train.checkpoint`) in ``RUN/checkpoint/``; :func:`find_checkpoint` finds it from the run folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from minisd.errors import CheckpointError, MinisdError
from minisd.models.base import Model
from minisd.models.registry import build_model, check_model_section
from minisd.version import __version__

CHECKPOINT_DIR = "checkpoint"  # where a training run keeps its latest checkpoint
OLD_DIR = f".{CHECKPOINT_DIR}.old"  # the previous one, complete, while a save replaces it
FORMAT_VERSION = 2  # 2: config.json holds the sha256 of every other file ("files")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk: a rename is only durable once its folder is flushed."""
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows cannot open folders; NTFS journals renames itself
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_file(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path``, flushed to disk; return its sha256 (what ``config.json`` records)."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return sha256(data)


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def make_readable(folder: Path) -> None:
    """mkdtemp makes a private folder; a checkpoint gets the permissions the user's umask gives."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for file in folder.iterdir():
        os.chmod(file, 0o666 & ~umask)


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint folder for ``path``: a checkpoint folder itself or a run folder holding one.

    If a crash fell between the renames of :func:`save_checkpoint`, the previous checkpoint is
    still complete under ``.checkpoint.old`` and is returned.
    """
    path = Path(path)
    for candidate in (path, path / CHECKPOINT_DIR, path / OLD_DIR):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def run_folder(checkpoint: str | os.PathLike) -> Path:
    """The run folder of ``checkpoint`` as a user names it (the run itself, or its ``checkpoint/``), where the
    commands put what they make of it by default (samples, figures)."""
    path = Path(checkpoint)
    return path.parent if path.name == CHECKPOINT_DIR else path


def read_config(folder: Path) -> dict[str, Any]:
    file = folder / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({err}): the checkpoint is damaged") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{file} has no model section (a table with the model's type and settings): "
                              f"the checkpoint is damaged")
    shape_problem = ("its data entry is not a table" if not isinstance(config.get("data", {}), dict) else
                     "its step is not a whole number" if not isinstance(config.get("step", 0), int) else
                     "its files entry is not a table of checksums" if not isinstance(config.get("files", {}), dict)
                     else None)
    if shape_problem:
        raise CheckpointError(f"{file}: {shape_problem}; the checkpoint is damaged")
    return config


def _checkpoint_folder(path: str | os.PathLike) -> Path:
    folder = find_checkpoint(path)
    if folder is None:
        raise CheckpointError(f"{path} is not a minisd checkpoint: expected a folder with config.json and "
                              f"model.safetensors, or a run folder holding '{CHECKPOINT_DIR}/'")
    return folder


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of the checkpoint at ``path`` (a checkpoint or run folder)."""
    return read_config(_checkpoint_folder(path))


def read_verified(folder: Path, name: str, config: dict[str, Any]) -> bytes:
    """The bytes of ``folder/name``, checked against the sha256 that ``config.json`` recorded for it.

    Checkpoints written before checksums (format 1) record none, and are read unchecked.
    """
    file = folder / name
    try:
        data = file.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{file} cannot be read ({err.strerror or err}): the checkpoint is incomplete") from None
    expected = config.get("files", {}).get(name)
    if "files" in config and expected is None:
        raise CheckpointError(f"{file} is not one of the files config.json vouches for: the checkpoint is damaged")
    if expected is not None and sha256(data) != expected:
        raise CheckpointError(f"{file} was changed or damaged after it was saved: its sha256 does not match the "
                              f"one in config.json; restore the file from a copy or train again")
    return data


def read_tensors(folder: Path, name: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    data = read_verified(folder, name, config)
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{folder / name} is not a valid safetensors file ({err})") from None


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], file: Path) -> None:
    try:
        module.load_state_dict(tensors)
    except RuntimeError as err:
        problems = "; ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise CheckpointError(f"{file} does not fit the model that config.json describes ({problems})") from None


def _build(config: dict[str, Any], folder: Path) -> Model:
    try:
        check_model_section(config["model"])
    except MinisdError as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from None
    return build_model(config["model"])


def load_extra_files(models: tuple[Model, ...], folder: Path, config: dict[str, Any]) -> None:
    """Give each model the files it keeps beside its weights (a tokenizer), each checked against its sha256."""
    names = models[0].extra_file_names
    if not names:
        return
    files = {}
    for name in names:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name} is missing: a {models[0].model_type} checkpoint needs it")
        files[name] = read_verified(folder, name, config)
    for model in models:
        try:
            model.load_extra_files(files)
        except MinisdError as err:
            raise CheckpointError(f"{folder}: {err}") from None


def load(path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu") -> Model:
    """A trained model from a checkpoint (or run) folder, in eval mode.

    ``ema=True`` loads the exponential moving average of the weights, which samples and
    evaluates better than the raw weights of the last step.
    """
    folder = _checkpoint_folder(path)
    config = read_config(folder)
    model = _build(config, folder)
    load_extra_files((model,), folder, config)
    # An exported model folder (save_model) holds one set of weights, the averaged ones, as model.safetensors.
    name = "ema.safetensors" if ema and (folder / "ema.safetensors").exists() else "model.safetensors"
    load_weights(model, read_tensors(folder, name, config), folder / name)
    return model.to(device).eval()


def save_model(folder: str | os.PathLike, model: Model, *, extra_config: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` alone (no training state) as a loadable folder: ``config.json`` (with the sha256 of every
    file), ``model.safetensors`` and the model's extra files. Written into a temporary sibling, then renamed:
    ``folder`` must not exist yet. :func:`load` reads it. ``dtype`` (say ``torch.float16``) stores the floating
    point parameters in that type, half the size; loading casts them back to the model's own."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        parameters = {name for name, _ in model.named_parameters()}  # buffers (a latent scale) keep their precision
        weights = {k: v.to(dtype) if dtype is not None and k in parameters and v.is_floating_point() else v
                   for k, v in model.state_dict().items()}
        contents = {"model.safetensors": tensor_bytes(weights), **model.extra_files()}
        files = {name: write_file(tmp / name, data) for name, data in contents.items()}
        config = {"format_version": FORMAT_VERSION, "minisd_version": __version__, **(extra_config or {}),
                  "model": {"type": model.model_type, **model.hparams}, "files": files}
        write_file(tmp / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        make_readable(tmp)
        sync_folder(tmp)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def weights_hash(folder: str | os.PathLike) -> str:
    """A short fingerprint of a saved model: the sha256 of its ``config.json``, which records every file's sha256."""
    return sha256(Path(folder, "config.json").read_bytes())[:10]
