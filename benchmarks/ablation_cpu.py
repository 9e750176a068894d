"""What each CPU inference optimisation buys, measured interleaved in one process.

    .venv/bin/python benchmarks/ablation_cpu.py [--model mambaout_tiny] [-b 16] [--repeats 7] [--mallopt]

Variants, all with the same weights (medians of interleaved repeats, first repeat dropped):
  reference        Algorithm 1 block (split, permute, conv, permute, cat), no batch slicing
  fast, plain      fast block, MKL GEMMs + in-place elementwise, no batch slicing
  fast, oneDNN     fast block with oneDNN-fused epilogues, no batch slicing
  fast, oneDNN + slicing   the default
  ... with F.layer_norm    the default, but the blocks' LayerNorm through PyTorch's LayerNorm kernel
                           instead of its GroupNorm kernel (fast._normalize_rows, fp32)
  timm             timm's implementation
"""
import argparse
import copy
import statistics
import time

import timm
import torch

import mambaout
from mambaout.models import fast


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mambaout_tiny")
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--mallopt", action="store_true",
                   help="first tune glibc malloc for this whole process (no mmap, no trimming): shows "
                        "how much of every implementation's time is page faults on fresh tensors")
    a = p.parse_args()
    if a.mallopt:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)            # M_MMAP_MAX
        libc.mallopt(-1, 2**31 - 1)    # M_TRIM_THRESHOLD
    ours = mambaout.create_model(a.model).eval()
    ref = timm.create_model(a.model).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(a.batch_size, 3, a.img_size, a.img_size)
    onednn, rows = fast._use_onednn, fast._normalize_rows

    def layer_norm_rows(x2, eps):
        return torch.nn.functional.layer_norm(x2, (x2.shape[1],), None, None, eps)

    # The oneDNN plan packs its cached weights in place, so the plain plan runs on its own copy.
    plain = copy.deepcopy(ours)

    def setup(block_fast, use_onednn, slicing, row_norm=rows):
        model = ours if use_onednn else plain

        def f():
            fast._normalize_rows = row_norm
            for m in model.modules():
                if hasattr(m, "fast"):
                    m.fast = block_fast
            fast._use_onednn = onednn if use_onednn else (lambda blk, x: False)
            model.cpu_slice_bytes = type(model).cpu_slice_bytes if slicing else None
            model(x)
        return f

    variants = {"reference": setup(False, False, False), "fast, plain": setup(True, False, False),
                "fast, oneDNN": setup(True, True, False), "fast, oneDNN + slicing": setup(True, True, True),
                "... with F.layer_norm": setup(True, True, True, layer_norm_rows),
                "timm": lambda: ref(x)}
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(a.repeats + 1):
            for k, f in variants.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    timm_ips = a.batch_size / statistics.median(times["timm"][1:])
    print(f"{a.model}, batch {a.batch_size}, {a.img_size}px, fp32, {torch.get_num_threads()} threads"
          + (", glibc malloc tuned" if a.mallopt else ""))
    for k, v in times.items():
        ips = a.batch_size / statistics.median(v[1:])
        print(f"  {k:<26}{ips:8.2f} img/s   {ips / timm_ips:5.2f}x timm")


if __name__ == "__main__":
    main()
