"""Training checkpoints: written atomically, read back without unpickling arbitrary objects.

A training checkpoint is a dict of tensors, numbers, strings, lists and dicts only:
    format, model_name, num_classes, class_names, img_size, crop_pct, interpolation,
    recipe (dict), model (state dict), optimizer, scheduler, scaler, ema,
    epoch, step_in_epoch, global_step, best_top1, best_epoch, history, rng
so `mambaout validate` / `predict` need nothing but the file.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import CheckpointError, MambaOutError
from .utils import atomic_write

FORMAT = "mambaout-train-v1"


def save(obj: dict, path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


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


def read_training_checkpoint(path) -> dict:
    from .models.weights import read_checkpoint
    obj = read_checkpoint(path)
    if obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mambaout training checkpoint (no training state to resume)")
    missing = [k for k in ("model", "optimizer", "epoch", "model_name", "num_classes") if k not in obj]
    if missing:
        raise CheckpointError(f"training checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return obj


def load_task_checkpoint(path, task: str, recipe_cls, build):
    """(model in eval mode, recipe, checkpoint dict) from a training checkpoint of `task`
    ("segmentation", "detection"): the recipe is read back as recipe_cls, the model is
    build(recipe, num_classes, model_name) and its weights load strictly."""
    from .models.weights import fit_state_dict
    obj = read_training_checkpoint(path)
    if obj.get("task", "classification") != task:
        raise CheckpointError(f"{path} is a {obj.get('task', 'classification')} checkpoint, not a {task} one")
    recipe = recipe_cls.from_dict(obj.get("recipe", {}))
    model = build(recipe, int(obj["num_classes"]), obj["model_name"])
    fit_state_dict(model, dict(obj["model"]), source=f"checkpoint {path}")
    return model.eval(), recipe, obj


def load_for_inference(checkpoint=None, model_name: Optional[str] = None, pretrained: bool = False):
    """(model in eval mode, info) from a training checkpoint, a plain weights file (+ model name)
    or released weights. info holds model_name, num_classes, class_names, img_size, crop_pct."""
    from .models import create_model, get_variant
    from .models.weights import extract_state_dict, fit_state_dict, official_to_timm, read_checkpoint
    if model_name:
        get_variant(model_name)  # a classification model (one line for dense-prediction or unknown names)
    if checkpoint is not None:
        obj = read_checkpoint(checkpoint)
        if obj.get("format") == FORMAT:
            task = obj.get("task", "classification")
            if task != "classification":
                command = {"segmentation": "mambaout segment", "detection": "mambaout detect"}.get(task, "its task's command")
                raise CheckpointError(f"{checkpoint} is a {task} checkpoint: use {command} (this command takes "
                                      "classification models)")
            name = obj["model_name"]
            if model_name and get_variant(model_name).name != get_variant(name).name:
                raise MambaOutError(f"checkpoint {checkpoint} holds {name}, not {model_name}")
            recipe = obj.get("recipe", {})
            model = create_model(name, num_classes=int(obj["num_classes"]), img_size=obj.get("img_size"))
            fit_state_dict(model, dict(obj["model"]), source=f"checkpoint {checkpoint}")
            info = {"model_name": name, "num_classes": int(obj["num_classes"]),
                    "class_names": obj.get("class_names"), "img_size": obj.get("img_size"),
                    "crop_pct": recipe.get("crop_pct", 1.0),
                    "interpolation": recipe.get("interpolation", "bicubic")}
            return model.eval(), info
        if not model_name:
            raise MambaOutError(f"{checkpoint} is a plain weights file: also pass --model NAME")
        sd = official_to_timm(extract_state_dict(obj))
        fc = sd.get("head.fc.weight")
        num_classes = int(fc.shape[0]) if fc is not None else 1000
        model = create_model(model_name, num_classes=num_classes)
        fit_state_dict(model, sd, source=f"checkpoint {checkpoint}")
        return model.eval(), {"model_name": get_variant(model_name).name, "num_classes": num_classes,
                              "class_names": None}
    if model_name and pretrained:
        model = create_model(model_name, pretrained=True)
        return model.eval(), {"model_name": get_variant(model_name).name,
                              "num_classes": model.num_classes, "class_names": None}
    raise MambaOutError("give --checkpoint FILE, or --model NAME --pretrained")
