"""The training engine shared by every task (see task.py for the seam, loop.py for the loop)."""
from .loop import RunOptions, TrainingDiverged, TrainResult, fit
from .optim import build_optimizer, build_scheduler
from .task import Task

__all__ = ["fit", "RunOptions", "TrainResult", "TrainingDiverged", "Task", "build_optimizer", "build_scheduler"]
