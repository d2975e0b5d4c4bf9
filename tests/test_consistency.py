"""Consistency distillation (minisd.diffusion.consistency): a student trained on the loss draws in one step what
its teacher's ODE draws in many, and the text-to-image student is saved as an ordinary model."""

import pytest
import torch
from torch import nn

from minisd.diffusion.consistency import consistency_distillation_loss, consistency_grid
from minisd.diffusion.samplers import sample
from minisd.diffusion.schedules import build_schedule

from test_samplers import MU, SIGMA, GaussianDenoiser, rms

GRID_STEPS = 8


class AffinePerTime(nn.Module):
    """A student that can be exact on Gaussian data: f(x, t_n) = b_n + A_n x for each time t_n of a grid (the flow
    of a Gaussian's probability-flow ODE, and so its consistency function, is affine in x)."""

    def __init__(self, schedule, ts: torch.Tensor, dim: int):
        super().__init__()
        self.schedule, self.ts = schedule, ts
        self.weight = nn.Parameter(torch.eye(dim, dtype=ts.dtype).repeat(len(ts), 1, 1))
        self.bias = nn.Parameter(torch.zeros(len(ts), dim, dtype=ts.dtype))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        index = (t[:, None] - self.ts.to(t)[None]).abs().argmin(1)
        assert torch.allclose(self.ts.to(t)[index], t), "a time off the grid"
        return self.bias[index] + torch.einsum("bij,bj->bi", self.weight[index], x_t)


@pytest.mark.parametrize("schedule_name", ["cosine", "flow"])
def test_a_student_trained_on_the_loss_draws_in_one_step_what_the_teacher_draws_in_eight(schedule_name):
    teacher = GaussianDenoiser(MU, SIGMA, build_schedule(schedule_name).double())
    ts = consistency_grid(teacher, GRID_STEPS)
    student = AffinePerTime(teacher.schedule, ts, len(MU))
    optimizer = torch.optim.Adam(student.parameters(), lr=0.03)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 600)
    data = torch.Generator().manual_seed(0)
    for _ in range(600):
        x0 = MU + torch.randn(512, len(MU), generator=data, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T
        loss = consistency_distillation_loss(student, teacher, x0, ts, generator=data).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()

    noise = torch.randn(4000, len(MU), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        one_step = sample(student, noise.shape, sampler="ddim", steps=1, noise=noise, dtype=torch.float64)
        teacher_ode = sample(teacher, noise.shape, sampler="ddim", steps=GRID_STEPS, noise=noise, dtype=torch.float64)
        denoiser_one_step = sample(teacher, noise.shape, sampler="ddim", steps=1, noise=noise, dtype=torch.float64)
    # The same picture from the same noise: the student learned where the teacher's 8 steps end (their
    # discretisation error included: 8 DDIM steps give about half the data's variance, and so does the student) ...
    assert rms(one_step - teacher_ode) < 0.005, rms(one_step - teacher_ode)
    # ... which the denoiser alone does not know: in one step it gives the data's mean (E[x0 | pure noise]).
    assert rms(denoiser_one_step - teacher_ode) > 0.3


def test_the_last_step_of_the_grid_is_anchored_on_the_teacher():
    """At t = 0 a consistency function is the identity, so the last interval's target is the teacher's step to 0:
    its own x0 estimate. A student equal to the teacher has zero loss there, and only there."""
    teacher = GaussianDenoiser(MU, SIGMA, build_schedule("cosine").double())
    ts = consistency_grid(teacher, GRID_STEPS)
    x0 = MU + torch.randn(2000, len(MU), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    last_only = torch.cat([ts[-2:-2], ts[-2:]])  # the grid (t_min, 0): one interval, the last
    assert consistency_distillation_loss(teacher, teacher, x0, last_only).max() < 1e-20
    # Anywhere else the denoiser is not its own consistency function: D(x_t, t) is not D at the next ODE point.
    for n in range(GRID_STEPS - 1):
        assert consistency_distillation_loss(teacher, teacher, x0, ts[n:n + 2]).mean() > 1e-4, n
