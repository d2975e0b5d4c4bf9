"""The text encoder: tokenizer, transformer, and the CLIP-style contrastive model (issue 9, section 4)."""

import json
import math

import pytest
import torch

from minisd.errors import CheckpointError, ConfigError
from minisd.eval.retrieval import retrieval_accuracy, text_encoder_retrieval
from minisd.models.clip import ContrastiveTextImage
from minisd.text import TextEncoder, Tokenizer
from minisd.text.tokenizer import BOS_ID, PAD_ID, UNK_ID

CAPTIONS = ["a handwritten 7", "a handwritten 3", "a pair of trousers", "a small red square", "a big blue circle"]
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(CAPTIONS, max_length=8, vocab_size=100)


# --- tokenizer ------------------------------------------------------------------------


def test_tokenizer_json_round_trip_keeps_ids_and_max_length(tokenizer, tmp_path):
    prompts = ["a handwritten 7", "a pair of blue trousers"]
    from_text = Tokenizer.from_json(tokenizer.to_json())
    tokenizer.save(tmp_path / "tokenizer.json")
    from_file = Tokenizer.load(tmp_path / "tokenizer.json")
    for copy in (from_text, from_file):
        assert copy.max_length == 8 and copy.vocab_size == tokenizer.vocab_size
        for original, restored in zip(tokenizer(prompts), copy(prompts)):
            assert torch.equal(original, restored)


def test_tokenizer_training_is_deterministic_whatever_the_caption_order():
    forward = Tokenizer.train(CAPTIONS, max_length=8, vocab_size=100)
    backward = Tokenizer.train(list(reversed(CAPTIONS)), max_length=8, vocab_size=100)
    assert forward.to_json() == backward.to_json()


def test_ids_start_with_bos_are_padded_to_max_length_and_mask_marks_real_tokens(tokenizer):
    ids, mask = tokenizer(["a handwritten 7", "a pair of trousers"])
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert (ids[:, 0] == BOS_ID).all()
    assert mask.sum(dim=1).tolist() == [4, 5]  # [BOS] + the words
    assert (ids[~mask] == PAD_ID).all() and (ids[mask] != PAD_ID).all()


def test_unknown_word_becomes_unk_and_is_named_as_written(tokenizer):
    ids, _ = tokenizer("a handwritten Zebra")
    assert ids[0, 3] == UNK_ID and (ids[0, 1:3] != UNK_ID).all()
    assert tokenizer.unknown_words("a handwritten Zebra, 7 gnu") == ["Zebra", "gnu"]
    assert tokenizer.unknown_words("a handwritten 7") == []


def test_case_and_accents_do_not_change_ids(tokenizer):
    assert torch.equal(tokenizer("A HÁNDWRÏTTEN 7")[0], tokenizer("a handwritten 7")[0])


def test_vocab_size_caps_the_vocabulary_and_rarer_words_become_unk():
    small = Tokenizer.train(["a a a b b c"], vocab_size=5)  # 3 special tokens + the 2 most frequent words
    assert small.vocab_size == 5
    ids, _ = small("a b c")
    assert ids[0, 3] == UNK_ID and (ids[0, 1:3] != UNK_ID).all()


@pytest.mark.parametrize("prompt", ["", "   \n", "\u0301"])  # the last is only an accent, which normalising strips
def test_empty_prompt_is_refused(tokenizer, prompt):
    with pytest.raises(ConfigError, match="the prompt is empty"):
        tokenizer(["a handwritten 7", prompt])


def test_empty_prompt_allowed_on_purpose_is_the_start_token_alone(tokenizer):
    ids, mask = tokenizer(["", "a handwritten 7"], allow_empty=True)
    assert ids[0, 0] == BOS_ID and mask[0].tolist() == [True] + [False] * 7 and mask[1].sum() == 4


def test_over_long_prompt_error_names_its_token_count_and_the_limit(tokenizer):
    with pytest.raises(ConfigError, match=r"9 tokens long, more than the 7 .*max_length = 8"):
        tokenizer("a a a a a a a a a")
    tokenizer("a a a a a a a")  # exactly the limit is fine


def test_non_string_prompt_is_refused(tokenizer):
    with pytest.raises(ConfigError, match="must be a string"):
        tokenizer(["a handwritten 7", 7])


def test_unreadable_or_foreign_tokenizer_files_are_checkpoint_errors(tokenizer, tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        Tokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Tokenizer.load(tmp_path / "bad.json")
    unpadded = json.loads(tokenizer.to_json())
    unpadded["padding"] = None
    with pytest.raises(CheckpointError, match="not a minisd tokenizer"):
        Tokenizer.from_json(json.dumps(unpadded))


# --- transformer encoder ----------------------------------------------------------------


def _randomised_encoder(vocab_size: int, max_length: int) -> TextEncoder:
    """An encoder whose blocks do something: at initialisation their last layers are zero (identity blocks)."""
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size, max_length, dim=16, depth=2, num_heads=4).eval()
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.normal_(std=0.3)
    return encoder


def test_encoder_gives_one_vector_per_token(tokenizer):
    encoder = TextEncoder(tokenizer.vocab_size, tokenizer.max_length, dim=16, depth=2, num_heads=4)
    ids, mask = tokenizer(["a handwritten 7", "a pair of trousers", "a big blue circle"])
    assert encoder(ids, mask).shape == (3, 8, 16)
    assert TextEncoder.pooled(encoder(ids, mask), mask).shape == (3, 16)


def test_padding_does_not_change_the_outputs_at_real_tokens(tokenizer):
    encoder = _randomised_encoder(tokenizer.vocab_size, tokenizer.max_length)
    ids, mask = tokenizer(["a handwritten 7", "a pair of blue trousers"])
    padded = encoder(ids, mask)[0, :4]
    unpadded = encoder(ids[:1, :4], mask[:1, :4])[0]  # the same prompt with no padding at all
    other_padding = ids.clone()
    other_padding[~mask] = UNK_ID  # different ids at the padded positions
    assert torch.allclose(padded, unpadded, atol=1e-5)
    assert torch.allclose(padded, encoder(other_padding, mask)[0, :4], atol=1e-5)
    # ...while the mask is what protects them: attending to padding changes the real outputs.
    assert not torch.allclose(padded, encoder(other_padding, torch.ones_like(mask))[0, :4], atol=1e-3)


def test_pooled_is_the_mean_over_real_tokens_only():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert torch.equal(TextEncoder.pooled(tokens, mask), torch.tensor([[2.0, 3.0]]))


# --- retrieval metric -------------------------------------------------------------------


def test_retrieval_scores_perfect_embeddings_one_and_collapsed_ones_zero():
    content = torch.tensor([0, 0, 1, 2])
    perfect = torch.eye(4)
    assert retrieval_accuracy(perfect, perfect, content, k=(1,), pool=4)["top1"] == 1.0
    collapsed = torch.ones(4, 3)  # every similarity ties: ties count against the model
    scores = retrieval_accuracy(collapsed, collapsed, content, k=(1,), pool=4)
    assert scores["top1"] == 0.0 and scores["top1_class"] == 0.0


def test_retrieval_chance_levels_count_same_content_images():
    content = torch.tensor([0, 0, 1, 2])  # two captions say the same: each has m = 2 matching images
    scores = retrieval_accuracy(torch.eye(4), torch.eye(4), content, k=(1, 2), pool=4)
    assert scores["top1_chance"] == 0.25 and scores["top2_chance"] == 0.5
    assert scores["top1_class_chance"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)
    assert scores["top2_class_chance"] == pytest.approx((5 / 6 + 5 / 6 + 0.5 + 0.5) / 4)  # 1 - C(4-m,2)/C(4,2)


def test_retrieval_refuses_fewer_pairs_than_the_pool():
    with pytest.raises(ConfigError, match="at least 100 image-caption pairs, got 10"):
        retrieval_accuracy(torch.eye(10), torch.eye(10), torch.arange(10))


# --- the contrastive model --------------------------------------------------------------


class _Captions:
    """The one method of a captioned dataset that ContrastiveTextImage.prepare uses."""

    def caption_vocabulary(self) -> list[str]:
        return [f"a {colour} square" for colour in COLOURS]


def _tiny_clip() -> ContrastiveTextImage:
    torch.manual_seed(0)
    model = ContrastiveTextImage(image_shape=(3, 8, 8), vocab_size=16, max_length=6, text_dim=16, text_depth=1,
                                 text_heads=2, embed_dim=16, image_channels=(8, 16))
    model.prepare(_Captions())
    return model


def _coloured_squares(n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """``n`` 8x8 images, each a 4x4 square of one of four colours at a random place on a noisy background."""
    names = list(COLOURS)
    colours = torch.randint(len(names), (n,), generator=generator)
    images = 0.2 * torch.rand(n, 3, 8, 8, generator=generator)
    corners = torch.randint(5, (n, 2), generator=generator)
    for image, colour, (row, col) in zip(images, colours, corners):
        image[:, row:row + 4, col:col + 4] = torch.tensor(COLOURS[names[colour]])[:, None, None]
    return images, [f"a {names[colour]} square" for colour in colours]


def _train(model: ContrastiveTextImage, make_batch, *, steps: int, batch_size: int,
           generator: torch.Generator) -> list[tuple[list[str], dict[str, float]]]:
    """``steps`` Adam steps on batches ``make_batch(batch_size, generator)``; each batch's captions and logs."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(steps):
        images, captions = make_batch(batch_size, generator)
        loss, logs = model.loss({"image": images, "caption": captions})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((captions, logs))
    return history


def test_clip_loss_falls_and_retrieval_beats_chance_on_coloured_squares():
    model = _tiny_clip()
    generator = torch.Generator().manual_seed(0)
    excess_losses = []  # above the floor a batch's repeated captions put under the loss: mean log(repeats)
    for captions, logs in _train(model, _coloured_squares, steps=100, batch_size=16, generator=generator):
        floor = sum(math.log(captions.count(caption)) for caption in captions) / len(captions)
        excess_losses.append(logs["loss"] - floor)
    assert sum(excess_losses[-10:]) < 0.2 * sum(excess_losses[:10])
    images, captions = _coloured_squares(40, generator)
    scores = text_encoder_retrieval(model.eval(), images, captions, k=(1, 5), pool=20)
    assert scores["groups"] == 2
    assert scores["top1_class"] > 0.9 and scores["top1_class_chance"] < 0.4
    assert scores["top5"] > scores["top5_chance"]


def test_clip_loss_with_distinct_captions_is_clips_symmetric_cross_entropy():
    model = _tiny_clip()
    images, captions = torch.rand(4, 3, 8, 8), [f"a {colour} square" for colour in COLOURS]
    loss, _ = model.loss({"image": images, "caption": captions})
    logits = model.logit_scale * model.image_embedding(images) @ model.text_embedding(captions).T
    targets = torch.arange(4)
    expected = (torch.nn.functional.cross_entropy(logits, targets)
                + torch.nn.functional.cross_entropy(logits.T, targets)) / 2
    assert torch.allclose(loss, expected, atol=1e-6)


def test_clip_accuracy_counts_an_image_of_a_repeated_caption_as_right():
    model = _tiny_clip()
    with torch.no_grad():  # every image embeds alike: each caption's scores tie and argmax picks image 0
        model.image_encoder[-1].weight.zero_()
        model.image_encoder[-1].bias.fill_(1.0)
    captions = ["a red square", "a red square", "a blue square"]
    _, logs = model.loss({"image": torch.rand(3, 3, 8, 8), "caption": captions})
    # Image 0 is right for both red captions (the second's own image is 1, but says the same), wrong for blue.
    assert logs["accuracy"] == pytest.approx(2 / 3)


def test_layout_loss_adds_the_weighted_decoder_error_to_the_contrastive_loss():
    torch.manual_seed(0)
    plain = _tiny_clip()
    with_layout = ContrastiveTextImage(**{**plain.hparams, "layout_weight": 2.0, "layout_side": 4})
    with_layout.load_state_dict(plain.state_dict(), strict=False)
    with_layout.tokenizer = plain.tokenizer
    images, captions = torch.rand(4, 3, 8, 8), [f"a {colour} square" for colour in COLOURS]
    contrastive, _ = plain.loss({"image": images, "caption": captions})
    loss, logs = with_layout.loss({"image": images, "caption": captions})
    tokens, mask = with_layout.encode_text(captions)
    decoded = with_layout.layout_decoder(tokens, mask)
    assert decoded.shape == (4, 3, 4, 4)
    expected_error = ((decoded - torch.nn.functional.avg_pool2d(images, 2)) ** 2).mean()
    assert logs["layout_mse"] == pytest.approx(expected_error.item(), rel=1e-5)
    assert loss.item() == pytest.approx(contrastive.item() + 2.0 * expected_error.item(), rel=1e-5)
    assert plain.layout_decoder is None and "layout_mse" not in plain.loss({"image": images, "caption": captions})[1]


class _TwoSquareCaptions:
    def caption_vocabulary(self) -> list[str]:
        return [f"a {colour} square left of a square" for colour in COLOURS]


def _two_squares(n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """8x8 images of a left and a right half of two different colours: "a red square left of a blue square"."""
    names = list(COLOURS)
    left = torch.randint(len(names), (n,), generator=generator)
    right = (left + torch.randint(1, len(names), (n,), generator=generator)) % len(names)
    images = torch.zeros(n, 3, 8, 8)
    for image, a, b in zip(images, left.tolist(), right.tolist()):
        image[:, :, :4] = torch.tensor(COLOURS[names[a]])[:, None, None]
        image[:, :, 4:] = torch.tensor(COLOURS[names[b]])[:, None, None]
    return images, [f"a {names[a]} square left of a {names[b]} square" for a, b in zip(left.tolist(), right.tolist())]


def test_layout_loss_teaches_the_tokens_which_colour_stands_on_which_side():
    # The same words in another order draw another picture: only tokens that bind each colour to its
    # place (through word order) let the decoder's cells tell the two apart; a bag of words cannot.
    torch.manual_seed(0)
    model = ContrastiveTextImage(image_shape=(3, 8, 8), vocab_size=24, max_length=10, text_dim=32, text_depth=2,
                                 text_heads=2, embed_dim=16, image_channels=(8, 16), layout_weight=10.0,
                                 layout_side=2)
    model.prepare(_TwoSquareCaptions())
    _train(model, _two_squares, steps=400, batch_size=32, generator=torch.Generator().manual_seed(0))
    model.eval()
    prompts = ["a red square left of a blue square", "a blue square left of a red square"]
    with torch.no_grad():
        layouts = model.layout_decoder(*model.encode_text(prompts))  # (2, 3, 2, 2): columns are left, right
    red, blue = torch.tensor(COLOURS["red"]), torch.tensor(COLOURS["blue"])
    for layout, (left, right) in zip(layouts, [(red, blue), (blue, red)]):
        assert torch.allclose(layout[:, :, 0].mean(-1), left, atol=0.25)
        assert torch.allclose(layout[:, :, 1].mean(-1), right, atol=0.25)


def test_extra_files_round_trip_gives_the_same_encode_text():
    model = _tiny_clip()
    rebuilt = ContrastiveTextImage(**model.hparams)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.load_extra_files(model.extra_files())
    prompts = ["a red square", "a blue zebra"]
    for original, restored in zip(model.encode_text(prompts), rebuilt.encode_text(prompts)):
        assert torch.equal(original, restored)


def test_load_extra_files_refuses_a_missing_or_oversized_tokenizer():
    model = _tiny_clip()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        model.load_extra_files({})
    big = Tokenizer.train([" ".join(f"word{i}" for i in range(40))], max_length=6, vocab_size=100)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        model.load_extra_files({"tokenizer.json": big.to_json().encode()})


def test_clip_without_a_tokenizer_says_to_prepare_it():
    model = ContrastiveTextImage(image_shape=(3, 8, 8), image_channels=(8,))
    with pytest.raises(ConfigError, match="prepare"):
        model.encode_text(["a red square"])
