"""The text-to-image pipeline at the library level: ``pipe = minisd.load(run)``, then ``pipe(prompt, ...)``.

The model is the tiny, nearly untrained run of :mod:`t2i_fixtures`: these tests check what the pipeline
promises whatever the weights (counts, shapes, ranges, seeds, order, step counts, attention bookkeeping,
what inpainting keeps, refused files), not how good the images are.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import minisd
from minisd.data.shapes import make_shapes
from minisd.diffusion.samplers import SAMPLERS
from minisd.errors import CheckpointError, ConfigError
from minisd.models.diffusion import DiffusionModel
from minisd.models.model_folder import model_hash
from minisd.pipelines import TextToImagePipeline
from t2i_fixtures import text_to_image_run  # noqa: F401  (a fixture)

PROMPT = "a red circle"
OTHER_PROMPT = "a small blue square"
INIT = object()  # stands for the init_image fixture in parameters
STEPS = 3  # enough for every sampler's multistep path (dpmpp_2m's second-order update starts at step 2)


@pytest.fixture(scope="module")
def pipe(text_to_image_run) -> TextToImagePipeline:
    return minisd.load(text_to_image_run)


@pytest.fixture(scope="module")
def init_image() -> torch.Tensor:
    """One shapes image ``(1, 3, 32, 32)`` in [0, 1]: the kind of image the model trained on."""
    return make_shapes(4, seed=0).images[:1]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def generate(pipe: TextToImagePipeline, prompt=PROMPT, **kwargs) -> torch.Tensor:
    """``pipe(prompt)`` as a tensor ``(N, C, H, W)``, seed 0 and STEPS steps unless ``kwargs`` say otherwise."""
    kwargs = {"num_inference_steps": STEPS, "generator": seeded(0), "output_type": "pt", **kwargs}
    return pipe(prompt, **kwargs).images


class CountCalls:
    """Counts the forward calls of a module (here the UNet: one per denoiser evaluation, guided or not)."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.count += 1

    def __enter__(self) -> "CountCalls":
        return self

    def __exit__(self, *_) -> None:
        self._handle.remove()


# ---------------------------------------------------------------- loading


def test_load_of_a_run_folder_or_its_model_folder_gives_the_same_pipeline(pipe, text_to_image_run):
    from_model_folder = minisd.load(text_to_image_run / "model")
    assert isinstance(pipe, TextToImagePipeline) and isinstance(from_model_folder, TextToImagePipeline)
    assert pipe.weights_hash == from_model_folder.weights_hash == model_hash(text_to_image_run / "model")
    assert pipe.name == text_to_image_run.name  # the settings name the run, not its "model" sub-folder
    assert pipe.image_shape == (3, 32, 32)
    assert torch.equal(generate(pipe), generate(from_model_folder))


def test_unet_part_of_the_model_folder_loads_on_its_own_with_the_pipelines_weights(pipe, text_to_image_run):
    unet = minisd.load(text_to_image_run / "model" / "unet")
    assert isinstance(unet, DiffusionModel)
    own = pipe.model.diffusion.state_dict()
    assert unet.state_dict().keys() == own.keys()
    assert all(torch.equal(value, own[key]) for key, value in unet.state_dict().items())


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damaged", ["text_encoder/tokenizer.json", "unet/model.safetensors",
                                     "autoencoder/model.safetensors", "unet/config.json"])
def test_a_flipped_byte_in_the_model_folder_is_refused_naming_the_file(text_to_image_run, tmp_path, damaged):
    folder = shutil.copytree(text_to_image_run / "model", tmp_path / "model")
    _flip_one_byte(folder / damaged)
    with pytest.raises(CheckpointError, match=str(folder / damaged)):
        minisd.load(folder)


@pytest.mark.parametrize("index_text", [
    "{not json",
    "[]",
    json.dumps({"parts": {}, "model": {}}),
    json.dumps({"model": {}}),
    json.dumps({"parts": {"autoencoder": {}, "text_encoder": {}, "unet": "unet"}, "model": {}}),
], ids=["not-json", "not-an-object", "no-parts-named", "no-parts-table", "part-not-a-table"])
def test_a_broken_model_index_is_refused_naming_it(text_to_image_run, tmp_path, index_text):
    folder = shutil.copytree(text_to_image_run / "model", tmp_path / "model")
    (folder / "model_index.json").write_text(index_text)
    with pytest.raises(CheckpointError, match="model_index.json"):
        minisd.load(folder)


@pytest.mark.parametrize("setting, value", [("guidance_scale", "strong"), ("sampler", "nonsense"),
                                            ("sample_steps", 0), ("no_such_setting", 1), ("p_uncond", 2.0)])
def test_a_model_index_with_a_bad_setting_is_refused_naming_it(text_to_image_run, tmp_path, setting, value):
    folder = shutil.copytree(text_to_image_run / "model", tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    index["model"][setting] = value
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"model_index.json.*{setting}"):
        minisd.load(folder)


def test_a_model_with_a_guidance_interval_uses_it_by_default_and_records_it(pipe, text_to_image_run, tmp_path):
    """A model folder's ``guidance_interval`` is the pipeline's default (the 5-minute preset's); a call may still
    give another, and -99 99 (or infinite bounds) guides every step, as a model without one does."""
    folder = shutil.copytree(text_to_image_run / "model", tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    index["model"]["guidance_interval"] = [-2.0, 2.0]
    (folder / "model_index.json").write_text(json.dumps(index))
    with_interval = minisd.load(folder)
    default = with_interval(PROMPT, num_inference_steps=8, generator=seeded(0), output_type="pt")
    assert default.settings["guidance_interval"] == [-2.0, 2.0]
    torch.testing.assert_close(default.images, generate(pipe, num_inference_steps=8, guidance_interval=(-2, 2)))
    torch.testing.assert_close(generate(with_interval, num_inference_steps=8, guidance_interval=(-99, 99)),
                               generate(pipe, num_inference_steps=8))
    assert not torch.allclose(default.images, generate(pipe, num_inference_steps=8), atol=1e-4)
    index["model"]["guidance_interval"] = [2.0, -2.0]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model_index.json.*guidance_interval"):
        minisd.load(folder)


# ---------------------------------------------------------------- outputs


def test_pil_output_is_a_list_of_num_images_per_prompt_images_of_the_model_size(pipe):
    images = pipe(PROMPT, num_inference_steps=STEPS, generator=seeded(), num_images_per_prompt=3).images
    assert isinstance(images, list) and len(images) == 3
    assert all(isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB" for image in images)


def test_pt_output_is_an_n_c_h_w_tensor_in_the_unit_range(pipe):
    images = generate(pipe, num_images_per_prompt=2)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1


def test_pil_images_are_the_pt_images_rounded_to_8_bits(pipe):
    tensor = generate(pipe)
    pil = pipe(PROMPT, num_inference_steps=STEPS, generator=seeded(0)).images[0]
    assert torch.equal(torch.tensor(np.array(pil)).permute(2, 0, 1), (tensor[0] * 255).round().to(torch.uint8))


def test_the_same_seed_gives_identical_images_and_another_seed_different_ones(pipe):
    first, again, other = generate(pipe), generate(pipe), generate(pipe, generator=seeded(1))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)


def test_without_a_generator_the_global_rng_is_untouched_and_the_recorded_seed_makes_the_images_again(pipe):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    output = pipe(PROMPT, num_inference_steps=STEPS, output_type="pt")
    assert torch.equal(torch.get_rng_state(), before)  # the caller's own random stream goes on as it would have
    seed = output.settings["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**63
    assert torch.equal(generate(pipe, generator=seeded(seed)), output.images)
    # With the caller's generator the caller knows its seed: none is drawn.
    assert pipe(PROMPT, num_inference_steps=1, generator=seeded(), output_type="pt").settings["seed"] is None


def test_a_list_of_prompts_gives_each_prompts_images_together_in_prompt_order(pipe):
    # The start noise is one (4, ...) draw either way, so a prompt-major order makes [A, B] x 2 the same
    # batch as [A, A, B, B] x 1, image for image; an interleaved order would pair the noises differently.
    grouped = generate(pipe, [PROMPT, OTHER_PROMPT], num_images_per_prompt=2)
    listed = generate(pipe, [PROMPT, PROMPT, OTHER_PROMPT, OTHER_PROMPT])
    swapped = generate(pipe, [OTHER_PROMPT, OTHER_PROMPT, PROMPT, PROMPT])
    assert grouped.shape == (4, 3, 32, 32)
    assert torch.allclose(grouped, listed, atol=1e-6)
    assert not torch.allclose(grouped, swapped, atol=1e-3)
    output = pipe([PROMPT, OTHER_PROMPT], num_inference_steps=1, num_images_per_prompt=2, return_attention=True)
    assert [" ".join(tokens[1:]) for tokens in output.tokens] == [PROMPT, PROMPT, OTHER_PROMPT, OTHER_PROMPT]
    assert output.settings["prompt"] == [PROMPT, OTHER_PROMPT] and output.settings["num_images"] == 4


def test_a_negative_prompt_changes_the_image_at_guidance_above_one(pipe):
    plain = generate(pipe, guidance_scale=4.0)
    negative = generate(pipe, guidance_scale=4.0, negative_prompt=OTHER_PROMPT)
    assert not torch.allclose(plain, negative, atol=1e-3)
    # At guidance 1 the unconditional branch, and with it the negative prompt, has no weight.
    assert torch.equal(generate(pipe, guidance_scale=1.0), generate(pipe, guidance_scale=1.0,
                                                                    negative_prompt=OTHER_PROMPT))


def test_guidance_scales_one_and_four_give_different_images(pipe):
    assert not torch.allclose(generate(pipe, guidance_scale=1.0), generate(pipe, guidance_scale=4.0), atol=1e-3)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_makes_images_in_the_unit_range_and_is_recorded(pipe, sampler):
    output = pipe(PROMPT, num_inference_steps=STEPS, sampler=sampler, generator=seeded(), output_type="pt")
    assert output.images.shape == (1, 3, 32, 32) and torch.isfinite(output.images).all()
    assert output.settings["sampler"] == sampler and output.settings["steps"] == STEPS


def test_the_callback_gets_every_step_with_the_latents_and_a_decoded_preview(pipe):
    calls = []
    pipe(PROMPT, num_inference_steps=4, num_images_per_prompt=2, generator=seeded(), callback=calls.append)
    assert [call["step"] for call in calls] == [0, 1, 2, 3]
    for call in calls:
        assert call["latents"].shape == (2, *pipe.model.autoencoder.latent_shape)
        assert call["x0_preview"].shape == (2, 3, 32, 32)
        assert call["x0_preview"].min() >= 0 and call["x0_preview"].max() <= 1


def test_attention_maps_are_per_step_image_and_token_and_sum_to_one_over_the_real_tokens(pipe):
    steps, prompts = 3, [PROMPT, OTHER_PROMPT]
    output = pipe(prompts, num_inference_steps=steps, num_images_per_prompt=2, generator=seeded(),
                  return_attention=True)
    max_length, (_, height, width) = pipe.model.tokenizer.max_length, pipe.model.autoencoder.latent_shape
    assert output.attention_maps.shape == (steps, 4, max_length, height, width)
    assert output.tokens[0] == ["[BOS]", "a", "red", "circle"]
    for i, tokens in enumerate(output.tokens):
        maps = output.attention_maps[:, i]
        assert torch.allclose(maps[:, :len(tokens)].sum(1), torch.ones(steps, height, width), atol=1e-5)
        assert torch.all(maps[:, len(tokens):] == 0)  # the padding is masked out of the softmax
    assert output.attention_maps.min() >= 0


def test_attention_maps_are_refused_at_guidance_zero_where_the_prompt_is_not_used(pipe):
    with pytest.raises(ConfigError, match="guidance"):
        pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, return_attention=True)


def test_without_return_attention_there_are_no_maps(pipe):
    output = pipe(PROMPT, num_inference_steps=1)
    assert output.attention_maps is None and output.tokens == []


# ---------------------------------------------------------------- image-to-image and inpainting


@torch.no_grad()
def test_a_small_strength_stays_near_the_init_images_reconstruction_and_strength_one_does_not(pipe, init_image):
    reconstruction = pipe.model.autoencoder.reconstruct(init_image)
    distance = {strength: (generate(pipe, image=init_image, strength=strength, num_inference_steps=10)
                           - reconstruction).abs().mean().item() for strength in (0.1, 1.0)}
    assert distance[0.1] < 0.01
    assert distance[0.1] < distance[1.0] / 10


@pytest.mark.parametrize("strength", [0.1, 0.25, 0.5, 1.0])
def test_image_to_image_runs_floor_strength_times_steps_denoiser_calls(pipe, init_image, strength):
    steps, calls = 10, []
    with CountCalls(pipe.model.diffusion.denoiser.network) as unet:
        output = pipe(PROMPT, image=init_image, strength=strength, num_inference_steps=steps, generator=seeded(),
                      callback=calls.append)
    # diffusers' rule, int(strength * steps), at least one step; dpmpp_2m: one evaluation a step
    assert unet.count == len(calls) == max(1, math.floor(strength * steps))
    assert output.settings["strength"] == strength


def test_a_pil_init_image_gives_the_same_result_as_its_tensor(pipe, init_image):
    pixels = (init_image[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    as_pil = generate(pipe, image=Image.fromarray(pixels), strength=0.5)
    as_tensor = generate(pipe, image=(init_image * 255).round() / 255, strength=0.5)
    assert torch.equal(as_pil, as_tensor)


@torch.no_grad()
@pytest.mark.parametrize("repainted_columns", [16, 13], ids=["latent-aligned", "mid-cell"])
def test_inpainting_keeps_the_unmasked_region_as_the_autoencoder_reconstructs_it(pipe, init_image,
                                                                                 repainted_columns):
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :repainted_columns] = 1  # white = repaint: the left columns
    result = generate(pipe, image=init_image, mask_image=mask)
    reconstruction = pipe.model.autoencoder.reconstruct(init_image)
    kept = (slice(None), slice(None), slice(None), slice(repainted_columns, None))
    assert torch.allclose(result[kept], reconstruction[kept], atol=1e-5)
    autoencoder_error = (reconstruction - init_image)[kept].abs().max()
    assert (result - init_image)[kept].abs().max() <= autoencoder_error + 1e-5
    # ... and the masked region was painted, not kept.
    painted = (slice(None), slice(None), slice(None), slice(None, repainted_columns))
    assert not torch.allclose(result[painted], reconstruction[painted], atol=1e-2)


@torch.no_grad()
def test_inpainting_holds_the_known_latents_on_their_noising_path_before_any_paste(pipe, init_image):
    """The final image is pasted over outside the mask, which would hide a missing inpainting wrapper: here the
    sampler's own latents are checked. With DDIM (eta 0) the kept latent cells are alpha_t z_known + sigma_t eps at
    every step, eps the start noise, and z_known itself at the end (see tests/test_inpainting.py)."""
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16] = 1  # repaint the left half: the right half of the latent grid is kept
    seen = []
    pipe(PROMPT, image=init_image, mask_image=mask, sampler="ddim", num_inference_steps=4, generator=seeded(0),
         callback=seen.append, output_type="pt")
    known = pipe.model.autoencoder.encode(init_image)
    eps = torch.randn(known.shape, generator=seeded(0))  # the sampler's first draw: its start noise
    kept = (slice(None), slice(None), slice(None), slice(known.shape[-1] // 2, None))
    for info in seen[:-1]:
        alpha, sigma = pipe.model.diffusion.schedule.alpha_sigma(torch.as_tensor(info["t"]).reshape(1))
        expected = alpha.float() * known + sigma.float() * eps
        assert torch.allclose(info["latents"][kept], expected[kept], atol=1e-4), info["step"]
    assert torch.allclose(seen[-1]["latents"][kept], known[kept], atol=1e-5)
    assert not torch.allclose(seen[-1]["latents"], known, atol=1e-2)  # the left half was painted


def test_a_pil_mask_is_read_white_for_repaint(pipe, init_image):
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16] = 1
    pil_mask = Image.fromarray((mask[0, 0] * 255).to(torch.uint8).numpy())
    assert torch.equal(generate(pipe, image=init_image, mask_image=pil_mask),
                       generate(pipe, image=init_image, mask_image=mask))


# ---------------------------------------------------------------- refused arguments (before any work)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_inference_steps": 0}, "steps"),
    ({"num_inference_steps": 1001}, "steps"),
    ({"num_inference_steps": 2.5}, "steps"),
    ({"guidance_scale": float("nan")}, "guidance"),
    ({"guidance_scale": float("inf")}, "guidance"),
    ({"guidance_scale": -1.0}, "guidance"),
    ({"sampler": "nonsense"}, "unknown sampler"),
    ({"sampler": "ddpm", "eta": 0.5}, "takes no eta"),
    ({"output_type": "latent"}, "output_type"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ({"negative_prompt": ["a", "b"]}, "negative prompts"),
    ({"prompt": ""}, "empty"),
    ({"prompt": "   "}, "empty"),
    ({"strength": 0.0, "image": INIT}, "strength"),
    ({"strength": 1.5, "image": INIT}, "strength"),
    ({"strength": float("nan"), "image": INIT}, "strength"),
    ({"mask_image": torch.ones(1, 1, 32, 32)}, "image="),
    ({"image": torch.zeros(1, 3, 28, 28)}, "shape"),
    ({"image": INIT, "mask_image": torch.ones(1, 1, 16, 16)}, "mask"),
    ({"prompt": " ".join(["circle"] * 100)}, "tokens long"),
])
def test_bad_arguments_are_refused_with_a_config_error(pipe, init_image, kwargs, message):
    kwargs = {key: init_image if value is INIT else value for key, value in kwargs.items()}
    prompt = kwargs.pop("prompt", PROMPT)
    with pytest.raises(ConfigError, match=message):
        pipe(prompt, num_inference_steps=kwargs.pop("num_inference_steps", 1), **kwargs)


def test_a_crash_in_the_unet_stage_keeps_the_time_of_the_finished_stages(tmp_path, monkeypatch):
    import json

    from minisd.cli import main
    from minisd.train import text_to_image
    from t2i_fixtures import TINY_TEXT_TO_IMAGE

    def power_cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(text_to_image, "_train_unet", power_cut)
    run = tmp_path / "run"
    assert main(["train", *TINY_TEXT_TO_IMAGE, "--out", str(run)]) == 130  # interrupted, as by Ctrl-C
    (entry,) = json.loads((run / "timings.json").read_text())
    assert set(entry["seconds"]) == {"autoencoder", "text_encoder"}
    assert all(seconds > 0 for seconds in entry["seconds"].values())


def test_text_to_image_training_resumes_stage_by_stage_and_refuses_changed_settings(tmp_path, capsys):
    import json

    from minisd.cli import main
    from t2i_fixtures import TINY_TEXT_TO_IMAGE

    run = tmp_path / "run"
    assert main(["train", *TINY_TEXT_TO_IMAGE, "--set", "unet.train.checkpoint_every=1", "--out", str(run)]) == 0
    stage_checkpoints = {stage: (run / stage / "checkpoint/config.json").read_bytes()
                         for stage in ("autoencoder", "text_encoder")}
    first_model = (run / "model/unet/model.safetensors").read_bytes()
    # The same command again would overwrite the run: refused; --resume continues it.
    assert main(["train", *TINY_TEXT_TO_IMAGE, "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress", "--set", "unet.train.steps=5"]) == 0
    assert "read back from" in capsys.readouterr().out  # the latents, not encoded again
    assert json.loads((run / "unet/checkpoint/config.json").read_text())["step"] == 5
    assert {stage: (run / stage / "checkpoint/config.json").read_bytes() for stage in stage_checkpoints} == \
        stage_checkpoints  # finished stages are kept as they were
    assert (run / "model/unet/model.safetensors").read_bytes() != first_model  # the model folder is written again
    assert len(json.loads((run / "timings.json").read_text())) == 2
    # A finished stage trained with other settings is not silently kept.
    assert main(["train", "--out", str(run), "--resume", "--no-progress",
                 "--set", "autoencoder.model.kl_weight=0.5", "--set", "unet.train.steps=6"]) == 2
    assert "autoencoder.model.kl_weight" in capsys.readouterr().err


def test_output_type_np_gives_the_pictures_channels_last_as_diffusers(pipe):
    as_tensor = pipe(PROMPT, num_inference_steps=2, generator=seeded(0), output_type="pt").images
    as_array = pipe(PROMPT, num_inference_steps=2, generator=seeded(0), output_type="np").images
    assert isinstance(as_array, np.ndarray) and np.array_equal(as_array, as_tensor.permute(0, 2, 3, 1).numpy())


def test_the_latent_cache_is_read_back_only_for_the_same_autoencoder_and_images(tmp_path):
    from minisd.train.text_to_image import _read_latent_cache, _write_latent_cache

    splits = {"train": None, "test": None}
    latents = {"train": torch.randn(5, 4, 7, 7), "test": torch.randn(3, 4, 7, 7)}
    path = tmp_path / "latents.safetensors"
    _write_latent_cache(path, "stamp-a", latents)
    read = _read_latent_cache(path, "stamp-a", splits)
    assert all(torch.equal(read[split], latents[split]) for split in splits)
    assert _read_latent_cache(path, "stamp-b", splits) is None  # another autoencoder, scale or images
    assert _read_latent_cache(tmp_path / "none.safetensors", "stamp-a", splits) is None
    path.write_bytes(path.read_bytes()[:100])  # cut short
    assert _read_latent_cache(path, "stamp-a", splits) is None
