"""2-D toy distributions for score models, and Gaussian mixtures whose score is known exactly.

    x = sample_toy("moons", 1000, torch.Generator().manual_seed(0))   # (1000, 2) float32
    ds = load_toy("swiss_roll", "train")                               # PointDataset, 20000 points
    true_score = TOY_MIXTURE.noised(alpha, sigma).score(x_t)            # grad log q(x_t), exactly

Every toy is scaled so its coordinates are of order 1 (per-coordinate std between about 0.5
and 1.5), the scale a diffusion model's noise schedule expects of its data:

- "swiss_roll": the spiral (t cos t, t sin t) / 7 for t uniform in [1.5 pi, 4.5 pi] (as in
  FFJORD, Grathwohl et al. 2019, which divides by 5), plus Gaussian noise of std 0.1.
- "moons": two interleaving half circles of radius 1.25, centred on the origin, noise std 0.05.
- "8gaussians": 8 equally weighted Gaussians of std 0.15 centred on a circle of radius 2.
- "checkerboard": uniform on the 8 black unit squares of a 4x4 board over [-2, 2]^2
  (the square [-2, -1] x [-2, -1] is black).
- "gmm": TOY_MIXTURE, the one toy whose density, and so whose score at every noise level, is exact.

A perturbed sample x_t = alpha x_0 + sigma eps of a Gaussian mixture is again a Gaussian mixture
(``GaussianMixture.noised``), so its score grad log q(x_t) is known in closed form: the target a
score network trained by denoising score matching at that noise level (Song & Ermon 2019) should reach.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Dataset

from minisd.data.dataset import SPLITS, _check_choice
from minisd.errors import ConfigError

TOYS = ("swiss_roll", "moons", "8gaussians", "checkerboard", "gmm")

# A fixed seed and size per split: every model in minisd trains and is scored on the same points.
_SPLIT_SEEDS = {"train": 0, "test": 1}
_SPLIT_SIZES = {"train": 20000, "test": 5000}


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, s_k^2 I) in D dimensions, with exact density and score.

    ``means`` (K, D), ``stds`` (K,) positive, ``weights`` (K,) positive (normalised here to sum to 1).
    Parameters are held in float64; methods take points (n, D) of any float dtype and return
    results in that dtype.
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if means.dim() != 2 or stds.shape != means.shape[:1] or weights.shape != means.shape[:1]:
            raise ValueError(
                f"need means (K, D), stds (K,), weights (K,); got {tuple(means.shape)}, "
                f"{tuple(stds.shape)}, {tuple(weights.shape)}"
            )
        if (stds <= 0).any() or (weights <= 0).any():
            raise ValueError("stds and weights must all be positive")
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        """The dimension D of the space the mixture lives in."""
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n independent draws (n, D) float32: pick component k with probability w_k, then mu_k + s_k eps."""
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[components] + self.stds[components, None] * eps).float()

    def _component_log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; mu_k, s_k^2 I) for every point and component: (n, K)."""
        squared_distance = (x[:, None, :] - self.means).square().sum(-1)
        variance = self.stds.square()
        log_normal = -0.5 * squared_distance / variance - 0.5 * self.dim * torch.log(2 * math.pi * variance)
        return self.weights.log() + log_normal

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = logsumexp_k [log w_k + log N(x; mu_k, s_k^2 I)] for x (n, D); returns (n,)."""
        return torch.logsumexp(self._component_log_joint(x.double()), dim=1).to(x.dtype)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The score grad_x log p(x) = sum_k r_k(x) (mu_k - x) / s_k^2 for x (n, D); returns (n, D).

        r_k(x) = p(k | x) is the responsibility of component k for the point x.
        """
        x64 = x.double()
        responsibilities = torch.softmax(self._component_log_joint(x64), dim=1)
        pull = (self.means - x64[:, None, :]) / self.stds.square()[:, None]
        return (responsibilities[:, :, None] * pull).sum(1).to(x.dtype)

    def noised(self, alpha: float, sigma: float) -> GaussianMixture:
        """The exact law of x_t = alpha x_0 + sigma eps, x_0 ~ this mixture, eps ~ N(0, I).

        Each component N(mu_k, s_k^2 I) maps to N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I); the weights stay.
        """
        stds = torch.sqrt(alpha**2 * self.stds.square() + sigma**2)
        return GaussianMixture(alpha * self.means, stds, self.weights)

    def __repr__(self) -> str:
        return f"GaussianMixture(components={len(self.weights)}, dim={self.dim})"


# The "gmm" toy. Four components with unequal weights and widths, placed without symmetry, so a
# learned score that is right only "on average" (or only near the big mode) shows its error:
#   weight 0.40, std 0.40, mean (-1.0, -1.0)      weight 0.30, std 0.25, mean ( 1.2, -0.6)
#   weight 0.20, std 0.50, mean ( 0.2,  1.2)      weight 0.10, std 0.15, mean ( 1.5,  1.5)
TOY_MIXTURE = GaussianMixture(
    means=torch.tensor([[-1.0, -1.0], [1.2, -0.6], [0.2, 1.2], [1.5, 1.5]]),
    stds=torch.tensor([0.40, 0.25, 0.50, 0.15]),
    weights=torch.tensor([0.40, 0.30, 0.20, 0.10]),
)


def _swiss_roll(n: int, generator: torch.Generator | None) -> torch.Tensor:
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    spiral = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 7
    return spiral + 0.1 * torch.randn(n, 2, generator=generator)


def _moons(n: int, generator: torch.Generator | None) -> torch.Tensor:
    angle = math.pi * torch.rand(n, generator=generator)
    upper = torch.rand(n, generator=generator) < 0.5
    # Upper moon: (cos a, sin a); lower moon: (1 - cos a, 1/2 - sin a); the pair is centred at (1/2, 1/4).
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle)) - 0.5
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle)) - 0.25
    return 1.25 * torch.stack([x, y], dim=1) + 0.05 * torch.randn(n, 2, generator=generator)


def _eight_gaussians(n: int, generator: torch.Generator | None) -> torch.Tensor:
    angle = 2 * math.pi / 8 * torch.randint(0, 8, (n,), generator=generator)
    centres = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + 0.15 * torch.randn(n, 2, generator=generator)


def _checkerboard(n: int, generator: torch.Generator | None) -> torch.Tensor:
    # A square (column, row) is black when column + row is even: each column holds two black rows.
    column = torch.randint(0, 4, (n,), generator=generator)
    row = 2 * torch.randint(0, 2, (n,), generator=generator) + column % 2
    corner = torch.stack([column, row], dim=1).float() - 2
    return corner + torch.rand(n, 2, generator=generator)


_SAMPLERS = {
    "swiss_roll": _swiss_roll,
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "gmm": lambda n, generator: TOY_MIXTURE.sample(n, generator),
}


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n independent draws (n, 2) float32 from the toy ``name`` (one of TOYS).

    All randomness comes from ``generator``, so a seeded generator gives the same points every time.
    Raises DataError for an unknown name.
    """
    _check_choice("toy", name, TOYS)
    return _SAMPLERS[name](n, generator).float().contiguous()


class PointDataset(Dataset):
    """Points in R^D held in memory, the data of the toy score models.

    Attributes:
        points: float32 tensor (N, D), contiguous.
        name, split: where the data came from, e.g. "moons", "test".

    ``ds[i]`` and ``ds.batch(indices)`` are dicts with the key "x" (images use "image").
    """

    def __init__(self, points: torch.Tensor, name: str, split: str) -> None:
        if points.dim() != 2 or points.dtype != torch.float32:
            raise ValueError(f"points must be float32 (N, D), got {points.dtype} {tuple(points.shape)}")
        self.points = points.contiguous()
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.points[index]}

    def batch(self, indices: torch.Tensor) -> dict[str, Any]:
        """The batch of examples ``indices``: ``{"x": (B, D)}``."""
        return {"x": self.points[indices]}

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The shape (D,) of one example."""
        return (self.points.shape[1],)

    def __repr__(self) -> str:
        return f"PointDataset(name={self.name!r}, split={self.split!r}, points={tuple(self.points.shape)})"


def load_toy(name: str, split: str = "train", num_points: int | None = None) -> PointDataset:
    """One split of the toy ``name`` (one of TOYS) as a PointDataset of (N, 2) float32 points.

    Deterministic: "train" is 20000 points drawn with seed 0, "test" 5000 points with seed 1;
    ``num_points`` changes the count (the result is not a prefix of the full split: samplers draw
    each coordinate for all points at once). Raises DataError for an unknown name or split and
    ConfigError for a count below 1.
    """
    _check_choice("toy", name, TOYS)
    _check_choice("split", split, SPLITS)
    count = _SPLIT_SIZES[split] if num_points is None else num_points
    if count < 1:
        raise ConfigError(f"num_points must be at least 1, got {count}")
    generator = torch.Generator().manual_seed(_SPLIT_SEEDS[split])
    return PointDataset(sample_toy(name, count, generator), name=name, split=split)
