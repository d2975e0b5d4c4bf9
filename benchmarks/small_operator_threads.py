"""One thread or two for the small operators of a sampling step (``minisd/nn/threads.py``).

Times single operators at the sizes of ``checkpoints/mnist``'s UNet (a batch of 8 7x7 latents, 64 and 128
channels) on 1 and on 2 threads, each call alone in a loop and each after some other work (a busy wait, as the
Python between two operators of a real step). With ``GOMP_SPINCOUNT=1000`` (minisd's, set here as the command line
sets it) the second thread is asleep after that work, and waking it is part of what the call costs. Then the same
operators at growing feature maps, after the other work, to show where two threads start to pay.

    python benchmarks/small_operator_threads.py [--calls 2000] [--gap-us 100]

Medians in microseconds per call. Time it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from minisd.runtime import configure_threads

if __name__ == "__main__":
    configure_threads(2)  # before torch is imported: libgomp reads its spin count once

import torch
import torch.nn.functional as F

from minisd.nn.conv2d import Conv2d


def busy_wait(microseconds: float) -> None:
    end = time.perf_counter() + microseconds * 1e-6
    while time.perf_counter() < end:
        pass


def median_microseconds(operator: Callable[[], object], calls: int, gap_us: float) -> float:
    for _ in range(20):
        operator()
    times = []
    for _ in range(calls):
        busy_wait(gap_us)
        start = time.perf_counter()
        operator()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def step_operators() -> dict[str, Callable[[], object]]:
    """The UNet step's operators at checkpoints/mnist's sizes (batch 8 = 4 images and their unconditional twins)."""
    layer_norm, linear, group_norm = torch.nn.LayerNorm(64), torch.nn.Linear(64, 64), torch.nn.GroupNorm(8, 128)
    tokens, pixels, small_map = torch.randn(8, 49, 64), torch.randn(392, 64), channels_last(8, 128, 4, 4)
    query, key = torch.randn(8, 4, 49, 16), torch.randn(8, 4, 49, 16)
    conv_7, conv_8 = Conv2d(64, 64, 3, padding=1), Conv2d(128, 128, 3, padding=1)
    map_7, map_8 = channels_last(8, 64, 7, 7), channels_last(8, 128, 8, 8)
    return {
        "LayerNorm 8 x 49 x 64": lambda: layer_norm(tokens),
        "linear 392 x 64 -> 64": lambda: linear(pixels),
        "GroupNorm 8 x 128 x 4 x 4": lambda: group_norm(small_map),
        "attention 8 x 4 heads x 49 tokens": lambda: F.scaled_dot_product_attention(query, key, key),
        "conv 3x3 64 -> 64 on 8 x 7 x 7": lambda: conv_7(map_7),
        "conv 3x3 128 -> 128 on 8 x 8 x 8": lambda: conv_8(map_8),
    }


def sized_operators(positions: int) -> dict[str, Callable[[], object]]:
    """The same kinds of operator on ``positions`` = batch 8 x side x side pixels of 128 channels."""
    side = round((positions / 8) ** 0.5)
    linear, layer_norm, group_norm = torch.nn.Linear(128, 128), torch.nn.LayerNorm(128), torch.nn.GroupNorm(8, 128)
    rows, feature_map = torch.randn(8 * side * side, 128), channels_last(8, 128, side, side)
    heads = torch.randn(8, 4, side * side, 32)
    return {
        "linear": lambda: linear(rows),
        "LayerNorm": lambda: layer_norm(rows),
        "GroupNorm": lambda: group_norm(feature_map),
        "SiLU": lambda: F.silu(feature_map),
        "attention": lambda: F.scaled_dot_product_attention(heads, heads, heads),
    }


def timed_on_threads(threads: int, operator: Callable[[], object], calls: int, gap_us: float) -> float:
    torch.set_num_threads(threads)
    return median_microseconds(operator, calls, gap_us)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per operator and setting")
    parser.add_argument("--gap-us", type=float, default=100.0, help="microseconds of other work before each call")
    args = parser.parse_args()
    gap = args.gap_us
    torch.set_grad_enabled(False)

    print(f"median us per call; 'after work': {gap:g} us of busy waiting before each call\n")
    print("| operator | 2 threads, back to back | 2 threads, after work | 1 thread, back to back | 1 thread, after work |")
    print("|---|---|---|---|---|")
    for name, operator in step_operators().items():
        cells = [timed_on_threads(threads, operator, args.calls, before)
                 for threads in (2, 1) for before in (0.0, gap)]
        print(f"| {name} | " + " | ".join(f"{value:.0f}" for value in cells) + " |")

    print("\nafter work, 128 channels: 2 threads / 1 thread (us)\n")
    sizes = (392, 968, 2048, 4232, 8192)  # 8 x 7x7, 11x11, 16x16, 23x23, 32x32
    print("| operator | " + " | ".join(f"{positions} positions" for positions in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    operators_by_size = {positions: sized_operators(positions) for positions in sizes}
    for name in operators_by_size[sizes[0]]:
        calls = max(50, args.calls // 10) if name == "attention" else max(100, args.calls // 4)
        cells = [f"{timed_on_threads(2, operators_by_size[p][name], calls, gap):.0f} / "
                 f"{timed_on_threads(1, operators_by_size[p][name], calls, gap):.0f}" for p in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    torch.set_num_threads(2)


if __name__ == "__main__":
    main()
