"""``shapes``: coloured shapes on black, made on the fly from a seed, with compositional captions.

    "a small red circle in the top left"      "a large blue diamond to the left of a little white square"

Each 32x32 RGB image holds one object (half the images) or two. An object has a shape (SHAPES), a
colour (COLOURS), a size (SIZES) and a place: one object sits in a cell of a 3x3 grid (POSITIONS);
two objects sit side by side (left and right columns of one row) or one above the other (top and
bottom rows of one column), far enough apart never to touch, and the caption says how object 0
stands to object 1 (RELATIONS). The true attributes are kept as tensors, so an evaluation can train
classifiers on them and score generated images against any prompt that :func:`parse_shapes_prompt`
reads.

Drawing is vectorised: each shape is a signed distance (pixels, negative inside), and a pixel's
coverage is ``clamp(0.5 - distance, 0, 1)``, one pixel of anti-aliasing. 50,000 images take a few
seconds on one core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from minisd.data.captioned import CaptionedDataset
from minisd.data.captions import check_template_set, normalise_prompt, phrase_pattern, pick, set_once, tidy
from minisd.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")  # object 0 is <relation> object 1

# Far apart in RGB, and each bright on black: the colour classifier should never be the weak link.
COLOUR_RGB = {
    "red": (0.95, 0.15, 0.15), "green": (0.15, 0.85, 0.2), "blue": (0.2, 0.35, 1.0),
    "yellow": (0.95, 0.9, 0.15), "purple": (0.7, 0.2, 0.95), "white": (1.0, 1.0, 1.0),
}

# ------------------------------------------------------------------ words (index-aligned with the names above)

SHAPE_WORDS = (("circle", "disc"), ("square",), ("triangle",), ("diamond", "rhombus"))
COLOUR_WORDS = (("red",), ("green",), ("blue",), ("yellow",), ("purple", "violet"), ("white",))
SIZE_WORDS = (("small", "little"), ("large", "big"))
POSITION_WORDS = (
    ("in the top left", "in the top left corner"),
    ("at the top", "in the top middle"),
    ("in the top right", "in the top right corner"),
    ("on the left", "at the left"),
    ("in the centre", "in the middle"),
    ("on the right", "at the right"),
    ("in the bottom left", "in the bottom left corner"),
    ("at the bottom", "in the bottom middle"),
    ("in the bottom right", "in the bottom right corner"),
)
RELATION_WORDS = (("to the left of", "left of"), ("to the right of", "right of"), ("above", "over"), ("below", "under"))

# {object}: "[size] colour shape"; {position} may be left out (then nothing is said about the place).
# Held-out templates swap the openings of one- and two-object captions: new sentences, no new word.
SHAPES_TEMPLATES = {
    "train": {
        1: ("a {object} {position}", "a picture of a {object} {position}"),
        2: ("a {object} {relation} a {other}", "there is a {object} {relation} a {other}"),
    },
    "heldout": {
        1: ("there is a {object} {position}",),
        2: ("a picture of a {object} {relation} a {other}",),
    },
}
SIZE_MENTION_PROBABILITY = 0.75
POSITION_MENTION_PROBABILITY = 0.8

# ------------------------------------------------------------------ geometry, in pixels of a 32x32 image

_CELL_CENTRES = (7.0, 16.0, 25.0)  # the 3x3 grid's rows and columns; pairs use the outer two
_JITTER = 1.0                       # each centre moves up to this much either way, for variety
_RADIUS = (3.5, 5.5)                # small, large: the circle's radius; other shapes match its extent
_PAIR_CELLS = {                     # relation -> (row, column) of object 0, of object 1; None: the shared one
    0: ((None, 0), (None, 2)),      # left of: same row, columns left and right
    1: ((None, 2), (None, 0)),      # right of
    2: ((0, None), (2, None)),      # above: same column, rows top and bottom
    3: ((2, None), (0, None)),      # below
}


def _signed_distance(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Distance in pixels to each shape's outline, negative inside: (n, H, W) from ``dx, dy`` (n, H, W) (y down).

    ``shape`` (n,) indexes SHAPES, ``radius`` (n, 1, 1) is the circle's radius; the square's half-side
    (0.85 r), the diamond's half-diagonal (1.15 r) and the triangle's circumradius (1.15 r, shifted down
    by a quarter so its box is centred) make shapes of similar extent and area.
    """
    distance = torch.empty_like(dx)
    for index, name in enumerate(SHAPES):
        chosen = shape == index
        if not chosen.any():
            continue
        x, y, r = dx[chosen].abs(), dy[chosen], radius[chosen]
        if name == "circle":
            distance[chosen] = torch.hypot(x, y) - r
        elif name == "square":
            distance[chosen] = torch.maximum(x, y.abs()) - 0.85 * r
        elif name == "diamond":
            distance[chosen] = (x + y.abs() - 1.15 * r) / math.sqrt(2)
        else:  # triangle pointing up: the farthest of its three edges' half-planes
            circumradius = 1.15 * r
            y = y + circumradius / 4
            base = y - circumradius / 2
            sides = (math.sqrt(3) / 2) * x - 0.5 * y - circumradius / 2
            distance[chosen] = torch.maximum(base, sides)
    return distance


def _draw(attributes: Mapping[str, torch.Tensor], size: int, chunk: int = 4096) -> torch.Tensor:
    """Images (N, 3, size, size) float32 in [0, 1] of the objects ``attributes`` describe."""
    centre, shape, colour, scale = attributes["centre"], attributes["shape"], attributes["colour"], size / 32
    radius = torch.tensor(_RADIUS)[attributes["size"].clamp_min(0)] * scale
    palette = torch.tensor([COLOUR_RGB[name] for name in COLOURS])
    pixel = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    images = torch.zeros(len(shape), 3, size, size)
    for start in range(0, len(shape), chunk):
        rows = slice(start, start + chunk)
        for slot in range(shape.shape[1]):
            present = shape[rows, slot] >= 0
            if not present.any():
                continue
            where = centre[rows, slot][present]  # (n, 2): x, y in pixels
            dx = pixel.view(1, 1, -1) - where[:, 0].view(-1, 1, 1)
            dy = pixel.view(1, -1, 1) - where[:, 1].view(-1, 1, 1)
            dx, dy = torch.broadcast_tensors(dx, dy)
            object_radius = radius[rows, slot][present].view(-1, 1, 1)
            coverage = (0.5 - _signed_distance(shape[rows, slot][present], dx, dy, object_radius)).clamp_(0, 1)
            ink = coverage.unsqueeze(1) * palette[colour[rows, slot][present]].view(-1, 3, 1, 1)
            images[rows][present] += ink  # objects never overlap, so adding is painting
    return images.clamp_(0, 1)


def _sample_attributes(
    num_images: int, generator: torch.Generator, max_objects: int, size: int
) -> dict[str, torch.Tensor]:
    """Random objects for ``num_images`` images: the attribute tensors of the module docstring."""
    def draw(high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(high, shape, generator=generator)

    n = num_images
    num_objects = (draw(2, (n,)) + 1) if max_objects == 2 else torch.ones(n, dtype=torch.long)
    shape, colour, sizes = draw(len(SHAPES), (n, 2)), draw(len(COLOURS), (n, 2)), draw(len(SIZES), (n, 2))
    # One object: any cell. Two: a relation, a shared row (or column), and the outer cells it implies.
    cell = draw(9, (n,))
    relation, shared = draw(len(RELATIONS), (n,)), draw(3, (n,))
    row = torch.stack([cell // 3, cell // 3], 1)
    column = torch.stack([cell % 3, cell % 3], 1)
    pair = num_objects == 2
    for index, cells in _PAIR_CELLS.items():
        chosen = pair & (relation == index)
        for slot, (fixed_row, fixed_column) in enumerate(cells):
            row[chosen, slot] = shared[chosen] if fixed_row is None else fixed_row
            column[chosen, slot] = shared[chosen] if fixed_column is None else fixed_column
    grid = torch.tensor(_CELL_CENTRES)
    jitter = (torch.rand(n, 2, 2, generator=generator) * 2 - 1) * _JITTER
    centre = (torch.stack([grid[column], grid[row]], -1) + jitter) * (size / 32)  # (n, 2, xy)

    second = ~pair
    for tensor in (shape, colour, sizes):
        tensor[second, 1] = -1
    centre[second, 1] = -1
    return {
        "num_objects": num_objects, "shape": shape, "colour": colour, "size": sizes,
        "position": torch.where(second.view(-1, 1) & (torch.arange(2) == 1), -1, row * 3 + column),
        "relation": torch.where(pair, relation, -1), "centre": centre,
    }


def make_shapes(num_images: int, seed: int, *, size: int = 32, max_objects: int = 2) -> CaptionedDataset:
    """``num_images`` shapes images (N, 3, size, size), the same for the same seed, as a CaptionedDataset.

    Attributes, per image (index into the name tuples; -1 where there is no second object):
    ``shape``, ``colour``, ``size``, ``position`` (N, 2) int64 (position: the 3x3 cell, row * 3 + column),
    ``num_objects`` (N,) int64, ``relation`` (N,) int64 (object 0 is RELATIONS[r] object 1; -1 for
    one object), ``centre`` (N, 2, 2) float32 (x, y in pixels). Labels are object 0's shape.
    ``max_objects`` 1 gives single objects only.
    """
    if num_images < 1 or size < 16 or max_objects not in (1, 2):
        raise ConfigError(f"make_shapes needs num_images >= 1, size >= 16 and max_objects 1 or 2; got "
                          f"num_images={num_images}, size={size}, max_objects={max_objects}")
    generator = torch.Generator().manual_seed(seed)
    attributes = _sample_attributes(num_images, generator, max_objects, size)
    return CaptionedDataset(
        _draw(attributes, size), attributes["shape"][:, 0].clone(), list(SHAPES), "shapes", f"seed {seed}",
        attributes=attributes, grammar=SHAPES_GRAMMAR,
    )


# ------------------------------------------------------------------ captions


def _object_phrase(shape: int, colour: int, size: int | None, draw: Sequence[float]) -> str:
    """ "[size] colour shape", the synonyms chosen by ``draw`` (3 uniforms); ``size`` None is not said."""
    words = [pick(COLOUR_WORDS[colour], draw[1]), pick(SHAPE_WORDS[shape], draw[2])]
    if size is not None:
        words.insert(0, pick(SIZE_WORDS[size], draw[0]))
    return " ".join(words)


class ShapesCaptionGrammar:
    """The captions of ``shapes`` images, from SHAPES_TEMPLATES and the word tables (a CaptionGrammar)."""

    def render(self, labels: torch.Tensor, attributes: Mapping[str, torch.Tensor], templates: str) -> list[str]:
        """One caption per image; ``attributes`` are those of :func:`make_shapes` for the B images."""
        check_template_set(templates)
        # Draws per image: template, size said (x2), position said, then 3 synonyms per object and 2 more.
        uniforms = torch.rand(len(labels), 12).tolist()
        keys = ("num_objects", "shape", "colour", "size", "position", "relation")
        columns = [attributes[key].tolist() for key in keys]
        captions = []
        for (count, shapes, colours, sizes, positions, relation), draw in zip(zip(*columns), uniforms):
            objects = [_object_phrase(shapes[slot], colours[slot],
                                      sizes[slot] if draw[1 + slot] < SIZE_MENTION_PROBABILITY else None,
                                      draw[4 + 3 * slot: 7 + 3 * slot])
                       for slot in range(count)]
            template = pick(SHAPES_TEMPLATES[templates][count], draw[0])
            position = pick(POSITION_WORDS[positions[0]], draw[10]) if draw[3] < POSITION_MENTION_PROBABILITY else ""
            relation_words = pick(RELATION_WORDS[relation], draw[11]) if count == 2 else ""
            captions.append(tidy(template.format(object=objects[0], other=objects[-1], position=position,
                                                 relation=relation_words)))
        return captions

    def vocabulary(self) -> list[str]:
        """Captions using every template and every word of the tables at least once."""
        captions = set()
        tables = (SHAPE_WORDS, COLOUR_WORDS, SIZE_WORDS, POSITION_WORDS, RELATION_WORDS)
        rounds = max(len(words) for table in tables for words in table)
        for round_index in range(rounds):
            uniform = (round_index + 0.5) / rounds  # reaches every synonym of every list (see ClassCaptionGrammar)
            for templates in SHAPES_TEMPLATES.values():
                for count, options in templates.items():
                    for template in options:
                        for index in range(max(len(SHAPES), len(COLOURS), len(POSITIONS))):
                            thing = _object_phrase(index % len(SHAPES), index % len(COLOURS), index % len(SIZES),
                                                   [uniform] * 3)
                            captions.add(tidy(template.format(
                                object=thing, other=thing, position=pick(POSITION_WORDS[index % 9], uniform),
                                relation=pick(RELATION_WORDS[index % len(RELATIONS)], uniform))))
        return sorted(captions)


SHAPES_GRAMMAR = ShapesCaptionGrammar()

# ------------------------------------------------------------------ prompts <-> objects

_OBJECT_WORDS = {  # word -> (attribute, index)
    word: (attribute, index)
    for attribute, table in (("shape", SHAPE_WORDS), ("colour", COLOUR_WORDS), ("size", SIZE_WORDS),
                             ("position", POSITION_WORDS))
    for index, words in enumerate(table) for word in words
}
_OBJECT_PATTERN = phrase_pattern(list(_OBJECT_WORDS))
_RELATION_INDEX = {word: index for index, words in enumerate(RELATION_WORDS) for word in words}
_RELATION_PATTERN = phrase_pattern(list(_RELATION_INDEX))


def _parse_object(text: str, prompt: str) -> dict[str, int | None]:
    parsed: dict[str, int | None] = dict.fromkeys(("shape", "colour", "size", "position", "relation"))
    for match in _OBJECT_PATTERN.finditer(text):
        attribute, index = _OBJECT_WORDS[match.group()]
        set_once(parsed, attribute, index, prompt, match.group())
    return parsed


def parse_shapes_prompt(prompt: str) -> list[dict[str, int | None]]:
    """The objects ``prompt`` asks for, each ``{"shape", "colour", "size", "position", "relation"}``.

    Values index SHAPES, COLOURS, SIZES, POSITIONS and RELATIONS; None where the prompt does not say.
    A prompt with a relation ("... to the left of ...") asks for two objects, the words before it
    describing object 0 (whose "relation" says how it stands to object 1) and the words after it object 1;
    otherwise it asks for one. Two relations, or two values of one attribute for one object, are a
    ConfigError.
    """
    text = normalise_prompt(prompt)
    relations = list(_RELATION_PATTERN.finditer(text))
    if len(relations) > 1:
        raise ConfigError(f"the prompt {prompt!r} relates more than two objects; shapes images hold one or two")
    if not relations:
        return [_parse_object(text, prompt)]
    match = relations[0]
    first, second = _parse_object(text[:match.start()], prompt), _parse_object(text[match.end():], prompt)
    first["relation"] = _RELATION_INDEX[match.group()]
    return [first, second]


def shapes_prompt(objects: Sequence[Mapping[str, int | None]]) -> str:
    """The canonical caption of one or two objects given as :func:`parse_shapes_prompt` returns them.

    The first train template and the first synonym of every word; a missing or None attribute is not
    said. Two objects need object 0's "relation".
    """
    if len(objects) not in (1, 2) or any(obj.get("shape") is None or obj.get("colour") is None for obj in objects):
        raise ConfigError("shapes_prompt needs one or two objects, each with a shape and a colour")
    phrases = [_object_phrase(obj["shape"], obj["colour"], obj.get("size"), [0.0] * 3) for obj in objects]
    template = SHAPES_TEMPLATES["train"][len(objects)][0]
    if len(objects) == 1:
        position = objects[0].get("position")
        said = "" if position is None else POSITION_WORDS[position][0]
        return tidy(template.format(object=phrases[0], position=said))
    relation = objects[0].get("relation")
    if relation is None:
        raise ConfigError("two objects need object 0's 'relation' (an index into RELATIONS)")
    return tidy(template.format(object=phrases[0], relation=RELATION_WORDS[relation][0], other=phrases[1]))
