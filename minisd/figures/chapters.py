"""``minisd figures CHAPTER [MODEL]`` as one call, :func:`make_figures`: which models each chapter draws, where its
figures go by default, and the data each chapter's figures take from the model's own dataset."""

from __future__ import annotations

import os
from pathlib import Path

from minisd.errors import MinisdError
from minisd.eval.model_card import is_folder_dataset
from minisd.eval.report import evaluation_set, text_to_image_dataset
from minisd.figures import CHAPTERS
from minisd.models.files import read_checkpoint_config, run_folder
from minisd.pipelines import load
from minisd.pipelines.loading import DEFAULT_MODEL, ModelLocation, resolve_model
from minisd.runtime import resolve_device

# Which model types each chapter's figures draw.
FIGURE_MODELS = {"vae": ("vae", "autoencoder", "hvae"), "autoencoder": ("autoencoder", "vae", "hvae"),
                 "latent-planes": ("autoencoder",), "diffusion": ("diffusion",), "score": ("score",)}
COMPARED_VAE = "vae2d"  # the shipped model the latent-planes figure draws beside an autoencoder


def make_figures(chapter: str, checkpoint: str | os.PathLike | None = None, *, out: str | os.PathLike | None = None,
                 seed: int = 0, raw_weights: bool = False, overwrite: bool = False, device: str = "auto",
                 data_dir: str | None = None) -> dict[str, Path]:
    """Write the figures of ``chapter`` (one of :data:`CHAPTERS`) and return their paths by name. ``checkpoint``:
    the model they draw (required for vae, autoencoder and latent-planes; a text-to-image model by name or path,
    default the shipped mnist one); ``out``: their folder (default: the run's ``figures/``, or
    ``figures/<chapter>``); ``raw_weights``: the last step's weights instead of the EMA."""
    if chapter not in CHAPTERS:
        raise MinisdError(f"no chapter {chapter!r} has figures; the chapters are {', '.join(CHAPTERS)}")
    if chapter == "text-to-image":
        return _text_to_image_figures(checkpoint, out, seed=seed, overwrite=overwrite, device=device)
    if chapter == "flow":
        return _flow_figures(checkpoint, out, seed=seed, overwrite=overwrite, device=device)
    config = read_checkpoint_config(resolve_model(checkpoint).folder) if checkpoint else None
    if config is not None and config["model"].get("type") not in FIGURE_MODELS.get(chapter, ()):
        kind = config["model"].get("type")
        fits = [name for name, types in FIGURE_MODELS.items() if kind in types]
        raise MinisdError(f"{checkpoint} holds a {kind} model, not one that minisd figures {chapter} "
                          f"draws" + (f"; use: minisd figures {fits[0]} {checkpoint}" if fits else ""))
    if checkpoint is None and chapter in ("vae", "autoencoder"):
        raise MinisdError(f"minisd figures {chapter} needs a checkpoint: minisd figures {chapter} runs/vae2d")
    if checkpoint is None and chapter == "latent-planes":
        raise MinisdError("minisd figures latent-planes needs a 2-d autoencoder: "
                          "minisd figures latent-planes runs/autoencoder2d")

    def model():  # loaded after the data the figures take, as late as it can be
        return load(checkpoint, ema=not raw_weights, device=resolve_device(device)) if checkpoint else None

    if out is None:
        out = run_folder(checkpoint) / "figures" if checkpoint else Path("figures") / chapter
    out = Path(out)
    if chapter == "probability":
        from minisd.figures.probability import make_probability_figures

        return make_probability_figures(out, seed=seed, overwrite=overwrite)
    if chapter == "diffusion":
        from minisd.data import load_dataset
        from minisd.figures.diffusion import make_diffusion_figures

        dataset = config.get("data", {}).get("dataset", "mnist") if config else "mnist"
        try:
            image = load_dataset(dataset, "test", data_dir=data_dir).images[0]
        except MinisdError:
            image = load_dataset("digits", "test").images[0]
        return make_diffusion_figures(out, model=model(), image=image, seed=seed, overwrite=overwrite)
    if chapter == "score":
        from minisd.data.toys import TOYS
        from minisd.figures.score import make_score_figures

        toy = config.get("data", {}).get("dataset") if config else "gmm"
        if toy not in TOYS:
            raise MinisdError(f"{checkpoint} was trained on {toy}; the score figures draw a model of a 2-D toy "
                              f"({', '.join(TOYS)})")
        # Without a checkpoint a small model is trained on the gmm toy first (about 15 s), with a progress bar.
        return make_score_figures(out, model=model(), toy=toy, seed=seed, overwrite=overwrite,
                                  progress=checkpoint is None)
    dataset = evaluation_set(config, "test", checkpoint=checkpoint, data_dir=data_dir)
    if chapter == "latent-planes":
        from minisd.figures.vae import make_latent_planes_figure

        return make_latent_planes_figure(model(), load(COMPARED_VAE), dataset, out, overwrite=overwrite)
    from minisd.figures.vae import make_vae_figures

    return make_vae_figures(model(), dataset, out, metrics_path=run_folder(checkpoint) / "metrics.jsonl", seed=seed,
                            overwrite=overwrite)


def _text_to_image_figures(model: str | os.PathLike | None, out: str | os.PathLike | None, *, seed: int,
                           overwrite: bool, device: str) -> dict[str, Path]:
    """The prompt grid, attention maps and editing figures of a text-to-image model (by name or path)."""
    from minisd.figures.text_to_image import make_text_to_image_figures
    from minisd.outputs import check_writable
    from minisd.pipelines import TextToImagePipeline

    location = resolve_model(model)
    out = Path(out) if out else Path("figures/text_to_image")
    for name in ("prompt_grid", "attention", "editing"):  # before the work
        check_writable(out / f"{name}.png", overwrite, suffixes=(".png",), what="figure")
    prompts = _folder_model_prompts(location)
    pipe = load(model or DEFAULT_MODEL, device=resolve_device(device))
    if not isinstance(pipe, TextToImagePipeline):
        raise MinisdError(f"{model or DEFAULT_MODEL} is not a text-to-image model; minisd figures text-to-image "
                          f"draws one")
    return make_text_to_image_figures(pipe, out, seed=seed, prompts=prompts)


def _flow_figures(model: str | os.PathLike | None, out: str | os.PathLike | None, *, seed: int, overwrite: bool,
                  device: str) -> dict[str, Path]:
    """The trajectories; with a few-step digits model (by name or path), also its samples at 1, 2 and 4 steps beside
    those of the shipped digits model it is distilled from."""
    from minisd.figures.flow import make_flow_figures
    from minisd.pipelines import TextToImagePipeline

    out = Path(out) if out else Path("figures/flow")
    if model is None:
        return make_flow_figures(out, seed=seed, overwrite=overwrite)
    pipe = load(model, device=resolve_device(device))
    if not isinstance(pipe, TextToImagePipeline) or text_to_image_dataset(resolve_model(model).folder) != "mnist":
        raise MinisdError(f"{model} is not a digits text-to-image model; minisd figures flow draws a few-step one, "
                          f"such as mnist-fast")
    teacher = load(DEFAULT_MODEL, device=resolve_device(device))
    return make_flow_figures(out, seed=seed, overwrite=overwrite, model=pipe, teacher=teacher)


def _folder_model_prompts(location: ModelLocation) -> list[str] | None:
    """Prompts from the captions of the folder of images a text-to-image model was trained on; None for a model of
    mnist or shapes (the figures have prompts of their own), or for what is not a text-to-image model folder."""
    from minisd.figures.text_to_image import folder_prompts

    if not location.is_text_to_image_folder:
        return None
    try:
        dataset = text_to_image_dataset(location.folder)
    except MinisdError:  # a model folder from before the index named its data
        return None
    return folder_prompts(dataset) if is_folder_dataset(dataset) else None
