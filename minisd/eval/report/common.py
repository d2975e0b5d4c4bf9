"""What every family's report shares: the default sizes, the evaluation images of a checkpoint, a mean with its
standard error, drawing samples while counting the denoiser evaluations, and the JSON file of the results."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch

from minisd.errors import MinisdError
from minisd.shipped import AUTO_CLASSIFIER, SHIPPED_CLASSIFIERS

FID_SAMPLES = 1000  # samples (and test images) of FID, unless asked otherwise
BATCH_SIZE = 100  # images per likelihood batch, unless asked otherwise
POINTS = 2000  # a score model's samples, and held-out points, of the two-sample test unless asked otherwise
FID_CLASSIFIER_PRESETS = {"mnist": "classifier_mnist", "fashion-mnist": "classifier_fashion"}  # configs that train one


def evaluation_classifier(given: str | os.PathLike, dataset: str, *, flag: str, preset: str) -> str:
    """The folder of the classifier that ``flag`` names: a run, checkpoint or saved model, a shipped name, or
    :data:`AUTO_CLASSIFIER` for the classifier shipped for ``dataset``. ``preset``: the config that trains one."""
    from minisd.pipelines import resolve_model

    if str(given) == AUTO_CLASSIFIER:
        if dataset not in SHIPPED_CLASSIFIERS:
            raise MinisdError(f"{flag}: no classifier of {dataset} is shipped; train one (minisd train --config "
                              f"{preset}) and pass its run")
        given = SHIPPED_CLASSIFIERS[dataset]
    try:
        location = resolve_model(given)
    except MinisdError as err:
        raise type(err)(f"{flag}: {err}") from None
    if location.is_text_to_image_folder:
        raise MinisdError(f"{flag} {given}: a text-to-image model, not a classifier (minisd train --config {preset})")
    return str(location.folder)


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


def mean_and_standard_error(values: torch.Tensor) -> tuple[float, float | None]:
    """The mean of ``values`` ``(N,)`` and its standard error std / sqrt(N) (None for a single value)."""
    values = values.double()
    standard_error = (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else None
    return values.mean().item(), standard_error


def standard_error_text(value: float | None) -> str:
    """A standard error as printed: four decimals, or "?" where one value gave none."""
    return "?" if value is None else f"{value:.4f}"


def draw_samples_counted(model, n: int, *, sampler_args: dict[str, Any], seed: int, progress: bool,
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


def sampled_by(how: dict[str, Any]) -> str:
    """" by pc in 100 steps (200 denoiser evaluations)", or "" for a model without samplers."""
    if "sampler" not in how:
        return ""
    return (f" by {how['sampler']} in {how['sampler_steps']} steps ({how['sampler_evaluations']:.0f} denoiser "
            f"evaluations)")


def check_json_path(json_path: str | None, overwrite: bool) -> None:
    """``json_path`` (when given) can be written, checked before the work."""
    from minisd.outputs import check_writable

    if json_path:
        check_writable(json_path, overwrite, what="JSON file")


def write_results(results: dict[str, Any], path: str | os.PathLike | None) -> None:
    """Write ``results`` as JSON to ``path`` (nothing when None), making its folder if needed."""
    from minisd.outputs import make_parent

    if path:
        make_parent(path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}")
