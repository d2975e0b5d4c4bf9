"""What the page does, without Gradio (:mod:`minisd.web.studio`): models by name, checked requests, generations
as streams of steps, the PNGs they write (which ``minisd generate --from`` makes again, pixel for pixel), and the
pictures of the VAE and diffusion chapters, all with the shipped models and a few sampling steps.
"""

import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from minisd.cli import main
from minisd.errors import MinisdError, SamplingError
from minisd.shipped import SHIPPED_MODELS
from minisd.models.model_folder import model_hash
from minisd.pipelines import TextToImagePipeline
from minisd.pipelines.inputs import load_image, sha256_file
from minisd.pipelines.png_settings import read_settings
from minisd.version import __version__
from minisd.web.limits import MAX_SEED, Limits, RequestError
from minisd.web.studio import INIT_IMAGE_FILE, MASK_FILE, PAGE_SAMPLERS, Generation, Studio, find_models

DIGIT = "a handwritten digit 7"
SHAPE = "a red circle"
PROMPTS = {"mnist": DIGIT, "shapes": SHAPE}
SIZES = {"mnist": 28, "shapes": 32}  # square images; mnist grey, shapes RGB


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels_of(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


def drawing(model: str) -> Image.Image:
    """An init image the model could have made: a white seven on black (mnist), a red disc on grey (shapes)."""
    side = SIZES[model]
    if model == "mnist":
        image = Image.new("L", (side, side), 0)
        ImageDraw.Draw(image).line([(7, 6), (21, 6), (12, 23)], fill=255, width=3)
    else:
        image = Image.new("RGB", (side, side), (60, 60, 60))
        ImageDraw.Draw(image).ellipse([6, 6, 25, 25], fill=(230, 20, 20))
    return image


def right_half_mask(side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rectangle([side // 2, 0, side - 1, side - 1], fill=255)
    return mask


def run_all(studio: Studio, request) -> tuple[list[dict], Generation]:
    events = list(studio.generate(request))
    assert "done" in events[-1] and all("done" not in event for event in events[:-1])
    return events[:-1], events[-1]["done"]


def minisd_generate_from(png: Path, out: Path) -> None:
    # One thread, as the studio runs (threads=1): float sums in another order can move a pixel by 1/255.
    assert main(["generate", "--from", str(png), "--out", str(out), "--threads", "1"]) == 0


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Studio:
    # One thread, as minisd_generate_from asks of --from (--threads 1): the same sums in the same order.
    return Studio(find_models(SHIPPED_MODELS, None), tmp_path_factory.mktemp("outputs"),
                  vae=SHIPPED_MODELS / "vae2d", threads=1)


@pytest.fixture(scope="module")
def two_images(studio) -> tuple[list[dict], Generation]:
    """One request of 2 images, 3 steps, seed 7, with the model's own sampler and guidance."""
    torch.set_num_threads(1)
    return run_all(studio, studio.request(prompt=DIGIT, model="mnist", steps=3, num_images=2, seed=7))


# ---------------------------------------------------------------- models by name


def test_find_models_lists_the_shipped_text_to_image_models_by_name():
    models = find_models(SHIPPED_MODELS, None)
    assert models == {name: SHIPPED_MODELS / name for name in ("mnist", "mnist-fast", "shapes")}
    assert "vae2d" not in models and (SHIPPED_MODELS / "vae2d").is_dir()  # a VAE is not a text-to-image model


def test_find_models_adds_a_run_only_when_it_has_a_model_folder(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(SHIPPED_MODELS / "mnist", runs / "x" / "model")
    (runs / "no_model_index" / "model").mkdir(parents=True)  # a run still training: no model folder yet
    (runs / "empty").mkdir()
    shutil.copytree(SHIPPED_MODELS / "vae2d", runs / "vae")  # a run of another kind
    (runs / "notes.txt").write_text("not a run\n")
    models = find_models(SHIPPED_MODELS, runs)
    assert models == {**{name: SHIPPED_MODELS / name for name in ("mnist", "mnist-fast", "shapes")},
                      str(runs / "x"): runs / "x"}
    assert find_models(tmp_path / "no-checkpoints", runs) == {str(runs / "x"): runs / "x"}
    assert find_models(SHIPPED_MODELS, tmp_path / "no-runs") == find_models(SHIPPED_MODELS, None)

    # The run is served under that name.
    served = Studio(models, tmp_path / "outputs")
    request = served.request(prompt=DIGIT, model=str(runs / "x"), steps=1)
    _, generation = run_all(served, request)
    assert read_settings(generation.files[0])["model_hash"] == model_hash(SHIPPED_MODELS / "mnist")


def test_a_studio_without_models_is_refused(tmp_path):
    with pytest.raises(MinisdError, match="no text-to-image model"):
        Studio({}, tmp_path)


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize("model", ["nope", "../checkpoints/mnist", "/etc/passwd", str(SHIPPED_MODELS / "mnist"),
                                   "checkpoints/mnist", "./mnist", "MNIST", "vae2d", "", None, 3, ["mnist"]])
def test_a_model_the_server_does_not_offer_is_refused_and_never_read_as_a_path(studio, model):
    with pytest.raises(RequestError) as caught:
        studio.request(prompt=DIGIT, model=model)
    assert f"unknown model {model!r}" in str(caught.value)
    assert "this server offers mnist, mnist-fast, shapes" in str(caught.value)
    assert set(studio._pipelines) <= {"mnist", "mnist-fast", "shapes"}  # nothing was loaded from a path


@pytest.mark.parametrize("sampler", ["nonsense", "ode", "annealed_langevin", "DDIM", 3])
def test_a_sampler_the_page_does_not_offer_is_refused_naming_those_it_does(studio, sampler):
    with pytest.raises(RequestError, match="unknown sampler") as caught:
        studio.request(prompt=DIGIT, model="mnist", sampler=sampler)
    assert ", ".join(PAGE_SAMPLERS) in str(caught.value)


def test_each_value_goes_through_the_limits(studio):
    for values, words in [({"prompt": ""}, "the prompt is empty"), ({"prompt": 7}, "must be text"),
                          ({"steps": 0}, "the number of steps"), ({"steps": "abc"}, "the number of steps"),
                          ({"num_images": 9}, "the number of images"), ({"seed": -1}, "the seed"),
                          ({"guidance_scale": float("nan")}, "the guidance scale"),
                          ({"negative_prompt": "x" * 301}, "the negative prompt is 301 characters")]:
        with pytest.raises(RequestError, match=words):
            studio.request(**{"prompt": DIGIT, "model": "mnist", **values})
    init = png_bytes(drawing("mnist"))
    with pytest.raises(RequestError, match="the strength must be a number above 0"):
        studio.request(prompt=DIGIT, model="mnist", init_image=init, strength=0)


def test_a_mask_without_an_init_image_is_refused(studio):
    with pytest.raises(RequestError, match="upload the image as well as the mask"):
        studio.request(prompt=DIGIT, model="mnist", mask=png_bytes(right_half_mask(28)))


def test_a_mask_of_another_size_than_the_image_is_refused_with_both_sizes(studio):
    with pytest.raises(RequestError, match="the mask is 14x14 pixels but the image is 28x28"):
        studio.request(prompt=DIGIT, model="mnist", init_image=png_bytes(drawing("mnist")),
                       mask=png_bytes(right_half_mask(14)))


@pytest.mark.parametrize("init_image, words", [(b"not an image at all", "the init image is not an image"),
                                               ("init.png", "the init image must be an image, got str"),
                                               (np.zeros((28, 28)), "must be an image, got ndarray")])
def test_an_init_image_that_is_not_an_image_is_refused(studio, init_image, words):
    with pytest.raises(RequestError, match=words):
        studio.request(prompt=DIGIT, model="mnist", init_image=init_image)


def test_a_decoded_image_over_the_pixel_limit_is_refused(tmp_path):
    small = Studio({"mnist": SHIPPED_MODELS / "mnist"}, tmp_path, limits=Limits(max_upload_pixels=28 * 28))
    assert small.request(prompt=DIGIT, model="mnist", init_image=drawing("mnist")).init_image.size == (28, 28)
    with pytest.raises(RequestError, match="the init image is 29x28 pixels"):
        small.request(prompt=DIGIT, model="mnist", init_image=Image.new("L", (29, 28)))


def test_a_seed_of_none_is_drawn_in_range_and_reported(studio):
    drawn = [studio.request(prompt=DIGIT, model="mnist", seed=None).seed for _ in range(4)]
    assert all(isinstance(seed, int) and 0 <= seed <= MAX_SEED for seed in drawn)
    assert len(set(drawn)) > 1
    request = studio.request(prompt=DIGIT, model="mnist", seed=None, steps=1)
    _, generation = run_all(studio, request)
    assert generation.settings["seed"] == request.seed == read_settings(generation.files[0])["seed"]
    assert generation.files[0].name == f"minisd-{request.seed}-0.png"


def test_a_given_seed_is_kept_exactly(studio):
    assert studio.request(prompt=DIGIT, model="mnist", seed=MAX_SEED).seed == MAX_SEED
    assert studio.request(prompt=DIGIT, model="mnist", seed="9007199254740993").seed == 9007199254740993


def test_an_init_image_is_turned_as_its_exif_orientation_says_like_minisd_generate_does(studio, tmp_path):
    # A top band, stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to view").
    band = np.zeros((28, 28), np.uint8)
    band[:6] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = tmp_path / "sideways.jpg"
    Image.fromarray(band).save(jpeg, format="JPEG", quality=100, exif=exif.tobytes())
    request = studio.request(prompt=DIGIT, model="mnist", steps=1, init_image=jpeg.read_bytes())
    _, generation = run_all(studio, request)
    as_cli_reads_it = load_image(jpeg, size=(28, 28), channels=1)
    as_the_page_used_it = load_image(generation.inputs[0], size=(28, 28), channels=1)
    assert as_cli_reads_it[0, 0, :, -6:].mean() > 0.9  # turned: the band is on the right
    assert torch.equal(as_the_page_used_it, as_cli_reads_it)


# ---------------------------------------------------------------- generations


def test_generate_yields_one_event_per_step_then_done(two_images):
    steps, generation = two_images
    assert [event["step"] for event in steps] == [1, 2, 3]
    assert all(event["steps"] == 3 for event in steps)
    times = [event["t"] for event in steps]
    assert all(isinstance(t, float) and 0 <= t <= 1 for t in times) and times == sorted(times, reverse=True)
    assert all(isinstance(event["preview"], Image.Image) and min(event["preview"].size) > 0 for event in steps)
    assert all(set(event) == {"step", "steps", "t", "preview"} for event in steps)
    assert isinstance(generation, Generation)


def test_generate_writes_one_png_per_image_with_every_setting(studio, two_images):
    _, generation = two_images
    assert [path.name for path in generation.files] == ["minisd-7-0.png", "minisd-7-1.png"]
    assert all(path.parent == generation.files[0].parent for path in generation.files)
    assert generation.files[0].parent.parent == studio.outputs and generation.inputs == []
    expected = {"prompt": DIGIT, "negative_prompt": None, "seed": 7, "steps": 3, "sampler": "dpmpp_2m",
                "guidance_scale": 4.0, "strength": None, "width": 28, "height": 28, "num_images": 2, "model": "mnist",
                "model_hash": model_hash(SHIPPED_MODELS / "mnist"), "minisd_version": __version__}
    for index, path in enumerate(generation.files):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (28, 28)
        settings = read_settings(path)
        assert {key: settings.get(key) for key in expected} == expected
        assert settings["image_index"] == index
        assert {key: value for key, value in settings.items() if key != "image_index"} == generation.settings
    assert pixels_of(generation.files[0]) != pixels_of(generation.files[1])


def test_minisd_generate_from_the_second_png_makes_the_identical_image(two_images, tmp_path, monkeypatch):
    _, generation = two_images
    monkeypatch.chdir(tmp_path)
    minisd_generate_from(generation.files[1], tmp_path / "again.png")
    assert pixels_of(tmp_path / "again.png") == pixels_of(generation.files[1])
    assert read_settings(tmp_path / "again.png") == read_settings(generation.files[1])


@pytest.mark.parametrize("sampler", PAGE_SAMPLERS)
def test_every_page_sampler_shows_every_step(studio, sampler):
    steps, generation = run_all(studio, studio.request(prompt=DIGIT, model="mnist", sampler=sampler, steps=2, seed=1))
    assert [(event["step"], event["steps"]) for event in steps] == [(1, 2), (2, 2)]
    assert generation.settings["sampler"] == sampler


def test_a_negative_prompt_and_guidance_are_recorded(studio):
    request = studio.request(prompt=DIGIT, model="mnist", negative_prompt="  a handwritten digit 1 ", steps=1,
                             guidance_scale=2.5, seed=3)
    _, generation = run_all(studio, request)
    settings = read_settings(generation.files[0])
    assert settings["negative_prompt"] == "a handwritten digit 1" and settings["guidance_scale"] == 2.5


# ---------------------------------------------------------------- image-to-image and inpainting


@pytest.mark.parametrize("model", ["mnist", "shapes"])
@pytest.mark.parametrize("inpaint", [False, True], ids=["image-to-image", "inpainting"])
def test_an_uploaded_init_image_and_mask_are_saved_recorded_and_remade_by_minisd_generate(
        studio, tmp_path, monkeypatch, model, inpaint):
    side = SIZES[model]
    init = drawing(model)
    mask = right_half_mask(side) if inpaint else None
    request = studio.request(prompt=PROMPTS[model], model=model, steps=4, seed=11, init_image=png_bytes(init),
                             mask=None if mask is None else png_bytes(mask), strength=None if inpaint else 0.5)
    steps, generation = run_all(studio, request)
    folder = generation.files[0].parent

    # Image-to-image at strength 0.5 runs the last floor(0.5 * 4) = 2 of the 4 steps; inpainting (strength 1) all.
    count = 4 if inpaint else 2
    assert [(event["step"], event["steps"]) for event in steps] == [(step, count) for step in range(1, count + 1)]

    # The uploads, saved beside the image and named in its settings with their sha256.
    names = [INIT_IMAGE_FILE, MASK_FILE] if inpaint else [INIT_IMAGE_FILE]
    assert generation.inputs == [folder / name for name in names]
    assert sorted(path.name for path in folder.iterdir()) == sorted([*names, generation.files[0].name])
    with Image.open(folder / INIT_IMAGE_FILE) as saved:
        assert np.array_equal(np.asarray(saved), np.asarray(init))
    settings = read_settings(generation.files[0])
    assert settings["init_image"] == INIT_IMAGE_FILE
    assert settings["init_image_sha256"] == sha256_file(folder / INIT_IMAGE_FILE)
    assert settings["strength"] == (1.0 if inpaint else 0.5)
    if inpaint:
        assert settings["mask"] == MASK_FILE and settings["mask_sha256"] == sha256_file(folder / MASK_FILE)
    else:
        assert "mask" not in settings and "mask_sha256" not in settings

    with Image.open(generation.files[0]) as image:
        assert image.mode == ("L" if model == "mnist" else "RGB") and image.size == (side, side)
        output = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).reshape(side, side, -1).permute(2, 0, 1)
    if inpaint:
        # Outside the mask: the init image as the autoencoder reconstructs it; inside: repainted.
        autoencoder = studio.pipeline(model).model.autoencoder
        pixels = load_image(folder / INIT_IMAGE_FILE, size=(side, side), channels=output.shape[0])
        with torch.no_grad():
            reconstruction = autoencoder.decode(autoencoder.encode(pixels)).clamp(0, 1)[0]
        change = (output - reconstruction).abs()
        kept, repainted = change[..., :side // 2], change[..., side // 2:]
        assert kept.max() <= 2 / 255, kept.max()
        assert repainted.mean() > 10 * kept.mean() + 0.01, (repainted.mean(), kept.mean())

    # minisd generate --from, run beside the files the PNG names, makes the identical image.
    monkeypatch.chdir(folder)
    minisd_generate_from(Path(generation.files[0].name), tmp_path / "again.png")
    assert pixels_of(tmp_path / "again.png") == pixels_of(generation.files[0])


def test_an_upload_of_another_size_is_cropped_and_resized_to_the_model_and_remade_by_from(studio, tmp_path,
                                                                                          monkeypatch):
    wide = Image.new("L", (80, 40), 0)
    wide.paste(255, (36, 4, 44, 36))  # a bar in the middle: kept by the centre crop
    request = studio.request(prompt=DIGIT, model="mnist", steps=2, init_image=png_bytes(wide), strength=0.5)
    _, generation = run_all(studio, request)
    [init] = generation.inputs
    with Image.open(init) as saved:
        assert saved.size == (28, 28)
        assert saved.getpixel((14, 14)) > 200 and saved.getpixel((2, 14)) < 50
    for path in [*generation.files, init]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    monkeypatch.chdir(tmp_path)
    minisd_generate_from(tmp_path / generation.files[0].name, tmp_path / "again.png")
    assert pixels_of(tmp_path / "again.png") == pixels_of(generation.files[0])


def test_a_prompt_too_long_for_the_tokenizer_is_refused_before_any_work(studio):
    before = sorted(studio.outputs.iterdir())
    with pytest.raises(RequestError, match="tokens long"):
        studio.request(prompt=" ".join(["seven"] * 40), model="mnist")
    assert sorted(studio.outputs.iterdir()) == before


def test_words_the_model_never_read_are_noted(studio):
    request = studio.request(prompt="a handwritten digit 7 riding a bicycle", model="mnist")
    assert request.notes and "bicycle" in request.notes[0] and request.suggested_model is None
    assert studio.request(prompt=DIGIT, model="mnist").notes == []


def test_words_another_model_knows_are_noted_with_the_model_to_switch_to(studio):
    """The same note as minisd generate's (one function makes both), with the page's way to switch."""
    from minisd.generate import unknown_words_note

    prompt = "a red circle left of a blue square"
    request = studio.request(prompt=prompt, model="mnist")
    note, known_by = unknown_words_note(prompt, studio.pipeline("mnist").model.tokenizer, "mnist", studio.models)
    assert known_by == ["shapes"] and request.suggested_model == "shapes"
    assert request.notes == [f"{note}: choose shapes in the Model list"]
    assert "'circle'" in note and "'square'" in note and "the shapes model knows them" in note
    assert studio.request(prompt=prompt, model="shapes").notes == []


# ---------------------------------------------------------------- attention maps


def test_attention_has_one_picture_per_prompt_token(studio, two_images):
    _, generation = two_images
    tokens = studio.pipeline("mnist").model.tokenizer.tokens(DIGIT)
    assert [token for _, token in generation.attention] == tokens
    assert {"a", "handwritten", "digit", "7"} <= set(tokens)
    assert all(isinstance(picture, Image.Image) and picture.width == picture.height
               for picture, _ in generation.attention)


def test_no_attention_at_guidance_0(studio):
    _, generation = run_all(studio, studio.request(prompt=DIGIT, model="mnist", steps=2, guidance_scale=0))
    assert generation.attention == [] and generation.settings["guidance_scale"] == 0.0
    assert len(generation.files) == 1


# ---------------------------------------------------------------- the VAE chapter


def test_the_latent_plane_is_square_and_a_point_decodes_to_an_image(studio):
    plane = studio.latent_plane()
    assert isinstance(plane, Image.Image) and plane.width == plane.height >= 15 * 28
    for z0, z1 in [(0, 0), (-3, 3), ("1.5", -2.25)]:
        picture = studio.decode_latent(z0, z1)
        assert isinstance(picture, Image.Image) and picture.width == picture.height >= 28
    assert studio.decode_latent(-2, 0).tobytes() != studio.decode_latent(2, 0).tobytes()


@pytest.mark.parametrize("z0, z1, words", [(5, 0, "z[0] must be a number from -3 to 3, got 5"),
                                           (float("nan"), 0, "z[0] must be a number from -3 to 3, got nan"),
                                           (0, float("-inf"), "z[1] must be a number"), (0, -3.01, "z[1]"),
                                           ("x", 0, "z[0]"), (None, 0, "z[0]"), (True, 0, "z[0]")])
def test_a_latent_point_off_the_plane_is_refused(studio, z0, z1, words):
    with pytest.raises(RequestError, match=words.replace("[", r"\[").replace("]", r"\]")):
        studio.decode_latent(z0, z1)


def test_without_a_vae_the_plane_says_to_start_the_server_with_vae(tmp_path):
    bare = Studio({"mnist": SHIPPED_MODELS / "mnist"}, tmp_path, vae=None)
    for draw in (bare.latent_plane, lambda: bare.decode_latent(0, 0)):
        with pytest.raises(RequestError, match="--vae"):
            draw()


def test_a_vae_that_is_not_2_d_is_refused_every_time(tmp_path):
    wrong = Studio({"mnist": SHIPPED_MODELS / "mnist"}, tmp_path, vae=SHIPPED_MODELS / "mnist")
    for _ in range(2):  # the second call too: the refused model is not kept
        with pytest.raises(MinisdError, match="not a VAE with a 2-d latent"):
            wrong.decode_latent(0, 0)


# ---------------------------------------------------------------- the diffusion chapter


@pytest.mark.parametrize("model", ["mnist", "shapes"])
def test_noising_shows_8_noise_levels_and_the_models_estimates(studio, model):
    noised, denoised = studio.noising(png_bytes(drawing(model)), model, PROMPTS[model])
    assert len(noised) == len(denoised) == 8
    captions = [caption for _, caption in noised]
    assert captions == [caption for _, caption in denoised]
    times = [float(re.match(r"t=([0-9.]+)", caption).group(1)) for caption in captions]  # t first, then more
    assert times == pytest.approx([k / 8 for k in range(1, 9)], abs=0.006)  # shown to 2 or more decimals
    pictures = [picture for picture, _ in noised + denoised]
    assert all(isinstance(picture, Image.Image) and picture.width == picture.height for picture in pictures)
    assert noised[0][0].tobytes() != noised[-1][0].tobytes()  # t = 1/8 is not t = 1


def test_noising_a_generated_image_by_its_path(studio, two_images):
    _, generation = two_images
    noised, denoised = studio.noising(None, "mnist", "a handwritten digit 3", image_path=generation.files[0])
    assert len(noised) == len(denoised) == 8


def test_noising_without_an_image_or_with_a_bad_one_is_refused(studio):
    with pytest.raises(RequestError, match="upload an image, or generate one first"):
        studio.noising(None, "mnist", "a handwritten digit 3")
    with pytest.raises(RequestError, match="the image is not an image"):
        studio.noising(b"no image here", "mnist", "a handwritten digit 3")
    with pytest.raises(RequestError, match="unknown model"):
        studio.noising(png_bytes(drawing("mnist")), "../checkpoints/mnist", "a handwritten digit 3")
    with pytest.raises(RequestError, match="must be text"):
        studio.noising(png_bytes(drawing("mnist")), "mnist", 3)


# ---------------------------------------------------------------- failures


class Broken(RuntimeError):
    pass


def test_a_failing_generation_raises_in_the_caller_and_the_studio_goes_on(studio, monkeypatch):
    def fail(self, *args, **kwargs):
        raise Broken("the pipeline broke")

    monkeypatch.setattr(TextToImagePipeline, "__call__", fail)
    request = studio.request(prompt=DIGIT, model="mnist", steps=2, seed=5)
    before = sorted(studio.outputs.iterdir())
    with pytest.raises(Broken, match="the pipeline broke"):
        list(studio.generate(request))
    assert sorted(studio.outputs.iterdir()) == before  # a failed generation leaves no folder behind
    monkeypatch.undo()
    _, generation = run_all(studio, request)
    assert [path.name for path in generation.files] == ["minisd-5-0.png"]


def test_a_failure_after_a_step_comes_after_that_steps_event(studio, monkeypatch):
    real_call = TextToImagePipeline.__call__

    def fail_after_the_first_step(self, *args, callback=None, **kwargs):
        def step_then_fail(info):
            callback(info)
            raise SamplingError("gave NaN at step 1")

        return real_call(self, *args, callback=step_then_fail, **kwargs)

    monkeypatch.setattr(TextToImagePipeline, "__call__", fail_after_the_first_step)
    events = studio.generate(studio.request(prompt=DIGIT, model="mnist", steps=3, seed=6))
    assert next(events)["step"] == 1
    with pytest.raises(SamplingError, match="NaN at step 1"):
        next(events)
    monkeypatch.undo()
    steps, generation = run_all(studio, studio.request(prompt=DIGIT, model="mnist", steps=3, seed=6))
    assert len(steps) == 3 and len(generation.files) == 1
    assert math.isclose(steps[-1]["t"], 0.0, abs_tol=1e-6)


def test_generations_run_one_at_a_time_even_when_a_page_leaves_early(studio, monkeypatch):
    """A stream closed after its first step (the user left) does not let the next generation run beside it."""
    real_call = TextToImagePipeline.__call__
    running, overlaps = [0], []

    def counting_call(self, *args, **kwargs):
        running[0] += 1
        overlaps.append(running[0])
        try:
            return real_call(self, *args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(TextToImagePipeline, "__call__", counting_call)
    left = studio.generate(studio.request(prompt=DIGIT, model="mnist", steps=20, seed=1))
    next(left)
    left.close()
    run_all(studio, studio.request(prompt=DIGIT, model="mnist", steps=2, seed=2))
    assert overlaps == [1, 1]


def test_a_click_on_the_plane_picture_maps_to_its_latent_point():
    from minisd.web.limits import LATENT_EXTENT
    from minisd.web.studio import latent_point

    assert latent_point(0, 0, (480, 480)) == pytest.approx((-LATENT_EXTENT, LATENT_EXTENT), abs=0.01)
    assert latent_point(479, 479, (480, 480)) == pytest.approx((LATENT_EXTENT, -LATENT_EXTENT), abs=0.01)
    assert latent_point(239.5, 239.5, (480, 480)) == (0.0, 0.0)


def test_noising_takes_an_upload_of_any_size_but_only_its_own_files_by_path(studio, tmp_path):
    wide = Image.new("L", (90, 60), 0)
    wide.paste(255, (40, 10, 50, 50))
    noised, denoised = studio.noising(png_bytes(wide), "mnist", "")
    assert len(noised) == len(denoised) == 8
    outside = tmp_path / "elsewhere.png"
    wide.save(outside)
    with pytest.raises(RequestError, match="generated"):
        studio.noising(None, "mnist", "", image_path=outside)


def test_a_generation_runs_on_the_studios_thread_count_whatever_its_worker_thread_starts_with(tmp_path,
                                                                                             monkeypatch):
    seen = []
    real_call = TextToImagePipeline.__call__

    def record_threads(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(TextToImagePipeline, "__call__", record_threads)
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            served = Studio({"mnist": SHIPPED_MODELS / "mnist"}, tmp_path / str(threads), threads=threads)
            run_all(served, served.request(prompt=DIGIT, model="mnist", steps=1))
    finally:
        torch.set_num_threads(previous)  # the rest of the suite runs on one (tests/conftest.py)
    assert seen == [1, 2]
