"""Classification training with the paper's recipe (Table 2): the classification task
(task.py) on the training engine (engine/loop.py)."""
from __future__ import annotations

from ...engine import RunOptions, TrainingDiverged, TrainResult, fit
from ...engine.optim import build_optimizer, build_scheduler
from .recipe import Recipe
from .task import ClassificationTask

__all__ = ["train", "RunOptions", "TrainResult", "TrainingDiverged", "build_optimizer", "build_scheduler"]


def train(recipe: Recipe, opts: RunOptions = RunOptions()) -> TrainResult:
    """Train (or fine-tune, or resume) a classifier; `opts.data` None = the embedded digits set."""
    return fit(ClassificationTask(recipe, opts.data), opts)
