"""Prompts to token ids: a word-level vocabulary learned from the training captions.

The model is the ``tokenizers`` library's **WordLevel**, not WordPiece or BPE. The captions come
from a small grammar ("a handwritten 7", "a pair of trousers"), so every word of it gets its own
id, one word is one token, and ``max_length`` counts words a person can see. Subword models earn
their keep on open text, where they spell out a new word from pieces; learned from a few hundred
templated captions their pieces would be near-characters whose meaning the text encoder never saw,
so a new word would look understood while meaning nothing. Here it becomes ``[UNK]`` instead, and
:meth:`Tokenizer.unknown_words` names it so the caller can warn.

Text is normalised (Unicode NFD, lowercase, accents stripped: "Café" and "cafe" are one word),
then split on whitespace and punctuation (``"a 7."`` -> ``a``, ``7``, ``.``). Three special tokens
have fixed ids: ``[PAD]`` 0, ``[UNK]`` 1 and ``[BOS]`` 2. ``[BOS]`` starts every sequence, so each
one has at least one real token for attention to land on, and ``max_length`` counts it.
Every batch is padded to exactly ``max_length`` (kept in the JSON as the fixed padding length), so
a prompt and a negative prompt of different lengths batch together for classifier-free guidance.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, processors, trainers

from minisd.errors import CheckpointError, ConfigError

PAD, UNK, BOS = "[PAD]", "[UNK]", "[BOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS)  # their ids are their positions: PAD 0, UNK 1, BOS 2
PAD_ID, UNK_ID, BOS_ID = range(len(SPECIAL_TOKENS))


def check_prompts(prompts: str | Sequence[str], *, allow_empty: bool = False) -> list[str]:
    """The prompts as a list (a single string is a batch of one); a non-string one is a ConfigError, and so is
    an empty one unless ``allow_empty``."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise ConfigError(f"a prompt must be a string, got {type(prompt).__name__} {prompt!r}")
        if not allow_empty and not prompt.strip():
            raise ConfigError(f"the prompt is empty ({prompt!r}); describe the image in words")
    return prompts


class Tokenizer:
    """Prompts -> ``(ids (B, L) int64, mask (B, L) bool)`` with ``L = max_length``; mask True on real tokens."""

    def __init__(self, tokenizer: HFTokenizer):
        """Wrap a ``tokenizers.Tokenizer`` made by :meth:`train` or :meth:`from_json` (use those)."""
        self._tokenizer = tokenizer

    # --- building -------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], *, max_length: int = 24, vocab_size: int = 1000) -> Tokenizer:
        """Learn the vocabulary of ``texts``: its ``vocab_size - 3`` most frequent words, plus the special tokens.

        Deterministic: ties in frequency are broken alphabetically, so the same texts, in any
        order, give the same ids. Words beyond the ``vocab_size`` cut become ``[UNK]``.
        """
        if max_length < 2:
            raise ConfigError(f"max_length = {max_length} leaves no room for a word after the start token; "
                              "use 2 or more")
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ConfigError(f"vocab_size = {vocab_size} leaves no room for words after the "
                              f"{len(SPECIAL_TOKENS)} special tokens; use {len(SPECIAL_TOKENS) + 1} or more")
        tokenizer = HFTokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(),
                                                     normalizers.StripAccents()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words \w+ and runs of punctuation
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=1,
                                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer)
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A",
                                                                 special_tokens=[(BOS, BOS_ID)])
        # No truncation on purpose: a long prompt is refused by __call__, never silently cut.
        tokenizer.enable_padding(pad_id=PAD_ID, pad_token=PAD, length=max_length)
        return cls(tokenizer)

    def to_json(self) -> str:
        """The whole tokenizer (vocabulary, normaliser, ``max_length``) as the ``tokenizers`` JSON format."""
        return self._tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_json`; a text that is not one is a CheckpointError."""
        try:
            tokenizer = HFTokenizer.from_str(text)
        except Exception as err:  # the Rust side raises a plain Exception for bad JSON
            raise CheckpointError(f"tokenizer.json cannot be read ({err}); "
                                  "save the tokenizer again or train a new one") from None
        special_ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
        padding = tokenizer.padding
        if (not isinstance(tokenizer.model, models.WordLevel) or special_ids != [PAD_ID, UNK_ID, BOS_ID]
                or padding is None or padding["length"] is None):
            raise CheckpointError("tokenizer.json is not a minisd tokenizer (a word-level vocabulary with "
                                  f"{', '.join(SPECIAL_TOKENS)} as ids 0, 1, 2 and a fixed padding length); "
                                  "use one written by minisd")
        return cls(tokenizer)

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path`` (a ``tokenizer.json`` file)."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a ``tokenizer.json`` written by :meth:`save`; a missing or unreadable file is a CheckpointError."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"cannot read the tokenizer file {str(path)!r}: {err}") from None
        return cls.from_json(text)

    # --- properties -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included: the embedding table needs at least this many rows."""
        return self._tokenizer.get_vocab_size()

    @property
    def max_length(self) -> int:
        """L, the length of every id sequence, ``[BOS]`` included: a prompt may hold ``max_length - 1`` tokens."""
        return self._tokenizer.padding["length"]

    # --- encoding -------------------------------------------------------------------

    def __call__(self, prompts: str | Sequence[str], *, allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(B, L)`` int64 and mask ``(B, L)`` bool (True = real token, False = padding).

        A single string is a batch of one. A prompt longer than ``max_length`` tokens, or anything
        that is not a string, is a ConfigError; so is an empty prompt, unless ``allow_empty``: then
        it is ``[BOS]`` alone, the "null text" of classifier-free guidance (as Stable Diffusion
        encodes ""), for callers that replace captions by it on purpose, never for a user's prompt.
        """
        prompts = check_prompts(prompts, allow_empty=allow_empty)
        encodings = self._tokenizer.encode_batch(prompts)
        for prompt, encoding in zip(prompts, encodings):
            length = sum(encoding.attention_mask)
            if length == 1 and not allow_empty:  # only [BOS]: all the text was removed by the normaliser
                raise ConfigError(f"the prompt is empty once normalised ({prompt!r}); describe the image in words")
            if length > self.max_length:
                raise ConfigError(f"the prompt is {length - 1} tokens long, more than the {self.max_length - 1} this "
                                  f"tokenizer takes (max_length = {self.max_length} counts the start token); "
                                  f"shorten it: {prompt[:60]!r}")
        ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long)
        mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.bool)
        return ids, mask

    def tokens(self, prompt: str) -> list[str]:
        """The tokens of ``prompt`` as the encoder sees them, ``[BOS]`` first, padding left out: the labels of the
        positions of :meth:`__call__`'s ids (for attention maps)."""
        encoding = self._tokenizer.encode(prompt)
        return [token for token, real in zip(encoding.tokens, encoding.attention_mask) if real]

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of ``prompt`` (as written) that the vocabulary lacks and that become ``[UNK]``, for a warning.

        Unknown punctuation becomes ``[UNK]`` too but is not listed: a warning about a comma would be noise.
        """
        encoding = self._tokenizer.encode(prompt)
        pieces = [prompt[start:end] for token, (start, end) in zip(encoding.tokens, encoding.offsets) if token == UNK]
        return [piece for piece in pieces if any(character.isalnum() for character in piece)]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"
