"""The page's bounds (:mod:`minisd.web.limits`): every value the browser sends, good and bad, and every upload.

A refused value is a :class:`RequestError` whose message says what was wrong and what is allowed; the checks
assert on those words, since the message is all the user sees.
"""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from minisd.errors import ConfigError
from minisd.web.limits import MAX_SEED, UPLOAD_FORMATS, Limits, RequestError

LIMITS = Limits()
ALLOWED = ", ".join(UPLOAD_FORMATS)
RNG_PIXELS = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)  # 20 wide, 24 high
_ROWS, _COLUMNS = np.mgrid[0:24, 0:20]
SMOOTH_PIXELS = np.stack([_ROWS * 10, _COLUMNS * 12, 255 - _ROWS * 5], axis=-1).astype(np.uint8)  # JPEG keeps it


def refused(check, value, *words: str) -> str:
    """``check(value)`` must raise :class:`RequestError` whose message holds every one of ``words``."""
    with pytest.raises(RequestError) as caught:
        check(value)
    message = str(caught.value)
    for word in words:
        assert word in message, (word, message)
    return message


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR chunk (with a correct CRC) claims ``width`` x ``height`` pixels."""
    data = encode(Image.new("L", (8, 8), 128), "PNG")
    assert data[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + data[24:29]  # the new size, then depth, colour type, ...
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return data[:16] + body + crc + data[33:]


# ---------------------------------------------------------------- the server's own bounds


@pytest.mark.parametrize("name", ["max_prompt_chars", "max_steps", "max_images", "max_upload_bytes",
                                  "max_upload_pixels"])
def test_a_bound_below_1_is_refused_naming_it(name):
    with pytest.raises(ConfigError, match=f"{name} must be at least 1, got 0"):
        Limits(**{name: 0})


def test_a_negative_queue_is_refused_and_0_is_allowed():
    with pytest.raises(ConfigError, match="queue size must be 0 or more, got -1"):
        Limits(queue_size=-1)
    assert Limits(queue_size=0).queue_size == 0


# ---------------------------------------------------------------- prompts


def test_a_prompt_is_stripped_and_may_be_exactly_as_long_as_the_limit():
    assert LIMITS.prompt("  a handwritten digit 7 \n") == "a handwritten digit 7"
    assert LIMITS.prompt("x" * LIMITS.max_prompt_chars) == "x" * LIMITS.max_prompt_chars
    assert Limits(max_prompt_chars=5).prompt("seven") == "seven"


def test_an_over_long_prompt_says_its_length_and_the_limit():
    message = refused(LIMITS.prompt, "x" * (LIMITS.max_prompt_chars + 1), "the prompt", "301 characters",
                      "at most 300")
    assert "xxxxxxxxxx" not in message  # the message is about the prompt, not a copy of it
    refused(Limits(max_prompt_chars=5).prompt, "sevens", "6 characters", "at most 5")


@pytest.mark.parametrize("text", ["", "   ", "\n\t", None])
def test_an_empty_prompt_is_refused_with_an_example(text):
    refused(LIMITS.prompt, text, "the prompt is empty", '"a handwritten digit 7"')


def test_an_empty_prompt_is_allowed_where_it_is_optional():
    assert LIMITS.prompt(None, "the negative prompt", required=False) == ""
    assert LIMITS.prompt("  ", "the negative prompt", required=False) == ""
    refused(lambda text: LIMITS.prompt(text, "the negative prompt", required=False), "y" * 301,
            "the negative prompt is 301 characters")


@pytest.mark.parametrize("value, kind", [(7, "int"), (["a", "seven"], "list"), (b"seven", "bytes"),
                                         ({"text": "7"}, "dict"), (1.5, "float")])
def test_a_prompt_that_is_not_text_is_refused_naming_its_type(value, kind):
    refused(LIMITS.prompt, value, "the prompt must be text", f"got {kind}")


# ---------------------------------------------------------------- whole numbers: steps, images, seed


@pytest.mark.parametrize("value, expected", [(1, 1), (100, 100), (20.0, 20), ("12", 12), (" 3 ", 3),
                                             (np.int64(5), 5)])
def test_good_steps_are_whole_numbers_in_range(value, expected):
    steps = LIMITS.steps(value)
    assert steps == expected and type(steps) is int


@pytest.mark.parametrize("value", [0, -3, 101, 10**6, 10**400, 2.5, "abc", "", "2.5", True, False, None,
                                   float("nan"), float("inf"), [5], object()])
def test_bad_steps_say_what_is_allowed(value):
    refused(LIMITS.steps, value, "the number of steps", "whole number from 1 to 100", f"got {value!r}"[:40])


def test_the_steps_bound_is_the_servers():
    assert Limits(max_steps=7).steps(7) == 7
    refused(Limits(max_steps=7).steps, 8, "from 1 to 7", "got 8")


@pytest.mark.parametrize("value", [0, 9, 3.5, "x", True, None])
def test_bad_image_counts_say_what_is_allowed(value):
    refused(LIMITS.images, value, "the number of images", "whole number from 1 to 8")


def test_image_counts_in_range_are_taken():
    assert [LIMITS.images(n) for n in (1, 8, "2", 4.0)] == [1, 8, 2, 4]


@pytest.mark.parametrize("value", [0, 1, 2**32, 2**53 + 1, MAX_SEED, str(MAX_SEED), "9007199254740993",
                                   np.int64(2**62 + 1), np.uint64(2**63 - 1)])
def test_seeds_up_to_2_63_minus_1_are_taken_exactly(value):
    seed = LIMITS.seed(value)
    assert type(seed) is int and seed == int(value)  # never rounded through a float


def test_a_whole_float_seed_is_taken():
    assert LIMITS.seed(42.0) == 42 and LIMITS.seed(2.0**62) == 2**62


@pytest.mark.parametrize("value", [-1, MAX_SEED + 1, 2**63, 2**64, 10**30, str(2**63), "-1", 1.5, float("nan"),
                                   float("inf"), 2.0**63, "seed", "0x10", True, None])
def test_bad_seeds_say_the_exact_range(value):
    refused(LIMITS.seed, value, "the seed must be a whole number from 0 to 9223372036854775807")


# ---------------------------------------------------------------- numbers: guidance, strength, time


MAX_GUIDANCE = LIMITS.max_guidance


@pytest.mark.parametrize("value, expected", [(0, 0.0), (7.5, 7.5), ("3", 3.0), (MAX_GUIDANCE, MAX_GUIDANCE),
                                             (np.float32(2.0), 2.0)])
def test_good_guidance(value, expected):
    assert LIMITS.guidance(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "inf", -1, -1e-9,
                                   MAX_GUIDANCE + 1e-4, MAX_GUIDANCE + 1, 10**400, "abc", True, None, [1]])
def test_bad_guidance_says_what_is_allowed(value):
    refused(LIMITS.guidance, value, f"the guidance scale must be a number from 0 to {MAX_GUIDANCE:g}")


def test_the_guidance_bound_is_the_servers():
    refused(Limits(max_guidance=12).guidance, 12.5, "from 0 to 12", "got 12.5")


@pytest.mark.parametrize("value", [1, 0.5, 1e-6, "0.25"])
def test_good_strength(value):
    assert LIMITS.strength(value) == float(value)


def test_strength_0_is_refused_saying_why():
    refused(LIMITS.strength, 0, "above 0", "unchanged", "1 redraws all")
    refused(LIMITS.strength, 0.0, "above 0")


@pytest.mark.parametrize("value", [1.0001, 2, -0.5, float("nan"), float("inf"), "x", True, None])
def test_strength_outside_0_to_1_is_refused(value):
    refused(LIMITS.strength, value, "the strength must be a number above 0 and at most 1")


def test_a_latent_coordinate_lies_on_the_map():
    assert LIMITS.latent(-3, "z[0]") == -3.0 and LIMITS.latent("2.5", "z[1]") == 2.5
    for value in (-3.1, 3.1, float("nan"), None, "x"):
        refused(lambda v: LIMITS.latent(v, "z[0]"), value, "z[0] must be a number from -3 to 3")


# ---------------------------------------------------------------- uploads


@pytest.mark.parametrize("format, options, mode", [
    ("PNG", {}, "RGB"), ("PNG", {}, "L"), ("JPEG", {"quality": 95}, "RGB"), ("WEBP", {"lossless": True}, "RGB"),
    ("BMP", {}, "RGB"), ("GIF", {}, "L")])
def test_each_allowed_kind_is_decoded_with_its_pixels(format, options, mode):
    original = Image.fromarray(SMOOTH_PIXELS if format == "JPEG" else RNG_PIXELS).convert(mode)
    image = LIMITS.upload(encode(original, format, **options), "the init image")
    assert image.format == format and image.size == (20, 24)
    got = np.asarray(image.convert(mode), dtype=np.int16)
    want = np.asarray(original, dtype=np.int16)
    if format == "JPEG":  # lossy: close, not equal
        assert np.abs(got - want).mean() < 4
    else:
        assert np.array_equal(got, want)
    image.getpixel((0, 0))  # fully loaded: no lazy decoding left to fail later


@pytest.mark.parametrize("data", [b"", b"hello, I am not an image", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"%PDF-1.4\n"])
def test_bytes_that_are_not_an_image_are_refused_naming_the_allowed_kinds(data):
    refused(lambda d: LIMITS.upload(d, "the init image"), data, "the init image is not an image", ALLOWED)


@pytest.mark.parametrize("format", ["TIFF", "ICO", "PPM", "TGA"])
def test_an_image_of_a_kind_not_allowed_is_refused_naming_its_kind(format):
    data = encode(Image.fromarray(RNG_PIXELS), format)
    message = refused(lambda d: LIMITS.upload(d, "the mask"), data, "the mask is a", format, f"allowed: {ALLOWED}")
    assert "could not be decoded" not in message


def test_an_image_over_the_byte_limit_is_refused_before_it_is_opened(monkeypatch):
    limits = Limits(max_upload_bytes=2**20)
    noise = np.random.default_rng(1).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG", compress_level=0)  # about 1.03 MiB of real PNG
    assert len(data) > 2**20
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("opened an upload over the byte limit"))
    refused(lambda d: limits.upload(d, "the init image"), data, "the init image is 1.0 MiB",
            "at most 1.0 MiB")
    refused(lambda d: LIMITS.upload(d, "the init image"), data * 5, f"is {5 * len(data) / 2**20:.1f} MiB",
            "at most 4.0 MiB")


def test_an_upload_of_exactly_the_byte_limit_is_taken_and_one_byte_more_is_not():
    data = encode(Image.fromarray(RNG_PIXELS), "PNG")
    assert LIMITS.upload(data, "x").size == (20, 24)
    assert Limits(max_upload_bytes=len(data)).upload(data, "x").size == (20, 24)
    refused(lambda d: Limits(max_upload_bytes=len(data) - 1).upload(d, "x"), data, "x is", "MiB", "at most")


def test_an_image_of_more_pixels_than_the_limit_is_refused_with_its_size():
    limits = Limits(max_upload_pixels=20 * 24)
    assert limits.upload(encode(Image.fromarray(RNG_PIXELS), "PNG"), "x").size == (20, 24)
    data = encode(Image.new("RGB", (21, 24)), "PNG")
    refused(lambda d: limits.upload(d, "the init image"), data, "the init image is 21x24 pixels",
            "at most 480 pixels")


def test_a_decoded_image_of_more_pixels_than_the_limit_is_refused_too():
    limits = Limits(max_upload_pixels=100)
    assert limits.image_size(Image.new("L", (10, 10)), "the mask").size == (10, 10)
    refused(lambda image: limits.image_size(image, "the mask"), Image.new("L", (11, 10)), "the mask is 11x10 pixels",
            "at most 100 pixels")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's warning at 10000x10000
@pytest.mark.parametrize("width, height", [(4096, 4096), (3000, 2000), (10_000, 10_000)])
def test_a_png_whose_header_claims_too_many_pixels_is_refused_before_decoding(monkeypatch, width, height):
    # The file holds 8x8 pixels; were it decoded first, the refusal would be "could not be decoded".
    data = png_claiming(width, height)
    with Image.open(io.BytesIO(data)) as header:
        assert header.size == (width, height)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a PNG over the pixel limit"))
    refused(lambda d: LIMITS.upload(d, "the init image"), data, f"the init image is {width}x{height} pixels",
            f"at most {2048 * 2048} pixels")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [20_000, 100_000])
def test_a_png_claiming_more_pixels_than_pillow_opens_is_a_request_error_too(side):
    # Pillow raises its own DecompressionBombError while opening these; the user must still get a refusal.
    refused(lambda d: LIMITS.upload(d, "the init image"), png_claiming(side, side), "the init image",
            f"at most {2048 * 2048} pixels")


def test_a_small_pixel_limit_refuses_a_claimed_size_over_it():
    refused(lambda d: Limits(max_upload_pixels=63).upload(d, "x"), png_claiming(8, 8), "x is 8x8 pixels",
            "at most 63 pixels")
    assert Limits(max_upload_pixels=64).upload(png_claiming(8, 8), "x").size == (8, 8)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "BMP", "GIF"])
def test_a_truncated_image_could_not_be_decoded(format):
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise).convert("L" if format == "GIF" else "RGB"), format)
    refused(lambda d: LIMITS.upload(d, "the init image"), data[:len(data) // 2],
            "the init image could not be decoded")


def test_a_png_with_a_damaged_pixel_chunk_could_not_be_decoded():
    data = bytearray(encode(Image.fromarray(RNG_PIXELS), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start:start + 40] = bytes(40)  # zlib stream broken; the CRC no longer matches either
    refused(lambda d: LIMITS.upload(d, "the image"), bytes(data), "the image could not be decoded")
