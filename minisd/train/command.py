"""What ``minisd train`` decides before the loop: the config (a preset, a TOML file, or only the changes of a
resumed run), the sugar of ``--data FOLDER``, the run folder's default, and whether the run is an ordinary one
(:func:`~minisd.train.run.train_from_config`) or the three stages of a text-to-image model
(:func:`~minisd.train.text_to_image.train_text_to_image`)."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minisd.configs import FOLDER_PRESET
from minisd.errors import MinisdError
from minisd.train.config import apply_overrides, is_distill_config, is_text_to_image_config, load_run_config
from minisd.train.run import train_from_config
from minisd.train.distill import DISTILL_CONFIG_FILE, train_distilled
from minisd.train.text_to_image import RUN_CONFIG_FILE, train_text_to_image

RUNS_DIR = Path("runs")


@dataclass(frozen=True)
class TrainingRun:
    """What :func:`run_training` trained: the run folder ``out``; for an ordinary run the loop's ``result`` (step,
    seconds, test metrics), for a text-to-image run (``text_to_image``) or a distillation None."""

    out: Path
    text_to_image: bool
    result: dict[str, Any] | None


def check_image_folder(folder: Path) -> None:
    """``--data``: a folder that exists and holds images with captions, checked before a run folder is made
    (cheaply: the images themselves are read, and bad ones named, when training starts)."""
    from minisd.data.image_folder import IMAGE_SUFFIXES, METADATA_FILE

    captions = f"a caption for each ({METADATA_FILE}, or a .txt beside each image)"
    if not folder.exists():
        raise MinisdError(f"--data {folder}: no such folder; give the folder of your images with {captions}, "
                          f"or make an example one: minisd example-folder {folder}")
    if not folder.is_dir():
        raise MinisdError(f"--data {folder}: a file, not a folder; give the folder of your images with {captions}")
    files = [path for path in folder.iterdir() if path.is_file()]
    if not files:
        raise MinisdError(f"--data {folder}: the folder is empty; put your images in it with {captions}")
    if not any(path.suffix.lower() in IMAGE_SUFFIXES for path in files):
        raise MinisdError(f"--data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    if not (folder / METADATA_FILE).is_file() and not any(path.suffix == ".txt" for path in files):
        raise MinisdError(f"--data {folder}: the images have no captions; add {METADATA_FILE} (lines of "
                          '{"file_name": ..., "text": ...}) or a .txt file beside each image')


def default_folder_run(folder: str | os.PathLike) -> Path:
    """``minisd train --data FOLDER``'s default run folder: runs/<folder name>."""
    return RUNS_DIR / Path(folder).resolve().name


def _holds(outer: Path, inner: Path) -> bool:
    """Whether the folder ``inner`` is ``outer`` or lies inside it."""
    outer, inner = outer.resolve(), inner.resolve()
    return inner == outer or outer in inner.parents


def folder_train_command(folder: str | os.PathLike) -> str:
    """The command that trains a text-to-image model on ``folder``, with an ``--out`` when the default run folder
    would hold the images."""
    folder = Path(folder)
    out = f" --out {default_folder_run(folder)}-model" if _holds(default_folder_run(folder), folder) else ""
    return f"minisd train --data {shlex.quote(str(folder))}{out}"


def run_training(config: str | None = None, overrides: list[str] = (), *, data: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                 data_dir: str | None = None, device: str = "auto", progress: bool = True,
                 command: str | None = None) -> TrainingRun:
    """Train the run ``minisd train`` describes: ``config`` (a preset or TOML file; optional when resuming, which
    reads the run's saved config) with ``overrides`` (``"section.key=value"``) into ``out``.

    ``data``: a folder of captioned images, short for the override ``data.dataset=FOLDER`` with the
    ``text2image_folder`` preset unless ``config`` names another, and ``out`` runs/<folder name>. ``out`` defaults
    to runs/<config name>. A text-to-image config, or a resumed text-to-image run, trains its three stages
    (``command``: the command line recorded in the run's timings); any other, the one loop."""
    overrides = list(overrides)
    if data is not None:
        check_image_folder(Path(data))
        overrides = [f"data.dataset={json.dumps(str(data))}", *overrides]  # quoted: a folder may be named 2024
        if not config and not resume:
            config = FOLDER_PRESET
    if config:
        run_config = load_run_config(config, overrides)
    elif resume:
        run_config = apply_overrides({}, overrides)  # only what changes; the rest comes from the checkpoint
    else:
        raise MinisdError("--config is needed to start a run (a preset or a TOML file; see minisd train --help)")
    if out is not None:
        out = Path(out)
    elif data is not None:
        out = default_folder_run(data)
    elif config:
        out = RUNS_DIR / Path(config).stem
    else:
        raise MinisdError("--resume needs --out, the run folder to continue")
    if data is not None and _holds(out, Path(data)):
        raise MinisdError(f"the run folder {out} would hold the images of --data {data} (and --overwrite would "
                          f"delete them); choose another --out, e.g. --out {default_folder_run(data)}-model")
    options = {"data_dir": data_dir, "resume": resume, "overwrite": overwrite, "device": device, "progress": progress}
    if is_distill_config(run_config) or (resume and (out / DISTILL_CONFIG_FILE).is_file()):
        if resume and not config:
            run_config = apply_overrides(json.loads((out / DISTILL_CONFIG_FILE).read_text()), overrides)
        train_distilled(run_config, out, command=command, **options)
        return TrainingRun(out, text_to_image=False, result=None)
    if is_text_to_image_config(run_config) or (resume and (out / RUN_CONFIG_FILE).is_file()):
        if resume and not config:
            run_config = apply_overrides(json.loads((out / RUN_CONFIG_FILE).read_text()), overrides)
        train_text_to_image(run_config, out, command=command, **options)
        return TrainingRun(out, text_to_image=True, result=None)
    return TrainingRun(out, text_to_image=False, result=train_from_config(run_config, out, **options))
