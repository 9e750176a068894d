"""Top-k predictions for image files, batched, with class names; `Classifier` holds a loaded model
with its preprocessing and class names for predict, cam and the demo."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ...data import eval_transform, load_image
from ...engine import checkpoint as ckpt
from ...models import create_model, get_variant, pretrained_cfg
from ...models.onnx import OnnxModel
from ...models.weights import extract_state_dict, fit_state_dict, official_to_timm, read_checkpoint
from .. import task_command
from ...errors import CheckpointError, MambaOutError
from ...utils import resolve_device

log = logging.getLogger("mambaout")


def class_names_for(num_classes: int, class_names: Optional[Sequence[str]]) -> List[str]:
    if class_names:
        return list(class_names)
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [str(i) for i in range(num_classes)]


def load_for_inference(checkpoint=None, model_name: Optional[str] = None, pretrained: bool = False):
    """(model in eval mode, info) from a training checkpoint, a plain weights file (+ model name)
    or released weights. info holds model_name, num_classes, class_names, img_size, crop_pct."""
    if model_name:
        get_variant(model_name)  # a classification model (one line for dense-prediction or unknown names)
    if checkpoint is not None:
        obj = read_checkpoint(checkpoint)
        if obj.get("format") == ckpt.FORMAT:
            task = obj.get("task", "classification")
            if task != "classification":
                raise CheckpointError(f"{checkpoint} is a {task} checkpoint: use {task_command(task)} (this "
                                      "command takes classification models)")
            name = obj["model_name"]
            if model_name and get_variant(model_name).name != get_variant(name).name:
                raise MambaOutError(f"checkpoint {checkpoint} holds {name}, not {model_name}")
            recipe = obj.get("recipe", {})
            model = create_model(name, num_classes=int(obj["num_classes"]), img_size=obj.get("img_size"))
            fit_state_dict(model, dict(obj["model"]), source=f"checkpoint {checkpoint}")
            info = {"model_name": name, "num_classes": int(obj["num_classes"]),
                    "class_names": obj.get("class_names"), "img_size": obj.get("img_size"),
                    "crop_pct": recipe.get("crop_pct", 1.0), "crop_mode": recipe.get("crop_mode", "center"),
                    "interpolation": recipe.get("interpolation", "bicubic")}
            return model.eval(), info
        if not model_name:
            raise MambaOutError(f"{checkpoint} is a plain weights file: also pass --model NAME")
        sd = official_to_timm(extract_state_dict(obj))
        fc = sd.get(pretrained_cfg(model_name)["classifier"] + ".weight")
        num_classes = int(fc.shape[0]) if fc is not None else 1000
        model = create_model(model_name, num_classes=num_classes)
        fit_state_dict(model, sd, source=f"checkpoint {checkpoint}")
        return model.eval(), {"model_name": get_variant(model_name).name, "num_classes": num_classes,
                              "class_names": None}
    if model_name and pretrained:
        model = create_model(model_name, pretrained=True)
        # a model folder / hub repo names its classes in its config.json (label_names)
        return model.eval(), {"model_name": get_variant(model_name).name,
                              "num_classes": model.num_classes,
                              "class_names": model.pretrained_cfg.get("label_names")}
    raise MambaOutError("give --checkpoint FILE, or --model NAME --pretrained")


def inference_transform(model, info: dict, img_size: Optional[int] = None, crop_pct: Optional[float] = None):
    """(size, transform): the evaluation transform a model was trained with (its checkpoint's
    recipe, else its pretrained config), at `img_size` / `crop_pct` where given."""
    cfg = model.pretrained_cfg  # MambaOut models and OnnxModel (from its metadata) both have one
    size = int(img_size or info.get("img_size") or cfg["input_size"][-1])
    tf = eval_transform(size, crop_pct if crop_pct is not None else info.get("crop_pct", cfg["crop_pct"]),
                        info.get("interpolation", cfg["interpolation"]), cfg["mean"], cfg["std"],
                        crop_mode=info.get("crop_mode", cfg.get("crop_mode", "center")))
    return size, tf


class Classifier:
    """A classifier ready for images: the model (eval mode, on its device), the evaluation
    transform of its checkpoint or pretrained config, and its class names."""

    def __init__(self, model, info: dict, img_size: Optional[int] = None, device: str = "cpu"):
        cfg = model.pretrained_cfg
        self.info = info
        self.size, self.transform = inference_transform(model, info, img_size)
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.names = class_names_for(model.num_classes, info.get("class_names"))
        self.device = resolve_device(device)
        self.model = model.to(self.device)

    @classmethod
    def load(cls, checkpoint=None, model_name: Optional[str] = None, pretrained: bool = False,
             img_size: Optional[int] = None, device: str = "cpu", onnx=None, random_ok: bool = False):
        """From a training checkpoint, a weights file (+ model name), released weights, or an
        exported ONNX file (CPU, ONNX Runtime). random_ok: a bare model name builds an untrained model."""
        if onnx is not None:
            model = OnnxModel(onnx)
            return cls(model, model.meta, img_size, "cpu")
        if checkpoint is None and model_name and not pretrained and random_ok:
            log.warning("%s with random weights (no --checkpoint or --pretrained): predictions mean nothing",
                        model_name)
            model = create_model(model_name).eval()
            return cls(model, {"model_name": get_variant(model_name).name, "num_classes": model.num_classes,
                               "class_names": None}, img_size, device)
        model, info = load_for_inference(checkpoint, model_name, pretrained)
        return cls(model, info, img_size, device)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def read(self, path, name: Optional[str] = None) -> torch.Tensor:
        """The normalised (3, H, W) input of one image file; MambaOutError names what is wrong
        (calling the file `name`, default its path)."""
        p, name = Path(path), name or str(path)
        if not p.is_file():
            raise MambaOutError(f"cannot read {name}: no such file")
        if p.stat().st_size == 0:
            raise MambaOutError(f"cannot read {name}: the file is empty")
        try:
            return self.transform(load_image(p))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for non-images and damaged files
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MambaOutError(f"cannot read {name}: not an image ({msg.replace(str(p), name)})") from None

    def view(self, x: torch.Tensor) -> np.ndarray:
        """What the model sees: a normalised (3, H, W) input back to an RGB float (H, W, 3) in [0, 1]."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()

    @torch.no_grad()
    def probs(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device)).float().softmax(dim=-1).cpu()

    def class_index(self, target) -> int:
        """A class given as an index or by its name."""
        text = str(target)
        if text.lstrip("-").isdigit() and not (text in self.names and self.names.index(text) != int(text)):
            k = int(text)
            if not 0 <= k < self.num_classes:
                raise MambaOutError(f"class {k} out of range 0..{self.num_classes - 1}")
            return k
        if text in self.names:
            return self.names.index(text)
        close = [n for n in self.names if text.lower() in n.lower()][:5]
        raise MambaOutError(f"no class '{text}'" + (f"; did you mean: {', '.join(close)}" if close else ""))


def predict(images: Sequence[str], checkpoint=None, model_name: Optional[str] = None,
            pretrained: bool = False, top_k: int = 5, batch_size: int = 32,
            img_size: Optional[int] = None, device: str = "cpu", onnx=None) -> dict:
    """Returns {"predictions": [{"image", "topk": [{"index", "label", "prob"}]}], "errors": [...]}.
    Unreadable images are reported in "errors" and do not stop the others. With `onnx`, the
    exported file runs through ONNX Runtime (preprocessing and class names from its metadata)."""
    if top_k <= 0:
        raise MambaOutError(f"--top-k must be positive, got {top_k}")
    if not images:
        raise MambaOutError("no images given")
    clf = Classifier.load(checkpoint, model_name, pretrained, img_size, device, onnx=onnx)
    k = min(top_k, clf.num_classes)
    results, errors = [], []
    for start in range(0, len(images), batch_size):
        chunk, tensors = [], []
        for path in images[start:start + batch_size]:
            try:
                tensors.append(clf.read(path))
                chunk.append(str(path))
            except MambaOutError as e:
                errors.append({"image": str(path), "error": str(e)})
        if not tensors:
            continue
        p, idx = clf.probs(torch.stack(tensors)).topk(k, dim=-1)
        for path, pi, ii in zip(chunk, p.tolist(), idx.tolist()):
            results.append({"image": path, "topk": [{"index": i, "label": clf.names[i], "prob": round(q, 6)}
                                                    for q, i in zip(pi, ii)]})
    return {"model": clf.info.get("model_name"), "predictions": results, "errors": errors}
