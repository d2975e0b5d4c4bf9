"""The chapter "Score-based generative models" through the command line: a toy score model trained, evaluated and
sampled by ``minisd``, the samplers' own options (``--snr``, ``--ode-method``, ...) checked before any work and
recorded, and the probability-flow ODE's likelihood of a diffusion model of images.

The models are tiny and barely trained: what is checked is the plumbing (keys, counts, finite numbers, refusals),
not the quality of the samples or the likelihoods.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from minisd.cli import main
from minisd.diffusion.samplers import SAMPLERS, num_evaluations
from test_cli_errors import TINY_DIFFUSION

TINY_SCORE = ["--config", "score_toy", "--set", "data.dataset=gmm", "--set", "train.steps=20",
              "--set", "train.batch_size=64", "--set", "model.hidden=[16, 16]", "--set", "model.sample_steps=10",
              "--no-progress"]
BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "diffusion_samplers.py"


pytestmark = pytest.mark.xdist_group("test_score_cli")  # one worker: the module's two runs are trained once


@pytest.fixture(scope="module")
def score_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("score") / "run"
    assert main(["train", *TINY_SCORE, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("diffusion") / "run"
    assert main(["train", *TINY_DIFFUSION, "--out", str(run)]) == 0
    return run


def eval_json(argv: list[str], path: Path) -> dict:
    assert main(["eval", *argv, "--no-progress", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def assert_finite(results: dict, keys: list[str]) -> None:
    for key in keys:
        assert isinstance(results[key], (int, float)) and math.isfinite(results[key]), (key, results.get(key))


# ---------------------------------------------------------------- minisd eval


def test_eval_of_a_score_model_reports_exact_nll_the_true_mixtures_and_two_sample_statistics(score_run, tmp_path):
    results = eval_json([str(score_run), "--limit", "50", "--points", "200", "--sampler", "pc", "--steps", "5",
                         "--corrector-steps", "2", "--snr", "0.1"], tmp_path / "eval.json")
    assert_finite(results, ["ode_nll_nats", "ode_nll_nats_se", "ode_nfe", "true_nll_nats", "true_nll_nats_se",
                            "nll_gap_nats", "nll_gap_nats_se", "energy_distance", "mmd", "seconds"])
    assert results["dataset"] == "gmm" and results["ode_points"] == 50 and results["two_sample_points"] == 200
    # The gap is the model's NLL minus the true density's, point by point, on the same points.
    assert results["nll_gap_nats"] == pytest.approx(results["ode_nll_nats"] - results["true_nll_nats"], abs=1e-5)
    assert (results["sampler"], results["sampler_steps"]) == ("pc", 5)
    assert results["sampler_corrector_steps"] == 2 and results["sampler_snr"] == 0.1
    assert results["sampler_evaluations"] == num_evaluations("pc", 5, corrector_steps=2) == 15


def test_eval_with_the_adaptive_ode_sampler_records_the_evaluations_it_spent(score_run, tmp_path):
    results = eval_json([str(score_run), "--skip-likelihood", "--points", "100", "--sampler", "ode",
                         "--rtol", "1e-3", "--atol", "1e-3"], tmp_path / "eval.json")
    assert "ode_nll_nats" not in results
    assert results["sampler"] == "ode" and results["sampler_rtol"] == 1e-3 and results["sampler_atol"] == 1e-3
    assert_finite(results, ["sampler_evaluations", "energy_distance", "mmd"])
    assert results["sampler_evaluations"] > results["sampler_steps"]  # dopri5: 6 per attempted step, and more


def test_eval_likelihood_ode_gives_a_diffusion_models_bits_per_dim(diffusion_run, tmp_path):
    results = eval_json([str(diffusion_run), "--likelihood", "ode", "--limit", "2", "--batch-size", "2"],
                        tmp_path / "eval.json")
    assert_finite(results, ["ode_bits_per_dim", "ode_bits_per_dim_se", "ode_nats", "ode_nats_se", "ode_nfe",
                            "ode_seconds"])
    assert results["ode_images"] == 2 and results["ode_bits_per_dim"] > 0
    assert "nll_bound_bits_per_dim" not in results  # the variational bound is --likelihood bound, the default


# ---------------------------------------------------------------- minisd sample


def test_sample_of_a_score_model_writes_a_scatter_plot(score_run, tmp_path):
    out = tmp_path / "points.png"
    assert main(["sample", str(score_run), "--n", "300", "--sampler", "ode", "--ode-method", "rk4",
                 "--no-progress", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and min(image.size) > 200


# ---------------------------------------------------------------- refusals: one line, exit status 2, no file


def one_line_error(argv: list[str], capsys) -> str:
    """Run ``minisd ARGV`` in this process; it must fail as every minisd error does. Returns the line."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's errors
        status = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("minisd: error: "), lines
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["sample", "{score}", "--snr", "-1"], "pc needs a finite snr > 0, got snr = -1.0"),
    (["sample", "{score}", "--sampler", "ode", "--ode-method", "nope"],
     "the ode sampler has no method 'nope'; choose one of dopri5"),
    (["sample", "{score}", "--ode-method", "rk4"], "the pc sampler takes no method (only ode do)"),
    (["sample", "{score}", "--corrector-steps", "1.5"], "--corrector-steps: must be a whole number"),
    (["sample", "{score}", "--n", "20001"], "at most 10000 images, or 20000 points"),
    (["eval", "{score}", "--sampler", "ode", "--atol", "nan"], "the ode sampler needs a finite atol > 0"),
    (["eval", "{score}", "--sampler", "annealed_langevin", "--steps-per-level", "0"], "steps_per_level >= 1"),
    (["eval", "{score}", "--fid-classifier", "{score}"], "--fid-classifier: not for a score model of points"),
    (["eval", "{score}", "--likelihood", "bound"], "a score model's likelihood is the exact one"),
    (["eval", "{score}", "--points", "5001"], "the gmm test split has 5000"),
    (["eval", "{diffusion}", "--likelihood", "ode", "--bound-steps", "10"], "--bound-steps is for the variational"),
    (["eval", "{diffusion}", "--points", "100"], "--points: the samples of a score model's two-sample test"),
    (["eval", "{diffusion}", "--snr", "0.2"], "--snr: the sampler options choose how the FID samples are drawn"),
    (["generate", "a red circle", "--sampler", "ode", "--rtol", "-1", "--model", "{tmp}/none"],
     "the ode sampler needs a finite rtol > 0"),
])
def test_bad_options_are_one_line_before_any_work(score_run, diffusion_run, tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    argv = [arg.format(score=score_run, diffusion=diffusion_run, tmp=tmp_path) for arg in argv]
    argv += ["--out", f"{out}.png"] if argv[0] in ("sample", "generate") else ["--json", f"{out}.json"]
    assert expected in one_line_error(argv, capsys)
    assert list(tmp_path.iterdir()) == [], "a refused command wrote a file"


# ---------------------------------------------------------------- benchmarks/diffusion_samplers.py


def test_benchmark_steps_never_overshoot_the_budget_whatever_the_samplers_arguments():
    spec = importlib.util.spec_from_file_location("diffusion_samplers", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cases = [(sampler, bench.SAMPLER_ARGS.get(sampler, {})) for sampler in SAMPLERS]
    cases += [("pc", {"corrector_steps": 3}), ("annealed_langevin", {"steps_per_level": 2}), ("ode", {"method": "euler"})]
    for sampler, args in cases:
        for budget in (5, 10, 20, 50):
            steps = bench.steps_within(sampler, budget, **args)
            assert steps == 0 or num_evaluations(sampler, steps, **args) <= budget, (sampler, args, budget)
            assert num_evaluations(sampler, steps + 1, **args) > budget, (sampler, args, budget)
    assert bench.steps_within("annealed_langevin", 5) == 0  # one step is 5 + 1 evaluations
    assert bench.steps_within("pc", 20, corrector_steps=3) == 5
