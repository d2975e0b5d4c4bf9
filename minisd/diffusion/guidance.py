"""Guidance: denoisers that wrap a denoiser and push its estimate towards a condition (Luo 2022, section "Guidance").

Each guidance is a :class:`~minisd.diffusion.denoiser.Denoiser` built around another one, so every sampler
of :mod:`minisd.diffusion.samplers` runs it unchanged, and guidances stack (classifier guidance around
classifier-free guidance is a denoiser too).

Both methods are stated by Luo (2022) for the score s(x_t) = grad log p(x_t). A denoiser returns x0_hat
instead; Tweedie's formula (Luo (2022) eq. 133, in our alpha/sigma notation) turns one into the other at
fixed x_t:

    x0_hat = (x_t + sigma_t^2 s) / alpha_t,

an affine map of the score, the same for every branch at the same (x_t, t). A guided score is therefore a
guided x0_hat, with the score's weights: see each class.

The guidance scale follows Luo's gamma, which is diffusers' ``guidance_scale``: 0 is the unconditional
model, 1 the (nominally) conditional one, above 1 guides harder. (Ho & Salimans (2022) write w = gamma - 1.)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from minisd.diffusion.conditioning import Condition, concat_conditions, condition_batch_size, repeat_condition
from minisd.diffusion.denoiser import Denoiser, expand_like
from minisd.errors import ConfigError

# A noise-aware classifier: (x_t (B, ...), t (B,)) -> logits (B, num_classes) of p(y | x_t).
NoisyClassifierFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_interval(interval: Any) -> tuple[float, float] | None:
    """A guidance interval ``(low, high)`` in log-SNR, low < high (either may be infinite), or None (everywhere)."""
    if interval is None:
        return None
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) for v in interval)
            and interval[0] < interval[1]):
        raise ConfigError(f"the guidance interval is two log-SNR values, low < high, got {interval!r}")
    return float(interval[0]), float(interval[1])


def check_scale(scale: float) -> float:
    """A guidance scale as a float; anything but a finite number is a ConfigError."""
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)):
        raise ConfigError(f"the guidance scale must be a finite number, got {scale!r}")
    return float(scale)


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022; Luo (2022), section "Classifier-Free Guidance").

    Luo's guided score mixes the conditional and the unconditional score of one network,

        grad log p_gamma(x_t | y) = gamma grad log p(x_t | y) + (1 - gamma) grad log p(x_t)
                                  = s_uncond + gamma (s_cond - s_uncond),

    and through x0_hat = (x_t + sigma^2 s) / alpha, whose x_t / alpha part the weights gamma and 1 - gamma
    (summing to 1) carry through unchanged, the same mixture of denoised estimates:

        x0_guided = (x_t + sigma^2 (s_uncond + gamma (s_cond - s_uncond))) / alpha
                  = x0_uncond + gamma (x0_cond - x0_uncond).

    (So it is the same mixture of eps, or of v, predictions: all of them are affine in the score at fixed x_t.)

    ``uncond`` is the condition of the unconditional branch: the null labels of a class-conditional model
    (``DiffusionModel.null_condition``), or a negative prompt's text context; a batch of one is repeated to
    the batch being sampled. Both branches go through the network in ONE call of twice the batch: one large
    call uses the hardware better than two small ones, and gives the same numbers, because nothing in the
    UNet mixes examples (group norm is per example).

    ``scale`` 1 is exactly the conditional denoiser and 0 exactly the unconditional one: the other branch's
    weight is zero there, so it is not evaluated at all (half the cost, and no rounding from 0 * x).

    ``interval`` ``(low, high)``: guide only where low <= lambda(t) < high (log-SNR), and elsewhere return the
    conditional estimate (Kynkaanniemi et al. 2024). At high noise guidance pushes every sample towards the few
    shapes most typical of the prompt, before the sample has chosen its own, which costs variety; at low noise the
    picture is already decided and guidance changes little. Guiding only in between keeps the prompt adherence
    and most of the variety (benchmarks/README.md, "Time to quality"). Outside the interval a step costs one
    network call of the batch instead of one of twice the batch.
    """

    def __init__(self, denoiser: Denoiser, scale: float, uncond: Condition,
                 interval: tuple[float, float] | None = None):
        self.denoiser, self.scale, self.uncond = denoiser, check_scale(scale), uncond
        self.interval = check_interval(interval)
        if self.interval == (-math.inf, math.inf):
            self.interval = None  # every step: the plain rule
        self.schedule = denoiser.schedule
        self._last_batched: tuple | None = None

    def unconditional(self, batch_size: int) -> Condition:
        """``uncond`` for ``batch_size`` examples (a batch of one repeated)."""
        size = condition_batch_size(self.uncond)
        if size is None or size == batch_size:
            return self.uncond
        if size == 1:
            return repeat_condition(self.uncond, batch_size)
        raise ConfigError(f"the unconditional condition has batch size {size}, the samples {batch_size}: "
                          f"give one per sample, or one for all")

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Guided x0_hat ``(B, ...)`` at ``x_t`` ``(B, ...)``, times ``t`` ``(B,)``, condition ``cond`` (batch B)."""
        if self.interval is not None:
            return self._guided_in_interval(x_t, t, cond)
        if self.scale == 1:
            return self.denoiser(x_t, t, cond)
        if self.scale == 0:
            return self.denoiser(x_t, t, self.unconditional(len(x_t)))
        x0_cond, x0_uncond = self._both_branches(x_t, t, cond)
        return x0_uncond + self.scale * (x0_cond - x0_uncond)

    def _both_branches(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), self._batched(cond, len(x_t))).chunk(2)

    def _batched(self, cond: Any, batch_size: int) -> Condition:
        """[cond; uncond] as one condition, batched once for all the steps of a sampling run: the sampler passes
        the same condition at every step, and the network's cross-attention then reuses the prompt's keys and
        values (:class:`~minisd.nn.attention.MultiHeadAttention`)."""
        if self._last_batched is None or self._last_batched[:2] != (id(cond), batch_size):
            self._last_batched = (id(cond), batch_size, cond, concat_conditions(cond, self.unconditional(batch_size)))
        return self._last_batched[3]

    def _guided_in_interval(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Each example guided at ``scale`` where its lambda(t) is inside the interval, else at 1 (conditional)."""
        log_snr = self.schedule.log_snr(t)
        inside = (self.interval[0] <= log_snr) & (log_snr < self.interval[1])
        if not bool(inside.any()):
            return self.denoiser(x_t, t, cond)
        x0_cond, x0_uncond = self._both_branches(x_t, t, cond)
        return torch.where(expand_like(inside, x_t), x0_uncond + self.scale * (x0_cond - x0_uncond), x0_cond)


def classifier_log_likelihood_gradient(classifier: NoisyClassifierFn, x_t: torch.Tensor, t: torch.Tensor,
                                       labels: torch.Tensor) -> torch.Tensor:
    """grad_{x_t} log p(y | x_t, t) ``(B, ...)`` for the labels ``y`` ``(B,)``, from the classifier's logits.

    Computed under ``torch.enable_grad()``, so it works inside the samplers' ``torch.no_grad()``. Only x_t
    gets a gradient (``torch.autograd.grad``), never the classifier's weights. The per-example log-probabilities
    are summed before differentiating: each depends on its own x_t only, so the sum's gradient is each one's.
    """
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x, t.detach()), dim=-1)
        chosen = log_probs.gather(1, labels.to(log_probs.device).long()[:, None]).sum()
        (gradient,) = torch.autograd.grad(chosen, x)
    return gradient


class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021; Luo (2022), section "Classifier Guidance").

    Bayes' rule splits the conditional score into the unconditional one and a classifier's gradient
    (grad log p(y) = 0), and Luo's guided score weighs the latter by gamma:

        grad log p_gamma(x_t | y) = grad log p(x_t) + gamma grad_{x_t} log p(y | x_t).

    The classifier must be trained on noisy x_t at every t (:class:`minisd.models.noisy_classifier.NoisyClassifier`):
    one trained on clean images says nothing reliable about x_t. Through x0_hat = (x_t + sigma^2 s) / alpha:

        x0_guided = x0_hat + gamma sigma_t^2 / alpha_t grad_{x_t} log p(y | x_t),

    which is Dhariwal & Nichol's eps_guided = eps_hat - gamma sigma_t grad log p(y | x_t) (their Alg. 2) in x0
    form. The factor sigma^2 / alpha is 150 where sampling starts (alpha = 0.0067): wrap the guided denoiser
    in a :class:`~minisd.diffusion.denoiser.ClippedDenoiser` to keep its estimate in the data range.

    ``classifier(x_t, t)`` returns the logits of p(y | x_t) (``NoisyClassifier.logits``); ``labels`` ``(B,)``
    are the classes asked for, one per sample. ``cond`` passes through to ``denoiser``: guide an unconditional
    model (cond = None or null labels), or add the classifier's push to a conditional one.
    """

    def __init__(self, denoiser: Denoiser, classifier: NoisyClassifierFn, scale: float, labels: torch.Tensor):
        self.denoiser, self.classifier, self.scale, self.labels = denoiser, classifier, check_scale(scale), labels
        self.schedule = denoiser.schedule

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Guided x0_hat ``(B, ...)`` at ``x_t`` ``(B, ...)`` and times ``t`` ``(B,)``."""
        x0_pred = self.denoiser(x_t, t, cond)
        if self.scale == 0:
            return x0_pred
        if len(self.labels) != len(x_t):
            raise ConfigError(f"classifier guidance was given {len(self.labels)} labels for {len(x_t)} samples: "
                              f"give one label per sample")
        gradient = classifier_log_likelihood_gradient(self.classifier, x_t, t, self.labels)
        alpha, sigma = (expand_like(value, x_t) for value in self.schedule.alpha_sigma(t))
        return x0_pred + self.scale * sigma**2 / alpha * gradient
