"""Where the T-step discrete-time bound of a diffusion model spends its nats: single terms, exactly.

    MINISD_DATA=/path/to/data python benchmarks/discrete_bound_terms.py runs/bench/diffusion_mnist

For term i (the KL from t = i / T to s = (i - 1) / T, Luo (2022) eq. 110) it prints lambda at both ends and
1/2 (SNR(s) - SNR(t)) ||x0 - x0_hat(x_t, t)||^2 averaged over the first 200 test images (one noise draw
each). docs/04-variational-diffusion.md section 4.5 quotes its output for T = 1000.
"""

import sys

import torch

import minisd
from minisd.data import load_dataset
from minisd.models.diffusion import to_8bit_grid


def main(run: str, num_steps: int = 1000, num_images: int = 200) -> None:
    torch.manual_seed(0)
    model = minisd.load(run)
    dataset = minisd.train.checkpoint.read_checkpoint_config(run)["data"]["dataset"]
    x0 = to_8bit_grid(load_dataset(dataset, "test").images[:num_images])
    schedule = model.schedule
    for i in (1, 2, 5, 10, 100, 500):
        t, s = torch.full((num_images,), i / num_steps), torch.full((num_images,), (i - 1) / num_steps)
        weight = 0.5 * (schedule.log_snr(s).exp() - schedule.log_snr(t).exp())
        alpha, sigma = (v.view(-1, 1, 1, 1) for v in schedule.alpha_sigma(t))
        with torch.no_grad():
            error = (model.denoiser(alpha * x0 + sigma * torch.randn_like(x0), t) - x0).square().flatten(1).sum(1)
        print(f"term {i}: lambda {schedule.log_snr(t[:1]).item():.2f} -> {schedule.log_snr(s[:1]).item():.2f}, "
              f"{(weight * error).mean().item():.2f} nats")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/diffusion_mnist")
