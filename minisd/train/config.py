"""Training hyper-parameters, and run configs read from TOML presets."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from minisd.errors import MinisdError
from minisd.models import check_model_type

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class TrainConfig:
    """Everything the training loop needs besides the model and the data."""

    steps: int = 1000
    batch_size: int = 128          # global batch: split evenly over processes under torchrun
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100        # linear warm-up from 0, then cosine decay ...
    min_lr_ratio: float = 0.1      # ... to lr * min_lr_ratio at the last step
    grad_clip: float = 100.0       # max global gradient norm; 0 turns clipping off
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000         # 0: evaluate only at the end
    checkpoint_every: int = 1000   # 0: checkpoint only at the end
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise MinisdError(f"train.steps and train.batch_size must be positive (got {self.steps}, {self.batch_size})")
        if self.lr <= 0:
            raise MinisdError(f"train.lr must be positive, got {self.lr}")


def preset_path(name: str) -> Path:
    """The TOML file of a preset shipped with minisd (``minisd/configs/NAME.toml``)."""
    return Path(str(resources.files("minisd") / "configs" / f"{name}.toml"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in Path(str(resources.files("minisd") / "configs")).glob("*.toml"))


def load_run_config(preset_or_path: str, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a run config (sections ``model``, ``data``, ``train``) and apply ``section.key=value`` overrides.

    ``preset_or_path`` is a preset name (see :func:`list_presets`) or a path to a TOML file.
    Values in overrides are read as TOML (``train.lr=3e-4``, ``model.hidden=[200, 200]``),
    falling back to a plain string (``data.dataset=digits``).
    """
    path = Path(preset_or_path)
    if not path.suffix:
        path = preset_path(preset_or_path)
    if not path.is_file():
        raise MinisdError(f"no config {preset_or_path!r}: not a file, and not one of the presets {list_presets()}")
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise MinisdError(f"{path} is not valid TOML: {err}") from None
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or "." not in key:
            raise MinisdError(f"override {override!r} must look like section.key=value, e.g. train.steps=500")
        section, name = key.strip().split(".", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        config.setdefault(section, {})[name] = value
    for section in ("model", "data", "train"):
        config.setdefault(section, {})
    unknown = set(config) - {"model", "data", "train"}
    if unknown:
        raise MinisdError(f"unknown config sections {sorted(unknown)}; use model, data and train")
    check_model_type(config["model"].get("type"))  # fail before any data is loaded or downloaded
    train_config(config)
    return config


def train_config(run_config: dict[str, Any]) -> TrainConfig:
    """The ``train`` section as a :class:`TrainConfig`; unknown keys are a clear error."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(run_config["train"]) - fields
    if unknown:
        raise MinisdError(f"unknown train settings {sorted(unknown)}; valid ones are {sorted(fields)}")
    return TrainConfig(**run_config["train"])
