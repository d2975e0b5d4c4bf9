"""The text-to-image speed benchmark compares like with like: diffusers' networks built to minisd's sizes.

These check the benchmark's setup (benchmarks/text_to_image_speed.py), not its timings: a change to minisd's
latent UNet or decoder that the diffusers side does not follow makes them fail.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "text_to_image_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("text_to_image_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def networks(bench):
    torch.manual_seed(0)
    pipe = bench.untrained_preset_pipeline()
    stock_unet, stock_vae = bench.diffusers_unet(pipe.model), bench.diffusers_autoencoder(pipe.model)
    matched_unet, matched_vae = bench.match_minisd_layers(stock_unet, stock_vae)
    return pipe.model, stock_unet, stock_vae, matched_unet, matched_vae


def _unet_flops(bench, model, unet=None):
    latents = torch.randn(8, *model.autoencoder.latent_shape)
    context, mask = model.text_encoder.encode_text(["a handwritten digit 7"] * 8)
    if unet is None:
        network = model.diffusion.denoiser.network
        return bench.count_flops(lambda: network(latents, torch.full((8,), 0.5),
                                                 {"context": context, "context_mask": mask}))
    return bench.count_flops(lambda: unet(latents, 500, encoder_hidden_states=context,
                                          encoder_attention_mask=mask.float()))


def test_cpu_attention_kernel_is_counted_as_two_matrix_products(bench):
    query, key = torch.randn(2, 4, 49, 16), torch.randn(2, 4, 24, 16)
    flops = bench.count_flops(lambda: F.scaled_dot_product_attention(query, key, key))
    assert flops == 2 * (2 * 2 * 4 * 49 * 24 * 16)  # Q K^T and (weights) V, 2 FLOPs per multiply-add


def test_matched_diffusers_networks_have_minisd_parameters_and_decoder_flops(bench, networks):
    model, _, _, matched_unet, matched_vae = networks
    assert bench.parameter_count(matched_unet) == bench.parameter_count(model.diffusion.denoiser.network)
    assert bench.parameter_count(matched_vae.decoder) == bench.parameter_count(model.autoencoder.decoder)
    latents = torch.randn(4, *model.autoencoder.latent_shape)
    assert bench.count_flops(lambda: matched_vae.decode(latents)) == \
        bench.count_flops(lambda: model.autoencoder.decode(latents))


def test_matched_diffusers_unet_costs_minisd_flops_but_for_the_cropped_upsampling_conv(bench, networks):
    model, stock_unet, _, matched_unet, _ = networks
    ours, matched, stock = (_unet_flops(bench, model, unet) for unet in (None, matched_unet, stock_unet))
    # minisd upsamples 4x4 -> 8x8, convolves, then crops to 7x7; diffusers interpolates to 7x7 first. The
    # difference is that conv (128 -> 128 channels, 3x3) over the 64 - 49 extra pixels of 8 latents.
    assert ours - matched == 2 * 9 * 128 * 128 * 8 * (64 - 49)
    assert stock > 1.2 * matched  # the feed-forward layers and projections that matching removes


def test_both_benchmarked_calls_make_four_finite_images(bench, networks):
    model, _, _, matched_unet, matched_vae = networks
    from minisd.pipelines import TextToImagePipeline

    for call in (bench.minisd_call(TextToImagePipeline(model)), bench.diffusers_call(model, matched_unet, matched_vae)):
        images = call()
        assert images.shape == (4, *model.image_shape)
        assert torch.isfinite(images).all()
