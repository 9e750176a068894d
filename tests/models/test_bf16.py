"""bf16 inference (issue 13): the folded, fused plan of the fast path with bf16 weights and under
CPU autocast, against the fp32 reference (Algorithm 1)."""
import pytest
import torch

import mambaout
from mambaout.models import fast
from mambaout.models.blocks import GatedCNNBlock
from helpers import randomize, set_fast

BF16_EPS = 2 ** -8  # bf16 keeps 8 significant bits


def relative_error(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture
def plan_calls(monkeypatch):
    """Counts the inference plan's runs per activation dtype."""
    calls = []
    for name in ("_inference", "_inference_onednn"):
        real = getattr(fast, name)

        def spy(blk, x, real=real, name=name):
            calls.append((name, x.dtype))
            return real(blk, x)
        monkeypatch.setattr(fast, name, spy)
    return calls


@pytest.mark.parametrize("kw", [dict(), dict(conv_ratio=1.5, ls_init_value=0.5, kernel_size=3),
                                dict(expansion_ratio=1.0)])
def test_block_bf16_weights_and_autocast(kw, plan_calls):
    blk = randomize(GatedCNNBlock(48, **kw)).eval()
    x = torch.randn(2, 7, 9, 48)
    with torch.no_grad():
        ref = blk.forward_reference(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = blk(x)
        low = randomize(GatedCNNBlock(48, **kw)).eval().to(torch.bfloat16)
        weights = low(x.to(torch.bfloat16))
        ref_low = low.float().forward_reference(x)
    assert auto.dtype == torch.bfloat16 and weights.dtype == torch.bfloat16
    # a few bf16 roundings (input, folded weights, the GEMM outputs): within ~10 units of the last place
    assert relative_error(auto, ref) < 10 * BF16_EPS
    assert relative_error(weights, ref_low) < 10 * BF16_EPS
    assert {dt for _, dt in plan_calls} == {torch.bfloat16}
    if fast._mkldnn_bf16():
        assert {name for name, _ in plan_calls} == {"_inference_onednn"}
    # the fp32 plan is still exact, and both plans stay cached side by side
    with torch.no_grad():
        assert (blk(x) - ref).abs().max().item() <= 1e-4
    assert set(fast.cached_plans(blk)) == {torch.float32, torch.bfloat16}
    # the caches live outside the module: a copy of a model that has run still copies
    import copy
    copy.deepcopy(blk)


@pytest.mark.parametrize("size", [(64, 64), (97, 75)])
def test_model_bf16_logits_and_ranking(size):
    torch.manual_seed(0)
    model = randomize(mambaout.create_model("mambaout_femto", num_classes=100)).eval()
    x = torch.randn(4, 3, *size)
    with torch.no_grad():
        ref = set_fast(model, False)(x)
        set_fast(model, True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(x)
        low = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    for out in (auto, low):
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert relative_error(out, ref) < 0.05
        cos = torch.nn.functional.cosine_similarity(out.float(), ref, dim=1)
        assert cos.min().item() > 0.998
        assert (out.float().argmax(1) == ref.argmax(1)).float().mean().item() >= 0.75


def test_weight_change_rebuilds_the_bf16_plan():
    blk = randomize(GatedCNNBlock(32)).eval()
    x = torch.randn(1, 5, 5, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = blk(x)
        blk.fc2.bias.add_(1.0)
        after = blk(x)
    assert (after.float() - before.float() - 1.0).abs().max().item() < 0.1


def test_training_under_autocast_is_untouched(plan_calls):
    blk = randomize(GatedCNNBlock(32)).train()
    x = torch.randn(2, 5, 5, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        blk(x).float().sum().backward()
    assert plan_calls == [] and x.grad is not None
