"""A published Stable Diffusion folder, run by minisd's own modules, gives diffusers' pictures.

The folders are small random pipelines that diffusers and transformers build from configs and save (tests/sd_fixtures.py):
one in the style of SD 1.x (conv projections, quick-GELU CLIP, eps, leading spacing, the older tokenizer files) and one
in the style of SD 2.x (linear projections, GELU, v prediction, trailing spacing, tokenizer.json). Everything is compared
in float32 against diffusers' own classes on the same inputs; images are compared in [0, 1].
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import minisd  # noqa: E402
from minisd.errors import CheckpointError, ConfigError  # noqa: E402
from minisd.models.stable_diffusion import load_stable_diffusion  # noqa: E402
from sd_fixtures import build_pipeline, save_folder  # noqa: E402

STYLES = ("sd1", "sd2")
SAMPLERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}
IMAGE_TOLERANCE = 1e-4  # the largest absolute difference of two images in [0, 1]
LARGEST = {}  # test name -> the largest image difference it saw, for the report at the end


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("stable_diffusion")
    return {style: save_folder(build_pipeline(style, root), root / style, style) for style in STYLES}


@pytest.fixture(scope="module")
def pipelines(folders):
    """(diffusers' pipeline, minisd's pipeline) per style, both read from the saved folder."""
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    return {style: (StableDiffusionPipeline.from_pretrained(folder, safety_checker=None), minisd.load(folder))
            for style, folder in folders.items()}


def _scheduler(reference, sampler: str):
    import diffusers

    return getattr(diffusers, SAMPLERS[sampler]).from_config(reference.scheduler.config)


def _record(name: str, difference: float) -> None:
    LARGEST[name] = max(LARGEST.get(name, 0.0), difference)


@pytest.mark.parametrize("style", STYLES)
def test_text_embeddings_equal_transformers_clip(style, pipelines):
    reference, ours = pipelines[style]
    prompts = ["a photo of a cat", "", "An astronaut, riding a horse!!", "café 🐱 " * 30]
    ids = reference.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ours.model.tokenizer(prompts), ids)
    with torch.no_grad():
        expected = reference.text_encoder(ids)[0]
    assert (ours.model.encode_prompts(prompts)["context"] - expected).abs().max() < 1e-5


@pytest.mark.parametrize("style", STYLES)
def test_one_unet_call_equals_diffusers_at_whole_and_fractional_steps(style, pipelines):
    reference, ours = pipelines[style]
    generator = torch.Generator().manual_seed(0)
    latents, context = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 77, 32, generator=generator)
    steps = torch.tensor([999.0, 500.0, 1.0, 946.4211])  # Euler's linspace grid reaches fractional steps
    with torch.no_grad():
        expected = reference.unet(latents, steps, encoder_hidden_states=context).sample
        got = ours.model.denoiser.network(latents, ours.model.denoiser.schedule.time_of_step(steps.double()).float(),
                                          {"context": context})
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()


@pytest.mark.parametrize("style", STYLES)
def test_autoencoder_encode_and_decode_equal_diffusers(style, pipelines):
    reference, ours = pipelines[style]
    generator = torch.Generator().manual_seed(1)
    images, latents = torch.rand(2, 3, 16, 16, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    scale = reference.vae.config.scaling_factor
    with torch.no_grad():
        posterior = reference.vae.encode(images * 2 - 1).latent_dist
        decoded = (reference.vae.decode(latents / scale).sample / 2 + 0.5).clamp(0, 1)
        assert (ours.model.autoencoder.encode(images) - posterior.mean * scale).abs().max() < 1e-5
        assert (ours.model.autoencoder.decode(latents) - decoded).abs().max() < 1e-5


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("guidance, negative", [(1.0, None), (5.0, None), (5.0, ["blurry", "a dog"])])
def test_generation_from_the_same_latents_equals_diffusers(style, sampler, guidance, negative, pipelines):
    reference, ours = pipelines[style]
    reference.scheduler = _scheduler(reference, sampler)
    prompts = ["a photo of a cat", "a red chair in the living room"]
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for steps in (10, 20):
        expected = reference(prompts, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                             latents=latents, output_type="pt").images
        got = ours(prompts, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                   sampler=sampler, latents=latents, output_type="pt").images
        difference = (got - expected).abs().max().item()
        _record("text-to-image", difference)
        assert difference <= IMAGE_TOLERANCE, (steps, difference)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_gives_diffusers_picture(style, sampler, pipelines):
    """Without latents both draw the starting noise from the generator in the same order."""
    reference, ours = pipelines[style]
    reference.scheduler = _scheduler(reference, sampler)
    expected = reference("a bowl of ramen", num_inference_steps=25, guidance_scale=3.0, num_images_per_prompt=2,
                         generator=torch.Generator().manual_seed(5), output_type="pt").images
    got = ours("a bowl of ramen", num_inference_steps=25, guidance_scale=3.0, num_images_per_prompt=2,
               sampler=sampler, generator=torch.Generator().manual_seed(5), output_type="pt").images
    difference = (got - expected).abs().max().item()
    _record("same seed", difference)
    assert difference <= IMAGE_TOLERANCE


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("strength", [0.8, 0.45])
def test_image_to_image_equals_diffusers(style, sampler, strength, pipelines):
    from diffusers import StableDiffusionImg2ImgPipeline

    reference, ours = pipelines[style]
    image_to_image = StableDiffusionImg2ImgPipeline(**reference.components)
    image_to_image.scheduler = _scheduler(reference, sampler)
    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    arguments = dict(image=init, strength=strength, num_inference_steps=20, guidance_scale=4.0, negative_prompt="dog",
                     output_type="pt")
    expected = image_to_image("a cozy cabin", generator=torch.Generator().manual_seed(4), **arguments).images
    got = ours("a cozy cabin", sampler=sampler, generator=torch.Generator().manual_seed(4), **arguments).images
    difference = (got - expected).abs().max().item()
    _record("image-to-image", difference)
    assert difference <= IMAGE_TOLERANCE


def test_ddim_clips_x0_as_diffusers_where_the_folder_leaves_clip_sample_unset(folders, tmp_path):
    """DDIMScheduler's default clip_sample is true: built from a config without the key (an SD 1.x PNDM config
    missing it), it clips x0_hat to [-1, 1] and keeps the unclipped eps. minisd's DDIM does the same there."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    folder = shutil.copytree(folders["sd1"], tmp_path / "unclipped")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    del config["clip_sample"]
    config_file.write_text(json.dumps(config))
    reference, ours = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None), minisd.load(folder)
    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    assert reference.scheduler.config.clip_sample
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = reference("a photo of a cat", num_inference_steps=10, guidance_scale=1.0, latents=latents,
                         output_type="pt").images
    got = ours("a photo of a cat", num_inference_steps=10, guidance_scale=1.0, sampler="ddim", latents=latents,
               output_type="pt").images
    assert (got - expected).abs().max() <= IMAGE_TOLERANCE
    unclipped = ours("a photo of a cat", num_inference_steps=10, guidance_scale=1.0, sampler="dpmpp_2m",
                     latents=latents, output_type="pt").images
    assert (unclipped - expected).abs().max() > 100 * IMAGE_TOLERANCE  # the clipping is seen in the picture


def test_zz_report_largest_image_difference():
    """Prints the largest difference each kind of comparison saw (run with -s to read it)."""
    if not LARGEST:
        pytest.skip("the comparisons did not run in this process")
    print("largest image difference against diffusers: " +
          ", ".join(f"{name} {value:.2e}" for name, value in LARGEST.items()))
    assert max(LARGEST.values()) <= IMAGE_TOLERANCE


@pytest.mark.parametrize("style", STYLES)
def test_sizes_other_than_the_default_and_inpainting_run(style, pipelines):
    reference, ours = pipelines[style]
    out = ours("a cat", num_inference_steps=3, height=24, width=40, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 3, 24, 40) and out.settings["height"] == 24 and out.settings["width"] == 40
    mask = torch.zeros(1, 24, 40)
    mask[:, :, 20:] = 1
    painted = ours("a cat", image=out.images[0], mask_image=mask, num_inference_steps=3, height=24, width=40,
                   output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert torch.isfinite(painted).all()
    maps = ours("a cat", num_inference_steps=2, height=24, width=40, return_attention=True, guidance_scale=2.0,
                generator=torch.Generator().manual_seed(0)).attention_maps
    assert maps.shape == (2, 1, 77, 12, 20)  # steps, images, CLIP's tokens, the latent grid of a wide picture
    with pytest.raises(ConfigError, match="multiple of 2"):
        ours("a cat", num_inference_steps=2, height=25)


def test_a_guidance_below_one_is_warned_about_as_diffusers_reads_it_otherwise(pipelines):
    _, ours = pipelines["sd2"]
    with pytest.warns(UserWarning, match="no guidance, which is 1 here"):
        ours("a cat", num_inference_steps=1, guidance_scale=0.0, generator=torch.Generator().manual_seed(0))


def test_a_long_prompt_is_cut_at_77_tokens_with_a_warning(pipelines):
    _, ours = pipelines["sd1"]
    with pytest.warns(UserWarning, match="left out"):
        ours("a photo of a cat " * 40, num_inference_steps=2, generator=torch.Generator().manual_seed(0))


# --- a downloaded folder is untrusted input ---------------------------------------------------------------------


@pytest.fixture
def folder_copy(folders, tmp_path):
    return shutil.copytree(folders["sd1"], tmp_path / "copy")


def _edit_json(file, **changes):
    values = json.loads(file.read_text())
    values.update(changes)
    file.write_text(json.dumps(values))


def _refused(folder, match):
    with pytest.raises(CheckpointError, match=match) as error:
        load_stable_diffusion(folder)
    assert "\n" not in str(error.value)  # one line
    return str(error.value)


def test_a_pickle_checkpoint_is_refused_with_how_to_convert_it(folder_copy):
    weights = folder_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    message = _refused(folder_copy, "pickle")
    assert "save_pretrained" in message and "diffusion_pytorch_model.bin" in message


@pytest.mark.parametrize("damage", ["truncated", "corrupted header"])
def test_a_damaged_safetensors_file_is_refused(folder_copy, damage):
    weights = folder_copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:8] + b"{not json" + data[17:])
    _refused(folder_copy, "diffusion_pytorch_model.safetensors")


def test_an_index_naming_paths_outside_the_folder_is_refused(folder_copy):
    index = folder_copy / "model_index.json"
    values = json.loads(index.read_text())
    values["../unet"] = values.pop("unet")
    index.write_text(json.dumps(values))
    _refused(folder_copy, "outside the model folder")


def test_a_part_linked_outside_the_folder_is_refused(folder_copy, tmp_path):
    outside = shutil.move(folder_copy / "vae", tmp_path / "elsewhere")
    (folder_copy / "vae").symlink_to(outside)
    _refused(folder_copy, "outside the model folder")


def test_custom_pipeline_code_is_refused(folder_copy):
    _edit_json(folder_copy / "model_index.json", _class_name="MyEvilPipeline")
    _refused(folder_copy, "never runs a folder's own pipeline code")
    _edit_json(folder_copy / "model_index.json", _class_name="StableDiffusionPipeline", unet=["my_module", "MyUNet"])
    _refused(folder_copy, "unet")


def test_an_absurd_config_is_refused_before_anything_is_built(folder_copy):
    _edit_json(folder_copy / "unet" / "config.json", block_out_channels=[10**9, 10**9, 10**9])
    message = _refused(folder_copy, "block_out_channels")
    assert "unet/config.json" in message


@pytest.mark.parametrize("part, key, value, match", [
    ("unet", "resnet_time_scale_shift", "ada_group", "resnet_time_scale_shift"),
    ("unet", "addition_embed_type", "text_time", "addition_embed_type"),
    ("text_encoder", "hidden_act", "relu", "hidden_act"),
    ("vae", "latent_channels", 8, "takes 4 channels"),
])
def test_unknown_config_values_are_refused_naming_file_and_key(folder_copy, part, key, value, match):
    _edit_json(folder_copy / part / "config.json", **{key: value})
    assert f"{part}/config.json" in _refused(folder_copy, match) or part == "vae"


def test_weights_that_do_not_fit_the_config_are_refused(folder_copy):
    _edit_json(folder_copy / "unet" / "config.json", block_out_channels=[32, 64, 128])
    _refused(folder_copy, "shape")


def test_a_missing_part_is_refused(folder_copy):
    shutil.rmtree(folder_copy / "text_encoder")
    _refused(folder_copy, "text_encoder")


# --- the command line and the page ----------------------------------------------------------------------------


def test_minisd_generate_draws_with_a_folder_and_from_remakes_the_png(folders, tmp_path):
    from cli_process import run_minisd
    from PIL import Image

    from minisd.models.stable_diffusion import stable_diffusion_fingerprint
    from minisd.pipelines.png_settings import read_settings

    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    folder = str(folders["sd2"])
    done = run_minisd(["generate", "a lighthouse at sunset", "--model", folder, "--height", "24", "--width", "32",
                       "--steps", "4", "--sampler", "euler", "--seed", "3", "--out", "out.png"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    settings = read_settings(tmp_path / "out.png")
    assert (settings["width"], settings["height"], settings["model"]) == (32, 24, folder)
    assert settings["model_hash"] == stable_diffusion_fingerprint(folder)
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (32, 24)
        pixels = image.tobytes()
    again = run_minisd(["generate", "--from", "out.png", "--out", "again.png"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    with Image.open(tmp_path / "again.png") as image:
        assert image.tobytes() == pixels


def test_the_page_draws_with_a_stable_diffusion_folder(folders, tmp_path):
    from minisd.web.studio import Studio

    studio = Studio({"sd": folders["sd1"]}, tmp_path / "outputs")
    request = studio.request(prompt="a red chair", model="sd", steps=3, seed=1, num_images=2)
    events = list(studio.generate(request))
    assert [event["step"] for event in events[:-1]] == [1, 2, 3]
    generation = events[-1]["done"]
    assert len(generation.files) == 2 and all(path.is_file() for path in generation.files)
    assert generation.settings["model"] == "sd" and generation.attention  # cross-attention maps over CLIP's tokens
    from PIL import Image

    noised, estimated = studio.noising(Image.new("RGB", (20, 20), (200, 30, 30)), "sd", "a red chair", levels=3)
    assert len(noised) == len(estimated) == 3  # the noising tab: its schedule, in its latent space


def test_the_fingerprint_changes_with_the_weights_without_reading_them_all(folder_copy):
    from minisd.models.stable_diffusion import stable_diffusion_fingerprint

    before = stable_diffusion_fingerprint(folder_copy)
    weights = folder_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte in the middle of the data
    weights.write_bytes(bytes(data))
    assert stable_diffusion_fingerprint(folder_copy) != before and len(before) == 10


def test_minisd_serve_offers_a_folder_given_by_model_and_draws_with_it(folders, tmp_path):
    pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    from minisd.pipelines.png_settings import read_settings
    from minisd.web.client import ServerProcess, call, generate_inputs

    folder = str(folders["sd1"])
    with ServerProcess(["--model", folder, "--outputs", str(tmp_path / "outputs")]) as server:
        outcome = call(server.url, "generate", generate_inputs("a red chair", model=folder, sampler="euler",
                                                               steps=3, guidance=3.0, images=2))
    assert outcome.status == "complete", outcome.message
    pictures = [entry["path"] for entry in outcome.data[4]]
    assert len(pictures) == 2
    settings = read_settings(pictures[0])
    assert settings["model"] == folder and (settings["width"], settings["height"]) == (16, 16)


def test_minisd_serve_refuses_a_model_that_is_not_text_to_image_in_one_line(tmp_path):
    pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    from cli_process import run_minisd

    done = run_minisd(["serve", "--model", str(tmp_path / "nothing-here")], cwd=tmp_path,
                      env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no such folder" in done.stderr


@pytest.mark.parametrize("style", STYLES)
def test_image_to_image_draws_at_the_init_images_size_as_diffusers(style, pipelines):
    """Without height and width, a published model draws at the init image's size (rounded down to 8), as
    diffusers does; two prompts, one init image, a strength whose steps are not whole (0.77 * 20 = 15.4 -> 15)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    reference, ours = pipelines[style]
    image_to_image = StableDiffusionImg2ImgPipeline(**reference.components)
    image_to_image.scheduler = _scheduler(reference, "euler")
    init = torch.rand(1, 3, 24, 16, generator=torch.Generator().manual_seed(5))
    arguments = dict(image=init, strength=0.77, num_inference_steps=20, guidance_scale=2.0, output_type="pt")
    expected = image_to_image(["a cat", "a dog"], generator=torch.Generator().manual_seed(1), **arguments).images
    got = ours(["a cat", "a dog"], sampler="euler", generator=torch.Generator().manual_seed(1), **arguments).images
    assert got.shape == (2, 3, 24, 16)
    difference = (got - expected).abs().max().item()
    _record("image-to-image", difference)
    assert difference <= IMAGE_TOLERANCE
