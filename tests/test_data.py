"""Tests for minisd.data: real MNIST-family files, every way a file can be bad, downloads, digits, binarize."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from minisd.data import DATASETS, ImageDataset, binarize, load_dataset, resolve_data_dir
from minisd.data import idx
from minisd.errors import DataError
from real_data import REAL_DATA_DIR, needs_real_data


MNIST_TEST_LABELS = idx.KNOWN_FILES[("mnist", "t10k-labels-idx1-ubyte.gz")]
MNIST_TEST_IMAGES = idx.KNOWN_FILES[("mnist", "t10k-images-idx3-ubyte.gz")]


def real_path(known: idx.KnownFile) -> Path:
    return REAL_DATA_DIR / known.relative_path


def place_copy(known: idx.KnownFile, data_dir: Path, content: bytes | None = None) -> Path:
    """Put a copy of a real file (or ``content`` in its place) at <data_dir>/<dataset>/<file>."""
    destination = data_dir / known.relative_path
    destination.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        shutil.copyfile(real_path(known), destination)
    else:
        destination.write_bytes(content)
    return destination


@pytest.fixture
def no_downloads(monkeypatch):
    """Mirrors that cannot answer, so no test ever reaches the network."""
    for dataset in idx.MIRRORS:
        monkeypatch.setitem(idx.MIRRORS, dataset, ["file:///nonexistent-minisd-mirror/"])


# ---------------------------------------------------------------- real files


@needs_real_data
def test_every_shared_file_matches_the_known_size_and_md5():
    for known in idx.KNOWN_FILES.values():
        idx.verify_file(real_path(known), known)


@needs_real_data
def test_mnist_test_split_has_known_label_counts():
    ds = load_dataset("mnist", "test", data_dir=REAL_DATA_DIR, download=False)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert ds.images.dtype == torch.float32 and ds.images.is_contiguous()
    assert 0.0 <= ds.images.min() and ds.images.max() == 1.0
    assert ds.labels.dtype == torch.int64
    assert torch.bincount(ds.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.classes == [str(d) for d in range(10)]
    assert (ds.name, ds.split, ds.image_shape) == ("mnist", "test", (1, 28, 28))


@needs_real_data
def test_mnist_pixels_are_bytes_divided_by_255():
    ds = load_dataset("mnist", "test", data_dir=REAL_DATA_DIR, download=False)
    raw = idx.read_idx(real_path(MNIST_TEST_IMAGES), idx.IDX_IMAGES_MAGIC)
    assert torch.equal(ds.images[:5, 0] * 255, torch.from_numpy(raw[:5].astype(np.float32)))


@needs_real_data
def test_mnist_train_split_has_known_label_counts():
    ds = load_dataset("mnist", "train", data_dir=REAL_DATA_DIR, download=False)
    assert len(ds) == 60000
    assert torch.bincount(ds.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@needs_real_data
def test_fashion_mnist_has_1000_per_class_in_test():
    ds = load_dataset("fashion-mnist", "test", data_dir=REAL_DATA_DIR, download=False)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10


@needs_real_data
def test_item_is_image_and_scalar_label_and_batches_with_dataloader():
    ds = load_dataset("mnist", "test", data_dir=REAL_DATA_DIR, download=False)
    item = ds[3]
    assert item["image"].shape == (1, 28, 28) and item["image"].dtype == torch.float32
    assert item["label"].shape == () and item["label"].dtype == torch.int64
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 1, 28, 28) and batch["label"].shape == (8,)


@needs_real_data
def test_each_load_returns_fresh_tensors_despite_the_parse_memo():
    first = load_dataset("mnist", "test", data_dir=REAL_DATA_DIR, download=False)
    first.images.zero_()
    second = load_dataset("mnist", "test", data_dir=REAL_DATA_DIR, download=False)
    assert second.images.max() == 1.0


@needs_real_data
def test_file_directly_in_data_dir_is_found(tmp_path):
    flat_copy = tmp_path / MNIST_TEST_LABELS.filename
    shutil.copyfile(real_path(MNIST_TEST_LABELS), flat_copy)
    assert idx.ensure_file(MNIST_TEST_LABELS, tmp_path, download=False) == flat_copy


# ---------------------------------------------------------------- bad files


def test_missing_file_error_names_file_and_fix(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz") in message
    assert "not found" in message
    assert "MINISD_DATA" in message and "--data-dir" in message and "digits" in message


@needs_real_data
def test_truncated_file_rejected_clearly(tmp_path, no_downloads):
    first_100kb = real_path(MNIST_TEST_IMAGES).read_bytes()[:100_000]
    truncated = place_copy(MNIST_TEST_IMAGES, tmp_path, first_100kb)
    place_copy(MNIST_TEST_LABELS, tmp_path)
    with pytest.raises(DataError) as caught:
        load_dataset("mnist", "test", data_dir=tmp_path)
    message = str(caught.value)
    assert str(truncated) in message and "wrong size" in message and "truncated" in message
    assert "delete the file" in message and "MINISD_DATA" in message
    assert truncated.read_bytes() == first_100kb, "the user's file must be left alone"


@needs_real_data
def test_corrupt_file_rejected_by_md5(tmp_path, no_downloads):
    content = bytearray(real_path(MNIST_TEST_LABELS).read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size, one byte different
    corrupt = place_copy(MNIST_TEST_LABELS, tmp_path, bytes(content))
    with pytest.raises(DataError) as caught:
        idx.ensure_file(MNIST_TEST_LABELS, tmp_path, download=True)
    message = str(caught.value)
    assert str(corrupt) in message and "MD5 mismatch" in message and "corrupt" in message
    assert MNIST_TEST_LABELS.md5 in message
    assert corrupt.read_bytes() == content, "a corrupt file is reported, never deleted or replaced"


def write_gzip(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


@pytest.mark.parametrize(
    "payload, reason",
    [
        ((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3), "magic number 2049"),
        ((2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2, 2, 2)) + bytes(7), "shape (2, 2, 2)"),
        (b"\x00\x08", "shorter than"),
    ],
)
def test_invalid_idx_content_rejected_clearly(tmp_path, payload, reason):
    bad = write_gzip(tmp_path / "bad-idx3-ubyte.gz", payload)
    with pytest.raises(DataError, match="not a valid IDX file") as caught:
        idx.read_idx(bad, idx.IDX_IMAGES_MAGIC)
    assert str(bad) in str(caught.value) and reason in str(caught.value)


def test_non_gzip_file_rejected_as_invalid_idx(tmp_path):
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError, match="cannot decompress"):
        idx.read_idx(not_gzip, idx.IDX_LABELS_MAGIC)


def test_valid_idx_parses_to_its_stored_shape(tmp_path):
    header = (2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2, 3, 4))
    good = write_gzip(tmp_path / "good-idx3-ubyte.gz", header + bytes(range(24)))
    array = idx.read_idx(good, idx.IDX_IMAGES_MAGIC)
    assert array.shape == (2, 3, 4) and array.dtype == np.uint8 and array[1, 2, 3] == 23


# ---------------------------------------------------------------- downloads


def test_download_failure_from_every_mirror_is_one_clear_error(tmp_path, monkeypatch):
    dead_mirrors = [(tmp_path / "no-such-mirror-1").as_uri() + "/", (tmp_path / "no-such-mirror-2").as_uri() + "/"]
    monkeypatch.setitem(idx.MIRRORS, "mnist", dead_mirrors)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError) as caught:
        load_dataset("mnist", "test", data_dir=data_dir)
    message = str(caught.value)
    assert "every mirror" in message and "\n" not in message
    assert str(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz") in message
    for mirror in dead_mirrors:
        assert mirror + "t10k-images-idx3-ubyte.gz" in message
    assert "digits" in message
    assert list(data_dir.iterdir()) == [], "no half or temporary file, nor the folder made for them, is left behind"


@needs_real_data
def test_download_from_mirror_verifies_and_places_file_with_a_progress_bar(tmp_path, monkeypatch, capsys):
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    shutil.copyfile(real_path(MNIST_TEST_LABELS), mirror_dir / MNIST_TEST_LABELS.filename)
    monkeypatch.setitem(idx.MIRRORS, "mnist", [mirror_dir.as_uri() + "/"])
    data_dir = tmp_path / "data"
    placed = idx.ensure_file(MNIST_TEST_LABELS, data_dir, download=True)
    assert "/4.44k [" in capsys.readouterr().err  # a progress bar over the file's 4,542 bytes
    assert placed == data_dir / "mnist" / MNIST_TEST_LABELS.filename
    assert placed.read_bytes() == real_path(MNIST_TEST_LABELS).read_bytes()
    assert [p.name for p in placed.parent.iterdir()] == [MNIST_TEST_LABELS.filename]


@needs_real_data
def test_download_discards_corrupt_copy_and_tries_next_mirror(tmp_path, monkeypatch):
    corrupt_mirror = tmp_path / "corrupt-mirror"
    corrupt_mirror.mkdir()
    content = bytearray(real_path(MNIST_TEST_LABELS).read_bytes())
    content[100] ^= 0xFF
    (corrupt_mirror / MNIST_TEST_LABELS.filename).write_bytes(bytes(content))
    good_mirror = REAL_DATA_DIR / "mnist"
    monkeypatch.setitem(idx.MIRRORS, "mnist", [corrupt_mirror.as_uri() + "/", good_mirror.as_uri() + "/"])
    placed = idx.download_file(MNIST_TEST_LABELS, tmp_path / "data")
    idx.verify_file(placed, MNIST_TEST_LABELS)
    assert [p.name for p in placed.parent.iterdir()] == [MNIST_TEST_LABELS.filename]


@needs_real_data
def test_load_dataset_downloads_missing_split_into_data_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(idx.MIRRORS, "mnist", [(REAL_DATA_DIR / "mnist").as_uri() + "/"])
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ds = load_dataset("mnist", "test", data_dir=data_dir)
    assert len(ds) == 10000
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]


# ---------------------------------------------------------------- digits, names, folders


def test_digits_builtin_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISD_DATA", str(tmp_path / "empty"))
    train = load_dataset("digits", "train", download=False)
    test = load_dataset("digits", "test", download=False)
    assert train.images.shape == (1500, 1, 8, 8) and test.images.shape == (297, 1, 8, 8)
    assert train.images.dtype == torch.float32 and 0 <= train.images.min() and train.images.max() == 1.0
    assert set(train.labels.tolist()) == set(range(10)) and train.classes == [str(d) for d in range(10)]
    assert not (tmp_path / "empty").exists()


def test_digits_split_is_the_documented_fixed_permutation():
    from sklearn.datasets import load_digits

    order = np.random.default_rng(0).permutation(1797)
    expected = torch.from_numpy(load_digits().images[order] / 16).float()
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert torch.equal(torch.cat([train.images, test.images])[:, 0], expected)


def test_unknown_dataset_name_lists_choices():
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10")
    assert "cifar10" in str(caught.value)
    assert all(name in str(caught.value) for name in DATASETS)


def test_unknown_split_lists_choices():
    with pytest.raises(DataError, match="train, test"):
        load_dataset("digits", "validation")


def test_env_var_sets_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISD_DATA", str(tmp_path / "from-env"))
    assert resolve_data_dir() == tmp_path / "from-env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit", "an explicit folder wins"


def test_default_data_dir_is_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("MINISD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir() == tmp_path / "cache" / "minisd" / "data"


# ---------------------------------------------------------------- binarize


def test_binarize_is_bernoulli_of_intensity():
    intensities = torch.linspace(0, 1, 11).reshape(1, 1, 1, 11)
    samples = binarize(intensities.expand(4000, 1, 1, 11), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4000, 1, 1, 11) and samples.dtype == torch.float32
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    # 4000 draws: the standard error of a mean is at most 0.5 / sqrt(4000) ~ 0.008.
    torch.testing.assert_close(samples.mean(0), intensities[0], atol=0.04, rtol=0)
    assert samples[:, ..., 0].eq(0).all() and samples[:, ..., -1].eq(1).all()


def test_binarize_same_seed_same_result():
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    first = binarize(images, generator=torch.Generator().manual_seed(7))
    again = binarize(images, generator=torch.Generator().manual_seed(7))
    other = binarize(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_binarize_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(torch.tensor([0.5, 1.5]))


def test_image_dataset_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64), ["a"], "toy", "train")
