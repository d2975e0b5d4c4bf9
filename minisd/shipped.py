"""The models trained here and committed with minisd (``checkpoints/<name>``), by name; no torch imported.

:func:`minisd.pipelines.resolve_model` turns a name into its folder; this module only says where they are, so that
``--help`` texts can name the default without loading a model library.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_MODEL = "mnist"  # what minisd generate draws with when no --model is given
# The evaluation classifier shipped for a dataset: every FID-MNIST of the docs is measured on its features, so that
# the same sampler at the same budget has one FID in every chapter. AUTO_CLASSIFIER, as a classifier argument of
# minisd eval, asks for the one of the model's dataset.
SHIPPED_CLASSIFIERS = {"mnist": "classifier_mnist"}
AUTO_CLASSIFIER = "auto"


def shipped_models() -> dict[str, Path]:
    """The shipped models by name (``checkpoints/<name>``)."""
    if not SHIPPED_MODELS.is_dir():
        return {}
    return {path.name: path for path in sorted(SHIPPED_MODELS.iterdir()) if path.is_dir()}
