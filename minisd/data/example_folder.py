"""``minisd example-folder OUT``: a small folder of captioned pictures, a stand-in for your own.

    OUT/00000.png ... OUT/00599.png     32x32 RGB, one coloured shape on black each (minisd.data.shapes)
    OUT/metadata.jsonl                  {"file_name": "00000.png", "text": "a small red circle in the top left"}

It follows the image-folder convention (:mod:`minisd.data.image_folder`), so ``minisd train --data OUT``
trains a text-to-image model on it exactly as on a folder of your own pictures. Single objects only:
colour and shape are what a small model learns in minutes on a CPU. The same ``n`` and ``seed`` give the
same pictures and captions.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from minisd.data.image_folder import METADATA_FILE
from minisd.errors import ConfigError, MinisdError

EXAMPLE_IMAGES = 600
EXAMPLE_SIZE = 32


def _file_name(index: int) -> str:
    return f"{index:05d}.png"


def _write_files(folder: Path, images: torch.Tensor, captions: list[str]) -> None:
    """Each image as a PNG in ``folder``, then ``metadata.jsonl`` (written last, under a temporary name first:
    a folder whose metadata is there is complete)."""
    from minisd.images import to_pil

    for index, picture in enumerate(to_pil(images)):
        picture.save(folder / _file_name(index))
    lines = [json.dumps({"file_name": _file_name(i), "text": text}) for i, text in enumerate(captions)]
    temporary = folder / f".{METADATA_FILE}.tmp"
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, folder / METADATA_FILE)


def write_example_folder(out: str | os.PathLike, *, n: int = EXAMPLE_IMAGES, seed: int = 0,
                         overwrite: bool = False) -> Path:
    """Write ``n`` captioned 32x32 pictures of single shapes into the folder ``out`` and return it.

    Refuses a folder that holds anything unless ``overwrite`` (which writes over the pictures and
    ``metadata.jsonl`` of an earlier example there and leaves any other file alone: only the files
    ``metadata.jsonl`` names are read). A new folder is written under a temporary name and renamed, so a
    failure leaves nothing behind.
    """
    from minisd.data.shapes import make_shapes
    from minisd.outputs import check_can_create

    out = Path(out)
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    if out.exists() and not out.is_dir():
        raise MinisdError(f"{out} is a file; give a folder for the example pictures")
    filled = out.is_dir() and any(out.iterdir())
    if filled and not overwrite:
        raise MinisdError(f"{out} is not empty; pass --overwrite to write the example there anyway, "
                          f"or choose another folder")
    check_can_create(out, "example folder")
    dataset = make_shapes(n, seed, size=EXAMPLE_SIZE, max_objects=1)
    with torch.random.fork_rng():  # captions draw their wording from torch's global generator
        torch.manual_seed(seed)
        captions = dataset.captions(torch.arange(n), templates="train")
    if filled:
        _write_files(out, dataset.images, captions)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)  # left by a killed earlier try
    try:
        temporary.mkdir()  # not mkdtemp: the folder gets the usual permissions, not 0700
        _write_files(temporary, dataset.images, captions)
        if out.is_dir():
            out.rmdir()  # empty, as checked above
        os.rename(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out
