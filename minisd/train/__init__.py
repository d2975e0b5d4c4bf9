"""One training loop for every model: optimiser, EMA, checkpoints, exact resume, logging, torchrun."""

from minisd.train.checkpoint import save_checkpoint
from minisd.train.command import run_training
from minisd.train.config import TrainConfig, load_run_config
from minisd.train.loop import TrainingDiverged, train
from minisd.train.run import train_from_config

__all__ = ["TrainConfig", "TrainingDiverged", "load_run_config", "run_training", "save_checkpoint",
           "train", "train_from_config"]
