"""The report of an image classifier, the evaluation classifier behind FID-MNIST included: its accuracy and
cross-entropy on a split, the numbers that say whether its features can be trusted to judge samples."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


@torch.no_grad()
def report_classifier(model, images: torch.Tensor, labels: torch.Tensor, *, split: str,
                      batch_size: int) -> dict[str, Any]:
    """Accuracy and mean cross-entropy (nats) of ``model`` (a :class:`~minisd.models.classifier.Classifier` in
    eval mode) on ``images`` ``(N, C, H, W)`` in [0, 1] with their ``labels`` ``(N,)``."""
    correct, cross_entropy = 0, 0.0
    for start in range(0, len(images), batch_size):
        logits = model.logits(images[start:start + batch_size].to(model.device))
        wanted = labels[start:start + batch_size].to(model.device)
        cross_entropy += F.cross_entropy(logits, wanted, reduction="sum").item()
        correct += (logits.argmax(dim=1) == wanted).sum().item()
    results = {"accuracy": correct / len(images), "cross_entropy_nats": cross_entropy / len(images),
               "num_images": len(images)}
    print(f"{split} accuracy: {100 * results['accuracy']:.2f}% of {len(images)} images "
          f"(cross-entropy {results['cross_entropy_nats']:.4f} nats)")
    return results
