"""iLLaMA-T (causal and fully visible): iLLaMA's size and MACs, its state-dict layout and
released-checkpoint wrapper, RoPE and the post-softmax (soft) mask as its code computes them,
timm's interface and one-line errors."""
import argparse

import pytest
import torch

import mambaout
from helpers import randomize
from mambaout.analysis.complexity import count_macs, measure
from mambaout.models.illama import (ILLaMA, apply_rope, masked_attention, paper_macs, rope_angles,
                                    soft_mask, swiglu_hidden)

SMALL = dict(img_size=32, patch_size=8, dim=24, depth=2, num_heads=2)   # a CPU-sized iLLaMA


def closed_form_params(dim=192, depth=12, patch=16, img=224, hidden=512, classes=1000):
    """iLLaMA-T's parameters written out: patch conv (+bias), class token, position embedding,
    per block 2 RMSNorm weights, qkv (+bias), proj (+bias), three bias-free SwiGLU linears, the
    final RMSNorm and the head."""
    tokens = (img // patch) ** 2 + 1
    block = 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 3 * dim * hidden
    return (3 * patch * patch * dim + dim) + dim + tokens * dim + depth * block + dim + (dim * classes + classes)


@pytest.mark.parametrize("name", ["illama_tiny", "illama_tiny_causal"])
def test_params_and_macs_are_illamas(name):
    """5,701,096 parameters (iLLaMA's training log prints n_parameters 5701096; README and Table
    11: 5.7M); MACs at 224: our counter equals iLLaMA's convention written out (paper_macs:
    convs, linears and both attention matmuls), 1.2537G -> 1.3G as its README prints. Leaving the
    attention matmuls out would give 1.07G (1.1G), so the printed 1.3G counts them."""
    m = measure(name)
    v = mambaout.get_variant(name)
    assert m["params"] == closed_form_params() == 5_701_096 and m["params_m"] == v.paper_params_m == 5.7
    assert m["macs"] == paper_macs() == 1_253_683_200 and m["macs_g"] == v.paper_macs_g == 1.3
    assert round(paper_macs(attention_matmuls=False) / 1e9, 1) == 1.1
    assert swiglu_hidden(192) == 512 and swiglu_hidden(384) == 1024    # iLLaMA's Mlp: int(2 * 4D / 3) -> 256k
    with torch.device("meta"):
        small = ILLaMA(num_classes=10, causal=True, **SMALL)
    assert count_macs(small, 32) == paper_macs(32, 8, 24, 2, swiglu_hidden(24), num_classes=10)


def test_official_key_names_and_shapes():
    with torch.device("meta"):
        sd = mambaout.create_model("illama_tiny_causal").state_dict()
    expected = {"patch_embed.proj.weight": (192, 3, 16, 16), "patch_embed.proj.bias": (192,),
                "cls_token": (1, 1, 192), "pos_embed": (1, 197, 192), "norm.weight": (192,),
                "head.weight": (1000, 192), "head.bias": (1000,)}
    for i in range(12):
        b = f"blocks.{i}."
        expected.update({b + "norm1.weight": (192,), b + "attn.qkv.weight": (576, 192), b + "attn.qkv.bias": (576,),
                         b + "attn.proj.weight": (192, 192), b + "attn.proj.bias": (192,), b + "norm2.weight": (192,),
                         b + "mlp.fc1.weight": (512, 192), b + "mlp.fc2.weight": (192, 512),
                         b + "mlp.fc3.weight": (512, 192)})
    assert {k: tuple(t.shape) for k, t in sd.items()} == expected


def _official_rope(x, n):
    """iLLaMA's RoPE as its code computes it: complex frequencies (torch.polar) over positions
    0..n-1, the channel pairs viewed as complex numbers, x of shape (B, N, H, head_dim)."""
    hd = x.shape[-1]
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    cis = torch.polar(torch.ones(n, hd // 2), torch.outer(torch.arange(n), freqs).float())
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis.view(1, n, 1, hd // 2)).flatten(3)


def test_rope_is_illamas_complex_rotation():
    torch.manual_seed(0)
    x = torch.randn(2, 197, 3, 64)                      # (B, N, H, head_dim), the class token at N - 1
    ours = apply_rope(x.transpose(1, 2), *rope_angles(197, 64)).transpose(1, 2)
    assert torch.allclose(ours, _official_rope(x, 197), atol=1e-5, rtol=1e-5)


def _naive_attention(attn_module, x, rope, mask):
    """One query at a time: softmax over ALL keys, then the mask, no renormalisation."""
    b, n, d = x.shape
    h, hd = attn_module.num_heads, attn_module.head_dim
    q, k, v = attn_module.qkv(x).view(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = torch.zeros(b, h, n, hd)
    for t in range(n):
        p = torch.softmax((q[:, :, t:t + 1] @ k.transpose(-2, -1)) * hd ** -0.5, dim=-1)   # (b, h, 1, n)
        w = p if mask is None else p * mask[t]
        out[:, :, t] = (w @ v)[:, :, 0]
    return attn_module.proj(out.transpose(1, 2).reshape(b, n, d))


@pytest.mark.parametrize("ratio", [0.0, 0.3, None])
def test_attention_is_softmax_then_mask(ratio):
    torch.manual_seed(0)
    model = ILLaMA(causal=ratio is not None, **SMALL).eval()
    if ratio is not None:
        model.set_soft_mask(ratio)
    mask = model.attention_mask(17)
    if ratio is not None:   # r * ones + (1 - r) * tril
        assert torch.allclose(mask, torch.full((17, 17), ratio) + (1 - ratio) * torch.ones(17, 17).tril())
    attn, x, rope = model.blocks[0].attn, torch.randn(2, 17, 24), rope_angles(17, 12)
    with torch.no_grad():
        assert torch.allclose(attn(x, rope, mask), _naive_attention(attn, x, rope, mask), atol=1e-5)


def test_what_the_causal_mask_hides():
    """r = 0: token t's output sums the values of tokens <= t only (a later token's value does
    not reach it), but the softmax ran over all keys and is not renormalised, so a later token's
    key still moves it (iLLaMA's post-softmax mask: not causal in the strict sense); r > 0 lets
    the later values in. The weights' rows sum to below 1, except the class token's (the last
    row), which sees every token."""
    torch.manual_seed(0)
    n, t = 17, 5
    q, k, v = torch.randn(3, 2, 3, n, 8).unbind(0)
    later = torch.zeros(2, 3, n, 8)
    later[:, :, t + 1:] = torch.randn(2, 3, n - t - 1, 8)

    def changed(ratio, k_change, v_change):
        mask = soft_mask(n, ratio)
        a, b = masked_attention(q, k, v, mask), masked_attention(q, k + k_change, v + v_change, mask)
        return not torch.allclose(a[:, :, :t + 1], b[:, :, :t + 1], atol=1e-5)

    assert not changed(0.0, 0, later)           # causal in the values
    assert changed(0.0, later, 0)               # but not in the normaliser
    assert changed(0.3, 0, later)               # a soft mask lets later values in
    rows = (torch.softmax(q @ k.transpose(-2, -1) * 8 ** -0.5, -1) * soft_mask(n, 0.0)).sum(-1)
    assert (rows[..., :-1] < 1 - 1e-4).all() and torch.allclose(rows[..., -1], torch.ones(2, 3))
    # the model: a change of the last patch reaches the first patch's output at r = 0 (through the
    # normaliser), and the class token's output (the head's input) sees every patch
    model = randomize(ILLaMA(causal=True, **SMALL)).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(5)            # attention scores of order 1, as when trained
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., 24:, 24:] += 1.0
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(y)
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-5) and not torch.allclose(a[:, -1], b[:, -1], atol=1e-5)


def test_fully_visible_is_the_causal_weights_without_the_mask():
    torch.manual_seed(0)
    causal = mambaout.create_model("illama_tiny_causal", num_classes=5, img_size=32).eval()
    visible = mambaout.create_model("illama_tiny", num_classes=5, img_size=32)
    visible.load_state_dict(causal.state_dict())
    visible.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert causal.soft_mask_ratio == 0.0 and not torch.allclose(causal(x), visible(x), atol=1e-3)
        causal.set_soft_mask(1.0)                       # r = 1: all ones, no mask
        assert torch.equal(causal(x), visible(x))
        causal.set_soft_mask(0.5)
        half = causal(x)
    assert not torch.allclose(half, visible(x), atol=1e-4)
    assert "soft_mask" not in str(causal.state_dict().keys())     # a setting, never stored
    with pytest.raises(ValueError, match="fully visible"):
        visible.set_soft_mask(0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        causal.set_soft_mask(1.5)


def test_official_checkpoint_loads_strict_and_reproduces_logits(tmp_path):
    """A file as iLLaMA's utils.save_model writes it (the released illama-tiny-in1k-75.0.pth
    comes from it): the weights under 'model', optimiser, epoch, the loss scaler's state and
    the argparse Namespace of main_soft.py under 'args'."""
    torch.manual_seed(0)
    model = mambaout.create_model("illama_tiny_causal").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
    args = argparse.Namespace(model="illama_tiny", epochs=300, soft_mask=1.0, mask_mode="soft",
                              mask_schedule="constant", cutoff_soft=50, lr=4e-3, input_size=224)
    path = tmp_path / "illama-tiny-in1k-75.0.pth"
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 299,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0}, "args": args}, path)
    loaded = mambaout.create_model("illama_tiny_causal", checkpoint_path=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    visible = mambaout.create_model("illama_tiny", checkpoint_path=path)     # same keys, no mask
    assert torch.equal(visible.head.weight, model.head.weight)


def test_timm_interface_and_other_sizes():
    torch.manual_seed(0)
    model = mambaout.create_model("illama_tiny_causal", num_classes=5, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[0, -1], norm=True)
        assert [t.shape for t in inter] == [(2, 192, 4, 4)] * 2 and final.shape == (2, 17, 192)
        assert torch.allclose(model.forward_head(final), model(x), atol=1e-5)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 192)
        # the last intermediate, normalised, is the final features without the class token
        assert torch.allclose(inter[-1], final[:, :-1].reshape(2, 4, 4, 192).permute(0, 3, 1, 2), atol=1e-6)
        tokens = model.forward_intermediates(x, indices=2, stop_early=True, output_fmt="NLC", intermediates_only=True)
        assert [t.shape for t in tokens] == [(2, 16, 192)] * 2
        # another input size: the position embedding's patch part is resized, RoPE runs to its N
        assert model(torch.randn(1, 3, 96, 48)).shape == (1, 5)
        assert model.forward_intermediates(torch.randn(1, 3, 96, 48), indices=1)[1][0].shape == (1, 192, 6, 3)
    assert [f["reduction"] for f in model.feature_info] == [16] * 12 and model.num_features == 192
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    model.reset_classifier(7, global_pool="avg")
    assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, 192)


def test_grad_checkpointing_and_drop_path():
    torch.manual_seed(0)
    model = ILLaMA(num_classes=3, causal=True, drop_path_rate=0.1, **SMALL)
    assert [round(b.drop_path.drop_prob, 3) if hasattr(b.drop_path, "drop_prob") else 0.0
            for b in model.blocks] == [0.0, 0.1]
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    model(x).sum().backward()
    g = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g, model.parameters()))


def test_bad_options_are_one_line():
    with pytest.raises(mambaout.MambaOutError, match="illama_tiny: dim 192 must split into 5 heads"):
        mambaout.create_model("illama_tiny", num_heads=5)
    with pytest.raises(mambaout.MambaOutError, match="illama_tiny: img_size 8 must be at least one patch"):
        mambaout.create_model("illama_tiny", img_size=8)
    with pytest.raises(mambaout.MambaOutError, match=r"unknown model option\(s\): kernel_size; valid: .*causal"):
        mambaout.create_model("illama_tiny", kernel_size=3)
    model = ILLaMA(**SMALL)
    with pytest.raises(mambaout.MambaOutError, match="smaller than one 8px patch"):
        model(torch.randn(1, 3, 4, 32))
