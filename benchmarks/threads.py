"""CPU threads on a busy machine: how each thread setting trains, with and without another CPU-bound process.

For each setting it runs real ``minisd train`` commands, once on the otherwise idle machine and once beside
``python -c "while True: pass"``, and reports the median of ``--repeats`` runs:

- the 2-d VAE (``vae2d``, an MLP of small matrix products): wall time of 300 training steps, the issue's
  measurement (``minisd train --config vae2d --set train.steps=300``);
- the diffusion UNet (``diffusion_mnist``): training images/s of 10 steps of 64 (after 2 warm-up steps),
  timed in a fresh process that sets its threads as the command line does.

    MINISD_DATA=/path/to/data python benchmarks/threads.py [--repeats 3] [--settings default,1,...]

Settings: ``default`` is whatever minisd does with no option; ``N`` is ``--threads N``; ``N-passive`` adds
OMP_WAIT_POLICY=PASSIVE, ``N-active`` OMP_WAIT_POLICY=ACTIVE, ``N-spinK`` GOMP_SPINCOUNT=K (how long
libgomp's idle workers spin before they sleep). The environment of each run starts without
OMP_NUM_THREADS, OMP_WAIT_POLICY and GOMP_SPINCOUNT, so only the setting differs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VAE_COMMAND = ["train", "--config", "vae2d", "--set", "train.steps=300", "--set", "train.eval_every=0",
               "--no-progress", "--overwrite"]

UNET_WORKER = """
import sys, time
from minisd.runtime import configure_threads
configure_threads(None if sys.argv[1] == "default" else int(sys.argv[1]))  # before torch, as the CLI does
import torch
from minisd.models import build_model
from minisd.train import load_run_config
model = build_model({**load_run_config("diffusion_mnist")["model"], "image_shape": [1, 28, 28]})
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
batch = {"image": torch.rand(64, 1, 28, 28)}
def step():
    loss, _ = model.loss(batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(2):
    step()
start = time.perf_counter()
for _ in range(10):
    step()
print(640 / (time.perf_counter() - start))
"""


def run(workload: str, setting: str, out: Path) -> float:
    """Run one measurement; return its wall seconds (vae2d) or its training images/s (unet)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    threads, _, policy = setting.partition("-")
    if policy.startswith("spin"):
        env["GOMP_SPINCOUNT"] = policy.removeprefix("spin")
    elif policy:
        env["OMP_WAIT_POLICY"] = policy.upper()
    if workload == "unet":
        done = subprocess.run([sys.executable, "-c", UNET_WORKER, threads], env=env, check=True, capture_output=True,
                              text=True)
        return float(done.stdout)
    options = [] if threads == "default" else ["--threads", threads]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "minisd", *VAE_COMMAND, *options, "--out", str(out)], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default="default,1,2-active,2-passive")
    parser.add_argument("--workloads", default="vae2d,unet")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; median of {args.repeats} runs\n")
    print("| workload | setting | idle | beside one busy process |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for workload in args.workloads.split(","):
            unit = "s wall" if workload == "vae2d" else "images/s"
            for setting in args.settings.split(","):
                cells = []
                for busy in (False, True):
                    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                    try:
                        values = [run(workload, setting, Path(folder) / "run") for _ in range(args.repeats)]
                    finally:
                        if spinner is not None:
                            spinner.kill()
                            spinner.wait()
                    cells.append(f"{statistics.median(values):.1f} {unit} ({min(values):.1f}-{max(values):.1f})")
                print(f"| {workload} | {setting} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
