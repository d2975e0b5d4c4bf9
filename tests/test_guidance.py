"""Guidance: classifier-free and classifier guidance as denoiser wrappers, the conditions they batch, and the
noise-aware classifier.

The exact checks run on a toy problem where everything is known in closed form: x0 drawn from one of
K Gaussian classes N(m_k, v I) with equal prior, noised to x_t = alpha x0 + sigma eps. Then
p(x_t | k) = N(alpha m_k, s^2 I) with s^2 = alpha^2 v + sigma^2, the classifier p(k | x_t) is a softmax of
-||x_t - alpha m_k||^2 / (2 s^2), and the denoisers are

    E[x0 | x_t, k] = m_k + alpha v / s^2 (x_t - alpha m_k),     E[x0 | x_t] = sum_k p(k | x_t) E[x0 | x_t, k].
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from minisd.diffusion import NetworkDenoiser, build_schedule, expand_like
from minisd.diffusion.conditioning import (concat_conditions, condition_batch_size, repeat_condition)
from minisd.diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance, classifier_log_likelihood_gradient
from minisd.diffusion.samplers import SAMPLERS, num_evaluations, sample
from minisd.errors import ConfigError
from minisd.models.noisy_classifier import NoisyClassifier
from minisd.nn.unet import UNet

MEANS = torch.tensor([[1.0, -0.5], [-1.0, 0.75], [0.25, 1.0]], dtype=torch.float64)  # K = 3 classes in 2-D
VARIANCE = 0.05
NULL = len(MEANS)  # the null label, as in the UNet: index num_classes


class GaussianClassesDenoiser:
    """The exact denoiser of the toy problem: E[x0 | x_t, y] for labels y, E[x0 | x_t] for the null label.

    ``cond``: ``{"label": (B,)}``; it records the batch size of every call.
    """

    def __init__(self):
        self.schedule = build_schedule("cosine").to(torch.float64)
        self.batch_sizes: list[int] = []

    def noise_levels(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        alpha, sigma = (expand_like(v, x_t) for v in self.schedule.alpha_sigma(t))
        return alpha, sigma, alpha**2 * VARIANCE + sigma**2

    def class_posteriors(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p(k | x_t) ``(B, K)``."""
        return torch.softmax(analytic_logits(self, x_t, t), dim=1)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        self.batch_sizes.append(len(x_t))
        alpha, _, s2 = self.noise_levels(x_t, t)
        per_class = MEANS + (alpha * VARIANCE / s2)[:, None] * (x_t[:, None] - alpha[:, None] * MEANS)  # (B, K, D)
        unconditional = (self.class_posteriors(x_t, t)[..., None] * per_class).sum(1)
        labels = cond["label"]
        chosen = per_class[torch.arange(len(x_t)), labels.clamp(max=NULL - 1)]
        return torch.where((labels == NULL)[:, None], unconditional, chosen)


def analytic_logits(denoiser: GaussianClassesDenoiser, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log p(x_t | k) + const ``(B, K)``: the exact noise-aware classifier's logits."""
    alpha, _, s2 = denoiser.noise_levels(x_t, t)
    return -(x_t[:, None] - alpha[:, None] * MEANS).square().sum(-1) / (2 * s2)


def labels(*values: int) -> dict[str, torch.Tensor]:
    return {"label": torch.tensor(values)}


def toy_inputs(batch_size: int = 6, t: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    x_t = torch.randn(batch_size, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x_t, torch.full((batch_size,), t, dtype=torch.float64)


# --------------------------------------------------------------------------------------
# Conditions as batches
# --------------------------------------------------------------------------------------


def test_concat_conditions_stacks_every_key_and_keeps_none_as_none():
    first = {"label": torch.tensor([1, 2]), "context": torch.ones(2, 3, 4)}
    second = {"label": torch.tensor([5]), "context": torch.zeros(1, 3, 4)}
    both = concat_conditions(first, second)
    assert both["label"].tolist() == [1, 2, 5] and both["context"].shape == (3, 3, 4)
    assert both["context"][:2].eq(1).all() and both["context"][2].eq(0).all()
    assert concat_conditions(None, None) is None
    assert concat_conditions(torch.tensor([0]), torch.tensor([3])).tolist() == [0, 3]


def test_concat_conditions_pads_a_shorter_masked_context_with_masked_zeros():
    prompt = {"context": torch.ones(1, 4, 2), "context_mask": torch.ones(1, 4, dtype=torch.bool)}
    negative = {"context": torch.ones(1, 1, 2), "context_mask": torch.ones(1, 1, dtype=torch.bool)}
    both = concat_conditions(prompt, negative)
    assert both["context"].shape == (2, 4, 2)
    assert both["context_mask"].tolist() == [[True] * 4, [True, False, False, False]]
    assert both["context"][1, 1:].eq(0).all()


def test_concat_conditions_refuses_conditions_of_different_forms():
    with pytest.raises(ConfigError, match="same form"):
        concat_conditions(labels(1), None)
    with pytest.raises(ConfigError, match="context_mask"):
        concat_conditions({"context": torch.ones(1, 4, 2)}, {"context": torch.ones(1, 2, 2)})


def test_repeat_condition_turns_a_batch_of_one_into_a_batch_of_n():
    repeated = repeat_condition({"label": torch.tensor([7]), "context_mask": None}, 3)
    assert repeated["label"].tolist() == [7, 7, 7] and repeated["context_mask"] is None
    assert condition_batch_size(repeated) == 3 and condition_batch_size(None) is None


# --------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------


def test_cfg_at_scale_1_is_the_conditional_denoiser_and_at_0_the_unconditional_one():
    denoiser, (x_t, t) = GaussianClassesDenoiser(), toy_inputs(3)
    cond, uncond = labels(0, 1, 2), labels(NULL, NULL, NULL)
    assert torch.equal(ClassifierFreeGuidance(denoiser, 1.0, uncond)(x_t, t, cond), denoiser(x_t, t, cond))
    assert torch.equal(ClassifierFreeGuidance(denoiser, 0.0, uncond)(x_t, t, cond), denoiser(x_t, t, uncond))


@pytest.mark.parametrize("scale", [-0.5, 2.0, 7.5])
def test_cfg_is_the_unconditional_estimate_plus_scale_times_the_conditional_difference(scale):
    denoiser, (x_t, t) = GaussianClassesDenoiser(), toy_inputs(3)
    cond, uncond = labels(0, 1, 2), labels(NULL, NULL, NULL)
    x0_cond, x0_uncond = denoiser(x_t, t, cond), denoiser(x_t, t, uncond)
    guided = ClassifierFreeGuidance(denoiser, scale, uncond)(x_t, t, cond)
    assert torch.allclose(guided, x0_uncond + scale * (x0_cond - x0_uncond), atol=1e-12)


def test_cfg_in_an_interval_guides_only_the_examples_whose_log_snr_is_inside_it():
    """Kynkaanniemi et al. (2024): guidance where low <= lambda(t) < high, the conditional estimate elsewhere; one
    batch may hold times on both sides (as the consistency loss's does)."""
    denoiser, (x_t, _) = GaussianClassesDenoiser(), toy_inputs(3)
    cond, uncond = labels(0, 1, 2), labels(NULL, NULL, NULL)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    log_snr = denoiser.schedule.log_snr(t)
    interval = (log_snr[1].item() - 0.1, log_snr[1].item() + 0.1)  # holds the middle time only
    guided = ClassifierFreeGuidance(denoiser, 4.0, uncond, interval)(x_t, t, cond)
    everywhere = ClassifierFreeGuidance(denoiser, 4.0, uncond)(x_t, t, cond)
    conditional = denoiser(x_t, t, cond)
    assert torch.allclose(guided[1], everywhere[1], atol=1e-12) and not torch.allclose(guided[1], conditional[1])
    assert torch.equal(guided[[0, 2]], conditional[[0, 2]])
    # All outside: the conditional denoiser alone, one call of the batch.
    outside = ClassifierFreeGuidance(denoiser, 4.0, uncond, (50.0, 60.0))
    assert torch.equal(outside(x_t, t, cond), conditional)
    for bad in [(1.0, 1.0), (2.0, -1.0), (float("nan"), 1.0), (1.0,), "low high"]:
        with pytest.raises(ConfigError, match="guidance interval"):
            ClassifierFreeGuidance(denoiser, 4.0, uncond, bad)


def test_cfg_repeats_an_unconditional_condition_of_batch_one():
    denoiser, (x_t, t) = GaussianClassesDenoiser(), toy_inputs(3)
    one, three = ClassifierFreeGuidance(denoiser, 3.0, labels(NULL)), ClassifierFreeGuidance(denoiser, 3.0, labels(NULL, NULL, NULL))
    assert torch.equal(one(x_t, t, labels(0, 1, 2)), three(x_t, t, labels(0, 1, 2)))
    with pytest.raises(ConfigError, match="batch size 2"):
        ClassifierFreeGuidance(denoiser, 3.0, labels(NULL, NULL))(x_t, t, labels(0, 1, 2))


def randomised_unet(num_classes: int) -> UNet:
    """A tiny UNet with every weight random: a fresh one outputs exactly 0 whatever the label."""
    unet = UNet(base_channels=8, channel_mults=(1, 2), num_classes=num_classes, attention_levels=(1,))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return unet


def test_cfg_one_batched_network_call_equals_the_two_separate_calls():
    network = NetworkDenoiser(randomised_unet(num_classes=3).eval(), build_schedule("cosine"))
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t, cond, uncond = torch.full((4,), 0.4), labels(0, 1, 2, 0), labels(3, 3, 3, 3)
    x0_cond, x0_uncond = network(x_t, t, cond), network(x_t, t, uncond)
    assert not torch.allclose(x0_cond, x0_uncond)  # the label matters, so the test can fail
    guided = ClassifierFreeGuidance(network, 4.0, uncond)(x_t, t, cond)
    assert torch.allclose(guided, x0_uncond + 4.0 * (x0_cond - x0_uncond), atol=1e-5)


@pytest.mark.parametrize("scale, batch_per_call", [(0.0, 2), (1.0, 2), (3.0, 4)])
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_cfg_calls_the_denoiser_once_per_evaluation_with_both_branches_in_one_batch(sampler, scale, batch_per_call):
    # Two samples: both branches in one call of 4, or only the branch that counts (scale 0 or 1), in one call of 2.
    # The ode sampler's default dopri5 has no evaluation count in advance, so it is counted with fixed steps.
    denoiser, steps = GaussianClassesDenoiser(), 4
    sampler_args = {"method": "rk4"} if sampler == "ode" else {}
    guided = ClassifierFreeGuidance(denoiser, scale, labels(NULL, NULL))
    x0 = sample(guided, (2, 2), sampler=sampler, steps=steps, cond=labels(0, 1), dtype=torch.float64,
                generator=torch.Generator().manual_seed(0), **sampler_args)
    assert x0.shape == (2, 2) and torch.isfinite(x0).all()
    assert denoiser.batch_sizes == [batch_per_call] * num_evaluations(sampler, steps, **sampler_args)


# --------------------------------------------------------------------------------------
# Classifier guidance
# --------------------------------------------------------------------------------------


def exact_classifier(denoiser: GaussianClassesDenoiser):
    return lambda x_t, t: analytic_logits(denoiser, x_t, t)


def test_classifier_gradient_is_computed_under_no_grad_and_matches_the_closed_form():
    # grad log p(y | x_t) = alpha (m_y - sum_k p(k | x_t) m_k) / s^2 for the Gaussian classes.
    denoiser, (x_t, t) = GaussianClassesDenoiser(), toy_inputs()
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        gradient = classifier_log_likelihood_gradient(exact_classifier(denoiser), x_t, t, y)
    alpha, _, s2 = denoiser.noise_levels(x_t, t)
    expected = alpha * (MEANS[y] - denoiser.class_posteriors(x_t, t) @ MEANS) / s2
    assert torch.allclose(gradient, expected, atol=1e-12)
    assert gradient.abs().max() > 0.1


@pytest.mark.parametrize("t_value", [0.3, 0.7])
def test_classifier_guidance_at_scale_1_with_the_exact_classifier_gives_the_exact_conditional_denoiser(t_value):
    # Bayes: grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t), so guiding E[x0 | x_t] by the exact
    # classifier at scale 1 lands on E[x0 | x_t, y].
    denoiser, (x_t, t) = GaussianClassesDenoiser(), toy_inputs(t=t_value)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    uncond = {"label": torch.full((6,), NULL)}
    guided = ClassifierGuidance(denoiser, exact_classifier(denoiser), 1.0, y)(x_t, t, uncond)
    conditional = denoiser(x_t, t, {"label": y})
    assert torch.allclose(guided, conditional, atol=1e-10)
    assert not torch.allclose(denoiser(x_t, t, uncond), conditional, atol=1e-3)


@pytest.mark.parametrize("scale", [0.0, 2.0, 6.0])
def test_classifier_guidance_equals_cfg_when_the_classifier_is_the_diffusion_models_own(scale):
    # Both guide the score to s_uncond + gamma (s_cond - s_uncond) when p(y | x_t) is exact.
    denoiser, (x_t, t) = GaussianClassesDenoiser(), toy_inputs()
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    uncond = {"label": torch.full((6,), NULL)}
    classifier_guided = ClassifierGuidance(denoiser, exact_classifier(denoiser), scale, y)(x_t, t, uncond)
    classifier_free = ClassifierFreeGuidance(denoiser, scale, uncond)(x_t, t, {"label": y})
    assert torch.allclose(classifier_guided, classifier_free, atol=1e-10)


def tiny_noisy_classifier() -> NoisyClassifier:
    torch.manual_seed(0)
    return NoisyClassifier(image_shape=(1, 8, 8), base_channels=8, channel_mults=[1, 2])


def test_classifier_guidance_leaves_no_gradient_on_the_classifier_weights():
    classifier = tiny_noisy_classifier()
    network = NetworkDenoiser(randomised_unet(num_classes=3).eval(), build_schedule("cosine"))
    guided = ClassifierGuidance(network, classifier.logits, 2.0, torch.tensor([0, 1]))
    with torch.no_grad():
        x0 = guided(torch.randn(2, 1, 8, 8), torch.full((2,), 0.5))
    assert x0.shape == (2, 1, 8, 8)
    assert all(parameter.grad is None for parameter in classifier.parameters())


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_both_guidances_run_unchanged_in_every_sampler(sampler):
    classifier = tiny_noisy_classifier()
    network = NetworkDenoiser(randomised_unet(num_classes=3).eval(), build_schedule("cosine"))
    null, wanted = labels(3, 3), labels(0, 2)
    # The ode sampler runs the same guided denoiser whatever its solver; dopri5 spends 339 evaluations (at 3 steps)
    # on the random network's rough flow, rk4 spends 9.
    sampler_args = {"method": "rk4"} if sampler == "ode" else {}
    # Classifier-free guidance is given the wanted labels; classifier guidance guides the unconditional model.
    for guided, cond in ((ClassifierFreeGuidance(network, 3.0, null), wanted),
                         (ClassifierGuidance(network, classifier.logits, 3.0, wanted["label"]), null)):
        x0 = sample(guided, (2, 1, 8, 8), sampler=sampler, steps=3, cond=cond, generator=torch.Generator().manual_seed(0),
                    **sampler_args)
        assert x0.shape == (2, 1, 8, 8) and torch.isfinite(x0).all()


# --------------------------------------------------------------------------------------
# The noise-aware classifier
# --------------------------------------------------------------------------------------


def test_noisy_classifier_rebuilds_from_its_hparams_with_the_same_weights_shapes():
    model = tiny_noisy_classifier()
    rebuilt = NoisyClassifier(**model.hparams)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.logits(torch.randn(3, 1, 8, 8), torch.rand(3)).shape == (3, 10)


def test_noisy_classifier_refuses_a_learned_schedule():
    with pytest.raises(ValueError, match="fixed schedule"):
        NoisyClassifier(schedule="learned")


def test_noisy_classifier_loss_falls_on_a_tiny_task(digits_train):
    model = tiny_noisy_classifier()
    batch = {"image": digits_train.images[:256], "label": digits_train.labels[:256]}

    def evaluate() -> float:
        torch.manual_seed(1)  # the same t and eps before and after training
        with torch.no_grad():
            return model.loss(batch)[0].item()

    before = evaluate()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss, logs = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert 0 <= logs["accuracy"] <= 1
    assert after < before - 0.3, (before, after)


def test_cfg_batches_the_two_conditions_once_per_sampling_run_and_an_everywhere_interval_is_plain_cfg():
    denoiser, (x_t, t) = GaussianClassesDenoiser(), toy_inputs(3)
    cond, uncond = labels(0, 1, 2), labels(NULL)
    seen = []

    class Recording(GaussianClassesDenoiser):
        def __call__(self, x, s, c):
            seen.append(c)
            return super().__call__(x, s, c)

    guided = ClassifierFreeGuidance(Recording(), 3.0, uncond)
    guided(x_t, t, cond), guided(x_t, t, cond)
    assert seen[0] is seen[1] and seen[0]["label"].tolist() == [0, 1, 2, NULL, NULL, NULL]
    guided(x_t, t, labels(2, 1, 0))  # another condition: batched anew
    assert seen[2]["label"].tolist() == [2, 1, 0, NULL, NULL, NULL]
    everywhere = ClassifierFreeGuidance(denoiser, 3.0, uncond, (float("-inf"), float("inf")))
    assert everywhere.interval is None
    assert torch.equal(everywhere(x_t, t, cond), ClassifierFreeGuidance(denoiser, 3.0, uncond)(x_t, t, cond))
