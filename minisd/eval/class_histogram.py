"""Which classes does a generator draw, and how often? Mode collapse seen through a classifier.

A model that draws only a few kinds of digit can still make each one sharp. Its samples'
predicted classes show this directly: compare their frequencies with the uniform distribution
and with the labels of the real test set (MNIST's test digits are not exactly uniform).
"""

from __future__ import annotations

import torch

from minisd.models.classifier import Classifier


@torch.no_grad()
def class_distribution(classifier: Classifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The fraction of ``images`` ``(N, C, H, W)`` in [0, 1] predicted as each class: ``(num_classes,)``, sums to 1."""
    classifier.eval()
    counts = torch.zeros(classifier.num_classes, dtype=torch.int64)
    for start in range(0, len(images), batch_size):
        predictions = classifier.predict(images[start:start + batch_size].to(classifier.device)).cpu()
        counts += torch.bincount(predictions, minlength=classifier.num_classes)
    return counts.double() / counts.sum()


def label_distribution(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The fraction of ``labels`` ``(N,)`` in each class: ``(num_classes,)``, sums to 1."""
    counts = torch.bincount(labels, minlength=num_classes)
    return counts.double() / counts.sum()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total-variation distance 1/2 sum_k |p_k - q_k| between two distributions ``(K,)``.

    The largest difference in probability the two give any set of classes: 0 for equal
    distributions, 1 for disjoint ones; (K - 1) / K for a single class against uniform.
    """
    return 0.5 * (p.double() - q.double()).abs().sum().item()


def class_balance(classifier: Classifier, images: torch.Tensor, test_labels: torch.Tensor | None = None,
                  batch_size: int = 500) -> dict[str, float]:
    """Summary of :func:`class_distribution` for logging: its total-variation distance from uniform
    (``tv_from_uniform``) and, given the real test labels ``(M,)``, from their distribution (``tv_from_test``).
    """
    predicted = class_distribution(classifier, images, batch_size)
    uniform = torch.full_like(predicted, 1 / classifier.num_classes)
    summary = {"tv_from_uniform": total_variation(predicted, uniform)}
    if test_labels is not None:
        summary["tv_from_test"] = total_variation(predicted, label_distribution(test_labels, classifier.num_classes))
    return summary
