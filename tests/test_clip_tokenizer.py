"""minisd.text.clip_tokenizer gives the ids transformers' CLIPTokenizer gives, from both published folder forms.

No download: the fixture learns a small CLIP-layout vocabulary (256 byte symbols, the same with "</w>",
one entry per merge, then <|startoftext|> and <|endoftext|>) from captions written here.
"""

import json
import random
import shutil
import unicodedata

import pytest
import torch
from clip_vocab import BOS, CAPTIONS, EOS, learn_vocab, special, write_plain_folder

from minisd.errors import CheckpointError, ConfigError
from minisd.text.clip_tokenizer import ClipTokenizer

@pytest.fixture(scope="module")
def vocab_and_merges():
    return learn_vocab()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, vocab_and_merges):
    """Folder forms by name; the "saved" ones are what transformers' save_pretrained writes (tokenizer.json)."""
    vocab, merges = vocab_and_merges
    root = tmp_path_factory.mktemp("clip_tokenizers")
    decoder = {str(vocab[token]): {**special(token, False), "normalized": token != "!", "special": True}
               for token in ("!", BOS, EOS)}
    made = {"sd1_plain": write_plain_folder(root / "sd1_plain", vocab, merges),
            "sd2_plain": write_plain_folder(root / "sd2_plain", vocab, merges, pad="!"),
            "sdxl_v4_plain": write_plain_folder(root / "sdxl_v4_plain", vocab, merges, pad="!",
                                                added_tokens_decoder=decoder)}
    return made


@pytest.fixture(scope="module")
def saved_folders(folders):
    """Each plain folder loaded by transformers and saved again, keeping only its tokenizer.json form."""
    transformers = pytest.importorskip("transformers")
    made = dict(folders)
    for name in ("sd1", "sd2"):
        saved = folders[f"{name}_plain"].parent / f"{name}_saved"
        transformers.CLIPTokenizer.from_pretrained(folders[f"{name}_plain"]).save_pretrained(saved)
        for plain_file in ("vocab.json", "merges.txt"):  # so the tokenizer.json path is really used
            (saved / plain_file).unlink(missing_ok=True)
        assert (saved / "tokenizer.json").is_file()
        made[f"{name}_saved"] = saved
    return made


def prompts_to_compare() -> list[str]:
    """Hand-written edge cases plus seeded random mixtures: over 250 strings."""
    long_prompt = ", ".join(CAPTIONS[:12])
    cases = [
        "", " ", "   \t\n ", "a", "A", "a photo of a cat", "  leading and trailing spaces  ", "A  Photo\tof\n a  CAT",
        "tabs\tand\nnewlines\r\nand\u00a0no-break\u2003em space", "HELLO World", "cAt DoG",
        "!!!", "?!?!", "...", "hello!!! world???", "a,b;c:d", "(((masterpiece))), [[blurry]], {best quality}",
        "a--b__c", "#hashtag @user $100 50% & more", "emoji:-)", "'quoted' \"double\" `back`",
        "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "dog's", "rock'n'roll",
        "'s", "'t", "''", "o'clock", "it’s (curly apostrophe)",
        "1", "42", "2024", "3.14159", "1,000,000", "v1.5", "4k 8k 16-bit 85mm", "x2", "1st 2nd 3rd",
        "١٢٣ arabic digits", "½ ² ³ ⅓", "Ⅻ roman",
        "café", "cafe\u0301", unicodedata.normalize("NFD", "Crème brûlée à la française"),
        unicodedata.normalize("NFC", "Crème brûlée à la française"), "naïve résumé", "Straße", "STRASSE", "ß",
        "ΑΒΓ αβγ Ωμέγα", "Ἀθῆναι", "Привет мир", "ЁЖИК", "日本語のテキスト", "中文字符", "한국어", "مرحبا بالعالم",
        "שלום", "हिन्दी", "ไทย", "e\u0301\u0302\u0303 stacked", "\u0301 lone combining", "Ǆ ǅ ǆ titlecase", "İstanbul",
        "😀", "a 🐱 cat", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇯🇵🇫🇷 flags", "👍🏽 skin tone", "❤️", "©®™",
        "\x00 nul", "\x7f del", "\u200b zero width", "\ufeff bom", "tab\there",
        EOS, BOS, f"{BOS}{EOS}", f"a cat {EOS} a dog", f"cat{EOS}dog", f"  {EOS}  ", "<|ENDOFTEXT|>", "<|StartOfText|>",
        "<|endoftext", "endoftext|>", "<|end of text|>", f"{EOS}{EOS}{EOS}", "!", "a!", "! !", "!!", "hi ! there",
        long_prompt, long_prompt.upper(), " ".join(["cat"] * 100), "x" * 300, "! " * 80, "🐱" * 40,
        " ".join(str(digit) for digit in range(100)),
    ]
    generator = random.Random(1234)
    words = [word for caption in CAPTIONS for word in caption.split()] + ["zyxwv", "qqq", "Überraschung", "ŁÓDŹ"]
    pieces = words + list(".,;:!?'\"()[]{}-_/\\|<>@#$%^&*~`") + ["'s", "'t", "'re", "n't"] + list("0123456789") + [
        "é", "e\u0301", "ß", "Ω", "Ж", "字", "ع", "😀", "👨‍👩‍👧", "🇺🇸", "\u0308", EOS, BOS, "<|ENDOFTEXT|>", "!!"]
    separators = [" ", " ", " ", "", "  ", "\t", "\n", "\u00a0"]
    for _ in range(260):
        count = generator.choice([1, 2, 3, 5, 8, 13, 30, 90])
        cases.append("".join(generator.choice(pieces) + generator.choice(separators) for _ in range(count)))
    return cases


@pytest.mark.parametrize("name", ["sd1_plain", "sd1_saved", "sd2_plain", "sd2_saved", "sdxl_v4_plain"])
def test_token_ids_equal_transformers_clip_tokenizer_for_both_folder_forms(name, saved_folders):
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(saved_folders[name])
    ours = ClipTokenizer.from_folder(saved_folders[name])
    strings = prompts_to_compare()
    expected = reference(strings, padding="max_length", max_length=reference.model_max_length,
                         truncation=True).input_ids
    got = ours(strings)
    assert got.dtype == torch.int64 and got.shape == (len(strings), 77)
    agree = sum(mine == theirs for mine, theirs in zip(got.tolist(), expected))
    print(f"{name}: token ids agree on {agree} of {len(strings)} strings")
    disagreeing = [(s, mine, theirs) for s, mine, theirs in zip(strings, got.tolist(), expected) if mine != theirs]
    assert not disagreeing, disagreeing[:3]
    assert len(strings) >= 250
    assert (ours.pad_id, ours.bos_id, ours.eos_id) == (reference.pad_token_id, reference.bos_token_id,
                                                       reference.eos_token_id)
    assert ours.vocab_size == len(reference) and ours.max_length == reference.model_max_length == 77
    for prompt in strings[:120]:
        ids = reference(prompt, truncation=True, max_length=77).input_ids
        assert ours.tokens(prompt) == reference.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("name", ["sd2_plain", "sd2_saved", "sdxl_v4_plain"])
def test_sd2_folders_pad_with_exclamation_mark_id_0(name, folders, vocab_and_merges, request):
    vocab = vocab_and_merges[0]
    if name.endswith("_saved"):  # written by transformers
        folders = request.getfixturevalue("saved_folders")
    tokenizer = ClipTokenizer.from_folder(folders[name])
    ids = tokenizer("a cat")[0].tolist()
    assert vocab["!"] == 0 and tokenizer.pad_id == 0 and tokenizer.eos_id == vocab[EOS]
    assert ids[:5] == [vocab[BOS], vocab["a</w>"], vocab["cat</w>"], vocab[EOS], 0] and set(ids[4:]) == {0}


def test_sd1_folder_pads_with_end_of_text(folders, vocab_and_merges):
    tokenizer = ClipTokenizer.from_folder(folders["sd1_plain"])
    assert tokenizer.pad_id == tokenizer.eos_id == vocab_and_merges[0][EOS]
    assert tokenizer("a cat")[0, 3:].tolist() == [tokenizer.eos_id] * 74


def test_long_prompt_is_truncated_to_bos_75_tokens_eos_and_truncated_returns_the_cut_text(folders):
    tokenizer = ClipTokenizer.from_folder(folders["sd1_plain"])
    candidates = ["cat", "dog", "red", "chair", "moon", "horse", "art", "light", "sea", "tree"]
    one_token_words = [word for word in candidates if len(tokenizer.tokens(word)) == 3]
    words = [one_token_words[index % len(one_token_words)] for index in range(200)]
    ids = tokenizer(" ".join(words))
    assert ids.shape == (1, 77) and ids[0, 0] == tokenizer.bos_id and ids[0, 76] == tokenizer.eos_id
    assert tokenizer.pad_id not in ids[0, 1:76].tolist()
    assert len(tokenizer.tokens(" ".join(words))) == 77
    assert tokenizer.truncated(" ".join(words)) == " ".join(words[75:])
    assert tokenizer.truncated(" ".join(words[:75])) == "" and tokenizer.truncated("") == ""


def test_empty_prompt_is_bos_eos_then_padding(folders):
    tokenizer = ClipTokenizer.from_folder(folders["sd1_plain"])
    ids = tokenizer(["", "a cat"])
    assert ids.shape == (2, 77)
    assert ids[0].tolist() == [tokenizer.bos_id, tokenizer.eos_id] + [tokenizer.pad_id] * 75
    assert tokenizer.tokens("") == [BOS, EOS]
    assert tokenizer([]).shape == (0, 77)


@pytest.mark.parametrize("prompt", [None, 3, b"bytes", ["ok", 7]])
def test_a_prompt_that_is_not_a_string_is_a_config_error(prompt, folders):
    with pytest.raises(ConfigError, match="prompt must be a string"):
        ClipTokenizer.from_folder(folders["sd1_plain"])(prompt)


def break_by_deleting_both_vocabularies(folder):
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    return "vocab.json and merges.txt missing"


def break_by_deleting_merges(folder):
    (folder / "merges.txt").unlink()
    return "merges.txt missing"


def break_vocab_json(folder):
    (folder / "vocab.json").write_text("{not json", encoding="utf-8")
    return "vocab.json"


def break_a_merges_line(folder):
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    lines[5] = "a b c"
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return "merges.txt"


def break_model_max_length(folder):
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 10**9}), encoding="utf-8")
    return "tokenizer_config.json"


def break_by_linking_outside(folder):
    outside = folder.parent / f"{folder.name}_outside_vocab.json"
    (folder / "vocab.json").rename(outside)
    (folder / "vocab.json").symlink_to(outside)
    return "vocab.json"


def break_by_dropping_special_tokens(folder):
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    del vocab[EOS]
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    return "vocab.json"


def break_vocab_type(folder):
    (folder / "vocab.json").write_text(json.dumps(["a", "b"]), encoding="utf-8")
    return "vocab.json"


@pytest.mark.parametrize("breaking", [
    break_by_deleting_both_vocabularies, break_by_deleting_merges, break_vocab_json, break_a_merges_line,
    break_model_max_length, break_by_linking_outside, break_by_dropping_special_tokens, break_vocab_type])
def test_a_bad_folder_is_one_checkpoint_error_naming_the_file(breaking, folders, tmp_path):
    folder = tmp_path / "tokenizer"
    shutil.copytree(folders["sd1_plain"], folder)
    named = breaking(folder)
    with pytest.raises(CheckpointError) as caught:
        ClipTokenizer.from_folder(folder)
    message = str(caught.value)
    assert named in message and "\n" not in message, message
