"""Chapter "Hierarchical VAE": a Markovian HVAE (Luo 2022, sec. "Hierarchical Variational Autoencoders").

T stochastic levels z_1, ..., z_T form a chain in both directions. The generative model
walks down from the top, the approximate posterior walks up from the image:

    p(x, z_{1:T}) = p(z_T) p(x|z_1) prod_{t=2}^T p(z_{t-1}|z_t),    p(z_T) = N(0, I)    Luo (2022) eq. 23
    q(z_{1:T}|x)  = q(z_1|x) prod_{t=2}^T q(z_t|z_{t-1})                              Luo (2022) eq. 24

Every q and p(z_{t-1}|z_t) is a diagonal Gaussian whose mean and log-variance an MLP computes;
p(x|z_1) is Bernoulli over pixels, as in the VAE. The ELBO E_q[log p(x, z_{1:T}) / q(z_{1:T}|x)]
(Luo (2022) eq. 29) regroups, writing z_0 = x, into the three kinds of term that Luo names when
he decomposes the same chain for variational diffusion models (Luo (2022) eq. 45):

    ELBO = E_q[log p(x|z_1)]                                            reconstruction
         - E_q[KL(q(z_T|z_{T-1}) || p(z_T))]                            prior matching
         - sum_{t=1}^{T-1} E_q[log q(z_t|z_{t-1}) - log p(z_t|z_{t+1})]   consistency

Which terms are exact and which are sampled: only the prior-matching KL is taken in closed form.
Its integrand, log p(z_T) - log q(z_T|z_{T-1}), involves z_T and its parent alone, so z_T can be
integrated out exactly given the sampled z_{T-1}; the other terms keep using the sampled z_T, and
by linearity of expectation the estimate stays unbiased. Luo writes each consistency term as an
expected KL too, but it compares densities of z_t given two different neighbours, and z_{t+1} was
itself drawn from z_t: no closed form exists, so it is the single-sample Monte Carlo estimate
above, as is the reconstruction.
With T = 1 there is no consistency term and the model is exactly the VAE.

With ``latent_dims=[100, 50], hidden=[[100, 100], [50, 50]], activation="tanh"`` this is the
two-stochastic-layer model of Burda et al. (2015, "Importance Weighted Autoencoders").
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from minisd.models.base import LatentVariableModel
from minisd.nn import mlp
from minisd.distributions import gaussian_log_density, kl_normal, sample_normal

Gaussian = tuple[torch.Tensor, torch.Tensor]  # (mean, log_var), each (..., latent_dim)


class HierarchicalVAE(LatentVariableModel):
    """A chain of Gaussian latents x -> z_1 -> ... -> z_T; Bernoulli decoder; MLP networks.

    ``hidden[t]`` lists the deterministic layer widths of both networks between level t and
    level t + 1 (level 0 is the image): the encoder q(z_{t+1}|z_t) and the decoder p(z_t|z_{t+1}).
    """

    model_type = "hvae"
    can_sample = True

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), latent_dims: list[int] = (100, 50),
                 hidden: list[list[int]] = ((100, 100), (50, 50)), activation: str = "tanh",
                 kl_warmup_steps: int = 0):
        if len(hidden) != len(latent_dims):
            raise ValueError(f"need one list of hidden widths per latent level: got {len(hidden)} lists "
                             f"for {len(latent_dims)} levels")
        hidden = [list(widths) for widths in hidden]
        super().__init__(image_shape=list(image_shape), latent_dims=list(latent_dims), hidden=hidden,
                         activation=activation, kl_warmup_steps=kl_warmup_steps)
        self.kl_warmup_steps = kl_warmup_steps
        # Counts training losses computed, so the warm-up needs nothing from the training loop; as a
        # buffer it is saved in checkpoints, and a resumed run continues the warm-up where it stopped.
        self.register_buffer("training_steps", torch.zeros((), dtype=torch.long))
        self.image_shape = tuple(image_shape)
        self.latent_dims = list(latent_dims)
        sizes = [math.prod(self.image_shape), *self.latent_dims]  # sizes[t] = size of z_t, z_0 = x
        # Gaussian heads output a mean and a log-variance: 2 numbers per latent. The decoder of
        # level 1 outputs one Bernoulli logit per pixel instead.
        self.encoders = nn.ModuleList(
            mlp([sizes[t], *hidden[t], 2 * sizes[t + 1]], activation) for t in range(self.num_levels))
        self.decoders = nn.ModuleList(
            mlp([sizes[t + 1], *reversed(hidden[t]), sizes[t] if t == 0 else 2 * sizes[t]], activation)
            for t in range(self.num_levels))

    @property
    def num_levels(self) -> int:
        """T, the number of stochastic levels."""
        return len(self.latent_dims)

    def encode(self, images: torch.Tensor, num_samples: int) -> tuple[list[torch.Tensor], list[Gaussian]]:
        """Walk up q(z_{1:T}|x) drawing ``num_samples`` reparameterised chains.

        ``images`` ``(B, C, H, W)`` -> ``latents`` [z_1, ..., z_T] and the Gaussians
        [q(z_1|x), q(z_2|z_1), ..., q(z_T|z_{T-1})] each was drawn from; z_t, mean and
        log-variance are all ``(S, B, latent_dims[t-1])``.
        """
        below = images.flatten(-3).unsqueeze(0)  # (1, B, D): the S chains share q(z_1|x) ...
        latents, posteriors = [], []
        for encoder in self.encoders:
            mean, log_var = encoder(below).chunk(2, dim=-1)
            chains = (num_samples, *mean.shape[1:])  # ... and part from z_1 on, each with its own path
            mean, log_var = mean.expand(chains), log_var.expand(chains)
            below = sample_normal(mean, log_var, num_samples=1)[0]
            latents.append(below)
            posteriors.append((mean, log_var))
        return latents, posteriors

    def decode(self, latents: list[torch.Tensor]) -> tuple[torch.Tensor, list[Gaussian]]:
        """The generative conditionals at the given latents [z_1, ..., z_T], each ``(..., d_t)``.

        Returns the Bernoulli logits of p(x|z_1), ``(..., C, H, W)``, and the Gaussians
        [p(z_1|z_2), ..., p(z_{T-1}|z_T)].
        """
        logits = self.decoders[0](latents[0]).unflatten(-1, self.image_shape)
        priors = [self.decoders[t](latents[t]).chunk(2, dim=-1) for t in range(1, self.num_levels)]
        return logits, priors

    def _terms(self, images: torch.Tensor, num_samples: int
               ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[Gaussian]]:
        """Sample S chains and evaluate the terms that the ELBO and the importance weights share, each ``(S, B)``."""
        latents, posteriors = self.encode(images, num_samples)
        logits, priors = self.decode(latents)
        terms = {"reconstruction": self.bernoulli_log_likelihood(images, logits)}
        # z_t (latents[t - 1]) was drawn from q(z_t|z_{t-1}); the generative chain predicts it by p(z_t|z_{t+1}).
        for t in range(1, self.num_levels):
            z_t = latents[t - 1]
            log_posterior = gaussian_log_density(z_t, *posteriors[t - 1]).sum(-1)
            log_prior = gaussian_log_density(z_t, *priors[t - 1]).sum(-1)
            terms[f"consistency_{t}"] = log_posterior - log_prior
        return terms, latents, posteriors

    def elbo(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Single-sample ELBO per image and its named terms (see the module docstring). Each ``(B,)``, in nats.

        ``terms`` holds ``reconstruction``, ``consistency_1`` ... ``consistency_{T-1}`` and
        ``prior_matching``; ELBO = reconstruction - prior_matching - sum of the consistency terms.
        """
        terms, _, posteriors = self._terms(images, num_samples=1)
        terms = {name: term[0] for name, term in terms.items()}
        top_mean, top_log_var = posteriors[-1]
        terms["prior_matching"] = kl_normal(top_mean, top_log_var, torch.zeros_like(top_mean),
                                            torch.zeros_like(top_log_var)).sum(-1)[0]
        consistency = sum(terms[f"consistency_{t}"] for t in range(1, self.num_levels))
        return terms["reconstruction"] - terms["prior_matching"] - consistency, terms

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """-mean ELBO. Logs, in nats per image: ``reconstruction`` (-log p(x|z_1)), the rate ``kl_z{t}``
        spent on each level (consistency_t, and prior_matching for z_T) and their sum ``kl``, which
        estimates KL(q(z_{1:T}|x) || p(z_{1:T})), the same quantity as the VAE's ``kl``. A lower
        level's rate may be negative: p(z_t|z_{t+1}) may know z_t better than q(z_t|z_{t-1}) does.

        With ``kl_warmup_steps`` the rate terms are scaled by beta rising linearly from 0 to 1 over
        the first training steps (Sonderby et al. 2016). Without it the deeper levels collapse: the
        KL pulls every q onto its prior before the decoder has learnt to use the latents (on binarised
        MNIST the Burda two-layer model sat at 3.4 nats of KL and a loss 56 nats above the one-layer VAE
        after 2600 steps). The logged ``elbo`` is always the true, unscaled bound.
        """
        elbo, terms = self.elbo(batch["image"])
        loss = -elbo.mean()
        if self.training and self.kl_warmup_steps:
            beta = min(1.0, self.training_steps.item() / self.kl_warmup_steps)
            self.training_steps += 1
            loss = -(elbo - (1 - beta) * (elbo - terms["reconstruction"])).mean()  # recon - beta * KL
        rates = {f"kl_z{t}": terms[f"consistency_{t}"].mean().item() for t in range(1, self.num_levels)}
        rates[f"kl_z{self.num_levels}"] = terms["prior_matching"].mean().item()
        reconstruction = -terms["reconstruction"].mean().item()
        return loss, {"loss": loss.item(), "elbo": elbo.mean().item(), "reconstruction": reconstruction,
                      "kl": sum(rates.values()), **rates}

    def log_importance_weights(self, images: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log w_s = log p(x, z_{1:T}) - log q(z_{1:T}|x) for chains z_{1:T} ~ q: ``(B, C, H, W) -> (S, B)``.

        The same terms as :meth:`elbo` except that the top level is scored at its sample too,
        log p(z_T) - log q(z_T|z_{T-1}), instead of by its expectation -KL: a weight must be a
        function of the sampled chain alone. Their mean is therefore the ELBO in expectation.
        """
        terms, latents, posteriors = self._terms(images, num_samples)
        top = latents[-1]
        log_top_prior = gaussian_log_density(top, torch.zeros_like(top), torch.zeros_like(top)).sum(-1)
        log_top_posterior = gaussian_log_density(top, *posteriors[-1]).sum(-1)
        consistency = sum(terms[f"consistency_{t}"] for t in range(1, self.num_levels))
        return terms["reconstruction"] + log_top_prior - log_top_posterior - consistency

    # The bound on -log p(x) from importance weights is the same for every latent-variable model.

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling z_T ~ N(0, I), z_{t-1} ~ p(z_{t-1}|z_t); return the pixel means of
        p(x|z_1), ``(n, C, H, W)`` in [0, 1].
        """
        latent = torch.randn(n, self.latent_dims[-1], generator=generator, device=self.device)
        for decoder in reversed(self.decoders[1:]):
            mean, log_var = decoder(latent).chunk(2, dim=-1)
            latent = sample_normal(mean, log_var, 1, generator)[0]
        return torch.sigmoid(self.decoders[0](latent).unflatten(-1, self.image_shape))
