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
from minisd.diffusion.losses import diffusion_term
from minisd.models.diffusion import to_8bit_grid
from minisd.models.files import read_checkpoint_config


def main(run: str, num_steps: int = 1000, num_images: int = 200) -> None:
    torch.manual_seed(0)
    model = minisd.load(run)
    x0 = to_8bit_grid(load_dataset(read_checkpoint_config(run)["data"]["dataset"], "test").images[:num_images])
    schedule = model.schedule
    for i in (1, 2, 5, 10, 100, 500):
        with torch.no_grad():
            term = diffusion_term(model.denoiser, x0, num_steps=num_steps, step=i) / num_steps
        t, s = torch.tensor([i / num_steps]), torch.tensor([(i - 1) / num_steps])
        print(f"term {i}: lambda {schedule.log_snr(t).item():.2f} -> {schedule.log_snr(s).item():.2f}, "
              f"{term.mean().item():.2f} nats")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/diffusion_mnist")
