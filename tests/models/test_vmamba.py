"""VMamba v0: sizes and FLOPs of its paper, the official state-dict layout, the four scan
directions, backbone and dense heads, one-line errors."""
import json
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import mambaout
from mambaout.analysis.complexity import count_params, measure, round_half_up
from mambaout.cli import main
from mambaout.models.ssm import selective_scan_ref
from mambaout.models.vmamba import SS2D

SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))   # a VMamba small enough for CPU tests


def closed_form_macs(depths, dims, img=224, classes=1000):
    """VMamba v0's MACs in its convention, written out: fvcore's count of every conv, linear,
    einsum and LayerNorm (5 per element) plus the scan as 9 L D N + L D per image."""
    side, total = img // 4, 0
    total += side * side * (3 * 16 * dims[0] + 5 * dims[0])                  # patch embed + norm
    for i, (depth, c) in enumerate(zip(depths, dims)):
        L, e, r, n = (img // (4 * 2 ** i)) ** 2, 2 * c, math.ceil(c / 16), 16
        block = (5 * L * c + L * c * 2 * e + L * e * 9 + 4 * L * e * (r + 2 * n) + 4 * L * r * e
                 + 4 * L * e * (9 * n + 1) + 5 * L * e + L * e * c)
        total += depth * block
        if i < len(dims) - 1:
            total += L // 4 * (5 * 4 * c + 4 * c * 2 * c)                    # patch merging
    return total + 5 * (img // 32) ** 2 * dims[-1] + dims[-1] * classes        # norm + head


@pytest.mark.parametrize("name, params_m, flops_g", [
    ("vmamba_tiny", 22, 5.6), ("vmamba_small", 44, 11.2), ("vmamba_base", 75, 18.0)])
def test_params_and_flops_are_vmambas(name, params_m, flops_g):
    """VMamba's convention: params without the classifier; fvcore MACs with the selective scan
    counted as 9 B L D N + B D L (D = 4 E): the counter equals the closed form exactly (5.627 /
    11.231 / 18.020G) and the paper's numbers at its rounding."""
    m = measure(name)
    v = mambaout.get_variant(name)
    assert round_half_up(m["params_m"], 0) == params_m and m["params_counted"] == "without the classifier"
    assert m["macs"] == closed_form_macs(v.depths, v.dims) and m["macs_g"] == flops_g
    assert (v.paper_params_m, v.paper_macs_g) == (params_m, flops_g)


def test_official_key_names_and_shapes():
    with torch.device("meta"):
        sd = mambaout.create_model("vmamba_tiny").state_dict()
    attn = "layers.0.blocks.0.self_attention."
    expected = {"patch_embed.proj.weight": (96, 3, 4, 4), "patch_embed.norm.weight": (96,),
                "layers.0.blocks.0.ln_1.weight": (96,), attn + "in_proj.weight": (384, 96),
                attn + "conv2d.weight": (192, 1, 3, 3), attn + "conv2d.bias": (192,),
                attn + "x_proj_weight": (4, 6 + 32, 192), attn + "dt_projs_weight": (4, 192, 6),
                attn + "dt_projs_bias": (4, 192), attn + "A_logs": (768, 16), attn + "Ds": (768,),
                attn + "out_norm.weight": (192,), attn + "out_proj.weight": (96, 192),
                "layers.0.downsample.norm.weight": (384,), "layers.0.downsample.reduction.weight": (192, 384),
                "layers.2.blocks.8.self_attention.x_proj_weight": (4, 24 + 32, 768),
                "norm.weight": (768,), "head.weight": (1000, 768), "head.bias": (1000,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layers.3.downsample.reduction.weight" not in sd and len(sd) == 8 + 15 * 13 + 3 * 3


def _naive_ss2d_scan(m: SS2D, u):
    """SS2D's scan written out direction by direction: each order of the h x w positions as
    an explicit index list, its own parameters, the recurrence, scattered back and summed."""
    b, e, h, w = u.shape
    n, r = m.d_state, m.dt_rank
    flat = u.reshape(b, e, h * w)
    row_major = torch.arange(h * w)
    col_major = torch.arange(h * w).view(h, w).t().reshape(-1)
    orders = [row_major, col_major, row_major.flip(0), col_major.flip(0)]
    total = torch.zeros(b, h * w, e)
    for k, order in enumerate(orders):
        x = flat[:, :, order]                                          # (b, e, L) in scan order
        proj = torch.einsum("bdl,cd->bcl", x, m.x_proj_weight[k])
        dt, B, C = proj.split([r, n, n], dim=1)
        delta = F.softplus(torch.einsum("brl,dr->bdl", dt, m.dt_projs_weight[k]) + m.dt_projs_bias[k][:, None])
        A = -torch.exp(m.A_logs.view(4, e, n)[k])
        y = selective_scan_ref(x.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
                               m.Ds.view(4, e)[k])
        total[:, order] += y
    return total.view(b, h, w, e)


@pytest.mark.parametrize("chunk", [0, 2, 5])
def test_four_directions_match_a_naive_scan(chunk):
    torch.manual_seed(0)
    m = SS2D(8, d_state=4, chunk=chunk)
    with torch.no_grad():
        m.A_logs.add_(torch.randn_like(m.A_logs) * 0.3)
        m.Ds.normal_()
    u = torch.randn(2, 16, 5, 7)
    assert torch.allclose(m.scan(u), _naive_ss2d_scan(m, u), rtol=1e-5, atol=1e-5)


def test_scan_choice_does_not_change_the_model():
    torch.manual_seed(0)
    model = mambaout.create_model("vmamba_tiny", num_classes=3, **SMALL).eval()
    x = torch.randn(2, 3, 45, 61)
    outs = []
    for chunk in (0, 2, 7):
        for mod in model.modules():
            if isinstance(mod, SS2D):
                mod.chunk = chunk
        with torch.no_grad():
            outs.append(model(x))
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(outs[0], outs[2], atol=1e-5)


def _official_checkpoint(path, model):
    """A file as VMamba's training script writes it: the weights under 'model', the optimiser,
    the epoch and a yacs CfgNode config (a module faked here: yacs is not installed)."""
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass
    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    sys.modules.update({"yacs": yacs, "yacs.config": config})
    try:
        cfg = CfgNode(MODEL=CfgNode(TYPE="vssm", DROP_PATH_RATE=0.1), TRAIN=CfgNode(EPOCHS=300))
        torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                    "max_accuracy": 82.2, "epoch": 292, "config": cfg}, path)
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]


def test_official_checkpoint_loads_strict_and_reproduces_logits(tmp_path, capsys):
    torch.manual_seed(0)
    model = mambaout.create_model("vmamba_tiny", num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "vssmtiny_dp01_ckpt_epoch_292.pth"
    _official_checkpoint(path, model)
    loaded = mambaout.create_model("vmamba_tiny", num_classes=4, checkpoint_path=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (64, 64), (200, 30, 60)).save(image)
    assert main(["predict", str(image), "--model", "vmamba_tiny", "--checkpoint", str(path), "--json",
                 "--top-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["topk"][0]["label"] in "0123"
    backbone = mambaout.create_backbone("vmamba_tiny", checkpoint_path=path)
    assert torch.equal(backbone.patch_embed.proj.weight, model.patch_embed.proj.weight)


def test_wrong_size_checkpoint_and_unknown_option_are_one_line(tmp_path, capsys):
    with torch.device("meta"):
        small = mambaout.create_model("vmamba_small")
    path = tmp_path / "small.pth"
    torch.save({"model": {k: torch.zeros(v.shape) for k, v in small.state_dict().items()}}, path)
    code = main(["validate", "--model", "vmamba_tiny", "--checkpoint", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not fit the model" in err[0], err
    with pytest.raises(mambaout.MambaOutError, match=r"unknown model option\(s\): kernel_size; valid: .*d_state"):
        mambaout.create_model("vmamba_tiny", kernel_size=3)


def test_timm_interface_and_odd_sizes():
    model = mambaout.create_model("vmamba_tiny", num_classes=5, **SMALL).eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert [t.shape[1:] for t in inter] == [(16, 24, 32), (32, 12, 16), (64, 6, 8), (128, 3, 4)]
        assert torch.allclose(model.forward_head(final), model(x), atol=1e-6)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 128)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
    model.set_grad_checkpointing(True)
    model.train()
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    backbone = mambaout.create_backbone("vmamba_tiny", out_indices=(1, 3), **SMALL)
    with torch.no_grad():
        assert [o.shape for o in backbone(x)] == [(2, 32, 12, 16), (2, 128, 3, 4)]


def test_dense_heads_sizes():
    seg = measure("upernet_vmamba_tiny")
    assert seg["convention"] == "fvcore" and round_half_up(seg["params"] / 1e6, 0) == 55
    assert abs(seg["macs"] / 1e9 - 964) < 1.5          # 963.3G counted; VMamba's fvcore run printed 964
    with torch.device("meta"):
        up = mambaout.create_model("upernet_vmamba_tiny")
        det = mambaout.create_model("mask_rcnn_vmamba_tiny")
    assert type(up.backbone).__name__ == "VMambaBackbone"
    assert round_half_up(count_params(det) / 1e6, 0) == 42


@pytest.mark.parametrize("name", ["vmamba_tiny", "study_ssm_d64"])
def test_export_is_refused_in_one_line(name, tmp_path, capsys):
    """A model with a selective scan (VMamba, the Table 8 SSM) is refused before any file is
    written: the traced scan would be fixed to one batch and size."""
    out = tmp_path / "v.onnx"
    assert main(["export", name, "--format", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be exported yet" in err[0] and not out.exists()
