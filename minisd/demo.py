"""``minisd demo`` (and ``make demo``): the learning path's 2-d VAE, trained, measured and drawn in about a minute.

It uses MNIST when the files are found locally or can be downloaded, and otherwise the
8x8 digits built into scikit-learn, so it runs on any machine.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from minisd.data import binarized_once, load_dataset
from minisd.errors import DataError, MinisdError
from minisd.eval import evaluate_likelihood
from minisd.figures.vae import make_vae_figures
from minisd.outputs import check_can_create
from minisd.runtime import resolve_device
from minisd.train import load_run_config, train_from_config
from minisd.models.files import load

# The 8x8 digits are 40 times fewer than MNIST's images: smaller batches, more epochs.
DIGITS_OVERRIDES = ["data.dataset=digits", "train.batch_size=64", "train.steps=4000", "train.eval_every=1000",
                    "train.checkpoint_every=1000"]
IWAE_SAMPLES = 100
# Prompts for the shipped text-to-image models (checkpoints/<name>), 4 images each.
DEMO_PROMPTS = {
    "mnist": [f"a handwritten digit {k}" for k in range(10)] + ["a thick, right-slanted handwritten 3",
                                                                 "the number seven, thin strokes"],
    "shapes": ["a small red circle to the left of a blue square", "a big green triangle in the top left",
               "a yellow square above a small purple circle"],
}


def choose_dataset(data_dir: str | None) -> str:
    """``"mnist"`` if its files are here (or can be downloaded), else ``"digits"``."""
    try:
        for split in ("train", "test"):
            load_dataset("mnist", split, data_dir=data_dir)
        return "mnist"
    except DataError as err:
        print(f"minisd demo: MNIST is not available ({str(err).splitlines()[0]}).\n"
              "minisd demo: using scikit-learn's built-in 8x8 digits instead.", file=sys.stderr)
        return "digits"


def run_demo(out_dir: Path, *, data_dir: str | None = None, overwrite: bool = False, device: str = "auto") -> dict:
    """Train the ``vae2d`` preset, report its test ELBO and IWAE bound, write the chapter's figures into ``out_dir``."""
    out_dir = Path(out_dir)
    earlier = out_dir.is_dir() and any(out_dir.iterdir())
    if earlier and not overwrite:
        raise MinisdError(f"{out_dir} already holds a demo; pass --overwrite to replace it or choose another --out")
    check_can_create(out_dir, "demo folder")
    dataset = choose_dataset(data_dir)
    config = load_run_config("vae2d", DIGITS_OVERRIDES if dataset == "digits" else [])
    if earlier:
        shutil.rmtree(out_dir)  # only now that the new demo is ready to start
    run_dir = out_dir / "run"
    print(f"minisd demo: training the 2-d VAE (image -> 256 -> 2-d latent -> 256 -> image) on {dataset}, "
          f"{config['train']['steps']} steps")
    train_from_config(config, run_dir, data_dir=data_dir, device=device)

    model = load(run_dir, device=resolve_device(device))
    test_set = binarized_once(load_dataset(dataset, "test", data_dir=data_dir))
    elbo = evaluate_likelihood(model, test_set.images, num_samples=1)
    iwae = evaluate_likelihood(model, test_set.images, num_samples=IWAE_SAMPLES)
    numbers = {"dataset": dataset, "test_elbo_nats": -elbo["nll_nats"],
               f"test_log_likelihood_iwae_k{IWAE_SAMPLES}_nats": -iwae["nll_nats"],
               "test_nll_bits_per_dim": iwae["bits_per_dim"], "test_images": len(test_set)}
    (out_dir / "numbers.json").write_text(json.dumps(numbers, indent=2) + "\n")
    figures = make_vae_figures(model, test_set, out_dir / "figures", metrics_path=run_dir / "metrics.jsonl")

    print(f"\ntest ELBO on binarised {dataset}: {numbers['test_elbo_nats']:.2f} nats per image; "
          f"log p(x) >= {-iwae['nll_nats']:.2f} nats (IWAE, K = {IWAE_SAMPLES}), "
          f"{iwae['bits_per_dim']:.4f} bits/dim")
    print(f"checkpoint: {run_dir / 'checkpoint'}")
    print(f"numbers:    {out_dir / 'numbers.json'}")
    for name, path in figures.items():
        print(f"figure:     {path}  ({name.replace('_', ' ')})")
    numbers["text_to_image"] = text_to_image_demo(out_dir / "text_to_image", device=device)
    return numbers


def text_to_image_demo(out_dir: Path, *, device: str = "auto") -> list[str]:
    """Images from a few prompts with each shipped text-to-image model, made as ``minisd generate`` makes them."""
    from minisd.generate import generate_png
    from minisd.pipelines.loading import shipped_text_to_image_models
    from minisd.shipped import SHIPPED_MODELS

    written = []
    for name, prompts in DEMO_PROMPTS.items():
        if name not in shipped_text_to_image_models():
            print(f"minisd demo: no shipped model {name} in {SHIPPED_MODELS}; skipped")
            continue
        print(f"\ntext-to-image with the shipped model {name} (checkpoints/{name}), 4 images per prompt:")
        for i, prompt in enumerate(prompts):
            path = generate_png(prompt, out_dir / f"{name}-{i:02d}.png", model=name, n=4, seed=i, device=device)
            written.append(str(path))
            print(f"image:      {path}  ({prompt!r})")
    if written:
        print("\nmore: minisd generate \"a handwritten digit 7\" --n 4 --out seven.png   (settings are in the PNG)")
    return written
