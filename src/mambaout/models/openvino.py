"""An exported ONNX file (fp32 or int8 QDQ) compiled by OpenVINO for the CPU: the runtime most
Intel users deploy with, so `mambaout benchmark --backend openvino` puts it one flag away.

OpenVINO reads our ONNX export directly. Its CPU plugin picks its own inference precision: on
CPUs with AMX or AVX512_BF16 it runs fp32 models in bf16 unless told otherwise, so `precision`
is always stated: "fp32" pins f32, "bf16" asks for bf16, "int8" takes a QDQ file (our
`export --quantize int8`) whose quantized ops OpenVINO runs as int8 kernels (AMX-INT8 / VNNI)
and everything else at its default precision. Optional extra: `pip install 'mambaout[openvino]'`.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import MambaOutError, first_line, require

# precision -> OpenVINO's INFERENCE_PRECISION_HINT (None: the plugin's default for the machine)
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}


def openvino_compile(path, precision: str = "fp32", threads: Optional[int] = None):
    """The ONNX file at `path` compiled for OpenVINO's CPU plugin (one stream: every thread works
    on one request, as a PyTorch forward does). Returns the CompiledModel."""
    ov = require("openvino", "openvino", "the OpenVINO backend")
    if precision not in PRECISION_HINTS:
        raise MambaOutError(f"OpenVINO precision must be one of {', '.join(PRECISION_HINTS)}, got {precision!r}")
    if not Path(path).is_file():
        raise MambaOutError(f"ONNX file not found: {path}")
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(int(threads))
    if PRECISION_HINTS[precision]:
        config["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision]
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise MambaOutError("OpenVINO reports no bf16 support on this CPU (needs AVX512_BF16 or AMX)")
    try:
        with signal_stack_kept():
            return core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign files
        raise MambaOutError(f"OpenVINO cannot compile {path}: {first_line(e, 200)}") from None


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def signal_stack_kept():
    """Put the thread's alternate signal stack back as it was once the block ends (Linux).

    OpenVINO's CPU plugin (2026.4) installs an alternate signal stack of its own on the calling
    thread when it compiles a model, and each CompiledModel puts back the one it found when it is
    destroyed. Two compiled models freed in the order they were made leave the first one's freed
    stack installed; Python runs every signal handler with SA_ONSTACK, so the next handled signal
    (SIGCHLD once a DataLoader with workers has run, SIGINT, ...) crashes the process with a
    segfault. Restoring the stack right after compiling keeps ours (faulthandler's, or none)
    installed whatever order the models are freed in."""
    libc = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            old = _StackT()
            if libc.sigaltstack(None, ctypes.byref(old)) != 0:
                libc = None
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.sigaltstack(ctypes.byref(old), None)


def openvino_runner(path, precision: str = "fp32", threads: Optional[int] = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function image batch (N, 3, H, W float32 array) -> logits array, through OpenVINO."""
    compiled = openvino_compile(path, precision, threads)
    request = compiled.create_infer_request()
    output = compiled.outputs[0]

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})[output]
    return run


def inference_precision(compiled) -> str:
    """The precision OpenVINO's CPU plugin actually runs (its property after compiling)."""
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001 - older runtimes
        return "unknown"
