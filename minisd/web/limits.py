"""What the page accepts: every value from the browser is checked here, on the server, before any work.

The page's own widgets (slider ranges, text box lengths) only help the user; a request can come from any HTTP
client, so nothing the browser sends is trusted. A value out of bounds gets a :class:`RequestError` that says
what was wrong and what is allowed, and the server goes on serving.

Uploads are checked for size before they are decoded, for kind by their content (not their name), and for
pixel count before their pixels are read (a small PNG can claim a huge size: a "decompression bomb").
"""

from __future__ import annotations

import io
import math
import numbers
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from minisd.errors import ConfigError

#: Image kinds an upload may be, by the format Pillow finds in its bytes.
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
MAX_SEED = 2**63 - 1
LATENT_EXTENT = 3.0  # the latent-plane tab spans [-3, 3]^2: 99.7% of the VAE prior's mass on each axis


class RequestError(ConfigError):
    """A request the page refuses; its message is shown to the user as it is."""


@dataclass(frozen=True)
class Limits:
    """The bounds of one server (``minisd serve`` flags of the same names)."""

    max_prompt_chars: int = 300
    max_steps: int = 100
    max_images: int = 8
    max_guidance: float = 15.0
    max_upload_bytes: int = 4 * 1024 * 1024
    max_upload_pixels: int = 2048 * 2048
    queue_size: int = 8

    def __post_init__(self) -> None:
        for name in ("max_prompt_chars", "max_steps", "max_images", "max_upload_bytes", "max_upload_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue_size < 0:
            raise ConfigError(f"the queue size must be 0 or more, got {self.queue_size}")

    def prompt(self, text: Any, what: str = "the prompt", *, required: bool = True) -> str:
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise RequestError(f"{what} must be text, got {type(text).__name__}")
        if len(text) > self.max_prompt_chars:
            raise RequestError(f"{what} is {len(text)} characters long; this server takes at most "
                               f"{self.max_prompt_chars}")
        if required and not text.strip():
            raise RequestError(f"{what} is empty: type what to draw, e.g. \"a handwritten digit 7\"")
        return text.strip()

    def steps(self, value: Any) -> int:
        return _whole_number(value, "the number of steps", 1, self.max_steps)

    def images(self, value: Any) -> int:
        return _whole_number(value, "the number of images", 1, self.max_images)

    def seed(self, value: Any) -> int:
        return _whole_number(value, "the seed", 0, MAX_SEED)

    def guidance(self, value: Any) -> float:
        return _number(value, "the guidance scale", 0.0, self.max_guidance)

    def strength(self, value: Any) -> float:
        """A number, in the range image-to-image takes (:func:`minisd.diffusion.samplers.check_strength`, which
        owns it: the page sets no bound of its own)."""
        from minisd.diffusion.samplers import check_strength

        if isinstance(value, str):  # any HTTP client may send text
            try:
                value = float(value.strip())
            except ValueError:
                pass
        try:
            return check_strength(value)
        except ConfigError as err:
            raise RequestError(str(err)) from None

    def latent(self, value: Any, what: str) -> float:
        """A coordinate of the VAE's latent plane, as far out as the page's map goes."""
        return _number(value, what, -LATENT_EXTENT, LATENT_EXTENT)

    def upload(self, data: bytes, what: str) -> Image.Image:
        """The image in an upload's bytes, fully decoded, or a :class:`RequestError` naming what is wrong."""
        if len(data) > self.max_upload_bytes:
            raise RequestError(f"{what} is {len(data) / 2**20:.1f} MiB; this server takes at most "
                               f"{self.max_upload_bytes / 2**20:.1f} MiB")
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:  # Pillow's own limit, far above ours, refuses it while opening
            raise RequestError(f"{what} claims more pixels than Pillow will open; this server takes at most "
                               f"{self.max_upload_pixels} pixels") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise RequestError(f"{what} is not an image (allowed: {', '.join(UPLOAD_FORMATS)})") from None
        if image.format not in UPLOAD_FORMATS:
            raise RequestError(f"{what} is a {image.format} image; allowed: {', '.join(UPLOAD_FORMATS)}")
        self.image_size(image, what)  # before the pixels are read
        try:
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise RequestError(f"{what} could not be decoded ({err})") from None
        return image

    def image_size(self, image: Image.Image, what: str) -> Image.Image:
        """Refuse an image of more pixels than the limit (an upload the page already decoded, or one whose
        header is read)."""
        width, height = image.size
        if width * height > self.max_upload_pixels:
            raise RequestError(f"{what} is {width}x{height} pixels; this server takes at most "
                               f"{self.max_upload_pixels} pixels")
        return image


def _whole_number(value: Any, what: str, low: int, high: int) -> int:
    refusal = f"{what} must be a whole number from {low} to {high}, got {value!r}"
    if isinstance(value, str):  # a whole number as text, exactly: a 19-digit seed must not go through a float
        try:
            value = int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy's integers too
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):  # exactly, not through a float
        if not low <= value <= high:
            raise RequestError(refusal)
        return value
    try:
        number = _number(value, what, low, high)
    except RequestError:
        raise RequestError(refusal) from None
    if number != int(number):
        raise RequestError(refusal)
    return int(number)


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or value is None:
        raise RequestError(f"{what} must be a number from {low:g} to {high:g}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{what} must be a number from {low:g} to {high:g}, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise RequestError(f"{what} must be a number from {low:g} to {high:g}, got {value!r}")
    return number
