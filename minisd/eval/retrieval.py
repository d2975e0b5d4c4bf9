"""Caption-to-image retrieval: does a text encoder's embedding of a caption point at its own image?

The pairs are cut into groups of ``pool`` (100 by convention); within a group each caption ranks
the group's images by cosine similarity, and a hit at k means its own image is among the first k.
Chance is k / pool.

Templated captions repeat: among 100 MNIST images about ten are "a handwritten 7", and no caption
can single out one of them, so exact top-1 is at most about 1/10 even for a perfect model. The
**class-level** score counts a hit when any image whose caption has the same content is among the
first k; its chance level, 1 - C(pool - m, k) / C(pool, k) for a caption with m same-content images,
is reported beside it. Ties are counted against the model, so a collapsed encoder (all embeddings
equal) scores 0, not 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from minisd.errors import ConfigError


def _pool_hits(similarity: torch.Tensor, same_content: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Hit rates within one pool. ``similarity: (P, P)`` caption i against image j, caption i's own image
    is image i; ``same_content: (P, P)`` bool, True where captions i and j say the same."""
    pool = similarity.shape[0]
    own = similarity.diagonal()
    others = ~torch.eye(pool, dtype=torch.bool, device=similarity.device)
    # Rank = how many other images score at least as high as the target(s): ties go against the model.
    exact_rank = ((similarity >= own[:, None]) & others).sum(dim=1)
    best_same = similarity.masked_fill(~same_content, -math.inf).amax(dim=1)
    class_rank = ((similarity >= best_same[:, None]) & ~same_content).sum(dim=1)
    num_same = same_content.sum(dim=1).tolist()
    results = {}
    for k in ks:
        results[f"top{k}"] = (exact_rank < k).double().mean().item()
        results[f"top{k}_chance"] = k / pool
        results[f"top{k}_class"] = (class_rank < k).double().mean().item()
        # P(k images drawn at random include one of the m same-content ones), averaged over captions.
        results[f"top{k}_class_chance"] = sum(1 - math.comb(pool - m, k) / math.comb(pool, k)
                                              for m in num_same) / pool
    return results


@torch.no_grad()
def retrieval_accuracy(caption_embeddings: torch.Tensor, image_embeddings: torch.Tensor, content: torch.Tensor,
                       *, k: Sequence[int] = (1, 5), pool: int = 100) -> dict[str, float]:
    """Top-k caption-to-image retrieval, exact and class-level, averaged over groups of ``pool`` pairs.

    ``caption_embeddings``, ``image_embeddings``: ``(N, D)``, row i of each from the same pair, compared
    by cosine similarity; ``content: (N,)`` int, equal for captions that say the same thing. The last
    ``N % pool`` pairs are left out. Returns ``top{k}``, ``top{k}_class`` and their ``..._chance``
    levels for each k, plus ``groups``, the number of pools averaged.
    """
    num_pairs = len(caption_embeddings)
    if not k or min(k) < 1 or max(k) > pool:
        raise ConfigError(f"retrieval top-k needs 1 <= k <= pool = {pool}, got k = {tuple(k)}")
    if num_pairs < pool:
        raise ConfigError(f"retrieval among {pool} images needs at least {pool} image-caption pairs, got "
                          f"{num_pairs}; pass more pairs or a smaller pool")
    captions = torch.nn.functional.normalize(caption_embeddings.double(), dim=-1)
    images = torch.nn.functional.normalize(image_embeddings.double(), dim=-1)
    groups = num_pairs // pool
    totals: dict[str, float] = {}
    for group in range(groups):
        part = slice(group * pool, (group + 1) * pool)
        same_content = content[part, None] == content[None, part]
        for name, value in _pool_hits(captions[part] @ images[part].T, same_content, k).items():
            totals[name] = totals.get(name, 0.0) + value / groups
    return {**totals, "groups": groups}


@torch.no_grad()
def text_encoder_retrieval(text_encoder: Any, images: torch.Tensor, captions: list[str], *,
                           k: Sequence[int] = (1, 5), pool: int = 100) -> dict[str, float]:
    """Caption-to-image retrieval of a CLIP-style ``text_encoder`` (:class:`minisd.models.ContrastiveTextImage`)
    among groups of ``pool`` images.

    ``images: (N, C, H, W)`` in [0, 1], ``captions``: N strings, pair i is ``(images[i], captions[i])``.
    Returns ``top1``, ``top5`` (exact pair), ``top1_class``, ``top5_class`` (any image whose caption
    has the same tokens) and the chance level of each, averaged over the ``N // pool`` groups.
    """
    if len(images) != len(captions):
        raise ConfigError(f"retrieval needs one caption per image, got {len(images)} images and "
                          f"{len(captions)} captions")
    caption_parts, image_parts, id_parts = [], [], []
    for start in range(0, len(images), pool):
        group = list(captions[start:start + pool])
        caption_parts.append(text_encoder.text_embedding(group))
        image_parts.append(text_encoder.image_embedding(images[start:start + pool].to(text_encoder.device)))
        id_parts.append(text_encoder.tokenizer(group)[0])
    # Captions with the same tokens say the same thing: number them by their distinct id rows.
    content = torch.unique(torch.cat(id_parts), dim=0, return_inverse=True)[1]
    return retrieval_accuracy(torch.cat(caption_parts), torch.cat(image_parts), content, k=k, pool=pool)
