"""Fast path of the Gated CNN block: same parameters, same outputs, fewer passes over memory.

The reference block (Algorithm 1) computes fc1 once, splits it into gate / identity /
conv, permutes the conv slice to NCHW, convolves, permutes back and concatenates.
The conv slice is a strided view, so the convolution first copies it into a dense
(on CPU also slower) layout; `torch.cat` copies identity and conv again; the
activation runs on a strided slice, and in training autograd zero-fills and copies
full-size gradients for every slice and split. Here instead:

* Training (autograd on): fc1 runs as four GEMMs over row blocks of its weight
  (gate-for-identity, gate-for-conv, identity, conv) and fc2 as two over column
  blocks. Every activation is dense, the conv branch is channels-last in and out, and
  only the small weight views are sliced. Gradients equal the reference's.
* Inference (autograd off): the LayerNorm affine is folded into fc1
  (W' = W diag(gamma), b' = b + W beta), and the weights are split into those row and
  column blocks once, cached per block and rebuilt whenever a weight changes (saved
  weights never change). On CPU every step then runs as one oneDNN primitive with its
  elementwise work fused in: gate GEMMs with GELU/SiLU, the identity GEMM with the
  gating product, the depthwise conv with the gating product, the first fc2 GEMM with
  the residual add; the second fc2 GEMM accumulates in place. Elsewhere (CUDA, no
  oneDNN) the same plan runs with in-place elementwise ops.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or _compiling()


def inference_mode_active(x: torch.Tensor) -> bool:
    """True when the inference plan may run: autograd off, no autocast (its in-place steps
    would mix dtypes), and nothing tracing the graph."""
    return not torch.is_grad_enabled() and not _tracing() and not _autocast(x)


def _autocast(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


_ONEDNN_ACT = {("GELU", "none"): ("gelu", "none"), ("GELU", "tanh"): ("gelu", "tanh"), ("SiLU", None): ("swish", "")}


def _onednn_act(act: nn.Module):
    return _ONEDNN_ACT.get((type(act).__name__, getattr(act, "approximate", None)))


def _use_onednn(blk, x) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and _onednn_act(blk.act) is not None and blk.conv.bias is not None)


def _plan(blk):
    """Folded and split weights for inference; cached until any block weight changes."""
    params = (blk.norm.weight, blk.norm.bias, blk.fc1.weight, blk.fc1.bias, blk.fc2.weight, blk.fc2.bias)
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    cache = blk.__dict__.get("_plan_cache")
    if cache is not None and cache[0] == key:
        return cache[1]
    hidden, ident, _ = blk.split_indices
    n = hidden + ident
    with torch.no_grad():
        gamma, beta, w1, b1, w2, _ = params
        w = w1 * gamma                           # scale input columns
        b = torch.addmv(b1, w1, beta)            # b + W @ beta
        plan = {name: t.contiguous() for name, t in dict(
            wg1=w[:ident], bg1=b[:ident], wg2=w[ident:hidden], bg2=b[ident:hidden],
            wi=w[hidden:n], bi=b[hidden:n], wc=w[n:], bc=b[n:],
            w2a=w2[:, :ident], w2b=w2[:, ident:]).items()}
    blk.__dict__["_plan_cache"] = (key, plan)
    return plan


def _inference_ok(blk, x) -> bool:
    return (inference_mode_active(x) and type(blk.norm) is nn.LayerNorm and blk.norm.elementwise_affine
            and blk.norm.bias is not None and blk.fc1.bias is not None and blk.fc2.bias is not None)


def gated_cnn_fast(blk, x: torch.Tensor) -> torch.Tensor:
    """Forward of a GatedCNNBlock (x: B, H, W, C), equal to blk.forward_reference(x)."""
    if _inference_ok(blk, x):
        return _inference_onednn(blk, x) if _use_onednn(blk, x) else _inference(blk, x)
    return _train(blk, x)


def _train(blk, x):
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


def _layer_scale_residual(blk, y, x2):
    if isinstance(blk.ls, nn.Identity):
        return y.add_(x2)
    return y.mul_(blk.ls.gamma).add_(x2)


def _inference(blk, x):
    B, H, W, C = x.shape
    N = B * H * W
    hidden, ident, cc = blk.split_indices
    p = _plan(blk)
    x2 = x.reshape(N, C)
    xn = F.layer_norm(x2, (C,), None, None, blk.norm.eps)
    c = F.linear(xn, p["wc"], p["bc"])
    z2 = blk.act(F.linear(xn, p["wg2"], p["bg2"]))
    z2.mul_(blk.conv(c.view(B, H, W, cc).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(N, cc))
    y = F.linear(z2, p["w2b"], blk.fc2.bias)
    if ident:
        z1 = blk.act(F.linear(xn, p["wg1"], p["bg1"])).mul_(F.linear(xn, p["wi"], p["bi"]))
        y.addmm_(z1, p["w2a"].t())
    return _layer_scale_residual(blk, y, x2).view(B, H, W, C)


def _inference_onednn(blk, x):
    ops = torch.ops.mkldnn
    B, H, W, C = x.shape
    N = B * H * W
    hidden, ident, cc = blk.split_indices
    attr, algo = _onednn_act(blk.act)
    p = _plan(blk)
    x2 = x.reshape(N, C)
    xn = F.layer_norm(x2, (C,), None, None, blk.norm.eps)          # affine folded into fc1
    c = ops._linear_pointwise(xn, p["wc"], p["bc"], "none", [], "")
    a2 = ops._linear_pointwise(xn, p["wg2"], p["bg2"], attr, [], algo)  # act(gate) for the conv branch
    k = blk.conv.kernel_size[0]
    z2 = ops._convolution_pointwise.binary(                           # conv(c) * act(gate)
        c.view(B, H, W, cc).permute(0, 3, 1, 2), a2.view(B, H, W, cc).permute(0, 3, 1, 2),
        blk.conv.weight, blk.conv.bias, [k // 2, k // 2], [1, 1], [1, 1], cc, "mul", None, None, [], None)
    z2 = z2.permute(0, 2, 3, 1).reshape(N, cc)
    residual_fused = isinstance(blk.ls, nn.Identity)
    if ident:
        a1 = ops._linear_pointwise(xn, p["wg1"], p["bg1"], attr, [], algo)
        z1 = ops._linear_pointwise.binary(xn, a1, p["wi"], p["bi"], "mul")  # identity * act(gate)
        if residual_fused:
            y = ops._linear_pointwise.binary(z1, x2, p["w2a"], blk.fc2.bias, "add")
        else:
            y = ops._linear_pointwise(z1, p["w2a"], blk.fc2.bias, "none", [], "")
        y.addmm_(z2, p["w2b"].t())
    elif residual_fused:
        y = ops._linear_pointwise.binary(z2, x2, p["w2b"], blk.fc2.bias, "add")
    else:
        y = ops._linear_pointwise(z2, p["w2b"], blk.fc2.bias, "none", [], "")
    if not residual_fused:
        y = _layer_scale_residual(blk, y, x2)
    return y.view(B, H, W, C)
