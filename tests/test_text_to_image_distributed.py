"""``minisd train`` of a text-to-image model under torchrun: every stage, one run folder, rank 0 alone writing.

Two processes with the global batch of one give the same weights in every stage, to the rounding of a
different summation order (the tolerance of tests/test_train.py); the rest of the run folder is the same
list of files, each written once.
"""

import json
from pathlib import Path

import torch
from PIL import Image

import minisd
from minisd.cli import main
from minisd.train.config import STAGES
from t2i_fixtures import TINY_TEXT_TO_IMAGE
from test_train import ACROSS_PROCESS_COUNTS, _weights, minisd_command

# The tiny run on 64 images: the global batch of 16 is 8 images per process.
SMALL = [*TINY_TEXT_TO_IMAGE, "--set", "data.num_images=64", "--device", "cpu", "--threads", "1"]
LONGER = ["--resume", "--no-progress", "--device", "cpu", "--threads", "1", "--set", "unet.train.steps=4"]


def _files(run: Path) -> list[str]:
    return sorted(str(path.relative_to(run)) for path in run.rglob("*"))


def _metrics(stage_run: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(double: Path, single: Path) -> None:
    single_weights, double_weights = _weights(single), _weights(double)
    assert double_weights.keys() == single_weights.keys()
    for key in single_weights:
        torch.testing.assert_close(double_weights[key], single_weights[key], **ACROSS_PROCESS_COUNTS,
                                   msg=f"{single.name} {key}")


def test_two_processes_train_and_resume_every_text_to_image_stage_as_one_process_does(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *SMALL, "--out", str(one)]) == 0
    run = minisd_command("train", *SMALL, "--out", str(two), processes=2)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("text-to-image model written") == 1, "rank 0 alone reports"

    # Rank 0 alone writes: the same files as one process (no second model folder, no leftover temporary
    # one), each log line once, one timings entry.
    assert _files(two) == _files(one)
    for stage in STAGES:
        _assert_same_weights(two / stage, one / stage)
        assert [record["step"] for record in _metrics(two / stage)] == [record["step"] for record in _metrics(one / stage)]
    assert len(json.loads((two / "timings.json").read_text())) == 1
    image = minisd.load(two / "model")("a red circle", num_inference_steps=2,
                                       generator=torch.Generator().manual_seed(0)).images[0]
    assert isinstance(image, Image.Image) and image.size == (32, 32)

    # --resume: every rank agrees that the first two stages are finished and continues the UNet.
    finished = {stage: (two / stage / "checkpoint/model.safetensors").read_bytes() for stage in STAGES[:2]}
    assert main(["train", "--out", str(one), *LONGER]) == 0
    resumed = minisd_command("train", "--out", str(two), *LONGER, processes=2)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("already trained, kept") == 2, "one line per finished stage, from rank 0"
    assert {stage: (two / stage / "checkpoint/model.safetensors").read_bytes() for stage in STAGES[:2]} == finished
    assert json.loads((two / "unet/checkpoint/config.json").read_text())["step"] == 4
    _assert_same_weights(two / "unet", one / "unet")
    assert len(json.loads((two / "timings.json").read_text())) == 2
