"""Where commands write: every output path is checked before any work, and nothing is created until written.

A command that fails leaves nothing behind, and one that would fail at the end (a read-only folder, a
path under a file, an existing file without ``--overwrite``) fails at the start, before minutes of
sampling or training. These checks have no side effects: folders are made by :func:`make_parent` when
the file is actually written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from minisd.errors import MinisdError

# What one picture of samples may hold, and what minisd sample draws by default (here, free of torch, for --help).
MAX_GRID_IMAGES = 10_000  # a 100 x 100 grid; FID and other bulk uses draw their samples without a picture
MAX_SCATTER_POINTS = 20_000  # a score model's samples in one scatter plot
SAMPLE_IMAGES, SAMPLE_POINTS = 64, 2000  # images in a grid, or 2-D points


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or the closest of its ancestors that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _can_write_into(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: asked of the file system itself, by creating and removing
    one (permission bits alone do not say it for root, or for read-only mounts)."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".minisd-write-test-")
    except OSError:
        return False
    os.close(handle)
    os.unlink(probe)
    return True


def check_can_create(path: str | os.PathLike, what: str = "output", *, folder: Path | None = None) -> Path:
    """Raise :class:`MinisdError` unless ``path`` could be created in ``folder`` (default: ``path`` itself, for a
    folder to make or write into): the closest existing ancestor must be a folder minisd can write into.
    Creates nothing."""
    path = Path(path)
    ancestor = _nearest_existing(path if folder is None else folder)
    if not ancestor.is_dir():
        raise MinisdError(f"cannot write the {what} {path}: {ancestor} is a file, not a folder")
    if not _can_write_into(ancestor):
        raise MinisdError(f"cannot write the {what} {path}: the folder {ancestor} is not writable")
    return path


def check_writable(path: str | os.PathLike, overwrite: bool, *, suffixes: tuple[str, ...] | None = None,
                   what: str = "output file") -> Path:
    """Check that a file can be written at ``path``, before any work: refuse to replace an existing file
    unless ``overwrite``, a path that is a folder, and (if ``suffixes`` are given) another file extension."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise MinisdError(f"{path}: the {what} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise MinisdError(f"{path} is a folder; give a file name for the {what}")
    if path.exists() and not overwrite:
        raise MinisdError(f"{path} already exists; pass --overwrite to replace it or choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise MinisdError(f"cannot write the {what} {path}: the file is read-only")
    return check_can_create(path, what, folder=path.parent)


def make_parent(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` is written into (at write time, after the checks and the work)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
