"""One model per chapter, and the registry that checkpoints are built from.

Loading a checkpoint builds only the types named here: a config file can choose among them,
never import arbitrary code.
"""

from __future__ import annotations

from typing import Any

from minisd.errors import ConfigError
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
from minisd.models.score import ScoreModel
from minisd.models.vae import VAE

MODELS: dict[str, type[Model]] = {cls.model_type: cls for cls in (
    Autoencoder, VAE, HierarchicalVAE, DiffusionModel, Classifier, NoisyClassifier,
    LatentAutoencoder, ContrastiveTextImage, LatentDiffusion, AttributeClassifier, ScoreModel)}


def check_model_type(model_type: Any) -> None:
    """Refuse a model type minisd does not register, naming the ones it does."""
    if model_type not in MODELS:
        raise ConfigError(f"unknown model type {model_type!r}; minisd knows {sorted(MODELS)}")


def build_model(config: dict[str, Any]) -> Model:
    """Build a model from ``{"type": name, **hyper-parameters}``; unknown names or arguments are a clear error."""
    config = dict(config)
    model_type = config.pop("type", None)
    check_model_type(model_type)
    try:
        return MODELS[model_type](**config)
    except (TypeError, ValueError, RuntimeError) as err:  # RuntimeError: torch refusing a layer size
        raise ConfigError(f"cannot build a {model_type} from {config}: {err}") from None


__all__ = ["MODELS", "check_model_type", "Model", "Autoencoder", "VAE", "HierarchicalVAE", "DiffusionModel", "Classifier",
           "NoisyClassifier", "LatentAutoencoder", "ContrastiveTextImage", "LatentDiffusion", "AttributeClassifier", "ScoreModel",
           "build_model"]
