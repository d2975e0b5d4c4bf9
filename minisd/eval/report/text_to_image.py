"""The report of a text-to-image model: prompt adherence on a fixed prompt set (:mod:`minisd.eval.adherence`),
read by a classifier of the model's dataset, and the FID of those samples."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from minisd.errors import MinisdError
from minisd.eval.report.common import check_json_path, evaluation_classifier
from minisd.shipped import AUTO_CLASSIFIER, SHIPPED_CLASSIFIERS

ADHERENCE_CLASSIFIERS = {  # dataset -> (model type, preset that trains it)
    "mnist": ("classifier", "classifier_mnist"),
    "shapes": ("attribute_classifier", "attributes_shapes"),
}


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
                            steps: int | None = None, **sampler_args: Any) -> tuple[str, str]:
    """Everything the prompt-adherence evaluation of the text-to-image model ``folder`` can check before it loads
    the model; returns the model's dataset and the folder of the classifier. ``classifier``: the run, checkpoint or
    shipped name of the classifier that reads the samples (None or "auto": the one shipped for the dataset);
    ``unsupported_options``: the command-line options given that only other models take; ``sampler`` (default:
    the model's), ``steps`` and ``sampler_args`` (eta): how the samples will be drawn."""
    from minisd.diffusion.samplers import check_sampler_args
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
    if classifier is None and dataset not in SHIPPED_CLASSIFIERS:
        raise MinisdError(f"prompt adherence needs --classifier, the run of a {model_type} trained on {dataset} "
                          f"(minisd train --config {preset})")
    given = classifier or AUTO_CLASSIFIER
    classifier = evaluation_classifier(given, dataset, flag="--classifier", preset=preset)
    config = read_checkpoint_config(classifier)
    found = (config.get("model", {}).get("type"), config.get("data", {}).get("dataset"))
    if found != (model_type, dataset):
        raise MinisdError(f"--classifier {given} is a {found[0]} trained on {found[1]}; a {dataset} model's "
                          f"samples are read by a {model_type} trained on {dataset} (minisd train --config {preset})")
    check_sampler_args(sampler or read_model_index(folder)["model"].get("sampler"), steps=steps, **sampler_args)
    check_json_path(json_path, overwrite)
    return dataset, classifier


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
             f"{results['guidance_scale']}"
             + (" in log-SNR [{:g}, {:g})".format(*results["guidance_interval"]) if "guidance_interval" in results
                else "") + f", seed {results['seed']}"]
    width = max(len(key) for key in results)
    for key, value in results.items():
        if key.endswith("accuracy"):
            lines.append(f"  {key:<{width}}  {100 * value:6.2f}%")
        elif key.startswith("FID-"):
            lines.append(f"  {key:<{width}}  {value:7.3f}  (against {results['fid_test_images']} test images, on "
                         f"the classifier's features: not Inception FID)")
    return "\n".join(lines)
