"""The model card of a text-to-image run: how it was trained (each command, the time per stage on this machine)
and what each frozen part reaches on held-out data. Training writes the model folder; this evaluates it from above
and writes ``RUN/held_out.json`` and ``RUN/model/README.md`` (``minisd train`` calls :func:`write_model_card` when
a text-to-image run ends; the card is not part of the weights' hashes, so it can be written again at any time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from minisd.data import CAPTIONED_DATASETS
from minisd.eval.reconstruction import reconstruction_report
from minisd.eval.retrieval import text_encoder_retrieval
from minisd.models.files import load, read_checkpoint_config
from minisd.models.model_folder import RUN_MODEL_FOLDER
from minisd.train.config import STAGES
from minisd.train.run import load_captioned_split
from minisd.train.text_to_image import recorded_timings, timing_lines


@torch.no_grad()
def held_out_report(model: Any, run_dir: Path, *, data_dir: str | None, num_images: int = 2000) -> dict[str, Any]:
    """What the two frozen parts of ``model`` (the run's LatentDiffusion) reach on the test split: the
    autoencoder's reconstruction error, and the text encoder's caption-to-image retrieval among 100 with
    captions in the held-out templates. A folder of images has no test split: there, its own images and captions.
    ``num_images`` test images at most, and no more than the run kept of each split (its ``data.num_images``)."""
    config = read_checkpoint_config(run_dir / "unet")
    kept = config["data"].get("num_images")
    test_set = load_captioned_split({**config["data"], "num_images": min(num_images, kept or num_images)}, "test",
                                    data_dir)
    torch.manual_seed(0)
    captions = test_set.captions(torch.arange(len(test_set)), templates="heldout") \
        if hasattr(test_set, "captions") else []
    report = {"autoencoder": reconstruction_report(model.autoencoder, test_set.images)}
    if len(captions) >= 100:
        report["text_encoder"] = text_encoder_retrieval(model.text_encoder, test_set.images, captions)
    return report


def is_folder_dataset(dataset: str) -> bool:
    """Whether ``data.dataset`` names a folder of images with captions rather than a built-in dataset."""
    return dataset not in CAPTIONED_DATASETS


def model_card(run_dir: Path, timings: list[dict[str, Any]], held_out: dict[str, Any]) -> str:
    """The model card: how the model was trained (the command, the time per stage on this machine) and what each
    stage reached on its test split (a folder of images has none: then on the images it was trained on)."""
    data = read_checkpoint_config(run_dir / "unet")["data"]
    folder = is_folder_dataset(data["dataset"])
    lines = [f"# {run_dir.resolve().name}", "", "A minisd text-to-image model (chapter \"Stable Diffusion\").", ""]
    if folder:  # read at the folder's own size and colour unless the run said otherwise: the model's shape says
        channels, height, width = read_checkpoint_config(run_dir / "autoencoder")["model"]["image_shape"]
        lines += [f"Trained on the folder `{data['dataset']}`: {held_out['autoencoder']['num_images']} images with "
                  f"captions, each read at {width}x{height} {'grey' if channels == 1 else 'RGB'}.", ""]
    lines += ["## How it was trained", "", "Each command run on the training folder, and the time each stage took:", ""]
    lines += [*timing_lines(timings), ""]
    if folder:
        lines += ["## What each part reached (on the training images)", "",
                  "A folder of images has no test split: these numbers are measured on the images the model was "
                  "trained on, with their own captions. They say how well each part fits them, not how it does on "
                  "new pictures.", ""]
    else:
        lines += ["## What each part reached (test split)", ""]
    images = "images of the folder" if folder else "test images"
    for stage in STAGES:
        metrics = [json.loads(line) for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines()
                   if line.strip().startswith("{")] if (run_dir / stage / "metrics.jsonl").exists() else []
        evals = [m for m in metrics if any(k.startswith("eval/") for k in m)]
        if evals:
            shown = ", ".join(f"{k[5:]} {v:.4g}" for k, v in evals[-1].items() if k.startswith("eval/"))
            limit = read_checkpoint_config(run_dir / stage).get("train", {}).get("eval_images")
            lines.append(f"- {stage} (step {evals[-1]['step']}): {shown}"
                         + (f" (on the first {limit} {images})" if limit else ""))
    reconstruction = held_out["autoencoder"]
    lines.append(f"- autoencoder reconstructions of {reconstruction['num_images']} {images}: squared error "
                 f"{reconstruction['mse']:.5f} per pixel, PSNR {reconstruction['psnr']:.1f} dB")
    retrieval = held_out.get("text_encoder")
    if retrieval:
        captions = "their own captions" if folder else "held-out caption templates"
        lines.append(f"- text encoder, caption-to-image retrieval among 100 {images}, {captions}: "
                     f"top-1 {retrieval['top1']:.3f} (chance {retrieval['top1_chance']:.3f}), top-5 "
                     f"{retrieval['top5']:.3f}; any image whose caption says the same: top-1 "
                     f"{retrieval['top1_class']:.3f} (chance {retrieval['top1_class_chance']:.3f}), top-5 "
                     f"{retrieval['top5_class']:.3f}")
    if folder:
        lines += ["", "Prompt adherence and FID are measured for the mnist and shapes models only (by classifiers of "
                  "their attributes); to see how this model follows prompts, draw a prompt grid from the folder's own "
                  f"captions: `minisd figures text-to-image {run_dir}`."]
    else:
        lines += ["", "Prompt adherence and FID: `minisd eval` with the evaluation classifier (see "
                  "benchmarks/README.md, \"Text-to-image\")."]
    return "\n".join(lines) + "\n"


def write_model_card(run_dir: str | Path, *, data_dir: str | None = None) -> Path:
    """Measure the held-out report of a finished text-to-image run and write it (``held_out.json``) and the model
    card (``model/README.md``); return the card's path."""
    run_dir = Path(run_dir)
    held_out = held_out_report(load(run_dir / "unet"), run_dir, data_dir=data_dir)
    (run_dir / "held_out.json").write_text(json.dumps(held_out, indent=2) + "\n")
    timings = recorded_timings(run_dir)
    card = run_dir / RUN_MODEL_FOLDER / "README.md"
    card.write_text(model_card(run_dir, timings, held_out))
    return card
