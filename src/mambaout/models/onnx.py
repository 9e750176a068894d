"""An exported ONNX file (fp32 or int8) as a model: ONNX Runtime sessions, the metadata export
stores, and OnnxModel, called like a PyTorch classifier by predict, validate, cam and the demo.
It sits with the models (below the tasks) because those commands run exported files too;
writing the files is deploy/export.py and deploy/quantize.py."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Optional

import torch

from ..errors import MambaOutError, first_line, require

log = logging.getLogger("mambaout")


def onnx_session(path, threads: Optional[int] = None):
    ort = require("onnxruntime", "export", "ONNX Runtime inference")
    if not Path(path).is_file():
        raise MambaOutError(f"ONNX file not found: {path}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3     # errors reach the user as one line (MambaOutError), not ORT's log
    if threads:
        opts.intra_op_num_threads = threads
    try:
        source = str(path)
        try:
            source = ort_int8_model(path, ort) or source
        except Exception as e:  # noqa: BLE001 - the rewrite is a speed-up only: never fail a load for it
            log.debug("int8 bias folding skipped for %s: %s", path, e)
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - corrupt or foreign files
        raise MambaOutError(f"cannot load ONNX model {path}: {first_line(e, 200)}") from None


def onnx_metadata(path) -> dict:
    sess = onnx_session(path)
    props = sess.get_modelmeta().custom_metadata_map
    out = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


class OnnxModel:
    """Calls an exported ONNX file (fp32 or int8) through ONNX Runtime like a PyTorch model."""

    def __init__(self, path):
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        self.session = onnx_session(path)
        self.meta = onnx_metadata(path)
        self.num_classes = int(self.session.get_outputs()[0].shape[-1]) if isinstance(
            self.session.get_outputs()[0].shape[-1], int) else int(self.meta.get("num_classes", 1000))
        self.pretrained_cfg = {"input_size": (3, 224, 224), "crop_pct": 1.0, "interpolation": "bicubic",
                               "mean": self.meta.get("mean", IMAGENET_DEFAULT_MEAN),
                               "std": self.meta.get("std", IMAGENET_DEFAULT_STD)}

    def __call__(self, x):
        return torch.from_numpy(self.session.run(None, {"input": x.detach().cpu().float().numpy()})[0])

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self


def _reader_counts(model) -> dict:
    """How many node inputs read each value (initializer or node output) of the graph."""
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    return readers


def fold_gemm_biases(model) -> int:
    """Move each constant bias `Add` that follows an int8 GEMM (`MatMulIntegerToFloat`, what ONNX
    Runtime makes of a QDQ MatMul with a float output) into the GEMM's own bias input, where it is
    added in the GEMM's epilogue instead of in a separate pass over the output. Returns how many
    were folded. The result equals the unfolded graph's bit for bit (the same fp32 addition)."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    readers = _reader_counts(model)
    graph_outputs = {o.name for o in model.graph.output}
    folded = []
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for value, bias in (node.input, node.input[::-1]):
            gemm = producer.get(value)
            if (gemm is not None and gemm.op_type == "MatMulIntegerToFloat" and gemm.domain == "com.microsoft"
                    and len(gemm.input) <= 6 and bias in inits and readers.get(value) == 1
                    and value not in graph_outputs and _is_row_vector(inits[bias], inits.get(gemm.input[1]))):
                gemm.input.extend([""] * (6 - len(gemm.input)) + [bias])
                gemm.output[0] = node.output[0]
                folded.append(node)
                break
    for node in folded:
        model.graph.node.remove(node)
    return len(folded)


def _is_row_vector(bias, weight) -> bool:
    """A 1-D bias as long as the GEMM's output columns (the only form the fused bias takes)."""
    return len(bias.dims) == 1 and weight is not None and len(weight.dims) == 2 and bias.dims[0] == weight.dims[1]


def ort_int8_model(path, ort) -> Optional[bytes]:
    """The int8 QDQ file at `path` as ONNX Runtime's own fused graph with the GEMM biases folded
    (fold_gemm_biases), serialised for InferenceSession; None for a file without int8 GEMMs. The
    file on disk stays standard QDQ, portable to other runtimes; this rewrite is ONNX
    Runtime-specific and done in memory when mambaout loads the file (4-7 % faster here)."""
    onnx = require("onnx", "export", "int8 inference")
    header = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type == "QuantizeLinear" for n in header.graph.node) or any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        fused = onnx.load(opts.optimized_model_filepath)
    if not fold_gemm_biases(fused):
        return None
    return fused.SerializeToString()
