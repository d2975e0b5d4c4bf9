"""Conditions as batches: what guidance needs to put two conditions through one network call.

A condition is what a denoiser is conditioned on (see :class:`minisd.nn.unet.UNet`): None, a label tensor
``(B,)``, or a dict with any of ``"label": (B,)`` int64, ``"context": (B, L, D)`` and ``"context_mask": (B, L)``
bool. Every tensor in it is batched along its first dimension, like the images, so two conditions can be
stacked into one batch and a batch of one repeated, whatever keys they carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from minisd.errors import ConfigError

Condition = torch.Tensor | Mapping[str, torch.Tensor | None] | None


def _describe(cond: Any) -> str:
    if cond is None:
        return "None"
    if isinstance(cond, torch.Tensor):
        return "a label tensor"
    return f"a dict with keys {sorted(cond)}"


def condition_batch_size(cond: Condition) -> int | None:
    """The batch size B of ``cond``; None for no condition at all (it fits any batch)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return len(cond)
    sizes = {len(value) for value in cond.values() if value is not None}
    if len(sizes) > 1:
        raise ConfigError(f"the tensors of one condition must share their batch size, got sizes {sorted(sizes)}")
    return sizes.pop() if sizes else None


def repeat_condition(cond: Condition, n: int) -> Condition:
    """``cond`` stacked ``n`` times along the batch: a batch of one becomes a batch of ``n`` (a negative prompt
    for every image), a batch of B one of ``n * B``, in the order [cond; cond; ...]."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond.repeat(n, *([1] * (cond.dim() - 1)))
    return {key: None if value is None else repeat_condition(value, n) for key, value in cond.items()}


def _pad_context(cond: Mapping[str, Any], length: int) -> dict[str, Any]:
    """Pad a text condition to ``length`` tokens: zero context vectors, masked out (False) so that
    cross-attention never looks at them, which leaves what the network computes unchanged."""
    missing = length - cond["context"].shape[1]
    return {**cond, "context": F.pad(cond["context"], (0, 0, 0, missing)),
            "context_mask": F.pad(cond["context_mask"], (0, missing), value=False)}


def concat_conditions(first: Condition, second: Condition) -> Condition:
    """Batch-concatenate two conditions of the same form, [first; second]: None + None is None, tensor + tensor
    a tensor, and dicts with the same keys a dict. Text contexts of different lengths L are padded to the longer
    one when both have a ``context_mask`` (padding is masked out); without a mask they must have one length."""
    if first is None and second is None:
        return None
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return torch.cat([first, second])
    if not (isinstance(first, Mapping) and isinstance(second, Mapping) and set(first) == set(second)):
        raise ConfigError(f"cannot batch {_describe(first)} with {_describe(second)}: give the unconditional "
                          f"branch a condition of the same form (e.g. null labels for labels)")
    lengths = [cond["context"].shape[1] for cond in (first, second) if cond.get("context") is not None]
    if len(set(lengths)) > 1:
        if first.get("context_mask") is None or second.get("context_mask") is None:
            raise ConfigError(f"text contexts of {lengths[0]} and {lengths[1]} tokens need a context_mask each "
                              f"to be batched together; pad both to one length or pass their masks")
        first, second = (_pad_context(cond, max(lengths)) for cond in (first, second))
    missing = sorted(key for key in first if (first[key] is None) != (second[key] is None))
    if missing:
        raise ConfigError(f"cannot batch two conditions of which only one gives {missing}")
    return {key: None if first[key] is None else torch.cat([first[key], second[key]]) for key in first}
