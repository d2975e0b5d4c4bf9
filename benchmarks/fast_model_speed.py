"""Few-step speed: the distilled ``checkpoints/mnist-fast`` against its teacher ``checkpoints/mnist``, in one run.

The work: 4 images from one prompt, ``output_type="pt"``, end to end (text encoding, sampling, decoding).

- teacher: its guided call, ``num_inference_steps=20, guidance_scale=4``, DPM-Solver++(2M) (its defaults): 20
  UNet calls on a batch of 8 (4 conditional + 4 unconditional).
- fast model: ``pipe(prompt, num_images_per_prompt=4)``, everything at the defaults in its folder's config
  (its sampler, steps and guidance 1: one UNet call on a batch of 4 per step), and at 1 and 2 steps.

Timing: warm-up calls, then interleaved rounds (teacher, fast at its default, fast at 1 step, ...), so that a load
that comes and goes hits all alike; the median and the best of the rounds. Threads: 2, set as ``minisd generate``
sets them. Time it on an otherwise idle machine.

    python benchmarks/fast_model_speed.py [--rounds 21] [--json benchmarks/results/fast_model_speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from minisd.runtime import configure_threads, cpu_name

THREADS = 2  # the budget: "on 2 cores"
if __name__ == "__main__":
    configure_threads(THREADS)  # before torch is imported (see benchmarks/text_to_image_speed.py)

import torch  # noqa: E402

import minisd  # noqa: E402

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
PROMPT = "a handwritten digit 7"
IMAGES = 4


def calls(teacher: Any, fast: Any) -> dict[str, Callable[[], torch.Tensor]]:
    def teacher_call() -> torch.Tensor:
        return teacher(PROMPT, num_images_per_prompt=IMAGES, num_inference_steps=20, guidance_scale=4.0,
                       sampler="dpmpp_2m", output_type="pt", generator=torch.Generator().manual_seed(0)).images

    def fast_call(steps: int | None = None) -> Callable[[], torch.Tensor]:
        return lambda: fast(PROMPT, num_images_per_prompt=IMAGES, num_inference_steps=steps, output_type="pt",
                            generator=torch.Generator().manual_seed(0)).images

    default_steps = fast.model.sample_steps
    return {"teacher, 20 steps, guidance 4": teacher_call,
            f"mnist-fast, {default_steps} steps (its default)": fast_call(),
            "mnist-fast, 2 steps": fast_call(2), "mnist-fast, 1 step": fast_call(1)}


def time_rounds(work: dict[str, Callable[[], Any]], rounds: int, warmup: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in work}
    for call in work.values():
        for _ in range(warmup):
            call()
    for _ in range(rounds):
        for name, call in work.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=str(CHECKPOINTS / "mnist"))
    parser.add_argument("--fast", default=str(CHECKPOINTS / "mnist-fast"))
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds, one 4-image call of each")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each before the rounds")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be at least 1 and --warmup at least 0")
    teacher, fast = minisd.load(args.teacher), minisd.load(args.fast)
    seconds = time_rounds(calls(teacher, fast), args.rounds, args.warmup)
    teacher_median = statistics.median(next(iter(seconds.values())))
    print(f"4 images of {PROMPT!r}, {torch.get_num_threads()} threads, {cpu_name()}, {args.rounds} rounds")
    print("| call | median ms | best ms | teacher / this (medians) |\n|---|---|---|---|")
    rows = []
    for name, times in seconds.items():
        median = statistics.median(times)
        rows.append({"call": name, "median_s": median, "best_s": min(times), "speedup": teacher_median / median})
        print(f"| {name} | {1000 * median:.1f} | {1000 * min(times):.1f} | {teacher_median / median:.1f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"prompt": PROMPT, "images": IMAGES, "threads": torch.get_num_threads(),
                                               "cpu": cpu_name(), "rounds": args.rounds, "calls": rows},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
