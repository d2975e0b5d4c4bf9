"""What ``minisd eval`` reports, as functions of explicit arguments (the command line only parses and calls).

- A generative checkpoint (:func:`evaluate_checkpoint`): the likelihood bounds its model has (ELBO and the
  importance-weighted bound for the VAE family, the variational bound and its three terms for diffusion, or
  with ``likelihood="ode"`` the probability-flow ODE's bound), and with an FID classifier the Frechet distance
  of its samples to test images and their class balance.
- A score model of 2-D points (:func:`evaluate_score_model`): its exact likelihood by the probability-flow ODE, and
  the energy distance and MMD of its samples to held-out points (:mod:`minisd.eval.two_sample`).
- A text-to-image model (:func:`evaluate_text_to_image`): prompt adherence on a fixed prompt set
  (:mod:`minisd.eval.adherence`) and the FID of those samples.

Each ``report_*`` prints its lines and returns its numbers; :func:`check_eval_request` and
:func:`check_adherence_request` check everything that can be checked before a model is loaded.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from minisd.errors import MinisdError

FID_SAMPLES = 1000  # samples (and test images) of FID, unless asked otherwise
BATCH_SIZE = 100  # images per likelihood batch, unless asked otherwise
POINTS = 2000  # a score model's samples, and held-out points, of the two-sample test unless asked otherwise
POINT_BATCH = 5000  # points per sampling call and per ODE likelihood solve: a solve costs about the same for 1 or 5000

ADHERENCE_CLASSIFIERS = {  # dataset -> (model type, preset that trains it)
    "mnist": ("classifier", "classifier_mnist"),
    "shapes": ("attribute_classifier", "attributes_shapes"),
}


# ------------------------------------------------------------------ generative checkpoints


def dataset_name(config: dict[str, Any], checkpoint: str | os.PathLike) -> str:
    """The dataset a checkpoint was trained on, as its ``config.json`` names it."""
    dataset = config.get("data", {}).get("dataset")
    if not isinstance(dataset, str):
        raise MinisdError(f"the config.json of {checkpoint} names no dataset (data.dataset), so minisd cannot "
                          f"tell which test images belong to it")
    return dataset


def evaluation_set(config: dict[str, Any], split: str, *, checkpoint: str | os.PathLike,
                   data_dir: str | None = None):
    """The evaluation images exactly as training evaluated them (binarised once, with seed 0, if the run binarised)."""
    from minisd.data import binarized_once, load_dataset

    dataset = load_dataset(dataset_name(config, checkpoint), split, data_dir=data_dir)
    return binarized_once(dataset) if config["data"].get("binarize") else dataset


def report_latent_likelihood(model, images: torch.Tensor, *, split: str, num_samples: int | None,
                             batch_size: int, seed: int, progress: bool) -> dict[str, Any]:
    """ELBO and the importance-weighted bound (``num_samples`` K, default 1000) of a VAE-family model, in nats
    per image, on ``images`` ``(N, C, H, W)``."""
    from minisd.eval import evaluate_likelihood

    results = {}
    elbo = evaluate_likelihood(model, images, num_samples=1, batch_size=batch_size, seed=seed)
    results["elbo_nats"] = -elbo["nll_nats"]
    results["elbo_bits_per_dim"] = -elbo["bits_per_dim"]
    print(f"{split} ELBO: {results['elbo_nats']:.2f} nats per image "
          f"({-results['elbo_bits_per_dim']:.4f} bits/dim as an NLL bound), {len(images)} images")
    k = num_samples or 1000
    if k > 1:
        iwae = evaluate_likelihood(model, images, num_samples=k, batch_size=batch_size, seed=seed, progress=progress)
        results[f"log_likelihood_iwae_k{k}_nats"] = -iwae["nll_nats"]
        results["nll_bits_per_dim"] = iwae["bits_per_dim"]
        print(f"{split} log p(x) >= {-iwae['nll_nats']:.2f} nats per image "
              f"(importance-weighted, K = {k}); NLL {iwae['bits_per_dim']:.4f} bits/dim")
    return results


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
    results["ode_bits_per_dim"], results["ode_bits_per_dim_se"] = _mean_and_standard_error(torch.cat(bits))
    results["ode_nats"], results["ode_nats_se"] = _mean_and_standard_error(torch.cat(nats))
    results.update({"ode_nfe": sum(nfes) / len(nfes), "ode_images": len(images),
                    "ode_seconds": time.perf_counter() - start_time})
    print(f"{split} NLL <= {results['ode_bits_per_dim']:.4f} +- {_text(results['ode_bits_per_dim_se'])} bits/dim "
          f"({results['ode_nats']:.2f} nats per image; probability-flow ODE, dequantised 8-bit images, Hutchinson's "
          f"trace), {len(images)} images, {results['ode_nfe']:.0f} denoiser evaluations per solve, "
          f"{results['ode_seconds']:.1f} s")
    return results


def _mean_and_standard_error(values: torch.Tensor) -> tuple[float, float | None]:
    """The mean of ``values`` ``(N,)`` and its standard error std / sqrt(N) (None for a single value)."""
    values = values.double()
    standard_error = (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else None
    return values.mean().item(), standard_error


def _text(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"


def _draw_samples_counted(model, n: int, *, sampler_args: dict[str, Any], seed: int, progress: bool,
                          batch_size: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``n`` samples (seed ``seed``) and how they were drawn: for a diffusion model its sampler, steps, the
    sampler's own arguments and ``sampler_evaluations``, the denoiser evaluations of one sampling call. The ode
    sampler reports its count in its last callback (dopri5's is known only then); every other sampler's is
    :func:`~minisd.diffusion.samplers.num_evaluations`. ``sampler_args``: the sampler options asked for."""
    from minisd.sampling import BATCH_SIZE as SAMPLING_BATCH, draw_samples

    reported_nfe: list[int] = []

    def record_nfe(info: dict[str, Any]) -> None:
        if "nfe" in info:
            reported_nfe.append(info["nfe"])

    start_time = time.perf_counter()
    counting = {"callback": record_nfe} if model.has_samplers else {}
    samples = draw_samples(model, n, generator=torch.Generator(model.device).manual_seed(seed), progress=progress,
                           batch_size=batch_size or SAMPLING_BATCH, **sampler_args, **counting)
    how: dict[str, Any] = {"sampling_seconds": time.perf_counter() - start_time}
    if model.has_samplers:
        from minisd.diffusion.samplers import num_evaluations

        own_args = {k: v for k, v in sampler_args.items() if k not in ("sampler", "steps", "spacing")}
        how["sampler"] = sampler_args.get("sampler", model.sampler)
        how["sampler_steps"] = sampler_args.get("steps", model.sample_steps)
        if not reported_nfe:
            how["sampler_evaluations"] = num_evaluations(how["sampler"], how["sampler_steps"], **own_args)
        elif len(set(reported_nfe)) == 1:  # a fixed-step method, or a single call
            how["sampler_evaluations"] = reported_nfe[0]
        else:  # dopri5 takes as many as each batch needs: their mean
            how["sampler_evaluations"] = sum(reported_nfe) / len(reported_nfe)
        how.update({f"sampler_{k}": v for k, v in sampler_args.items() if k not in ("sampler", "steps")})
    return samples, how


def _sampled_by(how: dict[str, Any]) -> str:
    """" by pc in 100 steps (200 denoiser evaluations)", or "" for a model without samplers."""
    if "sampler" not in how:
        return ""
    return (f" by {how['sampler']} in {how['sampler_steps']} steps ({how['sampler_evaluations']:.0f} denoiser "
            f"evaluations)")


def report_fid(model, *, dataset: str, classifier_path: str | os.PathLike, num_samples: int,
               sampler_args: dict[str, Any], seed: int, data_dir: str | None, progress: bool) -> dict[str, Any]:
    """FID on our classifier's features between ``num_samples`` model samples and as many test images, and the
    samples' class balance. ``sampler_args``: the sampler options asked for (sampler, steps, spacing, and the
    sampler's own: eta, snr, method, ...)."""
    from minisd.pipelines import load
    from minisd.data import load_dataset
    from minisd.eval import class_balance, fid

    classifier = load(classifier_path, device=model.device)
    test_set = load_dataset(dataset, "test", data_dir=data_dir)
    samples, results = _draw_samples_counted(model, num_samples, sampler_args=sampler_args, seed=seed,
                                             progress=progress)
    name = {"mnist": "FID-MNIST", "fashion-mnist": "FID-Fashion"}.get(dataset, f"FID-{dataset}")
    results[name] = fid(classifier, samples, test_set.images[:num_samples])
    results.update({f"classes_{k}": v for k, v in class_balance(classifier, samples, test_set.labels).items()})
    print(f"{name}: {results[name]:.3f} ({num_samples} samples{_sampled_by(results)} against as many test images; "
          f"Frechet distance "
          f"on minisd's own classifier features, not Inception FID); class balance: "
          f"total variation from the test labels {results['classes_tv_from_test']:.3f}")
    return results


def check_eval_request(config: dict[str, Any], *, checkpoint: str | os.PathLike, fid_classifier: str | None,
                       fid_samples: int, bound_steps: int | None, sampler_options: list[str],
                       json_path: str | None, overwrite: bool, data_dir: str | None, likelihood: str = "bound",
                       num_samples: int | None = None) -> None:
    """Everything the evaluation of a generative checkpoint can check before it loads the model and starts the
    long work. ``sampler_options``: the sampler options asked for, as their flags (--sampler, --eta, ...);
    ``likelihood``: "bound" (the model's own) or "ode" (a diffusion model's probability-flow ODE)."""
    from minisd.models import MODELS
    from minisd.models.base import LatentVariableModel
    from minisd.models.diffusion import DiffusionModel
    from minisd.outputs import check_writable
    from minisd.models.files import read_checkpoint_config

    if not fid_classifier and sampler_options:
        raise MinisdError(f"{', '.join(sampler_options)}: the sampler options choose how the FID samples are drawn: "
                          f"pass --fid-classifier too")
    if json_path:
        check_writable(json_path, overwrite, what="JSON file")
    model_class = MODELS.get(config["model"].get("type"))
    if bound_steps is not None and model_class is not None and issubclass(model_class, LatentVariableModel):
        raise MinisdError(f"--bound-steps is the number of steps of a diffusion model's bound; "
                          f"a {config['model']['type']} has none")
    if likelihood == "ode":
        if model_class is None or not issubclass(model_class, DiffusionModel):
            raise MinisdError(f"--likelihood ode is the probability-flow ODE of a diffusion model; a "
                              f"{config['model'].get('type')} has none")
        for flag, value in (("--bound-steps", bound_steps), ("--num-samples", num_samples)):
            if value is not None:
                raise MinisdError(f"{flag} is for the variational bound, not --likelihood ode")
    if fid_classifier:
        from minisd.data import load_dataset

        if model_class is not None and not model_class.can_sample:
            raise MinisdError(f"a {config['model']['type']} cannot sample, so it has no FID")
        dataset = dataset_name(config, checkpoint)
        classifier_dataset = dataset_name(read_checkpoint_config(fid_classifier), fid_classifier)
        if classifier_dataset != dataset:
            raise MinisdError(f"the classifier was trained on {classifier_dataset}, the model on {dataset}: "
                              f"FID needs a classifier of the model's dataset")
        test_images = len(load_dataset(dataset, "test", data_dir=data_dir))
        if fid_samples > test_images:
            raise MinisdError(f"--fid-samples {fid_samples}: FID compares as many samples as test images, and "
                              f"the {dataset} test split has {test_images}")


def evaluate_checkpoint(model, config: dict[str, Any], *, checkpoint: str | os.PathLike, split: str = "test",
                        num_samples: int | None = None, bound_steps: int | None = None,
                        fid_classifier: str | None = None, fid_samples: int = FID_SAMPLES,
                        sampler_args: dict[str, Any] | None = None, skip_likelihood: bool = False,
                        limit: int | None = None, batch_size: int = BATCH_SIZE, seed: int = 0,
                        data_dir: str | None = None, progress: bool = True, likelihood: str = "bound") -> dict[str, Any]:
    """Everything ``minisd eval`` reports for a generative ``model`` loaded from ``checkpoint`` (whose
    ``config.json`` is ``config``): its likelihood bound on the first ``limit`` images of ``split`` unless
    ``skip_likelihood`` (a diffusion model's with ``likelihood="ode"``: the probability-flow ODE's instead of the
    variational bound), and with ``fid_classifier`` its FID (see the ``report_*`` functions)."""
    from minisd.models.base import LatentVariableModel

    start = time.perf_counter()
    results = {"checkpoint": str(checkpoint), "dataset": config.get("data", {}).get("dataset"),
               "split": split, "binarized": bool(config.get("data", {}).get("binarize")), "step": config.get("step")}
    if not (hasattr(model, "nll") or fid_classifier):
        raise MinisdError(f"a {model.model_type} has no likelihood; for FID pass --fid-classifier")
    if hasattr(model, "nll") and not skip_likelihood:
        images = evaluation_set(config, split, checkpoint=checkpoint, data_dir=data_dir).images[:limit]
        common = {"split": split, "num_samples": num_samples, "batch_size": batch_size, "seed": seed,
                  "progress": progress}
        if isinstance(model, LatentVariableModel):
            results.update(report_latent_likelihood(model, images, **common))
        elif likelihood == "ode":
            results.update(report_diffusion_ode_likelihood(model, images, split=split, batch_size=batch_size,
                                                           seed=seed, progress=progress))
        else:
            results.update(report_diffusion_bound(model, images, bound_steps=bound_steps, **common))
    if fid_classifier:
        results.update(report_fid(model, dataset=dataset_name(config, checkpoint), classifier_path=fid_classifier,
                                  num_samples=fid_samples, sampler_args=sampler_args or {}, seed=seed,
                                  data_dir=data_dir, progress=progress))
    results["seconds"] = time.perf_counter() - start
    return results


# ------------------------------------------------------------------ score models of points


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
    results["ode_nll_nats"], results["ode_nll_nats_se"] = _mean_and_standard_error(nats)
    results.update({"ode_nfe": sum(nfes) / len(nfes), "ode_points": len(points)})
    line = (f"{split} NLL {results['ode_nll_nats']:.4f} +- {_text(results['ode_nll_nats_se'])} nats per point "
            f"(exact, probability-flow ODE), {len(points)} points, {results['ode_nfe']:.0f} denoiser evaluations "
            f"per solve")
    if dataset == "gmm":
        from minisd.data.toys import TOY_MIXTURE

        alpha_0, sigma_0 = (v.item() for v in model.denoiser.schedule.alpha_sigma(torch.zeros(1, device=model.device)))
        true_nats = -TOY_MIXTURE.noised(alpha_0, sigma_0).log_prob(points.double().cpu())
        results["true_nll_nats"], results["true_nll_nats_se"] = _mean_and_standard_error(true_nats)
        results["nll_gap_nats"], results["nll_gap_nats_se"] = _mean_and_standard_error(nats.double() - true_nats)
        line += (f"; the true mixture's {results['true_nll_nats']:.4f}, a gap of {results['nll_gap_nats']:.4f} +- "
                 f"{_text(results['nll_gap_nats_se'])}")
    results["ode_seconds"] = time.perf_counter() - start_time
    print(f"{line}; {results['ode_seconds']:.1f} s")
    return results


def report_two_sample(model, test_points: torch.Tensor, *, sampler_args: dict[str, Any], seed: int,
                      progress: bool) -> dict[str, Any]:
    """Energy distance and MMD (:mod:`minisd.eval.two_sample`) between as many model samples as ``test_points``
    ``(N, D)`` and those points, with how the samples were drawn (``sampler_args``: the sampler options asked for)."""
    from minisd.eval.two_sample import energy_distance, mmd

    samples, results = _draw_samples_counted(model, len(test_points), sampler_args=sampler_args, seed=seed,
                                             progress=progress, batch_size=POINT_BATCH)
    results.update({"two_sample_points": len(test_points), "energy_distance": energy_distance(samples, test_points),
                    "mmd": mmd(samples, test_points)})
    print(f"energy distance {results['energy_distance']:.5f}, MMD^2 {results['mmd']:.5f} ({len(test_points)} "
          f"samples{_sampled_by(results)} against as many held-out points; about 0 when the laws agree)")
    return results


def check_score_eval_request(config: dict[str, Any], *, checkpoint: str | os.PathLike, points: int,
                             unsupported_options: list[str], likelihood: str | None, json_path: str | None,
                             overwrite: bool) -> None:
    """Everything the evaluation of a score model can check before it loads the model. ``unsupported_options``: the
    options given that only image models take; ``points``: the samples of the two-sample test, which are compared
    with as many held-out points."""
    from minisd.data.toys import load_toy
    from minisd.outputs import check_writable

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
    if json_path:
        check_writable(json_path, overwrite, what="JSON file")


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


def write_results(results: dict[str, Any], path: str | os.PathLike | None) -> None:
    """Write ``results`` as JSON to ``path`` (nothing when None), making its folder if needed."""
    from minisd.outputs import make_parent

    if path:
        make_parent(path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}")


# ------------------------------------------------------------------ text-to-image models


def text_to_image_folder(path: str | os.PathLike) -> Path | None:
    """The model folder of a text-to-image model at ``path`` (the folder itself, or the run that trained it);
    None for anything else."""
    from minisd.pipelines import resolve_model

    try:
        location = resolve_model(path)
    except MinisdError:
        return None
    return location.folder if location.is_text_to_image_folder else None


def text_to_image_dataset(folder: str | os.PathLike) -> str:
    """The dataset a text-to-image model folder was trained on: its index's ``data.dataset``, or for a folder
    written before the index kept it, the ``data.dataset`` of the ``unet`` run beside it."""
    from minisd.models.model_folder import read_model_index
    from minisd.models.files import read_checkpoint_config

    folder = Path(folder)
    dataset = read_model_index(folder).get("data", {}).get("dataset")
    unet_run = folder.parent / "unet"
    if dataset is None and unet_run.is_dir():
        dataset = read_checkpoint_config(unet_run).get("data", {}).get("dataset")
    if not isinstance(dataset, str):
        raise MinisdError(f"{folder} names no dataset (model_index.json data.dataset), so minisd cannot tell which "
                          f"prompts and test images belong to it")
    return dataset


def check_adherence_request(folder: str | os.PathLike, *, classifier: str | None, json_path: str | None,
                            overwrite: bool, unsupported_options: list[str], sampler: str | None = None,
                            steps: int | None = None, **sampler_args: Any) -> str:
    """Everything the prompt-adherence evaluation of the text-to-image model ``folder`` can check before it loads
    the model; returns the model's dataset. ``classifier``: the run of the classifier that reads the samples;
    ``unsupported_options``: the command-line options given that only other models take; ``sampler`` (default:
    the model's), ``steps`` and ``sampler_args`` (eta): how the samples will be drawn."""
    from minisd.diffusion.samplers import check_sampler_args
    from minisd.outputs import check_writable
    from minisd.models.model_folder import read_model_index
    from minisd.models.files import read_checkpoint_config

    if unsupported_options:
        raise MinisdError(f"{', '.join(unsupported_options)}: not for a text-to-image model, whose evaluation is "
                          f"prompt adherence (--classifier, --samples-per-prompt, --steps, --guidance, --sampler)")
    dataset = text_to_image_dataset(folder)
    if dataset not in ADHERENCE_CLASSIFIERS:
        raise MinisdError(f"prompt adherence is measured for models of {' and '.join(ADHERENCE_CLASSIFIERS)}; "
                          f"this one was trained on {dataset}")
    model_type, preset = ADHERENCE_CLASSIFIERS[dataset]
    if not classifier:
        raise MinisdError(f"prompt adherence needs --classifier, the run of a {model_type} trained on {dataset} "
                          f"(minisd train --config {preset})")
    config = read_checkpoint_config(classifier)
    found = (config.get("model", {}).get("type"), config.get("data", {}).get("dataset"))
    if found != (model_type, dataset):
        raise MinisdError(f"--classifier {classifier} is a {found[0]} trained on {found[1]}; a {dataset} model's "
                          f"samples are read by a {model_type} trained on {dataset} (minisd train --config {preset})")
    check_sampler_args(sampler or read_model_index(folder)["model"].get("sampler"), steps=steps, **sampler_args)
    if json_path:
        check_writable(json_path, overwrite, what="JSON file")
    return dataset


def evaluate_text_to_image(pipe, dataset: str, classifier_path: str | os.PathLike, *,
                           samples_per_prompt: int | None = None, steps: int | None = None,
                           guidance_scale: float | None = None, sampler: str | None = None, seed: int = 0,
                           batch_size: int = 100, data_dir: str | None = None, progress: bool = True,
                           **sampler_args: Any) -> dict[str, Any]:
    """Prompt adherence of a text-to-image ``pipe`` trained on ``dataset`` ("mnist": :func:`evaluate_digits`,
    "shapes": :func:`evaluate_shapes`), read by the classifier run at ``classifier_path``, with the FID of the
    samples against the test split. ``samples_per_prompt`` and ``steps`` default to the evaluation's own
    (200 per digit prompt, 5 per shapes prompt) and the model's."""
    from minisd.pipelines import load
    from minisd.eval.adherence import evaluate_digits, evaluate_shapes

    start = time.perf_counter()
    classifier = load(classifier_path, device=pipe.device)
    options = {"steps": steps or pipe.model.sample_steps, "guidance_scale": guidance_scale, "sampler": sampler,
               "seed": seed, "batch_size": batch_size, "progress": progress, **sampler_args}
    if samples_per_prompt is not None:
        options["samples_per_prompt"] = samples_per_prompt
    if dataset == "mnist":
        from minisd.data import load_dataset

        test_images = load_dataset("mnist", "test", data_dir=data_dir).images
        results = evaluate_digits(pipe, classifier, test_images=test_images, **options)
    elif dataset == "shapes":
        from minisd.data import load_captioned

        results = evaluate_shapes(pipe, classifier, test_images=load_captioned("shapes", "test").images, **options)
    else:
        raise MinisdError(f"prompt adherence is measured for models of {' and '.join(ADHERENCE_CLASSIFIERS)}, "
                          f"not {dataset}")
    results = {"model": pipe.name, "model_hash": pipe.weights_hash, "dataset": dataset,
               "classifier": str(classifier_path), **results, "seconds": time.perf_counter() - start}
    print(format_adherence_table(results))
    return results


def format_adherence_table(results: dict[str, Any]) -> str:
    """The lines ``minisd eval`` prints for a prompt-adherence evaluation: the settings, then one line per
    accuracy (in percent) and the FID."""
    lines = [f"prompt adherence of {results.get('model')} ({results.get('dataset')}): {results['prompts']} prompts, "
             f"{results['samples']} samples by {results['sampler']} in {results['steps']} steps, guidance scale "
             f"{results['guidance_scale']}, seed {results['seed']}"]
    width = max(len(key) for key in results)
    for key, value in results.items():
        if key.endswith("accuracy"):
            lines.append(f"  {key:<{width}}  {100 * value:6.2f}%")
        elif key.startswith("FID-"):
            lines.append(f"  {key:<{width}}  {value:7.3f}  (against {results['fid_test_images']} test images, on "
                         f"the classifier's features: not Inception FID)")
    return "\n".join(lines)
