"""The models trained here and committed with minisd (``checkpoints/<name>``), by name; no torch imported.

:func:`minisd.pipelines.resolve_model` turns a name into its folder; this module only says where they are, so that
``--help`` texts can name the default without loading a model library.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_MODEL = "mnist"  # what minisd generate draws with when no --model is given


def shipped_models() -> dict[str, Path]:
    """The shipped models by name (``checkpoints/<name>``)."""
    if not SHIPPED_MODELS.is_dir():
        return {}
    return {path.name: path for path in sorted(SHIPPED_MODELS.iterdir()) if path.is_dir()}
