"""The report of a generative checkpoint of images, whatever its family: the likelihood bound its model has
(:mod:`~minisd.eval.report.latent_variable` or :mod:`~minisd.eval.report.diffusion`) and, with an FID classifier,
the Frechet distance of its samples to test images and their class balance."""

from __future__ import annotations

import os
import time
from typing import Any

from minisd.errors import MinisdError
from minisd.eval.report.common import (BATCH_SIZE, FID_SAMPLES, check_json_path, dataset_name, draw_samples_counted,
                                       evaluation_set, sampled_by)
from minisd.eval.report.diffusion import report_diffusion_bound, report_diffusion_ode_likelihood
from minisd.eval.report.latent_variable import report_latent_likelihood


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
    samples, results = draw_samples_counted(model, num_samples, sampler_args=sampler_args, seed=seed,
                                            progress=progress)
    name = {"mnist": "FID-MNIST", "fashion-mnist": "FID-Fashion"}.get(dataset, f"FID-{dataset}")
    results[name] = fid(classifier, samples, test_set.images[:num_samples])
    results.update({f"classes_{k}": v for k, v in class_balance(classifier, samples, test_set.labels).items()})
    print(f"{name}: {results[name]:.3f} ({num_samples} samples{sampled_by(results)} against as many test images; "
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
    from minisd.models.files import read_checkpoint_config

    if not fid_classifier and sampler_options:
        raise MinisdError(f"{', '.join(sampler_options)}: the sampler options choose how the FID samples are drawn: "
                          f"pass --fid-classifier too")
    check_json_path(json_path, overwrite)
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
        classifier_config = read_checkpoint_config(fid_classifier)
        if classifier_config["model"].get("type") != "classifier":
            raise MinisdError(f"--fid-classifier {fid_classifier} is a {classifier_config['model'].get('type')}; FID "
                              f"is measured on the features of a classifier (minisd train --config classifier_mnist)")
        classifier_dataset = dataset_name(classifier_config, fid_classifier)
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
