"""What ``minisd eval`` reports, as functions of explicit arguments (the command line only parses and calls
:func:`evaluate`, which finds the model's family and checks the options before any work).

- A generative checkpoint of images (:mod:`.generative`): the likelihood bounds its model has (ELBO and the
  importance-weighted bound for the VAE family, :mod:`.latent_variable`; the variational bound and its three terms
  for diffusion, or with ``likelihood="ode"`` the probability-flow ODE's bound, :mod:`.diffusion`), and with an FID
  classifier the Frechet distance of its samples to test images and their class balance.
- A score model of 2-D points (:mod:`.points`): its exact likelihood by the probability-flow ODE, and the energy
  distance and MMD of its samples to held-out points.
- An image classifier (:mod:`.classifier`): its accuracy and cross-entropy.
- A text-to-image model (:mod:`.text_to_image`): prompt adherence on a fixed prompt set and the FID of those samples.

What they share (default sizes, the JSON file, drawing samples with their count of evaluations) is in
:mod:`.common`. Each ``report_*`` prints its lines and returns its numbers; each ``check_*`` checks everything
that can be checked before a model is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from minisd.errors import MinisdError
from minisd.eval.report.classifier import report_classifier
from minisd.eval.report.common import (BATCH_SIZE, FID_CLASSIFIER_PRESETS, FID_SAMPLES, POINTS, check_json_path,
                                       dataset_name, evaluation_classifier, evaluation_set, write_results)
from minisd.eval.report.diffusion import report_diffusion_bound, report_diffusion_ode_likelihood
from minisd.eval.report.generative import check_eval_request, evaluate_checkpoint, report_fid
from minisd.eval.report.latent_variable import report_latent_likelihood
from minisd.eval.report.points import (check_score_eval_request, evaluate_score_model, report_point_likelihood,
                                       report_two_sample)
from minisd.eval.report.text_to_image import (ADHERENCE_CLASSIFIERS, check_adherence_request, evaluate_text_to_image,
                                              format_adherence_table, text_to_image_dataset)
from minisd.sampler_options import given_flags
from minisd.sampling import POINT_BATCH, checked_sampler_args

__all__ = ["ADHERENCE_CLASSIFIERS", "BATCH_SIZE", "FID_SAMPLES", "POINTS", "POINT_BATCH", "check_adherence_request",
           "check_eval_request", "check_score_eval_request", "dataset_name", "evaluate", "evaluate_checkpoint",
           "evaluate_score_model", "evaluate_text_to_image", "evaluation_classifier", "evaluation_set", "report_classifier", "format_adherence_table",
           "report_diffusion_bound", "report_diffusion_ode_likelihood", "report_fid", "report_latent_likelihood",
           "report_point_likelihood", "report_two_sample", "text_to_image_dataset",
           "write_results"]


def _given(options: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The command-line spellings of the options among ``names`` that were given (not None or False)."""
    return [f"--{name.replace('_', '-')}" for name in names if options[name] not in (None, False)]


def evaluate(checkpoint: str | os.PathLike, *, split: str = "test", num_samples: int | None = None,
             bound_steps: int | None = None, likelihood: str | None = None, fid_classifier: str | None = None,
             fid_samples: int | None = None, points: int | None = None, skip_likelihood: bool = False,
             limit: int | None = None, classifier: str | None = None, samples_per_prompt: int | None = None,
             guidance: float | None = None, guidance_interval: tuple[float, float] | None = None,
             sampler: str | None = None, steps: int | None = None, spacing: str | None = None, sampler_args: dict[str, Any] | None = None, batch_size: int | None = None,
             json_path: str | None = None, overwrite: bool = False, raw_weights: bool = False, seed: int = 0,
             device: str = "auto", data_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Everything ``minisd eval CHECKPOINT`` reports, for whatever model ``checkpoint`` holds: a text-to-image model
    (:func:`evaluate_text_to_image`), a score model of points (:func:`evaluate_score_model`) or any other generative
    checkpoint (:func:`evaluate_checkpoint`). The options are the command's (None: not given, the family's default);
    ``sampler_args`` holds the samplers' own (eta, snr, ...). ``fid_classifier`` and ``classifier`` are runs,
    checkpoints or shipped names, or "auto" for the classifier shipped for the model's dataset (a text-to-image
    model's ``classifier`` defaults to it). An option that the model's family does not take is
    refused, like every other mistake, before the model is loaded. The results are also written to ``json_path``."""
    options = dict(locals())  # the arguments by name, to name the options given that a family does not take
    from minisd.diffusion.guidance import check_interval
    from minisd.models.files import read_checkpoint_config
    from minisd.pipelines import resolve_model

    own_args = sampler_args or {}
    location = resolve_model(checkpoint)
    if location.is_stable_diffusion:
        raise MinisdError(f"{checkpoint} is a published Stable Diffusion model; minisd eval measures a model on the "
                          f"test set it was trained for (MNIST, Fashion-MNIST, shapes), which it has not. Draw with "
                          f"minisd generate --model {checkpoint}")
    if location.is_text_to_image_folder:
        folder = location.folder
        unsupported = _given(options, ("fid_classifier", "fid_samples", "num_samples", "bound_steps",
                                       "skip_likelihood", "limit", "spacing", "raw_weights", "likelihood", "points"))
        dataset, classifier = check_adherence_request(folder, classifier=classifier, json_path=json_path,
                                                      overwrite=overwrite, unsupported_options=unsupported,
                                                      sampler=sampler, steps=steps, **own_args)
        pipe = _load(checkpoint, raw_weights=False, device=device)
        interval = {"guidance_interval": check_interval(guidance_interval)} if guidance_interval is not None else {}
        results = evaluate_text_to_image(
            pipe, dataset, classifier, samples_per_prompt=samples_per_prompt, steps=steps, guidance_scale=guidance,
            sampler=sampler, seed=seed, batch_size=batch_size or BATCH_SIZE, data_dir=data_dir, progress=progress,
            **own_args, **interval)
        write_results(results, json_path)
        return results
    adherence_options = _given(options, ("classifier", "samples_per_prompt", "guidance", "guidance_interval"))
    if adherence_options:
        raise MinisdError(f"{', '.join(adherence_options)}: for text-to-image models (prompt adherence); "
                          f"{checkpoint} is not one (for FID pass --fid-classifier)")
    config = read_checkpoint_config(location.folder)
    model_type = config["model"].get("type")
    if model_type == "latent_diffusion":
        _refuse_unet_stage(checkpoint)
    asked_sampler = {**{k: v for k, v in (("sampler", sampler), ("steps", steps), ("spacing", spacing))
                        if v is not None}, **own_args}
    if model_type == "score":
        points = points or POINTS
        check_score_eval_request(config, checkpoint=checkpoint, points=points, likelihood=likelihood,
                                 unsupported_options=_given(options, ("fid_classifier", "fid_samples", "num_samples",
                                                                      "bound_steps")),
                                 json_path=json_path, overwrite=overwrite)
        model = _load(checkpoint, raw_weights=raw_weights, device=device)
        results = evaluate_score_model(model, config, checkpoint=checkpoint, split=split, points=points,
                                       sampler_args=checked_sampler_args(model, asked_sampler),
                                       skip_likelihood=skip_likelihood, limit=limit,
                                       batch_size=batch_size or POINT_BATCH, seed=seed, progress=progress)
        write_results(results, json_path)
        return results
    if model_type == "classifier":
        unsupported = _given(options, ("num_samples", "bound_steps", "likelihood", "fid_classifier", "fid_samples",
                                       "points", "skip_likelihood", "sampler", "steps", "spacing"))
        if unsupported or own_args:
            raise MinisdError(f"{', '.join(unsupported + given_flags(own_args))}: not for a classifier, whose "
                              f"evaluation is its accuracy on --split (and --limit)")
        check_json_path(json_path, overwrite)
        model = _load(checkpoint, raw_weights=raw_weights, device=device)
        test_set = evaluation_set(config, split, checkpoint=checkpoint, data_dir=data_dir)
        results = {"checkpoint": str(checkpoint), "dataset": dataset_name(config, checkpoint), "split": split,
                   **report_classifier(model, test_set.images[:limit], test_set.labels[:limit], split=split,
                                       batch_size=batch_size or BATCH_SIZE)}
        write_results(results, json_path)
        return results
    if points is not None:
        raise MinisdError(f"--points: the samples of a score model's two-sample test; {checkpoint} is not one "
                          f"(for FID pass --fid-classifier and --fid-samples)")
    fid_samples = fid_samples or FID_SAMPLES
    if fid_classifier is not None:
        dataset = dataset_name(config, checkpoint)
        fid_classifier = evaluation_classifier(fid_classifier, dataset, flag="--fid-classifier",
                                               preset=FID_CLASSIFIER_PRESETS.get(dataset, f"a classifier of {dataset}"))
    check_eval_request(config, checkpoint=checkpoint, fid_classifier=fid_classifier, fid_samples=fid_samples,
                       bound_steps=bound_steps, sampler_options=given_flags(asked_sampler), json_path=json_path,
                       overwrite=overwrite, data_dir=data_dir, likelihood=likelihood or "bound",
                       num_samples=num_samples)
    model = _load(checkpoint, raw_weights=raw_weights, device=device)
    results = evaluate_checkpoint(
        model, config, checkpoint=checkpoint, split=split, num_samples=num_samples, bound_steps=bound_steps,
        fid_classifier=fid_classifier, fid_samples=fid_samples,
        sampler_args=checked_sampler_args(model, asked_sampler) if fid_classifier else None,
        skip_likelihood=skip_likelihood, limit=limit, batch_size=batch_size or BATCH_SIZE, seed=seed,
        data_dir=data_dir, progress=progress, likelihood=likelihood or "bound")
    write_results(results, json_path)
    return results


def _refuse_unet_stage(checkpoint: str | os.PathLike) -> None:
    """The UNet stage of a text-to-image run is evaluated as the whole model, from the run."""
    run = Path(checkpoint).resolve()
    run = run.parent.parent if run.name == "checkpoint" else run.parent
    raise MinisdError(f"{checkpoint} is the UNet stage of a text-to-image run; evaluate the whole model: "
                      f"minisd eval {run} --classifier ...")


def _load(checkpoint: str | os.PathLike, *, raw_weights: bool, device: str):
    from minisd.pipelines import load
    from minisd.runtime import resolve_device

    return load(checkpoint, ema=not raw_weights, device=resolve_device(device))
