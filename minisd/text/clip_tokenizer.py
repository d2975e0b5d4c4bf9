"""Prompts to CLIP token ids, exactly as a published Stable Diffusion folder's ``tokenizer/`` gives them.

CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision")
reads text with **byte-level BPE**. Byte pair encoding (Sennrich et al. 2016, "Neural Machine
Translation of Rare Words with Subword Units") starts from single symbols and applies a learned,
ranked list of merges ("t" + "h" -> "th", ...), so frequent words become one token and a rare one
is spelled from pieces. Byte-level means the symbols are the 256 bytes of UTF-8, each shown as a
printable character (GPT-2's byte-to-unicode table), so any text, emoji included, has a spelling
and nothing is ever unknown. CLIP marks the last symbol of every word with ``</w>``, so "cat" alone
(``cat</w>``) and "cat" inside "catalog" are different tokens.

Before merging, text is normalised (Unicode NFC, every run of whitespace made one space, lowercase)
and split into words, contractions ('s 't 're ...), single digits and runs of punctuation; spaces
never become tokens. CLIP was trained that way on web captions, so "A  Cat" and "a cat" must give
the same ids or the encoder sees text unlike its training data. Every sequence is
``<|startoftext|>`` + tokens + ``<|endoftext|>``, padded to 77: CLIP's text transformer has 77
learned position embeddings, so longer prompts are cut (the rest is never seen).

The pipeline is built with the ``tokenizers`` library exactly as transformers' ``CLIPTokenizer``
builds it (v5), including its handling of special-token strings typed inside a prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

from minisd.errors import CheckpointError, ConfigError

CLIP_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
NAMED_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",  # transformers' order and defaults
                "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
MAX_FILE_BYTES = 256 * 2**20  # CLIP's files: vocab.json 0.9 MB, merges.txt 0.5 MB, tokenizer.json 3.6 MB
MAX_ENTRIES = 10_000_000  # vocabulary entries or merges; CLIP has 49408 and 48894
MAX_ADDED_TOKENS = 65_536  # CLIP has 2


def _read(folder: Path, name: str, *, required: bool = True) -> str | None:
    """The text of ``folder/name``; a symlink leading out of the folder, or a huge file, is refused."""
    path = folder / name
    if not path.exists() and not path.is_symlink():
        if required:
            raise CheckpointError(f"{path}: the tokenizer file is missing; download the whole tokenizer/ folder")
        return None
    try:
        target = path.resolve(strict=True)
        if not target.is_relative_to(folder.resolve(strict=True)) or not target.is_file():
            raise CheckpointError(f"{path}: not a regular file inside {folder} (a link out of it?); "
                                  "refusing to read it")
        if target.stat().st_size > MAX_FILE_BYTES:
            raise CheckpointError(f"{path}: {target.stat().st_size} bytes is too large for a tokenizer file")
        return target.read_text(encoding="utf-8")
    except (OSError, RuntimeError, UnicodeDecodeError) as err:  # RuntimeError: a symlink loop
        raise CheckpointError(f"{path}: cannot be read ({' '.join(str(err).split())})") from None


def _json(folder: Path, name: str, *, required: bool = True) -> dict[str, Any] | None:
    text = _read(folder, name, required=required)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{folder / name}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{folder / name}: expected a JSON object, got {type(data).__name__}")
    return data


def _checked_vocab(vocab: Any, where: Path) -> dict[str, int]:
    """A vocabulary token -> id whose ids are 0..n-1, each once, so they index an embedding table of n rows."""
    if (not isinstance(vocab, dict) or not 0 < len(vocab) <= MAX_ENTRIES
            or not all(isinstance(token, str) and type(index) is int for token, index in vocab.items())
            or set(vocab.values()) != set(range(len(vocab)))):
        raise CheckpointError(f"{where}: the vocabulary must map up to {MAX_ENTRIES} token strings to the ids "
                              "0, 1, ..., n-1, each once")
    return vocab


def _merges_txt(text: str, where: Path) -> list[tuple[str, str]]:
    """``merges.txt``: an optional ``#version`` line, then one merge "left right" per line, highest priority first."""
    lines = text.splitlines()
    first = 2 if lines and lines[0].startswith("#version") else 1
    lines = lines[first - 1:]
    if len(lines) > MAX_ENTRIES:
        raise CheckpointError(f"{where}: {len(lines)} merges is more than {MAX_ENTRIES}")
    merges = []
    for number, line in enumerate(lines, start=first):
        pair = line.split(" ")
        if len(pair) != 2 or not all(pair):
            raise CheckpointError(f"{where}: line {number} is not two tokens separated by one space: {line[:80]!r}")
        merges.append((pair[0], pair[1]))
    return merges


def _added_token(value: Any, where: Path, *, special: bool) -> AddedToken:
    """A token setting (a string, or a dict with "content" and flags) as transformers reads it. ``normalized``
    (default: not special) says whether it is matched in the normalised text, e.g. also when typed in capitals."""
    if isinstance(value, str) and value:
        return AddedToken(value, special=True)  # normalized=False: matches only the raw text
    if not isinstance(value, dict) or not isinstance(value.get("content"), str) or not value["content"]:
        raise CheckpointError(f"{where}: a special token must be a string or an object with a string \"content\"")
    flags = {key: value.get(key) for key in ("single_word", "lstrip", "rstrip", "normalized", "special")
             if value.get(key) is not None}
    if not all(isinstance(flag, bool) for flag in flags.values()):
        raise CheckpointError(f"{where}: the flags of special token {value['content']!r} must be true or false")
    flags["special"] = special or flags.get("special", False)
    return AddedToken(value["content"], **{"normalized": not flags["special"], **flags})


def _special_tokens(folder: Path, config: dict[str, Any], tokenizer_json: dict[str, Any] | None
                    ) -> tuple[dict[str, str], list[AddedToken]]:
    """The named special tokens (bos, eos, unk, pad -> string) and the tokens to match whole in a prompt.

    This follows transformers v5: when ``tokenizer_config.json`` has no ``added_tokens_decoder``,
    ``special_tokens_map.json`` overrides its settings and ``tokenizer.json``'s ``added_tokens`` are
    the declared tokens. Declared tokens keep their flags; a named token not declared is added as
    well, and when two names share a string (SD 1.x: eos, unk and pad) the last one's flags win.
    """
    settings = {name: (config.get(name) or default, folder / "tokenizer_config.json", False)
                for name, default in NAMED_TOKENS.items()}
    declared, where = config.get("added_tokens_decoder"), folder / "tokenizer_config.json"
    if declared is None:
        special_map = _json(folder, "special_tokens_map.json", required=False) or {}
        settings.update({name: (special_map[name], folder / "special_tokens_map.json", True)
                         for name in NAMED_TOKENS if special_map.get(name)})
        where = folder / "tokenizer.json"
        added_tokens = (tokenizer_json or {}).get("added_tokens", [])
        if not isinstance(added_tokens, list) or not all(isinstance(item, dict) for item in added_tokens):
            raise CheckpointError(f"{where}: \"added_tokens\" must be a list of objects")
        declared = {item.get("id"): {key: value for key, value in item.items() if key != "id"} for item in added_tokens}
    if (not isinstance(declared, dict) or len(declared) > MAX_ADDED_TOKENS
            or not all(str(index).isascii() and str(index).isdigit() for index in declared)):
        raise CheckpointError(f"{where}: added tokens must be listed by whole-number id, at most {MAX_ADDED_TOKENS}")
    added = {token.content: token for token in (_added_token(value, where, special=False)
                                                for _, value in sorted(declared.items(), key=lambda kv: int(kv[0])))}
    declared_contents = set(added)
    named = {name: _added_token(value, source, special=from_map)
             for name, (value, source, from_map) in settings.items()}
    for token in named.values():
        if token.content not in declared_contents:
            added[token.content] = token
    return {name: token.content for name, token in named.items()}, list(added.values())


def _pipeline(vocab: dict[str, int], merges: list[tuple[str, str]], names: dict[str, str],
              added: list[AddedToken]) -> Tokenizer:
    """CLIP's tokenizer as transformers' converter builds it: BPE with ``</w>``, NFC + whitespace + lowercase,
    CLIP's word split then byte-level symbols, BOS ... EOS around every sequence."""
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                              end_of_word_suffix="</w>", fuse_unk=False, unk_token=names["unk_token"]))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    # ByteLevel splits each piece again with GPT-2's pattern (use_regex=True) before mapping bytes to symbols.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.add_tokens(added)  # typed in a prompt, these strings are found first and each kept as one token
    tokenizer.post_processor = processors.RobertaProcessing(
        (names["eos_token"], vocab[names["eos_token"]]), (names["bos_token"], vocab[names["bos_token"]]),
        trim_offsets=False, add_prefix_space=False)
    return tokenizer


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise ConfigError(f"a prompt must be a string, got {type(prompt).__name__} {prompt!r:.60}")
    return prompt


class ClipTokenizer:
    """Prompts -> ids ``(B, max_length)`` int64, as diffusers' StableDiffusionPipeline computes them."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, names: dict[str, str]):
        """Wrap a configured ``tokenizers.Tokenizer`` (use :meth:`from_folder`)."""
        self._plain = tokenizer  # no truncation or padding: for truncated()
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._max_length = max_length
        self._ids = {name: tokenizer.token_to_id(token) for name, token in names.items()}
        self._tokenizer.enable_truncation(max_length=max_length)  # keeps room for BOS and EOS
        self._tokenizer.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=names["pad_token"])

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ClipTokenizer:
        """Read a ``tokenizer/`` folder (or a pipeline folder holding one) in either published form.

        Vocabulary and merges come from ``vocab.json`` + ``merges.txt`` when both exist, else from
        ``tokenizer.json``; settings from ``tokenizer_config.json`` and ``special_tokens_map.json``.
        Every problem is one CheckpointError naming the file.
        """
        folder = Path(folder)
        if not (folder / "tokenizer_config.json").exists() and (folder / "tokenizer").is_dir():
            folder = folder / "tokenizer"
        plain_files = (folder / "vocab.json").exists() and (folder / "merges.txt").exists()
        if not plain_files and not (folder / "tokenizer.json").exists():
            absent = " and ".join(name for name in ("vocab.json", "merges.txt") if not (folder / name).exists())
            raise CheckpointError(f"{folder}: {absent} missing, and no tokenizer.json instead; "
                                  "download the whole tokenizer/ folder")
        config = _json(folder, "tokenizer_config.json", required=False) or {}
        length = config.get("model_max_length", 77)
        if type(length) is not int or not 2 <= length <= 4096:
            raise CheckpointError(f"{folder / 'tokenizer_config.json'}: model_max_length = {length!r} is not a whole "
                                  "number in 2..4096 (CLIP uses 77)")
        needs_json = not plain_files or ("added_tokens_decoder" not in config and (folder / "tokenizer.json").exists())
        tokenizer_json = _json(folder, "tokenizer.json") if needs_json else None
        names, added = _special_tokens(folder, config, tokenizer_json)
        if plain_files:
            where = folder / "vocab.json"
            vocab = _checked_vocab(_json(folder, "vocab.json"), where)
            merges = _merges_txt(_read(folder, "merges.txt"), folder / "merges.txt")
        else:
            where, model = folder / "tokenizer.json", tokenizer_json.get("model")
            if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("merges"), list):
                raise CheckpointError(f"{where}: \"model\" is not a BPE model with a list of merges")
            vocab = _checked_vocab(model.get("vocab"), where)
            pairs = [merge.split(" ") if isinstance(merge, str) else merge for merge in model["merges"]]
            if len(pairs) > MAX_ENTRIES or not all(isinstance(pair, list) and len(pair) == 2 and all(
                    isinstance(part, str) and part for part in pair) for pair in pairs):
                raise CheckpointError(f"{where}: each merge must be two tokens, at most {MAX_ENTRIES} merges")
            merges = [(left, right) for left, right in pairs]
        missing = sorted({token for token in names.values() if token not in vocab})
        if missing:
            raise CheckpointError(f"{where}: the vocabulary lacks the special tokens {missing}")
        try:
            tokenizer = _pipeline(vocab, merges, names, added)
        except Exception as err:  # noqa: BLE001 - the Rust side raises a plain Exception, e.g. merging unknown tokens
            files = f"{where} and merges.txt" if plain_files else where
            raise CheckpointError(f"{files}: not a usable BPE vocabulary ({' '.join(str(err).split())})") from None
        return cls(tokenizer, length, names)

    @property
    def max_length(self) -> int:
        """L, the length of every id sequence, BOS and EOS included (77 for Stable Diffusion)."""
        return self._max_length

    @property
    def vocab_size(self) -> int:
        """Number of ids: the text encoder's embedding table has this many rows (49408 for CLIP)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._ids["pad_token"]

    @property
    def bos_id(self) -> int:
        return self._ids["bos_token"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos_token"]

    def __call__(self, prompts: str | Sequence[str], *, allow_empty: bool = True) -> torch.Tensor:
        """Ids ``(B, max_length)`` int64: BOS, tokens (at most ``max_length - 2``), EOS, then padding.

        A single string is a batch of one. "" is allowed (``allow_empty`` is accepted for the interface minisd's
        word-level tokenizer shares; Stable Diffusion reads the empty prompt as any other): it is the unconditional
        prompt of classifier-free guidance. Anything that is not a string is a ConfigError.
        """
        batch = list(prompts) if isinstance(prompts, Sequence) and not isinstance(prompts, str) else [prompts]
        for prompt in batch:
            _check_prompt(prompt)
        ids = [encoding.ids for encoding in self._tokenizer.encode_batch(batch)]
        return torch.tensor(ids, dtype=torch.int64).reshape(len(batch), self._max_length)

    def tokens(self, prompt: str) -> list[str]:
        """The token strings the encoder sees, BOS first and EOS last, without padding (labels for attention maps)."""
        encoding = self._tokenizer.encode(_check_prompt(prompt))
        return [token for token, real in zip(encoding.tokens, encoding.attention_mask) if real]

    def truncated(self, prompt: str) -> str:
        """The end of ``prompt`` that does not fit in ``max_length`` tokens and is cut off ("" if all fits)."""
        encoding = self._plain.encode(_check_prompt(prompt), add_special_tokens=False)
        if len(encoding.ids) <= self._max_length - 2:
            return ""
        return prompt[encoding.offsets[self._max_length - 2][0]:]

    def unknown_words(self, prompt: str) -> list[str]:
        """None: byte-level BPE spells any text from its 256 byte symbols, so no word is unknown to it."""
        _check_prompt(prompt)
        return []

    def __repr__(self) -> str:
        return f"ClipTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length}, pad_id={self.pad_id})"
