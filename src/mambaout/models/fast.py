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
  only the small weight views are sliced. In eager mode these GEMMs are custom autograd
  Functions whose backward writes each block's weight gradient into its rows of one
  buffer (autograd would zero-fill a full-size gradient per slice, copy and add), and
  the depthwise conv's bias gradient is a plain sum (oneDNN's fused one costs more than
  the weight gradient). Under tracing or torch.compile the same plan runs in plain ops.
  Gradients equal the reference's.
* Inference (autograd off): the LayerNorm affine is folded into fc1
  (W' = W diag(gamma), b' = b + W beta), and the weights are split into those row and
  column blocks once, cached per block and rebuilt whenever a weight changes (saved
  weights never change). On CPU every step then runs as one oneDNN primitive with its
  elementwise work fused in: gate GEMMs with GELU/SiLU, the identity GEMM with the
  gating product, the depthwise conv with the gating product, the first fc2 GEMM with
  the residual add, the second fc2 GEMM adding the first's output; the GEMM weights are
  packed once into oneDNN's blocked layout. Elsewhere (CUDA, no oneDNN) the same plan runs
  with in-place elementwise ops.
* Low precision (inference): with bf16 weights the plan is folded in fp32 and cast once; under
  autocast (fp32 weights) the block casts its input to the autocast dtype and runs a plan
  cast to it, so activations stay in that dtype between blocks. On a CPU with bf16
  instructions both run the same fused oneDNN primitives as fp32.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def fx_tracing(x=None) -> bool:
    """True under torch.fx symbolic tracing (torchvision's create_feature_extractor, timm's
    FeatureGraphNet): `x` is then a Proxy, whose attributes cannot steer Python control flow,
    so callers take the plain-op reference path. torch.export / torch.compile are not FX
    symbolic tracing (they run on fake tensors) and answer False here."""
    return isinstance(x, torch.fx.Proxy) or _fx_symbolic_tracing()


try:
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as _fx_symbolic_tracing
except ImportError:  # older torch: its one flag covers symbolic tracing only
    from torch.fx._symbolic_trace import is_fx_tracing as _fx_symbolic_tracing


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or _compiling() or fx_tracing()


def inference_mode_active(x: torch.Tensor) -> bool:
    """True when the inference plan may run: autograd off, no autocast (its in-place steps
    would mix dtypes), and nothing tracing the graph."""
    return not torch.is_grad_enabled() and not _tracing() and not _autocast(x)


def _autocast(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
    except RuntimeError:  # a device autocast does not know (meta)
        return False


# glibc's malloc serves a freed block again only while it stays below two moving thresholds: blocks
# above the mmap threshold (128 KiB at start) are mmap'd and returned at free, and a heap top above the
# trim threshold is returned to the system; the next allocation then page-faults every page in again.
# glibc raises both thresholds itself whenever the program frees an mmap'd block (up to 32 MiB and
# 64 MiB). One 32 MiB buffer freed before the first CPU inference forward takes them there at once, so
# the forward's activation buffers (under 30 MiB: see MambaOut.cpu_slice_bytes) are reused instead of
# faulted in: about 20 thousand page faults and 10-15 % of a bf16 forward of mambaout_tiny at batch 16
# (docs/performance.md, "The allocator"). It is what any program that once frees 32 MiB gets, it keeps
# at most 64 MiB of freed memory mapped, and MAMBAOUT_MALLOC_NUDGE=0 switches it off.
_MALLOC_NUDGE = {"done": False, "applied": False}


def raise_malloc_thresholds() -> bool:
    """Once per process, on glibc: allocate and free one 32 MiB buffer (see above). True if applied
    (now or before)."""
    if not _MALLOC_NUDGE["done"]:
        _MALLOC_NUDGE["done"] = True
        import os
        import platform
        if os.environ.get("MAMBAOUT_MALLOC_NUDGE", "1") != "0" and platform.libc_ver()[0] == "glibc":
            torch.empty(32 * 2**20 - 2**16, dtype=torch.uint8)    # mmap'd, never touched, freed at once
            _MALLOC_NUDGE["applied"] = True
    return _MALLOC_NUDGE["applied"]


def malloc_thresholds_raised() -> bool:
    """Whether raise_malloc_thresholds ran in this process (for the benchmark's allocator report)."""
    return _MALLOC_NUDGE["applied"]


_ONEDNN_ACT = {("GELU", "none"): ("gelu", "none"), ("GELU", "tanh"): ("gelu", "tanh"), ("SiLU", None): ("swish", "")}


def _onednn_act(act: nn.Module):
    return _ONEDNN_ACT.get((type(act).__name__, getattr(act, "approximate", None)))


def _mkldnn_bf16() -> bool:
    """oneDNN runs bf16 natively here (AVX512_BF16 / AMX, or AVX-512 emulation it accepts)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _use_onednn(blk, x) -> bool:
    return (x.device.type == "cpu" and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _mkldnn_bf16()))
            and torch.backends.mkldnn.is_available() and _onednn_act(blk.act) is not None
            and blk.conv.bias is not None)


# Per block: {"plan": {dtype: (key, plan)}}. Kept outside the
# modules so that copying, pickling or saving a model never carries (or trips over) them.
_CACHES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _cache(blk, kind: str) -> dict:
    return _CACHES.setdefault(blk, {}).setdefault(kind, {})


def cached_plans(blk) -> list:
    """The dtypes a block holds an inference plan for (for tests and debugging)."""
    return sorted(_cache(blk, "plan"), key=str)


def _plan(blk, dtype=None):
    """Folded and split weights for inference in `dtype` (default: the weights' own), folded in
    fp32 and cast once; cached per dtype until any block weight changes."""
    params = (blk.norm.weight, blk.norm.bias, blk.fc1.weight, blk.fc1.bias, blk.fc2.weight, blk.fc2.bias,
              blk.conv.weight, blk.conv.bias, getattr(blk.ls, "gamma", None))
    dtype = dtype or blk.fc1.weight.dtype
    # The cache is keyed on each weight's storage and version counter. Inference tensors (a model
    # built under torch.inference_mode) have no version counter, so an in-place change (e.g.
    # load_state_dict) would go unseen: their plan is rebuilt on every call and never cached.
    # Meta tensors have no storage to key on: rebuilt too (shapes only, cheap).
    cacheable = all(p is None or not (p.is_inference() or p.is_meta) for p in params)
    key = (tuple((None if p is None else (p.data_ptr(), p._version, p.dtype, p.device)) for p in params)
           if cacheable else None)
    caches = _cache(blk, "plan")
    cache = caches.get(dtype)
    if cacheable and cache is not None and cache[0] == key:
        return cache[1]
    hidden, ident, _ = blk.split_indices
    n = hidden + ident
    with torch.no_grad():
        gamma, beta, w1, b1, w2, b2, wconv, bconv, ls = (None if t is None else t.float() for t in params)
        w = w1 * gamma                           # scale input columns
        b = torch.addmv(b1, w1, beta)            # b + W @ beta
        parts = dict(wg1=w[:ident], bg1=b[:ident], wg2=w[ident:hidden], bg2=b[ident:hidden],
                     wi=w[hidden:n], bi=b[hidden:n], wc=w[n:], bc=b[n:],
                     w2a=w2[:, :ident], w2b=w2[:, ident:], b2=b2, wconv=wconv, bconv=bconv, ls=ls)
        plan = {name: None if t is None else t.to(dtype).contiguous() for name, t in parts.items()}
    if cacheable:
        caches[dtype] = (key, plan)
    else:
        caches.pop(dtype, None)
    return plan


def _autocast_dtype(x):
    try:
        return torch.get_autocast_dtype(x.device.type)
    except AttributeError:  # older torch
        return torch.get_autocast_gpu_dtype() if x.is_cuda else torch.get_autocast_cpu_dtype()


def _foldable(blk) -> bool:
    return (type(blk.norm) is nn.LayerNorm and blk.norm.elementwise_affine and blk.norm.bias is not None
            and blk.fc1.bias is not None and blk.fc2.bias is not None)


def _inference_ok(blk, x) -> bool:
    return inference_mode_active(x) and _foldable(blk)


def _run_plan(blk, x):
    return _inference_onednn(blk, x) if _use_onednn(blk, x) else _inference(blk, x)


def gated_cnn_fast(blk, x: torch.Tensor) -> torch.Tensor:
    """Forward of a GatedCNNBlock (x: B, H, W, C), equal to blk.forward_reference(x)."""
    if _inference_ok(blk, x):
        return _run_plan(blk, x)
    if not torch.is_grad_enabled() and not _tracing() and _autocast(x) and _foldable(blk):
        # Inference under autocast: the same plan with its weights cast once to the autocast
        # dtype (fp32 weights stay as they are), activations in that dtype between blocks.
        dtype = _autocast_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            return _run_plan(blk, x.to(dtype))
    # Eager training: the custom autograd Functions below. What traces the graph (jit, ONNX
    # export, fvcore, torch.compile) gets the same plan in plain ops and autograd's backward.
    return _train(blk, x, functions=torch.is_grad_enabled() and not _tracing())


def _train(blk, x, functions: bool):
    hidden, ident, cc = blk.split_indices
    n = hidden + ident
    rows, columns, depthwise = ((RowBlockLinear.apply, ColumnBlockLinear.apply, DepthwiseConv.apply)
                                if functions else (_row_blocks, _column_blocks, _depthwise))
    xn = blk.norm(x)
    # fc1 as GEMMs over row blocks of its weight: [gate-for-identity], gate-for-conv, [identity], conv
    blocks = ((0, ident), (ident, hidden), (hidden, n), (n, n + cc)) if ident else ((0, hidden), (n, n + cc))
    outs = rows(xn, blk.fc1.weight, blk.fc1.bias, blocks)
    c = depthwise(outs[-1].permute(0, 3, 1, 2), blk.conv.weight, blk.conv.bias,
                  blk.conv.padding).permute(0, 2, 3, 1)  # channels-last in and out
    gated = [blk.act(outs[1]) * c] if ident else [blk.act(outs[0]) * c]
    cols = ((ident, hidden),)
    if ident:
        gated.append(blk.act(outs[0]) * outs[2])
        cols += ((0, ident),)
    y = columns(blk.fc2.weight, blk.fc2.bias, cols, *gated)
    return blk.drop_path(blk.ls(y)) + x


def _row_blocks(x, weight, bias, blocks):
    """x -> [x @ W[lo:hi].T + b[lo:hi] for each (lo, hi) block] (plain ops)."""
    return tuple(F.linear(x, weight[lo:hi], None if bias is None else bias[lo:hi]) for lo, hi in blocks)


def _column_blocks(weight, bias, cols, *inputs):
    """sum_k inputs[k] @ W[:, lo_k:hi_k].T + b (plain ops)."""
    (lo, hi), *rest = cols
    y = F.linear(inputs[0], weight[:, lo:hi], bias)
    for (lo, hi), m in zip(rest, inputs[1:]):
        y = y + F.linear(m, weight[:, lo:hi])
    return y


def _depthwise(x, weight, bias, padding):
    return F.conv2d(x, weight, bias, 1, padding, 1, weight.shape[0])


def _autocast_inputs(*tensors):
    """Under autocast, the tensors cast to its dtype (the Functions below then run with autocast
    off and autograd casts their gradients back to the parameters' dtype); else unchanged."""
    x = tensors[0]
    if not _autocast(x):
        return tensors
    dtype = _autocast_dtype(x)
    return tuple(t if t is None else t.to(dtype) for t in tensors)


def _no_autocast(x):
    return torch.autocast(x.device.type, enabled=False) if _autocast(x) else contextlib.nullcontext()


class RowBlockLinear(torch.autograd.Function):
    """x -> [x @ W[lo:hi].T + b[lo:hi] for each (lo, hi) block]: dense outputs, no split copies.

    Autograd through sliced weights would zero-fill a full-size weight gradient per slice and
    add them up; here each block's weight gradient is written straight into its rows and the
    input gradient accumulates in one buffer."""

    @staticmethod
    def forward(ctx, x, weight, bias, blocks):
        x, weight, bias = _autocast_inputs(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.blocks, ctx.has_bias = blocks, bias is not None
        with _no_autocast(x):
            return _row_blocks(x, weight, bias, blocks)

    @staticmethod
    def backward(ctx, *grads):
        x, weight = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(weight) if any(g is None for g in grads) else torch.empty_like(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = weight.new_zeros(weight.shape[0])
        for (lo, hi), g in zip(ctx.blocks, grads):
            if g is None:
                continue
            g2 = g.reshape(-1, hi - lo)
            if ctx.needs_input_grad[0]:
                gx = g2 @ weight[lo:hi] if gx is None else gx.addmm_(g2, weight[lo:hi])
            if gw is not None:
                torch.mm(g2.t(), x2, out=gw[lo:hi])
            if gb is not None:
                torch.sum(g2, 0, out=gb[lo:hi])
        if gx is not None:
            gx = gx.view(x.shape)
        return gx, gw, gb, None


class ColumnBlockLinear(torch.autograd.Function):
    """sum_k inputs[k] @ W[:, lo_k:hi_k].T + b: fc2 over the gated parts without concatenating them."""

    @staticmethod
    def forward(ctx, weight, bias, cols, *inputs):
        weight, bias, *inputs = _autocast_inputs(weight, bias, *inputs)
        ctx.save_for_backward(weight, *inputs)
        ctx.cols, ctx.has_bias = cols, bias is not None
        y = None
        with _no_autocast(weight):
            for (lo, hi), m in zip(cols, inputs):
                part = weight[:, lo:hi]
                if y is None:
                    y = F.linear(m, part, bias)
                else:
                    y.view(-1, y.shape[-1]).addmm_(m.reshape(-1, hi - lo), part.t())
        return y

    @staticmethod
    def backward(ctx, gy):
        weight, *inputs = ctx.saved_tensors
        gy2 = gy.reshape(-1, gy.shape[-1])
        gw = gb = None
        if ctx.needs_input_grad[0]:  # (W^T)'s row blocks are contiguous: fill them, transpose once
            gwt = weight.new_empty(weight.shape[1], weight.shape[0])
            for (lo, hi), m in zip(ctx.cols, inputs):
                torch.mm(m.reshape(-1, hi - lo).t(), gy2, out=gwt[lo:hi])
            gw = gwt.t().contiguous()
        if ctx.has_bias and ctx.needs_input_grad[1]:
            gb = gy2.sum(0)
        gins = [(gy2 @ weight[:, lo:hi]).view(m.shape) if ctx.needs_input_grad[3 + k] else None
                for k, ((lo, hi), m) in enumerate(zip(ctx.cols, inputs))]
        return (gw, gb, None, *gins)


class DepthwiseConv(torch.autograd.Function):
    """Depthwise stride-1 conv whose backward takes the bias gradient as a plain sum: on CPU
    oneDNN's fused bias gradient costs more than the weight gradient itself."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        x, weight, bias = _autocast_inputs(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        with _no_autocast(x):
            return _depthwise(x, weight, bias, padding)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        gx, gw, _ = torch.ops.aten.convolution_backward(
            gy, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], weight.shape[0], mask)
        gb = gy.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def _layer_scale_residual(p, y, x2):
    if p.get("ls") is None:
        return y.add_(x2)
    return y.mul_(p["ls"]).add_(x2)


def _normalize_rows(x2, eps):
    """LayerNorm without affine over the rows of a 2-D tensor (both inference plans). On CPU in fp32,
    PyTorch's GroupNorm kernel with one group per row computes the same thing about twice as fast as its
    LayerNorm kernel at these widths (96-576 channels: 0.57 vs 1.12 ms for 25,088 x 96 on the AMX Xeon;
    logits within 3e-6 of the LayerNorm path); in bf16 it is no faster, so bf16 and other devices keep
    LayerNorm."""
    if x2.dtype != torch.float32 or x2.device.type != "cpu":
        return F.layer_norm(x2, (x2.shape[1],), None, None, eps)
    n, c = x2.shape
    return F.group_norm(x2.reshape(1, n * c, 1), n, None, None, eps).view(n, c)


def _inference(blk, x):
    B, H, W, C = x.shape
    N = B * H * W
    hidden, ident, cc = blk.split_indices
    p = _plan(blk, x.dtype)
    x2 = x.reshape(N, C)
    xn = _normalize_rows(x2, blk.norm.eps)
    c = F.linear(xn, p["wc"], p["bc"])
    z2 = blk.act(F.linear(xn, p["wg2"], p["bg2"]))
    conv = F.conv2d(c.view(B, H, W, cc).permute(0, 3, 1, 2), p["wconv"], p["bconv"], 1, blk.conv.padding, 1, cc)
    z2.mul_(conv.permute(0, 2, 3, 1).reshape(N, cc))
    y = F.linear(z2, p["w2b"], p["b2"])
    if ident:
        z1 = blk.act(F.linear(xn, p["wg1"], p["bg1"])).mul_(F.linear(xn, p["wi"], p["bi"]))
        y.addmm_(z1, p["w2a"].t())
    return _layer_scale_residual(p, y, x2).view(B, H, W, C)


_PACKED = ("wg1", "wg2", "wi", "wc", "w2a", "w2b")
_PACK_LOCK = threading.Lock()


def _packed(p):
    """The plan with its GEMM weights reordered, once, into oneDNN's blocked layout (what its GEMM
    kernels read; a plain weight is reordered inside every call). In place: a block on one device
    and dtype always takes the same path (_use_onednn), so the plain copies are not needed again."""
    if not p.get("packed"):
        with _PACK_LOCK:  # threads sharing a model pack each plan once
            if not p.get("packed"):
                for name in _PACKED:
                    if p[name].numel():
                        p[name] = torch.ops.mkldnn._reorder_linear_weight(p[name])
                p["packed"] = True
    return p


def _inference_onednn(blk, x):
    ops = torch.ops.mkldnn
    B, H, W, C = x.shape
    N = B * H * W
    hidden, ident, cc = blk.split_indices
    attr, algo = _onednn_act(blk.act)
    p = _packed(_plan(blk, x.dtype))
    x2 = x.reshape(N, C)
    xn = _normalize_rows(x2, blk.norm.eps)                          # affine folded into fc1
    c = ops._linear_pointwise(xn, p["wc"], p["bc"], "none", [], "")
    a2 = ops._linear_pointwise(xn, p["wg2"], p["bg2"], attr, [], algo)  # act(gate) for the conv branch
    k = blk.conv.kernel_size[0]
    z2 = ops._convolution_pointwise.binary(                           # conv(c) * act(gate)
        c.view(B, H, W, cc).permute(0, 3, 1, 2), a2.view(B, H, W, cc).permute(0, 3, 1, 2),
        p["wconv"], p["bconv"], [k // 2, k // 2], [1, 1], [1, 1], cc, "mul", None, None, [], None)
    z2 = z2.permute(0, 2, 3, 1).reshape(N, cc)
    residual_fused = p.get("ls") is None
    if ident:
        a1 = ops._linear_pointwise(xn, p["wg1"], p["bg1"], attr, [], algo)
        z1 = ops._linear_pointwise.binary(xn, a1, p["wi"], p["bi"], "mul")  # identity * act(gate)
        if residual_fused:
            y = ops._linear_pointwise.binary(z1, x2, p["w2a"], p["b2"], "add")
        else:
            y = ops._linear_pointwise(z1, p["w2a"], p["b2"], "none", [], "")
        y = ops._linear_pointwise.binary(z2, y, p["w2b"], None, "add")  # + the identity half, fused
    elif residual_fused:
        y = ops._linear_pointwise.binary(z2, x2, p["w2b"], p["b2"], "add")
    else:
        y = ops._linear_pointwise(z2, p["w2b"], p["b2"], "none", [], "")
    if not residual_fused:
        y = _layer_scale_residual(p, y, x2)
    return y.view(B, H, W, C)
