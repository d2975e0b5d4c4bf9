"""MNIST and Fashion-MNIST: where their IDX files live, what they must hash to, how to read them.

Both datasets ship as four gzipped IDX files per dataset (train/t10k x images/labels).
An IDX file is a tiny self-describing array format:

    bytes 0-1   zero
    byte  2     element type (0x08 = unsigned byte, the only type used here)
    byte  3     number of dimensions D
    then        D big-endian uint32 sizes, then the elements in C order

so the first four bytes read as one big-endian integer give the "magic number":
2051 (0x0803) for a 3-D images file (N, rows, cols) and 2049 (0x0801) for a 1-D labels file (N,).

Every file is checked against the size and MD5 of the original distribution before it is parsed,
so a truncated or corrupt file is reported instead of silently giving a wrong dataset.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minisd.errors import DataError

DATA_DIR_ENV_VAR = "MINISD_DATA"

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
IDX_PIXEL_MAX = 255
"""Pixels are bytes, so dividing by 255 maps them onto [0, 1]."""

# Tried in order. Module-level (not constants baked into functions) so tests can point them
# at file:// folders. Each URL ends with "/" and the file name is appended to it.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

# Seconds to wait for a mirror to answer (and for each chunk after that) before trying the next one.
DOWNLOAD_TIMEOUT_S = 20.0
_CHUNK_BYTES = 1 << 20
_DOWNLOAD_CHUNK_BYTES = 1 << 16  # small enough for the progress bar to move on a slow line


@dataclass(frozen=True)
class KnownFile:
    """One original distribution file and the size and MD5 that every good copy has."""

    dataset: str
    filename: str
    size: int
    md5: str

    @property
    def relative_path(self) -> str:
        """Where the file sits inside a data folder, e.g. ``mnist/train-images-idx3-ubyte.gz``."""
        return f"{self.dataset}/{self.filename}"


# Sizes and MD5s of the original files (LeCun's MNIST page, the zalandoresearch/fashion-mnist README).
KNOWN_FILES: dict[tuple[str, str], KnownFile] = {
    (file.dataset, file.filename): file
    for file in [
        KnownFile("mnist", "train-images-idx3-ubyte.gz", 9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        KnownFile("mnist", "train-labels-idx1-ubyte.gz", 28881, "d53e105ee54ea40749a09fcbcd1e9432"),
        KnownFile("mnist", "t10k-images-idx3-ubyte.gz", 1648877, "9fb629c4189551a2d022fa330f9573f3"),
        KnownFile("mnist", "t10k-labels-idx1-ubyte.gz", 4542, "ec29112dd5afa0611ce80d1b7f02629c"),
        KnownFile("fashion-mnist", "train-images-idx3-ubyte.gz", 26421880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        KnownFile("fashion-mnist", "train-labels-idx1-ubyte.gz", 29515, "25c81989df183df01b3e8a0aad5dffbe"),
        KnownFile("fashion-mnist", "t10k-images-idx3-ubyte.gz", 4422102, "bef4ecab320f06d8554ea6380940ec79"),
        KnownFile("fashion-mnist", "t10k-labels-idx1-ubyte.gz", 5148, "bb300cfdad3c16e7a12a480ee83cd310"),
    ]
}

_SPLIT_FILE_PREFIX = {"train": "train", "test": "t10k"}


def split_files(dataset: str, split: str) -> tuple[KnownFile, KnownFile]:
    """The (images, labels) files of ``dataset`` ("mnist" or "fashion-mnist") for ``split`` in ("train", "test")."""
    prefix = _SPLIT_FILE_PREFIX[split]
    return (
        KNOWN_FILES[(dataset, f"{prefix}-images-idx3-ubyte.gz")],
        KNOWN_FILES[(dataset, f"{prefix}-labels-idx1-ubyte.gz")],
    )


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds (or will receive) dataset files, as an absolute path.

    First match wins: the ``data_dir`` argument, then the MINISD_DATA environment variable,
    then ``$XDG_CACHE_HOME/minisd/data`` (``~/.cache/minisd/data`` when XDG_CACHE_HOME is unset).
    The folder need not exist yet.
    """
    if data_dir is not None:
        chosen = Path(data_dir)
    elif os.environ.get(DATA_DIR_ENV_VAR):
        chosen = Path(os.environ[DATA_DIR_ENV_VAR])
    else:
        cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        chosen = Path(cache_home) / "minisd" / "data"
    return chosen.expanduser().resolve()


_DELETE_TO_REDOWNLOAD = "delete the file to download it again"
_ALLOW_DOWNLOAD = "allow downloading (download=True)"


def _how_to_fix(relative_path: str, alternative: str | None = None) -> str:
    other_way = f", or {alternative}" if alternative else ""
    return (
        f"To fix: set {DATA_DIR_ENV_VAR} or pass --data-dir to a folder holding {relative_path}{other_way}. "
        "(The built-in 'digits' dataset needs no files.)"
    )


def locate_file(known: KnownFile, data_dir: Path) -> Path | None:
    """The first existing copy of ``known`` at ``<data_dir>/<dataset>/<file>`` or ``<data_dir>/<file>``."""
    for candidate in (data_dir / known.dataset / known.filename, data_dir / known.filename):
        if candidate.is_file():
            return candidate
    return None


def _size_problem(size: int, known: KnownFile) -> str | None:
    if size == known.size:
        return None
    why = "truncated or an incomplete download" if size < known.size else "not the original file"
    return f"wrong size: {size:,} bytes instead of {known.size:,} ({why})"


def _md5_problem(md5: str, known: KnownFile) -> str | None:
    if md5 == known.md5:
        return None
    return f"MD5 mismatch: {md5} instead of {known.md5} (the file is corrupt)"


# Hashing the 26 MB Fashion-MNIST file takes ~0.1 s; remember each digest as long as the file
# on disk is unchanged (same path, modification time and size).
_MD5_MEMO: dict[tuple[str, int, int], str] = {}


def _file_md5(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _MD5_MEMO:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK_BYTES):
                digest.update(chunk)
        _MD5_MEMO[key] = digest.hexdigest()
    return _MD5_MEMO[key]


def verify_file(path: Path, known: KnownFile) -> None:
    """Raise DataError unless the file at ``path`` has the size and MD5 of ``known``.

    A bad file is reported, never deleted: it is the user's file, and they decide what to do.
    """
    try:
        problem = _size_problem(path.stat().st_size, known) or _md5_problem(_file_md5(path), known)
    except OSError as error:
        problem = f"cannot be read ({error.strerror or error})"
    if problem:
        raise DataError(f"{path}: {problem}. {_how_to_fix(known.relative_path, _DELETE_TO_REDOWNLOAD)}")


class _DownloadRejected(Exception):
    """A mirror answered, but not with the original file."""


def _download_verified(url: str, destination: Path, known: KnownFile) -> None:
    # Stream into a temporary file next to the destination and rename it into place only once
    # size and MD5 match: os.replace within one folder is atomic, so an interrupted or bad
    # download never leaves a half file under the real name.
    handle, temp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    temp_path = Path(temp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                tqdm(total=known.size, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                     desc=known.filename, file=sys.stderr, dynamic_ncols=True) as bar:
            while chunk := response.read(_DOWNLOAD_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        problem = _size_problem(size, known) or _md5_problem(digest.hexdigest(), known)
        if problem:
            raise _DownloadRejected(problem)
        os.replace(temp_path, destination)
    finally:
        temp_path.unlink(missing_ok=True)  # after a successful os.replace there is nothing left


def _make_folders(folder: Path) -> list[Path]:
    """``folder.mkdir(parents=True)``, returning the folders it created (outermost first), to undo on failure."""
    created = []
    for path in [*reversed(folder.parents), folder]:
        if not path.exists():
            created.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (another file arrived meanwhile): leave it and its parents


def download_file(known: KnownFile, data_dir: Path) -> Path:
    """Download ``known`` into ``<data_dir>/<dataset>/<file>``, trying each mirror in turn.

    Returns the path of the verified file. Raises one DataError listing every mirror's failure; then
    the folders this call created (a mistyped data folder, say) are removed again.
    """
    destination = data_dir / known.dataset / known.filename
    try:
        created = _make_folders(destination.parent)
    except OSError as error:
        raise DataError(
            f"{destination} is missing and cannot be downloaded: cannot create folder "
            f"{destination.parent} ({error.strerror or error}). {_how_to_fix(known.relative_path)}"
        ) from None

    failures = []
    for mirror in MIRRORS[known.dataset]:
        url = mirror + known.filename
        print(f"minisd: downloading {url}", file=sys.stderr)
        try:
            _download_verified(url, destination, known)
            return destination
        except (OSError, http.client.HTTPException, ValueError, _DownloadRejected) as error:
            print(f"minisd: failed ({error})", file=sys.stderr)
            failures.append(f"{url}: {error}")
    _remove_empty(created)
    raise DataError(
        f"{destination} is missing and the download failed from every mirror ({'; '.join(failures)}). "
        f"Check the internet connection, or fetch {known.filename} by hand into {destination.parent}. "
        + _how_to_fix(known.relative_path)
    )


def ensure_file(known: KnownFile, data_dir: Path, download: bool) -> Path:
    """The path of a verified copy of ``known`` under ``data_dir``, downloading it if allowed."""
    found = locate_file(known, data_dir)
    if found is not None:
        verify_file(found, known)
        return found
    if not download:
        raise DataError(
            f"{data_dir / known.relative_path} not found (also looked for {data_dir / known.filename}) "
            f"and downloading is off. {_how_to_fix(known.relative_path, _ALLOW_DOWNLOAD)}"
        )
    return download_file(known, data_dir)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes into a read-only uint8 array of its stored shape.

    ``expected_magic`` is IDX_IMAGES_MAGIC (result (N, rows, cols)) or IDX_LABELS_MAGIC (result (N,)).
    Raises DataError if the file is not gzip, has another magic number, or its length disagrees
    with the sizes in its header.
    """

    def invalid(reason: str) -> DataError:
        return DataError(
            f"{path}: not a valid IDX file ({reason}). {_how_to_fix(path.name, _DELETE_TO_REDOWNLOAD)}"
        )

    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise invalid(f"cannot decompress: {error}") from None
    if len(raw) < 4:
        raise invalid("shorter than the 4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise invalid(f"magic number {magic}, expected {expected_magic}")

    ndim = magic & 0xFF  # the magic number's last byte counts the dimensions
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise invalid("header cut short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header_bytes != int(np.prod(shape)):
        raise invalid(f"header promises shape {shape} but holds {len(raw) - header_bytes:,} bytes of data")
    # np.frombuffer over immutable bytes gives a read-only array: memoised data cannot be changed by accident.
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape)


# Parsed splits, keyed by dataset and split alone: files are parsed only after their MD5 matched
# the original, so every accepted copy on disk holds the same bytes. (Decompressing the Fashion-MNIST
# train images takes ~0.5 s; a test suite loads the same split many times.)
_PARSED_SPLITS: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def load_idx_split(
    dataset: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of an IDX dataset: (pixels uint8 (N, 28, 28), labels uint8 (N,)), both read-only.

    Files are looked up (and downloaded, if missing and ``download``) under resolve_data_dir(data_dir)
    and verified against their known MD5 on every call, even when the parsed arrays are memoised.
    """
    root = resolve_data_dir(data_dir)
    if not root.is_dir() and (data_dir is not None or os.environ.get(DATA_DIR_ENV_VAR)):
        given = "--data-dir" if data_dir is not None else f"${DATA_DIR_ENV_VAR}"
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"the data folder {root} (from {given}) {what}: fix the path, create the folder "
                        f"to download into it, or leave {given} unset to use the download cache")
    images_file, labels_file = split_files(dataset, split)
    images_path = ensure_file(images_file, root, download)
    labels_path = ensure_file(labels_file, root, download)

    key = (dataset, split)
    if key not in _PARSED_SPLITS:
        pixels = read_idx(images_path, IDX_IMAGES_MAGIC)
        labels = read_idx(labels_path, IDX_LABELS_MAGIC)
        if len(pixels) != len(labels):
            raise DataError(
                f"{images_path} holds {len(pixels):,} images but {labels_path} holds {len(labels):,} labels. "
                f"{_how_to_fix(images_file.relative_path, _DELETE_TO_REDOWNLOAD)}"
            )
        _PARSED_SPLITS[key] = (pixels, labels)
    return _PARSED_SPLITS[key]
