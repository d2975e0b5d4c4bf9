"""``minisd train`` of a text-to-image model under torchrun: two processes train the weights one process trains
with the same global batch (to float rounding: DDP sums the gradients in another order), every rank takes each
stage decision rank 0 takes, and rank 0 alone writes the run folder.

Each stage draws randomness per example (the autoencoder's posterior sample, the caption templates, the diffusion
noise, times and caption dropout) and the text encoder contrasts every caption with every image of the batch:
minisd.batch_rows makes each example meet, in either process, what it meets in a one-process run.
"""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import minisd
from minisd.train.config import STAGES
from t2i_fixtures import TINY_TEXT_TO_IMAGE, text_to_image_run  # noqa: F401  (a fixture)
from test_train import minisd_command


def _files(run: Path) -> list[str]:
    return sorted(str(path.relative_to(run)) for path in run.rglob("*"))


def _metrics(stage_run: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.xdist_group("torchrun")  # one torchrun at a time (tests/test_train.py)
def test_two_processes_train_and_resume_a_text_to_image_run_with_one_writer(text_to_image_run, tmp_path):
    one, two = text_to_image_run, tmp_path / "two"  # the same command, in one process and in two
    run = minisd_command("train", *TINY_TEXT_TO_IMAGE, "--device", "cpu", "--out", str(two), processes=2)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("text-to-image model written") == 1, "rank 0 alone reports"

    # Rank 0 alone writes: the files of a one-process run (no second model folder, no leftover temporary
    # one), each log line once, one timings entry.
    assert _files(two) == _files(one)
    for stage in STAGES:
        single, double = _metrics(one / stage), _metrics(two / stage)
        assert [record["step"] for record in double] == [record["step"] for record in single]
        for key in ("loss", "grad_norm", "eval/loss"):  # the same examples met the same random numbers
            assert [r[key] for r in double if key in r] == pytest.approx([r[key] for r in single if key in r],
                                                                        rel=1e-5), f"{stage}: {key}"
        # Weights to float rounding, amplified by Adam: it divides each gradient by its own running size, so a
        # weight whose gradient is near 0 moves by up to lr (1e-2 in the UNet stage here) in a direction that
        # rounding can change. The documented tolerance: a tenth of one such step.
        one_weights, two_weights = (load_file(run / stage / "checkpoint" / "model.safetensors") for run in (one, two))
        assert one_weights.keys() == two_weights.keys()
        for key in one_weights:
            torch.testing.assert_close(two_weights[key], one_weights[key], rtol=1e-3, atol=1e-3, msg=f"{stage}: {key}")
    assert len(json.loads((two / "timings.json").read_text())) == 1
    image = minisd.load(two / "model")("a red circle", num_inference_steps=2,
                                       generator=torch.Generator().manual_seed(0)).images[0]
    assert isinstance(image, Image.Image) and image.size == (32, 32)

    # --resume: every rank agrees that the first two stages are finished, and continues the UNet.
    finished = {stage: (two / stage / "checkpoint/model.safetensors").read_bytes() for stage in STAGES[:2]}
    resumed = minisd_command("train", "--out", str(two), "--resume", "--no-progress", "--device", "cpu",
                             "--set", "unet.train.steps=4", processes=2)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("already trained, kept") == 2, "one line per finished stage, from rank 0"
    assert {stage: (two / stage / "checkpoint/model.safetensors").read_bytes() for stage in STAGES[:2]} == finished
    assert json.loads((two / "unet/checkpoint/config.json").read_text())["step"] == 4
    assert len(json.loads((two / "timings.json").read_text())) == 2

    # A refusal taken by rank 0 (the folder holds a run) reaches both processes, which stop with its message.
    again = minisd_command("train", *TINY_TEXT_TO_IMAGE, "--device", "cpu", "--out", str(two), processes=2)
    assert again.returncode != 0 and again.stderr.count("already holds a run") == 2
