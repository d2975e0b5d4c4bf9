"""The ``minisd`` command: train, sample, eval, figures, demo.

Every sub-command maps onto one library call; run ``minisd COMMAND --help`` for its options.
User mistakes (bad arguments, missing data, an existing output, a damaged checkpoint) print one line,
``minisd: error: ...``, and exit with status 2, never a traceback. Outputs are checked before any
work, and a command that fails leaves no file behind.

Nothing here imports torch at module level: ``minisd --help`` answers at once, and the CPU threads are
configured (:mod:`minisd.runtime`) before torch starts its thread pool.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minisd.errors import MinisdError
from minisd.sampler_options import SAMPLER_OPTIONS, add_sampler_option_flags, given_sampler_args
from minisd.sampler_options import non_negative_number as _non_negative_number

RUNS_DIR = Path("runs")
MAX_GRID_IMAGES = 10_000  # a 100 x 100 grid; FID and other bulk uses draw their samples without a picture
MAX_SCATTER_POINTS = 20_000  # a score model's samples in one scatter plot
SAMPLE_IMAGES, SAMPLE_POINTS = 64, 2000  # minisd sample's default --n: images in a grid, or 2-D points


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one line every minisd error is."""

    def error(self, message: str):
        self.exit(2, f"minisd: error: {message} (see: {self.prog} --help)\n")


class _LazyChoices:
    """argparse ``choices`` read from a registry only when needed: the registries import torch, --help should not."""

    def __init__(self, load):
        self._load = load

    def __iter__(self):
        return iter(self._load())

    def __contains__(self, item) -> bool:
        return item in self._load()


def _sampler_names() -> list[str]:
    from minisd.diffusion.samplers import SAMPLERS

    return sorted(SAMPLERS)


def _spacing_names() -> tuple[str, ...]:
    from minisd.diffusion.spacing import SPACINGS

    return SPACINGS


def _whole_number(low: int, high: int, words: str):
    """An argparse type: a whole number from ``low`` to ``high``, described as ``words`` when it is not."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {words}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value
    return parse


_positive_int = _whole_number(1, sys.maxsize, "a positive integer")
_seed = _whole_number(0, 2**63 - 1, "from 0 to 2**63 - 1")


def _add_common(parser: argparse.ArgumentParser, *, data: bool = True) -> None:
    from minisd.runtime import DEVICE_HELP

    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--threads", type=_positive_int,
                        help="CPU threads for torch (default: $OMP_NUM_THREADS if set, else the cores this "
                             "process may use; see the README)")
    if data:
        parser.add_argument("--data-dir", help="folder holding mnist/ and fashion-mnist/ IDX files "
                                               "(default: $MINISD_DATA, else a download cache)")


FOLDER_PRESET = "text2image_folder"  # minisd train --data FOLDER without --config


def _check_image_folder(folder: Path) -> None:
    """``--data``: a folder that exists and holds images with captions, checked before a run folder is made
    (cheaply: the images themselves are read, and bad ones named, when training starts)."""
    from minisd.data.image_folder import IMAGE_SUFFIXES, METADATA_FILE

    captions = f"a caption for each ({METADATA_FILE}, or a .txt beside each image)"
    if not folder.exists():
        raise MinisdError(f"--data {folder}: no such folder; give the folder of your images with {captions}, "
                          f"or make an example one: minisd example-folder {folder}")
    if not folder.is_dir():
        raise MinisdError(f"--data {folder}: a file, not a folder; give the folder of your images with {captions}")
    files = [path for path in folder.iterdir() if path.is_file()]
    if not files:
        raise MinisdError(f"--data {folder}: the folder is empty; put your images in it with {captions}")
    if not any(path.suffix.lower() in IMAGE_SUFFIXES for path in files):
        raise MinisdError(f"--data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    if not (folder / METADATA_FILE).is_file() and not any(path.suffix == ".txt" for path in files):
        raise MinisdError(f"--data {folder}: the images have no captions; add {METADATA_FILE} (lines of "
                          '{"file_name": ..., "text": ...}) or a .txt file beside each image')


def _default_folder_run(folder: Path) -> Path:
    """``minisd train --data FOLDER``'s default run folder: runs/<folder name>."""
    return RUNS_DIR / folder.resolve().name


def _holds(outer: Path, inner: Path) -> bool:
    """Whether the folder ``inner`` is ``outer`` or lies inside it."""
    outer, inner = outer.resolve(), inner.resolve()
    return inner == outer or outer in inner.parents


def cmd_train(args: argparse.Namespace) -> None:
    from minisd.train import load_run_config, train_from_config
    from minisd.train.config import apply_overrides
    from minisd.train.distributed import is_main_process

    if args.data is not None:  # sugar for --set data.dataset=FOLDER, with the folder preset
        folder = Path(args.data)
        _check_image_folder(folder)
        args.set = [f"data.dataset={json.dumps(str(folder))}", *args.set]  # quoted: a folder may be named 2024
        if not args.config and not args.resume:
            args.config = FOLDER_PRESET
    if args.config:
        config = load_run_config(args.config, args.set)
    elif args.resume:
        config = apply_overrides({}, args.set)  # only what changes; the rest comes from the checkpoint
    else:
        raise MinisdError("--config is needed to start a run (a preset or a TOML file; see minisd train --help)")
    if args.out:
        out = Path(args.out)
    elif args.data is not None:
        out = _default_folder_run(Path(args.data))
    elif args.config:
        out = RUNS_DIR / Path(args.config).stem
    else:
        raise MinisdError("--resume needs --out, the run folder to continue")
    if args.data is not None and _holds(out, Path(args.data)):
        other = f"{_default_folder_run(Path(args.data))}-model"
        raise MinisdError(f"the run folder {out} would hold the images of --data {args.data} (and --overwrite would "
                          f"delete them); choose another --out, e.g. --out {other}")
    from minisd.train.config import is_text_to_image_config
    from minisd.train.text_to_image import RUN_CONFIG_FILE, train_text_to_image

    if is_text_to_image_config(config) or (args.resume and (out / RUN_CONFIG_FILE).is_file()):
        if args.resume and not args.config:
            config = apply_overrides(json.loads((out / RUN_CONFIG_FILE).read_text()), args.set)
        train_text_to_image(config, out, data_dir=args.data_dir, resume=args.resume, overwrite=args.overwrite,
                            device=args.device, progress=not args.no_progress,
                            command=" ".join(["minisd", *map(_shell_quote, sys.argv[1:])]))
        if is_main_process():
            from minisd.eval.model_card import write_model_card

            print(f"model card: {write_model_card(out, data_dir=args.data_dir)}")
        return
    result = train_from_config(config, out, data_dir=args.data_dir, resume=args.resume, overwrite=args.overwrite,
                               device=args.device, progress=not args.no_progress)
    if is_main_process():
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result["eval"].items())
        print(f"trained {result['step']} steps in {result['seconds']:.0f} s; test: {summary}")
        print(f"checkpoint: {out / 'checkpoint'}   metrics: {out / 'metrics.jsonl'}")


def _shell_quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def _load(args: argparse.Namespace):
    import minisd
    from minisd.runtime import resolve_device

    return minisd.load(args.checkpoint, ema=not args.raw_weights, device=resolve_device(args.device))


def _run_dir(checkpoint: str) -> Path:
    path = Path(checkpoint)
    return path.parent if path.name == "checkpoint" else path


def _sampler_flags(args: argparse.Namespace) -> list[str]:
    """The sampler options given on the command line (those of :func:`_add_sampler_options`), as their flags."""
    return [*_given_options(args, ("sampler", "steps", "spacing")),
            *(option.flag for option in SAMPLER_OPTIONS if getattr(args, option.name) is not None)]


def _sampler_args(args: argparse.Namespace, model) -> dict:
    """The diffusion sampler options given on the command line (those of :func:`_add_sampler_options`), checked
    against the sampler (the model's, unless --sampler) before any work."""
    sampler_args = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("spacing", args.spacing))
                    if v is not None}
    own_args = given_sampler_args(args)
    if (sampler_args or own_args) and not model.has_samplers:
        raise MinisdError(f"a {model.model_type} samples in one step: {', '.join(_sampler_flags(args))} "
                          f"are for diffusion models")
    if model.has_samplers:
        from minisd.diffusion.samplers import check_sampler_args

        check_sampler_args(sampler_args.get("sampler", model.sampler), **own_args)
    return {**sampler_args, **own_args}


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from minisd.images import IMAGE_SUFFIXES, save_image_grid, save_point_scatter
    from minisd.outputs import check_writable
    from minisd.sampling import draw_samples

    if args.n is not None and args.n > max(MAX_GRID_IMAGES, MAX_SCATTER_POINTS):
        raise MinisdError(f"--n {args.n} is more than one picture should hold (at most {MAX_GRID_IMAGES} images, or "
                          f"{MAX_SCATTER_POINTS} points); FID draws many samples without a picture: "
                          f"minisd eval RUN --fid-classifier ...")
    out = Path(args.out) if args.out else _run_dir(args.checkpoint) / "samples" / f"seed{args.seed}.png"
    check_writable(out, args.overwrite, suffixes=IMAGE_SUFFIXES, what="image")  # before the work, not after
    model = _load(args)
    if not hasattr(model, "can_sample"):  # a text-to-image pipeline
        raise MinisdError(f"{args.checkpoint} is a text-to-image model: give it a prompt, "
                          f"minisd generate \"...\" --model {args.checkpoint}")
    if not model.can_sample:
        raise MinisdError(f"a {model.model_type} is not a generative model: it cannot sample (train a vae)")
    points = model.model_type == "score"
    n = args.n or (SAMPLE_POINTS if points else SAMPLE_IMAGES)
    if not points and n > MAX_GRID_IMAGES:
        raise MinisdError(f"--n {n} is more images than one grid should hold (at most {MAX_GRID_IMAGES}); "
                          f"FID draws many samples without a picture: minisd eval RUN --fid-classifier ...")
    sampler_args = _sampler_args(args, model)
    if points:
        from minisd.eval.report import POINT_BATCH  # the batches of minisd eval: the same seed, the same samples

        samples = draw_samples(model, n, generator=torch.Generator(model.device).manual_seed(args.seed),
                               batch_size=POINT_BATCH, progress=not args.no_progress, **sampler_args)
        own_args = "".join(f", {k} = {v}" for k, v in sampler_args.items() if k not in ("sampler", "steps"))
        how = (f"{sampler_args.get('sampler', model.sampler)} in {sampler_args.get('steps', model.sample_steps)} "
               f"steps{own_args}, seed {args.seed}")
        print(save_point_scatter(samples, out, title=f"{n} samples of {args.checkpoint}\n({how})",
                                 overwrite=args.overwrite))
        return
    images = draw_samples(model, n, generator=torch.Generator(model.device).manual_seed(args.seed),
                          progress=not args.no_progress, **sampler_args)
    print(save_image_grid(images, out, overwrite=args.overwrite))


def _given_options(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The command-line spellings of the options among ``names`` (attribute names) that were given."""
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) not in (None, False)]


def _eval_text_to_image(args: argparse.Namespace, folder: Path) -> None:
    """Prompt adherence of a text-to-image model (see :func:`minisd.eval.report.evaluate_text_to_image`)."""
    import minisd
    from minisd.eval.report import BATCH_SIZE, check_adherence_request, evaluate_text_to_image, write_results
    from minisd.runtime import resolve_device

    unsupported = _given_options(args, ("fid_classifier", "fid_samples", "num_samples", "bound_steps",
                                        "skip_likelihood", "limit", "spacing", "raw_weights", "likelihood", "points"))
    sampler_args = given_sampler_args(args)
    dataset = check_adherence_request(folder, classifier=args.classifier, json_path=args.json,
                                      overwrite=args.overwrite, unsupported_options=unsupported, sampler=args.sampler,
                                      steps=args.steps, **sampler_args)
    pipe = minisd.load(args.checkpoint, device=resolve_device(args.device))
    results = evaluate_text_to_image(
        pipe, dataset, args.classifier, samples_per_prompt=args.samples_per_prompt, steps=args.steps,
        guidance_scale=args.guidance, sampler=args.sampler, seed=args.seed, batch_size=args.batch_size or BATCH_SIZE,
        data_dir=args.data_dir, progress=not args.no_progress, **sampler_args)
    write_results(results, args.json)


def cmd_eval(args: argparse.Namespace) -> None:
    from minisd.eval.report import check_eval_request, evaluate_checkpoint, text_to_image_folder, write_results
    from minisd.models.files import read_checkpoint_config

    folder = text_to_image_folder(args.checkpoint)
    if folder is not None:
        _eval_text_to_image(args, folder)
        return
    adherence_options = _given_options(args, ("classifier", "samples_per_prompt", "guidance"))
    if adherence_options:
        raise MinisdError(f"{', '.join(adherence_options)}: for text-to-image models (prompt adherence); "
                          f"{args.checkpoint} is not one (for FID pass --fid-classifier)")
    config = read_checkpoint_config(args.checkpoint)
    if config["model"].get("type") == "latent_diffusion":
        run = Path(args.checkpoint).resolve()
        run = run.parent.parent if run.name == "checkpoint" else run.parent
        raise MinisdError(f"{args.checkpoint} is the UNet stage of a text-to-image run; evaluate the whole model: "
                          f"minisd eval {run} --classifier ...")
    if config["model"].get("type") == "score":
        _eval_score_model(args, config)
        return
    if args.points is not None:
        raise MinisdError(f"--points: the samples of a score model's two-sample test; {args.checkpoint} is not one "
                          f"(for FID pass --fid-classifier and --fid-samples)")
    from minisd.eval.report import BATCH_SIZE, FID_SAMPLES

    fid_samples = args.fid_samples or FID_SAMPLES
    check_eval_request(config, checkpoint=args.checkpoint, fid_classifier=args.fid_classifier,
                       fid_samples=fid_samples, bound_steps=args.bound_steps, sampler_options=_sampler_flags(args),
                       json_path=args.json, overwrite=args.overwrite, data_dir=args.data_dir,
                       likelihood=args.likelihood or "bound", num_samples=args.num_samples)
    model = _load(args)
    results = evaluate_checkpoint(
        model, config, checkpoint=args.checkpoint, split=args.split, num_samples=args.num_samples,
        bound_steps=args.bound_steps, fid_classifier=args.fid_classifier, fid_samples=fid_samples,
        sampler_args=_sampler_args(args, model) if args.fid_classifier else None,
        skip_likelihood=args.skip_likelihood, limit=args.limit, batch_size=args.batch_size or BATCH_SIZE,
        seed=args.seed, data_dir=args.data_dir, progress=not args.no_progress, likelihood=args.likelihood or "bound")
    write_results(results, args.json)


def _eval_score_model(args: argparse.Namespace, config: dict) -> None:
    """Exact likelihood and two-sample statistics of a score model (see
    :func:`minisd.eval.report.evaluate_score_model`)."""
    from minisd.eval.report import (POINT_BATCH, POINTS, check_score_eval_request, evaluate_score_model,
                                    write_results)

    points = args.points or POINTS
    check_score_eval_request(config, checkpoint=args.checkpoint, points=points, likelihood=args.likelihood,
                             unsupported_options=_given_options(args, ("fid_classifier", "fid_samples", "num_samples",
                                                                       "bound_steps")),
                             json_path=args.json, overwrite=args.overwrite)
    model = _load(args)
    results = evaluate_score_model(model, config, checkpoint=args.checkpoint, split=args.split, points=points,
                                   sampler_args=_sampler_args(args, model), skip_likelihood=args.skip_likelihood,
                                   limit=args.limit, batch_size=args.batch_size or POINT_BATCH, seed=args.seed,
                                   progress=not args.no_progress)
    write_results(results, args.json)


# Which model types each chapter's figures draw.
FIGURE_MODELS = {"vae": ("vae", "autoencoder", "hvae"), "autoencoder": ("autoencoder", "vae", "hvae"),
                 "latent-planes": ("autoencoder",), "diffusion": ("diffusion",), "score": ("score",)}


def _text_to_image_figures(args: argparse.Namespace) -> dict:
    """``minisd figures text-to-image [MODEL]``: the prompt grid, attention maps and editing figures."""
    import minisd
    from minisd.figures.text_to_image import make_text_to_image_figures
    from minisd.generate import model_path
    from minisd.outputs import check_writable
    from minisd.pipelines import TextToImagePipeline
    from minisd.runtime import resolve_device

    folder = model_path(args.checkpoint)
    out = Path(args.out) if args.out else Path("figures/text_to_image")
    for name in ("prompt_grid", "attention", "editing"):  # before the work
        check_writable(out / f"{name}.png", args.overwrite, suffixes=(".png",), what="figure")
    prompts = _folder_model_prompts(folder)
    pipe = minisd.load(folder, device=resolve_device(args.device))
    if not isinstance(pipe, TextToImagePipeline):
        raise MinisdError(f"{folder} is not a text-to-image model; minisd figures text-to-image draws one")
    return make_text_to_image_figures(pipe, out, seed=args.seed, prompts=prompts)


def _folder_model_prompts(folder: Path) -> list[str] | None:
    """Prompts from the captions of the folder of images a text-to-image model was trained on; None for a model of
    mnist or shapes (the figures have prompts of their own), or for what is not a text-to-image model."""
    from minisd.eval.report import text_to_image_dataset, text_to_image_folder
    from minisd.figures.text_to_image import folder_prompts
    from minisd.eval.model_card import is_folder_dataset

    model_folder = text_to_image_folder(folder)
    if model_folder is None:
        return None
    try:
        dataset = text_to_image_dataset(model_folder)
    except MinisdError:  # a model folder from before the index named its data
        return None
    return folder_prompts(dataset) if is_folder_dataset(dataset) else None


def _latent_planes_figure(args: argparse.Namespace) -> dict:
    """``minisd figures latent-planes AUTOENCODER``: its 2-d latent plane beside the shipped vae2d's, on the
    autoencoder's test images."""
    import minisd
    from minisd.eval.report import evaluation_set
    from minisd.figures.vae import make_latent_planes_figure
    from minisd.generate import model_path
    from minisd.models.files import read_checkpoint_config

    if not args.checkpoint:
        raise MinisdError("minisd figures latent-planes needs a 2-d autoencoder: "
                          "minisd figures latent-planes runs/autoencoder2d")
    config = read_checkpoint_config(args.checkpoint)
    dataset = evaluation_set(config, "test", checkpoint=args.checkpoint, data_dir=args.data_dir)
    vae_path = model_path("vae2d")
    out = Path(args.out) if args.out else _run_dir(args.checkpoint) / "figures"
    return make_latent_planes_figure(_load(args), minisd.load(vae_path), dataset, out, overwrite=args.overwrite)


def cmd_figures(args: argparse.Namespace) -> None:
    from minisd.models.files import read_checkpoint_config

    if args.chapter == "text-to-image":
        for name, path in _text_to_image_figures(args).items():
            print(f"{name}: {path}")
        return
    config = read_checkpoint_config(args.checkpoint) if args.checkpoint else None
    if config is not None and config["model"].get("type") not in FIGURE_MODELS.get(args.chapter, ()):
        kind = config["model"].get("type")
        fits = [chapter for chapter, types in FIGURE_MODELS.items() if kind in types]
        raise MinisdError(f"{args.checkpoint} holds a {kind} model, not one that minisd figures {args.chapter} "
                          f"draws" + (f"; use: minisd figures {fits[0]} {args.checkpoint}" if fits else ""))
    if args.chapter == "probability":
        from minisd.figures.probability import make_probability_figures

        out = Path(args.out or "figures/probability")
        paths = make_probability_figures(out, seed=args.seed, overwrite=args.overwrite)
    elif args.chapter == "latent-planes":
        paths = _latent_planes_figure(args)
    elif args.chapter == "diffusion":
        from minisd.data import load_dataset
        from minisd.figures.diffusion import make_diffusion_figures

        dataset = config.get("data", {}).get("dataset", "mnist") if config else "mnist"
        try:
            image = load_dataset(dataset, "test", data_dir=args.data_dir).images[0]
        except MinisdError:
            image = load_dataset("digits", "test").images[0]
        out = Path(args.out) if args.out else (_run_dir(args.checkpoint) / "figures" if args.checkpoint
                                                else Path("figures/diffusion"))
        paths = make_diffusion_figures(out, model=_load(args) if args.checkpoint else None, image=image,
                                       seed=args.seed, overwrite=args.overwrite)
    elif args.chapter == "score":
        from minisd.data.toys import TOYS
        from minisd.figures.score import make_score_figures

        toy = config.get("data", {}).get("dataset") if config else "gmm"
        if toy not in TOYS:
            raise MinisdError(f"{args.checkpoint} was trained on {toy}; the score figures draw a model of a 2-D toy "
                              f"({', '.join(TOYS)})")
        out = Path(args.out) if args.out else (_run_dir(args.checkpoint) / "figures" if args.checkpoint
                                                else Path("figures/score"))
        # Without a checkpoint a small model is trained on the gmm toy first (about 15 s), with a progress bar.
        paths = make_score_figures(out, model=_load(args) if args.checkpoint else None, toy=toy, seed=args.seed,
                                   overwrite=args.overwrite, progress=not args.checkpoint)
    else:
        if not args.checkpoint:
            raise MinisdError(f"minisd figures {args.chapter} needs a checkpoint: minisd figures {args.chapter} runs/vae2d")
        from minisd.figures.vae import make_vae_figures

        from minisd.eval.report import evaluation_set

        dataset = evaluation_set(config, "test", checkpoint=args.checkpoint, data_dir=args.data_dir)
        out = Path(args.out) if args.out else _run_dir(args.checkpoint) / "figures"
        paths = make_vae_figures(_load(args), dataset, out, metrics_path=_run_dir(args.checkpoint) / "metrics.jsonl",
                                 seed=args.seed, overwrite=args.overwrite)
    for name, path in paths.items():
        print(f"{name}: {path}")


def cmd_example_folder(args: argparse.Namespace) -> None:
    from minisd.data.example_folder import EXAMPLE_IMAGES, write_example_folder

    n = EXAMPLE_IMAGES if args.n is None else args.n
    folder = write_example_folder(args.out, n=n, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {n} captioned 32x32 pictures and {folder / 'metadata.jsonl'} to {folder}")
    out = f" --out {_default_folder_run(folder)}-model" if _holds(_default_folder_run(folder), folder) else ""
    print(f"next, train a text-to-image model on them: minisd train --data {_shell_quote(str(folder))}{out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from minisd.demo import run_demo

    run_demo(Path(args.out), data_dir=args.data_dir, overwrite=args.overwrite, device=args.device)


def _add_sampler_options(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """--sampler, --steps, --spacing, and each sampler's own (--eta, --snr, --ode-method, ...: the table of
    :mod:`minisd.sampler_options`): how a diffusion model draws its samples."""
    parser.add_argument("--sampler", choices=_LazyChoices(_sampler_names), metavar="SAMPLER",
                        help=f"diffusion sampler {purpose}(default: the model's): %(choices)s")
    parser.add_argument("--steps", type=_positive_int, help="diffusion sampling steps, not denoiser evaluations: "
                                                            "heun spends 2 per step (default: the model's)")
    parser.add_argument("--spacing", choices=_LazyChoices(_spacing_names), metavar="SPACING",
                        help="time grid of the steps (default: log_snr, uniform in log-SNR): %(choices)s")
    add_sampler_option_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    from minisd.configs import list_presets
    from minisd.version import __version__

    parser = _Parser(prog="minisd", description="Stable Diffusion built from first principles.")
    parser.add_argument("--version", action="version", version=f"minisd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model from a preset or TOML config",
                                description=f"Train a model. Presets: {', '.join(list_presets())}.")
    train.add_argument("--config", help="preset name or path to a TOML file (optional with --resume, which "
                                        "reads the run's saved config)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set train.steps=500 --set data.dataset=digits")
    train.add_argument("--data", metavar="FOLDER",
                       help="train a text-to-image model on your own folder of images with captions "
                            "(metadata.jsonl, or a .txt beside each image): short for --set data.dataset=FOLDER, "
                            f"with --config {FOLDER_PRESET} unless another is given, and --out runs/<folder name>")
    train.add_argument("--out", help="run folder (default: runs/<config name>, or runs/<folder name> with --data)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last checkpoint, with its saved config "
                            "(only train.steps may change: --set train.steps=N trains longer)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_common(train)
    train.set_defaults(func=cmd_train)

    def checkpoint_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("checkpoint", help="checkpoint folder, or the run folder holding it")
        sub.add_argument("--raw-weights", action="store_true", help="use the last step's weights instead of the EMA")
        sub.add_argument("--seed", type=_seed, default=0, help="random seed: the same seed gives the same result")
        sub.add_argument("--overwrite", action="store_true", help="replace existing output files")
        sub.add_argument("--no-progress", action="store_true", help="hide the progress bars")
        return sub

    sample = checkpoint_command("sample", "draw samples from a trained model and write an image grid (a scatter plot "
                                          "for a score model of 2-d points)")
    sample.add_argument("--n", type=_positive_int,
                        help=f"number of images (default {SAMPLE_IMAGES}, at most {MAX_GRID_IMAGES}), or of points "
                             f"of a score model (default {SAMPLE_POINTS}, at most {MAX_SCATTER_POINTS})")
    sample.add_argument("--out", help="image path, .png (default: <run>/samples/seed<SEED>.png)")
    _add_sampler_options(sample)
    _add_common(sample, data=False)
    sample.set_defaults(func=cmd_sample)

    evaluate = checkpoint_command("eval", "likelihood bounds and FID of a generative model; exact likelihood and "
                                          "two-sample statistics of a score model of 2-d points; prompt adherence "
                                          "and FID of a text-to-image model (with --classifier)")
    evaluate.add_argument("--split", choices=["train", "test"], default="test", help="which images to score "
                                                                                   "(default: test)")
    evaluate.add_argument("--num-samples", "-k", type=_positive_int,
                          help="VAEs: importance samples K for the IWAE bound (default 1000; 1: ELBO only); "
                               "diffusion: bound estimates averaged per image (default 1)")
    evaluate.add_argument("--bound-steps", type=_positive_int, metavar="T",
                          help="diffusion: the bound of the T-step discrete-time model (default: continuous time)")
    evaluate.add_argument("--likelihood", choices=["bound", "ode"],
                          help="diffusion: the variational bound (bound, default) or the probability-flow ODE's "
                               "bound on dequantised images, by Hutchinson's trace (ode; slow: try --limit)")
    evaluate.add_argument("--fid-classifier", help="a classifier run (minisd train --config classifier_mnist): "
                                                   "also report FID on its features and the samples' class balance")
    evaluate.add_argument("--fid-samples", type=_positive_int, help="samples for FID (default 1000)")
    evaluate.add_argument("--points", type=_positive_int,
                          help="score models: samples compared with as many held-out points by energy distance and "
                               "MMD (default 2000)")
    evaluate.add_argument("--skip-likelihood", action="store_true",
                          help="report FID only (a score model: the energy distance and MMD only)")
    evaluate.add_argument("--classifier", help="text-to-image models: the run of the classifier that reads the samples "
                                               "(mnist: minisd train --config classifier_mnist; shapes: "
                                               "attributes_shapes); reports prompt adherence and FID")
    evaluate.add_argument("--samples-per-prompt", type=_positive_int,
                          help="text-to-image models: samples of each prompt (default: 200 for digits, a tenth of "
                               "that per attribute prompt; 5 for shapes)")
    evaluate.add_argument("--guidance", type=_non_negative_number,
                          help="text-to-image models: classifier-free guidance scale (default: the model's)")
    _add_sampler_options(evaluate, purpose="for the FID samples, or a score model's samples ")
    evaluate.add_argument("--batch-size", type=_positive_int,
                          help="images per likelihood batch, or per sampling call of a text-to-image model "
                               "(default 100); points per ODE solve of a score model (default 5000)")
    evaluate.add_argument("--limit", type=_positive_int, help="evaluate the likelihood of only the first N images "
                                                              "(or points)")
    evaluate.add_argument("--json", help="also write the results to this JSON file")
    _add_common(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    figures = commands.add_parser("figures", help="write a chapter's figures",
                                  description="Write a chapter's figures as PNG files.")
    figures.add_argument("chapter", choices=["probability", "vae", "autoencoder", "latent-planes", "diffusion",
                                             "score", "text-to-image"])
    figures.add_argument("checkpoint", nargs="?", help="trained model (vae / autoencoder: required; "
                                                       "latent-planes: a 2-d autoencoder, drawn beside "
                                                       "the shipped vae2d; "
                                                       "diffusion: adds the trajectory and sampler figures; "
                                                       "score: a score model of a 2-D toy, default: train one on "
                                                       "gmm first; "
                                                       "text-to-image: a model, run or shipped name, default mnist)")
    figures.add_argument("--out", help="folder for the PNG files")
    figures.add_argument("--seed", type=_seed, default=0, help="random seed of the figures' noise and samples")
    figures.add_argument("--raw-weights", action="store_true", help="use the last step's weights instead of the EMA")
    figures.add_argument("--overwrite", action="store_true", help="replace existing figures")
    _add_common(figures)
    figures.set_defaults(func=cmd_figures)

    from minisd.generate import add_generate_command

    add_generate_command(commands, _add_common, _positive_int, _seed,
                         _non_negative_number, _LazyChoices(_sampler_names))

    from minisd.web.command import add_serve_command

    add_serve_command(commands, _add_common, _positive_int)

    example = commands.add_parser(
        "example-folder", help="write a small folder of captioned pictures to train on (minisd train --data)",
        description="Write N captioned 32x32 pictures of coloured shapes and their metadata.jsonl into OUT, in the "
                    "image-folder convention: a stand-in for a folder of your own pictures.")
    example.add_argument("out", metavar="OUT", help="folder to write (new, or empty)")
    example.add_argument("--n", type=_positive_int, help="number of pictures (default: the example's 600)")
    example.add_argument("--seed", type=_seed, default=0, help="random seed: the same seed gives the same pictures")
    example.add_argument("--overwrite", action="store_true",
                         help="write into a folder that is not empty (other files there are left alone)")
    example.set_defaults(func=cmd_example_folder)

    demo_help = ("train the path's 2-d VAE (784 -> 256 -> 2 -> 256 -> 784) on MNIST, or on the built-in 8x8 digits "
                 "when MNIST is not found, report its test ELBO and importance-weighted bound, and draw its figures")
    demo = commands.add_parser("demo", help="train the path's 2-d VAE and draw its figures (make demo)",
                               description=demo_help[0].upper() + demo_help[1:] + ".")
    demo.add_argument("--out", default="outputs/demo", help="folder for the run, numbers and figures")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    _add_common(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from minisd.runtime import configure_threads

        configure_threads(getattr(args, "threads", None))  # example-folder has no --threads
        args.func(args)
    except MinisdError as err:
        print(f"minisd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minisd: interrupted; a run keeps its last checkpoint (continue it with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
