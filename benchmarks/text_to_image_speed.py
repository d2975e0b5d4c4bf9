"""Text-to-image speed: minisd's pipeline against diffusers doing the same work, in one process.

The work is the issue's: 4 images from one prompt, 20 DPM-Solver++(2M) steps, classifier-free guidance at
scale 4 (each step ONE UNet call on a batch of 8: 4 conditional + 4 unconditional), then the decoder.

- minisd: ``pipe(prompt, num_images_per_prompt=4, num_inference_steps=20, guidance_scale=4.0,
  sampler="dpmpp_2m", output_type="pt")``, end to end: text encoding, the 20 guided steps, decoding.
- diffusers: a ``UNet2DConditionModel`` and an ``AutoencoderKL`` built from configs (nothing downloaded) with
  minisd's sizes - channels per level, residual blocks per level, attention at the same levels with
  ``cross_attention_dim`` = the text encoder's width, 8 GroupNorm groups, scale-shift time conditioning, the
  same latent shape and decoder widths - run by StableDiffusionPipeline's denoising loop, written out here
  (the pipeline class itself needs ``transformers`` for its CLIP text model and tokenizer, which minisd does
  not install): ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2), one UNet call on
  ``cat([latents] * 2)`` per step, then ``vae.decode``. It is fed the embeddings of minisd's own text
  encoder, computed inside its timed call (as StableDiffusionPipeline encodes its prompt inside its call),
  with their padding mask as ``encoder_attention_mask`` (minisd's cross-attention masks the padding too).

Diffusers' transformer blocks carry more than minisd's attention blocks: a GroupNorm and input/output
projections around them and a GEGLU feed-forward layer (4x wide) inside, and its decoder's middle has two
residual blocks where minisd's has one. No config option removes them, so diffusers is timed twice:
"as configured" (its own blocks, more FLOPs), and "matched", the same modules with those extra layers
replaced by identities (the feed-forward by zeros), which leaves the layer list of minisd's networks and
equal FLOPs but for one conv (minisd upsamples 4x4 to 8x8, convolves, then crops to 7x7; diffusers interpolates
to 7x7 first): 3% of a UNet call (see ``match_minisd_layers``). The script prints all the counts. The matched
networks are timed once more on one thread: minisd runs the small operators of a small UNet call on one thread
(``minisd/nn/threads.py``), and this row shows what that setting alone gives diffusers.

FLOPs are counted by ``torch.utils.flop_counter`` (multiply-adds count 2; convolutions, matrix multiplies
and attention; normalisations and activations are not counted), with the CPU flash-attention kernel that
``scaled_dot_product_attention`` dispatches to added to its table. Timing: warm-up calls, then interleaved
rounds (minisd, diffusers matched, matched on one thread, as configured, minisd, ...), so that a load that comes
and goes hits all alike; seconds per 4-image call as the median and the best of the rounds. Threads: 2 (the issue's
budget), set as ``minisd generate`` sets them (``minisd.runtime.configure_threads``: OpenMP workers spin
1,000 times before sleeping; set ``GOMP_SPINCOUNT`` in the environment to time another policy). Time it on
an otherwise idle machine.

    python benchmarks/text_to_image_speed.py [--model checkpoints/mnist] [--rounds 7] [--profile]

Without ``--model`` it takes ``checkpoints/mnist`` if that exists, else an untrained model of the preset
``text2image_mnist``'s sizes (the speed of these networks does not depend on their weights).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from minisd.runtime import configure_threads, cpu_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

THREADS = 2  # the budget: "on 2 cores"
if __name__ == "__main__":
    # Threads as `minisd generate` sets them, and before torch is imported: libgomp reads its spin count once,
    # when torch loads it (minisd/runtime.py). Not on import, so that a test importing this file keeps its own.
    configure_threads(THREADS)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count  # noqa: E402

import minisd  # noqa: E402
from minisd.configs import preset_path  # noqa: E402
from minisd.data.captions import DIGIT_GRAMMAR  # noqa: E402
from minisd.errors import ConfigError  # noqa: E402
from minisd.models.latent_diffusion import LatentDiffusion  # noqa: E402
from minisd.pipelines import TextToImagePipeline  # noqa: E402
from minisd.text import Tokenizer  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "checkpoints" / "mnist"
PRESET = "text2image_mnist"
PROMPT = "a handwritten digit 7"
IMAGES, STEPS, GUIDANCE_SCALE = 4, 20, 4.0


# --- counting ------------------------------------------------------------------------------------------------

def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _onednn_convolution_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


# On a CPU, F.scaled_dot_product_attention runs this kernel, and minisd's Conv2d, without gradients, oneDNN's
# convolution (minisd/nn/conv2d.py); torch's FLOP table leaves both out: without them every attention layer and
# every convolution of minisd's call would count as free.
CPU_KERNELS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
               torch.ops.mkldnn._convolution_pointwise: _onednn_convolution_flops}


def count_flops(work: Callable[[], Any]) -> int:
    """FLOPs of one call of ``work`` (a multiply-add counts 2)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_KERNELS) as counter:
        work()
    return counter.get_total_flops()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- minisd --------------------------------------------------------------------------------------------------

def untrained_preset_pipeline(preset: str = PRESET) -> TextToImagePipeline:
    """A pipeline of the preset's sizes with fresh weights, and a tokenizer learned from the digit captions'
    words (what training would learn). The preset is read as its TOML: the training config's checks are not
    needed to build a model."""
    with open(preset_path(preset), "rb") as file:
        config = tomllib.load(file)
    if config.get("data", {}).get("dataset", "mnist") != "mnist":
        raise ConfigError(f"the preset {preset} is not an MNIST one; give a trained model folder with --model")
    settings = dict(config["unet"]["model"])
    torch.manual_seed(0)
    model = LatentDiffusion(image_shape=(1, 28, 28), autoencoder=config["autoencoder"]["model"],
                            text_encoder=config["text_encoder"]["model"], **settings)
    text_settings = model.text_encoder.hparams
    model.text_encoder.tokenizer = Tokenizer.train(DIGIT_GRAMMAR.vocabulary(), max_length=text_settings["max_length"],
                                                   vocab_size=text_settings["vocab_size"])
    return TextToImagePipeline(model, name=f"untrained {preset}")


def load_pipeline(model_path: str | None) -> TextToImagePipeline:
    if model_path is None and not DEFAULT_MODEL.exists():
        return untrained_preset_pipeline()
    pipe = minisd.load(model_path or DEFAULT_MODEL)
    if not isinstance(pipe, TextToImagePipeline):
        raise ConfigError(f"{model_path} holds a {type(pipe).__name__}, not a text-to-image model folder; "
                          f"give the folder with model_index.json (or the run folder that trained it)")
    return pipe


def minisd_call(pipe: TextToImagePipeline) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        return pipe(PROMPT, num_images_per_prompt=IMAGES, num_inference_steps=STEPS, guidance_scale=GUIDANCE_SCALE,
                    sampler="dpmpp_2m", output_type="pt", generator=torch.Generator().manual_seed(0)).images
    return call


# --- diffusers, built to minisd's sizes ------------------------------------------------------------------------

def diffusers_unet(model: LatentDiffusion):
    """A ``UNet2DConditionModel`` with the levels, widths, blocks and attention of minisd's latent UNet."""
    from diffusers import UNet2DConditionModel

    unet = model.diffusion.hparams
    levels = range(len(unet["channel_mults"]))
    attention_levels = set(unet["attention_levels"] if unet["attention_levels"] is not None else [levels[-1]])
    down = tuple("CrossAttnDownBlock2D" if level in attention_levels else "DownBlock2D" for level in levels)
    up = tuple("CrossAttnUpBlock2D" if level in attention_levels else "UpBlock2D" for level in reversed(levels))
    channels, side, _ = model.autoencoder.latent_shape
    return UNet2DConditionModel(
        sample_size=side, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(unet["base_channels"] * mult for mult in unet["channel_mults"]),
        layers_per_block=unet["num_res_blocks"], down_block_types=down, up_block_types=up,
        # minisd's middle has attention when its coarsest level has (without it, diffusers' middle keeps one of
        # minisd's two residual blocks: the FLOP table shows it).
        mid_block_type="UNetMidBlock2DCrossAttn" if levels[-1] in attention_levels else "UNetMidBlock2D",
        cross_attention_dim=model.text_encoder.hparams["text_dim"],
        attention_head_dim=unet["num_heads"],  # diffusers reads this as the number of heads (its own comment says so)
        norm_num_groups=8, resnet_time_scale_shift="scale_shift", use_linear_projection=True,
    ).eval()


def diffusers_autoencoder(model: LatentDiffusion):
    """An ``AutoencoderKL`` whose decoder has the widths and residual blocks of minisd's (no attention)."""
    from diffusers import AutoencoderKL

    codec = model.autoencoder.hparams
    levels = len(codec["channel_mults"])
    return AutoencoderKL(
        in_channels=model.image_shape[0], out_channels=model.image_shape[0], latent_channels=codec["latent_channels"],
        block_out_channels=tuple(codec["base_channels"] * mult for mult in codec["channel_mults"]),
        # Diffusers' decoder has layers_per_block + 1 residual blocks per level, minisd's num_res_blocks.
        layers_per_block=codec["num_res_blocks"] - 1,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=8, sample_size=model.image_shape[1], mid_block_add_attention=False,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=model.autoencoder.latent_scale.item(),
    ).eval()


class NoFeedForward(nn.Module):
    """Stands in for a transformer block's feed-forward layer: adds nothing (the block adds its output)."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states.new_zeros(())


def match_minisd_layers(unet: nn.Module, vae: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Copies of diffusers' networks cut to minisd's layer list (its parameters, its FLOPs but for minisd's
    cropped upsampling conv): in every ``Transformer2DModel`` the GroupNorm and the input/output projections
    become identities, in every ``BasicTransformerBlock`` the feed-forward layer adds nothing (and its LayerNorm
    is gone); the decoder's middle keeps one residual block.

    What remains is minisd's ``SpatialAttention``: LayerNorm -> self-attention, LayerNorm -> cross-attention,
    each with its residual. The numbers these networks compute mean nothing; only their cost is compared."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    unet, vae = copy.deepcopy(unet), copy.deepcopy(vae)
    for module in unet.modules():
        if isinstance(module, Transformer2DModel):
            module.norm, module.proj_in, module.proj_out = nn.Identity(), nn.Identity(), nn.Identity()
        if isinstance(module, BasicTransformerBlock):
            module.norm3, module.ff = nn.Identity(), NoFeedForward()
    middle = vae.decoder.mid_block
    middle.resnets = middle.resnets[:1]  # its forward runs resnets[0], then (attention, resnet) pairs: none left
    return unet, vae


def diffusers_call(model: LatentDiffusion, unet: nn.Module, vae: nn.Module) -> Callable[[], torch.Tensor]:
    """StableDiffusionPipeline's ``__call__`` from its prompt embeddings on (text-to-image, CFG), written out."""
    from diffusers import DPMSolverMultistepScheduler

    # The same solver as minisd's dpmpp_2m; a cosine beta schedule like minisd's preset (the cost is the same).
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                            algorithm_type="dpmsolver++", solver_order=2)
    latent_shape = (IMAGES, *model.autoencoder.latent_shape)

    @torch.no_grad()
    def call() -> torch.Tensor:
        # encode_prompt: the negative (here empty) prompt's embeddings first, as StableDiffusionPipeline puts them.
        cond = model.encode_prompts([PROMPT] * IMAGES)
        uncond = model.encode_prompts([""] * IMAGES, allow_empty=True)
        prompt_embeds = torch.cat([uncond["context"], cond["context"]])
        attention_mask = torch.cat([uncond["context_mask"], cond["context_mask"]]).float()
        scheduler.set_timesteps(STEPS)
        latents = torch.randn(latent_shape, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred = unet(latent_model_input, t, encoder_hidden_states=prompt_embeds,
                              encoder_attention_mask=attention_mask, return_dict=False)[0]
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + GUIDANCE_SCALE * (noise_pred_text - noise_pred_uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)  # VaeImageProcessor.postprocess(output_type="pt")
    return call


# --- one contender: its networks' costs and its timed call ----------------------------------------------------

def contender(name: str, call: Callable[[], torch.Tensor], unet_call: Callable[[], Any], decode_call: Callable[[], Any],
              unet: nn.Module, decoder: nn.Module) -> dict[str, Any]:
    return {"name": name, "call": call, "unet_parameters": parameter_count(unet),
            "decoder_parameters": parameter_count(decoder), "unet_flops": count_flops(unet_call),
            "decode_flops": count_flops(decode_call), "call_flops": count_flops(call), "seconds": []}


def contenders(pipe: TextToImagePipeline, with_diffusers: bool) -> list[dict[str, Any]]:
    model = pipe.model
    latents = torch.randn(2 * IMAGES, *model.autoencoder.latent_shape)
    t = torch.full((2 * IMAGES,), 0.5)
    cond = model.encode_prompts([PROMPT] * IMAGES)
    uncond = model.encode_prompts([""] * IMAGES, allow_empty=True)
    context = {key: torch.cat([cond[key], uncond[key]]) for key in cond}
    network = model.diffusion.denoiser.network
    found = [contender("minisd", minisd_call(pipe), lambda: network(latents, t, context),
                       lambda: model.autoencoder.decode(latents[:IMAGES]), network, model.autoencoder.decoder)]
    if not with_diffusers:
        return found
    stock_unet, stock_vae = diffusers_unet(model), diffusers_autoencoder(model)
    matched_unet, matched_vae = match_minisd_layers(stock_unet, stock_vae)
    mask = context["context_mask"].float()
    for name, unet, vae, threads in (("diffusers, matched to minisd's layers", matched_unet, matched_vae, None),
                                     ("diffusers, matched, on one thread", matched_unet, matched_vae, 1),
                                     ("diffusers, as configured", stock_unet, stock_vae, None)):
        found.append(contender(
            name, on_threads(diffusers_call(model, unet, vae), threads),
            lambda unet=unet: unet(latents, 500, encoder_hidden_states=context["context"],
                                   encoder_attention_mask=mask),
            lambda vae=vae: vae.decode(latents[:IMAGES]), unet, vae.decoder))
    return found


def on_threads(call: Callable[[], torch.Tensor], threads: int | None) -> Callable[[], torch.Tensor]:
    """``call`` run on ``threads`` torch threads (None: as set), and the count restored after it."""
    if threads is None:
        return call

    def call_on_threads() -> torch.Tensor:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return call()
        finally:
            torch.set_num_threads(before)
    return call_on_threads


# --- timing and reporting --------------------------------------------------------------------------------------

def time_rounds(found: list[dict[str, Any]], rounds: int, warmup: int) -> None:
    """Append to each contender's ``seconds`` one 4-image call's wall time per round, in interleaved order."""
    for entry in found:
        for _ in range(warmup):
            entry["call"]()
    for _ in range(rounds):
        for entry in found:
            start = time.perf_counter()
            entry["call"]()
            entry["seconds"].append(time.perf_counter() - start)


def text_encoding_seconds(model: LatentDiffusion, repeats: int = 20) -> float:
    """Median wall time of encoding the prompt and the empty prompt, 4 each (part of both timed calls)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode_prompts([PROMPT] * IMAGES)
        model.encode_prompts([""] * IMAGES, allow_empty=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(found: list[dict[str, Any]], pipe: TextToImagePipeline, rounds: int) -> None:
    model = pipe.model
    print(f"model: {pipe.name}; latents {tuple(model.autoencoder.latent_shape)}, images {tuple(model.image_shape)}; "
          f"prompt {PROMPT!r}")
    print(f"work per call: {IMAGES} images, {STEPS} dpmpp_2m steps, guidance {GUIDANCE_SCALE} (UNet batch "
          f"{2 * IMAGES}), decode {IMAGES}")
    print(f"{torch.get_num_threads()} threads, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'default')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, torch {torch.__version__}, {cpu_name()}")
    print(f"text encoding (4 prompts + 4 empty, inside both timed calls): "
          f"{1000 * text_encoding_seconds(model):.1f} ms\n")

    print("| pipeline | UNet parameters | decoder parameters | GFLOP per UNet call (batch 8) | GFLOP per decode "
          "(4 images) | GFLOP per 4-image call |")
    print("|---|---|---|---|---|---|")
    for entry in found:
        print(f"| {entry['name']} | {entry['unet_parameters'] / 1e6:.3f}M | "
              f"{entry['decoder_parameters'] / 1e6:.3f}M | {entry['unet_flops'] / 1e9:.4f} | {entry['decode_flops'] / 1e9:.4f} | {entry['call_flops'] / 1e9:.3f} |")

    print(f"\n{rounds} interleaved rounds, one 4-image call each:\n")
    print("| pipeline | s per 4-image call, median (best) | images/s, median (best) | median time against minisd's |")
    print("|---|---|---|---|")
    ours = statistics.median(found[0]["seconds"])
    for entry in found:
        median, best = statistics.median(entry["seconds"]), min(entry["seconds"])
        print(f"| {entry['name']} | {median:.3f} ({best:.3f}) | {IMAGES / median:.2f} ({IMAGES / best:.2f}) | "
              f"{median / ours:.2f}x |")

    target = "within" if ours <= 1.0 else "OVER"
    print(f"\nminisd: {ours:.3f} s per 4-image call, {target} the issue's 1 s.")
    for entry in found[1:]:
        # Round by round: the two calls of one round ran under the same load.
        ratios = [theirs / mine for mine, theirs in zip(found[0]["seconds"], entry["seconds"])]
        verdict = "at least as fast as" if statistics.median(ratios) >= 1 else "SLOWER than"
        print(f"minisd is {verdict} {entry['name']}: its call takes {statistics.median(ratios):.2f}x minisd's "
              f"(median over rounds; range {min(ratios):.2f}-{max(ratios):.2f}x)")


def profile(found: list[dict[str, Any]], rows: int) -> None:
    """Where the time of one call goes: torch.profiler's operators by self CPU time, per contender."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for entry in found:
        with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
            entry["call"]()
        print(f"\n## {entry['name']}: one 4-image call, operators by self CPU time\n")
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"a text-to-image model folder (default: {DEFAULT_MODEL} if it exists, "
                                        f"else an untrained model of the {PRESET} preset's sizes)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds, one 4-image call per pipeline each")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per pipeline before the rounds")
    parser.add_argument("--profile", action="store_true", help="then profile one call of each pipeline")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be at least 1 and --warmup at least 0")

    pipe = load_pipeline(args.model)
    try:
        import diffusers  # noqa: F401
        with_diffusers = True
    except ImportError:
        print("(diffusers is not installed: pip install -e '.[bench]' to compare)")
        with_diffusers = False
    found = contenders(pipe, with_diffusers)
    time_rounds(found, args.rounds, args.warmup)
    report(found, pipe, args.rounds)
    if args.profile:
        profile(found, args.profile_rows)


if __name__ == "__main__":
    main()
