"""From a run config to a trained model: the one place that joins data, model and loop."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from minisd.data import DATASETS, ImageDataset, load_dataset
from minisd.errors import ConfigError
from minisd.models import MODELS, build_model
from minisd.outputs import check_can_create
from minisd.runtime import resolve_device
from minisd.train import distributed
from minisd.models.files import find_checkpoint, read_checkpoint_config
from minisd.train.config import SECTIONS, data_config, differences, train_config, validate_run_config
from minisd.train.loop import train


def resume_config(run_dir: str | os.PathLike, requested: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run config to resume ``run_dir`` with: the one its checkpoint saved.

    ``requested`` is what the command line asked for (a whole config, or only some settings). Resuming
    continues the saved run, so a request that changes any setting is refused, naming each change;
    the one exception is ``train.steps``, which may grow to train longer.
    """
    run_dir = Path(run_dir)
    if find_checkpoint(run_dir) is None:
        raise ConfigError(f"nothing to resume in {run_dir}: it holds no checkpoint")
    saved = read_checkpoint_config(run_dir)
    config = {section: dict(saved.get(section, {})) for section in SECTIONS}
    requested = requested or {}
    changed = [change for change in differences(config, requested) if not change.startswith("train.steps:")]
    if changed:
        raise ConfigError(f"--resume continues the run saved in {run_dir}, but this command changes "
                          f"{'; '.join(changed)}. Leave those settings out to continue the run as it was saved "
                          f"(only train.steps may change, to train longer), or start a new run with another --out")
    steps = requested.get("train", {}).get("steps", config["train"].get("steps"))
    config["train"]["steps"] = steps
    validate_run_config(config)
    if steps <= saved["step"]:
        raise ConfigError(f"the run in {run_dir} has already trained {saved['step']} steps of train.steps = "
                          f"{steps}; to train longer, pass --set train.steps=N with N above {saved['step']}")
    return config


def load_captioned_split(data: dict[str, Any], split: str, data_dir: str | None):
    """One split of a captioned dataset as the ``data`` table names it (a folder of images is its own test split,
    read at its own size and colour unless ``image_size`` or ``channels`` says otherwise)."""
    from minisd.data import load_captioned

    return load_captioned(data["dataset"], split, data_dir=data_dir, num_images=data.get("num_images"),
                          size=data.get("image_size"), channels=data.get("channels"))


def _load_split(data: dict[str, Any], split: str, model: dict[str, Any], data_dir: str | None):
    """One split of the run's data (its first ``num_images``, if given): with captions when the model reads
    them, or when the data is made with them (shapes, a folder)."""
    from minisd.models import MODELS

    from minisd.data.toys import TOYS, load_toy

    dataset, num_images = data["dataset"], data.get("num_images")
    if dataset in TOYS:
        return load_toy(dataset, split, num_points=num_images)
    if getattr(MODELS[model["type"]], "needs_captions", False) or dataset not in DATASETS:
        return load_captioned_split(data, split, data_dir)
    data = load_dataset(dataset, split, data_dir=data_dir)
    return data if num_images is None else ImageDataset(data.images[:num_images], data.labels[:num_images],
                                                        data.classes, data.name, split)


def train_from_config(run_config: dict[str, Any], run_dir: str | os.PathLike, *, data_dir: str | None = None,
                      resume: bool = False, overwrite: bool = False, device: str = "auto",
                      progress: bool = True) -> dict[str, Any]:
    """Load the data named in ``run_config["data"]``, build ``run_config["model"]`` and train it.

    ``data.dataset`` is ``mnist``, ``fashion-mnist``, ``digits``, ``shapes``, a 2-D toy (``minisd.data.toys.TOYS``)
    or a folder of images; ``data.binarize`` turns on dynamic binarisation. The shape of one example (a model's
    ``image_shape``, or a score model's ``data_shape``) is taken from the data.

    ``resume=True`` continues the run saved in ``run_dir`` (see :func:`resume_config`; ``run_config``
    may then hold only the settings asked for). ``overwrite=True`` replaces a run already there, but
    only once the data and the model are ready: a command that fails earlier changes nothing.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    resolve_device(device)  # an unknown device fails now, not after the data is loaded
    if resume:
        run_config = resume_config(run_dir, run_config)
    else:
        validate_run_config(run_config)
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{run_dir} is a file; the run folder must be a folder")
        if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, "
                              f"--overwrite to replace it, or choose another --out")
        check_can_create(run_dir, "run folder")
    config = train_config(run_config)
    data = asdict(data_config(run_config))
    train_set, test_set = (_load_split(data, split, run_config["model"], data_dir) for split in ("train", "test"))
    model_config = {**run_config["model"], MODELS[run_config["model"]["type"]].shape_setting: list(train_set.example_shape)}
    torch.manual_seed(config.seed)  # the same config starts from the same initial weights
    model = build_model(model_config)
    if not resume:  # a resumed model gets what prepare() fitted (a tokenizer) back from its checkpoint
        model.prepare(train_set)

    is_main = distributed.is_main_process()
    if overwrite and is_main and run_dir.is_dir():
        shutil.rmtree(run_dir)
    result = train(model, train_set, config, run_dir, run_config={"data": data}, eval_set=test_set,
                   binarize_data=data["binarize"], resume=resume, device=device, progress=progress)
    if is_main:
        (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
