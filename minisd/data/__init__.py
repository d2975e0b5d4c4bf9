"""Datasets: MNIST, Fashion-MNIST (verified IDX files, downloaded if missing) and scikit-learn's 8x8 digits.

    ds = load_dataset("mnist", "train")   # ds.images (60000, 1, 28, 28) float32 in [0, 1], ds.labels (60000,) int64
    x = binarize(ds.images[:64])          # Bernoulli samples of the pixel intensities

Files are looked up under resolve_data_dir(): an explicit data_dir, else $MINISD_DATA, else the cache folder.
"""

from minisd.data.dataset import DATASETS, SPLITS, ImageDataset, binarize, binarized_once, load_dataset
from minisd.data.idx import resolve_data_dir

__all__ = ["DATASETS", "SPLITS", "ImageDataset", "binarize", "binarized_once", "load_dataset", "resolve_data_dir"]

# Captioned datasets (text-to-image): MNIST / Fashion-MNIST with measured attributes, shapes, a folder.
from minisd.data.captioned import CaptionedDataset  # noqa: E402
from minisd.data.image_folder import load_image_folder  # noqa: E402
from minisd.data.registry import CAPTIONED_DATASETS, load_captioned  # noqa: E402
from minisd.data.shapes import make_shapes  # noqa: E402

__all__ += ["CAPTIONED_DATASETS", "CaptionedDataset", "load_captioned", "load_image_folder", "make_shapes"]

# 2-D toys for score models: swiss roll, moons, 8 Gaussians, checkerboard, and a mixture with exact score.
from minisd.data.toys import TOY_MIXTURE, TOYS, GaussianMixture, PointDataset, load_toy, sample_toy  # noqa: E402

__all__ += ["TOY_MIXTURE", "TOYS", "GaussianMixture", "PointDataset", "load_toy", "sample_toy"]
