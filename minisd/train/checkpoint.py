"""Checkpoint folders: ``config.json``, ``model.safetensors``, ``ema.safetensors`` and the training state.

A checkpoint is written into a temporary folder and then renamed into place, so a crash
never leaves half of one: either the previous checkpoint or the new one is there. Nothing
is pickled; loading builds only model types that :data:`minisd.models.MODELS` registers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from minisd.errors import MinisdError
from minisd.models import Model, build_model
from minisd.version import __version__

CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


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


def save_checkpoint(run_dir: str | os.PathLike, *, config: dict[str, Any], model: Model, ema_model: Model,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0) -> Path:
    """Write ``run_dir/checkpoint`` atomically and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_DIR}.tmp-", dir=run_dir))
    try:
        full_config = {"format_version": FORMAT_VERSION, "minisd_version": __version__, "step": step, **config,
                       "model": {"type": model.model_type, **model.hparams}}
        (tmp / "config.json").write_text(json.dumps(full_config, indent=2) + "\n")
        _save_tensors(model.state_dict(), tmp / "model.safetensors")
        _save_tensors(ema_model.state_dict(), tmp / "ema.safetensors")
        if optimizer is not None:
            tensors, rest = _flatten_optimizer_state(optimizer.state_dict())
            _save_tensors(tensors, tmp / "optimizer.safetensors")
            (tmp / "training_state.json").write_text(json.dumps({"step": step, "optimizer": rest}, indent=2))
        _make_readable(tmp)
        final, old = run_dir / CHECKPOINT_DIR, run_dir / f".{CHECKPOINT_DIR}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint folder for ``path``: a checkpoint folder itself or a run folder holding one.

    If a crash fell between the two renames of :func:`save_checkpoint`, the previous
    checkpoint is still there under ``.checkpoint.old`` and is returned.
    """
    path = Path(path)
    for candidate in (path, path / CHECKPOINT_DIR, path / f".{CHECKPOINT_DIR}.old"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    return None


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    folder = find_checkpoint(path)
    if folder is None:
        raise MinisdError(f"{path} is not a minisd checkpoint: expected a folder with config.json and "
                          f"model.safetensors, or a run folder holding '{CHECKPOINT_DIR}/'")
    return json.loads((folder / "config.json").read_text())


def load(path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu") -> Model:
    """A trained model from a checkpoint (or run) folder, in eval mode.

    ``ema=True`` loads the exponential moving average of the weights, which samples and
    evaluates better than the raw weights of the last step.
    """
    config = read_checkpoint_config(path)
    folder = find_checkpoint(path)
    model = build_model(config["model"])
    weights = folder / ("ema.safetensors" if ema else "model.safetensors")
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval()


def load_training_state(path: str | os.PathLike, model: Model, ema_model: Model,
                        optimizer: torch.optim.Optimizer) -> int:
    """Restore model, EMA and optimizer from a checkpoint for exact resumption; return the step reached."""
    folder = find_checkpoint(path)
    if folder is None or not (folder / "training_state.json").is_file():
        raise MinisdError(f"there is no checkpoint with training state to resume in {path}")
    device = model.device
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    ema_model.load_state_dict(load_file(str(folder / "ema.safetensors"), device=str(device)))
    state = json.loads((folder / "training_state.json").read_text())
    # Loaded on the CPU: load_state_dict moves moments to each parameter's device and keeps
    # Adam's step counters where torch expects them.
    tensors = load_file(str(folder / "optimizer.safetensors"))
    optimizer.load_state_dict(_unflatten_optimizer_state(tensors, state["optimizer"]))
    return state["step"]
