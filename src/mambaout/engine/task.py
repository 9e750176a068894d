"""What a task supplies to the engine. The engine runs the loop (processes, AMP, accumulation,
schedules, resume, signals, checkpoints, logs) and knows nothing of images or labels; a task
(classification, segmentation, ...) knows nothing of DDP, signals or checkpoint files."""
from __future__ import annotations

from typing import Any, List, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset


class Recipe(Protocol):
    """The fields and methods of a task's recipe dataclass that the engine reads."""
    model: str
    batch_size: int                  # per process
    grad_accum_steps: int
    seed: int
    opt: str
    opt_eps: float
    opt_betas: Tuple[float, float]
    weight_decay: float
    sched: str                       # "cosine" (epochs) or "poly" (iterations): engine/optim.py
    min_lr: float
    clip_grad: Optional[float]
    model_ema: bool
    model_ema_decay: float

    def peak_lr(self, world_size: int) -> float: ...
    def global_batch(self, world_size: int) -> int: ...
    def total_updates(self, updates_per_epoch: int) -> int: ...
    def val_interval(self, updates_per_epoch: int) -> int: ...
    def to_dict(self) -> dict: ...


class Task(Protocol):
    name: str                        # "classification", "segmentation": stored in checkpoints
    command: str                     # the `mambaout` subcommand that resumes it ("train", "segment train")
    recipe: Recipe
    score_key: str                   # the validation metric that picks best.pth ("top1", "mIoU")
    metric_keys: Sequence[str]       # validation metrics plotted in curves.png
    per_epoch: bool                  # rows of metrics.csv per epoch (else per validation interval)

    def check(self) -> None:
        """Raise MambaOutError for a recipe that cannot run (one line)."""

    def build_data(self) -> Tuple[Dataset, Dataset]:
        """(train, val). Train items are produced under a per-sample seed by the engine; a bad
        item comes back as None (skipped and counted), an exception as a SampleFailure."""

    def collate(self, batch: List[Any]) -> Any:
        """(inputs, targets, n_skipped), or a SampleFailure (see data.collate_skip_bad)."""

    @property
    def num_classes(self) -> int: ...

    def build_model(self, pretrained: bool, initial_checkpoint: Optional[str]) -> nn.Module:
        """The model with released weights (`pretrained`) or an initial checkpoint's, else
        initialised; when resuming, the engine passes neither and loads the checkpoint itself."""

    # Optional: check_resume(self, ckpt: dict, path: str) -> None raises CheckpointError for a
    # checkpoint of this task and model that the task still cannot continue (the engine has
    # checked the task, the model name, the recipe and the data source).
    # Optional: start_epoch(self, epoch: int, models: List[nn.Module]) -> None is called before
    # each training epoch (also the one a resume continues) with the model and its EMA copy, for
    # settings that follow the epoch (iLLaMA's soft causal mask); derive them from `epoch`, never
    # keep them in state, so that resumed runs equal uninterrupted ones.

    def train_inputs(self, batch: Any, device: torch.device) -> Tuple[Any, Any]:
        """(inputs, targets) on the device, after batch-level augmentation (mixup)."""

    def forward_loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        """The training loss of one micro-batch: usually loss(model(inputs), targets); a
        detector takes the targets in its forward and returns its losses."""

    def evaluate(self, model: nn.Module, dist, amp_dtype, channels_last: bool, workers: int,
                 batch_size: Optional[int]) -> dict:
        """Validation metrics (percent) incl. score_key and 'loss' where there is one."""

    def describe(self, metrics: dict) -> str:
        """One log fragment, e.g. 'val loss 0.31, top-1 91.2%, top-5 99.0%'."""

    def row(self, metrics: dict) -> dict:
        """The metrics.csv columns of one validation."""

    def checkpoint_meta(self) -> dict:
        """What validate / predict need besides the weights: class names, input size, ..."""

    def data_source(self) -> dict:
        """The data the run trains on, as absolute paths (None: the embedded default), keyed by
        the training command's flags (`data`, ...): stored so that `--resume` alone finds it."""
