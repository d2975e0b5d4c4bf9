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
import sys
from pathlib import Path

from minisd.errors import MinisdError
from minisd.outputs import MAX_GRID_IMAGES, MAX_SCATTER_POINTS, SAMPLE_IMAGES, SAMPLE_POINTS
from minisd.sampler_options import add_sampler_option_flags, given_sampler_args
from minisd.sampler_options import non_negative_number as _non_negative_number
from minisd.shipped import AUTO_CLASSIFIER, SHIPPED_CLASSIFIERS


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


def cmd_train(args: argparse.Namespace) -> None:
    import shlex

    from minisd.train import run_training
    from minisd.train.distributed import is_main_process

    run = run_training(args.config, args.set, data=args.data, out=args.out, resume=args.resume,
                       overwrite=args.overwrite, data_dir=args.data_dir, device=args.device,
                       progress=not args.no_progress, command=shlex.join(["minisd", *sys.argv[1:]]))
    if not is_main_process():
        return
    if run.text_to_image:
        from minisd.eval.model_card import write_model_card

        print(f"model card: {write_model_card(run.out, data_dir=args.data_dir)}")
        return
    if run.result is None:  # a distillation: its model folder (written and announced by the run)
        return
    summary = ", ".join(f"{k} {v:.4g}" for k, v in run.result["eval"].items())
    print(f"trained {run.result['step']} steps in {run.result['seconds']:.0f} s; test: {summary}")
    print(f"checkpoint: {run.out / 'checkpoint'}   metrics: {run.out / 'metrics.jsonl'}")


def _load(args: argparse.Namespace):
    import minisd
    from minisd.runtime import resolve_device

    return minisd.load(args.checkpoint, ema=not args.raw_weights, device=resolve_device(args.device))


def _given_sampler_args(args: argparse.Namespace) -> dict:
    """The sampler options given on the command line (those of :func:`_add_sampler_options`), by argument name."""
    given = {name: getattr(args, name) for name in ("sampler", "steps", "spacing") if getattr(args, name) is not None}
    return {**given, **given_sampler_args(args)}


def cmd_sample(args: argparse.Namespace) -> None:
    from minisd.runtime import resolve_device
    from minisd.sampling import sample_picture

    print(sample_picture(args.checkpoint, args.out, n=args.n, seed=args.seed, sampler_args=_given_sampler_args(args),
                         ema=not args.raw_weights, device=resolve_device(args.device), overwrite=args.overwrite,
                         progress=not args.no_progress))


def cmd_eval(args: argparse.Namespace) -> None:
    from minisd.eval.report import evaluate

    evaluate(args.checkpoint, split=args.split, num_samples=args.num_samples, bound_steps=args.bound_steps,
             likelihood=args.likelihood, fid_classifier=args.fid_classifier, fid_samples=args.fid_samples,
             points=args.points, skip_likelihood=args.skip_likelihood, limit=args.limit, classifier=args.classifier,
             samples_per_prompt=args.samples_per_prompt, guidance=args.guidance,
             guidance_interval=args.guidance_interval, sampler=args.sampler,
             steps=args.steps, spacing=args.spacing, sampler_args=given_sampler_args(args),
             batch_size=args.batch_size, json_path=args.json, overwrite=args.overwrite, raw_weights=args.raw_weights,
             seed=args.seed, device=args.device, data_dir=args.data_dir, progress=not args.no_progress)


def cmd_figures(args: argparse.Namespace) -> None:
    from minisd.figures.chapters import make_figures

    paths = make_figures(args.chapter, args.checkpoint, out=args.out, seed=args.seed, raw_weights=args.raw_weights,
                         overwrite=args.overwrite, device=args.device, data_dir=args.data_dir)
    for name, path in paths.items():
        print(f"{name}: {path}")


def cmd_example_folder(args: argparse.Namespace) -> None:
    from minisd.data.example_folder import EXAMPLE_IMAGES, write_example_folder
    from minisd.train.command import folder_train_command

    n = EXAMPLE_IMAGES if args.n is None else args.n
    folder = write_example_folder(args.out, n=n, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {n} captioned 32x32 pictures and {folder / 'metadata.jsonl'} to {folder}")
    print(f"next, train a text-to-image model on them: {folder_train_command(folder)}")


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
    from minisd.configs import FOLDER_PRESET, list_presets
    from minisd.figures import CHAPTERS
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
                                          "and FID of a text-to-image model; a classifier's accuracy")
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
    evaluate.add_argument("--fid-classifier", nargs="?", const=AUTO_CLASSIFIER, metavar="CLASSIFIER",
                          help="also report FID on a classifier's features and the samples' class balance: a "
                               "classifier run or shipped name; alone, the one shipped for the model's dataset "
                               f"({', '.join(SHIPPED_CLASSIFIERS.values())})")
    evaluate.add_argument("--fid-samples", type=_positive_int, help="samples for FID (default 1000)")
    evaluate.add_argument("--points", type=_positive_int,
                          help="score models: samples compared with as many held-out points by energy distance and "
                               "MMD (default 2000)")
    evaluate.add_argument("--skip-likelihood", action="store_true",
                          help="report FID only (a score model: the energy distance and MMD only)")
    evaluate.add_argument("--classifier", help="text-to-image models: the classifier that reads the samples for "
                                               "prompt adherence and FID, a run or shipped name (default for mnist: "
                                               "the shipped classifier_mnist; shapes: a run of minisd train "
                                               "--config attributes_shapes)")
    evaluate.add_argument("--samples-per-prompt", type=_positive_int,
                          help="text-to-image models: samples of each prompt (default: 200 for digits, a tenth of "
                               "that per attribute prompt; 5 for shapes)")
    evaluate.add_argument("--guidance", type=_non_negative_number,
                          help="text-to-image models: classifier-free guidance scale (default: the model's)")
    evaluate.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                          help="text-to-image models: guide only where the log-SNR is in [LOW, HIGH) "
                               "(default: the model's; -99 99: every step)")
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
    figures.add_argument("chapter", choices=CHAPTERS)
    figures.add_argument("checkpoint", nargs="?", help="trained model (vae / autoencoder: required; "
                                                       "latent-planes: a 2-d autoencoder, drawn beside "
                                                       "the shipped vae2d; "
                                                       "diffusion: adds the trajectory and sampler figures; "
                                                       "score: a score model of a 2-D toy, default: train one on "
                                                       "gmm first; "
                                                       "text-to-image: a model, run or shipped name, default mnist; "
                                                       "flow: adds a few-step digits model's samples, e.g. "
                                                       "mnist-fast)")
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
