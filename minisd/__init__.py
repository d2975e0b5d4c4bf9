"""minisd: Stable Diffusion built from first principles.

>>> import minisd
>>> vae = minisd.load("runs/vae2d")              # a trained model from a checkpoint folder
>>> images = vae.sample(16, generator=torch.Generator().manual_seed(0))
"""

from minisd.version import __version__

from minisd.errors import DataError, MinisdError
from minisd.train.checkpoint import load

__all__ = ["__version__", "load", "MinisdError", "DataError"]
