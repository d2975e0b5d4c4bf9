"""One training loop for every model of the learning path.

Reproducibility is built in, not bolted on: the data order of each epoch and all the
randomness of each step (dynamic binarisation, the VAE's noise, ...) are seeded from
``(seed, epoch)`` and ``(seed, step)``. Resuming therefore needs only the weights, the
EMA, the optimizer state and the step count, and on CPU a resumed run ends with the same
bits as one that never stopped.

Under torchrun every process builds the step's whole batch (its captions and binarisation drawn as one process
draws them), keeps its own rows, and draws its examples' noise through :mod:`minisd.batch_rows`: each example
meets the random numbers it would meet in a one-process run, so N processes train the model one process does.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from minisd import batch_rows
from minisd.data import ImageDataset, binarize, binarized_once
from minisd.data.toys import PointDataset
from minisd.errors import MinisdError
from minisd.models import Model
from minisd.models.files import find_checkpoint, read_checkpoint_config
from minisd.runtime import resolve_device
from minisd.train import distributed
from minisd.train.checkpoint import load_training_state, remove_stale_folders, save_checkpoint
from minisd.train.config import TrainConfig
from minisd.train.optim import EMA, adamw, learning_rate


class TrainingDiverged(MinisdError):
    """The loss or the gradient became NaN or infinite."""


def _step_seed(seed: int, step: int) -> int:
    """The seed of everything random in one step: the same on every process (see the module docstring)."""
    return (seed * 1_000_003 + step * 1_009) % (2**63)


class _Batches:
    """Global batch ``step`` of a shuffled, drop-last epoch order, whole; ``rows`` is the slice this rank trains on."""

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int, rank: int, world_size: int):
        if batch_size % world_size:
            raise MinisdError(f"train.batch_size {batch_size} must be divisible by the number of processes {world_size}")
        if len(dataset) < batch_size:
            raise MinisdError(f"train.batch_size {batch_size} is larger than the dataset ({len(dataset)} images)")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rows = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self.steps_per_epoch = len(dataset) // batch_size
        self._epoch, self._order = -1, None

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.dataset), generator=generator)
        indices = self._order[position * self.batch_size:(position + 1) * self.batch_size]
        return self.dataset.batch(indices)


def _rows_of(value: Any, rows: slice) -> Any:
    """The examples ``rows`` of a batch: each tensor and list along its first dimension, a dict (the batch itself,
    the shapes' attributes) entry by entry."""
    if isinstance(value, dict):
        return {key: _rows_of(entry, rows) for key, entry in value.items()}
    return value[rows] if isinstance(value, (torch.Tensor, list, tuple)) else value


def _batch_size(batch: dict[str, Any]) -> int:
    """How many examples a batch holds: the length of its first tensor (images, points, labels)."""
    return len(next(value for value in batch.values() if isinstance(value, torch.Tensor)))


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device``; anything else in the batch (captions) as it is."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_loss(model: Model, dataset: ImageDataset | PointDataset, batch_size: int, seed: int = 0,
                  limit: int | None = None) -> dict[str, float]:
    """The model's loss logs averaged over a whole evaluation set, or its first ``limit`` examples (same seed, same
    numbers).

    Batches come from ``dataset.batch``, so whatever the dataset carries (labels, captions) conditions the
    model as it does in training.
    """
    torch.manual_seed(seed)
    model.eval()
    size = len(dataset) if limit is None else min(limit, len(dataset))
    totals: dict[str, float] = {}
    for start in range(0, size, batch_size):
        batch = _to(dataset.batch(torch.arange(start, min(start + batch_size, size))), model.device)
        _, logs = model.loss(batch)
        for key, value in logs.items():
            totals[key] = totals.get(key, 0.0) + value * _batch_size(batch)
    return {key: total / size for key, total in totals.items()}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, skipping a partial line (of a run killed while writing it)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _drop_records_after(path: Path, step: int) -> None:
    """On resume, forget the log lines a crashed run wrote after its last checkpoint, and a partial last line."""
    if path.exists():
        kept = [record for record in read_metrics(path) if record.get("step", 0) <= step]
        path.write_text("".join(json.dumps(record) + "\n" for record in kept))


def _warn_if_threads_differ(run_dir: Path) -> None:
    saved = read_checkpoint_config(run_dir).get("threads")
    if saved is not None and saved != torch.get_num_threads():
        print(f"minisd: note: this run was trained with {saved} CPU thread(s) and resumes with "
              f"{torch.get_num_threads()}: it will not end bit-identical to an uninterrupted run "
              f"(pass --threads {saved} for that)", file=sys.stderr)


def train(model: Model, train_set: ImageDataset, config: TrainConfig, run_dir: str | os.PathLike, *,
          run_config: dict[str, Any] | None = None, eval_set: ImageDataset | None = None,
          binarize_data: bool = False, resume: bool = False, device: str = "auto",
          progress: bool = True) -> dict[str, Any]:
    """Train ``model`` on ``train_set`` for ``config.steps`` steps, writing checkpoints and logs to ``run_dir``.

    - AdamW with warm-up and cosine decay, gradient clipping, an EMA of the weights.
    - ``run_dir/metrics.jsonl``: one JSON record per log/eval event (rank 0 only).
    - ``run_dir/checkpoint/``: see :mod:`minisd.train.checkpoint`; every ``checkpoint_every`` steps and at the end.
    - Under ``torchrun`` the global batch is split over processes with DistributedDataParallel
      and logged metrics are averaged across them.
    - ``binarize_data``: draw binary pixels ~ Bernoulli(intensity) afresh at every step
      (dynamic binarisation); the evaluation set is binarised once, with a fixed seed.
    - A non-finite loss or gradient raises :class:`TrainingDiverged`; the last checkpoint
      on disk (which was written from finite weights) is left untouched.

    Returns the final step, the last training logs, the last evaluation and the wall time.
    """
    device = distributed.process_device(resolve_device(device))
    joined_group = not distributed.is_initialized()
    rank, world_size = distributed.setup(device)
    run_dir = Path(run_dir)
    created_run_dir = not run_dir.exists()
    # Every rank has finished looking at the run folder (train_from_config's checks) before rank 0 writes
    # in it. Joining the group waits for every rank too, but a command of several runs joins it only once.
    distributed.barrier()
    try:
        return _train(model, train_set, config, run_dir, rank=rank, world_size=world_size, device=device,
                      run_config=run_config, eval_set=eval_set, binarize_data=binarize_data, resume=resume,
                      progress=progress)
    except BaseException:
        # A run that fails before its first checkpoint leaves nothing behind (its log would block the
        # same command run again); one with a checkpoint keeps everything, to be resumed.
        if rank == 0 and not resume and find_checkpoint(run_dir) is None:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            if created_run_dir:
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if joined_group:
            distributed.teardown()


def training_layout(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``model`` on ``device`` with its 4-d weights channels-last, as the loop trains it (in place; returned).

    Convolutions then read and write (B, H, W, C), the layout oneDNN's CPU kernels work in, instead of reordering
    every activation and gradient to it and back: a training step of the digit models takes 3-18% less time
    (benchmarks/README.md, "Time to quality"). Only the layout in memory changes, not a value.
    """
    return model.to(device, memory_format=torch.channels_last)


def _train(model: Model, train_set: ImageDataset, config: TrainConfig, run_dir: Path, *, rank: int, world_size: int,
           device: torch.device, run_config: dict[str, Any] | None, eval_set: ImageDataset | None,
           binarize_data: bool, resume: bool, progress: bool) -> dict[str, Any]:
    is_main = rank == 0
    metrics_path = run_dir / "metrics.jsonl"
    model = training_layout(model, device)
    ema = EMA(model, config.ema_decay)
    optimizer = adamw(model, lr=config.lr, weight_decay=config.weight_decay)
    # The thread count is recorded because float sums, and so a resumed run's last bits, depend on it.
    checkpoint_config = {"data": {"dataset": train_set.name, "binarize": binarize_data}, **(run_config or {}),
                         "train": asdict(config), "threads": torch.get_num_threads()}
    checkpoint_config.pop("model", None)
    batches = _Batches(train_set, config.batch_size, config.seed, rank, world_size)

    start_step = 0
    if resume:
        start_step = load_training_state(run_dir, model, ema.model, optimizer)
        if is_main:
            remove_stale_folders(run_dir)
            _drop_records_after(metrics_path, start_step)
            _warn_if_threads_differ(run_dir)
    elif is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    trained = DistributedDataParallel(model) if world_size > 1 else model

    if eval_set is not None and binarize_data:
        eval_set = binarized_once(eval_set)

    def evaluate(step: int) -> dict[str, float]:
        if eval_set is None:
            return {}
        logs = evaluate_loss(ema.model, eval_set, config.eval_batch_size, limit=config.eval_images)
        if is_main:
            _append_jsonl(metrics_path, {"step": step, **{f"eval/{k}": v for k, v in logs.items()}})
        return logs

    def checkpoint(step: int) -> None:
        if is_main:
            save_checkpoint(run_dir, config=checkpoint_config, model=model, ema_model=ema.model,
                            optimizer=optimizer, step=step)
        distributed.barrier()

    bar = tqdm(total=config.steps, initial=start_step, desc=run_dir.name, disable=not (progress and is_main),
               dynamic_ncols=True, mininterval=0.5)
    start_time = time.perf_counter()
    interval_start, interval_images = start_time, 0
    logs: dict[str, float] = {}
    eval_logs: dict[str, float] = {}
    for step in range(start_step, config.steps):
        model.train()
        lr = learning_rate(step, lr=config.lr, total_steps=config.steps, warmup_steps=config.warmup_steps,
                           min_lr_ratio=config.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(_step_seed(config.seed, step))
        batch = batches(step)
        if binarize_data:
            batch["image"] = binarize(batch["image"])
        rows = batches.rows
        with batch_rows.holding_rows(rows.start, rows.stop, config.batch_size):
            loss, logs = trained(_to(_rows_of(batch, rows), device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
        finite = torch.tensor([float(torch.isfinite(loss) and torch.isfinite(grad_norm))], device=device)
        if world_size > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() < 1:
            bar.close()
            last = find_checkpoint(run_dir)
            kept = (f"the last good checkpoint (step {json.loads((last / 'config.json').read_text())['step']}) "
                    f"is kept in {last}" if last else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"the loss became {loss.item()} (gradient norm {grad_norm.item()}) at step {step}; training stopped and "
                f"{kept}. Lower train.lr, keep train.grad_clip on, or check the data for NaNs.")
        optimizer.step()
        ema.update(step)

        done = step + 1
        interval_images += config.batch_size
        bar.update(1)
        if done % config.log_every == 0 or done == config.steps:
            elapsed = time.perf_counter() - interval_start
            logs = distributed.mean_across_ranks({**logs, "grad_norm": grad_norm.item()})
            record = {"step": done, "lr": lr, **logs, "images_per_sec": interval_images / max(elapsed, 1e-9)}
            if is_main:
                _append_jsonl(metrics_path, record)
            bar.set_postfix(loss=f"{logs['loss']:.4g}", img_per_s=f"{record['images_per_sec']:.0f}")
            interval_start, interval_images = time.perf_counter(), 0
        if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
            eval_logs = evaluate(done)
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.steps:
            checkpoint(done)
    bar.close()
    return {"step": config.steps, "train": logs, "eval": eval_logs,
            "seconds": time.perf_counter() - start_time, "run_dir": str(run_dir)}
