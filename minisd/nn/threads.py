"""Which operators of a network get the CPU threads.

torch splits an operator across its threads when the operator is large enough by torch's own measure. On a small
feature map (a batch of 8 7x7 latents) that split costs more than it saves: a thread that waits for work sleeps
after a few microseconds (``minisd.runtime.SPIN_COUNT``), and waking it again costs tens of microseconds on a
virtual machine: more than a GroupNorm or a LayerNorm of that size takes on one thread, and more than the second
thread saves on an attention of 49 tokens. Convolutions, the larger operators, still gain from it. So a network
whose feature maps are small runs its forward pass under :func:`small_operators_on_one_thread`, and
:class:`~minisd.nn.conv2d.Conv2d` takes the threads back for its own call with :func:`all_threads`. A 4-image call
of ``checkpoints/mnist`` became 1.07-1.24 times as fast, the more the busier the host
(``benchmarks/sampling_switches.py``; benchmarks/README.md, "Sampling against diffusers").

The rule depends only on the shapes and on the thread count set by the user, never on the machine's load, so the
same seed still gives the same bits for a fixed thread count.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

# A feature map of fewer elements (batch x channels x height x width) than this is "small". After other work, one
# thread was faster for all but the linear layer at 8 x 128 x 7 x 7 (50k elements); at 8 x 128 x 23 x 23 (540k) two
# threads won or tied for all (benchmarks/small_operator_threads.py).
SMALL_FEATURE_MAP = 2**16

# torch's thread count is kept per operating-system thread (OpenMP's rule), and so is the count to give back.
_outer = threading.local()


@contextlib.contextmanager
def small_operators_on_one_thread(feature_map_elements: int, device: torch.device) -> Iterator[None]:
    """Run the block on one thread if the feature map is small and on the CPU (see the module's doc); else change
    nothing."""
    threads = torch.get_num_threads()
    if (device.type != "cpu" or feature_map_elements >= SMALL_FEATURE_MAP or threads == 1
            or getattr(_outer, "threads", None)):
        yield
        return
    _outer.threads = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _outer.threads = None


@contextlib.contextmanager
def all_threads() -> Iterator[None]:
    """Inside :func:`small_operators_on_one_thread`, give one large operator the threads back; elsewhere nothing."""
    threads = getattr(_outer, "threads", None)
    if not threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)
