"""Flow matching as one more schedule and parameterisation: the straight path x_t = (1 - t) x0 + t eps, the velocity
u = eps - x0, and chapter 4-5's samplers and likelihoods on it unchanged."""

import math

import pytest
import torch

from minisd.diffusion import build_schedule, from_x0, to_x0
from minisd.diffusion.losses import denoising_loss, sample_times
from minisd.diffusion.samplers import SAMPLERS
from minisd.diffusion.spacing import time_steps
from minisd.models import DiffusionModel


def test_the_flow_schedule_is_the_straight_path_between_its_ends():
    schedule = build_schedule("flow")
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(t)
    assert torch.allclose(alpha + sigma, torch.ones_like(t))  # not variance preserving: alpha + sigma = 1
    assert torch.allclose(schedule.log_snr(t), 2 * torch.log(alpha / sigma))
    ends = schedule.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends[0].item() == pytest.approx(13.3, abs=1e-6) and ends[1].item() == pytest.approx(-20.0, abs=1e-6)
    assert (schedule.path_time(t) - t).abs().max() < 2e-3  # the remapped ends move t by at most 0.0013


def test_the_velocity_target_is_the_time_derivative_of_the_path():
    schedule = build_schedule("flow")
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = alpha * x0 + sigma * eps
    (derivative,) = torch.autograd.grad(x_t.sum(), t)
    path_speed = schedule.t_noisy - schedule.t_clean  # d(path time) / dt of the remapping
    u = from_x0(x0, "flow", x_t.detach(), alpha.detach(), sigma.detach())
    assert torch.allclose(u, eps - x0) and derivative.item() == pytest.approx(path_speed * u.sum().item())
    assert torch.allclose(to_x0(u, "flow", x_t.detach(), alpha.detach(), sigma.detach()), x0)


class PointMass:
    """The exact denoiser of data that is always ``target``."""

    def __init__(self, target: torch.Tensor):
        self.target, self.schedule = target, build_schedule("flow").double()

    def __call__(self, x_t, t, cond=None):
        return self.target.expand_as(x_t)


def test_with_one_data_point_the_flow_is_a_straight_line_and_one_euler_step_is_exact():
    denoiser = PointMass(torch.tensor([0.7, -1.2], dtype=torch.float64))
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = time_steps(denoiser.schedule, 12, "uniform", t_max=1.0)
    states = [x]
    SAMPLERS["euler"](denoiser, x, ts, callback=lambda info: states.append(info["x"]))
    path = torch.stack(states)  # (13, 8, 2): every state of every sample
    start, end = path[0], path[-1]
    assert torch.allclose(end, denoiser.target.expand_as(end))
    direction = (end - start) / (end - start).norm(dim=-1, keepdim=True)
    offsets = path - start
    across = offsets - (offsets * direction).sum(-1, keepdim=True) * direction
    assert across.abs().max() < 1e-9  # every state on the chord: a straight line
    # ...travelled at constant speed in path time: one Euler step from t = 1 lands on the target too.
    one_step = SAMPLERS["euler"](denoiser, x, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(one_step, denoiser.target.expand_as(one_step))


def test_with_spread_data_the_paths_curve():
    """Two points: each noisy x_t is pulled towards the one it is closer to, so the velocity turns on the way."""
    schedule = build_schedule("flow").double()
    points = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)

    def two_points(x_t, t, cond=None):  # the exact denoiser of data that is either point, equally likely
        alpha, sigma = (v[:, None, None] for v in schedule.alpha_sigma(t))
        logits = -((x_t[:, None] - alpha * points[None]) ** 2).sum(-1) / (2 * sigma[:, :, 0] ** 2)
        return torch.softmax(logits, dim=1) @ points

    two_points.schedule = schedule
    x = torch.tensor([[0.1, 1.0]], dtype=torch.float64)
    states = [x]
    SAMPLERS["heun"](two_points, x, time_steps(schedule, 200, "log_snr", t_max=1.0),
                     callback=lambda info: states.append(info["x"]))
    path = torch.stack(states)[:, 0]
    chord = path[-1] - path[0]
    across = (path - path[0]) - ((path - path[0]) @ chord)[:, None] * chord / chord.square().sum()
    assert across.norm(dim=-1).max() > 0.05


def test_logit_normal_times_have_standard_normal_logits():
    t = sample_times(4096, torch.device("cpu"), torch.Generator().manual_seed(0), "logit_normal")
    logits = torch.logit(t.double())
    assert 0 < t.min() and t.max() < 1
    assert abs(logits.mean().item()) < 0.02 and abs(logits.std().item() - 1) < 0.02


def test_the_flow_matching_loss_is_the_mse_of_the_velocity():
    torch.manual_seed(0)
    model = DiffusionModel(image_shape=(1, 8, 8), schedule="flow", prediction="flow", base_channels=8,
                           channel_mults=[1, 2], time_sampling="logit_normal")
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    loss = denoising_loss(model.denoiser, x0, time_sampling="logit_normal", generator=torch.Generator().manual_seed(3))
    # The same draws by hand: a fresh UNet predicts u = 0, so the loss is the mean of (eps - x0)^2.
    generator = torch.Generator().manual_seed(3)
    sample_times(4, x0.device, generator, "logit_normal")
    eps = torch.randn(x0.shape, generator=generator)
    assert torch.allclose(loss, (eps - x0).square().flatten(1).mean(1))


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "ddpm", "ode"])
def test_a_flow_matching_model_samples_with_every_chapter_4_sampler(sampler):
    torch.manual_seed(0)
    model = DiffusionModel(image_shape=(1, 8, 8), schedule="flow", prediction="flow", base_channels=8,
                           channel_mults=[1, 2], num_classes=3, p_uncond=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = {"image": torch.rand(16, 1, 8, 8), "label": torch.randint(0, 3, (16,))}
    for _ in range(3):
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    images = model.sample(4, generator=torch.Generator().manual_seed(1), sampler=sampler, steps=4,
                          **({"method": "euler"} if sampler == "ode" else {}))
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all() and math.isfinite(loss.item())


def test_the_trajectory_figure_is_drawn_from_the_exact_ode(tmp_path):
    from minisd.figures.chapters import make_figures
    from minisd.figures.flow import trajectories

    paths = make_figures("flow", out=tmp_path)
    assert paths["trajectories"].is_file()
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ends = trajectories("flow", noise)[-1]
    assert ((ends.abs() - torch.tensor([1.5, 0.5], dtype=torch.float64)).abs() < 0.6).all()  # on the blobs


def test_the_probability_flow_ode_of_the_straight_path_is_the_velocity_field():
    """Chapter 8.1's derivation, through chapter 5's SDE code: f x - g^2 / 2 score = (x - x0_hat) / t = u_hat."""
    from minisd.diffusion.sde import probability_flow_drift

    schedule = build_schedule("flow").double()

    def denoiser(x, t, cond=None):  # any denoiser will do: the identity holds pointwise
        return torch.tanh(x) * (1 - t)[:, None]

    denoiser.schedule = schedule
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    path = schedule.path_time(t)[:, None]
    velocity = (x - denoiser(x, t)) / path  # E[eps - x0 | x_t] with x0_hat the denoiser's
    drift = probability_flow_drift(denoiser, x, t)
    assert torch.allclose(drift, (schedule.t_noisy - schedule.t_clean) * velocity, rtol=1e-8)
