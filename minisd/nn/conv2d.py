"""``Conv2d``: torch's 2-D convolution, faster where sampling spends its time on a CPU.

A sampler calls the same UNet 20 or more times on small feature maps (a 7x7 latent at a batch of 8). There, each
call of ``F.conv2d`` pays for more than its arithmetic: oneDNN, the library that runs torch's CPU convolutions,
first copies the weight into its own blocked layout, and it writes its output in the layout of the input. Without
gradients, this class keeps the weight in oneDNN's layout from one call to the next and calls oneDNN's convolution
directly; its output is channels-last, which the next convolution reads without a copy. A 128 -> 128 3x3
convolution of a batch of 8 4x4 maps takes 126-201 us against 195-287 for ``F.conv2d``, and a 4-image call of
``checkpoints/mnist`` (20 guided steps) became 1.24-1.28 times as fast (``benchmarks/sampling_switches.py``).

Inside a small UNet call, whose other operators run on one thread (``minisd/nn/threads.py``), a convolution takes
all the threads back for its own call.

The arithmetic is the same convolution; only the order of the sums may differ from ``F.conv2d`` on a
channels-first input (about 1e-7 of the values, as between torch's own layouts). Training is unchanged: with
gradients, on a GPU, in another dtype, or where oneDNN is missing, ``forward`` is ``nn.Conv2d``'s.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from minisd.nn.threads import all_threads

# Each convolution's weight in oneDNN's layout, with the weight's identity and version when it was copied.
# Kept outside the module, so that copying, pickling or saving a module never meets oneDNN's opaque tensors.
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[int, int, torch.Tensor]] = weakref.WeakKeyDictionary()
_available = torch.backends.mkldnn.is_available()


def _reordered(conv: Conv2d) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_convolution_weight(conv.weight, list(conv.padding), list(conv.stride),
                                                        list(conv.dilation), conv.groups)


def _packed_weight(conv: Conv2d) -> torch.Tensor:
    """``conv.weight`` reordered for oneDNN, again whenever the weight was replaced or written in place."""
    weight = conv.weight
    if weight.is_inference():  # made under torch.inference_mode: no version counter says when it changes
        return _reordered(conv)
    stamp = (weight.data_ptr(), weight._version)
    cached = _PACKED.get(conv)
    if cached is None or cached[:2] != stamp:
        _PACKED[conv] = cached = (*stamp, _reordered(conv))
    return cached[2]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (the same parameters, state dict and results) that, without gradients on a CPU, keeps its
    weight in oneDNN's layout between calls (see the module's doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with all_threads():  # a convolution gains from every thread even where the small operators run on one
            return self._convolve(x)

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        global _available
        if not self._packs(x):
            return super().forward(x)
        try:
            return torch.ops.mkldnn._convolution_pointwise(x, _packed_weight(self), self.bias, list(self.padding),
                                                           list(self.stride), list(self.dilation), self.groups,
                                                           "none", [], None)
        except (RuntimeError, NotImplementedError):
            out = super().forward(x)  # a bad input raises torch's own error here
            _available = False  # the input was fine: this torch cannot run oneDNN's convolution directly
            return out

    def _packs(self, x: torch.Tensor) -> bool:
        return (_available and torch.backends.mkldnn.enabled and not torch.is_grad_enabled() and x.dim() == 4
                and x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and self.padding_mode == "zeros" and not isinstance(self.padding, str))
