"""Mamba's selective state space model (S6) in pure PyTorch.

The paper (Table 8) compares a pure SSM token mixer with convolution and attention;
this module provides that SSM. The recurrence, per channel c and state index n:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t

with delta, B and C computed from the input ("selective"), B and C shared across
channels, A a negative real (S4D-real) matrix of shape (channels, d_state), as in
Mamba (Gu and Dao, 2023).

Two implementations with the same results:

* `selective_scan_ref`: the recurrence, one step per token. Short and obviously
  right; the tests hold the chunked one to it.
* `selective_scan`: chunked. Inside a chunk of T tokens every output is computed at
  once from segment sums of the log-decays,
      h_t = exp(S_t) h_0 + sum_{s<=t} exp(S_t - S_s) delta_s B_s u_s,
  and the state is carried from chunk to chunk in a Python loop. The segment sums
  are accumulated directly (a masked cumsum of delta, never a difference of two
  cumsums, so no cancellation), and exp only ever sees non-positive numbers.

Which is faster depends on the size of one step's state, batch * channels * N. The
recurrence does the least arithmetic but one step of Python per token; the chunked
scan does (T + 1) / 2 times the elementwise work in T times fewer steps. Forward ms on
a 2-core CPU (d_state 16; `python -m mambaout.models.ssm` reruns it: medians of
interleaved runs), recurrence vs chunks of 2 / 4 / 16:

    (batch, L, channels)   recurrence   T=2    T=4    T=16
    (1, 64, 128)               4.2       1.8    1.8    3.8
    (2, 64, 384)               9.1       7.6    9.0   22.4
    (8, 64, 128)               8.2      10.5   10.2   28.0
    (64, 64, 384)             72.5     198    220    933
    (1, 1024, 128)            68.1      20.5   21.7   47.2

(Shared machine: absolute numbers vary by up to 30% between runs, the ordering did
not; forward + backward ranks the same way.) So `SelectiveSSM` by default runs the
recurrence on CPU once a step's state reaches RECURRENCE_STATE (2^14) elements (in
training only while the states autograd keeps stay under RECURRENCE_GRAD_ELEMENTS), and
the chunked scan otherwise and off CPU, where we expect (not measured here) the
recurrence's L sequential steps of small kernels to cost most.

Tracing and scripting (ours; issue 22). The scan is a Python loop over tokens whose algorithm
is picked from the input's size and device, which FX symbolic tracing cannot follow: the
modules that own a scan (SelectiveSSM here, VMamba's SS2D, Vim's BiMamba, the hybrid's GridSSM)
are registered with timm as leaf modules (timm.layers.register_notrace_module), so timm's FX
feature extractors (FeatureGraphNet, timm.layers.create_feature_extractor) call them whole;
torchvision's create_feature_extractor needs them named:
tracer_kwargs={"leaf_modules": timm.layers.get_notrace_modules()}. Under TorchScript run_scan
compiles one branch only, the recurrence (selective_scan_steps), so SelectiveSSM scripts;
torch.export unrolls the token loop into a graph fixed to the input's shape.

MACs: the counter (analysis/complexity.py) would otherwise count whatever matmuls the chunked
scan happens to use. The paper's Table 8 SSM numbers fit VMamba's convention for the
selective scan, 9 * L * C * N plus L * C for the D skip per direction, so
`SelectiveSSM` declares that number for the scan (costs.declare_macs); its x_proj
and dt_proj count as ordinary Linear layers.
"""
from __future__ import annotations

import logging
import math
import os
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch.utils.checkpoint import checkpoint

from . import costs

log = logging.getLogger("mambaout")

# Tokens per chunk. A chunk's decays are a (batch, T (T + 1) / 2, channels, d_state)
# tensor: the work grows with T while the Python loop shrinks with it. 2 was the fastest
# on a 2-core CPU at every size we measured, 4 close behind (table above).
DEFAULT_CHUNK = 2
# run_scan's default on CPU: the recurrence from this many state elements per step...
RECURRENCE_STATE = 2 ** 14
# ...unless autograd would keep more state elements than this over the sequence (256 MiB).
RECURRENCE_GRAD_ELEMENTS = 2 ** 26

# selective_scan computes this many decay elements at a time at most (16 MiB in float32)...
GROUP_ELEMENTS = 2 ** 22
# ...and by default recomputes them in backward once the whole sequence has more than this.
RECOMPUTE_ELEMENTS = 2 ** 24


# Why a model with a selective scan is not exported (deploy/export.py refuses in one line rather
# than write a file that fails): the scan is a Python loop over tokens, which tracing unrolls
# into a graph fixed to one batch and image size, and the chunked scan uses tril_indices, which
# ONNX lacks.
EXPORT_UNSUPPORTED = ("the selective scan is a Python loop over tokens, which tracing unrolls into a graph "
                      "fixed to one batch and image size")


def selective_scan_ref(u, delta, A, B, C, D=None):
    """Reference selective scan: the recurrence, one step per token.

    u, delta: (batch, L, channels); A: (channels, N), or (batch, channels, N) for sequences
    with parameters of their own (VMamba's four scan directions folded into the batch);
    B, C: (batch, L, N); D: (channels,) or (batch, 1, channels). Returns y: (batch, L, channels).
    """
    batch, length, channels = u.shape
    h = u.new_zeros(batch, channels, A.shape[-1])
    ys = []
    # unbind, not x[:, t] in the loop: the backward of L selects would zero-fill and
    # accumulate a full-size gradient L times; unbind's backward is one stack.
    for d_t, u_t, B_t, C_t in zip(delta.unbind(1), u.unbind(1), B.unbind(1), C.unbind(1)):
        decay = torch.exp(d_t.unsqueeze(-1) * A)                             # (batch, ch, N)
        h = decay * h + (d_t * u_t).unsqueeze(-1) * B_t.unsqueeze(1)
        ys.append(torch.einsum("bcn,bn->bc", h, C_t))
    y = torch.stack(ys, dim=1)
    return y if D is None else y + u * D


def selective_scan_steps(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The recurrence, as `selective_scan_ref` computes it, with the per-token work batched: for
    a block of tokens the decays exp(delta A) and the inputs delta B u are computed at once, the
    loop does one fused multiply-add per token (h = decay * h + input), and the block's outputs
    are contracted with C at once. Blocks hold at most GROUP_ELEMENTS state elements per tensor.
    Same arguments and result as `selective_scan_ref`; ~1 op per token instead of ~6."""
    batch, length, channels = u.shape
    n = A.shape[-1]
    A_t = A if A.dim() == 2 else A[:, None]                      # broadcast over the block's tokens
    if torch.jit.is_scripting():
        limit = 4194304                       # GROUP_ELEMENTS: TorchScript reads no module globals
    else:
        limit = GROUP_ELEMENTS                # read per call (tests change it)
    block = max(1, limit // (batch * channels * n))
    h = u.new_zeros(batch, channels, n)
    ys: List[torch.Tensor] = []
    for s in range(0, length, block):
        d, x = delta[:, s:s + block], u[:, s:s + block]
        decay = torch.exp(d.unsqueeze(-1) * A_t)                 # (batch, t, channels, N)
        inputs = (d * x).unsqueeze(-1) * B[:, s:s + block].unsqueeze(2)
        states: List[torch.Tensor] = []
        for a_t, x_t in zip(decay.unbind(1), inputs.unbind(1)):
            h = torch.addcmul(x_t, a_t, h)
            states.append(h)
        ys.append(torch.einsum("btcn,btn->btc", torch.stack(states, dim=1), C[:, s:s + block]))
    y = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
    return y if D is None else y + u * D


def selective_scan(u, delta, A, B, C, D=None, chunk: int = DEFAULT_CHUNK,
                   recompute: Optional[bool] = None):
    """Chunked selective scan; same arguments and result as `selective_scan_ref`.

    The sequence is cut into chunks of `chunk` tokens (the last one zero-padded: a token
    with delta = 0 neither decays the state nor adds to it). Within a chunk all outputs
    are computed at once from segment sums of the log-decays; a loop over the chunks
    carries the state across chunk borders. Chunks are processed in groups (all of a
    group's chunks at once) whose decay tensor stays under GROUP_ELEMENTS: on CPU a
    tensor above glibc's mmap threshold is page-faulted afresh on every use.

    recompute: keep only each group's inputs for backward and recompute the group there
        (activation checkpointing), so that the decays never outlive the forward; they
        take (chunk + 1) / 2 times the memory of all the states. Default (None): when
        autograd records and the decays of the whole sequence exceed RECOMPUTE_ELEMENTS.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    batch, length, channels = u.shape
    if A.dim() == 3:                                             # per sequence: broadcast over (k, p)
        A = A[:, None, None]
    T, N = chunk, A.shape[-1]
    K = -(-length // T)                                          # number of chunks
    skip = None if D is None else u * D
    if K * T != length:
        u, delta, B, C = (F.pad(x, (0, 0, 0, K * T - length)) for x in (u, delta, B, C))
    u, delta = u.reshape(batch, K, T, channels), delta.reshape(batch, K, T, channels)
    B, C = B.reshape(batch, K, T, N), C.reshape(batch, K, T, N)

    pairs = T * (T + 1) // 2                                     # (t, s) with s <= t
    per_chunk = batch * pairs * channels * N
    group = max(1, GROUP_ELEMENTS // per_chunk)
    if recompute is None:
        recompute = per_chunk * K > RECOMPUTE_ELEMENTS and torch.is_grad_enabled() and any(
            t.requires_grad for t in (u, delta, A, B, C))
    h = u.new_zeros(batch, channels, N)
    ys = []
    for k in range(0, K, group):
        args = (u[:, k:k + group], delta[:, k:k + group], A, B[:, k:k + group],
                C[:, k:k + group], h)
        y, h = checkpoint(_scan_chunks, *args, use_reentrant=False) if recompute \
            else _scan_chunks(*args)
        ys.append(y)
    y = (torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]).reshape(batch, K * T, channels)
    y = y[:, :length]
    return y if skip is None else y + skip


def _scan_chunks(u, delta, A, B, C, h):
    """A group of chunks: u, delta (b, k, T, c); B, C (b, k, T, N); h (b, c, N) the state
    before the group. Returns the outputs (b, k, T, c) and the state after the group."""
    T = u.shape[2]
    # Segment sums seg[t, s] = sum_{s < i <= t} delta[i] (per batch, chunk, channel): the
    # log-decay from token s to token t is seg * A <= 0. A masked cumsum over t, so each
    # entry is a sum of its own terms, never a difference of two large cumsums. Only the
    # pairs s <= t are kept, packed row by row along one axis p: nothing above the
    # diagonal is ever exponentiated.
    t_idx, s_idx = torch.tril_indices(T, T, device=u.device)
    after_s = torch.ones(T, T, dtype=torch.bool, device=u.device).tril(-1)   # i > s
    steps = delta.unsqueeze(3).expand(-1, -1, -1, T, -1).masked_fill(~after_s[:, :, None], 0)
    seg = steps.cumsum(dim=2)[:, :, t_idx, s_idx]              # (b, k, p, c)
    decay = (seg.unsqueeze(-1) * A).exp_()                     # (b, k, p, c, N)

    # Outputs from inside each chunk (zero incoming state):
    # y[t] = sum_{s <= t} (sum_n C[t, n] decay[t, s, :, n] B[s, n]) * (delta u)[s].
    # Contracting N first keeps the decays the only tensor with both p and N.
    du = delta * u
    cb = (C[:, :, t_idx] * B[:, :, s_idx]).unsqueeze(-1)        # (b, k, p, N, 1)
    w = torch.matmul(decay, cb).squeeze(-1)                     # (b, k, p, c)
    y = torch.zeros_like(du).index_add_(2, t_idx, w * du[:, :, s_idx])

    # A chunk's end state from zero start uses the decays to its last token (the last T
    # pairs); the whole chunk decays an incoming state by exp(sum(delta) * A).
    local_end = (decay[:, :, -T:] * (du.unsqueeze(-1) * B.unsqueeze(3))).sum(2)  # (b, k, c, N)
    from_start = (delta.cumsum(dim=2).unsqueeze(-1) * A).exp()  # (b, k, t, c, N)
    incoming = []
    for chunk_decay, chunk_end in zip(from_start[:, :, -1].unbind(1), local_end.unbind(1)):
        incoming.append(h)
        h = chunk_decay * h + chunk_end
    h0 = torch.stack(incoming, dim=1).unsqueeze(2)              # (b, k, 1, c, N)
    y = y + torch.matmul(from_start * h0, C.unsqueeze(-1)).squeeze(-1)
    return y, h


def run_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: Optional[torch.Tensor] = None, chunk: Optional[int] = None) -> torch.Tensor:
    """The selective scan as every SSM of the library runs it (SelectiveSSM, VMamba's SS2D):
    `selective_scan_ref`'s arguments (float32), its MACs declared in VMamba's convention.

    chunk: tokens per chunk; 0 runs the recurrence; None picks: the recurrence on CPU once one
    step's state (batch * channels * N) reaches RECURRENCE_STATE, unless autograd would keep
    more than RECURRENCE_GRAD_ELEMENTS state elements for backward (L steps of it: VMamba's
    stage 1 at batch 8 would keep ~1.2 GB per block), then the chunked scan, which recomputes
    its decays in backward; chunks of DEFAULT_CHUNK off CPU. Results do not depend on it.
    On CUDA with chunk None, Mamba's fused kernel runs instead when the `cuda` extra
    (mamba-ssm) is installed (cuda_kernel, kernel_scan; scan_backend names which ran).
    Under TorchScript only the recurrence is compiled (same results; chunk is ignored there)."""
    if torch.jit.is_scripting():
        return selective_scan_steps(u, delta, A, B, C, D)
    return _run_scan(u, delta, A, B, C, D, chunk)


@torch.jit.unused
def _run_scan(u, delta, A, B, C, D, chunk):
    """run_scan outside TorchScript: MACs declared, the algorithm picked per call."""
    batch, length, channels = u.shape
    n = A.shape[-1]
    with costs.declare_macs(scan_macs(batch, length, channels, n)):
        if u.is_meta:   # counting on the meta device: only the shape matters (no L-step loop)
            return u.new_empty(u.shape)
        kernel = cuda_kernel() if u.is_cuda and chunk is None else None
        if kernel is not None:
            return kernel_scan(kernel, u, delta, A, B, C, D)
        if chunk is None:
            chunk = _pick_chunk(u, delta, A, B, C)
        return selective_scan(u, delta, A, B, C, D, chunk=chunk) if chunk else selective_scan_steps(u, delta, A, B, C, D)


def _pick_chunk(u, delta, A, B, C) -> int:
    """run_scan's choice between the recurrence (0) and the chunked scan (its docstring)."""
    batch, length, channels = u.shape
    state = batch * channels * A.shape[-1]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    fits = not grad or state * length <= RECURRENCE_GRAD_ELEMENTS
    return 0 if state >= RECURRENCE_STATE and u.device.type == "cpu" and fits else DEFAULT_CHUNK


# On CUDA, run_scan uses Mamba's fused kernel when the `cuda` extra (mamba-ssm) is installed
# and imports; MAMBAOUT_SCAN=pytorch keeps the PyTorch scan (for comparisons and debugging).
SCAN_ENV = "MAMBAOUT_SCAN"
_KERNEL = []            # [selective_scan_fn or None], filled on first use


def cuda_kernel():
    """mamba-ssm's selective_scan_fn when it is installed, imports, and MAMBAOUT_SCAN is not
    'pytorch'; else None. A broken install (a wheel built for another torch or CUDA) counts as
    absent, with one warning."""
    if os.environ.get(SCAN_ENV, "").lower() == "pytorch":
        return None
    if not _KERNEL:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except ImportError:
            selective_scan_fn = None
        except Exception as e:   # an ABI mismatch raises OSError / RuntimeError at import
            log.warning("mamba-ssm is installed but does not load (%s); using the PyTorch scan",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            selective_scan_fn = None
        _KERNEL.append(selective_scan_fn)
    return _KERNEL[0]


def has_selective_scan(model: nn.Module) -> bool:
    """Whether `model` runs a selective scan (SelectiveSSM, VMamba's SS2D, ...)."""
    return any(getattr(m, "export_unsupported", None) is EXPORT_UNSUPPORTED for m in model.modules())


def scan_backend(device) -> str:
    """Which selective scan run_scan uses on `device` by default (benchmarks record it)."""
    if torch.device(device).type == "cuda" and cuda_kernel() is not None:
        return "mamba-ssm selective_scan_fn (CUDA kernel)"
    return "pytorch (recurrence / chunked)"


def kernel_scan(kernel, u, delta, A, B, C, D=None):
    """`selective_scan_ref`'s arguments and result through a kernel with mamba-ssm's
    selective_scan_fn interface: u, delta (batch, channels, L); A (channels, N); B, C (batch,
    N, L) or, grouped, (batch, groups, N, L) with each group's B / C shared by channels / groups
    consecutive channels; D (channels,). Per-sequence parameters (A of shape (batch, channels,
    N), VMamba's directions folded into the batch) become one sequence of batch * channels
    channels with one B / C group per original sequence, so any caller of run_scan fits."""
    batch, length, channels = u.shape
    seq = lambda t: t.transpose(1, 2).contiguous()                     # (b, L, c) -> (b, c, L)
    if A.dim() == 3:
        u_, delta_ = (seq(t).reshape(1, batch * channels, length) for t in (u, delta))
        B_, C_ = (seq(t).unsqueeze(0) for t in (B, C))                 # (1, batch, N, L)
        D_ = None if D is None else D.expand(batch, 1, channels).reshape(batch * channels)
        y = kernel(u_, delta_, A.reshape(batch * channels, -1).contiguous(), B_, C_, D_)
        return y.reshape(batch, channels, length).transpose(1, 2)
    D_ = None if D is None else D.reshape(channels)
    return kernel(seq(u), seq(delta), A.contiguous(), seq(B), seq(C), D_).transpose(1, 2)


def scan_macs(batch: int, length: int, channels: int, d_state: int) -> int:
    """VMamba's selective-scan convention: 9*L*C*N + L*C (D skip), per direction."""
    return batch * length * channels * (9 * d_state + 1)


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


@torch.no_grad()
def init_mamba_ssm(dt_weight, dt_bias, A_log, D, dt_rank: int, dt_range=(1e-3, 1e-1, 1e-4)):
    """Mamba's initialisation of an SSM's parameters, in place (SelectiveSSM, VMamba's SS2D): the
    dt projection's weight uniform in +-dt_rank**-0.5, its bias the inverse softplus of dt drawn
    log-uniformly in [dt_min, dt_max] and floored at dt_init_floor (dt_range); A_log = log(1..N)
    for every channel (S4D-real); D = 1. Any leading shape (VMamba stacks its 4 directions)."""
    dt_min, dt_max, floor = dt_range
    nn.init.uniform_(dt_weight, -dt_rank ** -0.5, dt_rank ** -0.5)
    log_dt = torch.rand(dt_bias.shape, device=dt_bias.device) * (math.log(dt_max) - math.log(dt_min)) \
        + math.log(dt_min)
    dt_bias.copy_(_inverse_softplus(log_dt.exp().clamp(min=floor)))
    n = A_log.shape[-1]
    A_log.copy_(torch.arange(1, n + 1, dtype=torch.float32, device=A_log.device).log().expand_as(A_log))
    D.fill_(1.0)


@register_notrace_module
class SelectiveSSM(nn.Module):
    """Mamba's selective SSM as a token mixer on (batch, L, channels) sequences.

    Parameters and their initialisation follow Mamba:
      x_proj: Linear(channels, dt_rank + 2 * d_state, bias=False) -> (dt, B, C);
      dt_proj: Linear(dt_rank, channels); delta = softplus(dt_proj(dt)); its bias is the
          inverse softplus of dt drawn log-uniformly in [dt_min, dt_max] (floored at
          dt_init_floor), its weight uniform in +-dt_rank**-0.5;
      A = -exp(A_log), A_log = log(1..d_state) for every channel (S4D-real); D = 1.
    dt_rank: Mamba uses ceil(d_model / 16) of the model width while the SSM runs on the
        expanded inner channels, so callers pass it; default ceil(channels / 16).
    bidirectional: a second, independent set of parameters (x_proj_b, dt_proj_b, A_log_b,
        D_b) scans the reversed sequence and the two outputs are summed, as in Vim.
        Otherwise the mixer is causal: output t depends on tokens <= t only.
    chunk: tokens per chunk of the chunked scan; 0 runs the recurrence; None (default)
        picks per call: the recurrence on CPU when batch * dim * d_state reaches
        RECURRENCE_STATE, else chunks of DEFAULT_CHUNK. Results do not depend on it.

    Our choices: the scan runs in float32 whatever the input dtype (as Mamba's kernel
    does) and the output is cast back; the model-level init skips dt_proj (flagged with
    `_keep_init`) so that Mamba's dt init survives. An FX leaf (timm's notrace registry) and
    scriptable (module docstring).
    """

    export_unsupported = EXPORT_UNSUPPORTED

    def __init__(self, dim: int, d_state: int = 16, dt_rank: Optional[int] = None,
                 bidirectional: bool = False, chunk: Optional[int] = None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        super().__init__()
        self.dim = dim
        self.d_state = d_state
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(dim / 16)
        self.bidirectional = bidirectional
        self.chunk = chunk
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        for sfx in ("", "_b") if bidirectional else ("",):
            self.add_module("x_proj" + sfx, nn.Linear(dim, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, dim)
            dt_proj._keep_init = True
            self.add_module("dt_proj" + sfx, dt_proj)
            self.register_parameter("A_log" + sfx, nn.Parameter(torch.empty(dim, d_state)))
            self.register_parameter("D" + sfx, nn.Parameter(torch.empty(dim)))
        self.reset_parameters()

    def _suffixes(self):
        return ("", "_b") if self.bidirectional else ("",)

    @torch.no_grad()
    def reset_parameters(self):
        """Mamba's init of dt_proj, A_log and D (x_proj keeps nn.Linear's default)."""
        for sfx in self._suffixes():
            dt_proj = getattr(self, "dt_proj" + sfx)
            init_mamba_ssm(dt_proj.weight, dt_proj.bias, getattr(self, "A_log" + sfx), getattr(self, "D" + sfx),
                           self.dt_rank, self._dt_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each direction's parameters by name (TorchScript takes no computed attribute names;
        # hasattr on a module attribute is resolved when it compiles).
        y = self._scan(x, self.x_proj(x), self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D)
        if hasattr(self, "x_proj_b"):
            xb = x.flip(1)
            y = y + self._scan(xb, self.x_proj_b(xb), self.dt_proj_b.weight, self.dt_proj_b.bias, self.A_log_b,
                               self.D_b).flip(1)
        return y

    def _scan(self, x: torch.Tensor, proj: torch.Tensor, dt_weight: torch.Tensor, dt_bias: torch.Tensor,
              A_log: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        dt, B, C = proj.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(F.linear(dt, dt_weight, dt_bias))
        A = -torch.exp(A_log.float())
        y = run_scan(x.float(), delta.float(), A, B.float(), C.float(), D.float(), chunk=self.chunk)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"bidirectional={self.bidirectional}, chunk={self.chunk}")


def compare_scans(shapes=((1, 64, 128), (2, 64, 384), (8, 64, 128), (64, 64, 384), (1, 1024, 128)),
                  chunks=(2, 4, 16), d_state=16, repeats=9, backward=False):
    """Median ms of the recurrence and the chunked scan per shape, timed interleaved."""
    import time
    results = {}
    for batch, length, channels in shapes:
        g = torch.Generator().manual_seed(0)
        args = [torch.randn(batch, length, channels, generator=g),
                F.softplus(torch.randn(batch, length, channels, generator=g) - 2),
                -torch.rand(channels, d_state, generator=g) * 16 - 0.1,
                torch.randn(batch, length, d_state, generator=g),
                torch.randn(batch, length, d_state, generator=g), torch.randn(channels, generator=g)]
        if backward:
            args = [a.requires_grad_() for a in args]
        fns = {"recurrence": lambda: selective_scan_ref(*args)}
        fns.update({f"T={t}": (lambda t=t: selective_scan(*args, chunk=t)) for t in chunks})
        times = {name: [] for name in fns}
        with torch.set_grad_enabled(backward):
            for i in range(repeats + 1):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    y = fn()
                    if backward:
                        y.sum().backward()
                    if i:                                   # the first round warms up
                        times[name].append((time.perf_counter() - start) * 1e3)
        results[(batch, length, channels)] = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return results


if __name__ == "__main__":
    import sys
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ms (median)")
    for shape, row in compare_scans(backward="--backward" in sys.argv).items():
        print(shape, "  ".join(f"{k} {v:.1f}" for k, v in row.items()))
