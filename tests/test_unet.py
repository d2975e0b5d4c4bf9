"""The UNet: shapes at MNIST and CIFAR sizes, zero initialisation, and that time, class labels
and text context each change the output."""

import pytest
import torch

from minisd.nn.attention import MultiHeadAttention
from minisd.nn.embeddings import sinusoidal_embedding
from minisd.nn.unet import UNet

NUM_CLASSES = 10
CONTEXT_DIM = 12


def tiny_unet(**kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(**{"base_channels": 16, "num_heads": 2, **kwargs})


def randomise_zero_parameters(model: UNet, std: float = 0.1) -> UNet:
    """Give every all-zero parameter (zero-initialised output layers, norm biases) small random
    values, so the output is no longer exactly zero and depends on every input."""
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, std)
    return model


def random_context(batch: int, length: int = 5) -> torch.Tensor:
    return torch.randn(batch, length, CONTEXT_DIM)


CONDITIONINGS = {
    "none": ({}, lambda batch: None),
    "labels": ({"num_classes": NUM_CLASSES}, lambda batch: torch.arange(batch) % NUM_CLASSES),
    "null labels": ({"num_classes": NUM_CLASSES}, lambda batch: None),
    "context": ({"context_dim": CONTEXT_DIM}, lambda batch: {"context": random_context(batch)}),
    "labels and context": ({"num_classes": NUM_CLASSES, "context_dim": CONTEXT_DIM},
                           lambda batch: {"label": torch.zeros(batch, dtype=torch.long),
                                          "context": random_context(batch)}),
}


# Cross-attention needs attention blocks, so a context goes with attention only.
@pytest.mark.parametrize("attention_levels, conditioning", [
    (attention_levels, conditioning) for attention_levels in [None, (), (1, 2)] for conditioning in CONDITIONINGS
    if attention_levels != () or "context" not in conditioning])
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_unet_output_has_the_input_shape(channels, size, attention_levels, conditioning):
    unet_kwargs, make_cond = CONDITIONINGS[conditioning]
    model = randomise_zero_parameters(tiny_unet(in_channels=channels, attention_levels=attention_levels,
                                                **unet_kwargs))
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.rand(2), make_cond(2))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_can_predict_a_different_number_of_channels():
    model = tiny_unet(in_channels=3, out_channels=6)  # e.g. a mean and a variance per pixel
    assert model(torch.randn(2, 3, 32, 32), torch.rand(2)).shape == (2, 6, 32, 32)


def test_fresh_unet_outputs_exactly_zero():
    model = tiny_unet(num_classes=NUM_CLASSES, context_dim=CONTEXT_DIM)
    out = model(torch.randn(3, 1, 28, 28), torch.rand(3), {"label": torch.tensor([0, 1, 2]),
                                                            "context": random_context(3)})
    assert torch.equal(out, torch.zeros_like(out))


def test_time_changes_the_output():
    model = randomise_zero_parameters(tiny_unet())
    x = torch.randn(1, 1, 28, 28).expand(2, -1, -1, -1)
    out = model(x, torch.tensor([0.1, 0.9]))
    assert (out[0] - out[1]).abs().mean() > 1e-3 * out.abs().mean()


def test_close_times_get_distinct_features():
    # One step of a 1000-step discretisation apart: the fastest feature turns by a radian.
    features = sinusoidal_embedding(1000 * torch.tensor([0.500, 0.501]), dim=32)
    assert (features[0] - features[1]).abs().max() > 0.3


def test_class_label_changes_the_output():
    model = randomise_zero_parameters(tiny_unet(num_classes=NUM_CLASSES))
    x, t = torch.randn(1, 1, 28, 28).expand(3, -1, -1, -1), torch.full((3,), 0.5)
    out = model(x, t, torch.tensor([3, 7, model.null_label]))
    assert (out[0] - out[1]).abs().mean() > 1e-3 * out.abs().mean()
    assert (out[0] - out[2]).abs().mean() > 1e-3 * out.abs().mean()


def test_no_labels_means_the_null_label():
    model = randomise_zero_parameters(tiny_unet(num_classes=NUM_CLASSES))
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    null_labels = torch.full((2,), NUM_CLASSES)
    assert torch.equal(model(x, t), model(x, t, null_labels))
    assert torch.equal(model(x, t, {"label": None}), model(x, t, null_labels))


def test_context_changes_the_output_and_no_context_skips_cross_attention():
    model = randomise_zero_parameters(tiny_unet(context_dim=CONTEXT_DIM))
    x, t = torch.randn(1, 1, 28, 28).expand(2, -1, -1, -1), torch.full((2,), 0.5)
    out = model(x, t, {"context": random_context(2)})
    assert (out[0] - out[1]).abs().mean() > 1e-3 * out.abs().mean()
    without_cross_attention = model(x, t, {"context": None})
    assert not torch.allclose(out[0], without_cross_attention[0])


def test_masked_context_tokens_are_ignored():
    model = randomise_zero_parameters(tiny_unet(context_dim=CONTEXT_DIM))
    x, t, context = torch.randn(2, 1, 28, 28), torch.rand(2), random_context(2, length=6)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    changed_padding = context.clone()
    changed_padding[0, 4:] = torch.randn(2, CONTEXT_DIM)
    out = model(x, t, {"context": context, "context_mask": mask})
    out_changed = model(x, t, {"context": changed_padding, "context_mask": mask})
    torch.testing.assert_close(out, out_changed)


def test_gradient_reaches_every_parameter():
    model = randomise_zero_parameters(tiny_unet(num_classes=NUM_CLASSES, context_dim=CONTEXT_DIM,
                                                attention_levels=(1, 2)))
    labels = torch.tensor([1, 2, NUM_CLASSES])
    out = model(torch.randn(3, 1, 28, 28), torch.rand(3), {"label": labels, "context": random_context(3)})
    (out - torch.randn_like(out)).square().mean().backward()
    without_gradient = [name for name, parameter in model.named_parameters()
                        if parameter.grad is None or not parameter.grad.any()]
    assert without_gradient == []


@pytest.mark.parametrize("channel_mults, size", [((1, 2, 2), 30), ((1, 2, 2, 2), 28), ((1, 2), 33), ((1, 2, 2), 7)])
def test_unet_of_odd_sizes_returns_the_input_size_and_mixes_every_pixel(channel_mults, size):
    # Odd sides are rounded up on the way down and cropped on the way up (a 7x7 latent: 7, 4, 2).
    model = tiny_unet(channel_mults=channel_mults)
    for parameter in model.output.parameters():  # the zero-initialised output layer would hide everything
        torch.nn.init.normal_(parameter)
    x = torch.randn(1, 1, size, size, requires_grad=True)
    out = model(x, torch.rand(1))
    assert out.shape == x.shape
    out[0, 0, size // 2, size // 2].backward()
    assert x.grad[0, 0, 0, 0] != 0 and x.grad[0, 0, -1, -1] != 0


@pytest.mark.parametrize("unet_kwargs, match", [
    ({"context_dim": CONTEXT_DIM, "attention_levels": ()}, "needs attention blocks"),
    ({"attention_levels": (3,)}, "must lie in"),
    ({"base_channels": 12}, "divisible by groups"),
    ({"num_heads": 3}, "heads"),
])
def test_unet_rejects_bad_configurations(unet_kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_unet(**unet_kwargs)


@pytest.mark.parametrize("unet_kwargs, cond", [
    ({}, torch.zeros(2, dtype=torch.long)),
    ({}, {"context": random_context(2)}),
    ({"num_classes": NUM_CLASSES}, {"labels": torch.zeros(2, dtype=torch.long)}),
])
def test_unet_rejects_conditioning_it_was_not_built_for(unet_kwargs, cond):
    with pytest.raises(ValueError):
        tiny_unet(**unet_kwargs)(torch.randn(2, 1, 28, 28), torch.rand(2), cond)


def test_tiny_unet_trains_on_a_batch_of_eight_mnist_images():
    model = tiny_unet(num_classes=NUM_CLASSES)
    x = torch.randn(8, 1, 28, 28)
    loss = (model(x, torch.rand(8), torch.randint(0, NUM_CLASSES, (8,))) - x).square().mean()
    loss.backward()
    assert torch.isfinite(loss)


def test_cross_attention_keys_and_values_are_reused_only_while_context_and_weights_are_unchanged():
    """A sampler calls the network on the same context at every step: without gradients its keys and values are
    computed once. A context changed in place, another context, or weights changed in place are seen."""
    model = randomise_zero_parameters(tiny_unet(context_dim=CONTEXT_DIM)).eval()
    x, t, context = torch.randn(2, 1, 28, 28), torch.rand(2), random_context(2)
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention) and m.to_key_value.in_features == CONTEXT_DIM]
    calls = []
    for layer in layers:
        layer.to_key_value.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        first, second = model(x, t, {"context": context}), model(x, t, {"context": context})
        assert torch.equal(first, second) and len(calls) == len(layers)  # computed on the first call only
        context.mul_(2)  # in place: the same object, a new version
        torch.testing.assert_close(model(x, t, {"context": context}), model(x, t, {"context": context.clone()}))
        layers[0].to_key_value.weight.mul_(0.5)  # as an optimizer step or load_state_dict would
        reused = model(x, t, {"context": context})
    fresh = model(x, t, {"context": context})  # with gradients: always computed afresh, never cached
    torch.testing.assert_close(reused, fresh)
