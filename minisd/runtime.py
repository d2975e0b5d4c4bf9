"""Where and how fast things run: the device, and the number of CPU threads.

The command line calls :func:`configure_threads` before torch is imported; :func:`resolve_device`
turns ``--device`` into a ``torch.device`` or one clear error.
"""

from __future__ import annotations

import os

from minisd.errors import ConfigError

DEVICE_HELP = "auto (CUDA if available, else CPU), cpu, cuda, cuda:1, mps"


def resolve_device(device: str):
    """``"auto"`` picks CUDA when it is available, else the CPU; ``cpu``, ``cuda[:N]`` and ``mps`` are checked
    against this machine. Returns a ``torch.device``."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use {DEVICE_HELP}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} was asked for, but this machine has no CUDA GPU; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"numbered from 0")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {device} was asked for, but Apple's MPS is not available here; use --device cpu")
    elif parsed.type != "cpu":
        raise ConfigError(f"--device {device}: minisd runs on {DEVICE_HELP}")
    return parsed


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# How long an idle OpenMP worker of libgomp (torch's thread pool on Linux) spins before it sleeps. Its
# default, 300,000 spins, suits a machine to itself; beside another CPU-bound process the spinning
# workers take the cores that the threads with work need, and the diffusion UNet trained 3 times slower
# than with one thread (benchmarks/README.md, "CPU threads"). With 1,000 spins the UNet keeps 97% of its
# idle speed (the small VAE, all tiny operations, gives up about a fifth of it) and a busy machine no
# longer falls off that cliff. The variable is read once, when torch loads OpenMP.
SPIN_COUNT = "1000"


def configure_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads and return how many: ``threads`` (``--threads``), else ``$OMP_NUM_THREADS``
    when set, else :func:`available_cores`.

    Unless the environment already says how idle OpenMP workers should wait (``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT``), it also shortens their spinning to :data:`SPIN_COUNT`; that takes effect only if
    torch has not been imported yet, as in the ``minisd`` command. The count is fixed, never guessed
    from the machine's load, so that the same seed gives the same bits run after run.
    """
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        try:
            threads = int(os.environ["OMP_NUM_THREADS"])
        except ValueError:
            raise ConfigError(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']!r} is not a number of threads") from None
    if threads is None:
        threads = available_cores()
    if threads < 1:
        raise ConfigError(f"the number of threads must be at least 1, got {threads}")
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    import torch

    torch.set_num_threads(threads)
    return threads


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what the platform module says."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
