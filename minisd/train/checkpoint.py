"""A training run's rotating checkpoint: a saved model (see :mod:`minisd.models.files`) plus what an exact resume
needs, ``ema.safetensors``, ``optimizer.safetensors`` and ``training_state.json``.

Reading a model out of a checkpoint (``minisd.load``, :func:`minisd.models.files.load`) needs nothing from here;
this module writes checkpoints and restores the training state from them.

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

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from minisd.errors import CheckpointError
from minisd.models import Model, files
from minisd.models.files import CHECKPOINT_DIR, FORMAT_VERSION, OLD_DIR, find_checkpoint
from minisd.version import __version__

TMP_PREFIX = f".{CHECKPOINT_DIR}.tmp-"
TRASH_PREFIX = f".{CHECKPOINT_DIR}.trash-"


# --------------------------------------------------------------------------------------
# The optimizer's state, as tensors and JSON
# --------------------------------------------------------------------------------------


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
        contents = {"model.safetensors": files.tensor_bytes(model.state_dict()),
                    "ema.safetensors": files.tensor_bytes(ema_model.state_dict()), **model.extra_files()}
        if optimizer is not None:
            tensors, rest = _flatten_optimizer_state(optimizer.state_dict())
            contents["optimizer.safetensors"] = files.tensor_bytes(tensors)
            contents["training_state.json"] = json.dumps({"step": step, "optimizer": rest}, indent=2).encode()
        checksums = {name: files.write_file(tmp / name, data) for name, data in contents.items()}
        full_config = {"format_version": FORMAT_VERSION, "minisd_version": __version__, "step": step, **config,
                       "model": {"type": model.model_type, **model.hparams}, "files": checksums}
        files.write_file(tmp / "config.json", (json.dumps(full_config, indent=2) + "\n").encode())  # last: it vouches
        files.make_readable(tmp)
        files.sync_folder(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final, old = run_dir / CHECKPOINT_DIR, run_dir / OLD_DIR
    if final.exists():
        if old.exists():
            _discard(old)
        os.replace(final, old)
    os.replace(tmp, final)
    files.sync_folder(run_dir)
    if old.exists():
        _discard(old)
    return final


# --------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------


def load_training_state(path: str | os.PathLike, model: Model, ema_model: Model,
                        optimizer: torch.optim.Optimizer) -> int:
    """Restore model, EMA and optimizer from a checkpoint for exact resumption; return the step reached."""
    folder = find_checkpoint(path)
    if folder is None or not (folder / "training_state.json").is_file():
        raise CheckpointError(f"there is no checkpoint with training state to resume in {path}")
    config = files.read_config(folder)
    files.load_extra_files((model, ema_model), folder, config)
    for module, name in ((model, "model.safetensors"), (ema_model, "ema.safetensors")):
        files.load_weights(module, files.read_tensors(folder, name, config), folder / name)
    try:
        state = json.loads(files.read_verified(folder, "training_state.json", config))
        # Loaded on the CPU: load_state_dict moves moments to each parameter's device and keeps
        # Adam's step counters where torch expects them.
        optimizer.load_state_dict(_unflatten_optimizer_state(files.read_tensors(folder, "optimizer.safetensors", config),
                                                             state["optimizer"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError) as err:
        raise CheckpointError(f"the training state in {folder} is damaged ({err}); it cannot be resumed") from None
    _match_parameter_layouts(optimizer)
    return state["step"]


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Lay each moment out in memory as its parameter is (a file holds them contiguous; a channels-last
    parameter's are not): a fused optimizer walks parameter, gradient and moments as flat arrays together."""
    for parameter, moments in optimizer.state.items():
        for key, value in moments.items():
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape and value.stride() != parameter.stride():
                moments[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)
