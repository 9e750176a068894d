"""Shared test helpers, and the tolerances the suite compares computations with.

What the suite asserts of two results:
- bit for bit (torch.equal, ==) only where both come from the same computation: the same code,
  inputs, shapes, dtype and thread count in one process (reruns, resume, reloaded weights), or
  integer counts summed across processes;
- otherwise, for two float32 computations of the same function that round in another order
  (fast vs reference path, channels-last, batch slicing, another GEMM library or vector width,
  ONNX Runtime vs PyTorch, 1 vs 2 processes), a tolerance from float32's epsilon (below);
- a discrete decision (argmax, top-k order, NMS) taken on two such results is compared only
  where the margin of the decision is larger than that tolerance, or not at all.
"""
import re

import torch

FP32_EPS = torch.finfo(torch.float32).eps   # 2**-23, about 1.2e-7
# Reordering a float32 dot product of length K moves it by about sqrt(K) eps of its scale (at
# worst K eps); a network stacks some 50 such layers (K up to a few thousand) behind norms that
# rescale. 1e-4 of the output's scale (~840 eps) covers that with margin on every CPU, and is
# still ~1000x below what a wrong formula (a missed bias, a transposed weight) moves.
FP32_NET_RTOL = 1e-4


def assert_fp32_close(a, b, rtol=FP32_NET_RTOL):
    """a and b: one float32 function computed in two rounding orders. Their largest difference
    is within rtol of b's scale (its largest magnitude), so near-zero entries are not held to a
    relative bound that reordering cannot meet."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    assert diff <= rtol * scale, f"max |a - b| = {diff:.3g} > {rtol:g} x scale {scale:.3g}"


def timm_to_official(sd):
    """Inverse of the official -> timm renaming, written independently for the tests."""
    out = {}
    for k, v in sd.items():
        if k.startswith("stem."):
            k = "downsample_layers.0." + k[len("stem."):]
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        if k.startswith("head.norm."):
            k = k[len("head."):]
        k = k.replace("head.pre_logits.fc.", "head.fc1.").replace("head.pre_logits.norm.", "head.norm.")
        k = k.replace("head.fc.", "head.fc2.")
        out[k] = v
    return out


def randomize(module, seed=0):
    """Random LayerNorm affines, biases and layer scales (so folding matters) around realistic
    weight scales, giving logits of order 1-10 like a trained model's."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if p.ndim > 1:
                p.copy_(r * 0.04)
            elif name.endswith("bias"):
                p.copy_(r * 0.1)
            else:                                   # norm weights, layer scale
                p.copy_(1.0 + 0.2 * r)
    return module


def set_fast(model, flag):
    """Switch every Gated CNN block of `model` to the fast (True) or reference (False) path."""
    from mambaout.models.blocks import GatedCNNBlock
    for m in model.modules():
        if isinstance(m, GatedCNNBlock):
            m.fast = flag
    return model
