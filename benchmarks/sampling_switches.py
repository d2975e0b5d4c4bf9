"""What each of minisd's two sampling speed-ups gives inside the 4-image call, each switched off and on in turn.

- ``conv2d``: ``Conv2d`` keeps its weight in oneDNN's layout without gradients (``minisd/nn/conv2d.py``); off,
  every convolution is ``nn.Conv2d``'s.
- ``threads``: a small UNet call runs its small operators on one thread (``minisd/nn/threads.py``); off, every
  operator may use every thread.

The call is ``text_to_image_speed.py``'s (4 images, 20 DPM-Solver++(2M) steps, guidance 4, ``checkpoints/mnist``
unless ``--model``). Rounds alternate off/on and on/off, and each round's two calls give one ratio, so that a load
that comes and goes hits both alike; the script prints the median ratio with its quartiles, and the largest
difference between the images of the two settings (on [0, 1]). Then it times single convolutions of the UNet's
sizes, ``Conv2d`` against ``F.conv2d``, without gradients, back to back (median of 2,000 calls).

    python benchmarks/sampling_switches.py [--model checkpoints/shapes] [--rounds 30] [--switches conv2d,threads]

Threads: 2, as ``minisd generate`` sets them. Time it on an otherwise idle machine.
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
from text_to_image_speed import load_pipeline, minisd_call

from minisd.nn import conv2d, threads
from minisd.nn.conv2d import Conv2d


def _set_conv2d(on: bool) -> None:
    conv2d._available = on and torch.backends.mkldnn.is_available()


def _set_threads(on: bool, limit: int = threads.SMALL_FEATURE_MAP) -> None:
    threads.SMALL_FEATURE_MAP = limit if on else 0


SWITCHES: dict[str, Callable[[bool], None]] = {"conv2d": _set_conv2d, "threads": _set_threads}


def paired_speedup(call: Callable[[], torch.Tensor], switch: Callable[[bool], None], rounds: int) -> tuple:
    """Median and quartiles of (time off / time on) over ``rounds`` rounds, and the largest image difference."""
    switch(False)
    off = call()
    switch(True)
    difference = (call() - off).abs().max().item()
    ratios = []
    for round_index in range(rounds):
        seconds = {}
        for on in ((False, True) if round_index % 2 == 0 else (True, False)):
            switch(on)
            start = time.perf_counter()
            call()
            seconds[on] = time.perf_counter() - start
        ratios.append(seconds[False] / seconds[True])
    switch(True)
    quartiles = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), quartiles[0], quartiles[2], difference


def convolution_microseconds(convolutions: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
                             calls: int = 2000) -> list[float]:
    """Median us per call of each convolution, the calls interleaved (one of each in turn)."""
    times: list[list[float]] = [[] for _ in convolutions]
    for index in range(50 + calls):
        for convolve, seconds in zip(convolutions, times):
            start = time.perf_counter()
            convolve(x)
            if index >= 50:
                seconds.append(time.perf_counter() - start)
    return [1e6 * statistics.median(seconds) for seconds in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a text-to-image model folder (default: checkpoints/mnist)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--switches", default="conv2d,threads", help=f"some of {sorted(SWITCHES)}, comma-separated")
    args = parser.parse_args()
    names = args.switches.split(",")
    if unknown := set(names) - set(SWITCHES):
        parser.error(f"unknown switches {sorted(unknown)}; choose from {sorted(SWITCHES)}")
    call = minisd_call(load_pipeline(args.model))
    for _ in range(2):
        call()

    print(f"{args.rounds} paired rounds of the 4-image call, {torch.get_num_threads()} threads\n")
    print("| switched off and on | speed-up, median (quartiles) | largest image difference |")
    print("|---|---|---|")
    for name in names:
        median, low, high, difference = paired_speedup(call, SWITCHES[name], args.rounds)
        print(f"| {name} | {median:.3f}x ({low:.3f}-{high:.3f}) | {difference:.1e} |")

    print("\none convolution without gradients, batch 8, channels-last input: median us per call\n")
    print("| convolution | Conv2d | F.conv2d |")
    print("|---|---|---|")
    with torch.no_grad():
        for channels, side in ((64, 7), (128, 4)):
            layer = Conv2d(channels, channels, 3, padding=1)
            x = torch.randn(8, channels, side, side).contiguous(memory_format=torch.channels_last)
            ours, stock = convolution_microseconds(
                [layer, lambda x, layer=layer: F.conv2d(x, layer.weight, layer.bias, padding=1)], x)
            print(f"| 3x3 {channels} -> {channels} on {side}x{side} | {ours:.0f} | {stock:.0f} |")


if __name__ == "__main__":
    main()
