"""minisd's Conv2d: nn.Conv2d's results without gradients from a weight kept in oneDNN's layout, a fresh copy of
that weight whenever the weight changes, and nn.Conv2d itself wherever gradients are needed."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minisd.nn import conv2d
from minisd.nn.conv2d import Conv2d
from minisd.nn.unet import UNet

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def conv(*args, **kwargs) -> Conv2d:
    torch.manual_seed(0)
    layer = Conv2d(*args, **kwargs)
    with torch.no_grad():
        layer.weight.normal_()
    return layer


def reference(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


@needs_onednn
@pytest.mark.parametrize("kwargs", [
    dict(in_channels=8, out_channels=16, kernel_size=3, padding=1),
    dict(in_channels=8, out_channels=16, kernel_size=1),
    dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1),
    dict(in_channels=8, out_channels=8, kernel_size=4, stride=2, padding=1, bias=False),
    dict(in_channels=8, out_channels=16, kernel_size=3, padding=1, groups=4),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2),
])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_without_gradients_it_gives_the_convolution_of_the_packed_weight(kwargs, layout):
    layer = conv(**kwargs).to(memory_format=layout)
    x = torch.randn(3, kwargs["in_channels"], 9, 7).contiguous(memory_format=layout)
    with torch.no_grad():
        out = layer(x)
    assert layer in conv2d._PACKED  # the fast path ran
    torch.testing.assert_close(out, reference(layer, x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_a_weight_written_in_place_or_replaced_is_packed_again():
    layer = conv(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).square().sum().backward()
    optimizer.step()  # an in-place write
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(layer, x), rtol=1e-5, atol=1e-5)
        layer.load_state_dict({"weight": torch.randn(4, 4, 3, 3), "bias": torch.zeros(4)})
        torch.testing.assert_close(layer(x), reference(layer, x), rtol=1e-5, atol=1e-5)
        layer.weight = nn.Parameter(torch.randn(4, 4, 3, 3))  # a new tensor
        torch.testing.assert_close(layer(x), reference(layer, x), rtol=1e-5, atol=1e-5)


def test_with_gradients_it_is_nn_conv2d():
    layer = conv(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    stock = nn.Conv2d(4, 6, 3, padding=1)
    stock.load_state_dict(layer.state_dict())
    out, expected = layer(x), stock(x)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


@needs_onednn
def test_a_module_that_ran_copies_pickles_and_keeps_its_state_dict():
    unet = UNet(base_channels=8, channel_mults=(1, 2), num_heads=2)
    with torch.no_grad():
        unet(torch.randn(2, 1, 8, 8), torch.rand(2))
    twin = copy.deepcopy(unet)
    buffer = io.BytesIO()
    torch.save(unet, buffer)
    assert set(twin.state_dict()) == set(unet.state_dict())
    assert all(not value.is_mkldnn for value in unet.state_dict().values())


@needs_onednn
def test_weights_made_under_inference_mode_are_packed_on_every_call():
    with torch.inference_mode():
        layer = conv(4, 4, 3, padding=1)
        x = torch.randn(2, 4, 5, 5)
        torch.testing.assert_close(layer(x), reference(layer, x), rtol=1e-5, atol=1e-5)


def test_a_bad_input_gets_torchs_own_error():
    layer = conv(4, 4, 3, padding=1)
    with torch.no_grad(), pytest.raises(RuntimeError, match="channels"):
        layer(torch.randn(2, 3, 5, 5))
    assert conv2d._available == torch.backends.mkldnn.is_available()  # the fast path stays on
