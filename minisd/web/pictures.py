"""Pictures for the page: image grids made large enough to see (28 pixels is a thumbnail), and the
cross-attention maps of a prompt's tokens laid over the image they shaped."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from minisd.images import make_grid, to_pil

DISPLAY_SIDE = 256  # pixels on the longer side of a picture the page shows


def tensor_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 1) -> Image.Image:
    """``(N, C, H, W)`` in [0, 1] as one PIL image (a grid when N > 1)."""
    images = images.detach().float().cpu().clamp(0, 1)
    picture = images[0] if len(images) == 1 else make_grid(images, nrow=nrow, padding=padding)
    return to_pil(picture[None])[0]


def enlarge(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """``image`` scaled up by a whole factor, pixels kept square and sharp, to about ``side`` pixels."""
    factor = max(1, side // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def attention_overlays(image: torch.Tensor, maps: torch.Tensor, tokens: list[str]) -> list[tuple[Image.Image, str]]:
    """One picture per token: the image ``(C, H, W)`` in grey, under its attention map ``(L, h, w)`` in the
    magma colours, all tokens on one scale (bright: the pixels that read this token most)."""
    maps = maps[:len(tokens)].float()
    if not len(maps):
        return []
    channels, height, width = image.shape
    maps = F.interpolate(maps[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    maps = maps / maps.max().clamp_min(1e-12)
    grey = image.float().cpu().mean(0, keepdim=True).expand(3, -1, -1)
    colours = torch.from_numpy(colormaps["magma"](maps.numpy())[..., :3]).permute(0, 3, 1, 2).float()
    blended = 0.35 * grey + 0.65 * colours
    return [(enlarge(to_pil(picture[None])[0], 160), token) for picture, token in zip(blended, tokens)]
