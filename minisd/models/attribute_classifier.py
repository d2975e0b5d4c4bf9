"""The measuring instrument of the ``shapes`` evaluation: a CNN that reads every attribute of every object.

A text-to-image model asked for "a small red circle to the left of a large blue square" is right when
its picture holds two objects, side by side, the left one a small red circle and the right one a large
blue square. This classifier answers each of those questions with its own softmax head, trained on
the true attributes that :func:`minisd.data.shapes.make_shapes` keeps.

*Canonical slots.* An image does not know which object its caption named first: "a circle to the left
of a square" and "a square to the right of a circle" are the same picture. So the heads name objects
by place, not by caption order: slot 0 is the left object of a side-by-side pair, or the top one of a
stacked pair (or the only object), slot 1 the other one. :func:`canonical_targets` turns make_shapes'
attributes (or a prompt's, see :mod:`minisd.eval.adherence`) into these slots.

Heads (the last class of each but ``num_objects`` is "none", for what an image lacks):
``num_objects`` (one, two); ``shape_s``, ``colour_s``, ``size_s`` for slots s = 0, 1 (slot 1 is "none"
in a one-object image); ``position``, the 3x3 cell of a lone object ("none" for a pair, whose cells the
layout fixes); ``layout``, how slot 0 stands to slot 1 (LAYOUTS; "none" for one object).

The network is the evaluation classifier's (:mod:`minisd.models.classifier`): stages of two 3x3
convolutions and a 2x2 max-pool, then a fully connected layer whose activations are the features that
the shapes FID compares, then one linear layer per head. Flattening (not pooling) the last stage keeps
where things are, which the position and layout heads need.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minisd.data.shapes import COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES
from minisd.models.base import Model
from minisd.nn.conv import conv_stage
from minisd.nn.dropout import Dropout

IGNORE = -100  # a target a prompt does not set (it does not say the size): never scored (F.cross_entropy's too)
OBJECT_ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}
LAYOUTS = ("side by side", "stacked")  # slot 0 is left of slot 1; slot 0 is above slot 1
NUM_SLOTS = 2
# Head -> the names of its classes; "none" (the last class) where an image may lack the thing.
HEAD_CLASSES: dict[str, tuple[str, ...]] = {
    "num_objects": ("one", "two"),
    **{f"{attribute}_{slot}": (*names, "none") for slot in range(NUM_SLOTS)
       for attribute, names in OBJECT_ATTRIBUTES.items()},
    "position": (*POSITIONS, "none"),
    "layout": (*LAYOUTS, "none"),
}
# make_shapes' relations that name the right or the bottom object first: their objects swap slots.
_SWAPPED_RELATIONS = (RELATIONS.index("right of"), RELATIONS.index("below"))


def _none_class(head: str) -> int:
    return len(HEAD_CLASSES[head]) - 1


def canonical_targets(attributes: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each head's target class ``(N,)`` int64 from attributes in make_shapes' layout.

    ``attributes``: ``num_objects`` (N,); ``shape``, ``colour``, ``size``, ``position`` (N, 2) in caption
    order, -1 where there is no second object; ``relation`` (N,), -1 for one object. A value of IGNORE
    (not said by a prompt) stays IGNORE in the target it lands in. Object 0 of a pair whose relation is
    "right of" or "below" goes to slot 1 (see the module docstring).
    """
    num_objects, relation = attributes["num_objects"], attributes["relation"]
    pair = num_objects == 2
    swapped = pair & torch.isin(relation, torch.tensor(_SWAPPED_RELATIONS, device=relation.device))
    source = torch.stack([swapped, ~swapped], 1).long()  # (N, slots): which caption object sits in each slot
    targets = {"num_objects": num_objects - 1}
    for attribute in OBJECT_ATTRIBUTES:
        values = attributes[attribute].gather(1, source)
        for slot in range(NUM_SLOTS):
            head = f"{attribute}_{slot}"
            targets[head] = torch.where(values[:, slot] == -1, _none_class(head), values[:, slot])
    targets["position"] = torch.where(pair, _none_class("position"), attributes["position"][:, 0])
    # RELATIONS come in pairs of one layout (left of, right of; above, below): relation // 2 is the layout.
    layout = torch.where(relation == IGNORE, IGNORE, torch.div(relation, 2, rounding_mode="floor"))
    targets["layout"] = torch.where(pair, layout, _none_class("layout"))
    return targets


class AttributeClassifier(Model):
    """CNN ``(B, 3, H, W)`` in [0, 1] -> one set of logits per head of HEAD_CLASSES, trained on the true attributes.

    ``loss(batch)`` reads ``batch["attributes"]`` (make_shapes' tensors, as :meth:`CaptionedDataset.batch`
    gives them) and sums the heads' cross-entropies; it logs each head's accuracy and ``accuracy_all``,
    the fraction of images with every head right. No batch-norm, for the reason the Classifier gives.
    """

    model_type = "attribute_classifier"

    def __init__(self, image_shape: tuple[int, int, int] = (3, 32, 32), channels: list[int] = (32, 64, 64),
                 hidden: int = 256, dropout: float = 0.0):
        super().__init__(image_shape=list(image_shape), channels=list(channels), hidden=hidden, dropout=dropout)
        in_channels, side, _ = image_shape
        if side % 2 ** len(channels):
            raise ValueError(f"image side {side} is not divisible by 2**{len(channels)}; use fewer stages")
        self.image_shape = tuple(image_shape)
        widths = [in_channels, *channels]
        bottom_side = side // 2 ** len(channels)
        self.convolutions = nn.Sequential(*(conv_stage(n_in, n_out) for n_in, n_out in zip(widths, widths[1:])),
                                          nn.Flatten())
        self.penultimate = nn.Sequential(nn.Linear(channels[-1] * bottom_side**2, hidden), nn.ReLU())
        self.dropout = Dropout(dropout)  # after the features, so features() is the same in train and eval mode
        self.heads = nn.ModuleDict({head: nn.Linear(hidden, len(names)) for head, names in HEAD_CLASSES.items()})

    @property
    def num_features(self) -> int:
        """F, the length of the vectors that :meth:`features` returns."""
        return self.hparams["hidden"]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> penultimate activations ``(B, F)``: what the shapes FID compares."""
        return self.penultimate(self.convolutions(2 * images - 1))

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` in [0, 1] -> ``{head: (B, classes of the head)}`` unnormalised log-probabilities."""
        hidden = self.dropout(self.features(images))
        return {head: layer(hidden) for head, layer in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` in [0, 1] -> ``{head: (B,) int64}``, the most probable class of each head.

        Class indices are those of :func:`canonical_targets`. Call ``.eval()`` first (:func:`minisd.load`
        returns models in eval mode).
        """
        return {head: logits.argmax(dim=1) for head, logits in self.logits(images).items()}

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        # The training loop moves only the batch's top-level tensors: the nested attributes come here on the CPU.
        attributes = {key: value.to(self.device) for key, value in batch["attributes"].items()}
        targets = canonical_targets(attributes)
        logits = self.logits(batch["image"])
        loss = sum(F.cross_entropy(logits[head], targets[head]) for head in HEAD_CLASSES)
        correct = {head: logits[head].argmax(dim=1) == targets[head] for head in HEAD_CLASSES}
        logs = {"loss": loss.item(),
                **{f"accuracy_{head}": hits.float().mean().item() for head, hits in correct.items()},
                "accuracy_all": torch.stack(list(correct.values())).all(0).float().mean().item()}
        return loss, logs
