"""The report of a score model of 2-D points: its exact likelihood by the probability-flow ODE, and the energy
distance and MMD of its samples to held-out points (:mod:`minisd.eval.two_sample`)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from minisd.errors import MinisdError
from minisd.eval.report.common import (POINTS, check_json_path, dataset_name, draw_samples_counted,
                                       mean_and_standard_error, sampled_by, standard_error_text)
from minisd.sampling import POINT_BATCH


def report_point_likelihood(model, points: torch.Tensor, *, split: str, batch_size: int, dataset: str,
                            progress: bool) -> dict[str, Any]:
    """The exact negative log-likelihood of a score model on ``points`` ``(N, D)``, in nats per point (mean and
    standard error), by the probability-flow ODE with the exact divergence (:meth:`ScoreModel.nll`). For the
    ``gmm`` toy also the true density's: the model's likelihood is that of its t = 0 marginal, which targets the
    mixture noised by the schedule's smallest noise, ``TOY_MIXTURE.noised(alpha_0, sigma_0)``; the gap (model minus
    true, on the same points) is an estimate of the KL divergence from the target to the model."""
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    model.eval()
    nats, nfes = [], []
    for start in tqdm(range(0, len(points), batch_size), desc="ODE likelihood", disable=not progress, leave=False):
        result = model.nll({"x": points[start:start + batch_size]})
        nats.append(result["nats"].cpu())
        nfes.append(result["nfe"])
    nats = torch.cat(nats)
    results: dict[str, Any] = {}
    results["ode_nll_nats"], results["ode_nll_nats_se"] = mean_and_standard_error(nats)
    results.update({"ode_nfe": sum(nfes) / len(nfes), "ode_points": len(points)})
    line = (f"{split} NLL {results['ode_nll_nats']:.4f} +- {standard_error_text(results['ode_nll_nats_se'])} nats "
            f"per point (exact, probability-flow ODE), {len(points)} points, {results['ode_nfe']:.0f} denoiser "
            f"evaluations per solve")
    if dataset == "gmm":
        from minisd.data.toys import TOY_MIXTURE

        alpha_0, sigma_0 = (v.item() for v in model.denoiser.schedule.alpha_sigma(torch.zeros(1, device=model.device)))
        true_nats = -TOY_MIXTURE.noised(alpha_0, sigma_0).log_prob(points.double().cpu())
        results["true_nll_nats"], results["true_nll_nats_se"] = mean_and_standard_error(true_nats)
        results["nll_gap_nats"], results["nll_gap_nats_se"] = mean_and_standard_error(nats.double() - true_nats)
        line += (f"; the true mixture's {results['true_nll_nats']:.4f}, a gap of {results['nll_gap_nats']:.4f} +- "
                 f"{standard_error_text(results['nll_gap_nats_se'])}")
    results["ode_seconds"] = time.perf_counter() - start_time
    print(f"{line}; {results['ode_seconds']:.1f} s")
    return results


def report_two_sample(model, test_points: torch.Tensor, *, sampler_args: dict[str, Any], seed: int,
                      progress: bool) -> dict[str, Any]:
    """Energy distance and MMD (:mod:`minisd.eval.two_sample`) between as many model samples as ``test_points``
    ``(N, D)`` and those points, with how the samples were drawn (``sampler_args``: the sampler options asked for)."""
    from minisd.eval.two_sample import energy_distance, mmd

    samples, results = draw_samples_counted(model, len(test_points), sampler_args=sampler_args, seed=seed,
                                            progress=progress, batch_size=POINT_BATCH)
    results.update({"two_sample_points": len(test_points), "energy_distance": energy_distance(samples, test_points),
                    "mmd": mmd(samples, test_points)})
    print(f"energy distance {results['energy_distance']:.5f}, MMD^2 {results['mmd']:.5f} ({len(test_points)} "
          f"samples{sampled_by(results)} against as many held-out points; about 0 when the laws agree)")
    return results


def check_score_eval_request(config: dict[str, Any], *, checkpoint: str | os.PathLike, points: int,
                             unsupported_options: list[str], likelihood: str | None, json_path: str | None,
                             overwrite: bool) -> None:
    """Everything the evaluation of a score model can check before it loads the model. ``unsupported_options``: the
    options given that only image models take; ``points``: the samples of the two-sample test, which are compared
    with as many held-out points."""
    from minisd.data.toys import load_toy

    if unsupported_options:
        raise MinisdError(f"{', '.join(unsupported_options)}: not for a score model of points, whose evaluation is "
                          f"its exact ODE likelihood and the energy distance and MMD of --points samples")
    if likelihood == "bound":
        raise MinisdError("a score model's likelihood is the exact one of its probability-flow ODE (--likelihood ode), "
                          "not a variational bound")
    dataset = dataset_name(config, checkpoint)
    held_out = len(load_toy(dataset, "test"))
    if points > held_out:
        raise MinisdError(f"--points {points}: the samples are compared with as many held-out points, and the "
                          f"{dataset} test split has {held_out}")
    if points < 2:
        raise MinisdError(f"--points {points}: the two-sample statistics need at least 2 points")
    check_json_path(json_path, overwrite)


def evaluate_score_model(model, config: dict[str, Any], *, checkpoint: str | os.PathLike, split: str = "test",
                         points: int = POINTS, sampler_args: dict[str, Any] | None = None,
                         skip_likelihood: bool = False, limit: int | None = None, batch_size: int = POINT_BATCH,
                         seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Everything ``minisd eval`` reports for a score model of 2-D toy points loaded from ``checkpoint``: its exact
    likelihood on the first ``limit`` points of ``split`` unless ``skip_likelihood``
    (:func:`report_point_likelihood`), and the energy distance and MMD of ``points`` samples to the first ``points``
    held-out test points (:func:`report_two_sample`)."""
    from minisd.data.toys import load_toy

    start = time.perf_counter()
    dataset = dataset_name(config, checkpoint)
    results = {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "step": config.get("step")}
    if not skip_likelihood:
        scored = load_toy(dataset, split).points[:limit].to(model.device)
        results.update(report_point_likelihood(model, scored, split=split, batch_size=batch_size, dataset=dataset,
                                               progress=progress))
    test_points = load_toy(dataset, "test").points[:points]
    results.update(report_two_sample(model, test_points, sampler_args=sampler_args or {}, seed=seed,
                                     progress=progress))
    results["seconds"] = time.perf_counter() - start
    return results
