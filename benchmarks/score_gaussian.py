"""The numbers of the chapter "Score-based generative models" that need no training: print them, section by section.

Most of them are measured with the exact denoiser of 2-D Gaussian data (the tests' idea, written out again here),
where every density and every moment is known, so the samplers and the likelihood are measured without any
training error. Sections of ``docs/05-score-based.md`` that quote what this prints:

- 5.2 and 5.3: the ``ncsn_mnist`` preset (parameters, noise ladder, prior), the variance after T Langevin steps
  (Song & Ermon 2020, eq. 4) and technique 2's expression; the prior's scale of ``score_toy``;
- 5.4: sigma_0 / alpha_0 of the closed-form VP schedules;
- 5.6: the largest distance between two training points of each toy, and the floor of the energy distance
  (two halves of the held-out data);
- 5.7: the ODE likelihood and ODE sampler on a 2-D Gaussian, Hutchinson's spread on a 16-D one, the table of
  score samplers on 100,000 samples, the floors and the true ``gmm`` NLL.

Every seed is fixed, so the output is the same on every run. Under a minute on one core (47 s):

    OMP_NUM_THREADS=1 python benchmarks/score_gaussian.py
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from minisd.data.toys import TOY_MIXTURE, TOYS, load_toy
from minisd.diffusion.probability_flow import ode_log_likelihood, sample_probability_flow
from minisd.diffusion.samplers import num_evaluations
from minisd.diffusion.schedules import NoiseSchedule, build_schedule
from minisd.diffusion.score_samplers import sample_annealed_langevin, sample_euler_maruyama, sample_pc
from minisd.diffusion.sde import SDE
from minisd.diffusion.spacing import start_time, time_steps
from minisd.eval.two_sample import energy_distance
from minisd.models import build_model
from minisd.train.config import load_run_config

# The 2-D Gaussian of the likelihood checks (tests/test_probability_flow.py) and of the samplers
# (tests/test_score_samplers.py); VE runs from 0.01 to 20 in both.
FLOW_MEAN = torch.tensor([0.1, -0.05], dtype=torch.float64)
FLOW_COVARIANCE = torch.tensor([[0.36, 0.05], [0.05, 0.04]], dtype=torch.float64)
SAMPLER_MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
SAMPLER_STD = torch.tensor([0.8, 0.2], dtype=torch.float64)
SAMPLER_COVARIANCE = torch.diag(SAMPLER_STD**2)
SCHEDULES = {"cosine": {}, "sub_vp": {}, "ve": {"sigma_min": 0.01, "sigma_max": 20.0}}


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def schedule(name: str) -> NoiseSchedule:
    return build_schedule(name, **SCHEDULES[name]).double()


class GaussianDenoiser:
    """The exact denoiser E[x0 | x_t] of N(mean, covariance) data, its exact flow and its exact densities."""

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor, noise_schedule: NoiseSchedule):
        self.mean, self.schedule = mean, noise_schedule
        self.variances, self.basis = torch.linalg.eigh(covariance)  # covariance = basis diag(variances) basis^T

    def _alpha_sigma(self, t: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=like.dtype).reshape(-1)
        return tuple(v.to(like).reshape(-1, 1) for v in self.schedule.alpha_sigma(t))

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        alpha, sigma = self._alpha_sigma(t, x_t)
        gain = alpha * self.variances / (alpha**2 * self.variances + sigma**2)
        return self.mean + (gain * ((x_t - alpha * self.mean) @ self.basis)) @ self.basis.T

    def sample(self, n: int, t: float, seed: int) -> torch.Tensor:
        """``n`` exact draws of x_t ~ N(alpha mean, alpha^2 covariance + sigma^2 I)."""
        alpha, sigma = self._alpha_sigma(t, self.mean)
        z = torch.randn(n, len(self.variances), generator=generator(seed), dtype=self.mean.dtype)
        return alpha * self.mean + (z * (alpha**2 * self.variances + sigma**2).sqrt()) @ self.basis.T

    def marginal_log_prob(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The data's true log-density at time t."""
        alpha, sigma = self._alpha_sigma(t, x)
        variances = alpha**2 * self.variances + sigma**2
        coordinates = (x - alpha * self.mean) @ self.basis
        return (-0.5 * coordinates**2 / variances - 0.5 * torch.log(2 * math.pi * variances)).sum(1)

    def model_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The model's exact log-density at t = 0: the prior at t = 1 carried back by the exact (affine) flow."""
        (alpha_0, sigma_0), (alpha_1, sigma_1) = self._alpha_sigma(0.0, x), self._alpha_sigma(1.0, x)
        growth = ((self.variances + (sigma_1 / alpha_1) ** 2) / (self.variances + (sigma_0 / alpha_0) ** 2)).sqrt()
        x_ve = self.mean + (growth * ((x / alpha_0 - self.mean) @ self.basis)) @ self.basis.T
        return SDE(self.schedule).prior_log_prob(alpha_1 * x_ve) + torch.log(alpha_1 / alpha_0 * growth).sum()


def moments(samples: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor) -> tuple[float, float]:
    return (samples.mean(0) - mean).abs().max().item(), (samples.T.cov() - covariance).abs().max().item()


def ode_facts() -> None:
    print("== 5.7 ODE likelihood: 2-D Gaussian, mean (0.1, -0.05), 16 points, dopri5 at 1e-5, exact divergence;")
    print("   largest error over the points, nats per dimension")
    print("| schedule | evaluations | against the model's exact density | against the data's true log-density |")
    print("|---|---|---|---|")
    for name in SCHEDULES:
        denoiser = GaussianDenoiser(FLOW_MEAN, FLOW_COVARIANCE, schedule(name))
        x = denoiser.sample(16, 0.0, seed=0)
        result = ode_log_likelihood(denoiser, x)
        solver = ((result["log_prob"] - denoiser.model_log_prob(x)).abs().max() / 2).item()
        total = ((result["log_prob"] - denoiser.marginal_log_prob(x, 0.0)).abs().max() / 2).item()
        print(f"| {name} | {result['nfe']} | {solver:.1e} | {total:.1e} |")

    print("\n== 5.7 ODE sampler: 4,000 samples of the same Gaussian, dopri5 at 1e-5, 10-step log-SNR grid")
    for name in ("cosine", "ve"):
        denoiser = GaussianDenoiser(FLOW_MEAN, FLOW_COVARIANCE, schedule(name))
        x = SDE(denoiser.schedule).prior_sample((4000, 2), generator=generator(5), dtype=torch.float64)
        seen: list[dict] = []
        samples = sample_probability_flow(denoiser, x, time_steps(denoiser.schedule, 10, "log_snr"),
                                          callback=seen.append)
        mean_error, covariance_error = moments(samples, FLOW_MEAN, FLOW_COVARIANCE)
        print(f"{name:7s} evaluations {seen[-1]['nfe']}, mean error {mean_error:.4f}, "
              f"covariance error {covariance_error:.4f}")

    print("\n== 5.7 Hutchinson: 16-D Gaussian with a full covariance, one point, 64 copies")
    dims = 16
    factor = torch.randn(dims, dims, generator=generator(1), dtype=torch.float64) / math.sqrt(dims)
    covariance = 0.2 * factor @ factor.T + 0.05 * torch.eye(dims, dtype=torch.float64)
    denoiser = GaussianDenoiser(torch.zeros(dims, dtype=torch.float64), covariance, schedule("cosine"))
    x = denoiser.sample(1, 0.0, seed=0)
    exact = ode_log_likelihood(denoiser, x)["log_prob"].item()
    copies = x.expand(64, dims)
    one = ode_log_likelihood(denoiser, copies, divergence="hutchinson", generator=generator(2))["log_prob"]
    many = ode_log_likelihood(denoiser, copies, divergence="hutchinson", generator=generator(3),
                              num_probes=16)["log_prob"]
    print(f"exact divergence: {exact:.2f} nats")
    print(f"1 probe:   mean {one.mean():.2f}, spread (std of 64) {one.std():.2f}; "
          f"1/sqrt(16) of it: {one.std() / 4:.2f}")
    print(f"16 probes: mean {many.mean():.2f}, spread (std of 64) {many.std():.2f}")


def sampler_table(n: int = 100_000) -> None:
    print(f"\n== 5.7 score samplers: 2-D Gaussian, mean (1, -0.5), std (0.8, 0.2), {n:,} samples from the exact")
    print("   marginal at the start time, log-SNR grid; largest error over the coordinates")
    print("| schedule | sampler | NFE | mean error | covariance error | variance ratio |")
    print("|---|---|---|---|---|---|")
    cases = [("`pc`, 200 steps, snr 0.16", sample_pc, "pc", 200, {}),
             ("`pc` predictor only, 200 steps", sample_pc, "pc", 200, {"corrector_steps": 0}),
             ("`euler_maruyama`, 200 steps", sample_euler_maruyama, "euler_maruyama", 200, {}),
             ("`annealed_langevin`, 50 levels × 10, $r = 1$", sample_annealed_langevin, "annealed_langevin", 50,
              {"steps_per_level": 10}),
             ("`annealed_langevin`, 50 levels × 5, $r = 0.2$", sample_annealed_langevin, "annealed_langevin", 50, {})]
    for name in SCHEDULES:
        denoiser = GaussianDenoiser(SAMPLER_MEAN, SAMPLER_COVARIANCE, schedule(name))
        t_max = start_time(denoiser.schedule)
        for label, sampler, registered, steps, args in cases:
            ts = time_steps(denoiser.schedule, steps, "log_snr", t_max=t_max)
            args = dict(args)
            if "steps_per_level" in args:  # r = 1: the step is the smallest visited level's variance
                args["step_size"] = denoiser.schedule.alpha_sigma(ts[-2])[1].item() ** 2
            x = denoiser.sample(n, t_max, seed=0)
            samples = sampler(denoiser, x, ts, generator=generator(1), **args)
            mean_error, covariance_error = moments(samples, SAMPLER_MEAN, SAMPLER_COVARIANCE)
            ratio = samples.var(0) / SAMPLER_STD**2
            nfe = num_evaluations(registered, steps, **{k: v for k, v in args.items() if k != "step_size"})
            shown = {"sub_vp": "sub-VP", "ve": "VE"}.get(name, name)
            print(f"| {shown} | {label} | {nfe} | {mean_error:.4f} | {covariance_error:.4f} | "
                  f"{ratio[0]:.3f}, {ratio[1]:.3f} |")


def toy_facts() -> None:
    print("\n== 5.6 largest distance between two training points of each toy (20,000 points)")
    for name in TOYS:
        points = load_toy(name, "train").points.double()
        largest = max(torch.cdist(chunk, points).max().item() for chunk in points.split(2000))
        print(f"{name:13s} {largest:.2f}")
    print("\n== 5.6 and 5.7 floors: energy distance between two halves of the held-out data (2,000 v 2,000)")
    for name in TOYS:
        test = load_toy(name, "test").points
        print(f"{name:13s} {energy_distance(test[:2000], test[2000:4000]):+.4f}")
    test = load_toy("gmm", "test").points.double()
    for n in (5000, 500):
        nll = -TOY_MIXTURE.log_prob(test[:n]).mean().item()
        print(f"gmm true NLL, first {n} test points: {nll:.4f} nats per point, {nll / 2:.4f} per dimension")


def preset_facts() -> None:
    print("\n== 5.2 and 5.3 presets")
    for preset, overrides in [("score_toy", ["data.dataset=swiss_roll"]), ("ncsn_mnist", [])]:
        config = dict(load_run_config(preset, overrides)["model"])
        config.setdefault(*(("data_shape", [2]) if config["type"] == "score" else ("image_shape", [1, 28, 28])))
        model = build_model(config)
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{preset}: {parameters:,} parameters, prior std {model.schedule.prior_std().item():.2f}")
        if config.get("noise_levels"):
            levels, steps = config["noise_levels"], config["sample_steps"]
            ts = time_steps(model.schedule, steps, "uniform", t_max=1.0, t_min=1 / (levels - 1))
            sigma = model.schedule.alpha_sigma(ts)[1]
            print(f"  sampling grid: {steps} levels visited, sigma {sigma[0]:.2f} down to {sigma[-2]:.5f}, "
                  f"ratio {sigma[0] / sigma[1]:.4f}; annealed_langevin costs "
                  f"{num_evaluations('annealed_langevin', steps)} evaluations at 5 per level, "
                  f"{num_evaluations('annealed_langevin', steps, steps_per_level=2)} at 2")
    sigma_over_alpha = math.exp(-build_schedule("cosine").log_snr(torch.tensor([0.0], dtype=torch.float64)).item() / 2)
    print(f"5.4: sigma_0 / alpha_0 of the cosine schedule: {sigma_over_alpha:.1e}")


def langevin_formula() -> None:
    """Song & Ermon (2020), eq. 4 and technique 2, evaluated."""
    print("\n== 5.2 Song & Ermon (2020) technique 2, and the variance after T steps, eq. 4")

    def phi(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    def variance_ratio(r: float, gamma: float, steps: int) -> float:
        return (1 - r) ** (2 * steps) * (gamma**2 - 2 / (2 - r)) + 2 / (2 - r)

    for setting, sigma_max, levels, dims in [("ncsn_mnist: 100 levels, 32 to 0.01", 32.0, 100, 784),
                                             ("NCSNv2 CIFAR-10: 232 levels, 50 to 0.01", 50.0, 232, 3072)]:
        gamma = (sigma_max / 0.01) ** (1 / (levels - 1))
        root = math.sqrt(2 * dims) * (gamma - 1)
        technique_2 = phi(root + 3 * gamma) - phi(root - 3 * gamma)
        best = min((r / 1000 for r in range(1, 1000)), key=lambda r: variance_ratio(r, gamma, 5))
        print(f"{setting}: gamma {gamma:.3f}, technique 2 gives {technique_2:.2f} (D = {dims}); T = 5: "
              f"r = 0.2 gives {variance_ratio(0.2, gamma, 5):.3f}, the best r = {best:.3f} gives "
              f"{variance_ratio(best, gamma, 5):.3f}")


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    preset_facts()
    langevin_formula()
    toy_facts()
    ode_facts()
    sampler_table()
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
