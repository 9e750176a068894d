"""Top-k predictions for image files, batched, with class names."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .data import eval_transform, load_image
from .errors import MambaOutError

log = logging.getLogger("mambaout")


def class_names_for(num_classes: int, class_names: Optional[Sequence[str]]) -> List[str]:
    if class_names:
        return list(class_names)
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [str(i) for i in range(num_classes)]


class _OnnxModel:
    """Calls an exported ONNX file through ONNX Runtime like a PyTorch model."""

    def __init__(self, path):
        from .export import onnx_metadata, onnx_session
        self.session = onnx_session(path)
        self.meta = onnx_metadata(path)
        self.num_classes = int(self.session.get_outputs()[0].shape[-1]) if isinstance(
            self.session.get_outputs()[0].shape[-1], int) else int(self.meta.get("num_classes", 1000))

    def __call__(self, x):
        return torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])

    def to(self, device):
        return self


@torch.no_grad()
def predict(images: Sequence[str], checkpoint=None, model_name: Optional[str] = None,
            pretrained: bool = False, top_k: int = 5, batch_size: int = 32,
            img_size: Optional[int] = None, device: str = "cpu", onnx=None) -> dict:
    """Returns {"predictions": [{"image", "topk": [{"index", "label", "prob"}]}], "errors": [...]}.
    Unreadable images are reported in "errors" and do not stop the others. With `onnx`, the
    exported file runs through ONNX Runtime (preprocessing and class names from its metadata)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from .checkpoint import load_for_inference
    if top_k <= 0:
        raise MambaOutError(f"--top-k must be positive, got {top_k}")
    if not images:
        raise MambaOutError("no images given")
    if onnx is not None:
        model = _OnnxModel(onnx)
        info = model.meta
        cfg = {"input_size": (3, 224, 224), "crop_pct": 1.0, "interpolation": "bicubic",
               "mean": info.get("mean", IMAGENET_DEFAULT_MEAN), "std": info.get("std", IMAGENET_DEFAULT_STD)}
        device = "cpu"
    else:
        model, info = load_for_inference(checkpoint, model_name, pretrained)
        cfg = model.pretrained_cfg
    size = img_size or info.get("img_size") or cfg["input_size"][-1]
    tf = eval_transform(size, info.get("crop_pct", cfg["crop_pct"]), info.get("interpolation", cfg["interpolation"]),
                        cfg["mean"], cfg["std"])
    names = class_names_for(model.num_classes, info.get("class_names"))
    k = min(top_k, model.num_classes)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    model.to(dev)
    results, errors = [], []
    for start in range(0, len(images), batch_size):
        chunk, tensors = [], []
        for path in images[start:start + batch_size]:
            try:
                if not Path(path).is_file():
                    raise FileNotFoundError("no such file")
                tensors.append(tf(load_image(path)))
                chunk.append(str(path))
            except Exception as e:  # noqa: BLE001 - any unreadable image is reported, not fatal
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                errors.append({"image": str(path), "error": msg})
        if not tensors:
            continue
        probs = model(torch.stack(tensors).to(dev)).float().softmax(dim=-1).cpu()
        p, idx = probs.topk(k, dim=-1)
        for path, pi, ii in zip(chunk, p.tolist(), idx.tolist()):
            results.append({"image": path, "topk": [{"index": i, "label": names[i], "prob": round(q, 6)}
                                                    for q, i in zip(pi, ii)]})
    return {"model": info.get("model_name"), "predictions": results, "errors": errors}
