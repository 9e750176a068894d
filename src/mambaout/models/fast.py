"""Fast path of the Gated CNN block: same parameters, same outputs, fewer copies.

The reference block (Algorithm 1) computes fc1 once, splits it into gate / identity /
conv, permutes the conv slice to NCHW, convolves, permutes back and concatenates.
The conv slice is a strided view, so the convolution first copies it into a dense
(and, on CPU, slower NCHW) layout; `torch.cat` copies identity and conv again; the
activation runs on a strided slice. Here instead:

1. fc1 runs as two GEMMs over row blocks of its weight (views, no weight copy):
   [gate | identity] and [conv]. Both results are dense, so the conv branch is a
   channels-last tensor that the depthwise conv reads and writes without a transpose.
2. No concatenation: the activated gate is multiplied by the identity slice and by the
   conv output slice by slice; fc2 reads the product directly.
3. Inference (autograd off) additionally
   * folds the LayerNorm affine into fc1 (W' = W diag(gamma), b' = b + W beta), cached
     per block and rebuilt whenever a weight changes; saved weights never change;
   * does the activation, gating and residual add in place;
   * writes the fc1 and (inside a stage) fc2 outputs into per-thread workspace
     buffers reused across calls. On CPU, fresh multi-MB tensors are mmap'd and
     page-faulted on every call, which costs as much as the GEMM that fills them.
     Buffers never escape: the last block of a stage returns a fresh tensor, and a
     stage with forward hooks on its blocks uses fresh tensors throughout.
Training uses 1 and 2 with ordinary autograd (gradients equal the reference's), with fc1
split four ways so that no activation is ever sliced (see _train).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

_local = threading.local()
_MAX_BUFFERS = 32


def workspace(role, shape, like: torch.Tensor) -> torch.Tensor:
    """A reusable buffer of `shape` for this thread (LRU, at most _MAX_BUFFERS kept)."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = OrderedDict()
    key = (role, tuple(shape), like.dtype, like.device)
    buf = pool.get(key)
    if buf is None:
        buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        pool[key] = buf
        while len(pool) > _MAX_BUFFERS:
            pool.popitem(last=False)
    else:
        pool.move_to_end(key)
    return buf


def clear_workspace():
    """Release this thread's inference buffers."""
    _local.pool = OrderedDict()


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or _compiling()


def _folded_fc1(blk):
    """fc1 with the LayerNorm affine folded in; cached until any of the four tensors changes."""
    params = (blk.norm.weight, blk.norm.bias, blk.fc1.weight, blk.fc1.bias)
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    cache = blk.__dict__.get("_fold_cache")
    if cache is not None and cache[0] == key:
        return cache[1]
    with torch.no_grad():
        gamma, beta, w, b = params
        w_f = w * gamma                          # scale input columns
        b_f = torch.addmv(b, w, beta)            # b + W @ beta
        n = blk.split_indices[0] + blk.split_indices[1]
        parts = (w_f[:n].t().contiguous().t(), b_f[:n].contiguous(),
                 w_f[n:].t().contiguous().t(), b_f[n:].contiguous())
    blk.__dict__["_fold_cache"] = (key, parts)
    return parts


def _act_(act: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """Apply the block's activation in place."""
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(t, approximate=act.approximate)
    if type(act) is nn.SiLU:
        return F.silu(t, inplace=True)
    return t.copy_(act(t))


def _inference_ok(blk, x) -> bool:
    return (not torch.is_grad_enabled() and not _tracing() and x.is_contiguous()
            and type(blk.norm) is nn.LayerNorm and blk.norm.elementwise_affine
            and blk.norm.bias is not None and blk.fc1.bias is not None and blk.fc2.bias is not None)


def gated_cnn_fast(blk, x: torch.Tensor, out: torch.Tensor = None) -> torch.Tensor:
    """Forward of a GatedCNNBlock. `out` (inference only): where to write the result."""
    if _inference_ok(blk, x):
        return _inference(blk, x, out)
    return _train(blk, x)


def _train(blk, x):
    # Every activation stays dense: fc1 runs as four GEMMs over row blocks of its weight
    # (gate-for-identity, gate-for-conv, identity, conv) and fc2 as two over column blocks,
    # so autograd never slices an activation (slice/split backward would zero-fill and copy
    # full-size gradients); only the small weight views are sliced.
    hidden, ident, _ = blk.split_indices
    n = hidden + ident
    w1, b1, w2 = blk.fc1.weight, blk.fc1.bias, blk.fc2.weight

    def fc1(lo, hi):
        return F.linear(xn, w1[lo:hi], None if b1 is None else b1[lo:hi])

    xn = blk.norm(x)
    c = blk.conv(fc1(n, None).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # channels-last in and out
    y = F.linear(blk.act(fc1(ident, hidden)) * c, w2[:, ident:], blk.fc2.bias)
    if ident:
        y = y + F.linear(blk.act(fc1(0, ident)) * fc1(hidden, n), w2[:, :ident])
    return blk.drop_path(blk.ls(y)) + x


def _inference(blk, x, out):
    B, H, W, C = x.shape
    N = B * H * W
    hidden, ident, conv_ch = blk.split_indices
    w_gi, b_gi, w_c, b_c = _folded_fc1(blk)
    x2 = x.view(N, C)
    xn = F.layer_norm(x2, (C,), None, None, blk.norm.eps)   # affine folded into fc1
    c = torch.addmm(b_c, xn, w_c.t(), out=workspace("c", (N, conv_ch), x))
    c = blk.conv(c.view(B, H, W, conv_ch).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    gi = torch.addmm(b_gi, xn, w_gi.t(), out=workspace("gi", (N, hidden + ident), x))
    a = _act_(blk.act, gi[:, :hidden])
    a[:, :ident].mul_(gi[:, hidden:])
    a[:, ident:].mul_(c.reshape(N, conv_ch))
    y = torch.addmm(blk.fc2.bias, a, blk.fc2.weight.t(), out=out.view(N, C) if out is not None else None)
    if not isinstance(blk.ls, nn.Identity):
        y.mul_(blk.ls.gamma)
    return y.add_(x2).view(B, H, W, C)


def run_blocks(blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a stage's blocks; at inference, blocks but the last write into ping-pong buffers."""
    from .blocks import GatedCNNBlock
    n = len(blocks)
    if (n < 2 or not all(type(b) is GatedCNNBlock and b.fast for b in blocks)
            or not _inference_ok(blocks[0], x) or _has_hooks(blocks)):
        return blocks(x)
    for j, blk in enumerate(blocks):
        out = workspace(("y", j % 2), x.shape, x) if j < n - 1 else None
        x = gated_cnn_fast(blk, x, out)
    return x


def _has_hooks(blocks) -> bool:
    from torch.nn.modules import module as m
    if m._global_forward_hooks or m._global_forward_pre_hooks:
        return True
    return any(b._forward_hooks or b._forward_pre_hooks for blk in blocks for b in blk.modules())
