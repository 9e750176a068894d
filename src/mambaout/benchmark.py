"""Throughput benchmark: ours against timm's implementation (and ConvNeXt-T as a yardstick),
interleaved in one process so that machine noise hits every implementation alike.

For each repeat, every implementation runs `iters` timed steps in turn; the reported
step time is the median over repeats, warm-up excluded. Ratios are ours / other img/s.
"""
from __future__ import annotations

import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from .errors import MambaOutError

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
    precision: str = "fp32"           # fp32 | bf16 | fp16 (autocast)
    channels_last: bool = False
    compile: bool = False
    backend: str = "torch"            # torch | onnxruntime (inference only)
    warmup: int = 2
    repeats: int = 5
    iters: int = 1
    threads: Optional[int] = None
    peak_tflops: Optional[float] = None


@dataclass
class Impl:
    name: str                         # "mambaout", "timm", "reference", "timm:convnext_tiny"
    model_name: str
    model: nn.Module


def _amp_dtype(precision):
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_impls(model_name: str, compare: List[str], s: Settings, yardstick: bool) -> List[Impl]:
    from .models import create_model, get_variant
    name = get_variant(model_name).name
    ours = create_model(name, img_size=s.img_size)
    impls = [Impl("mambaout", name, ours)]
    for c in compare:
        if c == "timm":
            import timm
            if not timm.is_model(name):
                raise MambaOutError(f"timm has no {name}; --compare timm works for the MambaOut "
                                    f"variants timm ships (see `timm.list_models('mambaout*')`)")
            ref = timm.create_model(name)
            ref.load_state_dict(ours.state_dict())
            impls.append(Impl("timm", name, ref))
            if yardstick:
                impls.append(Impl("timm:convnext_tiny", "convnext_tiny", timm.create_model("convnext_tiny")))
        elif c == "reference":
            ref = create_model(name, img_size=s.img_size)
            ref.load_state_dict(ours.state_dict())
            for m in ref.modules():
                if hasattr(m, "fast"):
                    m.fast = False
            impls.append(Impl("reference", name, ref))
        else:
            raise MambaOutError(f"--compare takes timm or reference, got {c!r}")
    return impls


def _step_fn(impl: Impl, s: Settings, device: torch.device, tmpdir: Path) -> Callable[[], None]:
    model = impl.model.to(device)
    x = torch.randn(s.batch_size, 3, s.img_size, s.img_size, device=device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp = _amp_dtype(s.precision)
    if s.backend == "onnxruntime":
        if s.mode != "infer" or device.type != "cpu":
            raise MambaOutError("the onnxruntime backend measures CPU inference only")
        from .export import export_onnx, onnx_session
        path = tmpdir / f"{impl.name.replace(':', '_')}.onnx"
        export_onnx(model.eval(), path, s.img_size)
        sess = onnx_session(path, s.threads or torch.get_num_threads())
        feed = {"input": x.cpu().numpy()}
        return lambda: sess.run(None, feed)
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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(models: List[str], compare: List[str], s: Settings) -> List[Dict]:
    """Benchmark every model (and its comparisons) under settings `s`; one record each."""
    if s.batch_size <= 0 or s.img_size <= 0 or s.repeats <= 0 or s.iters <= 0 or s.warmup < 0:
        raise MambaOutError("batch size, image size, repeats and iters must be positive")
    if s.mode not in ("infer", "train"):
        raise MambaOutError(f"mode must be infer or train, got {s.mode!r}")
    if s.precision not in ("fp32", "bf16", "fp16"):
        raise MambaOutError(f"precision must be fp32, bf16 or fp16, got {s.precision!r}")
    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MambaOutError("--device cuda requested but no CUDA device is available")
    if s.threads:
        torch.set_num_threads(s.threads)
    from .complexity import count_macs
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
        peak_tflops = s.peak_tflops or _peak_tflops(device, s.precision)
        for im in impls:
            step = statistics.median(times[id(im)])
            ips = s.batch_size / step
            macs = count_macs(im.model, s.img_size)
            flops = 2 * macs * (3 if s.mode == "train" else 1) * ips
            rec = dict(model=im.model_name, impl=im.name, **{k: v for k, v in asdict(s).items()
                                                              if k not in ("warmup", "peak_tflops", "threads")},
                       img_per_s=round(ips, 2), step_ms=round(1000 * step, 2),
                       step_ms_min=round(1000 * min(times[id(im)]), 2),
                       step_ms_max=round(1000 * max(times[id(im)]), 2),
                       gmacs_per_img=round(macs / 1e9, 3),
                       mfu=round(flops / (peak_tflops * 1e12), 4) if peak_tflops else None,
                       peak_mem_mb=round(peak_mem[id(im)] / 2**20, 1) if id(im) in peak_mem else None,
                       device_name=_device_name(device), torch=torch.__version__,
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
        o = first.get(r["mode"]) if r["impl"] == "timm:convnext_tiny" else ours.get((r["model"], r["mode"]))
        if o is None:
            continue
        r["ratio"] = round(o["img_per_s"] / r["img_per_s"], 3)
        key = {"timm": "ratio_vs_timm", "reference": "ratio_vs_reference",
               "timm:convnext_tiny": "ratio_vs_convnext_tiny"}[r["impl"]]
        o[key] = r["ratio"]


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
    head = f"{'model':<22}{'impl':<20}{'mode':<7}{'img/s':>9}{'step ms':>10}{'ours/this':>11}{'MFU':>7}"
    lines = [head, "-" * len(head)]
    for r in records:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"{r['model']:<22}{r['impl']:<20}{r['mode']:<7}{r['img_per_s']:>9.1f}"
                     f"{r['step_ms']:>10.1f}{ratio:>11}{mfu:>7}")
    return "\n".join(lines)


def write_csv(records: List[Dict], path):
    import csv
    from .utils import atomic_write
    keys = sorted({k for r in records for k in r})

    def w(tmp):
        with open(tmp, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=keys)
            wr.writeheader()
            wr.writerows(records)
    atomic_write(path, w)


def plot(records: List[Dict], path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .utils import atomic_write
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
