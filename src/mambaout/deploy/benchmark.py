"""Throughput benchmark: ours against timm's implementation (and ConvNeXt-T as a yardstick),
interleaved in one process so that machine noise hits every implementation alike.

For each repeat, every implementation runs `iters` timed steps in turn; the reported
step time is the median over repeats, warm-up excluded. Ratios are ours / other img/s.

Precision per row: fp32; bf16 (ours with bf16 weights, and under autocast with fp32 weights;
timm under autocast, its usual bf16 path); int8 (ours quantized to int8 QDQ ONNX and run by
ONNX Runtime; timm has no int8 path, so its row is fp32). Below fp32, ours also runs in fp32 in
the same interleaved loop, for the speed-up over fp32.
"""
from __future__ import annotations

import math
import os
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import MambaOutError

# Dense peak throughput (TFLOP/s) by device name fragment and precision, for MFU.
PEAK_TFLOPS = {
    "H100": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
    "H200": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
    "A100": {"fp32": 19.5, "bf16": 312.0, "fp16": 312.0},
    "RTX 4090": {"fp32": 82.6, "bf16": 165.2, "fp16": 165.2},
    "L4": {"fp32": 30.3, "bf16": 121.0, "fp16": 121.0},
}


@dataclass
class Settings:
    batch_size: int = 16
    img_size: int = 224
    mode: str = "infer"               # infer | train
    device: str = "cpu"
    precision: str = "fp32"           # fp32 | bf16 | fp16 | int8 (see the module doc)
    channels_last: bool = False
    compile: bool = False
    backend: str = "torch"            # torch | onnxruntime | openvino (the last two: CPU inference only)
    warmup: int = 2
    repeats: int = 5
    iters: int = 1
    threads: Optional[int] = None
    peak_tflops: Optional[float] = None


@dataclass
class Impl:
    name: str                         # "mambaout", "mambaout:fp32", "timm", "reference", "timm:convnext_tiny"
    model_name: str
    model: nn.Module
    precision: str = "fp32"           # fp32 | bf16 (bf16 weights) | bf16-autocast | fp16-autocast | int8
    ours: Optional[str] = None        # the MambaOut variant this row is compared with (default model_name)
    backend: Optional[str] = None     # None: the run's (Settings.backend); "openvino" for --compare openvino


# Table 4 of the paper (RTX 4090, fp16, PyTorch 2.3): (train, infer) img/s of each size.
PAPER_TABLE4 = {"mambaout_tiny": (1055, 3370), "mambaout_small": (665, 2150), "mambaout_base": (441, 1375),
                "vmamba_tiny": (194, 582), "vmamba_small": (117, 326), "vmamba_base": (88, 240)}
# `--compare FAMILY`: the comparator each MambaOut model is measured against, as the paper's tables
# pair them (main table and Table 4: VMamba-T/S/B, LocalVMamba-T/S with Tiny/Small,
# EfficientVMamba-S with Femto; Table 5: Vim-S with the isotropic MambaOut-S). iLLaMA-T is not
# paired with a MambaOut in the paper; Femto is the closest in size (7.3M / 1.2G vs 5.7M / 1.3G).
COMPARE_PAIRS = {
    "vmamba": {"mambaout_tiny": "vmamba_tiny", "mambaout_small": "vmamba_small", "mambaout_base": "vmamba_base"},
    "local_vmamba": {"mambaout_tiny": "local_vmamba_tiny", "mambaout_small": "local_vmamba_small"},
    "efficient_vmamba": {"mambaout_femto": "efficient_vmamba_small"},
    "vim": {"mambaout_s_iso": "vim_small"},
    "illama": {"mambaout_femto": "illama_tiny"},
}
VMAMBA_PAIR = COMPARE_PAIRS["vmamba"]
COMPARE_CHOICES = ("timm", "reference", "openvino") + tuple(COMPARE_PAIRS)
RUNTIMES = ("onnxruntime", "openvino")


def _amp_dtype(precision):
    return {"bf16-autocast": torch.bfloat16, "fp16-autocast": torch.float16}.get(precision)


def row_precisions(s: Settings) -> Dict[str, str]:
    """The precision each implementation runs at for the requested one."""
    if s.precision == "fp32":
        return {"ours": "fp32", "others": "fp32"}
    if s.precision == "int8":
        return {"ours": "int8", "others": "fp32"}
    auto = f"{s.precision}-autocast"
    if s.backend == "openvino":  # OpenVINO's bf16 inference precision for every row
        return {"ours": s.precision, "others": s.precision}
    weights = s.precision == "bf16" and s.mode == "infer" and s.device == "cpu" and s.backend == "torch"
    return {"ours": "bf16" if weights else auto, "others": auto}


def build_impls(model_name: str, compare: List[str], s: Settings, yardstick: bool) -> List[Impl]:
    from ..models import create_model, get_variant
    name = get_variant(model_name).name
    ours = create_model(name, img_size=s.img_size)
    prec = row_precisions(s)
    impls = [Impl("mambaout", name, ours, prec["ours"])]
    if s.precision != "fp32":  # ours in fp32 (and, for bf16 weights, under autocast) in the same loop
        autocast = prec["ours"] == "bf16" and s.backend == "torch"
        twins = [("mambaout:fp32", "fp32")] + ([("mambaout:autocast", "bf16-autocast")] if autocast else [])
        for label, precision in twins:
            twin = create_model(name, img_size=s.img_size)
            twin.load_state_dict(ours.state_dict())
            impls.append(Impl(label, name, twin, precision))
    for c in compare:
        if c == "timm":
            import timm
            if not timm.is_model(name):
                raise MambaOutError(f"timm has no {name}; --compare timm works for the MambaOut "
                                    f"variants timm ships (see `timm.list_models('mambaout*')`)")
            ref = timm.create_model(name)
            ref.load_state_dict(ours.state_dict())
            impls.append(Impl("timm", name, ref, prec["others"]))
            if yardstick:
                impls.append(Impl("timm:convnext_tiny", "convnext_tiny", timm.create_model("convnext_tiny"),
                                  prec["others"]))
        elif c == "openvino":  # ours compiled by OpenVINO at the run's precision, beside ours in torch
            if s.backend != "torch" or s.mode != "infer" or s.device != "cpu":
                raise MambaOutError("--compare openvino adds ours through OpenVINO to a torch run of CPU "
                                    "inference; for OpenVINO alone use --backend openvino")
            twin = create_model(name, img_size=s.img_size)
            twin.load_state_dict(ours.state_dict())
            impls.append(Impl("openvino", name, twin, "bf16" if s.precision == "bf16" else "fp32", backend="openvino"))
        elif c == "reference":
            ref = create_model(name, img_size=s.img_size)
            ref.load_state_dict(ours.state_dict())
            for m in ref.modules():
                if hasattr(m, "fast"):
                    m.fast = False
            impls.append(Impl("reference", name, ref, prec["others"]))
        elif c in COMPARE_PAIRS:
            pair = COMPARE_PAIRS[c].get(name)
            if pair is None:
                pairs = ", ".join(f"{k} with {v}" for k, v in COMPARE_PAIRS[c].items())
                raise MambaOutError(f"--compare {c} pairs {pairs}, not {name}")
            impls.append(Impl(c, pair, create_model(pair, img_size=s.img_size), prec["others"], ours=name))
        else:
            raise MambaOutError(f"--compare takes {', '.join(COMPARE_CHOICES)}, got {c!r}")
    return impls


def _step_fn(impl: Impl, s: Settings, device: torch.device, tmpdir: Path) -> Callable[[], None]:
    model = impl.model.to(device)
    x = torch.randn(s.batch_size, 3, s.img_size, s.img_size, device=device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp = _amp_dtype(impl.precision)
    backend = impl.backend or s.backend
    if backend in RUNTIMES:
        if s.mode != "infer" or device.type != "cpu":
            raise MambaOutError(f"the {backend} backend measures CPU inference only")
        path = _exported(impl, model, s, tmpdir)
        threads = s.threads or torch.get_num_threads()
        batch = x.cpu().numpy()
        if backend == "openvino":
            from ..models.openvino import openvino_runner
            run_ov = openvino_runner(path, impl.precision, threads)
            return lambda: run_ov(batch)
        from ..models.onnx import onnx_session
        sess = onnx_session(path, threads)
        feed = {"input": batch}
        return lambda: sess.run(None, feed)
    if impl.precision == "bf16":
        model = model.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    run = torch.compile(model) if s.compile else model
    if s.mode == "infer":
        model.eval()

        def infer():
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                run(x)
        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randint(0, 1000, (s.batch_size,), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = nn.functional.cross_entropy(run(x).float(), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return train_step


def _exported(impl: Impl, model: nn.Module, s: Settings, tmpdir: Path) -> Path:
    """The row's model exported to ONNX (and, for int8, quantized to QDQ) for a runtime backend."""
    from .export import export_onnx
    path = tmpdir / f"{impl.name.replace(':', '_')}.onnx"
    export_onnx(model.eval(), path, s.img_size)
    if impl.precision != "int8":
        return path
    from .quantize import quantize_int8
    # calibrated on random inputs: the speed of int8 kernels does not depend on the ranges
    calib = [torch.randn(4, 3, s.img_size, s.img_size, generator=torch.Generator().manual_seed(i)).numpy()
             for i in range(2)]
    return quantize_int8(path, tmpdir / f"{impl.name.replace(':', '_')}.int8.onnx", calib)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(models: List[str], compare: List[str], s: Settings) -> List[Dict]:
    """Benchmark every model (and its comparisons) under settings `s`; one record each."""
    if s.batch_size <= 0 or s.img_size <= 0 or s.repeats <= 0 or s.iters <= 0 or s.warmup < 0:
        raise MambaOutError("batch size, image size, repeats and iters must be positive")
    if s.mode not in ("infer", "train"):
        raise MambaOutError(f"mode must be infer or train, got {s.mode!r}")
    if s.precision not in ("fp32", "bf16", "fp16", "int8"):
        raise MambaOutError(f"precision must be fp32, bf16, fp16 or int8, got {s.precision!r}")
    if s.backend not in ("torch",) + RUNTIMES:
        raise MambaOutError(f"backend must be torch, {' or '.join(RUNTIMES)}, got {s.backend!r}")
    if s.precision == "int8" and s.backend not in RUNTIMES:
        raise MambaOutError("int8 runs through a runtime's quantized kernels: add --backend onnxruntime "
                            "or --backend openvino")
    if s.backend == "onnxruntime" and s.precision in ("bf16", "fp16"):
        raise MambaOutError("the onnxruntime backend measures fp32 and int8")
    if s.backend == "openvino" and s.precision == "fp16":
        raise MambaOutError("the openvino backend measures fp32, bf16 and int8")
    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MambaOutError("--device cuda requested but no CUDA device is available")
    if s.threads:
        torch.set_num_threads(s.threads)
    from ..analysis.complexity import count_macs
    from ..models.ssm import has_selective_scan, scan_backend
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        impls = []
        for i, name in enumerate(models):
            impls += build_impls(name, compare, s, yardstick=i == 0)
        steps = {id(im): _step_fn(im, s, device, Path(tmp)) for im in impls}
        times: Dict[int, List[float]] = {id(im): [] for im in impls}
        peak_mem = {}
        for im in impls:                                   # warm-up (compilation, caches)
            for _ in range(s.warmup):
                steps[id(im)]()
            _sync(device)
        for _ in range(s.repeats):                         # interleaved timed repeats
            for im in impls:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(s.iters):
                    steps[id(im)]()
                _sync(device)
                times[id(im)].append((time.perf_counter() - t0) / s.iters)
                if device.type == "cuda":
                    peak_mem[id(im)] = max(peak_mem.get(id(im), 0), torch.cuda.max_memory_allocated())
        gemm_peaks, bounds = {}, {}
        for im in impls:
            step = statistics.median(times[id(im)])
            ips = s.batch_size / step
            macs = count_macs(im.model.float(), s.img_size)
            flops = 2 * macs * (3 if s.mode == "train" else 1) * ips
            dtype = "bf16" if im.precision.startswith("bf16") else (
                "fp16" if im.precision.startswith("fp16") else im.precision)
            peak_tflops = s.peak_tflops or _peak_tflops(device, dtype)
            if peak_tflops is None and device.type == "cpu" and dtype in ("fp32", "bf16"):
                if dtype not in gemm_peaks:
                    gemm_peaks[dtype] = gemm_peak_gflops(dtype)
                peak_tflops = gemm_peaks[dtype] / 1000
            bound_ms = convs_ms = None
            if device.type == "cpu" and s.mode == "infer" and dtype in ("fp32", "bf16"):
                if (im.model_name, dtype) not in bounds:
                    bounds[(im.model_name, dtype)] = (
                        gemm_only_ms(model_gemms(im.model, s.img_size, s.batch_size), dtype),
                        conv_only_ms(model_dense_convs(im.model, s.img_size, s.batch_size), dtype))
                bound_ms, convs_ms = bounds[(im.model_name, dtype)]
            rec = dict(model=im.model_name, impl=im.name, ours=im.ours or im.model_name, **{k: v for k, v in asdict(s).items()
                                                              if k not in ("warmup", "peak_tflops", "threads", "backend")},
                       row_precision=im.precision, backend=im.backend or s.backend,
                       img_per_s=round(ips, 2), step_ms=round(1000 * step, 2),
                       step_ms_min=round(1000 * min(times[id(im)]), 2),
                       step_ms_max=round(1000 * max(times[id(im)]), 2),
                       gmacs_per_img=round(macs / 1e9, 3),
                       mfu=round(flops / (peak_tflops * 1e12), 4) if peak_tflops else None,
                       gemm_only_ms=round(bound_ms, 2) if bound_ms else None,
                       gemm_only_img_per_s=round(s.batch_size / bound_ms * 1000, 2) if bound_ms else None,
                       share_of_gemm_only=round(bound_ms / (1000 * step), 4) if bound_ms else None,
                       dense_convs_ms=round(convs_ms, 2) if bound_ms else None,
                       share_of_dense_only=round((bound_ms + convs_ms) / (1000 * step), 4) if bound_ms else None,
                       peak_gflops=round(1000 * peak_tflops, 1) if peak_tflops else None,
                       peak_source=("given" if s.peak_tflops else "datasheet" if device.type == "cuda"
                                    else "measured GEMM") if peak_tflops else None,
                       peak_mem_mb=round(peak_mem[id(im)] / 2**20, 1) if id(im) in peak_mem else None,
                       scan=scan_backend(device) if has_selective_scan(im.model) else None,
                       device_name=_device_name(device), torch=torch.__version__,
                       allocator=allocator() if device.type == "cpu" else None,
                       threads=torch.get_num_threads() if device.type == "cpu" else None)
            records.append(rec)
    _add_ratios(records)
    if device.type == "cpu":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for r in records:
            r["process_peak_rss_mb"] = round(rss, 1)
    return records


def _add_ratios(records):
    """`ratio` on each other record: ours img/s / its img/s, same mode (and same variant, or the
    first variant for the ConvNeXt-T yardstick). Ours also gets ratio_vs_timm, _vs_reference,
    _vs_convnext_tiny."""
    ours = {(r["model"], r["mode"]): r for r in records if r["impl"] == "mambaout"}
    first = {}
    for r in records:
        if r["impl"] == "mambaout":
            first.setdefault(r["mode"], r)
    for r in records:
        r["ratio"] = None
        if r["impl"] == "mambaout":
            continue
        o = first.get(r["mode"]) if r["impl"] == "timm:convnext_tiny" else ours.get((r["ours"], r["mode"]))
        if o is None:
            continue
        r["ratio"] = round(o["img_per_s"] / r["img_per_s"], 3)
        key = {"timm": "ratio_vs_timm", "reference": "ratio_vs_reference", "mambaout:fp32": "ratio_vs_fp32",
               "mambaout:autocast": "ratio_vs_autocast", "timm:convnext_tiny": "ratio_vs_convnext_tiny",
               "openvino": "ratio_vs_openvino",
               **{c: f"ratio_vs_{c}" for c in COMPARE_PAIRS}}[r["impl"]]
        o[key] = r["ratio"]


def cpu_isa() -> Dict[str, bool]:
    """Which of the instruction sets that matter for fp32 / bf16 / int8 this CPU has (Linux
    /proc/cpuinfo flags), and PyTorch's own dispatch level."""
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"AVX2": "avx2" in flags, "AVX-512": "avx512f" in flags, "AVX512_BF16": "avx512_bf16" in flags,
            "AVX512_VNNI": "avx512_vnni" in flags or "avx_vnni" in flags,
            "AMX": bool({"amx_bf16", "amx_int8", "amx_tile"} & flags),
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


# glibc malloc settings that keep freed activation buffers mapped (what jemalloc and tcmalloc do
# by default). Eager CPU forwards allocate large fresh buffers every call and pay page faults on
# them; timm's forward pays more than ours (docs/performance.md, "The allocator").
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def allocator() -> str:
    """Which memory allocator this process runs with, as far as the environment tells."""
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return f"{name} (LD_PRELOAD)"
    settings = [f"{k}={os.environ[k]}" for k in MALLOC_ENV if k in os.environ]
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t.startswith("glibc.malloc.")]
    if settings or tunables:
        return "glibc malloc, " + " ".join(settings + tunables)
    from ..models.fast import malloc_thresholds_raised
    if malloc_thresholds_raised():
        return "glibc malloc, thresholds raised by mambaout's first CPU forward (one 32 MiB buffer freed)"
    return "glibc malloc, default thresholds"


def allocator_line() -> str:
    line = f"Allocator: {allocator()}"
    if line.endswith("default thresholds"):
        line += " (fresh large buffers cost page faults; see docs/performance.md, 'The allocator')"
    return line


def isa_line(isa: Dict[str, bool]) -> str:
    names = [k for k in ("AVX2", "AVX-512", "AVX512_BF16", "AVX512_VNNI", "AMX")]
    have = ", ".join(f"{k} {'yes' if isa[k] else 'no'}" for k in names)
    line = f"CPU ISA: {have} (PyTorch dispatch: {isa['torch_capability']})"
    if not (isa["AVX512_BF16"] or isa["AMX"]):
        line += "; no native bf16 here: bf16 is emulated and may be slower than fp32"
    return line


# (M, K, N) products for the CPU GEMM peak: a large square-ish one, and the shapes of
# mambaout_tiny's stage-2/3 GEMMs at batch 16 (small K; oneDNN runs these fastest here).
PEAK_SHAPES = ((4096, 2048, 2048), (3136, 384, 640), (3136, 640, 384), (12544, 192, 320))


def gemm_peak_gflops(dtype: str = "fp32", repeats: int = 5, shapes=PEAK_SHAPES) -> float:
    """The CPU's practical GEMM peak here: the best GFLOP/s over `shapes`, each through
    torch.matmul and through oneDNN's linear with its weight prepacked (as our inference plan
    runs it; on AMD CPUs MKL's fp32 GEMM reaches about half of oneDNN's), whichever is faster."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    onednn = torch.backends.mkldnn.is_available() and (
        dt == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    best = 0.0
    with torch.inference_mode():
        for m, k, n in shapes:
            a, w = torch.randn(m, k, dtype=dt), torch.randn(n, k, dtype=dt)
            candidates = [lambda: a @ w.t()]
            if onednn:
                packed = torch.ops.mkldnn._reorder_linear_weight(w)
                candidates.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
            for product in candidates:
                product()
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    product()
                    best = max(best, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def _input_shapes(model: nn.Module, img_size: int, modules: List[nn.Module]) -> List[Tuple[nn.Module, Tuple[int, ...]]]:
    """(module, its input's shape) for each call of `modules` in one forward of one image."""
    seen: List[Tuple[nn.Module, Tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, tuple(args[0].shape))))
             for m in modules]
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    """fn's median wall time (s) over `repeats` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_gemms(model: nn.Module, img_size: int, batch_size: int) -> Dict[Tuple[int, int, int], int]:
    """{(M, K, N): count} of the GEMMs one forward of `model` runs at `batch_size`, as our inference
    plan runs them: each Gated CNN block's fc1 as its row blocks (gate, identity, conv) and fc2 as its
    two column blocks (fast.py), plus every other nn.Linear (the head). Convolutions (stem, the
    depthwise convs, downsampling) are not GEMMs here. Shapes come from one forward at batch 1."""
    blocks = {id(m) for m in model.modules() if hasattr(m, "split_indices")}
    inside = {id(lin) for m in model.modules() if id(m) in blocks for lin in m.modules() if isinstance(lin, nn.Linear)}
    seen = _input_shapes(model, img_size, [m for m in model.modules()
                                           if id(m) in blocks or (isinstance(m, nn.Linear) and id(m) not in inside)])
    gemms: Dict[Tuple[int, int, int], int] = {}

    def add(m, k, n):
        if m and k and n:
            gemms[(m, k, n)] = gemms.get((m, k, n), 0) + 1
    for mod, shape in seen:
        rows = batch_size * math.prod(shape[1:-1])     # the probe ran one image
        if isinstance(mod, nn.Linear):
            add(rows, mod.in_features, mod.out_features)
            continue
        hidden, ident, cc = mod.split_indices
        c = shape[-1]
        for k, n in ((c, ident), (c, ident), (c, cc), (c, cc), (ident, c), (cc, c)):
            add(rows, k, n)                      # gate and identity, gate and conv; fc2's two halves
    return gemms


def gemm_only_ms(gemms: Dict[Tuple[int, int, int], int], dtype: str = "fp32", repeats: int = 5) -> float:
    """The time (ms) these GEMMs alone take here: per shape, the faster of oneDNN's linear with its
    weight prepacked (as our plan runs it) and torch.mm into a preallocated output (no allocation,
    no page faults), median of `repeats`; times its count, summed. A forward of the model cannot be
    faster than this unless it does fewer FLOPs: the benchmark reports each row's share of it."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    onednn = torch.backends.mkldnn.is_available() and (
        dt == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    total = 0.0
    with torch.inference_mode():
        for (m, k, n), count in gemms.items():
            a, w = torch.randn(m, k, dtype=dt), torch.randn(n, k, dtype=dt)
            out = torch.empty(m, n, dtype=dt)
            candidates = [lambda: torch.mm(a, w.t(), out=out)]
            if onednn:
                packed = torch.ops.mkldnn._reorder_linear_weight(w)
                candidates.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
            total += count * min(_median_s(product, repeats) for product in candidates)
    return 1000 * total


def model_dense_convs(model: nn.Module, img_size: int, batch_size: int) -> Dict[tuple, int]:
    """{(batch, C_in, H, W, C_out, kernel, stride, padding): count} of the dense (groups = 1)
    convolutions one forward runs: the stem and the downsampling layers, which are GEMMs in all but
    name and carry FLOPs a GEMM-only bound leaves out. Depthwise convolutions are not counted."""
    seen = _input_shapes(model, img_size, [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1])
    convs: Dict[tuple, int] = {}
    for mod, (_, c, h, w) in seen:
        key = (batch_size, c, h, w, mod.out_channels, mod.kernel_size, mod.stride, mod.padding)
        convs[key] = convs.get(key, 0) + 1
    return convs


def conv_only_ms(convs: Dict[tuple, int], dtype: str = "fp32", repeats: int = 5) -> float:
    """The time (ms) these convolutions alone take here (channels-last, PyTorch's CPU kernels),
    median of `repeats`, times each one's count, summed."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    total = 0.0
    with torch.inference_mode():
        for (b, c, h, w, out, kernel, stride, padding), count in convs.items():
            x = torch.randn(b, c, h, w, dtype=dt).contiguous(memory_format=torch.channels_last)
            weight = torch.randn(out, c, *kernel, dtype=dt).contiguous(memory_format=torch.channels_last)
            bias = torch.randn(out, dtype=dt)
            total += count * _median_s(lambda: nn.functional.conv2d(x, weight, bias, stride, padding), repeats)
    return 1000 * total


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return name


def _peak_tflops(device, precision):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for frag, peaks in PEAK_TFLOPS.items():
        if frag in name:
            return peaks[precision]
    return None


def format_table(records: List[Dict]) -> str:
    """MFU: share of the device's peak; on a CPU, of the GEMM peak measured here for that dtype.
    of GEMM-only: the model's GEMMs alone at their own shapes (gemm_only_ms) / the row's step time."""
    head = (f"{'model':<22}{'impl':<20}{'precision':<15}{'mode':<7}{'img/s':>9}{'step ms':>10}{'ours/this':>11}"
            f"{'MFU':>7}{'of GEMM-only':>14}")
    lines = [head, "-" * len(head)]
    for r in records:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        share = "-" if not r.get("share_of_gemm_only") else f"{100 * r['share_of_gemm_only']:.1f}%"
        precision = r.get("row_precision", r["precision"])
        if r.get("backend") not in (None, "torch"):
            precision = f"{precision} {r['backend'].replace('onnxruntime', 'ort')}"
        lines.append(f"{r['model']:<22}{r['impl']:<20}{precision:<15}{r['mode']:<7}"
                     f"{r['img_per_s']:>9.1f}{r['step_ms']:>10.1f}{ratio:>11}{mfu:>7}{share:>14}")
    return "\n".join(lines)


def write_csv(records: List[Dict], path):
    """The records as CSV, one column per key any record has (sorted)."""
    from ..utils import write_csv as write_rows
    write_rows(records, path, sorted({k for r in records for k in r}))


def plot(records: List[Dict], path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..utils import atomic_write
    labels = [f"{r['impl']}\n{r['model']}\n{r['mode']}" for r in records]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(records)), 4))
    colors = ["tab:green" if r["impl"] == "mambaout" else "tab:gray" for r in records]
    ax.bar(range(len(records)), [r["img_per_s"] for r in records], color=colors)
    ax.set_xticks(range(len(records)), labels, fontsize=8)
    r0 = records[0]
    ax.set_ylabel("images / s")
    ax.set_title(f"{r0['device_name']}: batch {r0['batch_size']}, {r0['img_size']}px, {r0['precision']}"
                 + (", compiled" if r0["compile"] else "") + (f", {r0['backend']}" if r0["backend"] != "torch" else ""),
                 fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def format_table4(records: List[Dict]) -> str:
    """The paper's Table 4 layout, for every comparator family benchmarked: each MambaOut model
    beside the model it is compared with, train and infer img/s measured here (interleaved in one
    process) and the paper's where Table 4 has them, MACs, and MambaOut's speed-up here and in
    the paper (RTX 4090, fp16)."""
    families = [c for c in COMPARE_PAIRS if any(r["impl"] == c for r in records)]
    got = {(r["model"], r["mode"]): r for r in records if r["impl"] in ["mambaout"] + families}
    head = (f"{'model':<24}{'MACs(G)':>8}{'train img/s':>13}{'infer img/s':>13}{'paper train':>13}"
            f"{'paper infer':>13}")
    lines = [head, "-" * len(head)]
    for family in families:
        for ours, theirs in COMPARE_PAIRS[family].items():
            if not any((theirs, m) in got for m in ("infer", "train")):
                continue
            speed = []
            for name in (theirs, ours):
                rows = {m: got.get((name, m)) for m in ("train", "infer")}
                macs = next((r["gmacs_per_img"] for r in rows.values() if r), 0.0)
                cells = "".join((f"{r['img_per_s']:>13.2f}" if r["img_per_s"] < 10 else f"{r['img_per_s']:>13.1f}")
                                if r else f"{'-':>13}" for r in rows.values())
                paper = PAPER_TABLE4.get(name, ("-", "-"))
                lines.append(f"{name:<24}{macs:>8.2f}{cells}{paper[0]:>13}{paper[1]:>13}")
            for m, i in (("train", 0), ("infer", 1)):
                a, b = got.get((ours, m)), got.get((theirs, m))
                if a and b:
                    in_paper = (f", {PAPER_TABLE4[ours][i] / PAPER_TABLE4[theirs][i]:.1f}x in the paper"
                                if ours in PAPER_TABLE4 and theirs in PAPER_TABLE4 else "")
                    speed.append(f"{m} {a['img_per_s'] / b['img_per_s']:.1f}x here{in_paper}")
            lines.append(f"{'':<24}MambaOut / {theirs}: " + "; ".join(speed))
    scans = sorted({r["scan"] for r in got.values() if r.get("scan")})
    if scans:
        lines.append(f"selective scan: {', '.join(scans)}")
    return "\n".join(lines)
