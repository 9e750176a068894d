"""Post-training static int8 quantization of an exported ONNX model with ONNX Runtime's tools:
QDQ format, per-channel symmetric int8 weights, activations calibrated on real images (a folder
of the user's, or the embedded digits' training split). Part of the `export` extra."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import List

import numpy as np

from ..data.datasets import IMG_EXTENSIONS
from ..errors import MambaOutError, require
from ..models.onnx import _reader_counts

log = logging.getLogger("mambaout")
# What gets int8 kernels. MatMul and Conv are nearly all of MambaOut's work; quantizing the
# elementwise ops too (GELU, the gating Mul, the residual Add) adds a quantize/dequantize pair
# around each and makes the model slower on CPU (measured: docs/performance.md).
OPS = ("MatMul", "Conv", "Gemm")
# MatMul outputs stay float: ONNX Runtime then runs each as one MatMulIntegerToFloat (int8 GEMM
# with the dequantization in its epilogue) instead of QLinearMatMul + DequantizeLinear, since
# what follows every MatMul here (bias, GELU, gating, residual) is float anyway.
FLOAT_OUTPUTS = ("MatMul",)


def calibration_images(folder, limit: int) -> List[Path]:
    """Up to `limit` image files under `folder` (recursive), spread evenly over the sorted list
    so that every class of an ImageFolder is represented."""
    root = Path(folder)
    if not root.is_dir():
        raise MambaOutError(f"calibration folder not found: {folder}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise MambaOutError(f"no images in calibration folder {folder}")
    if len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


def calibration_batches(transform, folder=None, num_images: int = 64, batch_size: int = 8) -> List[np.ndarray]:
    """Normalised (N, 3, H, W) float32 batches: images of `folder`, or the digits training split."""
    import torch
    from ..data import load_image
    tensors = []
    if folder is None:
        from ..data import DigitsDataset
        digits = DigitsDataset("train", img_size=32)
        for i in np.linspace(0, len(digits) - 1, min(num_images, len(digits))).round().astype(int):
            tensors.append(transform(digits[int(i)][0]))
    else:
        skipped = 0
        for path in calibration_images(folder, num_images):
            try:
                tensors.append(transform(load_image(path)))
            except Exception:  # noqa: BLE001 - a damaged file is skipped, like in training
                skipped += 1
        if skipped:
            log.warning("skipped %d unreadable calibration images", skipped)
        if not tensors:
            raise MambaOutError(f"no readable images in calibration folder {folder}")
    return [torch.stack(tensors[i:i + batch_size]).numpy() for i in range(0, len(tensors), batch_size)]


def unshare_biases(model) -> int:
    """Give every Conv/Gemm bias initializer that other nodes also read its own copy; returns how
    many copies were made. The exporter merges equal constants (all-zero biases and LayerNorm
    offsets, common in fresh or folded models), and the quantizer turns a bias into int32: a shared
    one then reaches every other reader through a DequantizeLinear run at every inference (in a
    freshly initialised mambaout_tiny: 79 of them, 6 % of the int8 forward)."""
    from onnx import numpy_helper
    inits = {t.name: t for t in model.graph.initializer}
    readers = _reader_counts(model)
    copies = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and readers.get(node.input[2], 0) > 1:
            old = node.input[2]
            new = f"{old}/bias_of/{node.name or copies}"
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[old]), new))
            node.input[2] = new
            readers[old] -= 1
            copies += 1
    return copies


def quantize_int8(fp32_path, output, batches: List[np.ndarray], per_channel: bool = True,
                  method: str = "minmax") -> Path:
    """Write the int8 QDQ model of the fp32 ONNX file `fp32_path` to `output` (atomically),
    its activation ranges calibrated on `batches`; the fp32 file's metadata is kept."""
    require("onnxruntime", "export", "int8 quantization")
    onnx = require("onnx", "export", "int8 quantization")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from ..utils import atomic_write
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise MambaOutError(f"unknown calibration method {method!r}: {', '.join(methods)}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"input": batch}

    meta = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        proto = onnx.load(str(pre))
        if unshare_biases(proto):
            onnx.save(proto, str(pre))

        def write(out):
            quantize_static(str(pre), out, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(OPS), calibrate_method=methods[method],
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                           "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUTS)})
            proto = onnx.load(out)
            del proto.metadata_props[:]
            meta["quantization"] = json.dumps({"format": "QDQ", "weights": "int8 per-channel" if per_channel
                                               else "int8", "activations": "uint8", "ops": list(OPS),
                                               "float_outputs": list(FLOAT_OUTPUTS),
                                               "calibration": method,
                                               "calibration_images": int(sum(len(b) for b in batches))})
            for k, v in meta.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = k, v
            onnx.save(proto, out)
        return atomic_write(output, write)
