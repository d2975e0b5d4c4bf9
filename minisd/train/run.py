"""From a run config to a trained model: the one place that joins data, model and loop."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from minisd.data import load_dataset
from minisd.errors import MinisdError
from minisd.models import build_model
from minisd.train.checkpoint import find_checkpoint
from minisd.train.config import train_config
from minisd.train.loop import train


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to write over an earlier run unless asked: ``resume`` continues it, ``overwrite`` replaces it."""
    if resume and overwrite:
        raise MinisdError("--resume continues a run and --overwrite replaces it: pass one of them")
    has_run = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        if find_checkpoint(run_dir) is None:
            raise MinisdError(f"nothing to resume in {run_dir}: it holds no checkpoint")
    elif has_run:
        if not overwrite:
            raise MinisdError(f"{run_dir} already holds a run; pass --resume to continue it, "
                              f"--overwrite to replace it, or choose another --out")
        shutil.rmtree(run_dir)


def train_from_config(run_config: dict[str, Any], run_dir: str | os.PathLike, *, data_dir: str | None = None,
                      resume: bool = False, overwrite: bool = False, device: str = "auto",
                      progress: bool = True) -> dict[str, Any]:
    """Load the data named in ``run_config["data"]``, build ``run_config["model"]`` and train it.

    ``data.dataset`` is ``mnist``, ``fashion-mnist`` or ``digits``; ``data.binarize`` turns on
    dynamic binarisation. The model's ``image_shape`` is taken from the data.
    """
    run_dir = Path(run_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    config = train_config(run_config)
    data = {"dataset": "mnist", "binarize": False, **run_config["data"]}
    unknown = set(data) - {"dataset", "binarize"}
    if unknown:
        raise MinisdError(f"unknown data settings {sorted(unknown)}; valid ones are ['binarize', 'dataset']")
    train_set = load_dataset(data["dataset"], "train", data_dir=data_dir)
    test_set = load_dataset(data["dataset"], "test", data_dir=data_dir)
    model_config = {**run_config["model"], "image_shape": list(train_set.image_shape)}
    torch.manual_seed(config.seed)  # the same config starts from the same initial weights
    model = build_model(model_config)
    result = train(model, train_set, config, run_dir, run_config={"data": data}, eval_set=test_set,
                   binarize_data=data["binarize"], resume=resume, device=device, progress=progress)
    if is_main:
        (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
