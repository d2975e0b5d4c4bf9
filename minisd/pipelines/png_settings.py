"""Every setting of a generated image, stored inside its PNG, so that ``minisd generate --from out.png`` can
make the identical image again.

A PNG written by :func:`save_png` carries two text chunks:

``parameters``
    Human-readable, in the format of the AUTOMATIC1111 web UI ("PNG Info"), which other tools (image
    browsers, model sites, other web UIs) parse as well::

        a photo of a seven
        Negative prompt: blurry
        Steps: 20, Sampler: dpmpp_2m, CFG scale: 4.0, Seed: 0, Size: 28x28, Model: mnist, Version: minisd 0.1.0

    The prompt comes first (it may span lines), then ``Negative prompt: ...`` if there is one, then one
    last line of ``Label: value`` pairs joined by ", ". A value that holds a comma, a colon or a newline is
    written as a JSON string (in double quotes), so the line still splits. ``Size`` is WIDTHxHEIGHT, and
    ``Model hash`` (after ``Size``) the first 10 hex digits of the hash, as the web UI writes them. Settings
    without a label of their own are written as "Snake case" labels before ``Version``; the web UI's rule
    that settings which are None are left out holds for all.
``minisd``
    The settings dict itself as JSON (sorted keys): the exact copy, and the one :func:`read_settings` reads.
    A PNG with only a ``parameters`` chunk (from another tool, or one whose JSON was stripped) is read by
    parsing that text instead (:func:`settings_from_parameters`).

The settings dict (snake_case keys, :data:`SETTINGS_KEYS`): ``prompt``, ``negative_prompt``, ``seed``,
``steps``, ``sampler``, ``guidance_scale``, ``strength``, ``width``, ``height``, ``num_images``, ``model`` (its
name), ``model_hash`` (a hash of its weights), ``minisd_version``; with an init image or a mask also
``init_image`` / ``mask`` (the path as given) and ``init_image_sha256`` / ``mask_sha256``.

A PNG stores the path of its init image and mask, not their pixels: ``--from`` an image made from an init
image needs that file again, unchanged. :func:`check_recorded_inputs` refuses a missing or changed file
(by its sha256) rather than silently make a different image.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from minisd.errors import DataError, MinisdError
from minisd.outputs import check_writable, make_parent
from minisd.pipelines.inputs import open_image, sha256_file

#: The PNG text chunks: the web UI's human-readable one and minisd's exact JSON.
PARAMETERS_CHUNK = "parameters"
SETTINGS_CHUNK = "minisd"

#: The keys every settings dict has (``init_image``, ``mask`` and their sha256 are added when used).
SETTINGS_KEYS = ("prompt", "negative_prompt", "seed", "steps", "sampler", "guidance_scale", "strength", "width",
                 "height", "num_images", "model", "model_hash", "minisd_version")

_NEGATIVE_PROMPT_PREFIX = "Negative prompt:"
_VERSION_PREFIX = "minisd "
_SHORT_HASH_DIGITS = 10  # the web UI shows sha256 hashes by their first 10 hex digits ("AutoV2" hashes)
_SIZE = re.compile(r"(\d+)x(\d+)")
_INTEGER = re.compile(r"[+-]?\d+")
#: One "Label: value" pair of the settings line: a label of word characters, spaces, "-" or "/"; a value that
#: is a JSON string (quotes, with backslash escapes) or runs to the next comma.
_PAIR = re.compile(r'\s*(\w[\w /-]*):\s*("(?:\\.|[^"\\])*"|[^,]*)(?:,|$)')
#: A last line with fewer pairs than this is part of the prompt, not the settings line (the web UI's rule).
_MIN_PAIRS_IN_SETTINGS_LINE = 3


@dataclass(frozen=True)
class _Field:
    """One setting with a label of its own in the ``parameters`` line; ``kind`` parses its text back."""

    label: str
    key: str
    kind: type


# In the web UI's order, so that the line reads as the web UI's do.
_FIELDS = (
    _Field("Steps", "steps", int),
    _Field("Sampler", "sampler", str),
    _Field("CFG scale", "guidance_scale", float),
    _Field("Seed", "seed", int),
    _Field("Size", "size", str),  # width and height, as WIDTHxHEIGHT
    _Field("Model hash", "model_hash", str),
    _Field("Model", "model", str),
    _Field("Denoising strength", "strength", float),
    _Field("Init image", "init_image", str),
    _Field("Init image hash", "init_image_sha256", str),
    _Field("Mask", "mask", str),
    _Field("Mask hash", "mask_sha256", str),
    _Field("Batch size", "num_images", int),
)
_FIELD_BY_LABEL = {field.label: field for field in _FIELDS}
# Keys written elsewhere than as their own field: the prompts (their own lines), the size, the version (last).
_KEYS_NOT_EXTRA = {field.key for field in _FIELDS} | {"prompt", "negative_prompt", "width", "height",
                                                      "minisd_version"}


# --------------------------------------------------------------------------------------
# The parameters text
# --------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    """``value`` as is, or as a JSON string when a comma, colon or newline would break the settings line."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _extra_label(key: str) -> str:
    """``"guidance_rescale"`` -> ``"Guidance rescale"``; :func:`_extra_key` inverts it."""
    return key.replace("_", " ").capitalize()


def _extra_key(label: str) -> str:
    return re.sub(r"[ /-]", "_", label.lower())


def _text_of(value: Any) -> str:
    """A setting's value as the web UI writes it: ``str`` for scalars (True, 4.0), JSON for lists and dicts."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _prompt_text(prompt: str | list[str] | None) -> str:
    """A prompt as the text shows it: a list of prompts (one per group of images) one prompt a line."""
    return "\n".join(prompt) if isinstance(prompt, (list, tuple)) else prompt or ""


def parameters_text(settings: dict[str, Any]) -> str:
    """The settings as the AUTOMATIC1111 web UI's ``parameters`` text: the prompt, then ``Negative prompt:
    ...`` if any, then one line of ``Label: value`` pairs (the module docstring shows one). Settings that
    are missing, None or "" are left out; a list of prompts is written one prompt a line."""
    values = dict(settings)
    if values.get("width") is not None and values.get("height") is not None:
        values["size"] = f"{values['width']}x{values['height']}"
    if values.get("model_hash") is not None:
        values["model_hash"] = str(values["model_hash"])[:_SHORT_HASH_DIGITS]
    pairs = [(field.label, values.get(field.key)) for field in _FIELDS]
    pairs += [(_extra_label(key), value) for key, value in sorted(values.items()) if key not in _KEYS_NOT_EXTRA]
    if values.get("minisd_version") is not None:
        pairs.append(("Version", f"{_VERSION_PREFIX}{values['minisd_version']}"))
    settings_line = ", ".join(f"{label}: {_quote(_text_of(value))}" for label, value in pairs
                              if value is not None and value != "")

    prompt = _prompt_text(values.get("prompt"))
    negative_prompt = _prompt_text(values.get("negative_prompt"))
    negative_line = f"\n{_NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    # As the web UI: an empty prompt leaves no empty first line.
    return f"{prompt}{negative_line}\n{settings_line}".strip()


def _parse_scalar(text: str) -> Any:
    """The value of a setting without a field of its own: bool, int, float or (else) the text itself."""
    if text in ("True", "False"):
        return text == "True"
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _parse_field(field: _Field, text: str) -> Any:
    try:
        return field.kind(text)
    except ValueError:
        raise DataError(f"the parameters text has '{field.label}: {text}', which is not "
                        f"{'an integer' if field.kind is int else 'a number'}") from None


def settings_from_parameters(text: str) -> dict[str, Any]:
    """Parse a ``parameters`` text (the web UI's format, :func:`parameters_text`) back into a settings dict.

    Returns the keys the text holds (``prompt`` and ``negative_prompt`` always, "" when absent), with
    the types of :data:`SETTINGS_KEYS`; ``model_hash`` is the shortened hash the text shows. Labels
    without a field of their own come back as snake_case keys. Raises :class:`DataError` when the text
    has no settings line. The format cannot tell a prompt line that begins with "Negative prompt:" from
    the negative prompt (the JSON chunk can): such a line starts the negative prompt here, as in the web UI.
    """
    *lines, last_line = str(text).strip().split("\n")
    pairs = _PAIR.findall(last_line)
    if len(pairs) < _MIN_PAIRS_IN_SETTINGS_LINE:
        raise DataError("the parameters text has no settings line ('Steps: ..., Sampler: ..., Seed: ...')")

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if not negative_lines and line.startswith(_NEGATIVE_PROMPT_PREFIX):
            negative_lines.append(line[len(_NEGATIVE_PROMPT_PREFIX):].strip())
        else:
            (negative_lines if negative_lines else prompt_lines).append(line)
    settings: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}

    for label, raw_value in pairs:
        value = _unquote(raw_value.strip())
        field = _FIELD_BY_LABEL.get(label)
        if label == "Size" and (size := _SIZE.fullmatch(value)):
            settings["width"], settings["height"] = int(size.group(1)), int(size.group(2))
        elif label == "Version" and value.startswith(_VERSION_PREFIX):
            settings["minisd_version"] = value[len(_VERSION_PREFIX):]
        elif field is not None and field.key != "size":
            settings[field.key] = _parse_field(field, value)
        else:
            settings[_extra_key(label)] = _parse_scalar(value)
    return settings


# --------------------------------------------------------------------------------------
# Writing and reading PNGs
# --------------------------------------------------------------------------------------


def save_png(image: Image.Image, path: str | os.PathLike, settings: dict[str, Any], *,
             overwrite: bool = False) -> Path:
    """Write ``image`` as a PNG at ``path`` holding ``settings`` (a JSON-serialisable dict) in its
    ``parameters`` and ``minisd`` text chunks; return the path.

    Atomic: the PNG is written to a hidden temporary file in the same folder, flushed to disk, then
    renamed over ``path`` (a rename within one folder is atomic), so a crash or a full disk leaves either
    the previous file or the complete new one, never half a PNG. Refuses to replace an existing file
    unless ``overwrite`` (the checks of :func:`minisd.outputs.check_writable`).
    """
    path = check_writable(path, overwrite, suffixes=(".png",), what="image")
    # Both texts are made before any file is touched: settings that do not serialise fail here.
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_CHUNK, parameters_text(settings))  # tEXt, or iTXt when not latin-1
    info.add_text(SETTINGS_CHUNK, json.dumps(settings, sort_keys=True))

    temp_path = make_parent(path).with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        # Created through os.open with 0o666 so that the umask sets the permissions, as for any new file
        # (tempfile.mkstemp would leave the finished PNG readable by its owner only).
        handle = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", pnginfo=info)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except OSError as error:
        raise MinisdError(f"could not write the image {path}: {error.strerror or error}") from None
    finally:
        temp_path.unlink(missing_ok=True)  # after a successful os.replace there is nothing left
    return path


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings stored in the PNG at ``path`` by :func:`save_png` (its ``minisd`` JSON chunk), or, for a
    PNG with only a ``parameters`` chunk, those parsed from it (:func:`settings_from_parameters`).

    Raises :class:`DataError` naming the file when it is missing, a folder, not an image or damaged, an
    image of another format, or a PNG without settings.
    """
    image = open_image(path, "image")
    if image.format != "PNG":
        raise DataError(f"{path} is a {image.format or 'non-PNG'} image; minisd stores its settings only in PNGs")
    chunks = image.text
    if SETTINGS_CHUNK in chunks:
        try:
            settings = json.loads(chunks[SETTINGS_CHUNK])
        except json.JSONDecodeError:
            settings = None
        if not isinstance(settings, dict):
            raise DataError(f"the minisd settings in {path} are damaged (not a JSON object); use another PNG")
        return settings
    if PARAMETERS_CHUNK in chunks:
        try:
            return settings_from_parameters(chunks[PARAMETERS_CHUNK])
        except DataError:
            pass  # a "parameters" chunk of some other kind: no settings, reported below
    raise DataError(f"{path} has no minisd settings; was it made by `minisd generate`?")


_RECORDED_INPUTS = (("init_image", "init_image_sha256", "init image"), ("mask", "mask_sha256", "mask"))


def check_recorded_inputs(settings: dict[str, Any], source: str | os.PathLike) -> None:
    """Check that the init image and mask named in ``settings`` (read from the PNG ``source``) are still there
    and unchanged (same sha256), so that remaking ``source`` gives the identical image; otherwise raise
    :class:`DataError` saying which file to restore."""
    for path_key, hash_key, what in _RECORDED_INPUTS:
        recorded_path = settings.get(path_key)
        if not recorded_path:
            continue
        if not Path(recorded_path).is_file():
            raise DataError(f"{source} was made from the {what} {recorded_path}, which no longer exists; "
                            f"put it back to make the same image")
        recorded_hash = settings.get(hash_key)
        if recorded_hash and sha256_file(recorded_path) != recorded_hash:
            raise DataError(f"the {what} {recorded_path} has changed since {source} was made (its sha256 differs); "
                            f"restore the original to make the same image")
