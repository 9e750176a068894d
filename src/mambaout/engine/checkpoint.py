"""Training checkpoints: written atomically, read back without unpickling arbitrary objects.

A training checkpoint (last.pth) is a dict of tensors, numbers, strings, lists and dicts only:
    format, task, model_name, num_classes, recipe (dict), data_source (dict), run_options
    (dict), model (state dict), optimizer, scheduler, scaler, ema, epoch, step_in_epoch,
    global_step, best_score, best_epoch, best_step, history, world_size, global_batch, rng,
    and what the task adds (Task.checkpoint_meta: class_names and img_size for
    classification, class_names / palette / data for segmentation, class_names / cat_ids
    / data / paths for detection)
so `mambaout validate` / `predict` need nothing but the file, and `--resume` alone continues
the run. best.pth is the same without the training state (TRAINING_STATE: optimizer,
scheduler, scaler, rng): about the size of the weights, for evaluation, prediction, export
and fine-tuning, not for resuming.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import CheckpointError
from ..utils import atomic_write

FORMAT = "mambaout-train-v1"
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng")   # what only resuming needs


class _Writer:
    """A file object for torch.save that keeps the operating system's error: torch reports a
    failed write (a full disk) as a RuntimeError about stream positions, without the reason."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        self.f.flush()


def _torch_save(obj, path):
    with open(path, "wb") as f:
        w = _Writer(f)
        try:
            torch.save(obj, w)
        except RuntimeError:
            if w.error is not None:
                raise w.error from None
            raise


def save(obj: dict, path) -> Path:
    """Write atomically; a failed write raises WriteError (one line: the file and the reason)
    and leaves the previous file at `path` as it was."""
    return atomic_write(path, lambda tmp: _torch_save(obj, tmp))


def inference_state(obj: dict) -> dict:
    """A training checkpoint without what only resuming needs (best.pth)."""
    return {k: v for k, v in obj.items() if k not in TRAINING_STATE}


def nbytes(obj) -> int:
    """Bytes of the tensors in a (nested) checkpoint dict: about its size on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def free_bytes(folder) -> Optional[int]:
    """Free bytes on the file system of `folder` for this user (None where it cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


def read_training_checkpoint(path, resume: bool = True) -> dict:
    """A checkpoint written by `mambaout ... train`: with `resume`, one that holds the training
    state (last.pth); otherwise best.pth will do too."""
    from ..models.weights import read_checkpoint
    obj = read_checkpoint(path)
    if obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mambaout training checkpoint (no training state to resume)")
    if resume and "optimizer" not in obj and "model" in obj:
        raise CheckpointError(f"{path} holds the weights without the training state (a best.pth): resume from "
                              f"the run's last.pth")
    needed = ("model", "optimizer", "epoch", "model_name", "num_classes") if resume else (
        "model", "model_name", "num_classes")
    missing = [k for k in needed if k not in obj]
    if missing:
        raise CheckpointError(f"training checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return obj


def load_task_checkpoint(path, task: str, recipe_cls, build):
    """(model in eval mode, recipe, checkpoint dict) from a training checkpoint of `task`
    ("segmentation", "detection"): the recipe is read back as recipe_cls, the model is
    build(recipe, num_classes, model_name) and its weights load strictly."""
    from ..models.weights import fit_state_dict
    obj = read_training_checkpoint(path, resume=False)
    if obj.get("task", "classification") != task:
        raise CheckpointError(f"{path} is a {obj.get('task', 'classification')} checkpoint, not a {task} one")
    recipe = recipe_cls.from_dict(obj.get("recipe", {}))
    model = build(recipe, int(obj["num_classes"]), obj["model_name"])
    fit_state_dict(model, dict(obj["model"]), source=f"checkpoint {path}")
    return model.eval(), recipe, obj
