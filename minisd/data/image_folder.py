"""A user's own folder of images with captions, in the image-folder convention.

Either a ``metadata.jsonl`` whose lines are ``{"file_name": "cat.png", "text": "a black cat"}`` (file
names relative to the folder), or, without one, a ``cat.txt`` holding the caption beside each
``cat.png``. Each image is converted to RGB or grey, its shorter side resized to ``size`` and its
centre cropped to ``size`` x ``size``. Unless asked otherwise, the folder says both (:func:`folder_format`):
``size`` is the most common shorter side of its images, and they are read grey if every one is stored grey
(28x28 Fashion-MNIST garments stay 28x28 grey), else RGB. A missing or unreadable image, and an image without a caption,
is named and skipped, never silently used: ``dataset.skipped`` lists each with the reason, and one
line reports the counts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minisd.data.captioned import CaptionedDataset
from minisd.data.captions import check_template_set
from minisd.errors import ConfigError, DataError

METADATA_FILE = "metadata.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_MODES = {1: "L", 3: "RGB"}
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow's modes of one colour channel (alpha aside)
_REPORTED: set[tuple[Path, str]] = set()
_NAMES_IN_SUMMARY = 10  # the report line names this many skipped files; dataset.skipped has them all


class GivenCaptions:
    """The captions a folder came with, used as given (a CaptionGrammar; there are no templates).

    Images refer to their caption by the attribute ``caption_index`` (N,) int64, so a subset keeps them.
    """

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)

    def render(self, labels: torch.Tensor, attributes: Mapping[str, torch.Tensor], templates: str) -> list[str]:
        """Each image's own caption; ``templates`` is checked but makes no difference."""
        check_template_set(templates)
        return [self.texts[index] for index in attributes["caption_index"].tolist()]

    def vocabulary(self) -> list[str]:
        """Every caption of the folder."""
        return sorted(set(self.texts))


def _captions_from_metadata(folder: Path, skipped: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(file name, caption) for each usable line of ``metadata.jsonl``; bad lines go to ``skipped``."""
    try:
        lines = (folder / METADATA_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {folder / METADATA_FILE} ({err}); write it as UTF-8 JSON lines") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{METADATA_FILE} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            skipped.append((where, f"not JSON ({err.msg})"))
            continue
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(file_name, str) or not file_name:
            skipped.append((where, 'no "file_name"'))
        elif not isinstance(entry.get("text"), str) or not entry["text"].strip():
            skipped.append((file_name, f'no caption ("text" missing or empty on {where})'))
        else:
            pairs.append((file_name, entry["text"].strip()))
    return pairs


def _captions_from_text_files(folder: Path, skipped: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(file name, caption) for each image with a readable, non-empty ``.txt`` beside it."""
    pairs = []
    images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    stems = {path.stem for path in images}
    for caption_file in sorted(folder.glob("*.txt")):
        if caption_file.stem not in stems:
            skipped.append((caption_file.name, "a caption with no image beside it"))
    for path in images:
        caption_file = path.with_suffix(".txt")
        try:
            text = caption_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            skipped.append((path.name, f"no caption ({caption_file.name} is missing)"))
            continue
        except (OSError, UnicodeDecodeError) as err:
            skipped.append((path.name, f"caption {caption_file.name} cannot be read ({err})"))
            continue
        if text:
            pairs.append((path.name, text))
        else:
            skipped.append((path.name, f"no caption ({caption_file.name} is empty)"))
    return pairs


def _read_image(path: Path, size: int, mode: str) -> np.ndarray:
    """The image at ``path`` as uint8 (size, size, channels): shorter side resized to ``size``, centre cropped."""
    with Image.open(path) as image:
        image = image.convert(mode)  # decodes the whole file: a truncated one fails here, not later
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (width - size) // 2, (height - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)))
    return pixels.reshape(size, size, -1)


def folder_format(paths: list[Path]) -> tuple[int, int]:
    """(size, channels) a folder's images are read at unless asked otherwise: the most common shorter side (the
    smaller one on a tie), and 1 (grey) if every image is stored grey, else 3 (RGB). Only the files' headers are
    read; an image that cannot be opened is left out here (the reading names it)."""
    sides, all_grey = [], True
    for path in paths:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
                all_grey = all_grey and image.mode in _GREY_MODES
        except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError):
            continue
    if not sides:
        return 1, 3  # nothing readable: the reading will say so
    counts = {side: sides.count(side) for side in set(sides)}
    return min(counts, key=lambda side: (-counts[side], side)), 1 if all_grey else 3


def folder_captions(folder: Path, skipped: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """(file name, caption) for each image of ``folder`` that has a caption, from ``metadata.jsonl`` if there is
    one, else from the ``.txt`` files; what cannot be used goes to ``skipped`` as (name, reason)."""
    skipped = [] if skipped is None else skipped
    if (folder / METADATA_FILE).is_file():
        return _captions_from_metadata(folder, skipped)
    if any(folder.glob("*.txt")):
        return _captions_from_text_files(folder, skipped)
    raise DataError(f"{str(folder)!r} has no captions: add {METADATA_FILE} (lines of "
                    '{"file_name": ..., "text": ...}) or a .txt file beside each image')


def load_image_folder(path: str | os.PathLike, *, size: int | None = None,
                      channels: int | None = None) -> CaptionedDataset:
    """The captioned images of the folder ``path``, as (N, channels, size, size) in [0, 1] with labels 0.

    ``size`` and ``channels`` (1 grey, 3 RGB) default to the folder's own (:func:`folder_format`).
    Captions come from ``metadata.jsonl`` if the folder has one, else from a ``.txt`` beside each image.
    Skipped files are in ``dataset.skipped`` as (name, reason), and a line on stderr gives the counts and the
    size and colour the images were read at.
    A DataError if the folder does not exist, has neither kind of caption, or has no usable image.
    """
    if channels is not None and channels not in _MODES:
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if size is not None and size < 1:
        raise ConfigError(f"size must be at least 1 pixel, got {size}")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"the image folder {str(folder)!r} does not exist; give the path of a folder of images "
                        f"with captions ({METADATA_FILE} or a .txt beside each image)")
    skipped: list[tuple[str, str]] = []
    pairs = folder_captions(folder, skipped)
    own_size, own_channels = folder_format([folder / file_name for file_name, _ in pairs])
    asked = {"size": size is not None, "colour": channels is not None}
    size, channels = size or own_size, channels or own_channels

    images, texts = [], []
    for file_name, text in pairs:
        try:
            pixels = _read_image(folder / file_name, size, _MODES[channels])
        except FileNotFoundError:
            skipped.append((file_name, "file not found"))
        except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as err:
            # PIL reports a damaged file with any of these, depending on the format and the damage
            skipped.append((file_name, f"cannot read the image ({err})"))
        else:
            images.append(pixels)
            texts.append(text)

    origin = ("the folder's own" if not any(asked.values()) else "as asked" if all(asked.values()) else
              ", ".join(f"{what} {'as asked' if given else 'from the folder'}" for what, given in asked.items()))
    report = (f"read {len(images)} images with captions from {folder} at {size}x{size} "
              f"{'grey' if channels == 1 else 'RGB'} ({origin}); skipped {len(skipped)}")
    if skipped:
        named = ", ".join(f"{name} ({reason})" for name, reason in skipped[:_NAMES_IN_SUMMARY])
        more = len(skipped) - _NAMES_IN_SUMMARY
        report += ": " + named + (f", and {more} more (see dataset.skipped)" if more > 0 else "")
    if (folder.resolve(), report) not in _REPORTED:  # once per process: a training run reads its folder often
        _REPORTED.add((folder.resolve(), report))
        print(report, file=sys.stderr)
    if not images:
        raise DataError(f"no usable image with a caption in {str(folder)!r} (skipped {len(skipped)}); "
                        "check the file names and captions listed above")

    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    dataset = CaptionedDataset(
        pixels, torch.zeros(len(images), dtype=torch.long), ["image"], folder.name or str(folder), "all",
        attributes={"caption_index": torch.arange(len(texts))}, grammar=GivenCaptions(texts),
    )
    dataset.skipped = skipped
    return dataset
