"""Training models of any architecture on any task, with exact resume."""

from workbench.training.checkpoint import (
    TrainingDiverged,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from workbench.training.evaluate import EVAL_SEED, evaluate, evaluate_batch
from workbench.training.trainer import TrainConfig, TrainResult, lr_at, train

__all__ = [
    "EVAL_SEED",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "evaluate_batch",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_at",
    "train",
]
