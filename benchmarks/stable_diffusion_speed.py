"""What a Stable Diffusion 1.5 picture costs on this machine: minisd's UNet and autoencoder against diffusers'.

Stable Diffusion 1.5's published sizes (the config values are written below; random weights, nothing downloaded):
a UNet of 860M parameters and the autoencoder's decoder. diffusers builds each from its config, saves it as a
folder, and minisd reads that folder through the loaders `minisd.load` uses (minisd.models.stable_diffusion), so
both run the same weights. One run measures, on the same inputs:

  1. that the two agree (largest difference of the outputs);
  2. the FLOPs of one call (torch.utils.flop_counter);
  3. the wall time of one UNet call on 64x64 latents, batch 2 (a guided step: prompt and negative prompt), and of
     one decode to 512x512, minisd and diffusers in interleaved rounds (a load that comes and goes on the machine
     hits both alike; the median and range over rounds are reported);
  4. the peak resident memory of a process that loads one model and makes one call (each in a child process of
     its own, so the peaks do not mix), and how much of it the call adds beyond the weights.

From them: the time of a 20-step 512x512 picture (20 guided UNet calls and one decode) and of a 1-step SD-Turbo
picture (one UNet call, batch 1, no guidance, and one decode; SD-Turbo's UNet is SD 2.1's, of about the same size
and FLOPs as 1.5's). The text encoder (123M parameters, 77 tokens) costs under a second and is left out.

    python benchmarks/stable_diffusion_speed.py [--rounds 3] [--threads 2] [--folder /tmp/minisd-sd15-random]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Stable Diffusion 1.5's unet/config.json and vae/config.json, as published (the values that set the sizes).
UNET_CONFIG = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                   block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                     "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   norm_num_groups=32)
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                  block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32)
LATENT_SIDES, CONTEXT_LENGTH, CONTEXT_DIM = (64, 32), 77, 768  # 512x512 and 256x256 pictures


def make_folder(folder: Path) -> None:
    """A folder with unet/ and vae/ of SD 1.5's sizes and seeded random weights, saved by diffusers."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if (folder / "unet" / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        return
    torch.manual_seed(0)
    UNet2DConditionModel(**UNET_CONFIG).save_pretrained(folder / "unet", safe_serialization=True)
    AutoencoderKL(**VAE_CONFIG).save_pretrained(folder / "vae", safe_serialization=True)


def inputs(batch: int, side: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"latents": torch.randn(batch, 4, side, side, generator=generator),
            "context": torch.randn(batch, CONTEXT_LENGTH, CONTEXT_DIM, generator=generator),
            "decode": torch.randn(1, 4, side, side, generator=generator)}


def load(implementation: str, part: str, folder: Path):
    """A callable ``f(inputs) -> tensor`` for one call of ``part`` ("unet" or "decode"), with its weights loaded."""
    if implementation == "diffusers":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        if part == "unet":
            unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
            return lambda x: unet(x["latents"], torch.tensor(500.0), encoder_hidden_states=x["context"]).sample
        vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        return lambda x: vae.decode(x["decode"] / vae.config.scaling_factor).sample
    from minisd.models.stable_diffusion import load_autoencoder, load_unet

    if part == "unet":
        unet, _ = load_unet(folder / "unet")
        step = torch.tensor([501 / 1000])  # minisd's time of step 500: t = (k + 1) / T
        return lambda x: unet(x["latents"], step, {"context": x["context"]})
    autoencoder = load_autoencoder(folder / "vae")
    return lambda x: autoencoder.decoder(x["decode"] / autoencoder.latent_scale)


def seconds(call, x) -> float:
    start = time.perf_counter()
    call(x)
    return time.perf_counter() - start


def peak_memory(implementation: str, part: str, folder: Path, batch: int, threads: int) -> dict[str, float]:
    """In a child process: the resident memory once the weights are loaded, and its peak during one call (GiB;
    the peak is reset after loading by writing 5 to /proc/self/clear_refs, so loading's own peak is not counted)."""
    code = (f"import sys, json, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"torch.set_num_threads({threads}); torch.set_grad_enabled(False); import stable_diffusion_speed as b; "
            f"from pathlib import Path; f = b.load({implementation!r}, {part!r}, Path({str(folder)!r})); "
            f"x = b.inputs({batch}); loaded = b.memory_gib('VmRSS'); open('/proc/self/clear_refs', 'w').write('5'); "
            f"f(x); print(json.dumps({{'loaded': loaded, 'peak': b.memory_gib('VmHWM')}}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_gib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of this process, in GiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/minisd-sd15-random"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/stable_diffusion_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    make_folder(args.folder)
    results: dict = {"threads": args.threads, "rounds": args.rounds}
    for part in ("unet", "decode"):
        calls = {name: load(name, part, args.folder) for name in ("minisd", "diffusers")}
        for side in LATENT_SIDES:
            x = inputs(batch=2, side=side)
            outputs = {name: call(x) for name, call in calls.items()}  # also the warm-up
            difference = (outputs["minisd"] - outputs["diffusers"]).abs().max().item()
            with FlopCounterMode(display=False) as counter:
                calls["minisd"](x)
            times = {name: [] for name in calls}
            for round_ in range(args.rounds):
                for name in list(calls) if round_ % 2 == 0 else list(reversed(calls)):
                    times[name].append(seconds(calls[name], x))
            key = f"{part}_{side * 8}"
            results[key] = {"max_difference": difference, "output_scale": outputs["diffusers"].abs().max().item(),
                            "gflops": counter.get_total_flops() / 1e9,
                            **{name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
                               for name, t in times.items()}}
            print(json.dumps({key: results[key]}), flush=True)
        del calls
    for part in ("unet", "decode"):
        for name in ("minisd", "diffusers"):
            results[f"{part}_512"][name]["memory_gib"] = peak_memory(name, part, args.folder, 2, args.threads)
            print(part, name, results[f"{part}_512"][name]["memory_gib"], flush=True)
    for name in ("minisd", "diffusers"):
        for size in (512, 256):
            unet, decode = results[f"unet_{size}"][name]["median_s"], results[f"decode_{size}"][name]["median_s"]
            # A batch-1 UNet call is taken as half a batch-2 one (the FLOPs halve), an estimate.
            results[f"{name}_estimates_{size}"] = {"picture_20_steps_s": 20 * unet + decode,
                                                   "sd_turbo_1_step_s": unet / 2 + decode}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict) -> str:
    rows = ["| call | GFLOPs | largest difference | minisd s (median, range) | diffusers s | diffusers / minisd | "
            "minisd GiB: loaded, peak | diffusers GiB: loaded, peak | peak ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for key, label in (("unet_512", "UNet, 64x64 latents, batch 2"), ("decode_512", "decode to 512x512"),
                       ("unet_256", "UNet, 32x32 latents, batch 2"), ("decode_256", "decode to 256x256")):
        r = results[key]
        m, d = r["minisd"], r["diffusers"]
        memory = "| | | |"
        if "memory_gib" in m:
            mm, dm = m["memory_gib"], d["memory_gib"]
            memory = (f"| {mm['loaded']:.2f}, {mm['peak']:.2f} | {dm['loaded']:.2f}, {dm['peak']:.2f} | "
                      f"{mm['peak'] / dm['peak']:.2f} |")
        rows.append(f"| {label} | {r['gflops']:.0f} | {r['max_difference']:.1e} | {m['median_s']:.2f} "
                    f"({m['min_s']:.2f}-{m['max_s']:.2f}) | {d['median_s']:.2f} ({d['min_s']:.2f}-{d['max_s']:.2f}) | "
                    f"{d['median_s'] / m['median_s']:.2f}x {memory}")
    rows.append("")
    for name in ("minisd", "diffusers"):
        for size in (512, 256):
            e = results[f"{name}_estimates_{size}"]
            rows.append(f"{name}, {size}x{size}: a 20-step guided picture {e['picture_20_steps_s']:.0f} s, "
                        f"a 1-step SD-Turbo picture {e['sd_turbo_1_step_s']:.1f} s")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
