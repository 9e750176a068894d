"""Vim (Vision Mamba), Vim-S of Table 5: sizes in both FLOP conventions, the official state-dict
layout and checkpoint, the forward against a plain re-derivation of Vim's code, the two scan
directions, the middle class token, timm's interface, a short training run, one-line errors."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

import mambaout
from mambaout.analysis.complexity import count_params, measure, round_half_up
from mambaout.cli import main
from mambaout.errors import MambaOutError
from mambaout.models.ssm import selective_scan_ref
from mambaout.models.vim import Vim, paper_flops, resample_pos_embed
from helpers import assert_fp32_close, randomize

TINY = dict(img_size=32, patch_size=8, depth=2, dim=32)      # a 4x4 grid, 17 tokens


def tiny(**kw):
    return Vim(**{**TINY, "num_classes": 5, **kw})


# ---- sizes -------------------------------------------------------------------------------------

def closed_form_params(depth=24, D=384, patch=16, img=224, N=16, classes=1000):
    E, R, L = 2 * D, math.ceil(D / 16), (img // patch) ** 2
    direction = (E * 4 + E) + E * (R + 2 * N) + (R * E + E) + E * N + E   # conv1d, x_proj, dt_proj, A, D
    block = D * 2 * E + 2 * direction + E * D + D                         # in_proj, 2 directions, out_proj, norm
    return 3 * patch * patch * D + D + D + (L + 1) * D + depth * block + D + D * classes + classes


def closed_form_macs(depth=24, D=384, patch=16, img=224, N=16, classes=1000):
    """Our counter's convention (fvcore + VMamba's scan): every conv / linear of both directions,
    the conv1d over its L + 3 padded outputs, the scan 9 L E N + L E per direction, RMSNorm 0."""
    E, R, L = 2 * D, math.ceil(D / 16), (img // patch) ** 2 + 1
    direction = (L + 3) * E * 4 + L * E * (R + 2 * N) + L * R * E + L * E * (9 * N + 1)
    block = L * D * 2 * E + 2 * direction + L * E * D
    return (L - 1) * D * 3 * patch * patch + depth * block + D * classes


def test_params_and_flops_in_both_conventions():
    """26M at the paper's rounding (25.80M); the paper's 5.1G is LocalMamba's hand count (5.14G),
    our counter measures 5.90G in VMamba's convention (both directions' projections, 9 L E N)."""
    m = measure("vim_small")
    v = mambaout.get_variant("vim_small")
    assert m["params"] == closed_form_params() == 25_796_584
    assert round_half_up(m["params"] / 1e6, 0) == v.paper_params_m == 26
    assert m["macs"] == closed_form_macs() == 5_904_706_560 and m["macs_g"] == 5.9
    # LocalMamba's VisionMamba.flops(), written out with Vim-S's numbers (L = 197, E = 768, N = 16).
    by_hand = (24 * (197 * 384 * 1536 + 200 * 768 * 4 + 197 * 768 * 56 + 197 * 24 * 768
                     + 2 * (5 * 197 * 768 * 16 + 2 * 197 * 768) + 197 * 768 * 384 + 197 * 384)
               + 196 * 384 * 768 + 384 * 1000)
    assert paper_flops() == by_hand == 5_143_769_088
    assert round_half_up(paper_flops() / 1e9, 1) == v.paper_macs_g == 5.1
    assert (v.paper_top1, v.extra) == (80.5, {"patch_size": 16})


def test_official_key_names_and_shapes():
    with torch.device("meta"):
        sd = mambaout.create_model("vim_small").state_dict()
    mix = "layers.0.mixer."
    expected = {"patch_embed.proj.weight": (384, 3, 16, 16), "patch_embed.proj.bias": (384,),
                "cls_token": (1, 1, 384), "pos_embed": (1, 197, 384),
                mix + "in_proj.weight": (1536, 384), mix + "out_proj.weight": (384, 768),
                "layers.0.norm.weight": (384,), "norm_f.weight": (384,),
                "head.weight": (1000, 384), "head.bias": (1000,)}
    for sfx, a in (("", "A_log"), ("_b", "A_b_log")):
        expected.update({mix + f"conv1d{sfx}.weight": (768, 1, 4), mix + f"conv1d{sfx}.bias": (768,),
                         mix + f"x_proj{sfx}.weight": (24 + 32, 768), mix + f"dt_proj{sfx}.weight": (768, 24),
                         mix + f"dt_proj{sfx}.bias": (768,), mix + a: (768, 16), mix + f"D{sfx}": (768,)})
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layers.23.mixer.A_b_log" in sd and "layers.24.norm.weight" not in sd
    assert len(sd) == 4 + 24 * 17 + 3 and not any(k.endswith(("in_proj.bias", "out_proj.bias")) for k in sd)


# ---- the forward, re-derived from Vim's code ---------------------------------------------------

def _rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def _causal_conv_silu(x, conv):
    """Output t = bias + sum_k w[k] x[t - 3 + k] (zeros before the start), then SiLU; (B, L, E)."""
    w, K, L = conv.weight[:, 0], conv.weight.shape[-1], x.shape[1]
    padded = F.pad(x, (0, 0, K - 1, 0))
    return F.silu(sum(w[:, k] * padded[:, k:k + L] for k in range(K)) + conv.bias)


def _direction(m, xs, z, sfx, a):
    u = _causal_conv_silu(xs, getattr(m, "conv1d" + sfx))
    dt, B, C = (u @ getattr(m, "x_proj" + sfx).weight.t()).split([m.dt_rank, m.d_state, m.d_state], -1)
    dt_proj = getattr(m, "dt_proj" + sfx)
    delta = F.softplus(dt @ dt_proj.weight.t() + dt_proj.bias)
    y = selective_scan_ref(u, delta, -torch.exp(getattr(m, a)), B, C, getattr(m, "D" + sfx))
    return y * F.silu(z)                            # selective_scan_fn's z gating


def _mixer_ref(m, x):
    """mamba_simple.Mamba, bimamba_type v2, if_divide_out: the backward direction gets the flipped
    xz and its output is flipped back."""
    xs, z = (x @ m.in_proj.weight.t()).chunk(2, dim=-1)
    out = _direction(m, xs, z, "", "A_log")
    out_b = _direction(m, xs.flip(1), z.flip(1), "_b", "A_b_log")
    return ((out + out_b.flip(1)) / 2) @ m.out_proj.weight.t()


def _vim_ref(model, img):
    """VisionMamba.forward (eval) as models_mamba.py writes it, on our parameters."""
    x = F.conv2d(img, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=model.patch_size)
    x = x.flatten(2).transpose(1, 2)
    M = x.shape[1]
    pos = M // 2
    cls = model.cls_token.expand(x.shape[0], -1, -1)
    x = torch.cat((x[:, :pos], cls, x[:, pos:]), dim=1) + model.pos_embed
    residual, hidden = None, x
    for layer in model.layers:
        residual = hidden if residual is None else residual + hidden
        hidden = _mixer_ref(layer.mixer, _rms(residual, layer.norm.weight))
    hidden = _rms(residual + hidden, model.norm_f.weight)
    return hidden[:, pos] @ model.head.weight.t() + model.head.bias


@pytest.mark.parametrize("chunk", [0, 2, 3])
@pytest.mark.parametrize("img", [32, 40])           # 16 and 25 patches: the middle index 8 / 12
def test_forward_matches_vims_code(chunk, img):
    model = randomize(tiny(img_size=img, chunk=chunk)).eval()
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        assert_fp32_close(model(x), _vim_ref(model, x))


def _long_memory(model):
    """Random weights, five times randomize()'s in the mixers (so that a token's influence on
    another is of order 0.1, not 1e-7), and Mamba's own dt / A / D (dt in [1e-3, 0.1]: slow
    decays; randomize()'s dt ~ 0.7 would let an influence fade within 16 steps)."""
    randomize(model)
    with torch.no_grad():
        for layer in model.layers:
            m = layer.mixer
            for mod in (m.in_proj, m.conv1d, m.conv1d_b, m.x_proj, m.x_proj_b, m.out_proj):
                mod.weight.mul_(5)
            m.reset_parameters()
    return model


def _sensitivity(model, token):
    """|d output token / d pixel| summed over the first (8x8) and the last patch of a 32px image."""
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    grad, = torch.autograd.grad(model.forward_features(x)[:, token].sum(), x)
    return grad[..., :8, :8].abs().sum().item(), grad[..., 24:, 24:].abs().sum().item()


def test_both_directions_see_every_token_and_the_head_reads_the_middle_token():
    """Tokens: patches 0-7, the class token (8), patches 8-15. Bidirectional: the first token
    depends on the last patch and the last token on the first. With the backward scan silenced
    (B = C = 0, D_b = 0) the mixer is causal: the first token no longer sees the last patch."""
    model = _long_memory(tiny()).eval()
    backward = _sensitivity(model, 0)[1]               # first token <- last patch
    forward = _sensitivity(model, 16)[0]               # last token <- first patch
    assert backward > 1e-2 and forward > 1e-2 and 1e-2 < backward / forward < 1e2
    assert min(_sensitivity(model, 8)) > 1e-2          # the class token sees both ends
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 32, 32))
        assert feats.shape == (1, 17, 32) and torch.equal(model.forward_head(feats, pre_logits=True), feats[:, 8])
        for layer in model.layers:
            layer.mixer.D_b.zero_()
            layer.mixer.x_proj_b.weight[layer.mixer.dt_rank:].zero_()
    assert _sensitivity(model, 0)[1] == 0 and _sensitivity(model, 16)[0] > 1e-2


# ---- checkpoints -------------------------------------------------------------------------------

def test_official_checkpoint_loads_strict_and_reproduces_logits(tmp_path):
    """A file as Vim's main.py saves it: the weights under 'model' beside the optimiser, the
    schedule, the epoch and the argparse Namespace of the run, read through create_model."""
    kw = dict(depth=2, img_size=32, num_classes=10)
    model = randomize(mambaout.create_model("vim_small", **kw)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    args = argparse.Namespace(model="vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_"
                                    "midclstok_div2", drop_path=0.05, weight_decay=0.05, lr=1e-3, epochs=300)
    path = tmp_path / "vim_s_midclstok_80p5acc.pth"
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {"last_epoch": 300}, "epoch": 299, "scaler": "none", "args": args}, path)
    loaded = mambaout.create_model("vim_small", checkpoint_path=path, **kw).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    # another input size: the position embedding is resampled around the middle class token
    other = mambaout.create_model("vim_small", checkpoint_path=path, **dict(kw, img_size=48)).eval()
    assert torch.equal(other.pos_embed, resample_pos_embed(model.pos_embed.detach(), other.grid))
    with torch.no_grad():
        assert torch.isfinite(other(torch.randn(1, 3, 48, 48))).all()


def test_position_embedding_resampled_around_the_middle_class_token():
    small, large = tiny(), tiny(img_size=48)                   # 4x4 -> 6x6 grids
    rows = torch.arange(4.0).repeat_interleave(4)[None, :, None].expand(1, 16, 32)   # each patch's row
    pos = torch.cat([rows[:, :8], torch.full((1, 1, 32), -7.0), rows[:, 8:]], dim=1)  # class token at 8
    out = resample_pos_embed(pos, (6, 6))
    assert out.shape == (1, 37, 32) and torch.equal(out[0, 18], torch.full((32,), -7.0))
    patches = torch.cat([out[:, :18], out[:, 19:]], dim=1).view(6, 6, 32)
    assert torch.allclose(patches, patches[:, :1].expand(-1, 6, -1))         # constant along a row
    assert (patches[1:, 0, 0] >= patches[:-1, 0, 0]).all() and patches[0, 0, 0] < patches[-1, 0, 0]
    assert torch.equal(resample_pos_embed(pos, (4, 4)), pos)
    sd = large.adapt_state_dict(small.state_dict())
    large.load_state_dict(sd, strict=True)
    assert torch.equal(large.cls_token, small.cls_token)
    assert torch.equal(large.pos_embed[0, 18], small.pos_embed[0, 8])


# ---- interface, training, errors ---------------------------------------------------------------

def test_timm_interface():
    model = randomize(tiny()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert [t.shape for t in inter] == [(2, 32, 4, 4)] * 2
        assert torch.equal(final, model.forward_features(x))
        assert torch.allclose(model.forward_head(final), model(x), atol=1e-6)
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        tokens = torch.cat([final[:, :8], final[:, 9:]], dim=1)                # class token out
        assert torch.allclose(normed[0], tokens.transpose(1, 2).reshape(2, 32, 4, 4), atol=1e-6)
        early, first = model.forward_intermediates(x, indices=[0], stop_early=True, output_fmt="NHWC")
        assert first[0].shape == (2, 4, 4, 32) and early.shape == (2, 17, 32)
        assert model.forward_head(final, pre_logits=True).shape == (2, 32)
    assert [f["reduction"] for f in model.feature_info] == [8, 8] and model.num_features == 32
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    model.reset_classifier(7, global_pool="avg")
    assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)
    model = tiny(drop_path_rate=0.1, drop_rate=0.1).train()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_non_224_input_and_bf16():
    model = mambaout.create_model("vim_small", img_size=64, num_classes=3, depth=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 3) and model.pos_embed.shape == (1, 17, 384)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all() and (low.float() - y).abs().max() < 0.1 * y.abs().max() + 0.05


def test_cli_sized_model_builds_and_runs():
    """`mambaout train --model vim_small` at full size is too slow for a test: the model it builds
    (the digits' 32px, 10 classes) is built and run instead."""
    model = mambaout.create_model("vim_small", img_size=32, num_classes=10).eval()
    assert model.pos_embed.shape == (1, 5, 384) and count_params(model) == closed_form_params(img=32, classes=10)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_short_training_lowers_the_loss():
    torch.manual_seed(0)
    model = Vim(img_size=32, patch_size=8, depth=2, dim=64, num_classes=4, drop_path_rate=0.1)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def loss():
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()
    before = loss()
    for _ in range(12):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert loss() < 0.7 * before


def test_bad_sizes_are_one_line(tmp_path, capsys):
    with pytest.raises(MambaOutError, match=r"^vim_small: img_size 8 is smaller than patch_size 16$"):
        mambaout.create_model("vim_small", img_size=8)
    model = tiny()
    with pytest.raises(MambaOutError, match=r"3x3 token grid; .* 4x4 \(build it with img_size=24"):
        model(torch.randn(1, 3, 24, 24))
    with pytest.raises(MambaOutError, match="unknown model option"):
        mambaout.create_model("vim_small", kernel_size=3)
    out = tmp_path / "v.onnx"
    assert main(["export", "vim_small", "--format", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be exported yet" in err[0] and not out.exists()
