"""One command trains a whole text-to-image model, part by part: ``minisd train --config text2image_mnist``.

    RUN/autoencoder/    stage 1: the latent autoencoder, on the images
    RUN/text_encoder/   stage 2: the CLIP-style text encoder, on image-caption pairs
    RUN/unet/           stage 3: the latent diffusion model, on the cached latents of the images and their
                        captions, with the two parts above frozen
    RUN/model/          the model folder, ready for ``minisd.load`` and ``minisd generate --model RUN``
    RUN/latents.safetensors
                        the images' latents, encoded once by the finished autoencoder: a resumed (or lengthened)
                        UNet stage reads them back instead of encoding every image again

Each stage is an ordinary run of the one training loop, with its own checkpoints: after a crash the same
command resumes the stage it was in and skips the finished ones. A config has a ``[data]`` table and one
table per stage, each with the ``model`` and ``train`` tables of an ordinary run config.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from minisd.errors import ConfigError, MinisdError
from minisd.models.files import find_checkpoint, load, read_checkpoint_config
from minisd.models.model_folder import RUN_MODEL_FOLDER, is_model_folder, save_model_folder
from minisd.runtime import cpu_name, resolve_device
from minisd.train import distributed
from minisd.train.config import STAGES, differences, stage_config, validate_text_to_image_config
from minisd.train.run import load_captioned_split

RUN_CONFIG_FILE = "text2image.json"  # the run's whole config, which --resume reads back
LATENT_CACHE_FILE = "latents.safetensors"
TIMINGS_FILE = "timings.json"  # one entry per command run on the folder: its stages' seconds, threads and CPU


def _stage_state(run_dir: Path, run_config: dict[str, Any]) -> str:
    """Where a stage stands: ``"new"``, ``"started"`` (it has a checkpoint) or ``"finished"`` (at ``train.steps``).

    A stage saved with other settings (but for ``train.steps``) is refused. Under torchrun rank 0 reads
    the folder it wrote and every rank gets its answer, so all of them take the same branch.
    """
    def decide() -> str:
        folder = find_checkpoint(run_dir)
        if folder is None:
            return "new"
        _check_unchanged(run_dir, run_config)
        if read_checkpoint_config(folder).get("step") != run_config["train"]["steps"]:
            return "started"
        print(f"{run_dir.name}: already trained, kept")
        return "finished"

    return distributed.on_main_process(decide)


def _check_unchanged(run_dir: Path, run_config: dict[str, Any]) -> None:
    """Refuse to continue (or keep) a stage whose saved settings differ from the config's, but for train.steps."""
    changed = [f"{run_dir.name}.{change}" for change in differences(read_checkpoint_config(run_dir), run_config)
               if not change.startswith("train.steps:")]
    if changed:
        raise ConfigError(f"the {run_dir.name} stage in {run_dir.parent} was trained with other settings: "
                          f"{'; '.join(changed)}. Continue with the settings it was saved with, or start a new run "
                          f"with another --out")


def _stage_run(run_config: dict[str, Any], run_dir: Path, **options: Any) -> None:
    """Train one ordinary stage, resuming it if it was started and skipping it if it is done."""
    from minisd.train.run import train_from_config

    state = _stage_state(run_dir, run_config)
    if state == "finished":
        return
    # Resumed with the whole stage config: a setting changed since the stage started is refused, not ignored.
    train_from_config(run_config, run_dir, resume=state == "started", **options)


class _WithLatents:
    """A captioned dataset whose batches also carry each image's cached latent (``batch["latent"]``)."""

    def __init__(self, dataset: Any, latents: torch.Tensor):
        self.dataset, self.latents = dataset, latents
        self.name, self.split = dataset.name, dataset.split

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: torch.Tensor) -> dict[str, Any]:
        return {**self.dataset.batch(indices), "latent": self.latents[indices]}


def _train_unet(run_config: dict[str, Any], run_dir: Path, autoencoder_run: Path, text_encoder_run: Path, *,
                data_dir: str | None, device: str, progress: bool) -> None:
    from minisd.models.latent_autoencoder import encode_dataset
    from minisd.models.latent_diffusion import LatentDiffusion
    from minisd.models.diffusion import DiffusionModel
    from minisd.train.config import data_config, train_config
    from minisd.train.loop import train

    config = train_config(run_config)
    state = _stage_state(run_dir, run_config)
    if state == "finished":
        return
    resume = state == "started"
    # Every rank reads the two finished parts (rank 0 wrote them before the decision above) and makes the
    # same latent scale and latent cache from the same images; only rank 0 prints.
    is_main = distributed.is_main_process()
    data = asdict(data_config(run_config))
    train_set, test_set = (load_captioned_split(data, split, data_dir) for split in ("train", "test"))
    autoencoder, text_encoder = load(autoencoder_run), load(text_encoder_run)
    settings = {k: v for k, v in run_config["model"].items() if k not in ("type", "unet")}
    torch.manual_seed(config.seed)
    unet = DiffusionModel(**{**run_config["model"].get("unet", {}), "image_shape": list(autoencoder.latent_shape),
                             "context_dim": text_encoder.hparams["text_dim"]})
    model = LatentDiffusion.from_parts(autoencoder, text_encoder, unet, **settings)
    if not resume:
        # Rombach et al. (2022), sec. 4.3.2: rescale the latents to unit variance, which the noise schedule assumes.
        scale = model.autoencoder.fit_latent_scale(train_set.images[:10_000])
        if is_main:
            print(f"latent scale factor, from the training images: {scale:.4f}")
    # On resume the checkpoint brings the scale back (it is a buffer of the model) before the cache is made.
    started = time.perf_counter()
    if resume:
        model.autoencoder.latent_scale.copy_(load(run_dir).autoencoder.latent_scale)
    if config.eval_images is not None and config.eval_images < len(test_set):
        # The stage evaluates on the first eval_images test images: encode those alone.
        test_set = test_set.subset(torch.arange(config.eval_images))
    splits = {"train": train_set, "test": test_set}
    cache = run_dir.parent / LATENT_CACHE_FILE
    stamp = _latent_stamp(model.autoencoder, autoencoder_run, splits)
    latents = _read_latent_cache(cache, stamp, splits)
    if latents is not None:
        if is_main:
            print(f"latents of {len(train_set) + len(test_set)} images read back from {cache}, encoded by this "
                  f"autoencoder from these images, in {time.perf_counter() - started:.1f} s")
    else:
        latents = {split: encode_dataset(model.autoencoder, data.images, progress=progress and is_main)
                   for split, data in splits.items()}
        if is_main:
            print(f"encoded {len(train_set) + len(test_set)} images to latents {tuple(latents['train'].shape[1:])} "
                  f"once, in {time.perf_counter() - started:.1f} s")
            _write_latent_cache(cache, stamp, latents)
    train(model, _WithLatents(train_set, latents["train"]), config, run_dir,
          run_config={"data": data, "model": run_config["model"]},
          eval_set=_WithLatents(test_set, latents["test"]), resume=resume, device=device, progress=progress)


def _latent_stamp(autoencoder: Any, autoencoder_run: Path, splits: dict[str, Any]) -> str:
    """What the latents depend on: the autoencoder's weights (its checkpoint's checksums), its latent scale, and
    each split's images (their sha256)."""
    images = {}
    for split, data in splits.items():
        digest = hashlib.sha256(memoryview(data.images.contiguous().numpy()).cast("B"))
        images[split] = f"{tuple(data.images.shape)} {digest.hexdigest()}"
    return json.dumps({"autoencoder": read_checkpoint_config(autoencoder_run)["files"],
                       "latent_scale": float(autoencoder.latent_scale), "images": images}, sort_keys=True)


def _read_latent_cache(path: Path, stamp: str, splits: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The cached latents of each split if ``path`` holds them for ``stamp``, else None (no cache, another
    autoencoder or other images, or a file a crash cut short)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(path, "pt") as cached:
            if (cached.metadata() or {}).get("stamp") != stamp or set(cached.keys()) != set(splits):
                return None
            return {split: cached.get_tensor(split) for split in splits}
    except (SafetensorError, OSError):
        return None


def _write_latent_cache(path: Path, stamp: str, latents: dict[str, torch.Tensor]) -> None:
    """Write the cache whole under another name, then rename it into place: a crash never leaves half of one."""
    from safetensors.torch import save_file

    partial = path.with_suffix(".partial")
    save_file({split: tensor.contiguous() for split, tensor in latents.items()}, partial, metadata={"stamp": stamp})
    os.replace(partial, path)


def train_text_to_image(config: dict[str, Any], run_dir: str | os.PathLike, *, data_dir: str | None = None,
                        resume: bool = False, overwrite: bool = False, device: str = "auto",
                        progress: bool = True, command: str | None = None) -> Path:
    """Train the three parts of a text-to-image model in order and write ``run_dir/model``; return its path.

    ``resume=True`` continues a run in ``run_dir``: finished stages are kept, a started one continues from
    its last checkpoint (its settings must not have changed but for ``train.steps``), and the model folder
    is written at the end.
    """
    validate_text_to_image_config(config)
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    # Under torchrun every rank trains every stage, but rank 0 alone reads and writes the run folder: the
    # group is joined once for the whole command, so that each of rank 0's decisions reaches every rank.
    with distributed.process_group(distributed.process_device(resolve_device(device))):
        timings = distributed.on_main_process(
            lambda: _open_run_folder(config, run_dir, resume=resume, overwrite=overwrite, command=command))
        _train_stages(config, run_dir, timings, resume=resume, data_dir=data_dir, device=device, progress=progress)
        return distributed.on_main_process(lambda: _write_model_folder(run_dir))


def _open_run_folder(config: dict[str, Any], run_dir: Path, *, resume: bool, overwrite: bool,
                     command: str | None) -> list[dict[str, Any]]:
    """Check the run folder, make it and record the config in it; return the timings of the commands run on
    the folder, with this one's entry last (its ``seconds`` are filled in as the stages end)."""
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                          f"or choose another --out")
    if resume and not (run_dir / RUN_CONFIG_FILE).is_file():
        raise ConfigError(f"there is no text-to-image run to resume in {run_dir}")
    if overwrite and run_dir.is_dir():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    # One entry per command run on this folder, rewritten as each stage ends: a run that crashes and is
    # resumed keeps the time of the stages it finished, and the card adds up every command's time.
    return read_timings(run_dir, command)


def recorded_timings(run_dir: Path) -> list[dict[str, Any]]:
    """The timings of the commands run on ``run_dir`` so far (none before the first)."""
    timings_file = run_dir / TIMINGS_FILE
    return json.loads(timings_file.read_text()) if timings_file.is_file() else []


def read_timings(run_dir: Path, command: str | None) -> list[dict[str, Any]]:
    """:func:`recorded_timings`, with a new entry for this command last: its ``seconds`` are filled in as its
    stages end, each time written back with :func:`write_timings`."""
    return [*recorded_timings(run_dir),
            {"command": command, "seconds": {}, "threads": torch.get_num_threads(), "cpu": cpu_name()}]


def write_timings(run_dir: Path, timings: list[dict[str, Any]]) -> None:
    (run_dir / TIMINGS_FILE).write_text(json.dumps(timings, indent=2) + "\n")


def timing_lines(timings: list[dict[str, Any]]) -> list[str]:
    """A model card's account of the training: each command, the minutes of each of its stages, and the total."""
    lines = []
    for timing in timings:
        parts = ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in timing["seconds"].items())
        lines += [f"    {timing.get('command') or '(from Python)'}", "",
                  f"  {parts} ({timing['threads']} CPU threads, {timing['cpu']})", ""]
    total = sum(sum(timing["seconds"].values()) for timing in timings)
    return [*lines, f"- total: **{total / 60:.1f} minutes**"]


def _train_stages(config: dict[str, Any], run_dir: Path, timings: list[dict[str, Any]], *, resume: bool,
                  **options: Any) -> None:
    """Train, resume or keep each stage in order; rank 0 records the time each took in the timings file."""
    is_main = distributed.is_main_process()
    seconds = timings[-1]["seconds"]
    try:
        for stage in STAGES:
            started = time.perf_counter()
            if stage == "unet":
                _train_unet(stage_config(config, stage), run_dir / stage, run_dir / "autoencoder",
                            run_dir / "text_encoder", **options)
            else:
                _stage_run(stage_config(config, stage), run_dir / stage, **options)
            seconds[stage] = time.perf_counter() - started
            if is_main:
                write_timings(run_dir, timings)
    except MinisdError:
        # A new run refused before its first checkpoint (a folder without one usable image, say) leaves nothing
        # behind: the same command, corrected, must not be told to --resume a run that never started.
        if is_main and not resume and not any(find_checkpoint(run_dir / stage) for stage in STAGES):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _write_model_folder(run_dir: Path) -> Path:
    """Write ``run_dir/model`` from the finished UNet stage (which holds the two other parts); return its path."""
    folder = run_dir / RUN_MODEL_FOLDER
    if is_model_folder(folder):
        shutil.rmtree(folder)
    save_model_folder(load(run_dir / "unet"), folder, data=read_checkpoint_config(run_dir / "unet")["data"])
    print(f"text-to-image model written to {folder}: minisd generate \"...\" --model {run_dir}")
    return folder
