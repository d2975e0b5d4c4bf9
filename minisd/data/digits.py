"""scikit-learn's 8x8 handwritten digits: a small dataset that needs no download.

``sklearn.datasets.load_digits`` bundles 1797 images of 8x8 pixels. Each pixel counts the set
cells in a 4x4 block of a 32x32 bitmap, so its value is a whole number from 0 to 16.

The data has no official train/test split, so minisd fixes one: shuffle the 1797 indices with
``numpy.random.default_rng(0).permutation(1797)``; the first 1500 are "train", the last 297 "test".
The split is the same on every machine and every run.
"""

from __future__ import annotations

import functools

import numpy as np

DIGITS_PIXEL_MAX = 16
"""Pixel values run 0..16, so dividing by 16 maps them onto [0, 1]."""

DIGITS_TEST_SIZE = 297  # the rest, 1500 images, are "train"
DIGITS_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported here, not at the top: importing sklearn.datasets takes about a second, and only
    # this dataset needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.images.astype(np.uint8)  # stored as float64 but all whole numbers 0..16
    labels = bunch.target.astype(np.uint8)
    for array in (pixels, labels):
        array.setflags(write=False)  # memoised: guard against changes by accident
    return pixels, labels


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of the digits: (pixels uint8 (N, 8, 8) in 0..16, labels uint8 (N,)).

    N is 1500 for "train" and 297 for "test"; see the module docstring for how the split is made.
    """
    pixels, labels = _all_digits()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(pixels))
    chosen = {"train": order[:-DIGITS_TEST_SIZE], "test": order[-DIGITS_TEST_SIZE:]}[split]
    return pixels[chosen], labels[chosen]
