"""One Gated CNN block's non-GEMM candidates timed alone, at mambaout_tiny's stage shapes (CPU).

    .venv/bin/python benchmarks/ops_cpu.py [--precision bf16|fp32] [--repeats 3]

Per stage (stage 1 at 8 images, as the batch slicing runs it; the others at 16), the ms of: a copy of
the block input (the memory floor), its LayerNorm through PyTorch's LayerNorm kernel and through its
GroupNorm kernel with one group per row (fast._normalize_rows in fp32), the identity-branch GEMM with no
epilogue, exact GELU or tanh GELU fused, and the depthwise 7x7 conv alone, with the gating product fused
(_convolution_pointwise.binary) and followed by an in-place multiply. Every op runs interleaved with the
others, `--repeats` rounds of 30 timed calls each; printed: the median of each round.
"""
import argparse
import time

import torch
import torch.nn.functional as F

import mambaout

STAGES = ((8, 56), (16, 28), (16, 14), (16, 7))     # images, side of the feature map


def median_ms(fn, calls=30):
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[calls // 2]


def stage_ops(blk, images, side, dtype):
    ops = torch.ops.mkldnn
    hidden, ident, cc = blk.split_indices
    c = blk.norm.normalized_shape[0]
    n = images * side * side
    x = torch.randn(n, c, dtype=dtype)
    w_ident = ops._reorder_linear_weight(torch.randn(ident, c, dtype=dtype))
    b_ident = torch.randn(ident, dtype=dtype)
    branch = torch.randn(images, side, side, cc, dtype=dtype).permute(0, 3, 1, 2)
    gate = torch.randn(images, side, side, cc, dtype=dtype).permute(0, 3, 1, 2)
    w_conv, b_conv = torch.randn(cc, 1, 7, 7, dtype=dtype), torch.randn(cc, dtype=dtype)
    conv_args = ([3, 3], [1, 1], [1, 1], cc)
    return {
        "copy": lambda: x.clone(),
        "layer_norm": lambda: F.layer_norm(x, (c,), None, None, 1e-6),
        "group_norm rows": lambda: F.group_norm(x.reshape(1, n * c, 1), n, None, None, 1e-6),
        "linear": lambda: ops._linear_pointwise(x, w_ident, b_ident, "none", [], ""),
        "linear+gelu": lambda: ops._linear_pointwise(x, w_ident, b_ident, "gelu", [], "none"),
        "linear+gelu tanh": lambda: ops._linear_pointwise(x, w_ident, b_ident, "gelu", [], "tanh"),
        "dwconv": lambda: ops._convolution_pointwise(branch, w_conv, b_conv, *conv_args, "none", [], ""),
        "dwconv*gate fused": lambda: ops._convolution_pointwise.binary(
            branch, gate, w_conv, b_conv, *conv_args, "mul", None, None, [], None),
        "dwconv, then mul_": lambda: ops._convolution_pointwise(
            branch, w_conv, b_conv, *conv_args, "none", [], "").mul_(gate),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.precision]
    model = mambaout.create_model("mambaout_tiny").eval()
    print(f"mambaout_tiny block ops, {a.precision}, {torch.get_num_threads()} threads, ms (median per round)")
    with torch.inference_mode():
        for stage, (images, side) in zip(model.stages, STAGES):
            blk = stage.blocks[0]
            ops = stage_ops(blk, images, side, dtype)
            times = {name: [] for name in ops}
            for _ in range(a.repeats):
                for name, fn in ops.items():
                    times[name].append(median_ms(fn))
            c = blk.norm.normalized_shape[0]
            print(f"stage {c} channels, {images} x {side} x {side} tokens")
            for name, ts in times.items():
                print(f"  {name:<20}" + " ".join(f"{t:7.3f}" for t in ts))


if __name__ == "__main__":
    main()
