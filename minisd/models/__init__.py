"""One model per chapter, and the registry that configs and saved models are built from (``registry.py``);
``files.py`` saves and loads one model, ``model_folder.py`` a text-to-image model folder of several.
"""

from minisd.models.attribute_classifier import AttributeClassifier
from minisd.models.autoencoder import Autoencoder
from minisd.models.base import Model
from minisd.models.classifier import Classifier
from minisd.models.clip import ContrastiveTextImage
from minisd.models.diffusion import DiffusionModel
from minisd.models.hvae import HierarchicalVAE
from minisd.models.latent_autoencoder import LatentAutoencoder
from minisd.models.latent_diffusion import LatentDiffusion
from minisd.models.noisy_classifier import NoisyClassifier
from minisd.models.registry import MODELS, build_model, check_model_section, check_model_type
from minisd.models.score import ScoreModel
from minisd.models.vae import VAE

__all__ = ["MODELS", "check_model_type", "Model", "Autoencoder", "VAE", "HierarchicalVAE", "DiffusionModel", "Classifier",
           "NoisyClassifier", "LatentAutoencoder", "ContrastiveTextImage", "LatentDiffusion", "AttributeClassifier", "ScoreModel",
           "build_model", "check_model_section"]
