"""Evaluation: top-1, top-5 and loss, each image counted exactly once across processes."""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

from ...data import collate_skip_bad, eval_dataset
from ...data.loader import checked_batches, eval_loader
from ...distributed import Dist, setup
from ...engine.metrics import TopKAccuracy
from ...errors import MambaOutError
from ...models.onnx import OnnxModel
from ...utils import amp_dtype as to_amp_dtype
from .predict import inference_transform, load_for_inference

log = logging.getLogger("mambaout")


@torch.no_grad()
def evaluate(model, loader, d: Dist, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False) -> dict:
    model.eval()
    params = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    dtype = params.dtype if params is not None and params.dtype in (torch.bfloat16, torch.float16) else None
    acc = TopKAccuracy()
    with checked_batches(loader) as batches:
        for images, targets, skipped in batches:
            acc.skip(skipped)
            if images is None:
                continue
            images, targets = images.to(d.device, dtype=dtype), targets.to(d.device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(d.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
            logits = logits.float()
            acc.add(logits, targets, F.cross_entropy(logits, targets, reduction="sum").item())
    return acc.result(d, "images")


def validate(checkpoint=None, model_name: Optional[str] = None, pretrained: bool = False,
             data: Optional[str] = None, split: Optional[str] = None, batch_size: int = 128, workers: int = 2,
             img_size: Optional[int] = None, crop_pct: Optional[float] = None, device: str = "auto",
             amp: Optional[str] = None, channels_last: bool = False, onnx=None, bf16: bool = False,
             dataset_name: Optional[str] = None) -> dict:
    """Evaluate a training checkpoint, a released model (--pretrained), any weights file, or an
    exported (fp32 or int8) ONNX file run by ONNX Runtime on the CPU (its preprocessing and class
    names from the file's metadata), on `split` of `data` in its layout (data/sources.py; None: the
    split training validates on, e.g. a fine-grained set's test split), or on the embedded digits."""
    if onnx is not None:
        if checkpoint or model_name or pretrained:
            raise MambaOutError("give --onnx FILE or a model (--checkpoint / --model), not both")
        if amp or channels_last or bf16:
            raise MambaOutError("--amp, --bf16 and --channels-last apply to PyTorch models, not to --onnx")
        d = setup("cpu")
        model = OnnxModel(onnx)
        info = model.meta
    else:
        d = setup(device)
        model, info = load_for_inference(checkpoint, model_name, pretrained)
    size, tf = inference_transform(model, info, img_size, crop_pct)
    if data is None:
        if dataset_name:
            raise MambaOutError(f"--dataset {dataset_name} needs --data DIR (the folder holding it)")
        if info.get("num_classes", model.num_classes) != 10:
            raise MambaOutError("without --data the embedded digits set (10 classes) is used, "
                                f"but the model has {model.num_classes} classes; pass --data DIR")
        from ...data import DigitsDataset
        split = split or "val"
        dataset = DigitsDataset(split, size, tf)
    else:
        dataset, split = eval_dataset(data, split, tf, classes=info.get("class_names"), dataset=dataset_name)
        if len(dataset.classes) != model.num_classes and not info.get("class_names"):
            if model.num_classes != 1000 or len(dataset.classes) > 1000:
                raise MambaOutError(f"{data} has {len(dataset.classes)} classes, the model "
                                    f"predicts {model.num_classes}")
    if bf16 and amp:
        raise MambaOutError("--bf16 (bf16 weights) and --amp (autocast) are two ways to run bf16: pick one")
    model.to(d.device, dtype=torch.bfloat16 if bf16 else None)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = eval_loader(dataset, d, batch_size, workers, collate_skip_bad)
    amp_dtype = to_amp_dtype(amp)
    result = evaluate(model, loader, d, amp_dtype, channels_last)
    result.update(model=info.get("model_name", getattr(model, "variant", None)), split=split,
                  img_size=size, data=data or "digits (embedded)")
    if onnx is not None:
        result.update(onnx=str(onnx), quantization=info.get("quantization"))
    result["precision"] = "bf16" if bf16 else (f"{amp}-autocast" if amp else ("onnx" if onnx else "fp32"))
    return result
