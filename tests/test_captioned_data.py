"""Tests for captioned datasets: attribute measures, caption grammars and their parsers, shapes, image folders."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from minisd.data import CaptionedDataset, load_captioned, load_dataset, load_image_folder, make_shapes
from minisd.data.attributes import (
    CLOTHING_ATTRIBUTES, CLOTHING_THRESHOLDS, DIGIT_ATTRIBUTES, DIGIT_THRESHOLDS, measure_clothing, measure_digit,
    tercile_thresholds,
)
from minisd.data.captions import (
    CLOTHING_GRAMMAR, DIGIT_GRAMMAR, ClassCaptionGrammar, parse_clothing_prompt, parse_digit_prompt, tidy,
)
from minisd.data.shapes import (
    COLOUR_RGB, COLOUR_WORDS, COLOURS, POSITION_WORDS, RELATION_WORDS, RELATIONS, SHAPE_WORDS, SHAPES_GRAMMAR,
    SIZE_WORDS, parse_shapes_prompt, shapes_prompt,
)
from minisd.errors import ConfigError, DataError
from real_data import REAL_DATA_DIR, needs_real_data



def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def synthetic_dataset(grammar: ClassCaptionGrammar, num_images: int = 300, seed: int = 0) -> CaptionedDataset:
    """Random labels and attribute bins (no image content needed to test captions)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(10, (num_images,), generator=generator)
    bins = {name: torch.randint(3, (num_images,), generator=generator) for name in grammar.attributes}
    return CaptionedDataset(torch.zeros(num_images, 1, 4, 4), labels, [str(k) for k in range(10)], "synthetic",
                            "train", attributes=bins, grammar=grammar)


@pytest.fixture(scope="module")
def shapes() -> CaptionedDataset:
    return make_shapes(400, seed=7)


# ---------------------------------------------------------------- attribute measures


def stroke(angle_degrees: float, width: float, length: float = 16.0, shear: float = 0.0) -> torch.Tensor:
    """An anti-aliased straight stroke through the centre of a (1, 1, 28, 28) image; x' = x + shear * y_up."""
    size = 28
    pixel = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    y_up, x = -pixel.view(-1, 1), pixel.view(1, -1)
    x = x - shear * y_up  # a shear to the right moves the top of the stroke right
    direction = (math.sin(math.radians(angle_degrees)), math.cos(math.radians(angle_degrees)))  # from vertical
    along = x * direction[0] + y_up * direction[1]
    across = x * direction[1] - y_up * direction[0]
    inside = torch.minimum(width / 2 - across.abs(), length / 2 - along.abs())
    return (inside + 0.5).clamp(0, 1).view(1, 1, size, size)


def test_a_thicker_stroke_measures_thicker_at_every_angle():
    widths, length = torch.tensor([1.5, 2.5, 3.5, 4.5]), 16.0
    for angle in (0, 15, 30, 45, 90):
        thickness = measure_digit(torch.cat([stroke(angle, float(width), length) for width in widths]))["thickness"]
        assert (thickness.diff() > 0.4).all(), (angle, thickness)
        # A w x L rectangle's 2 * area / perimeter is w L / (L + w): its ends make it a little less than w.
        assert torch.allclose(thickness, widths * length / (length + widths), atol=0.3), (angle, thickness)


def test_a_sheared_stroke_measures_slanted_with_the_sign_of_its_lean():
    slant = measure_digit(torch.cat([stroke(0, 3, shear=shear) for shear in (-0.4, 0.0, 0.4)]))["slant"]
    assert slant[0] < -0.3 and abs(slant[1]) < 0.02 and slant[2] > 0.3, slant
    assert torch.allclose(slant[2], torch.atan(torch.tensor(0.4)), atol=0.05)


def test_a_wider_shape_measures_wider_and_slant_does_not_widen_it():
    rectangles = torch.zeros(2, 1, 28, 28)
    rectangles[0, :, 6:22, 11:17] = 1  # 6 wide
    rectangles[1, :, 6:22, 8:20] = 1   # 12 wide
    width = measure_digit(rectangles)["width"]
    assert torch.allclose(width, torch.tensor([6.0, 12.0]), atol=0.6), width
    upright, leaning = measure_digit(torch.cat([stroke(0, 3), stroke(0, 3, shear=0.5)]))["width"]
    assert abs(leaning - upright) < 0.3, (upright, leaning)


def test_clothing_measures_order_brightness_and_size():
    garments = torch.zeros(3, 1, 28, 28)
    garments[0, :, 4:24, 4:24] = 0.3
    garments[1, :, 4:24, 4:24] = 0.9
    garments[2, :, 10:18, 10:18] = 0.9
    measures = measure_clothing(garments)
    assert torch.allclose(measures["brightness"], torch.tensor([0.3, 0.9, 0.9]))
    assert torch.allclose(measures["size"], torch.tensor([400, 400, 64]) / 784)


@needs_real_data
def test_the_bin_thresholds_are_the_train_split_terciles_to_two_decimals():
    for name, measure, thresholds, measured in (
        ("mnist", measure_digit, DIGIT_THRESHOLDS, ("thickness", "width")),
        ("fashion-mnist", measure_clothing, CLOTHING_THRESHOLDS, ("brightness", "size")),
    ):
        train = load_dataset(name, "train", data_dir=REAL_DATA_DIR, download=False)
        recomputed = tercile_thresholds(measure(train.images), train.labels)
        for attribute in measured:
            difference = np.abs(np.array(recomputed[attribute]) - np.array(thresholds[attribute]))
            assert difference.max() <= 0.005, (name, attribute, recomputed[attribute])


@needs_real_data
def test_mnist_captions_say_each_images_own_measured_attributes():
    dataset = load_captioned("mnist", "test", data_dir=REAL_DATA_DIR, num_images=500)
    assert set(dataset.attributes) == set(DIGIT_ATTRIBUTES) and len(dataset) == 500
    torch.manual_seed(0)
    for index, caption in enumerate(dataset.captions(torch.arange(500))):
        parsed = parse_digit_prompt(caption)
        assert parsed["label"] == dataset.labels[index]
        for attribute in DIGIT_ATTRIBUTES:
            assert parsed[attribute] in (None, dataset.attributes[attribute][index]), (caption, attribute)
    fashion = load_captioned("fashion-mnist", "test", data_dir=REAL_DATA_DIR, num_images=8, size=32)
    assert fashion.images.shape == (8, 1, 32, 32) and set(fashion.attributes) == set(CLOTHING_ATTRIBUTES)


# ---------------------------------------------------------------- caption grammars


def test_the_grammars_say_exactly_the_measured_attributes():
    images = torch.rand(2, 1, 28, 28)
    assert DIGIT_GRAMMAR.attributes == DIGIT_ATTRIBUTES == tuple(measure_digit(images))
    assert CLOTHING_GRAMMAR.attributes == CLOTHING_ATTRIBUTES == tuple(measure_clothing(images))


@pytest.mark.parametrize("grammar", [DIGIT_GRAMMAR, CLOTHING_GRAMMAR], ids=["digits", "clothing"])
def test_captions_are_reproducible_under_a_seed_and_vary_across_seeds(grammar):
    dataset = synthetic_dataset(grammar)
    indices = torch.arange(50)
    torch.manual_seed(3)
    first = dataset.captions(indices)
    torch.manual_seed(3)
    assert dataset.captions(indices) == first
    torch.manual_seed(4)
    assert sum(a != b for a, b in zip(dataset.captions(indices), first)) > 25


def test_the_acceptance_prompt_is_a_train_caption_of_a_seven():
    sevens = synthetic_dataset(DIGIT_GRAMMAR, 2000)
    sevens.labels[:] = 7
    torch.manual_seed(0)
    captions = sevens.captions(torch.arange(2000))
    assert "a handwritten digit 7" in captions
    # Captions naming only the class are common, but most say something more.
    only_class = sum(len(words(caption)) <= 4 for caption in captions) / len(captions)
    assert 0.15 < only_class < 0.6, only_class


@pytest.mark.parametrize("grammar", [DIGIT_GRAMMAR, CLOTHING_GRAMMAR, SHAPES_GRAMMAR],
                         ids=["digits", "clothing", "shapes"])
def test_every_caption_word_is_in_the_caption_vocabulary(grammar, shapes):
    dataset = shapes if grammar is SHAPES_GRAMMAR else synthetic_dataset(grammar, 400)
    vocabulary = {word for caption in dataset.caption_vocabulary() for word in words(caption)}
    torch.manual_seed(0)
    for templates in ("train", "heldout"):
        for caption in dataset.captions(torch.arange(len(dataset)), templates=templates):
            assert set(words(caption)) <= vocabulary, caption


@pytest.mark.parametrize("grammar", [DIGIT_GRAMMAR, CLOTHING_GRAMMAR, SHAPES_GRAMMAR],
                         ids=["digits", "clothing", "shapes"])
def test_heldout_captions_are_new_sentences_made_of_training_words(grammar, shapes):
    dataset = shapes if grammar is SHAPES_GRAMMAR else synthetic_dataset(grammar, 400)
    torch.manual_seed(0)
    train = dataset.captions(torch.arange(len(dataset)))
    torch.manual_seed(0)
    heldout = dataset.captions(torch.arange(len(dataset)), templates="heldout")
    assert not set(train) & set(heldout)
    train_words = {word for caption in train for word in words(caption)}
    assert {word for caption in heldout for word in words(caption)} <= train_words


@pytest.mark.parametrize("grammar", [DIGIT_GRAMMAR, CLOTHING_GRAMMAR, SHAPES_GRAMMAR],
                         ids=["digits", "clothing", "shapes"])
def test_every_caption_fits_the_default_tokenizer_length(grammar, shapes):
    # minisd.text.tokenizer: 24 tokens with [BOS]; words and runs of punctuation are tokens.
    dataset = shapes if grammar is SHAPES_GRAMMAR else synthetic_dataset(grammar, 400)
    longest = max(len(re.findall(r"\w+|[^\w\s]+", caption)) for caption in dataset.caption_vocabulary())
    assert longest <= 23


def test_an_unknown_template_set_is_a_config_error():
    with pytest.raises(ConfigError, match="heldout"):
        synthetic_dataset(DIGIT_GRAMMAR).captions(torch.arange(2), templates="test")


def test_articles_follow_the_sound_of_the_next_word():
    assert tidy("a  8 and a eight , a one and an 7 and a upright 1") == (
        "an 8 and an eight, a one and a 7 and an upright 1")


def test_a_word_with_two_meanings_is_refused():
    with pytest.raises(ValueError, match="thin"):
        ClassCaptionGrammar({"digit": (("0",), ("thin",))}, {"thickness": ({"adjectives": ("thin",)}, {}, {})},
                            {"train": ("a {adjectives} {digit}",), "heldout": ()})


@pytest.mark.parametrize("templates", ["train", "heldout"])
def test_parse_digit_prompt_gives_back_the_class_and_every_said_attribute(templates):
    dataset = synthetic_dataset(DIGIT_GRAMMAR, 300)
    torch.manual_seed(1)
    said = 0
    for index, caption in enumerate(dataset.captions(torch.arange(300), templates=templates)):
        parsed = parse_digit_prompt(caption)
        assert parsed["label"] == dataset.labels[index], caption
        for attribute in DIGIT_ATTRIBUTES:
            assert parsed[attribute] in (None, dataset.attributes[attribute][index]), caption
            said += parsed[attribute] is not None
    assert said > 100  # the parser reads attribute words, not only classes
    assert parse_digit_prompt("A thick, slanted handwritten 7") == {
        "label": 7, "thickness": 2, "slant": 2, "width": None}
    assert parse_digit_prompt("the number seven, slanted to the left") == {
        "label": 7, "thickness": None, "slant": 0, "width": None}


def test_parse_clothing_prompt_gives_back_the_class_and_every_said_attribute():
    dataset = synthetic_dataset(CLOTHING_GRAMMAR, 300)
    torch.manual_seed(2)
    for index, caption in enumerate(dataset.captions(torch.arange(300))):
        parsed = parse_clothing_prompt(caption)
        assert parsed["label"] == dataset.labels[index], caption
        for attribute in CLOTHING_ATTRIBUTES:
            assert parsed[attribute] in (None, dataset.attributes[attribute][index]), caption
    assert parse_clothing_prompt("a dark pair of trousers") == {"label": 1, "brightness": 0, "size": None}
    assert parse_clothing_prompt("a large, light coat") == {"label": 4, "brightness": 2, "size": 2}
    assert parse_clothing_prompt("a t-shirt")["label"] == 0  # not the "shirt" inside it


def test_a_prompt_asking_for_two_digits_is_a_config_error():
    with pytest.raises(ConfigError, match="two different label"):
        parse_digit_prompt("a 3 and a 7")


# ---------------------------------------------------------------- shapes


def test_shapes_are_reproducible_from_the_seed_and_differ_across_seeds():
    first, again, other = make_shapes(64, seed=5), make_shapes(64, seed=5), make_shapes(64, seed=6)
    assert torch.equal(first.images, again.images)
    assert all(torch.equal(first.attributes[key], again.attributes[key]) for key in first.attributes)
    assert not torch.equal(first.images, other.images)
    assert first.images.shape == (64, 3, 32, 32) and 0 <= first.images.min() and first.images.max() <= 1


def test_shapes_pixels_match_the_attributes(shapes):
    """Each object is one blob of its own colour at its centre, two objects never touch, and relations hold."""
    palette = torch.tensor([COLOUR_RGB[name] for name in COLOURS])
    for index in range(len(shapes)):
        image, count = shapes.images[index], int(shapes.attributes["num_objects"][index])
        blobs, num_blobs = ndimage.label((image.amax(0) > 0.02).numpy())
        assert num_blobs == count, index
        centroids = []
        for slot in range(count):
            x, y = shapes.attributes["centre"][index, slot].tolist()
            colour = palette[shapes.attributes["colour"][index, slot]]
            # The pixel at the centre has the object's colour (at least half covered), and so, fully,
            # has the object's most covered pixel.
            at_centre = image[:, int(y), int(x)]
            coverage = at_centre.max() / colour.max()
            assert coverage >= 0.5 and torch.allclose(at_centre, coverage * colour, atol=1e-6), index
            blob = torch.from_numpy(blobs == blobs[int(y), int(x)])
            brightest = image[:, blob].sum(0).argmax()
            assert torch.allclose(image[:, blob][:, brightest], colour, atol=1e-6), index
            rows, columns = blob.nonzero(as_tuple=True)
            centroids.append((columns.float().mean() + 0.5, rows.float().mean() + 0.5))
        if count == 1:
            row, column = divmod(int(shapes.attributes["position"][index, 0]), 3)
            assert int(centroids[0][0] // (32 / 3)) == column and int(centroids[0][1] // (32 / 3)) == row, index
        else:
            (x0, y0), (x1, y1) = centroids
            relation = RELATIONS[shapes.attributes["relation"][index]]
            expected = {"left of": x0 < x1 - 10, "right of": x0 > x1 + 10, "above": y0 < y1 - 10, "below": y0 > y1 + 10}
            assert expected[relation], (index, relation, centroids)


def test_large_shapes_cover_more_pixels_than_small_ones(shapes):
    single = shapes.attributes["num_objects"] == 1
    area = (shapes.images.amax(1) > 0.5).sum((1, 2)).float()
    small = area[single & (shapes.attributes["size"][:, 0] == 0)]
    large = area[single & (shapes.attributes["size"][:, 0] == 1)]
    assert small.max() < large.min(), (small.max(), large.min())


@pytest.mark.parametrize("templates", ["train", "heldout"])
def test_parse_shapes_prompt_gives_back_the_attributes_of_every_caption(shapes, templates):
    torch.manual_seed(0)
    attributes = shapes.attributes
    for index, caption in enumerate(shapes.captions(torch.arange(len(shapes)), templates=templates)):
        objects = parse_shapes_prompt(caption)
        assert len(objects) == attributes["num_objects"][index], caption
        for slot, parsed in enumerate(objects):
            assert parsed["shape"] == attributes["shape"][index, slot], caption
            assert parsed["colour"] == attributes["colour"][index, slot], caption
            assert parsed["size"] in (None, attributes["size"][index, slot]), caption
            assert parsed["position"] in (None, attributes["position"][index, slot]), caption
        relation = int(attributes["relation"][index])
        assert objects[0]["relation"] == (None if relation < 0 else relation), caption
        assert parse_shapes_prompt(shapes_prompt(objects)) == objects, caption


def test_every_shapes_word_has_one_meaning():
    tables = (SHAPE_WORDS, COLOUR_WORDS, SIZE_WORDS, POSITION_WORDS, RELATION_WORDS)
    said = [word for table in tables for words in table for word in words]
    assert len(said) == len(set(said))


def test_shapes_prompt_writes_the_canonical_caption():
    objects = parse_shapes_prompt("a small red circle to the left of a blue square")
    assert objects[0]["relation"] == RELATIONS.index("left of") and objects[1]["size"] is None
    assert shapes_prompt(objects) == "a small red circle to the left of a blue square"
    assert shapes_prompt([{"shape": 0, "colour": 0, "size": 1, "position": 4}]) == "a large red circle in the centre"
    with pytest.raises(ConfigError, match="two different colour"):
        parse_shapes_prompt("a red blue circle")


# ---------------------------------------------------------------- image folders


def save_png(path: Path, size: tuple[int, int] = (40, 20), colour: tuple[int, int, int] = (255, 0, 0)) -> None:
    Image.new("RGB", size, colour).save(path)


def test_an_image_folder_with_metadata_skips_and_names_missing_and_corrupt_files(tmp_path, capsys):
    save_png(tmp_path / "red.png")
    save_png(tmp_path / "green.png", colour=(0, 255, 0))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    save_png(tmp_path / "uncaptioned.png")
    lines = [{"file_name": "red.png", "text": "a red picture"}, {"file_name": "missing.png", "text": "gone"},
             {"file_name": "corrupt.png", "text": "broken"}, {"file_name": "green.png", "text": "a green picture"},
             {"file_name": "uncaptioned.png", "text": " "}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")

    dataset = load_image_folder(tmp_path, size=16)

    assert dataset.images.shape == (2, 3, 16, 16) and dataset.labels.tolist() == [0, 0]
    assert dataset.captions(torch.arange(2)) == ["a red picture", "a green picture"]
    assert torch.allclose(dataset.images[1, :, 8, 8], torch.tensor([0.0, 1.0, 0.0]))
    assert [name for name, _ in dataset.skipped] == ["uncaptioned.png", "metadata.jsonl line 6", "missing.png",
                                                     "corrupt.png"]
    report = capsys.readouterr().err
    assert "read 2 images with captions" in report and "skipped 4" in report
    assert "missing.png (file not found)" in report and "corrupt.png (cannot read the image" in report


def test_an_image_folder_with_text_files_resizes_the_shorter_side_and_crops_the_centre(tmp_path, capsys):
    # 60x30: blue at both ends, red in the middle 40 columns; resized to 32x16, the red spans columns
    # 5.3 to 26.7, and the middle 16x16 is all red.
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, :, 2] = 255
    pixels[:, 10:50] = (255, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("a red band\n")
    save_png(tmp_path / "uncaptioned.png")
    (tmp_path / "orphan.txt").write_text("no image for me")

    dataset = load_image_folder(tmp_path, size=16, channels=1)

    assert dataset.images.shape == (1, 1, 16, 16)
    red_as_grey = 0.299  # PIL's "L" conversion of pure red
    assert torch.allclose(dataset.images[0], torch.full((1, 16, 16), red_as_grey), atol=0.01)
    assert dataset.captions(torch.tensor([0]), templates="heldout") == ["a red band"]
    assert sorted(name for name, _ in dataset.skipped) == ["orphan.txt", "uncaptioned.png"]
    assert "skipped 2" in capsys.readouterr().err
    assert dataset.subset(torch.tensor([0])).captions(torch.tensor([0])) == ["a red band"]


def test_an_image_folder_without_usable_captioned_images_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere", size=16)
    with pytest.raises(DataError, match="no captions"):
        load_image_folder(tmp_path, size=16)  # empty
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "missing.png", "text": "gone"}) + "\n")
    with pytest.raises(DataError, match="no usable image"):
        load_image_folder(tmp_path, size=16)


# ---------------------------------------------------------------- load_captioned and the dataset interface


def test_load_captioned_shapes_splits_differ_and_batches_carry_captions():
    train = load_captioned("shapes", "train", num_images=16)
    test = load_captioned("shapes", "test", num_images=16)
    assert not torch.equal(train.images, test.images) and train.split == "train"
    torch.manual_seed(0)
    batch = train.batch(torch.tensor([3, 1]))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["label"].tolist() == train.labels[[3, 1]].tolist()
    assert len(batch["caption"]) == 2 and all(isinstance(caption, str) for caption in batch["caption"])
    item = train[3]
    assert torch.equal(item["image"], train.images[3]) and isinstance(item["caption"], str)


def test_load_captioned_reads_a_folder_at_its_own_size_or_the_size_asked_for(tmp_path):
    for name in ("a", "b", "c"):
        save_png(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(f"picture {name}")
    assert load_captioned(str(tmp_path)).images.shape == (3, 3, 20, 20)  # 40x20 pictures: their shorter side
    dataset = load_captioned(str(tmp_path), size=8, num_images=2)
    assert dataset.images.shape == (2, 3, 8, 8) and dataset.captions(torch.arange(2)) == ["picture a", "picture b"]


def test_load_captioned_refuses_an_unknown_name():
    with pytest.raises(DataError, match="unknown captioned dataset 'mnsit'"):
        load_captioned("mnsit")
