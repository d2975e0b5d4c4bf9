"""Captions for MNIST and Fashion-MNIST: a class and its attribute bins, said through templates and synonyms.

    "a thick, slanted handwritten digit 7"     "the number seven, in thin strokes"     "a dark pair of trousers"

The wording is data, at the top of this file. A template has one class slot and at most one
attribute slot: ``{adjectives}`` before the noun ("a thick, slanted ...") or ``{phrases}`` after it
(", in thin strokes, drawn wide"). Each attribute is mentioned with probability 1/2 when its bin has
words (middle bins mostly have none: "a medium-thickness 7" is not how people talk), so captions
naming only the class are common.

The held-out templates are for evaluation: different sentences built from the same words (each of
their words appears in some training template), so a text encoder that only memorised the training
sentences is caught out, while none of their words is new to it.

Every random choice is drawn with torch's global RNG, which the training loop re-seeds at each step:
the captions of a run are a function of its seed. :func:`parse_class_prompt` reads a prompt back into
the class and bins it asks for, template-free, so an evaluation can score any prompt in this grammar.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from minisd.data.attributes import NUM_BINS
from minisd.errors import ConfigError

TEMPLATE_SETS = ("train", "heldout")
MENTION_PROBABILITY = 0.5

# ------------------------------------------------------------------ digits

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Slot name -> the words each class may be called there (one tuple per class, 0-9).
DIGIT_CLASS_SLOTS = {
    "numeral": tuple((str(digit),) for digit in range(10)),
    "word": tuple((word,) for word in DIGIT_WORDS),
    "digit": tuple((str(digit), word) for digit, word in enumerate(DIGIT_WORDS)),
}

DIGIT_TEMPLATES = {
    "train": (
        "a {adjectives} handwritten digit {numeral}",  # the acceptance prompt "a handwritten digit 7"
        "a {adjectives} handwritten {digit}",
        "the digit {word}{phrases}",
        "the number {digit}{phrases}",
        "an image of a {adjectives} {digit}",
    ),
    "heldout": (
        "a handwritten number {digit}{phrases}",
        "a {adjectives} digit {word}",
        "an image of the number {digit}{phrases}",
    ),
}

# Per attribute, per bin (0 low, 1 middle, 2 high: see minisd.data.attributes), the words that say it.
DIGIT_ATTRIBUTE_WORDS = {
    "thickness": (
        {"adjectives": ("thin", "fine"), "phrases": ("in thin strokes", "with fine strokes")},
        {},
        {"adjectives": ("thick", "bold"), "phrases": ("in thick strokes", "with bold strokes")},
    ),
    "slant": (
        {"adjectives": ("left-slanted", "backward-leaning"), "phrases": ("slanted to the left", "leaning left")},
        {"adjectives": ("upright", "straight"), "phrases": ("standing upright", "written straight")},
        {"adjectives": ("slanted", "right-slanted", "italic"), "phrases": ("slanted to the right", "leaning right")},
    ),
    "width": (
        {"adjectives": ("narrow", "condensed"), "phrases": ("drawn narrow", "narrow in shape")},
        {},
        {"adjectives": ("wide", "broad"), "phrases": ("drawn wide", "wide in shape")},
    ),
}

# ------------------------------------------------------------------ clothing (Fashion-MNIST)

CLOTHING_CLASS_SLOTS = {
    "garment": (
        ("t-shirt", "top", "tee"),
        ("pair of trousers", "pair of pants"),
        ("pullover", "sweater", "jumper"),
        ("dress",),
        ("coat", "jacket"),
        ("sandal",),
        ("shirt", "button-up shirt"),
        ("sneaker", "trainer", "running shoe"),
        ("bag", "handbag"),
        ("ankle boot", "boot"),
    ),
}

CLOTHING_TEMPLATES = {
    "train": (
        "a {adjectives} {garment}",
        "a photo of a {adjectives} {garment}",
        "a {garment}{phrases}",
        "an image of a {garment}{phrases}",
    ),
    "heldout": (
        "a picture of a {adjectives} {garment}",
        "an image of the {garment}{phrases}",
    ),
}

CLOTHING_ATTRIBUTE_WORDS = {
    "brightness": (
        {"adjectives": ("dark", "dim"), "phrases": ("in a dark shade", "dark in colour")},
        {},
        {"adjectives": ("light", "pale", "bright"), "phrases": ("in a light shade", "light in colour")},
    ),
    "size": (
        {"adjectives": ("small", "little"), "phrases": ("small in the picture", "shown small")},
        {},
        {"adjectives": ("large", "big"), "phrases": ("filling the picture", "shown large")},
    ),
}

# ------------------------------------------------------------------ shared by every grammar


class CaptionGrammar(Protocol):
    """What a CaptionedDataset needs from its captions: render some, and list the words they can use."""

    def render(self, labels: torch.Tensor, attributes: Mapping[str, torch.Tensor], templates: str) -> list[str]:
        """One caption per image: ``labels`` (B,) and each attribute (B, ...) of those images."""

    def vocabulary(self) -> list[str]:
        """Example captions in which every word any template can produce appears at least once."""


def check_template_set(templates: str) -> None:
    """Raise ConfigError unless ``templates`` is one of TEMPLATE_SETS."""
    if templates not in TEMPLATE_SETS:
        raise ConfigError(f"unknown template set {templates!r}; choose one of: {', '.join(TEMPLATE_SETS)}")


def pick(options: Sequence[str], uniform: float) -> str:
    """The option a uniform draw in [0, 1) lands on."""
    return options[min(int(uniform * len(options)), len(options) - 1)]


def _needs_an(word: str) -> bool:
    # By sound, not spelling: "an 8", "an eight", "an upright 7", but "a one" and "a unicorn".
    return word[:1] in ("a", "e", "i", "o", "u", "8") and not word.startswith(("one", "uni", "use", "eu"))


def tidy(caption: str) -> str:
    """Single spaces, no space before a comma, and "a" -> "an" before a vowel sound ("a 8" -> "an 8")."""
    words = caption.replace(" ,", ",").split()
    for position, word in enumerate(words[:-1]):
        if word in ("a", "an"):
            words[position] = "an" if _needs_an(words[position + 1]) else "a"
    return " ".join(words)


def phrase_pattern(phrases: Sequence[str]) -> re.Pattern:
    """A regex finding any of ``phrases`` as whole words, the longest first where two start at one place.

    Hyphens count as letters, so "shirt" is not found inside "t-shirt" nor "slanted" inside
    "left-slanted"; scanning left to right with the longest alternative first, "slanted to the left"
    is one match, not "slanted" followed by stray words.
    """
    alternatives = "|".join(re.escape(phrase) for phrase in sorted(set(phrases), key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])")


def normalise_prompt(prompt: str) -> str:
    """Lower case with single spaces, as the grammars' words are written."""
    if not isinstance(prompt, str):
        raise ConfigError(f"a prompt must be a string, got {type(prompt).__name__} {prompt!r}")
    return " ".join(prompt.lower().split())


def set_once(parsed: dict, key: str, value: int, prompt: str, said: str) -> None:
    """``parsed[key] = value``, unless the prompt already said a different one (a ConfigError)."""
    if parsed[key] is not None and parsed[key] != value:
        raise ConfigError(f"the prompt {prompt!r} asks for two different {key} values (the second is {said!r}); "
                          "ask for one")
    parsed[key] = value


# ------------------------------------------------------------------ class + attribute grammar


class ClassCaptionGrammar:
    """Captions "class + attribute bins" (MNIST, Fashion-MNIST), from word tables like the ones above.

    ``class_slots``: slot name -> per class, the words for it there. ``attribute_words``: attribute
    -> per bin, ``{"adjectives": (...), "phrases": (...)}`` (an empty dict: the bin is never said).
    ``templates``: template set -> templates, each with one class slot and at most one of
    ``{adjectives}``, ``{phrases}``. A word with two meanings is refused here, so parsing is unambiguous.
    """

    def __init__(
        self,
        class_slots: Mapping[str, tuple[tuple[str, ...], ...]],
        attribute_words: Mapping[str, tuple[Mapping[str, tuple[str, ...]], ...]],
        templates: Mapping[str, tuple[str, ...]],
        mention_probability: float = MENTION_PROBABILITY,
    ) -> None:
        self.class_slots = class_slots
        self.attribute_words = attribute_words
        self.templates = templates
        self.mention_probability = mention_probability
        self.num_classes = len(next(iter(class_slots.values())))
        self._meaning: dict[str, tuple[str, int]] = {}  # word -> ("label" or the attribute, class or bin)
        said_as = [("label", label, words) for per_class in class_slots.values()
                   for label, words in enumerate(per_class)]
        said_as += [(attribute, bin_index, words) for attribute, bins in attribute_words.items()
                    for bin_index, forms in enumerate(bins) for words in forms.values()]
        for key, value, words in said_as:
            for word in words:
                if self._meaning.setdefault(word, (key, value)) != (key, value):
                    raise ValueError(f"{word!r} means both {self._meaning[word]} and {(key, value)}")
        for bins in attribute_words.values():
            if len(bins) != NUM_BINS:
                raise ValueError(f"every attribute needs words for {NUM_BINS} bins, got {len(bins)}")
        for template in self.all_templates():
            slots = set(re.findall(r"{(\w+)}", template))
            if len(slots & set(class_slots)) != 1 or {"adjectives", "phrases"} <= slots:
                raise ValueError(f"template {template!r} needs one class slot and at most one attribute slot")
        self._pattern = phrase_pattern(list(self._meaning))

    def all_templates(self) -> list[str]:
        """Every template of every set."""
        return [template for templates in self.templates.values() for template in templates]

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.attribute_words)

    def _fill(self, template: str, label: int, said: list[tuple[str, int, float]], uniform_class: float) -> str:
        """``template`` with the class (synonym at ``uniform_class``) and the ``said`` (attribute, bin, uniform)."""
        attribute_slot = "adjectives" if "{adjectives}" in template else "phrases"
        words = [pick(self.attribute_words[attribute][bin_index][attribute_slot], uniform)
                 for attribute, bin_index, uniform in said]
        slots = {name: pick(per_class[label], uniform_class) for name, per_class in self.class_slots.items()}
        slots["adjectives"] = ", ".join(words)
        slots["phrases"] = "".join(", " + phrase for phrase in words)
        return tidy(template.format(**slots))

    def render(self, labels: torch.Tensor, attributes: Mapping[str, torch.Tensor], templates: str) -> list[str]:
        """One caption per image from ``labels`` (B,) and the attribute bins ``attributes[name]`` (B,)."""
        check_template_set(templates)
        options = self.templates[templates]
        names = self.attributes
        # One draw of every choice for the whole batch: template, class synonym, then per attribute
        # whether it is said, its synonym, and its place in the list.
        uniforms = torch.rand(len(labels), 2 + 3 * len(names)).tolist()
        bins = torch.stack([attributes[name] for name in names], 1).tolist() if names else [[]] * len(labels)
        captions = []
        for label, image_bins, draw in zip(labels.tolist(), bins, uniforms):
            template = pick(options, draw[0])
            said = []
            if "{adjectives}" in template or "{phrases}" in template:
                for position, (name, bin_index) in enumerate(zip(names, image_bins)):
                    mention, synonym, order = draw[2 + 3 * position: 5 + 3 * position]
                    if self.attribute_words[name][bin_index] and mention < self.mention_probability:
                        said.append((order, name, bin_index, synonym))
            said = [(name, bin_index, synonym) for _, name, bin_index, synonym in sorted(said)]
            captions.append(self._fill(template, label, said, draw[1]))
        return captions

    def vocabulary(self) -> list[str]:
        """Captions using every template, every class word and every attribute word at least once."""
        # A uniform (k + 0.5) / m for k < m picks every one of n <= m options, so m rounds of
        # captions, each with every attribute said, reach every word.
        ways_to_say = {}  # attribute -> [(bin, uniform)]
        for name, bins in self.attribute_words.items():
            for bin_index, forms in enumerate(bins):
                synonyms = max(map(len, forms.values()), default=0)
                ways_to_say.setdefault(name, []).extend((bin_index, (k + 0.5) / synonyms) for k in range(synonyms))
        class_synonyms = max(len(words) for per_class in self.class_slots.values() for words in per_class)
        rounds = max([class_synonyms] + [len(ways) for ways in ways_to_say.values()])
        captions = set()
        for template in self.all_templates():
            for label in range(self.num_classes):
                for round_index in range(rounds):
                    said = [(name, *ways[round_index % len(ways)]) for name, ways in ways_to_say.items()]
                    class_uniform = (round_index % class_synonyms + 0.5) / class_synonyms
                    captions.add(self._fill(template, label, said, class_uniform))
        return sorted(captions)

    def parse(self, prompt: str) -> dict[str, int | None]:
        """The class (``"label"``) and attribute bins ``prompt`` asks for; None for what it does not say.

        Template-free: any wording that uses the grammar's words is read. Two different classes, or
        two bins of one attribute, are a ConfigError.
        """
        text = normalise_prompt(prompt)
        parsed: dict[str, int | None] = {"label": None, **{name: None for name in self.attributes}}
        for match in self._pattern.finditer(text):
            key, value = self._meaning[match.group()]
            set_once(parsed, key, value, prompt, match.group())
        return parsed


DIGIT_GRAMMAR = ClassCaptionGrammar(DIGIT_CLASS_SLOTS, DIGIT_ATTRIBUTE_WORDS, DIGIT_TEMPLATES)
CLOTHING_GRAMMAR = ClassCaptionGrammar(CLOTHING_CLASS_SLOTS, CLOTHING_ATTRIBUTE_WORDS, CLOTHING_TEMPLATES)


def parse_digit_prompt(prompt: str) -> dict[str, int | None]:
    """``{"label": digit, "thickness": bin, "slant": bin, "width": bin}`` asked for by ``prompt``, None where not said.

    Numerals and number words both count: "a thick, slanted handwritten 7" and "the number seven,
    in thick strokes, slanted to the right" both give label 7, thickness 2, slant 2, width None.
    """
    return DIGIT_GRAMMAR.parse(prompt)


def parse_clothing_prompt(prompt: str) -> dict[str, int | None]:
    """``{"label": class, "brightness": bin, "size": bin}`` asked for by ``prompt``, None where not said."""
    return CLOTHING_GRAMMAR.parse(prompt)
