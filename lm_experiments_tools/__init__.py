"""lm_experiments_tools: a Trainer for Hugging Face-style models with torchrun multi-process training.

`from lm_experiments_tools import Trainer, TrainerArgs`; see README-lm-tools.txt.
"""
from .trainer import NonFiniteLossError, NonFiniteWeightsError, Trainer
from .trainer_args import TrainerArgs

__all__ = ["Trainer", "TrainerArgs", "NonFiniteLossError", "NonFiniteWeightsError"]
