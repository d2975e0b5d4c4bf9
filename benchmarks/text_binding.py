"""Does a text encoder bind each word to its object? Colour-swapped captions, measured three ways.

Each two-object caption of the shapes test split (held-out templates) whose objects differ in colour gets a
twin with its two colour words swapped: "a small red circle to the left of a blue square" and "a small blue
circle to the left of a red square" hold the same words and describe different pictures. For the text encoder
of each run given (a text-to-image run, or a model folder):

- twin cosine: the mean cosine between the pooled text embeddings of a caption and its twin (near 1: the
  encoder hardly tells them apart);
- CLIP preference: how often the CLIP image tower scores the image above its own caption's twin (chance 50%);
- layout preference: a :class:`minisd.text.LayoutDecoder` reads the frozen per-token vectors through
  cross-attention, as the UNet does, and draws each caption's 8x8 layout; how often the layout of the image's
  own caption is closer to the image than its twin's. The decoder is trained here, ``--probe-steps`` steps on
  the frozen tokens of the training captions, so that every encoder is measured the same way whether or not it
  was trained with a layout loss. At 50% the tokens do not say which colour goes where, and no UNet reading
  them can draw it.

    python benchmarks/text_binding.py runs/t2i_shapes runs/t2i_shapes2 [--probe-steps 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import minisd
from minisd.data import load_captioned
from minisd.data.captions import phrase_pattern
from minisd.data.shapes import COLOUR_WORDS
from minisd.runtime import configure_threads
from minisd.text import LayoutDecoder

_COLOUR = phrase_pattern([word for words in COLOUR_WORDS for word in words])


def colour_swapped(caption: str) -> str | None:
    """``caption`` with its two colour words swapped, or None unless it names exactly two different colours."""
    colours = _COLOUR.findall(caption)
    if len(colours) != 2 or colours[0] == colours[1]:
        return None
    swapped = iter(reversed(colours))
    return _COLOUR.sub(lambda match: next(swapped), caption)


def train_probe(clip, train_set, steps: int, seed: int = 0) -> LayoutDecoder:
    """A layout decoder trained on ``clip``'s frozen per-token vectors of the training captions."""
    torch.manual_seed(seed)
    probe = LayoutDecoder(clip.hparams["text_dim"], 8, clip.hparams["image_shape"][0], num_heads=clip.hparams["text_heads"])
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / steps))).item()
        indices = torch.randint(len(train_set), (128,))
        with torch.no_grad():
            tokens, mask = clip.encode_text(train_set.captions(indices))
        loss = probe.loss(tokens, mask, train_set.images[indices])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe.eval()


@torch.no_grad()
def binding_report(clip, probe: LayoutDecoder, images: torch.Tensor, captions: list[str],
                   twins: list[str]) -> dict[str, float]:
    (own_tokens, own_mask), (twin_tokens, twin_mask) = clip.encode_text(captions), clip.encode_text(twins)
    pooled_own, pooled_twin = (F.normalize(clip.text_encoder.pooled(tokens, mask), dim=-1)
                               for tokens, mask in ((own_tokens, own_mask), (twin_tokens, twin_mask)))
    image = clip.image_embedding(images)
    own, twin = clip.text_embedding(captions), clip.text_embedding(twins)
    target = F.adaptive_avg_pool2d(images, probe.side)
    own_error, twin_error = ((probe(tokens, mask) - target).pow(2).flatten(1).mean(1)
                             for tokens, mask in ((own_tokens, own_mask), (twin_tokens, twin_mask)))
    return {"twin_cosine": (pooled_own * pooled_twin).sum(1).mean().item(),
            "clip_preference": ((image * own).sum(1) > (image * twin).sum(1)).float().mean().item(),
            "layout_preference": (own_error < twin_error).float().mean().item(),
            "layout_mse": own_error.mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="text-to-image runs or model folders trained on shapes")
    parser.add_argument("--probe-steps", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    configure_threads(args.threads)
    train_set = load_captioned("shapes", "train")
    test_set = load_captioned("shapes", "test", num_images=args.test_images)
    torch.manual_seed(0)
    captions = test_set.captions(torch.arange(len(test_set)), templates="heldout")
    kept = [i for i, caption in enumerate(captions) if colour_swapped(caption)]
    captions = [captions[i] for i in kept]
    twins = [colour_swapped(caption) for caption in captions]
    print(f"{len(captions)} two-object test captions with two colours, held-out templates, e.g.\n"
          f"  {captions[0]!r}\n  {twins[0]!r}")
    print("| run | twin cosine | CLIP preference | layout preference (probe) | probe layout mse |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        clip = minisd.load(run).model.text_encoder.eval()
        started = time.perf_counter()
        probe = train_probe(clip, train_set, args.probe_steps)
        report = binding_report(clip, probe, test_set.images[kept], captions, twins)
        print(f"| {run} | {report['twin_cosine']:.4f} | {report['clip_preference']:.1%} | "
              f"{report['layout_preference']:.1%} | {report['layout_mse']:.4f} |  (probe {time.perf_counter() - started:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
