"""Training speed of minisd's diffusion UNet, side by side with this machine's matmul rate and diffusers.

One run measures, on the same machine and in the same process:
  1. the fp32 matrix-multiply rate (FLOP/s) of torch.mm on 2048 x 2048 matrices, and (once) that of one
     3x3 convolution, the UNet's commonest layer;
  2. for minisd's DiffusionModel (preset diffusion_mnist), trained as minisd's loop trains it (channels-last,
     fused AdamW), and for diffusers' UNet2DModel of about the same size (optional: `pip install diffusers`;
     built from a config, nothing downloaded), trained as its examples do (default layout, torch.optim.AdamW)
     and once more with minisd's two loop settings: the FLOPs of one training step (forward + backward,
     counted by torch.utils.flop_counter), its wall time, the images/s, and the achieved FLOP/s as a fraction
     of the matmul rate; then minisd's images/s over each of the others', round by round.
  3. with ``--compile``, both again with the UNet under ``torch.compile`` (inductor; FLOPs counted before
     compiling, the compile time printed), a candidate of issue 21 measured against diffusers compiled alike.

The three are timed in interleaved rounds (matmul, minisd, diffusers, matmul, ...), so that a load that
comes and goes on the machine hits all of them alike; each round gives one fraction per model, and the
median over rounds is reported with the range. Time it on an otherwise idle machine.

    python benchmarks/unet_speed.py [--batch-size 64] [--rounds 5] [--steps 3] [--compile]
"""

import argparse
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from minisd.models import DiffusionModel
from minisd.train import load_run_config
from minisd.train.loop import training_layout
from minisd.train.optim import adamw


def matmul_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def conv_flops_per_second(channels: int = 64, side: int = 28, batch: int = 64, repeats: int = 10) -> float:
    """The rate of one fp32 3x3 convolution, the UNet's commonest layer (forward only)."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, side, side)
    with torch.no_grad():
        flops = training_flops(lambda: conv(x))
        conv(x)
        start = time.perf_counter()
        for _ in range(repeats):
            conv(x)
    return flops * repeats / (time.perf_counter() - start)


def step_seconds(step, steps: int) -> float:
    """Mean wall time of ``steps`` calls of ``step``."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def training_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def minisd_step(batch_size: int, compiled: bool = False):
    """minisd's training step as its loop (minisd.train.loop) takes it: the model channels-last, fused AdamW;
    ``compiled``: its UNet under torch.compile."""
    config = load_run_config("diffusion_mnist")["model"]
    model = DiffusionModel(image_shape=(1, 28, 28), **{k: v for k, v in config.items() if k != "type"})
    model = training_layout(model, "cpu")
    if compiled:
        model.denoiser.network = torch.compile(model.denoiser.network)
    optimizer = adamw(model, lr=1e-4, weight_decay=0.0)
    images = torch.rand(batch_size, 1, 28, 28)

    def step():
        loss, _ = model.loss({"image": images})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step, sum(p.numel() for p in model.parameters())


def diffusers_step(batch_size: int, loop_settings: bool = False, compiled: bool = False):
    """diffusers' UNet2DModel trained as its examples train it (torch.optim.AdamW's defaults, the default layout);
    ``loop_settings``: with the two settings of minisd's loop as well (channels-last, fused AdamW); ``compiled``:
    the UNet under torch.compile."""
    from diffusers import UNet2DModel

    model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                        layers_per_block=1, norm_num_groups=8, attention_head_dim=16,
                        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    if loop_settings:
        model = training_layout(model, "cpu")
    if compiled:
        model = torch.compile(model)
    optimizer = adamw(model, lr=1e-4, weight_decay=0.0) if loop_settings else torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch_size, 1, 28, 28) * 2 - 1

    def step():
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (batch_size,))
        noisy = 0.8 * images + 0.6 * noise  # the step's cost does not depend on the schedule
        loss = F.mse_loss(model(noisy, timesteps).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of matmul and model timings")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per model and round")
    parser.add_argument("--compile", action="store_true", help="also time both UNets under torch.compile")
    args = parser.parse_args()
    torch.manual_seed(0)
    # (name, builder, minisd's?, the row whose FLOPs it shares: a compiled step is counted as its eager one)
    minisd_name, diffusers_name = "minisd UNet (diffusion_mnist)", "diffusers UNet2DModel"
    candidates = [(minisd_name, minisd_step, True, None)]
    if args.compile:
        candidates.append(("minisd UNet, torch.compile", partial(minisd_step, compiled=True), True, minisd_name))
    try:
        import diffusers  # noqa: F401
        candidates.append((diffusers_name, diffusers_step, False, None))
        candidates.append(("diffusers UNet2DModel, channels-last + fused AdamW",
                           partial(diffusers_step, loop_settings=True), False, None))
        if args.compile:
            candidates.append(("diffusers UNet2DModel, torch.compile", partial(diffusers_step, compiled=True), False,
                               diffusers_name))
    except ImportError:
        print("(diffusers is not installed: pip install diffusers to compare)")
    models = {}
    for name, build, ours, flops_of in candidates:
        step, parameters = build(args.batch_size)
        flops = models[flops_of]["flops"] if flops_of else training_flops(step)
        start = time.perf_counter()
        step()  # warm-up; under torch.compile, the compilation
        if flops_of:
            print(f"{name}: compiled in {time.perf_counter() - start:.1f} s (the first step)")
        models[name] = {"name": name, "step": step, "parameters": parameters, "flops": flops, "ours": ours,
                        "rounds": []}
    models = list(models.values())
    rates = []
    for _ in range(args.rounds):
        rates.append(matmul_flops_per_second())
        for model in models:
            seconds = step_seconds(model["step"], args.steps)
            model["rounds"].append((args.batch_size / seconds, model["flops"] / seconds / rates[-1]))

    print(f"fp32 matmul (2048 x 2048, torch.mm, {torch.get_num_threads()} threads), {args.rounds} rounds: median "
          f"{statistics.median(rates) / 1e9:.1f} GFLOP/s (range {min(rates) / 1e9:.1f}-{max(rates) / 1e9:.1f})\n")
    print(f"fp32 3x3 convolution (64 -> 64 channels, 28 x 28, batch 64, forward): "
          f"{conv_flops_per_second() / 1e9:.1f} GFLOP/s\n")
    print("| model | parameters | GFLOP per image (fwd+bwd) | images/s, median (range) | of matmul rate, median (range) |")
    print("|---|---|---|---|---|")
    for model in models:
        speeds, fractions = zip(*model["rounds"])
        print(f"| {model['name']} | {model['parameters'] / 1e6:.2f}M | {model['flops'] / args.batch_size / 1e9:.3f} | "
              f"{statistics.median(speeds):.1f} ({min(speeds):.1f}-{max(speeds):.1f}) | "
              f"{100 * statistics.median(fractions):.0f}% ({100 * min(fractions):.0f}-{100 * max(fractions):.0f}%) |")
    for mine in (model for model in models if model["ours"]):
        for theirs in (model for model in models if not model["ours"]):
            # Round by round: the two steps of one round ran under the same load.
            ratios = [a / b for (a, _), (b, _) in zip(mine["rounds"], theirs["rounds"])]
            print(f"\n{mine['name']}: images/s over {theirs['name']}'s: {statistics.median(ratios):.2f}x "
                  f"(median over rounds; range {min(ratios):.2f}-{max(ratios):.2f}x)", end="")
    print()


if __name__ == "__main__":
    main()
