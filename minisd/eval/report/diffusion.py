"""The likelihood report of a diffusion model of images: its variational bound in bits per dimension with the
bound's three terms (continuous time, or T steps), or the probability-flow ODE's bound on dequantised images."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from minisd.eval.report.common import mean_and_standard_error, standard_error_text


def report_diffusion_bound(model, images: torch.Tensor, *, split: str, num_samples: int | None,
                           bound_steps: int | None, batch_size: int, seed: int, progress: bool) -> dict[str, Any]:
    """The variational bound of a diffusion model on 8-bit ``images``, in bits per dimension, and its three terms
    (``num_samples`` estimates per image, default 1; ``bound_steps`` T: the discrete-time bound; None: continuous)."""
    from minisd.eval import evaluate_likelihood

    k = num_samples or 1
    bound = evaluate_likelihood(model, images, num_samples=k, batch_size=batch_size, seed=seed, progress=progress,
                                num_steps=bound_steps)
    results = {"nll_bound_bits_per_dim": bound["bits_per_dim"], "nll_bound_nats": bound["nll_nats"],
               "bound_time": "continuous" if bound_steps is None else f"discrete, T = {bound_steps}"}
    per_dim = math.log(2) * images[0].numel()
    terms = {term: bound[term] / per_dim for term in ("prior", "reconstruction", "diffusion")}
    results.update({f"{term}_bits_per_dim": value for term, value in terms.items()})
    print(f"{split} NLL <= {bound['bits_per_dim']:.4f} bits/dim ({results['bound_time']} variational bound, "
          f"8-bit images, {k} estimate(s) per image), {len(images)} images; terms in bits/dim: "
          + ", ".join(f"{term} {value:.4f}" for term, value in terms.items()))
    return results


def report_diffusion_ode_likelihood(model, images: torch.Tensor, *, split: str, batch_size: int, seed: int,
                                    progress: bool) -> dict[str, Any]:
    """The probability-flow ODE's bound on -log P(x) of 8-bit ``images`` ``(N, C, H, W)``, in bits per dimension and
    nats per image, with standard errors over the images: uniform dequantisation and Hutchinson's trace estimate,
    one draw of each per image from ``seed`` (:meth:`minisd.models.diffusion.DiffusionModel.ode_nll`). Also the mean
    denoiser evaluations of a batch's solve (``ode_nfe``) and the seconds it all took."""
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    generator = torch.Generator(model.device).manual_seed(seed)
    model.eval()
    bits, nats, nfes = [], [], []
    for start in tqdm(range(0, len(images), batch_size), desc="ODE likelihood", disable=not progress, leave=False):
        result = model.ode_nll({"image": images[start:start + batch_size].to(model.device)}, generator=generator)
        bits.append(result["bits_per_dim"].cpu())
        nats.append(result["nats"].cpu())
        nfes.append(result["nfe"])
    results: dict[str, Any] = {}
    results["ode_bits_per_dim"], results["ode_bits_per_dim_se"] = mean_and_standard_error(torch.cat(bits))
    results["ode_nats"], results["ode_nats_se"] = mean_and_standard_error(torch.cat(nats))
    results.update({"ode_nfe": sum(nfes) / len(nfes), "ode_images": len(images),
                    "ode_seconds": time.perf_counter() - start_time})
    print(f"{split} NLL <= {results['ode_bits_per_dim']:.4f} +- {standard_error_text(results['ode_bits_per_dim_se'])} "
          f"bits/dim ({results['ode_nats']:.2f} nats per image; probability-flow ODE, dequantised 8-bit images, "
          f"Hutchinson's trace), {len(images)} images, {results['ode_nfe']:.0f} denoiser evaluations per solve, "
          f"{results['ode_seconds']:.1f} s")
    return results
