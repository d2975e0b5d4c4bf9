"""minisd/nn/threads.py: a small UNet call runs its small operators on one thread and its convolutions on all the
threads the user set; a large call, and the thread count after either, are left as they were."""

import pytest
import torch

from minisd.nn import threads
from minisd.nn.conv2d import Conv2d
from minisd.nn.threads import (
    SMALL_FEATURE_MAP,
    all_threads,
    small_operators_on_one_thread,
)
from minisd.nn.unet import UNet

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()  # the suite runs each test on one thread (conftest.py)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_small_feature_map_runs_on_one_thread_and_convolutions_get_the_threads_back(two_threads):
    with small_operators_on_one_thread(SMALL_FEATURE_MAP - 1, CPU):
        assert torch.get_num_threads() == 1
        with all_threads():
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with small_operators_on_one_thread(1, CPU), all_threads():  # nested: the outer count is the one given back
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_a_large_feature_map_a_gpu_and_code_outside_a_region_keep_the_threads(two_threads):
    for elements, device in ((SMALL_FEATURE_MAP, CPU), (1, torch.device("cuda"))):  # no GPU needed: nothing runs
        with small_operators_on_one_thread(elements, device):
            assert torch.get_num_threads() == 2
            with all_threads():
                assert torch.get_num_threads() == 2
    with all_threads():
        assert torch.get_num_threads() == 2


def test_the_thread_count_is_restored_after_an_error(two_threads):
    with pytest.raises(ValueError), small_operators_on_one_thread(1, CPU), all_threads():
        raise ValueError("inside a convolution")
    assert torch.get_num_threads() == 2
    with all_threads():  # and the region is closed: nothing is given back outside it
        assert torch.get_num_threads() == 2


def unet() -> UNet:
    torch.manual_seed(0)
    network = UNet(in_channels=4, base_channels=16, channel_mults=(1, 2), attention_levels=(0, 1), context_dim=8)
    for parameter in network.parameters():  # zero-initialised output layers would hide every difference
        torch.nn.init.normal_(parameter, std=0.2)
    return network.eval()


def test_a_small_unet_call_convolves_on_all_threads_and_computes_the_same_values(two_threads, monkeypatch):
    network, seen = unet(), []
    x, t = torch.randn(2, 4, 7, 7), torch.rand(2)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    cond = {"context": torch.randn(2, 5, 8), "context_mask": mask}
    with torch.no_grad():
        monkeypatch.setattr(threads, "SMALL_FEATURE_MAP", 0)  # the rule off: every operator on both threads
        expected = network(x, t, cond)
        monkeypatch.undo()
        monkeypatch.setattr(Conv2d, "_convolve", record_threads(Conv2d._convolve, seen, "conv"))
        monkeypatch.setattr(torch.nn.GroupNorm, "forward", record_threads(torch.nn.GroupNorm.forward, seen, "norm"))
        out = network(x, t, cond)
    assert 2 * 16 * 7 * 7 < SMALL_FEATURE_MAP
    assert set(seen) == {("conv", 2), ("norm", 1)}
    assert torch.get_num_threads() == 2
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def record_threads(forward, seen, name):
    def recorded(self, *args):
        seen.append((name, torch.get_num_threads()))
        return forward(self, *args)
    return recorded
