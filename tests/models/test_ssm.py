"""The selective SSM: chunked scan vs the recurrence, causality, MAC convention."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mambaout.models import costs
from mambaout.analysis.complexity import MacCounter
from mambaout.models.ssm import SelectiveSSM, scan_macs, selective_scan, selective_scan_ref, selective_scan_steps


def scan_inputs(batch, length, channels, d_state, dtype=torch.float32, big=False):
    """Inputs shaped and signed like SelectiveSSM's: delta > 0, A < 0."""
    g = torch.Generator().manual_seed(length * 1000 + channels)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    scale = 20.0 if big else 1.0
    u = r(batch, length, channels)
    delta = F.softplus(r(batch, length, channels) * scale - 2)
    A = -torch.rand(channels, d_state, generator=g, dtype=dtype) * (50 if big else 8) - 0.05
    return [u, delta, A, r(batch, length, d_state), r(batch, length, d_state), r(channels)]


def _grads(fn, inputs):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*inputs)
    y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))  # any fixed weights
    return y.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("length", [1, 7, 33, 50])
@pytest.mark.parametrize("recompute", [False, True])
def test_chunked_equals_recurrence_float32(length, recompute):
    inputs = scan_inputs(2, length, 12, 5)
    y_ref, g_ref = _grads(selective_scan_ref, inputs)
    y, g = _grads(lambda *a: selective_scan(*a, chunk=16, recompute=recompute), inputs)
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max())
    for name, a, b in zip("u delta A B C D".split(), g, g_ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max()), name


@pytest.mark.parametrize("length", [1, 7, 300])
def test_batched_recurrence_equals_the_reference(length, monkeypatch):
    """selective_scan_steps (run_scan's recurrence) in blocks of tokens equals the step-by-step
    reference in forward and backward, also when the sequence spans several blocks."""
    import mambaout.models.ssm as ssm
    monkeypatch.setattr(ssm, "GROUP_ELEMENTS", 2 * 12 * 5 * 64)          # blocks of 64 tokens
    inputs = scan_inputs(2, length, 12, 5)
    y_ref, g_ref = _grads(selective_scan_ref, inputs)
    y, g = _grads(selective_scan_steps, inputs)
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max())
    for name, a, b in zip("u delta A B C D".split(), g, g_ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max()), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_sequence_parameters_equal_separate_scans(dtype):
    """A (batch, channels, N) and D (batch, 1, channels): each sequence scans with its own A and
    D (VMamba's four directions folded into the batch), forward and backward, chunked or not,
    equal to scanning each sequence alone. bf16 inputs are scanned in fp32 (as SelectiveSSM
    and VMamba do), so the comparison is of the same float32 computation."""
    batch, length, channels, n = 4, 37, 6, 5
    u, delta, _, B, C, _ = scan_inputs(batch, length, channels, n)
    g = torch.Generator().manual_seed(1)
    A = -torch.rand(batch, channels, n, generator=g) * 8 - 0.05
    D = torch.randn(batch, 1, channels, generator=g)
    u = u.to(dtype).float()
    alone = lambda *a: torch.cat([selective_scan_ref(u_[None], d_[None], a_, b_[None], c_[None], dd_[0])
                                  for u_, d_, a_, b_, c_, dd_ in zip(*a)])
    y_ref, g_ref = _grads(alone, [u, delta, A, B, C, D])
    for fn in (selective_scan_ref, selective_scan_steps, lambda *a: selective_scan(*a, chunk=4),
               lambda *a: selective_scan(*a, chunk=4, recompute=True)):
        y, grads = _grads(fn, [u, delta, A, B, C, D])
        assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max())
        for name, a, b in zip("u delta A B C D".split(), grads, g_ref):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max()), name


@pytest.mark.parametrize("chunk", [1, 3, 4, 16, 64])
def test_chunked_equals_recurrence_float64(chunk):
    inputs = scan_inputs(2, 50, 6, 4, dtype=torch.float64)
    y_ref, g_ref = _grads(selective_scan_ref, inputs)
    y, g = _grads(lambda *a: selective_scan(*a, chunk=chunk), inputs)
    assert torch.allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_chunked_is_stable_with_strong_decays():
    # delta * |A| up to ~1e3 per token: exp of a positive number anywhere would overflow,
    # a difference of cumsums would lose every digit.
    inputs = scan_inputs(2, 40, 6, 4, big=True)
    y_ref = selective_scan_ref(*inputs)
    y = selective_scan(*inputs, chunk=8)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max())
    y64 = selective_scan(*[t.double() for t in inputs], chunk=8)
    assert torch.allclose(y64, selective_scan_ref(*[t.double() for t in inputs]), rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    inputs = [t.requires_grad_() for t in scan_inputs(1, 5, 3, 2, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk=2), inputs)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk=2, recompute=True), inputs)


def test_without_skip_and_bad_chunk():
    u, delta, A, B, C, _ = scan_inputs(1, 9, 4, 3)
    y_ref = selective_scan_ref(u, delta, A, B, C)
    assert torch.allclose(selective_scan(u, delta, A, B, C), y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max())
    with pytest.raises(ValueError):
        selective_scan(u, delta, A, B, C, chunk=0)


def test_selective_ssm_init_and_names():
    ssm = SelectiveSSM(32, d_state=8, dt_rank=3, bidirectional=True)
    names = {k: tuple(v.shape) for k, v in ssm.state_dict().items()}
    for sfx in ("", "_b"):
        assert names[f"x_proj{sfx}.weight"] == (3 + 16, 32)
        assert names[f"dt_proj{sfx}.weight"] == (32, 3) and names[f"dt_proj{sfx}.bias"] == (32,)
        assert names[f"A_log{sfx}"] == (32, 8) and names[f"D{sfx}"] == (32,)
        assert torch.allclose(getattr(ssm, "A_log" + sfx), torch.arange(1, 9.0).log().expand(32, -1))
        assert torch.equal(getattr(ssm, "D" + sfx), torch.ones(32))
        dt = F.softplus(getattr(ssm, "dt_proj" + sfx).bias)
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
        assert getattr(ssm, "dt_proj" + sfx).weight.abs().max() <= 3 ** -0.5
    assert "x_proj_b.weight" not in SelectiveSSM(32).state_dict()
    assert SelectiveSSM(40).dt_rank == math.ceil(40 / 16)


def test_selective_ssm_same_output_for_every_scan():
    ssm = SelectiveSSM(16, d_state=4, dt_rank=2, bidirectional=True)
    x = torch.randn(2, 13, 16)
    outs = []
    for chunk in (0, 1, 4, 16, None):
        ssm.chunk = chunk
        outs.append(ssm(x))
    for y in outs[1:]:   # other chunkings sum in another order: within 1e-5 of the output's scale
        assert torch.allclose(y, outs[0], rtol=1e-5, atol=1e-5 * outs[0].abs().max().item())


def _changed_positions(module, x, t):
    """Positions whose output changes when token t of x changes."""
    x2 = x.clone()
    x2[:, t] += 1.0
    with torch.no_grad():
        diff = (module(x2) - module(x)).abs().amax(dim=(0, 2))
    return (diff > 1e-6).nonzero().flatten().tolist()


def test_selective_ssm_is_causal_and_bidirectional_is_not():
    x = torch.randn(2, 20, 16)
    causal = SelectiveSSM(16, d_state=4)
    for t in (0, 7, 19):
        assert _changed_positions(causal, x, t) == list(range(t, 20))
    both = SelectiveSSM(16, d_state=4, bidirectional=True)
    assert _changed_positions(both, x, 7) == list(range(20))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_mac_convention_independent_of_chunk(bidirectional):
    batch, length, dim, d_state, rank = 2, 10, 32, 8, 3
    x = torch.randn(batch, length, dim, device="meta")
    ssm = SelectiveSSM(dim, d_state=d_state, dt_rank=rank, bidirectional=bidirectional).to("meta")
    directions = 2 if bidirectional else 1
    expected_scan = directions * batch * length * dim * (9 * d_state + 1)
    expected_linear = directions * batch * length * (dim * (rank + 2 * d_state) + rank * dim)
    assert scan_macs(batch, length, dim, d_state) * directions == expected_scan
    for chunk in (0, 1, 4, 16, None):
        ssm.chunk = chunk
        counter = MacCounter()
        with torch.no_grad(), counter:
            ssm(x)
        assert counter.by_op["selective_scan"] == expected_scan, chunk
        assert counter.total == expected_scan + expected_linear, chunk


def test_declare_macs():
    a, b = torch.randn(4, 5), torch.randn(5, 6)
    with costs.declare_macs(7):          # no counter: nothing happens
        a @ b
    counter = MacCounter()
    with counter:
        a @ b                                 # counted: 4 * 5 * 6
        with costs.declare_macs(100, "custom"):
            a @ b                             # replaced by 100
            with costs.declare_macs(1000):
                a @ b                         # nested: only the outermost counts
    assert counter.total == 120 + 100
    assert counter.by_op == {"mm": 120, "custom": 100}
    assert not costs.ACTIVE


MEMORY_SCRIPT = """
import resource, torch, torch.nn.functional as F
from mambaout.models.ssm import run_scan
b, L, e, n = 32, 3136, 192, 16          # VMamba-T stage 1: batch 8 x 4 directions, 56 x 56 tokens, E = 192
g = torch.Generator().manual_seed(0)
u = torch.randn(b, L, e, generator=g, requires_grad=True)
d = F.softplus(torch.randn(b, L, e, generator=g) - 2).requires_grad_()
A = (-torch.rand(b, e, n, generator=g) * 8 - 0.1).requires_grad_()
B, C = (torch.randn(b, L, n, generator=g, requires_grad=True) for _ in range(2))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_scan(u, d, A, B, C, None).sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_stage1_scan_memory_is_bounded():
    """Forward and backward of the scan at VMamba-T's stage-1 sizes at batch 8 grow the process
    by well under 3 GB (measured 1.4 GB here, inputs 0.23 GB); keeping every step's state for
    backward would take 1.2 GB per state tensor, several times over."""
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip()) < 3000, r.stdout


def _mamba_ssm_semantics(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """A stand-in for mamba-ssm's selective_scan_fn, written from its documented interface:
    u, delta (batch, dim, L); A (dim, N); B, C (batch, N, L) or grouped (batch, G, N, L), group
    g serving dim / G consecutive channels; D (dim,). Checks the layout it is given."""
    assert u.dim() == 3 and delta.shape == u.shape and A.shape == (u.shape[1], A.shape[1])
    assert all(t.stride(-1) == 1 for t in (u, delta, B, C)), "the kernel wants contiguous L"
    assert z is None and delta_bias is None and not delta_softplus and not return_last_state
    batch, dim, length = u.shape
    if B.dim() == 4:
        B, C = (t.repeat_interleave(dim // t.shape[1], dim=1) for t in (B, C))   # (b, dim, N, L)
    else:
        B, C = (t.unsqueeze(1).expand(-1, dim, -1, -1) for t in (B, C))
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return y if D is None else y + u * D[:, None]


@pytest.mark.parametrize("per_sequence", [False, True])
def test_kernel_scan_maps_to_mamba_ssm_layout(per_sequence):
    """kernel_scan (run_scan's path to mamba-ssm's CUDA kernel) hands the kernel its layout and
    gets selective_scan_ref's result back, forward and backward, for shared parameters and for
    per-sequence ones (VMamba's directions folded into the batch)."""
    from mambaout.models.ssm import kernel_scan
    batch, length, channels, n = 4, 19, 6, 5
    u, delta, A, B, C, D = scan_inputs(batch, length, channels, n)
    if per_sequence:
        g = torch.Generator().manual_seed(2)
        A = -torch.rand(batch, channels, n, generator=g) * 8 - 0.05
        D = torch.randn(batch, 1, channels, generator=g)
    y_ref, g_ref = _grads(selective_scan_ref, [u, delta, A, B, C, D])
    y, grads = _grads(lambda *a: kernel_scan(_mamba_ssm_semantics, *a), [u, delta, A, B, C, D])
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max())
    for name, a, b in zip("u delta A B C D".split(), grads, g_ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max()), name


def test_cuda_kernel_is_optional(monkeypatch):
    """Without mamba-ssm (or with MAMBAOUT_SCAN=pytorch, or a broken install) the PyTorch scan
    runs and scan_backend says so; with it, CUDA tensors would use the kernel."""
    import types
    import mambaout.models.ssm as ssm

    def backend_with(module, env=None):
        monkeypatch.setattr(ssm, "_KERNEL", [])
        monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", module)
        monkeypatch.setitem(sys.modules, "mamba_ssm.ops", types.ModuleType("mamba_ssm.ops"))
        monkeypatch.setitem(sys.modules, "mamba_ssm", types.ModuleType("mamba_ssm"))
        if env:
            monkeypatch.setenv(ssm.SCAN_ENV, env)
        else:
            monkeypatch.delenv(ssm.SCAN_ENV, raising=False)
        return ssm.scan_backend("cuda"), ssm.scan_backend("cpu")

    fake = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    fake.selective_scan_fn = _mamba_ssm_semantics
    assert backend_with(fake) == ("mamba-ssm selective_scan_fn (CUDA kernel)", "pytorch (recurrence / chunked)")
    assert backend_with(fake, env="pytorch")[0].startswith("pytorch")
    assert backend_with(None)[0].startswith("pytorch")              # None in sys.modules: ImportError


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_scan_on_cuda_equals_the_reference():
    """On CUDA run_scan uses mamba-ssm's kernel if installed, else the chunked scan: either way
    the reference's result, forward and backward."""
    from mambaout.models.ssm import run_scan
    inputs = [t.cuda() for t in scan_inputs(2, 300, 64, 16)]
    y_ref, g_ref = _grads(selective_scan_ref, [t.cpu() for t in inputs])
    y, g = _grads(run_scan, inputs)
    assert torch.allclose(y.cpu(), y_ref, rtol=1e-4, atol=1e-4 * y_ref.abs().max())
    for name, a, b in zip("u delta A B C D".split(), g, g_ref):
        assert torch.allclose(a.cpu(), b, rtol=1e-3, atol=1e-3 * b.abs().max()), name
