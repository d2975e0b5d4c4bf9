"""Run configs and the one schema every setting is checked against.

A run config has three sections: ``model`` (a registered model type and its constructor's keyword
arguments), ``data`` (:class:`DataConfig`) and ``train`` (:class:`TrainConfig`). It comes from a TOML
preset or file plus ``--set section.key=value`` overrides, or from a checkpoint's ``config.json``.

:func:`validate_run_config` checks every value against its declared type and range before any data
is loaded or any file is written, so ``train.steps=1.5``, ``train.lr=nan`` or
``train.ema_decay=2`` stop with one line that names the setting. The schema is the code itself: the
fields of the two dataclasses below, with their ranges, and the type hints of each model's constructor.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minisd.configs import list_presets, preset_path
from minisd.data import DATASETS
from minisd.data.toys import TOYS
from minisd.errors import ConfigError
from minisd.models import check_model_section
from minisd.schema import AT_LEAST_ONE, DECAY, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Range, check_section

GREY_OR_RGB: Range = (lambda v: v in (1, 3), "1 (grey) or 3 (RGB)")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SECTIONS = ("model", "data", "train")

def _setting(default: Any, must_be: Range | None = None) -> Any:
    return field(default=default, metadata={"must_be": must_be} if must_be else {})


@dataclass
class TrainConfig:
    """Everything the training loop needs besides the model and the data."""

    steps: int = _setting(1000, AT_LEAST_ONE)
    batch_size: int = _setting(128, AT_LEAST_ONE)          # global batch: split evenly over processes under torchrun
    lr: float = _setting(1e-3, POSITIVE)
    weight_decay: float = _setting(0.0, NON_NEGATIVE)
    warmup_steps: int = _setting(100, NON_NEGATIVE)         # linear warm-up from 0, then cosine decay ...
    min_lr_ratio: float = _setting(0.1, UNIT_INTERVAL)      # ... to lr * min_lr_ratio at the last step
    grad_clip: float = _setting(100.0, NON_NEGATIVE)        # max global gradient norm; 0 turns clipping off
    ema_decay: float = _setting(0.999, DECAY)
    seed: int = _setting(0, NON_NEGATIVE)
    log_every: int = _setting(50, AT_LEAST_ONE)
    eval_every: int = _setting(1000, NON_NEGATIVE)          # 0: evaluate only at the end
    checkpoint_every: int = _setting(1000, NON_NEGATIVE)    # 0: checkpoint only at the end
    eval_batch_size: int = _setting(500, AT_LEAST_ONE)
    eval_images: int | None = _setting(None, AT_LEAST_ONE)  # evaluate on the first N only (default: all of them)

    def __post_init__(self) -> None:
        check_section("train", dataclasses.asdict(self), TrainConfig)


@dataclass
class DataConfig:
    """Which dataset a run trains on, and how its pixels are presented."""

    dataset: str = "mnist"      # minisd.data.DATASETS, "shapes" (captioned, made on the fly) or a 2-D toy (data.toys.TOYS)
    binarize: bool = False      # Bernoulli pixels drawn afresh every step (dynamic binarisation)
    num_images: int | None = _setting(None, AT_LEAST_ONE)  # keep only the first N images of each split
    image_size: int | None = _setting(None, AT_LEAST_ONE)  # resize to this side (a folder: its most common side)
    channels: int | None = _setting(None, GREY_OR_RGB)  # a folder of your images: 1 grey or 3 RGB (its own)

    def __post_init__(self) -> None:
        check_section("data", dataclasses.asdict(self), DataConfig)
        if self.dataset not in (*DATASETS, "shapes", *TOYS) and not Path(self.dataset).expanduser().is_dir():
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {[*DATASETS, 'shapes', *TOYS]}, "
                              f"or give a folder of your images with captions")
        if self.channels is not None and self.dataset in (*DATASETS, "shapes", *TOYS):
            raise ConfigError(f"data.channels chooses grey or RGB for a folder of your images; {self.dataset} has "
                              f"its own (leave data.channels out)")


def validate_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a whole run config against the schema (see the module docstring) and return it."""
    unknown = set(config) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}; use model, data and train")
    for section in SECTIONS:
        if not isinstance(config.get(section, {}), dict):
            raise ConfigError(f"[{section}] must be a table of settings, got {config[section]!r}")
        config.setdefault(section, {})
    check_model_section(config["model"])  # before any data is loaded or downloaded
    data_config(config)
    train_config(config)
    return config


def train_config(run_config: dict[str, Any]) -> TrainConfig:
    """The ``train`` section as a :class:`TrainConfig`, checked against the schema."""
    check_section("train", run_config["train"], TrainConfig)
    return TrainConfig(**run_config["train"])


def data_config(run_config: dict[str, Any]) -> DataConfig:
    """The ``data`` section as a :class:`DataConfig`, checked against the schema."""
    check_section("data", run_config["data"], DataConfig)
    return DataConfig(**run_config["data"])


# --------------------------------------------------------------------------------------
# Text-to-image configs: a [data] table and one table per stage (see minisd.train.text_to_image)
# --------------------------------------------------------------------------------------

STAGES = ("autoencoder", "text_encoder", "unet")
STAGE_MODEL_TYPES = {"autoencoder": "latent_autoencoder", "text_encoder": "clip", "unet": "latent_diffusion"}


def is_text_to_image_config(config: dict[str, Any]) -> bool:
    """A text-to-image config has a table per stage instead of one ``model`` table."""
    return any(stage in config for stage in STAGES)


def stage_config(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The ordinary run config of one stage: its model and train tables, and the shared data table."""
    section = config.get(stage)
    if not isinstance(section, dict) or not isinstance(section.get("model", {}), dict):
        raise ConfigError(f"a text-to-image config needs a [{stage}] table with [{stage}.model] and [{stage}.train]")
    unknown = set(section) - {"model", "train"}
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)} in [{stage}]; use [{stage}.model] and [{stage}.train]")
    return {"model": {**section.get("model", {}), "type": STAGE_MODEL_TYPES[stage]},
            "train": dict(section.get("train", {})), "data": dict(config.get("data", {}))}


def validate_text_to_image_config(config: dict[str, Any]) -> None:
    """Check every stage against the schema before any work: a mistake in stage 3 must not cost stages 1 and 2."""
    unknown = set(config) - {*STAGES, "data"}
    if unknown:
        raise ConfigError(f"unknown sections {sorted(unknown)} in a text-to-image config; use data, {', '.join(STAGES)}")
    for stage in STAGES:
        validate_run_config(stage_config(config, stage))


# --------------------------------------------------------------------------------------
# Reading configs
# --------------------------------------------------------------------------------------


def apply_overrides(config: dict[str, Any], overrides: list[str] = ()) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides in place; values are read as TOML (``train.lr=3e-4``,
    ``model.hidden=[200, 200]``), falling back to a plain string (``data.dataset=digits``). Tables nest:
    ``unet.train.steps=100`` sets ``steps`` in ``[unet.train]``."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {override!r} must look like section.key=value, e.g. train.steps=500")
        *tables, name = key.strip().split(".")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        table = config
        for depth, section in enumerate(tables):
            table = table.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"override {override!r}: [{'.'.join(tables[:depth + 1])}] is not a table of settings")
        table[name] = value
    return config


# --------------------------------------------------------------------------------------
# Distillation configs: [distill], [data] and the student's [student.model] / [student.train]
# (see minisd.train.distill)
# --------------------------------------------------------------------------------------

# The samplers that draw no fresh noise at their default arguments: a reflow pair is where the ODE carries its noise.
DETERMINISTIC_SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m")
DISTILL_METHODS = ("reflow", "consistency")


@dataclass(frozen=True)
class DistillConfig:
    """How a student learns from ``teacher`` (a shipped name, a model folder or a text-to-image run) guided at
    ``guidance_scale`` (folded into the student's targets). ``method`` ``reflow``: ``pairs`` of the teacher's
    (noise, picture) couplings for the first training captions, each drawn by ``sampler`` in ``steps`` steps, in
    chunks of ``chunk``. ``consistency``: consistency distillation on the training data, the teacher stepping once
    by ``sampler`` (``ddim``) on a grid of ``steps`` steps. ``init_from_teacher``: the student's UNet starts from
    the teacher's weights (same architecture)."""

    method: str = "reflow"
    teacher: str = "mnist"
    pairs: int = 20_000
    guidance_scale: float = 4.0
    sampler: str = "dpmpp_2m"
    steps: int = 20
    chunk: int = 1000
    init_from_teacher: bool = True


def is_distill_config(config: dict[str, Any]) -> bool:
    return "distill" in config


def student_config(config: dict[str, Any]) -> dict[str, Any]:
    """The student's ordinary run config: its model (a latent_diffusion) and train tables, and the data table."""
    section = config.get("student")
    if not isinstance(section, dict) or set(section) - {"model", "train"}:
        raise ConfigError("a distillation config needs a [student] table with [student.model] and [student.train]")
    return {"model": {**section.get("model", {}), "type": "latent_diffusion"}, "train": dict(section.get("train", {})),
            "data": dict(config.get("data", {}))}


def validate_distill_config(config: dict[str, Any]) -> DistillConfig:
    """Check every section before any work; return the ``[distill]`` settings."""
    unknown = set(config) - {"distill", "data", "student"}
    if unknown:
        raise ConfigError(f"unknown sections {sorted(unknown)} in a distillation config; use distill, data, student")
    check_section("distill", config.get("distill", {}), DistillConfig)
    settings = DistillConfig(**config.get("distill", {}))
    if settings.method not in DISTILL_METHODS:
        raise ConfigError(f"distill.method must be one of {DISTILL_METHODS}, got {settings.method!r}")
    if settings.method == "consistency" and settings.sampler != "ddim":
        raise ConfigError(f"consistency distillation steps the teacher by DDIM: set distill.sampler = \"ddim\" "
                          f"(got {settings.sampler!r})")
    if settings.sampler not in DETERMINISTIC_SAMPLERS:
        raise ConfigError(f"distill.sampler must draw no fresh noise (one of {DETERMINISTIC_SAMPLERS}): a pair is "
                          f"the picture the teacher's ODE carries its noise to; got {settings.sampler!r}")
    if settings.pairs < 1 or settings.chunk < 1 or settings.steps < 1 or settings.guidance_scale < 0:
        raise ConfigError("distill.pairs, chunk and steps must be at least 1 and guidance_scale at least 0")
    validate_run_config(student_config(config))
    return settings


def load_run_config(preset_or_path: str, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a run config (a preset name, see :func:`list_presets`, or a TOML file), apply ``overrides``
    (see :func:`apply_overrides`) and validate it."""
    path = Path(preset_or_path)
    if not path.is_file() and not path.suffix:
        path = preset_path(preset_or_path)
    if not path.is_file():
        raise ConfigError(f"no config {preset_or_path!r}: not a file, and not one of the presets {list_presets()}")
    try:
        config = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    config = apply_overrides(config, overrides)
    if is_distill_config(config):
        validate_distill_config(config)
        return config
    if is_text_to_image_config(config):
        validate_text_to_image_config(config)
        return config
    return validate_run_config(config)


def differences(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """The settings ``requested`` gives another value than ``saved`` has, as ``"section.key: saved -> requested"``.

    Only the keys ``requested`` names are compared (in nested tables too): a setting it leaves out keeps the
    saved value.
    Values are compared as JSON stores them (tuples are lists).
    """
    def normal(value: Any) -> Any:
        return json.loads(json.dumps(value))

    def compare(prefix: str, saved_table: dict[str, Any], requested_table: dict[str, Any]) -> list[str]:
        changed = []
        for key, value in requested_table.items():
            before = saved_table.get(key, "(not set)")
            if isinstance(value, dict) and isinstance(before, dict):  # a nested table: only the keys it names
                changed += compare(f"{prefix}{key}.", before, value)
            elif normal(value) != normal(before):
                changed.append(f"{prefix}{key}: {before!r} -> {value!r}")
        return changed

    return [change for section in SECTIONS
            for change in compare(f"{section}.", saved.get(section, {}), requested.get(section, {}))]
