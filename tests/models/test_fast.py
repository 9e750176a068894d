"""The fast Gated CNN path equals the reference formulation (Algorithm 1)."""
import threading

import pytest
import torch

import mambaout
from mambaout.models.blocks import GatedCNNBlock
from mambaout.models.fast import gated_cnn_fast
from helpers import assert_fp32_close, randomize, set_fast


VARIANTS = ["mambaout_femto", "mambaout_small_rw", "mambaout_base_wide_rw"]  # plain / layer scale / silu + conv_ratio 1.5


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("size", [(64, 64), (57, 45)])
def test_eval_logits_match_reference(name, size):
    model = randomize(mambaout.create_model(name, num_classes=11, depths=(1, 1, 2, 1))).eval()
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        fast = model(x)
        ref = set_fast(model, False)(x)
    assert (fast - ref).abs().max().item() <= 1e-4
    assert fast.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("name", VARIANTS)
def test_train_mode_forward_and_gradients_match(name):
    fast = randomize(mambaout.create_model(name, num_classes=5, depths=(1, 1, 2, 1), drop_path_rate=0.3))
    ref = set_fast(randomize(mambaout.create_model(name, num_classes=5, depths=(1, 1, 2, 1),
                                                   drop_path_rate=0.3)), False)
    x = torch.randn(4, 3, 48, 40)
    torch.manual_seed(7)
    yf = fast(x)
    torch.manual_seed(7)   # same drop-path draws, in the same order
    yr = ref(x)
    assert (yf - yr).abs().max().item() <= 1e-4
    w = torch.randn_like(yf)
    (yf * w).sum().backward()
    (yr * w).sum().backward()
    for (n, pf), pr in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(pf.grad, pr.grad, rtol=1e-3, atol=1e-4), n


@pytest.mark.parametrize("kw", [dict(), dict(conv_ratio=1.5, ls_init_value=0.5, kernel_size=3),
                                dict(expansion_ratio=1.0)])  # the last has no identity channels
def test_gradcheck_float64(kw):
    blk = randomize(GatedCNNBlock(6, **kw)).double()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gated_cnn_fast(blk, t), (x,))
    ref = randomize(GatedCNNBlock(6, **kw)).double()
    x1 = x.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    gated_cnn_fast(blk, x1).pow(2).sum().backward()
    ref.forward_reference(x2).pow(2).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-10)
    for (n, a), b in zip(blk.named_parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-10), n


def test_inference_buffers_never_leak_into_outputs():
    model = randomize(mambaout.create_model("mambaout_femto")).eval()
    x1, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first = [t.clone() for t in model.forward_intermediates(x1, intermediates_only=True)]
        kept = model.forward_intermediates(x1, intermediates_only=True)
        model(x2)
        model(x2)
    for a, b in zip(first, kept):
        assert torch.equal(a, b)
    # forward hooks on blocks see the values the reference computes
    seen = {}
    blocks = model.stages[2].blocks
    for j, b in enumerate(blocks):
        b.register_forward_hook(lambda m, i, o, j=j: seen.__setitem__(j, o))
    with torch.no_grad():
        model(x1)
        set_fast(model, False)
        ref = {}
        h = model.stem(x1)
        for s in model.stages[:2]:
            h = s(h)
        h = model.stages[2].downsample(h)
        for j, b in enumerate(blocks):
            h = b.forward_reference(h)
            ref[j] = h
    for j in ref:
        assert (seen[j] - ref[j]).abs().max() <= 1e-4


def test_fold_cache_follows_weight_changes():
    model = randomize(mambaout.create_model("mambaout_femto")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        other = randomize(mambaout.create_model("mambaout_femto"), seed=5)
        model.load_state_dict(other.state_dict())
        assert (model(x) - set_fast(other.eval(), False)(x)).abs().max() <= 1e-4
        model.stages[0].blocks[0].norm.weight.mul_(2)
        got = model(x)
        assert (got - set_fast(model, False)(x)).abs().max() <= 1e-4


def test_threads_do_not_share_buffers():
    model = randomize(mambaout.create_model("mambaout_femto")).eval()
    xs = [torch.randn(2, 3, 64, 64) for _ in range(4)]
    with torch.no_grad():
        expected = [model(x) for x in xs]
    results = {}

    def work(i):
        with torch.no_grad():
            for _ in range(3):
                results[i] = model(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    # a shared buffer would hand one thread another's activations (differences of order 1); the
    # threads' own thread pools may split the GEMMs otherwise, which moves only the rounding
    for i in range(4):
        assert_fp32_close(results[i], expected[i])


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("kw", [dict(), dict(conv_ratio=1.5, ls_init_value=0.5, kernel_size=5),
                                dict(expansion_ratio=1.0), dict(act_layer=torch.nn.SiLU)])
def test_block_inference_paths(monkeypatch, onednn, kw):
    """Both inference plans (oneDNN-fused and plain in-place) equal the reference block."""
    from mambaout.models import fast
    if not onednn:
        monkeypatch.setattr(fast, "_use_onednn", lambda blk, x: False)
    elif not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN not available in this torch build")
    blk = randomize(GatedCNNBlock(24, **kw)).eval()
    x = torch.randn(2, 9, 7, 24)
    with torch.no_grad():
        got = gated_cnn_fast(blk, x)
        ref = blk.forward_reference(x)
    assert (got - ref).abs().max().item() <= 1e-4


def test_cpu_batch_slicing_is_exact():
    model = randomize(mambaout.create_model("mambaout_femto")).eval()
    x = torch.randn(5, 3, 96, 96)
    with torch.no_grad():
        model.cpu_slice_bytes = 1            # one sample per slice
        sliced = model(x)
        model.cpu_slice_bytes = None
        whole = model(x)
    # one sample per GEMM instead of five: the library may pick another kernel (float order)
    assert_fp32_close(sliced, whole)


def test_autocast_inference_uses_autocast_safe_path():
    model = mambaout.create_model("mambaout_femto").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    with torch.no_grad():
        ref = model(x)
    assert y.shape == (2, 1000) and (y.float() - ref).abs().max() < 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_row_normalization_equals_layer_norm(dtype, offset):
    """The inference plan's LayerNorm (GroupNorm's kernel in fp32, one group per row) equals
    F.layer_norm, also on rows whose mean dwarfs their spread."""
    from mambaout.models.fast import _normalize_rows
    x = (torch.randn(4001, 96) * 0.5 + offset).to(dtype)
    got = _normalize_rows(x, 1e-6)
    ref = torch.nn.functional.layer_norm(x, (96,), None, None, 1e-6)
    assert got.dtype == dtype and got.shape == x.shape
    assert (got.float() - ref.float()).abs().max().item() <= (1e-5 if dtype == torch.float32 else 0.0)
