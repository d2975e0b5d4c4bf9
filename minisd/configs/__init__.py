"""The presets shipped with minisd: one TOML run config per model and dataset (``minisd train --config NAME``).

They live inside the package so that ``pip install`` users have them too. This module imports nothing
heavy: ``minisd --help`` lists the presets without loading torch.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

FOLDER_PRESET = "text2image_folder"  # the preset of minisd train --data FOLDER without --config


def preset_path(name: str) -> Path:
    """The TOML file of a preset shipped with minisd (``minisd/configs/NAME.toml``)."""
    return Path(str(resources.files("minisd.configs") / f"{name}.toml"))


def list_presets() -> list[str]:
    """The names of every shipped preset, sorted."""
    return sorted(p.stem for p in Path(str(resources.files("minisd.configs"))).glob("*.toml"))
