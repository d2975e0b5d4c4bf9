"""One command trains a whole text-to-image model, part by part: ``minisd train --config text2image_mnist``.

    RUN/autoencoder/    stage 1: the latent autoencoder, on the images
    RUN/text_encoder/   stage 2: the CLIP-style text encoder, on image-caption pairs
    RUN/unet/           stage 3: the latent diffusion model, on the cached latents of the images and their
                        captions, with the two parts above frozen
    RUN/model/          the model folder, ready for ``minisd.load`` and ``minisd generate --model RUN``

Each stage is an ordinary run of the one training loop, with its own checkpoints: after a crash the same
command resumes the stage it was in and skips the finished ones. A config has a ``[data]`` table and one
table per stage, each with the ``model`` and ``train`` tables of an ordinary run config.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from minisd.errors import ConfigError, MinisdError
from minisd.runtime import cpu_name
from minisd.train.checkpoint import find_checkpoint, load, read_checkpoint_config
from minisd.train.config import differences
from minisd.train.run import load_captioned_split

STAGES = ("autoencoder", "text_encoder", "unet")
STAGE_MODEL_TYPES = {"autoencoder": "latent_autoencoder", "text_encoder": "clip", "unet": "latent_diffusion"}
MODEL_FOLDER = "model"


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
    from minisd.train.config import validate_run_config

    unknown = set(config) - {*STAGES, "data"}
    if unknown:
        raise ConfigError(f"unknown sections {sorted(unknown)} in a text-to-image config; use data, {', '.join(STAGES)}")
    for stage in STAGES:
        validate_run_config(stage_config(config, stage))


def _finished(run_dir: Path, steps: int) -> bool:
    folder = find_checkpoint(run_dir)
    return folder is not None and read_checkpoint_config(folder).get("step") == steps


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

    if find_checkpoint(run_dir) is not None:
        _check_unchanged(run_dir, run_config)
    if _finished(run_dir, run_config["train"]["steps"]):
        print(f"{run_dir.name}: already trained, kept")
        return
    # Resumed with the whole stage config: a setting changed since the stage started is refused, not ignored.
    train_from_config(run_config, run_dir, resume=find_checkpoint(run_dir) is not None, **options)


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
    resume = find_checkpoint(run_dir) is not None
    if resume:
        _check_unchanged(run_dir, run_config)
    if _finished(run_dir, config.steps):
        print(f"{run_dir.name}: already trained, kept")
        return
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
        print(f"latent scale factor, from the training images: {scale:.4f}")
    # On resume the checkpoint brings the scale back (it is a buffer of the model) before the cache is made.
    started = time.perf_counter()
    if resume:
        model.autoencoder.latent_scale.copy_(load(run_dir).autoencoder.latent_scale)
    latents = {split: encode_dataset(model.autoencoder, data.images, progress=progress)
               for split, data in (("train", train_set), ("test", test_set))}
    print(f"encoded {len(train_set) + len(test_set)} images to latents {tuple(latents['train'].shape[1:])} "
          f"once, in {time.perf_counter() - started:.1f} s")
    train(model, _WithLatents(train_set, latents["train"]), config, run_dir,
          run_config={"data": data, "model": run_config["model"]},
          eval_set=_WithLatents(test_set, latents["test"]), resume=resume, device=device, progress=progress)


@torch.no_grad()
def held_out_report(model: Any, run_dir: Path, *, data_dir: str | None, num_images: int = 2000) -> dict[str, Any]:
    """What the two frozen parts of ``model`` (the run's LatentDiffusion) reach on the test split: the
    autoencoder's reconstruction error, and the text encoder's caption-to-image retrieval among 100 with
    captions in the held-out templates. A folder of images has no test split: there, its own images and captions."""
    from minisd.eval.reconstruction import reconstruction_report

    config = read_checkpoint_config(run_dir / "unet")
    test_set = load_captioned_split({**config["data"], "num_images": num_images}, "test", data_dir)
    torch.manual_seed(0)
    captions = test_set.captions(torch.arange(len(test_set)), templates="heldout") \
        if hasattr(test_set, "captions") else []
    report = {"autoencoder": reconstruction_report(model.autoencoder, test_set.images)}
    if len(captions) >= 100:
        report["text_encoder"] = model.text_encoder.retrieval_accuracy(test_set.images, captions)
    return report


def is_folder_dataset(dataset: str) -> bool:
    """Whether ``data.dataset`` names a folder of images with captions rather than a built-in dataset."""
    from minisd.data.captioned import CAPTIONED_DATASETS

    return dataset not in CAPTIONED_DATASETS


def _model_card(run_dir: Path, timings: list[dict[str, Any]], held_out: dict[str, Any]) -> str:
    """The model card: how the model was trained (the command, the time per stage on this machine) and what each
    stage reached on its test split (a folder of images has none: then on the images it was trained on)."""
    data = read_checkpoint_config(run_dir / "unet")["data"]
    folder = is_folder_dataset(data["dataset"])
    lines = [f"# {run_dir.resolve().name}", "", "A minisd text-to-image model (chapter \"Stable Diffusion\").", ""]
    if folder:
        lines += [f"Trained on the folder `{data['dataset']}`: {held_out['autoencoder']['num_images']} images with "
                  f"captions, each resized to {data.get('image_size')}x{data.get('image_size')}.", ""]
    lines += ["## How it was trained", "", "Each command run on the training folder, and the time each stage took:", ""]
    total = sum(sum(t["seconds"].values()) for t in timings)
    for timing in timings:
        parts = ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in timing["seconds"].items())
        lines += [f"    {timing.get('command') or '(from Python)'}", "",
                  f"  {parts} ({timing['threads']} CPU threads, {timing['cpu']})", ""]
    lines += [f"- total: **{total / 60:.1f} minutes**", ""]
    if folder:
        lines += ["## What each part reached (on the training images)", "",
                  "A folder of images has no test split: these numbers are measured on the images the model was "
                  "trained on, with their own captions. They say how well each part fits them, not how it does on "
                  "new pictures.", ""]
    else:
        lines += ["## What each part reached (test split)", ""]
    images = "images of the folder" if folder else "test images"
    for stage in STAGES:
        metrics = [json.loads(line) for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines()
                   if line.strip().startswith("{")] if (run_dir / stage / "metrics.jsonl").exists() else []
        evals = [m for m in metrics if any(k.startswith("eval/") for k in m)]
        if evals:
            shown = ", ".join(f"{k[5:]} {v:.4g}" for k, v in evals[-1].items() if k.startswith("eval/"))
            lines.append(f"- {stage} (step {evals[-1]['step']}): {shown}")
    reconstruction = held_out["autoencoder"]
    lines.append(f"- autoencoder reconstructions of {reconstruction['num_images']} {images}: squared error "
                 f"{reconstruction['mse']:.5f} per pixel, PSNR {reconstruction['psnr']:.1f} dB")
    retrieval = held_out.get("text_encoder")
    if retrieval:
        captions = "their own captions" if folder else "held-out caption templates"
        lines.append(f"- text encoder, caption-to-image retrieval among 100 {images}, {captions}: "
                     f"top-1 {retrieval['top1']:.3f} (chance {retrieval['top1_chance']:.3f}), top-5 "
                     f"{retrieval['top5']:.3f}; any image whose caption says the same: top-1 "
                     f"{retrieval['top1_class']:.3f} (chance {retrieval['top1_class_chance']:.3f}), top-5 "
                     f"{retrieval['top5_class']:.3f}")
    if folder:
        lines += ["", "Prompt adherence and FID are measured for the mnist and shapes models only (by classifiers of "
                  "their attributes); to see how this model follows prompts, draw a prompt grid from the folder's own "
                  f"captions: `minisd figures text-to-image {run_dir}`."]
    else:
        lines += ["", "Prompt adherence and FID: `minisd eval` with the evaluation classifier (see "
                  "benchmarks/README.md, \"Text-to-image\")."]
    return "\n".join(lines) + "\n"


def train_text_to_image(config: dict[str, Any], run_dir: str | os.PathLike, *, data_dir: str | None = None,
                        resume: bool = False, overwrite: bool = False, device: str = "auto",
                        progress: bool = True, command: str | None = None) -> Path:
    """Train the three parts of a text-to-image model in order and write ``run_dir/model``; return its path.

    ``resume=True`` continues a run in ``run_dir``: finished stages are kept, a started one continues from
    its last checkpoint (its settings must not have changed but for ``train.steps``), and the model folder
    is written at the end.
    """
    import shutil

    from minisd.pipelines import save_model_folder
    from minisd.pipelines.model_folder import is_model_folder

    validate_text_to_image_config(config)
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                          f"or choose another --out")
    if resume and not (run_dir / "text2image.json").is_file():
        raise ConfigError(f"there is no text-to-image run to resume in {run_dir}")
    if overwrite and run_dir.is_dir():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "text2image.json").write_text(json.dumps(config, indent=2) + "\n")
    options = {"data_dir": data_dir, "device": device, "progress": progress}
    # One entry per command run on this folder, rewritten as each stage ends: a run that crashes and is
    # resumed keeps the time of the stages it finished, and the card adds up every command's time.
    timings_file = run_dir / "timings.json"
    seconds: dict[str, float] = {}
    timings = [*(json.loads(timings_file.read_text()) if timings_file.exists() else []),
               {"command": command, "seconds": seconds, "threads": torch.get_num_threads(), "cpu": cpu_name()}]
    try:
        for stage in STAGES:
            started = time.perf_counter()
            if stage == "unet":
                _train_unet(stage_config(config, stage), run_dir / stage, run_dir / "autoencoder",
                            run_dir / "text_encoder", **options)
            else:
                _stage_run(stage_config(config, stage), run_dir / stage, **options)
            seconds[stage] = time.perf_counter() - started
            timings_file.write_text(json.dumps(timings, indent=2) + "\n")
    except MinisdError:
        # A new run refused before its first checkpoint (a folder without one usable image, say) leaves nothing
        # behind: the same command, corrected, must not be told to --resume a run that never started.
        if not resume and not any(find_checkpoint(run_dir / stage) for stage in STAGES):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    folder = run_dir / MODEL_FOLDER
    if is_model_folder(folder):
        shutil.rmtree(folder)
    model = load(run_dir / "unet")
    held_out = held_out_report(model, run_dir, data_dir=data_dir)
    (run_dir / "held_out.json").write_text(json.dumps(held_out, indent=2) + "\n")
    save_model_folder(model, folder, data=read_checkpoint_config(run_dir / "unet")["data"],
                      card=_model_card(run_dir, timings, held_out))
    print(f"text-to-image model written to {folder}: minisd generate \"...\" --model {run_dir}")
    return folder
