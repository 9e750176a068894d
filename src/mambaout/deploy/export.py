"""Export to ONNX (dynamic batch and image size) or TorchScript, with a parity check."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import MambaOutError, first_line, require
from ..models.onnx import onnx_metadata, onnx_session
from ..utils import atomic_write

log = logging.getLogger("mambaout")
PARITY_ATOL = 1e-4


def export_onnx(model: torch.nn.Module, path, img_size: int = 224, opset: int = 17,
                dynamic_size: bool = True, metadata: Optional[dict] = None) -> Path:
    """Trace `model` (eval mode) to ONNX with a dynamic batch axis, and dynamic height/width
    unless dynamic_size=False. Output name 'logits', input name 'input' (N, C, H, W).
    `metadata` (JSON-able values) is stored in the file's metadata_props, so that
    `mambaout predict --onnx` knows the preprocessing and the class names."""
    onnx = require("onnx", "export", "ONNX export")
    model = model.eval()
    x = torch.randn(2, getattr(model, "in_chans", 3), img_size, img_size)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    if dynamic_size:
        axes["input"].update({2: "height", 3: "width"})

    def write(tmp):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (x,), tmp, dynamo=False, input_names=["input"], output_names=["logits"],
                                  dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
            except (torch.onnx.errors.OnnxExporterError, RuntimeError) as e:   # an op ONNX lacks, ...
                raise MambaOutError(f"cannot export to ONNX: {first_line(e, 200)}") from None
        if metadata:
            proto = onnx.load(tmp)
            for k, v in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = k, json.dumps(v)
            onnx.save(proto, tmp)
    return atomic_write(path, write)


def export_torchscript(model: torch.nn.Module, path, img_size: int = 224) -> Path:
    """torch.jit.trace in eval mode; the traced graph accepts any batch size and image size."""
    model = model.eval()
    x = torch.randn(2, getattr(model, "in_chans", 3), img_size, img_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(traced, tmp)
    return atomic_write(path, write)


def check_parity(model: torch.nn.Module, path, fmt: str, sizes=((2, 224), (3, 160))) -> float:
    """Max abs logit difference between PyTorch and the exported file on random inputs of
    several batch sizes and resolutions (each input is checked)."""
    model = model.eval()
    worst = 0.0
    if fmt == "onnx":
        sess = onnx_session(path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sess = torch.jit.load(str(path))
    for batch, size in sizes:
        x = torch.randn(batch, getattr(model, "in_chans", 3), size, size)
        with torch.no_grad():
            ref = model(x).numpy()
            try:
                out = sess.run(None, {"input": x.numpy()})[0] if fmt == "onnx" else sess(x).numpy()
            except Exception as e:  # noqa: BLE001 - ONNX Runtime / TorchScript raise their own types
                raise MambaOutError(f"the exported {fmt} file does not run on a batch of {batch} at {size}px: "
                                    f"{first_line(e, 200)}") from None
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def export(model_name: str, fmt: str, output, checkpoint=None, pretrained: bool = False,
           img_size: Optional[int] = None, opset: int = 17, check: bool = True, quantize: Optional[str] = None,
           calibration=None, calibration_images: int = 64, calibration_method: str = "minmax") -> dict:
    """Export, check against PyTorch; with quantize="int8" (ONNX only) the checked fp32 export is
    quantized (quantize.quantize_int8) on calibration images and compared with it."""
    from ..tasks.classification.predict import load_for_inference
    from ..models import create_model, get_variant
    get_variant(model_name)  # classification models only: one line for dense-prediction or unknown names
    if fmt not in ("onnx", "torchscript"):
        raise MambaOutError(f"--format must be onnx or torchscript, got {fmt!r}")
    if quantize not in (None, "int8"):
        raise MambaOutError(f"--quantize takes int8, got {quantize!r}")
    if quantize and fmt != "onnx":
        raise MambaOutError("--quantize int8 needs --format onnx")
    if calibration_images <= 0:
        raise MambaOutError(f"--calibration-images must be positive, got {calibration_images}")
    if quantize:
        require("onnxruntime", "export", "int8 quantization")
        if calibration is not None and not Path(calibration).is_dir():
            raise MambaOutError(f"calibration folder not found: {calibration}")
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            result = export(model_name, fmt, fp32, checkpoint, pretrained, img_size, opset, check)
            return _quantized(fp32, output, result, calibration, calibration_images, calibration_method)
    if checkpoint or pretrained:
        model, info = load_for_inference(checkpoint, model_name, pretrained)
    else:
        model, info = create_model(model_name, img_size=img_size).eval(), {"img_size": None}
    size = img_size or info.get("img_size") or model.pretrained_cfg["input_size"][-1]
    cfg = model.pretrained_cfg
    reason = next((m.export_unsupported for m in model.modules() if getattr(m, "export_unsupported", None)), None)
    if reason:
        raise MambaOutError(f"{getattr(model, 'variant', model_name)} cannot be exported yet: {reason}")
    # A learned position embedding (the ViT-like study models) fixes the image size.
    fixed = getattr(model, "pos_embed", None) is not None
    dynamic_size = fmt == "onnx" and not fixed
    if fmt == "onnx":
        meta = {"model_name": getattr(model, "variant", model_name), "num_classes": model.num_classes,
                "class_names": info.get("class_names"), "img_size": size,
                "crop_pct": info.get("crop_pct", cfg["crop_pct"]),
                "crop_mode": info.get("crop_mode", cfg.get("crop_mode", "center")),
                "interpolation": info.get("interpolation", cfg["interpolation"]),
                "mean": list(cfg["mean"]), "std": list(cfg["std"])}
        export_onnx(model, output, size, opset, dynamic_size=dynamic_size, metadata=meta)
    else:
        export_torchscript(model, output, size)
    result = {"model": getattr(model, "variant", model_name), "format": fmt, "output": str(output),
              "img_size": size, "num_classes": model.num_classes, "dynamic_size": dynamic_size}
    if check:
        small = size if fixed else max(32, size * 3 // 4 // 32 * 32)
        diff = check_parity(model, output, fmt, sizes=((2, size), (3, small)))
        result["max_abs_diff"] = diff
        if diff > PARITY_ATOL:
            raise MambaOutError(f"exported {fmt} differs from PyTorch by {diff:.2e} (> {PARITY_ATOL})")
    return result


def _quantized(fp32, output, result: dict, calibration, num_images: int, method: str) -> dict:
    """int8 QDQ file from the checked fp32 export; how far its logits are from fp32's on the
    calibration images (top-1 agreement, max abs difference)."""
    from ..data import eval_transform
    from .quantize import calibration_batches, quantize_int8
    meta = onnx_metadata(fp32)
    tf = eval_transform(meta["img_size"], meta["crop_pct"], meta["interpolation"], meta["mean"], meta["std"],
                        meta.get("crop_mode", "center"))
    batches = calibration_batches(tf, calibration, num_images)
    quantize_int8(fp32, output, batches, method=method)
    a, b = onnx_session(fp32), onnx_session(output)
    agree = total = 0
    worst = 0.0
    for batch in batches:
        ref, out = a.run(None, {"input": batch})[0], b.run(None, {"input": batch})[0]
        agree += int((ref.argmax(1) == out.argmax(1)).sum())
        total += len(batch)
        worst = max(worst, float(np.abs(ref - out).max()))
    result = dict(result, output=str(output), quantize="int8", calibration=str(calibration or "digits (embedded)"),
                  calibration_images=total, int8_top1_agreement=round(agree / total, 4),
                  int8_max_abs_diff=round(worst, 4), fp32_max_abs_diff=result.pop("max_abs_diff", None))
    return result
