"""Reading a user's images: the init image of image-to-image and the mask of inpainting.

Every way a file can be wrong (missing, a folder, not an image, truncated, the wrong size, a mask with
nothing to repaint) is one :class:`~minisd.errors.DataError` naming the file, raised before any model
work. The checks on the pixels are split from the opening of the file (:func:`image_to_tensor`,
:func:`mask_to_tensor`) so that an image that never was a file (an upload to a web page) gets the same
conversions and the same messages.

Conventions:

- An image becomes ``(1, C, H, W)`` float32 in [0, 1], the range of the rest of minisd (``Batch.image``).
  Its mode is converted to what the model makes: grey (``L``) for one channel, ``RGB`` for three, so a
  colour image given to an MNIST model is read as grey. 16-bit greyscale is scaled, not clipped.
- Transparency is composited on black, the background of the datasets minisd trains on (MNIST digits
  are white on black): a transparent pixel reads as "nothing there".
- A mask is white where the image is to be repainted and black where it is kept (the diffusers
  convention). It is read as grey and thresholded at 0.5, so anti-aliased edges become hard ones;
  transparent pixels read as black, i.e. kept.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from minisd.errors import ConfigError, DataError

#: Pillow's modes for 16-bit greyscale, which ``convert("L")`` would clip at 255 instead of scaling: a 16-bit
#: PNG opens as ``I;16`` (as ``I``, 32-bit integers, in older Pillow versions).
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_SIXTEEN_BIT_MAX = 65535
_EIGHT_BIT_MAX = 255
_MASK_THRESHOLD = 0.5
_HASH_CHUNK_BYTES = 1 << 20


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open and decode the image file at ``path`` (any format Pillow reads), fully loaded into memory.

    Raises :class:`DataError` naming the file (``what`` says which file it is to the user: "init image",
    "mask") when it is missing, a folder, unreadable, not an image, or damaged/truncated.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"the {what} {path} does not exist; check the path")
    if path.is_dir():
        raise DataError(f"the {what} {path} is a folder; give an image file")
    try:
        with Image.open(path) as image:
            # Decoding is lazy in Pillow: load now, so that a truncated file fails here with its name
            # rather than later inside the model.
            image.load()
    except PermissionError:
        raise DataError(f"the {what} {path} cannot be read: permission denied") from None
    except UnidentifiedImageError:
        raise DataError(f"the {what} {path} is not an image Pillow can read (PNG, JPEG, WebP, BMP, ...)") from None
    except Image.DecompressionBombError:
        raise DataError(f"the {what} {path} is too large to be an image for minisd") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow reports a damaged file as any of these, depending on the format and where it breaks.
        raise DataError(f"the {what} {path} is damaged or truncated ({error}); save it again") from None
    return image


def _has_transparency(image: Image.Image) -> bool:
    """An alpha band (``A``, or ``a`` when premultiplied) or a transparent colour key (palette or tRNS)."""
    return bool({"A", "a"} & set(image.getbands())) or "transparency" in image.info


def _pixels(image: Image.Image, channels: int, label: str) -> np.ndarray:
    """``image`` as float32 ``(H, W, channels)`` in [0, 1]: grey or RGB, transparency composited on black."""
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float32)[..., None] / _SIXTEEN_BIT_MAX, 0, 1)
        return np.repeat(grey, channels, axis=2)
    try:
        if _has_transparency(image):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        image = image.convert("L" if channels == 1 else "RGB")
    except ValueError:  # Pillow has no conversion from this mode (LAB, HSV, 32-bit or float pixels, ...)
        raise DataError(f"{label} has pixel mode {image.mode}, which minisd cannot convert; "
                        f"save it as an 8-bit RGB or greyscale PNG") from None
    array = np.asarray(image, dtype=np.float32) / _EIGHT_BIT_MAX
    return array[..., None] if array.ndim == 2 else array


def image_to_tensor(image: Image.Image, *, size: tuple[int, int], channels: int,
                    label: str = "the init image") -> torch.Tensor:
    """A Pillow image as ``(1, channels, H, W)`` float32 in [0, 1], ``size = (H, W)``.

    ``channels`` is 1 (converted to grey) or 3 (to RGB). The image must already be ``size``: resizing
    would change what the user gave without telling them, so another size is a :class:`DataError`
    (``label`` names the image in the message, e.g. "the init image cat.png"). The EXIF orientation is
    applied first, so the image is read the way viewers show it.
    """
    if channels not in (1, 3):
        raise ConfigError(f"images have 1 (grey) or 3 (RGB) channels, not {channels}")
    height, width = size
    image = ImageOps.exif_transpose(image)
    if image.size != (width, height):
        raise DataError(f"{label} is {image.width}x{image.height}; this model makes {width}x{height} images: "
                        f"resize it to {width}x{height} (width x height)")
    pixels = _pixels(image, channels, label)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).unsqueeze(0)


def mask_to_tensor(image: Image.Image, *, size: tuple[int, int], label: str = "the mask") -> torch.Tensor:
    """A Pillow image as an inpainting mask ``(1, 1, H, W)`` float32 in {0, 1}: 1 (white, grey >= 0.5) marks
    the pixels to repaint, 0 (black) the pixels to keep. A mask with nothing to repaint is a
    :class:`DataError` (it would silently return the init image)."""
    grey = image_to_tensor(image, size=size, channels=1, label=label)
    mask = (grey >= _MASK_THRESHOLD).to(torch.float32)
    if not mask.any():
        raise DataError(f"{label} has no white pixels: nothing to repaint "
                        f"(white marks the region to repaint, black the region to keep)")
    return mask


def load_image(path: str | os.PathLike, *, size: tuple[int, int], channels: int,
               what: str = "init image") -> torch.Tensor:
    """Read the image file at ``path`` as ``(1, channels, H, W)`` float32 in [0, 1], ``size = (H, W)``.

    See :func:`open_image` and :func:`image_to_tensor` for what is refused; every refusal is one
    :class:`DataError` naming the file as "the {what} {path}".
    """
    return image_to_tensor(open_image(path, what), size=size, channels=channels, label=f"the {what} {path}")


def load_mask(path: str | os.PathLike, *, size: tuple[int, int], what: str = "mask") -> torch.Tensor:
    """Read the mask file at ``path`` as ``(1, 1, H, W)`` float32 in {0, 1}, 1 = repaint (see
    :func:`mask_to_tensor`), ``size = (H, W)``."""
    return mask_to_tensor(open_image(path, what), size=size, label=f"the {what} {path}")


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of the file at ``path`` as 64 hex digits, read in chunks (any size)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    return digest.hexdigest()
