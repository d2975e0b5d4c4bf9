"""Settings stored inside PNGs (minisd/pipelines/png_settings.py) and a user's init image and mask
(minisd/pipelines/inputs.py): what is written reads back exactly, and every bad file is one DataError
naming it."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from minisd.errors import DataError, MinisdError
from minisd.pipelines import png_settings
from minisd.pipelines.inputs import load_image, load_mask, sha256_file
from minisd.pipelines.png_settings import (check_recorded_inputs, parameters_text, read_settings, save_png,
                                           settings_from_parameters)

MODEL_HASH = "0123456789abcdef" * 4
SETTINGS = {
    "prompt": "a photo of a seven, écrit à la main ✓",
    "negative_prompt": "blurry",
    "seed": 7,
    "steps": 20,
    "sampler": "dpmpp_2m",
    "guidance_scale": 4.0,
    "strength": 0.6,
    "width": 28,
    "height": 28,
    "num_images": 4,
    "model": "mnist",
    "model_hash": MODEL_HASH,
    "minisd_version": "0.1.0",
}


def _grey(values, mode: str = "L") -> Image.Image:
    return Image.fromarray(np.asarray(values, dtype=np.uint8), mode=mode)


def _png_with_text(path, **chunks: str) -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("L", (4, 4)).save(path, pnginfo=info)


# --------------------------------------------------------------------------------------
# Settings in PNGs
# --------------------------------------------------------------------------------------


def test_saved_settings_read_back_as_the_same_dict(tmp_path):
    settings = {**SETTINGS, "init_image": "in: put.png", "init_image_sha256": "ab" * 32}
    path = save_png(Image.new("L", (28, 28), 200), tmp_path / "out.png", settings)
    assert read_settings(path) == settings
    with Image.open(path) as image:
        assert np.asarray(image).tolist() == [[200] * 28] * 28  # the pixels are the image given


def test_parameters_chunk_has_the_web_ui_layout(tmp_path):
    path = save_png(Image.new("L", (28, 28)), tmp_path / "out.png", SETTINGS)
    with Image.open(path) as image:
        lines = image.text["parameters"].split("\n")
    assert lines == [
        SETTINGS["prompt"],
        "Negative prompt: blurry",
        "Steps: 20, Sampler: dpmpp_2m, CFG scale: 4.0, Seed: 7, Size: 28x28, Model hash: 0123456789, "
        "Model: mnist, Denoising strength: 0.6, Batch size: 4, Version: minisd 0.1.0",
    ]


def test_parameters_text_without_negative_prompt_or_prompt_has_no_empty_lines():
    settings_line = parameters_text(SETTINGS).split("\n")[-1]
    assert parameters_text({**SETTINGS, "negative_prompt": ""}).split("\n") == [SETTINGS["prompt"], settings_line]
    assert parameters_text({**SETTINGS, "prompt": "", "negative_prompt": None}).split("\n") == [settings_line]
    assert "Model hash" not in parameters_text({**SETTINGS, "model_hash": ""})  # no "Model hash: ," left


def test_a_list_of_prompts_is_written_one_prompt_a_line():
    text = parameters_text({**SETTINGS, "prompt": ["a seven", "a three"], "negative_prompt": ["thin", "bold"]})
    assert text.split("\n")[:3] == ["a seven", "a three", "Negative prompt: thin"]
    assert text.split("\n")[3] == "bold"


def test_parameters_text_parses_back_to_the_settings_even_with_commas_colons_and_newlines():
    settings = {**SETTINGS, "prompt": "two lines,\nof: prompt", "negative_prompt": "neg, two\nlines",
                "model": 'runs/a, b: "c"', "eta": 0.5, "spacing": "karras", "clip_denoised": True}
    parsed = settings_from_parameters(parameters_text(settings))
    assert parsed == {**settings, "model_hash": MODEL_HASH[:10]}  # the text shows the web UI's short hash


def test_a_png_with_only_a_web_ui_parameters_chunk_is_read_by_parsing_it(tmp_path):
    text = ("masterpiece, a cat\nNegative prompt: lowres\n"
            "Steps: 30, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x768, Model hash: 45dee52b, "
            "Clip skip: 2, Version: v1.10.1")
    _png_with_text(tmp_path / "webui.png", parameters=text)
    assert read_settings(tmp_path / "webui.png") == {
        "prompt": "masterpiece, a cat", "negative_prompt": "lowres", "steps": 30, "sampler": "Euler a",
        "guidance_scale": 7.0, "seed": 965400086, "width": 512, "height": 768, "model_hash": "45dee52b",
        "clip_skip": 2, "version": "v1.10.1"}


@pytest.mark.parametrize("make_file", [
    pytest.param(lambda path: Image.new("L", (4, 4)).save(path), id="png-without-text"),
    pytest.param(lambda path: _png_with_text(path, parameters="just a caption"), id="png-with-other-parameters"),
    pytest.param(lambda path: _png_with_text(path, Title="a drawing"), id="png-with-other-text"),
])
def test_read_settings_refuses_a_png_without_settings_naming_it(tmp_path, make_file):
    path = tmp_path / "plain.png"
    make_file(path)
    with pytest.raises(DataError, match=r"plain\.png has no minisd settings; was it made by `minisd generate`\?"):
        read_settings(path)


@pytest.mark.parametrize("make_file, message", [
    pytest.param(lambda path: path.write_text("not an image"), "is not an image", id="text-named-png"),
    pytest.param(lambda path: None, "does not exist", id="missing"),
    pytest.param(lambda path: path.mkdir(), "is a folder", id="folder"),
    pytest.param(lambda path: Image.new("RGB", (4, 4)).save(path, format="JPEG"), "is a JPEG image", id="jpeg"),
    pytest.param(lambda path: _png_with_text(path, minisd="[1, 2"), "are damaged", id="damaged-json"),
])
def test_read_settings_refuses_bad_files_naming_them(tmp_path, make_file, message):
    path = tmp_path / "bad.png"
    make_file(path)
    with pytest.raises(DataError, match=message) as error:
        read_settings(path)
    assert "bad.png" in str(error.value) and "\n" not in str(error.value)


def test_save_png_leaves_no_temporary_file_and_refuses_to_overwrite_unless_asked(tmp_path):
    path = save_png(Image.new("L", (4, 4)), tmp_path / "out.png", SETTINGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    with pytest.raises(MinisdError, match="already exists"):
        save_png(Image.new("L", (4, 4)), path, {**SETTINGS, "seed": 8})
    save_png(Image.new("L", (4, 4)), path, {**SETTINGS, "seed": 8}, overwrite=True)
    assert read_settings(path)["seed"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_failure_while_writing_leaves_the_previous_png_intact(tmp_path, monkeypatch):
    path = save_png(Image.new("L", (4, 4)), tmp_path / "out.png", SETTINGS)
    before = path.read_bytes()

    def write_half_then_fail(image, file, *args, **kwargs):
        file.write(b"\x89PNG\r\n\x1a\n half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", write_half_then_fail)
    with pytest.raises(MinisdError, match=r"could not write the image .*out\.png: No space left on device"):
        save_png(Image.new("L", (4, 4)), path, {**SETTINGS, "seed": 8}, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_recorded_init_image_must_be_present_and_unchanged(tmp_path):
    init = tmp_path / "init.png"
    Image.new("L", (4, 4), 10).save(init)
    settings = {**SETTINGS, "init_image": str(init), "init_image_sha256": sha256_file(init)}
    check_recorded_inputs(settings, "out.png")  # unchanged: passes
    Image.new("L", (4, 4), 11).save(init)
    with pytest.raises(DataError, match=r"init\.png has changed since out\.png was made"):
        check_recorded_inputs(settings, "out.png")
    init.unlink()
    with pytest.raises(DataError, match=r"init\.png, which no longer exists"):
        check_recorded_inputs(settings, "out.png")


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 5000  # several read chunks
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
    with pytest.raises(DataError, match="missing"):
        sha256_file(tmp_path / "missing")


# --------------------------------------------------------------------------------------
# Init images and masks
# --------------------------------------------------------------------------------------


def _truncated_png(path) -> None:
    """The first half of a PNG of noise (noise, so that the pixel data is most of the file)."""
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def test_load_image_of_the_right_size_gives_values_in_0_1(tmp_path):
    values = [[0, 51], [102, 255], [204, 153]]  # 3 rows (H), 2 columns (W)
    _grey(values).save(tmp_path / "init.png")
    image = load_image(tmp_path / "init.png", size=(3, 2), channels=1)
    assert image.shape == (1, 1, 3, 2) and image.dtype == torch.float32
    assert torch.allclose(image[0, 0], torch.tensor(values, dtype=torch.float32) / 255)


def test_load_image_refuses_another_size_saying_both_sizes(tmp_path):
    Image.new("L", (64, 32)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"the init image .*big\.png is 64x32; this model makes 28x28 images"):
        load_image(tmp_path / "big.png", size=(28, 28), channels=1)


@pytest.mark.parametrize("make_file, message", [
    pytest.param(lambda path: path.write_text("hello"), "is not an image", id="text-file"),
    pytest.param(lambda path: None, "does not exist", id="missing"),
    pytest.param(lambda path: path.mkdir(), "is a folder", id="folder"),
    pytest.param(lambda path: _truncated_png(path), "damaged or truncated", id="truncated"),
])
def test_load_image_refuses_bad_files_naming_them(tmp_path, make_file, message):
    path = tmp_path / "init.png"
    make_file(path)
    with pytest.raises(DataError, match=message) as error:
        load_image(path, size=(28, 28), channels=1)
    assert "init.png" in str(error.value)


def test_transparent_pixels_are_composited_on_black(tmp_path):
    rgba = np.array([[[255, 255, 255, 0], [255, 255, 255, 255], [255, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    rgb = load_image(tmp_path / "alpha.png", size=(1, 3), channels=3)
    assert rgb[0, :, 0].tolist() == [[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]  # (C, W)


def test_colour_image_is_read_as_grey_for_a_one_channel_model_and_grey_as_rgb(tmp_path):
    Image.new("RGB", (2, 2), (255, 0, 0)).save(tmp_path / "red.png")
    grey = load_image(tmp_path / "red.png", size=(2, 2), channels=1)
    assert grey.shape == (1, 1, 2, 2)
    assert torch.allclose(grey, torch.full_like(grey, 76 / 255))  # ITU-R 601 luma of pure red: 0.299 * 255
    _grey([[0, 255]]).save(tmp_path / "grey.png")
    rgb = load_image(tmp_path / "grey.png", size=(1, 2), channels=3)
    assert rgb.shape == (1, 3, 1, 2) and rgb[0, :, 0].tolist() == [[0.0, 1.0]] * 3


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png", size=(1, 3), channels=1)
    assert torch.allclose(image[0, 0, 0], torch.tensor([0.0, 32768 / 65535, 1.0]))


def test_exif_orientation_is_applied_before_the_size_check(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 3 wide, 2 high; shown rotated 90 degrees: 2 wide, 3 high
    Image.new("L", (3, 2)).save(tmp_path / "photo.png", exif=exif)
    assert load_image(tmp_path / "photo.png", size=(3, 2), channels=1).shape == (1, 1, 3, 2)


def test_load_mask_is_one_where_white_with_threshold_one_half(tmp_path):
    _grey([[0, 127, 128, 255]]).save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", size=(1, 4))
    assert mask.shape == (1, 1, 1, 4) and mask.dtype == torch.float32
    assert mask[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_load_mask_refuses_an_all_black_mask(tmp_path):
    _grey([[0, 127], [10, 0]]).save(tmp_path / "black.png")
    with pytest.raises(DataError, match=r"the mask .*black\.png has no white pixels: nothing to repaint"):
        load_mask(tmp_path / "black.png", size=(2, 2))


def test_load_mask_refuses_another_size(tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "mask.png")
    with pytest.raises(DataError, match=r"the mask .*mask\.png is 8x8; this model makes 28x28"):
        load_mask(tmp_path / "mask.png", size=(28, 28))


def test_settings_json_chunk_has_sorted_keys(tmp_path):
    path = save_png(Image.new("L", (4, 4)), tmp_path / "out.png", SETTINGS)
    with Image.open(path) as image:
        assert image.text[png_settings.SETTINGS_CHUNK] == json.dumps(SETTINGS, sort_keys=True)
