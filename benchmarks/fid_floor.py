"""The floor of FID-MNIST / FID-Fashion: real test images against as many real training images.

No model can be expected to score below this at the same sample size: it is the distance between
two samples of the *same* distribution, which is not zero because N is finite.

    python benchmarks/fid_floor.py classifier_mnist mnist 1000 10000   # the shipped classifier, or a run
"""

import sys

import torch

import minisd
from minisd.data import load_dataset
from minisd.eval import fid


def main(classifier_run: str, dataset: str, sizes: list[int]) -> None:
    classifier = minisd.load(classifier_run)
    test_images = load_dataset(dataset, "test").images
    train_images = load_dataset(dataset, "train").images
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))
    for size in sizes:
        floor = fid(classifier, test_images[:size], train_images[order[:size]])
        print(f"| {dataset} | {size} test images vs {size} train images | {floor:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3:]] or [1000, 10000])
