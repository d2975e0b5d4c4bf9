"""The registry: the model types a config or a saved model may name, and the one way a model is built.

Loading a saved model builds only the types named here: a config file can choose among them, never import
arbitrary code. A model's settings are its constructor's keyword arguments, checked against its type hints
(:func:`check_model_section`) before anything is built.
"""

from __future__ import annotations

import inspect
import typing
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
from minisd.schema import check_value

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


def constructor_settings(cls: type) -> dict[str, Any]:
    """The keyword arguments a model class takes, with their type hints: its ``__init__``'s, and where that
    passes ``**kwargs`` on, those of the class ``super().__init__`` reaches (up to :class:`Model`)."""
    settings: dict[str, Any] = {}
    for owner in cls.__mro__:
        if owner is Model:
            break
        if "__init__" not in vars(owner):
            continue
        hints = typing.get_type_hints(owner.__init__)
        parameters = list(inspect.signature(owner.__init__).parameters.values())[1:]  # without self
        settings.update({p.name: hints.get(p.name, Any) for p in parameters if p.kind is not p.VAR_KEYWORD})
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return settings


def check_model_section(model: dict[str, Any]) -> None:
    """The model section: a registered type, and only its constructor's arguments, each of the hinted type."""
    check_model_type(model.get("type"))
    accepted = constructor_settings(MODELS[model["type"]])
    settings = {k: v for k, v in model.items() if k != "type"}
    unknown = set(settings) - set(accepted)
    if unknown:
        raise ConfigError(f"unknown model settings {sorted(unknown)} for a {model['type']}; "
                          f"valid ones are {sorted(accepted)}")
    for key, value in settings.items():
        check_value(f"model.{key}", value, accepted[key])
