"""``minisd train --config mnist_fast``: a few-step text-to-image model distilled from a trained one, by reflow
(``distill.method = "reflow"``) or consistency distillation (``"consistency"``).

    RUN/pairs/       reflow only: the teacher's couplings (noise, latent, caption), made once in chunks of ``chunk``
                     pairs; a crashed generation resumes at the first chunk missing
                     (:func:`minisd.train.reflow.teacher_pairs`)
    RUN/student/     the student: an ordinary run of the training loop, on the pairs (reflow) or on the training
                     data with the teacher in the loss (:class:`minisd.train.consistency.ConsistencyStudent`), with
                     the teacher's autoencoder and text encoder, frozen; its UNet starts from the teacher's weights
                     (``init_from_teacher``)
    RUN/model/       the model folder, for ``minisd.load``, ``minisd generate`` and the page, with its model card
                     (README.md: the command, and the time each stage took on this machine)
    RUN/timings.json one entry per command run on the folder (a resumed run adds one): its stages' seconds

A config has a ``[distill]`` table (the teacher and how its pairs are drawn, :class:`DistillConfig`), the ``[data]``
table whose training captions the pairs are drawn for, and ``[student.model]``/``[student.train]`` as a
text-to-image model's ``[unet]`` stage.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from minisd.errors import ConfigError
from minisd.models.files import find_checkpoint, load
from minisd.models.model_folder import RUN_MODEL_FOLDER, is_model_folder, load_model_folder, save_model_folder
from minisd.shipped import shipped_models
from minisd.train import distributed
from minisd.train.consistency import ConsistencyStudent
from minisd.train.config import DistillConfig, student_config, train_config, validate_distill_config
from minisd.train.reflow import teacher_pairs
from minisd.train.run import load_captioned_split
from minisd.train.text_to_image import read_timings, timing_lines, write_timings

DISTILL_CONFIG_FILE = "distill.json"  # the run's whole config, which --resume reads back
PAIRS_DIR = "pairs"


def load_teacher(name: str):
    """The teacher's :class:`~minisd.models.latent_diffusion.LatentDiffusion`: a shipped name, a model folder, or a
    text-to-image run (its model folder)."""
    path = Path(name) if Path(name).exists() else shipped_models().get(name)
    if path is None:
        raise ConfigError(f"distill.teacher {name!r} is neither a folder nor one of the shipped models "
                          f"{sorted(shipped_models())}")
    for folder in (path, path / RUN_MODEL_FOLDER):
        if is_model_folder(folder):
            return load_model_folder(folder)
    raise ConfigError(f"distill.teacher {name!r} is not a text-to-image model folder or run")


def _pairs(teacher, settings: DistillConfig, folder: Path, captions: list[str], progress: bool) -> dict[str, Any]:
    """The pairs, made chunk by chunk into ``folder`` (each chunk written whole, then renamed) or read back."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = []
    for index, start in enumerate(range(0, settings.pairs, settings.chunk)):
        path = folder / f"pairs-{index:05d}.safetensors"
        if not path.is_file():
            batch = captions[start:start + settings.chunk]
            noise, latents = teacher_pairs(teacher, batch, guidance_scale=settings.guidance_scale,
                                           sampler=settings.sampler, steps=settings.steps, seed=1000 * index,
                                           progress=progress)
            partial = path.with_suffix(".tmp")
            save_file({"noise": noise.contiguous(), "latent": latents.contiguous()}, partial,
                      metadata={"captions": json.dumps(batch)})
            os.replace(partial, path)
        chunks.append(path)
    # Each chunk keeps the captions its pictures were drawn for: the file, not this run, says which they are.
    noise, latents, chunk_captions = [], [], []
    for path in chunks:
        with safe_open(path, "pt") as chunk:
            noise.append(chunk.get_tensor("noise"))
            latents.append(chunk.get_tensor("latent"))
            chunk_captions += json.loads(chunk.metadata()["captions"])
    return {"noise": torch.cat(noise), "latent": torch.cat(latents), "caption": chunk_captions}


class PairDataset:
    """Batches of the teacher's pairs: ``caption``, ``latent`` (the teacher's picture) and ``noise`` (its start)."""

    def __init__(self, pairs: dict[str, Any], name: str):
        self.pairs, self.name, self.split = pairs, name, "train"

    def __len__(self) -> int:
        return len(self.pairs["latent"])

    def batch(self, indices: torch.Tensor) -> dict[str, Any]:
        return {"caption": [self.pairs["caption"][i] for i in indices.tolist()],
                "latent": self.pairs["latent"][indices], "noise": self.pairs["noise"][indices]}


def train_distilled(config: dict[str, Any], run_dir: str | os.PathLike, *, data_dir: str | None = None,
                    resume: bool = False, overwrite: bool = False, device: str = "auto", progress: bool = True,
                    command: str | None = None) -> Path:
    """Train the student (on the teacher's pairs, or by consistency distillation), write ``run_dir/model``; return
    its path."""
    from minisd.models.diffusion import DiffusionModel
    from minisd.models.latent_diffusion import LatentDiffusion
    from minisd.train.loop import train

    settings = validate_distill_config(config)
    if distributed.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("a distillation runs in one process: start it without torchrun")
    run_dir = Path(run_dir)
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                          f"or choose another --out")
    student = student_config(config)
    config_ = train_config(student)
    # The teacher and the student first, so that a bad teacher, or a student the teacher cannot start, is refused
    # before any work. The student is drawn from the run's seed; what follows draws from seeds of its own (the
    # captions, the pairs' noise, every training step), so the order changes no number.
    teacher = load_teacher(settings.teacher)
    unet_settings = {**student["model"].get("unet", {}), "image_shape": list(teacher.autoencoder.latent_shape),
                     "context_dim": teacher.text_encoder.hparams["text_dim"]}
    options = {k: v for k, v in student["model"].items() if k not in ("type", "unet")}
    torch.manual_seed(config_.seed)
    student_class = ConsistencyStudent if settings.method == "consistency" else LatentDiffusion
    model = student_class.from_parts(teacher.autoencoder, teacher.text_encoder, DiffusionModel(**unet_settings),
                                     **options)
    if settings.method == "consistency":
        model.distil_from(teacher, settings.guidance_scale, settings.steps)
    if settings.init_from_teacher and (overwrite or find_checkpoint(run_dir / "student") is None):
        try:
            model.diffusion.denoiser.network.load_state_dict(teacher.diffusion.denoiser.network.state_dict())
        except RuntimeError:
            raise ConfigError("distill.init_from_teacher needs the student's UNet built as the teacher's (the same "
                              "channels, levels and attention); change [student.model.unet] or set it false") from None
    if overwrite and run_dir.is_dir():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DISTILL_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    timings = read_timings(run_dir, command)

    def timed(stage: str, started: float) -> None:
        timings[-1]["seconds"][stage] = time.perf_counter() - started
        write_timings(run_dir, timings)

    train_set = load_captioned_split(student["data"], "train", data_dir)
    if settings.method == "reflow":
        with torch.random.fork_rng():  # each image's caption words drawn from the run's seed: the same run after run
            torch.manual_seed(config_.seed)
            captions = list(train_set.batch(torch.arange(min(settings.pairs, len(train_set))))["caption"])
        if len(captions) < settings.pairs:
            raise ConfigError(f"distill.pairs = {settings.pairs}, but the training split has {len(captions)} captions")
        started = time.perf_counter()
        train_set = PairDataset(_pairs(teacher, settings, run_dir / PAIRS_DIR, captions, progress), train_set.name)
        timed("pairs", started)
    started = time.perf_counter()
    train(model, train_set, config_, run_dir / "student",
          run_config={"data": student["data"], "model": student["model"]},
          resume=find_checkpoint(run_dir / "student") is not None, device=device, progress=progress)
    timed("student", started)
    folder = run_dir / RUN_MODEL_FOLDER
    if is_model_folder(folder):
        shutil.rmtree(folder)
    save_model_folder(load(run_dir / "student"), folder, data={"dataset": student["data"].get("dataset")})
    (folder / "README.md").write_text(model_card(run_dir.resolve().name, settings, student["model"], timings))
    print(f"few-step text-to-image model written to {folder}: minisd generate \"...\" --model {run_dir}")
    return folder


METHODS_CITED = {"reflow": "reflow (Liu et al. 2023) on its own (noise, picture) pairs",
                 "consistency": "consistency distillation (Song et al. 2023; Luo et al. 2023)"}


def model_card(name: str, settings: DistillConfig, student: dict[str, Any], timings: list[dict[str, Any]]) -> str:
    """The distilled model's card: what it was distilled from and how, its defaults, and the commands run on its
    folder with the time each stage took."""
    lines = [f"# {name}", "", f"A minisd few-step text-to-image model (chapter \"Flow matching and few-step "
             f"generation\"), distilled from `{settings.teacher}` at guidance {settings.guidance_scale:g} by "
             f"{METHODS_CITED[settings.method]}. Guidance is folded into it: it draws at guidance "
             f"{student.get('guidance_scale', 1.0):g}, by default in {student.get('sample_steps')} steps of "
             f"`{student.get('sampler')}` (`--steps 1` and `--steps 2` draw too).", "",
             "## How it was trained", "", "Each command run on the training folder, and the time each stage took:", ""]
    *commands, total = timing_lines(timings)
    lines += [*commands, f"{total}, besides the teacher's own training", "",
              "Prompt adherence and FID: `minisd eval` with the evaluation classifier (see benchmarks/README.md)."]
    return "\n".join(lines) + "\n"
