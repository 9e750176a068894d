"""Classification training with the paper's recipe (Table 2): the classification task
(task.py) on the training engine (engine/loop.py)."""
from __future__ import annotations

from typing import Optional

from ...engine import RunOptions, TrainingDiverged, TrainResult, fit
from ...engine.optim import build_optimizer, build_scheduler
from .recipe import Recipe
from .task import ClassificationTask

__all__ = ["train", "RunOptions", "TrainResult", "TrainingDiverged", "build_optimizer", "build_scheduler"]


def train(recipe: Recipe, opts: RunOptions = RunOptions(), dataset: Optional[str] = None) -> TrainResult:
    """Train (or fine-tune, or resume) a classifier; `opts.data` None = the embedded digits set;
    `dataset` names the fine-grained set `opts.data` holds (else recognised from its files)."""
    return fit(ClassificationTask(recipe, opts.data, dataset), opts)
