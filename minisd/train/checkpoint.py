"""Checkpoint folders: ``config.json``, ``model.safetensors``, ``ema.safetensors`` and the training state.

Nothing is pickled; loading builds only model types that :data:`minisd.models.MODELS` registers.
``config.json`` records the sha256 of every other file of the folder, and loading checks it, so a
weight file changed or damaged after it was written is refused by name instead of giving garbage.

**The save protocol** keeps a complete checkpoint loadable at every instant, whatever sequence of
crashes interrupts it (``tests/test_checkpoint.py`` crashes a save at every step, twice in a row):

1. write every file into a fresh ``.checkpoint.tmp-*`` folder and flush it to disk;
2. if ``checkpoint/`` exists (complete: only ever made by step 3's rename), discard any
   ``.checkpoint.old/`` and rename ``checkpoint/`` to ``.checkpoint.old/``;
3. rename the new folder to ``checkpoint/``;
4. discard ``.checkpoint.old/``.

A folder is discarded by first renaming it to ``.checkpoint.trash-*``, so a half-deleted folder never
sits under a name that is loaded. :func:`find_checkpoint` takes ``checkpoint/`` and falls back to
``.checkpoint.old/``; at every point above one of them is complete, and ``.old`` is only ever discarded
while ``checkpoint/`` exists. Leftover tmp and trash folders of killed saves are removed by the next
save and on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from minisd.errors import CheckpointError, MinisdError
from minisd.models import Model, build_model
from minisd.train.config import check_model_section
from minisd.version import __version__

CHECKPOINT_DIR = "checkpoint"
OLD_DIR = f".{CHECKPOINT_DIR}.old"
TMP_PREFIX = f".{CHECKPOINT_DIR}.tmp-"
TRASH_PREFIX = f".{CHECKPOINT_DIR}.trash-"
FORMAT_VERSION = 2  # 2: config.json holds the sha256 of every other file ("files")


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk: a rename is only durable once its folder is flushed."""
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows cannot open folders; NTFS journals renames itself
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _write_file(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path``, flushed to disk; return its sha256 (what ``config.json`` records)."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return _sha256(data)


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def _flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and everything else (for JSON)."""
    tensors, scalars = {}, {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private folder; a checkpoint gets the permissions the user's umask gives."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for file in folder.iterdir():
        os.chmod(file, 0o666 & ~umask)


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def _discard(folder: Path) -> None:
    """Remove a folder, first moving it out of every name that is loaded (see the module docstring)."""
    trash = folder.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex[:8]}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_folders(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the ``.checkpoint.tmp-*`` and ``.checkpoint.trash-*`` folders that killed saves left; return them."""
    run_dir = Path(run_dir)
    stale = sorted([*run_dir.glob(f"{TMP_PREFIX}*"), *run_dir.glob(f"{TRASH_PREFIX}*")])
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def save_checkpoint(run_dir: str | os.PathLike, *, config: dict[str, Any], model: Model, ema_model: Model,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0) -> Path:
    """Write ``run_dir/checkpoint`` by the protocol of the module docstring and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=run_dir))
    try:
        contents = {"model.safetensors": _tensor_bytes(model.state_dict()),
                    "ema.safetensors": _tensor_bytes(ema_model.state_dict()), **model.extra_files()}
        if optimizer is not None:
            tensors, rest = _flatten_optimizer_state(optimizer.state_dict())
            contents["optimizer.safetensors"] = _tensor_bytes(tensors)
            contents["training_state.json"] = json.dumps({"step": step, "optimizer": rest}, indent=2).encode()
        files = {name: _write_file(tmp / name, data) for name, data in contents.items()}
        full_config = {"format_version": FORMAT_VERSION, "minisd_version": __version__, "step": step, **config,
                       "model": {"type": model.model_type, **model.hparams}, "files": files}
        _write_file(tmp / "config.json", (json.dumps(full_config, indent=2) + "\n").encode())  # last: it vouches
        _make_readable(tmp)
        _sync_folder(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final, old = run_dir / CHECKPOINT_DIR, run_dir / OLD_DIR
    if final.exists():
        if old.exists():
            _discard(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _sync_folder(run_dir)
    if old.exists():
        _discard(old)
    return final


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


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


def _read_config(folder: Path) -> dict[str, Any]:
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
    return _read_config(_checkpoint_folder(path))


def _read_verified(folder: Path, name: str, config: dict[str, Any]) -> bytes:
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
    if expected is not None and _sha256(data) != expected:
        raise CheckpointError(f"{file} was changed or damaged after it was saved: its sha256 does not match the "
                              f"one in config.json; restore the file from a copy or train again")
    return data


def _read_tensors(folder: Path, name: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    data = _read_verified(folder, name, config)
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{folder / name} is not a valid safetensors file ({err})") from None


def _load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], file: Path) -> None:
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


def _load_extra_files(models: tuple[Model, ...], folder: Path, config: dict[str, Any]) -> None:
    """Give each model the files it keeps beside its weights (a tokenizer), each checked against its sha256."""
    names = models[0].extra_file_names
    if not names:
        return
    files = {}
    for name in names:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name} is missing: a {models[0].model_type} checkpoint needs it")
        files[name] = _read_verified(folder, name, config)
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
    config = _read_config(folder)
    model = _build(config, folder)
    _load_extra_files((model,), folder, config)
    # An exported model folder (save_model) holds one set of weights, the averaged ones, as model.safetensors.
    name = "ema.safetensors" if ema and (folder / "ema.safetensors").exists() else "model.safetensors"
    _load_weights(model, _read_tensors(folder, name, config), folder / name)
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
        contents = {"model.safetensors": _tensor_bytes(weights), **model.extra_files()}
        files = {name: _write_file(tmp / name, data) for name, data in contents.items()}
        config = {"format_version": FORMAT_VERSION, "minisd_version": __version__, **(extra_config or {}),
                  "model": {"type": model.model_type, **model.hparams}, "files": files}
        _write_file(tmp / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        _make_readable(tmp)
        _sync_folder(tmp)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def weights_hash(folder: str | os.PathLike) -> str:
    """A short fingerprint of a saved model: the sha256 of its ``config.json``, which records every file's sha256."""
    return _sha256(Path(folder, "config.json").read_bytes())[:10]


def load_training_state(path: str | os.PathLike, model: Model, ema_model: Model,
                        optimizer: torch.optim.Optimizer) -> int:
    """Restore model, EMA and optimizer from a checkpoint for exact resumption; return the step reached."""
    folder = find_checkpoint(path)
    if folder is None or not (folder / "training_state.json").is_file():
        raise CheckpointError(f"there is no checkpoint with training state to resume in {path}")
    config = _read_config(folder)
    _load_extra_files((model, ema_model), folder, config)
    for module, name in ((model, "model.safetensors"), (ema_model, "ema.safetensors")):
        _load_weights(module, _read_tensors(folder, name, config), folder / name)
    try:
        state = json.loads(_read_verified(folder, "training_state.json", config))
        # Loaded on the CPU: load_state_dict moves moments to each parameter's device and keeps
        # Adam's step counters where torch expects them.
        optimizer.load_state_dict(_unflatten_optimizer_state(_read_tensors(folder, "optimizer.safetensors", config),
                                                             state["optimizer"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError) as err:
        raise CheckpointError(f"the training state in {folder} is damaged ({err}); it cannot be resumed") from None
    return state["step"]
