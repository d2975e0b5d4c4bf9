"""Image datasets with captions: ``CaptionedDataset``, what MNIST, Fashion-MNIST, shapes and a folder of images
all become (:func:`minisd.data.load_captioned`, in ``registry.py``, picks the loader by name).

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from minisd.data.captions import CaptionGrammar
from minisd.data.dataset import ImageDataset


class CaptionedDataset(ImageDataset):
    """An ImageDataset whose images also have attributes and captions.

    Attributes (beyond ImageDataset's ``images`` (N, C, H, W) in [0, 1] and ``labels`` (N,) int64):
        attributes: per-image tensors, first dimension N (e.g. "thickness" (N,) int64 bin index, or a
                    shapes image's "colour" (N, 2)); what the captions say, and what evaluations score.
        grammar:    renders captions from labels and attributes (minisd.data.captions.CaptionGrammar).

    Captions are drawn afresh each time, with torch's global RNG (template, synonyms, which attributes
    are said), so one image is described in many ways and a seeded step always gets the same words.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str],
        name: str,
        split: str,
        *,
        attributes: Mapping[str, torch.Tensor],
        grammar: CaptionGrammar,
    ) -> None:
        super().__init__(images, labels, classes, name, split)
        for key, value in attributes.items():
            if len(value) != len(labels):
                raise ValueError(f"attribute {key!r} has {len(value)} rows for {len(labels)} images")
        self.attributes = dict(attributes)
        self.grammar = grammar

    def captions(self, indices: torch.Tensor, *, templates: str = "train") -> list[str]:
        """One caption per index of ``indices`` (B,), from the "train" or the "heldout" templates."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        attributes = {key: value[indices] for key, value in self.attributes.items()}
        return self.grammar.render(self.labels[indices], attributes, templates)

    def batch(self, indices: torch.Tensor) -> dict[str, Any]:
        """``{"image": (B, C, H, W), "label": (B,), "caption": list of B str, "attributes": {name: (B, ...)}}``
        for ``indices`` (B,). The attributes are what the captions say, for models trained on them."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        attributes = {key: value[indices] for key, value in self.attributes.items()}
        return {**super().batch(indices), "caption": self.captions(indices), "attributes": attributes}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**super().__getitem__(index), "caption": self.captions(torch.tensor([index]))[0]}

    def caption_vocabulary(self) -> list[str]:
        """Example captions holding every word any template can produce (to train a tokenizer on)."""
        return self.grammar.vocabulary()

    def subset(self, indices: torch.Tensor) -> CaptionedDataset:
        """The images ``indices`` (B,) with their labels and attributes, as a new dataset (copies)."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return CaptionedDataset(
            self.images[indices], self.labels[indices], self.classes, self.name, self.split,
            attributes={key: value[indices] for key, value in self.attributes.items()}, grammar=self.grammar,
        )

    def __repr__(self) -> str:
        return (f"CaptionedDataset(name={self.name!r}, split={self.split!r}, images={tuple(self.images.shape)}, "
                f"attributes={sorted(self.attributes)})")
