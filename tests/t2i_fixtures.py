"""The tiny text-to-image run that tests/test_text_to_image.py and tests/test_generate_cli.py share.

``minisd train --config text2image_mnist`` on the built-in "shapes" data (32x32 RGB, made on the fly: no
files), 3 steps per part on 256 images: about 7 s on one thread, of which 3 s each go to the autoencoder and
the UNet (the text encoder takes under 1 s). The weights are nearly untrained: what the tests check is the
plumbing (shapes, counts, seeds, order, settings, refusals), never the quality of the images.

The run is made once per session: :func:`text_to_image_run` trains it into the session's base temporary
folder and every later call (from either test file) finds it there. Tests must not change it; a test that
damages files works on a copy.
"""

from pathlib import Path

import pytest

from minisd.cli import main

TINY_TEXT_TO_IMAGE = [
    "--config", "text2image_mnist", "--no-progress",
    "--set", "data.dataset=shapes", "--set", "data.num_images=256",
    "--set", "autoencoder.train.steps=3", "--set", "text_encoder.train.steps=3", "--set", "unet.train.steps=3",
    "--set", "autoencoder.train.batch_size=16", "--set", "text_encoder.train.batch_size=16",
    "--set", "unet.train.batch_size=16",
    # The UNet's cross-attention outputs start at zero (zero_init), and the preset's warm-up and EMA (0.999)
    # would keep them there for 3 steps: the prompt would move the images by 1e-5. Full steps of 1e-2 from the
    # first, kept as they are (no averaging), make the prompt, guidance and negative prompt visibly matter.
    "--set", "unet.train.warmup_steps=0", "--set", "unet.train.lr=1e-2", "--set", "unet.train.ema_decay=0",
]
RUN_NAME = "tiny-text-to-image"


def train_tiny_run(folder: Path) -> Path:
    """Train the tiny text-to-image run into ``folder`` (unless a finished one is there) and return it."""
    if not (folder / "model" / "model_index.json").is_file():
        assert main(["train", *TINY_TEXT_TO_IMAGE, "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="session")
def text_to_image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of the tiny text-to-image run (RUN/model is its model folder), trained once per session."""
    return train_tiny_run(tmp_path_factory.getbasetemp() / RUN_NAME)
