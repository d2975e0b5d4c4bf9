"""The latent autoencoder: training speed, and the quality of its reconstructions and latents.

    # images/s of training steps (batch 128, MNIST and shapes sizes) on 1 and 2 CPU threads, no data needed:
    python benchmarks/latent_autoencoder.py speed
    # train a preset (with --set overrides), fit the latent scale, score the test-set reconstructions:
    python benchmarks/latent_autoencoder.py quality --out runs/bench/ae --classifier classifier_mnist \
        [--preset latent_autoencoder_mnist] [--set model.kl_weight=1e-3 ...] [--device cpu]
    python benchmarks/latent_autoencoder.py quality --out runs/bench/ae_shapes --preset latent_autoencoder_shapes
    # the autoencoder of a trained text-to-image model as it is, on the first 2000 test images:
    python benchmarks/latent_autoencoder.py score mnist --classifier classifier_mnist

``quality`` prints one JSON line: the reconstruction report on the test split (mse per pixel on
[0, 1], PSNR, FID-MNIST of reconstructions against the test images), the KL per latent element,
the latent scale, the posterior's standard deviation in scaled (unit-variance) latent units, and
``perturbed_mse_0.1`` and ``_0.3``: the error of decoding latents with N(0, 0.1^2) or N(0, 0.3^2)
added, a measure of how smooth the decoder is around the codes, which is what a diffusion model's
imperfect samples will probe.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import minisd
from minisd.data import load_dataset
from minisd.data import load_captioned
from minisd.eval.reconstruction import reconstruction_report
from minisd.models.latent_autoencoder import LatentAutoencoder
from minisd.distributions import kl_normal
from minisd.train.config import load_run_config
from minisd.train.run import train_from_config


def training_speed(threads: int, image_shape: tuple[int, int, int] = (1, 28, 28), steps: int = 5,
                   batch_size: int = 128) -> float:
    """Images per second of loss + backward + AdamW steps of the default autoencoder (after one warm-up step)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LatentAutoencoder(image_shape=image_shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {"image": torch.rand(batch_size, *image_shape)}
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


@torch.no_grad()
def latent_statistics(model: LatentAutoencoder, images: torch.Tensor, noise_levels: tuple[float, ...] = (0.1, 0.3)
                      ) -> dict[str, float]:
    """KL per latent element, posterior std in scaled units, and the error of decoding perturbed latents."""
    mean, logvar = model.posterior(images)
    latents = mean * model.latent_scale
    unit_noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0)).to(latents.device)
    perturbed = {f"perturbed_mse_{noise}": (model.decode(latents + noise * unit_noise) - images).square().mean().item()
                 for noise in noise_levels}
    return {"kl_per_element": kl_normal(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar)).mean().item(),
            "posterior_std_scaled": ((0.5 * logvar).exp() * model.latent_scale).mean().item(),
            "latent_std": latents.std().item(), **perturbed}


def quality(args: argparse.Namespace) -> None:
    config = load_run_config(args.preset, args.set)
    result = train_from_config(config, args.out, device=args.device, overwrite=True, progress=False)
    model = minisd.load(args.out, device=args.device)
    device = model.latent_scale.device
    dataset = config["data"]["dataset"]
    load = load_captioned if dataset == "shapes" else load_dataset  # shapes are made on the fly, with captions
    train_images = load(dataset, "train").images[:5000].to(device)
    test_images = load(dataset, "test").images.to(device)
    scale = model.fit_latent_scale(train_images)
    classifier = minisd.load(args.classifier, device=args.device) if args.classifier else None
    report = reconstruction_report(model, test_images, classifier)
    stats = latent_statistics(model, test_images[:2000])
    print(json.dumps({"preset": args.preset, "set": args.set, "steps": result["step"],
                      "train_seconds": round(result.get("seconds", float("nan")), 1),
                      "latent_scale": scale, **report, **stats}))


def score(args: argparse.Namespace) -> None:
    """The autoencoder of a trained text-to-image model (a shipped name or a run), scored as it is."""
    from minisd.eval.report import text_to_image_dataset
    from minisd.pipelines import resolve_model

    model = minisd.load(args.model, device=args.device).model.autoencoder
    dataset = text_to_image_dataset(resolve_model(args.model).folder)
    load = load_captioned if dataset == "shapes" else load_dataset
    test_images = load(dataset, "test").images[:args.images].to(args.device)
    classifier = minisd.load(args.classifier, device=args.device) if args.classifier else None
    print(json.dumps({"model": args.model, **reconstruction_report(model, test_images, classifier)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("speed")
    run = commands.add_parser("quality")
    run.add_argument("--out", required=True)
    run.add_argument("--preset", default="latent_autoencoder_mnist")
    run.add_argument("--set", action="append", default=[])
    run.add_argument("--classifier")
    run.add_argument("--device", default="cpu")
    scored = commands.add_parser("score")
    scored.add_argument("model", help="a text-to-image model: a shipped name (mnist) or a run")
    scored.add_argument("--images", type=int, default=2000, help="the first N test images")
    scored.add_argument("--classifier", help="for the FID of the reconstructions (classifier_mnist)")
    scored.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.command == "score":
        score(args)
    elif args.command == "speed":
        for image_shape in ((1, 28, 28), (3, 32, 32)):
            for threads in (1, 2):
                print(f"{image_shape}, {threads} thread(s): {training_speed(threads, image_shape):.0f} images/s")
    else:
        quality(args)


if __name__ == "__main__":
    main()
