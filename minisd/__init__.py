"""minisd: Stable Diffusion built from first principles.

>>> import minisd
>>> vae = minisd.load("runs/vae2d")              # a trained model from a checkpoint folder
>>> images = vae.sample(16, generator=torch.Generator().manual_seed(0))
>>> pipe = minisd.load("checkpoints/mnist")     # a text-to-image model: a pipeline
>>> pipe("a handwritten digit 7", num_images_per_prompt=4).images

``import minisd`` itself is light: torch is imported by the first use of :func:`load` (so that the
command line's ``--help`` answers at once).
"""

from minisd.errors import CheckpointError, ConfigError, DataError, MinisdError, SamplingError
from minisd.version import __version__

__all__ = ["__version__", "load", "MinisdError", "DataError", "ConfigError", "CheckpointError", "SamplingError"]


_SUBPACKAGES = ("data", "diffusion", "eval", "figures", "models", "nn", "pipelines", "text", "train")


def __getattr__(name: str):
    if name == "load":
        from minisd.pipelines import load

        return load
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"minisd.{name}")
    raise AttributeError(f"module 'minisd' has no attribute {name!r}")
