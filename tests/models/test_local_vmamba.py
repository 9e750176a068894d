"""LocalVMamba: sizes and FLOPs of its paper, the release's state-dict layout, the windowed
scan orders (padding included), odd input sizes, the timm interface, a short training run."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

import mambaout
from mambaout.analysis.complexity import measure, round_half_up
from mambaout.models.local_vmamba import (DIRECTIONS, LocalSS2D, LocalVMamba, reverse_order, scan_order)
from mambaout.models.ssm import has_selective_scan, selective_scan_ref
from helpers import assert_fp32_close

MIXED = ["h", "v_flip", "w2", "w7_flip"]                      # every kind of scan in one block
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), directions=MIXED)


def padded_length(direction, s):
    """Tokens one direction scans on an s x s map: windows of K pad each side to a multiple of K."""
    if direction.startswith("w"):
        k = int(direction[1:].split("_")[0])
        return (math.ceil(s / k) * k) ** 2
    return s * s


def closed_form(depths, dims, table, img=224, classes=1000):
    """LocalVMamba's params (with the classifier) and MACs in VMamba's fvcore convention, written
    out: every conv / linear / einsum, LayerNorm 5 per element, the scan 9 L D N + L D, the
    projections and the scan over each block's longest padded sequence, and the gate (LayerNorm
    on every token, its two Linears on the pooled token) once per direction."""
    side = img // 4
    params = 3 * 16 * dims[0] + dims[0] + 2 * dims[0]
    macs = side * side * (3 * 16 * dims[0] + 5 * dims[0])
    blocks = iter(table)
    for i, (depth, c) in enumerate(zip(depths, dims)):
        s = img // (4 * 2 ** i)
        L, e, r, n = s * s, 2 * c, math.ceil(c / 16), 16
        for _ in range(depth):
            dirs = next(blocks)
            k, lp = len(dirs), max(padded_length(d, s) for d in dirs)
            params += (2 * c + c * 2 * e + 10 * e + k * e * (r + 2 * n) + k * e * r + 2 * k * e + k * e * n
                       + 2 * e + e * c + (2 * e + e * (e // 8) + e // 8 + (e // 8) * e + e))
            macs += (5 * L * c + L * c * 2 * e + 9 * L * e + k * lp * e * (r + 2 * n) + k * lp * r * e
                     + k * lp * e * (9 * n + 1) + 5 * L * e + L * e * c + k * (5 * L * e + 2 * e * (e // 8)))
        if i < len(dims) - 1:
            params += 2 * 4 * c + 4 * c * 2 * c
            macs += L // 4 * (5 * 4 * c + 4 * c * 2 * c)
    params += 2 * dims[-1] + dims[-1] * classes + classes
    macs += 5 * (img // 32) ** 2 * dims[-1] + dims[-1] * classes
    return params, macs


@pytest.mark.parametrize("name, table, params_m, flops_g, exact", [
    ("local_vmamba_tiny", "tiny", 26, 5.7, (25_527_160, 5_728_652_544)),
    ("local_vmamba_small", "small", 50, 11.4, (49_748_536, 11_372_908_800))])
def test_params_and_flops_are_the_papers(name, table, params_m, flops_g, exact):
    """Params with the classifier (25.53M / 49.75M: 26 / 50 as printed; without it 24.76M /
    48.98M would print 25 / 49); the counter's MACs equal the closed form and round to the
    paper's 5.7G / 11.4G."""
    v = mambaout.get_variant(name)
    m = measure(name)
    assert (m["params"], m["macs"]) == closed_form(v.depths, v.dims, DIRECTIONS[table]) == exact
    assert m["params_counted"] == "all" and round_half_up(m["params"] / 1e6, 0) == params_m
    assert m["macs_g"] == flops_g and (v.paper_params_m, v.paper_macs_g) == (params_m, flops_g)
    with torch.device("meta"):
        headless = sum(p.numel() for p in LocalVMamba(directions=table, depths=v.depths, dims=v.dims,
                                                      num_classes=0).parameters())
    assert round_half_up(headless / 1e6, 0) == params_m - 1      # why the count includes the head


def test_direction_tables_are_the_releases():
    assert len(DIRECTIONS["tiny"]) == 15 and len(DIRECTIONS["small"]) == 33
    assert all(len(b) == 4 for t in DIRECTIONS.values() for b in t)
    assert DIRECTIONS["tiny"][0] == ("h", "h_flip", "w7", "w7_flip")
    assert DIRECTIONS["tiny"][13] == ("h_flip", "v_flip", "w2_flip", "w7_flip")
    assert DIRECTIONS["small"][-1] == ("h", "v", "w7", "w7_flip")
    with torch.device("meta"):
        model = mambaout.create_model("local_vmamba_small")
    assert model.layers[2].blocks[26].op.multi_scan.directions == DIRECTIONS["small"][30]


def test_release_key_names_and_shapes():
    with torch.device("meta"):
        sd = mambaout.create_model("local_vmamba_tiny").state_dict()
    op = "layers.0.blocks.0.op."
    expected = {"patch_embed.0.weight": (96, 3, 4, 4), "patch_embed.0.bias": (96,), "patch_embed.2.weight": (96,),
                "layers.0.blocks.0.norm.weight": (96,), op + "in_proj.weight": (384, 96),
                op + "conv2d.weight": (192, 1, 3, 3), op + "conv2d.bias": (192,),
                op + "x_proj_weight": (4, 6 + 32, 192), op + "dt_projs_weight": (4, 192, 6),
                op + "dt_projs_bias": (4, 192), op + "A_logs": (768, 16), op + "Ds": (768,),
                op + "out_norm.weight": (192,), op + "out_proj.weight": (96, 192),
                op + "multi_scan.attn.norm.weight": (192,), op + "multi_scan.attn.global_reduce.weight": (24, 192),
                op + "multi_scan.attn.global_reduce.bias": (24,),
                op + "multi_scan.attn.channel_select.weight": (192, 24),
                op + "multi_scan.attn.channel_select.bias": (192,),
                "layers.0.downsample.norm.weight": (384,), "layers.0.downsample.reduction.weight": (192, 384),
                "layers.2.blocks.8.op.x_proj_weight": (4, 24 + 32, 768),
                "classifier.norm.weight": (768,), "classifier.norm.bias": (768,),
                "classifier.head.weight": (1000, 768), "classifier.head.bias": (1000,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layers.3.downsample.reduction.weight" not in sd and len(sd) == 4 + 15 * 19 + 3 * 3 + 4


def test_windowed_scan_on_a_padded_map():
    """w2 on 3 x 3: padded to 4 x 4 (P = 9, a zero token), windows row-major, row-major inside."""
    P = 9
    assert scan_order("w2", 3, 3).tolist() == [0, 1, 3, 4, 2, P, 5, P, 6, 7, P, P, 8, P, P, P]
    assert scan_order("w2_flip", 3, 3).tolist() == [P, P, P, 8, P, P, 7, 6, P, 5, P, 2, 4, 3, 1, 0]
    assert scan_order("v", 2, 3).tolist() == [0, 3, 1, 4, 2, 5]
    assert scan_order("w7", 14, 14).tolist()[:9] == [0, 1, 2, 3, 4, 5, 6, 14, 15]


DIRECTION_NAMES = ["h", "h_flip", "v", "v_flip", "w1", "w2", "w2_flip", "w3", "w7", "w7_flip"]


@pytest.mark.parametrize("direction", DIRECTION_NAMES)
def test_scan_orders_are_permutations_and_invert(direction):
    """Property test over map sizes: the real tokens are scanned once each, the padding count
    is what the windows need, and the reverse maps every position back to itself."""
    g = torch.Generator().manual_seed(DIRECTION_NAMES.index(direction))
    sizes = [(1, 1), (7, 7), (8, 7)] + [tuple(torch.randint(1, 20, (2,), generator=g).tolist()) for _ in range(12)]
    for h, w in sizes:
        L = h * w
        order, inv = scan_order(direction, h, w), reverse_order(direction, h, w)
        real = order[order < L]
        assert sorted(real.tolist()) == list(range(L)), (direction, h, w)
        k = int(direction[1:].split("_")[0]) if direction.startswith("w") else 1
        assert len(order) == math.ceil(h / k) * k * math.ceil(w / k) * k and (order <= L).all()
        assert torch.equal(order[inv], torch.arange(L)), (direction, h, w)
        official = reverse_order(direction, h, w, official_v_reverse=True)
        if h == w or not direction.startswith("v"):
            assert torch.equal(official, inv)                       # the release's, wherever it is right
        else:                                                       # elsewhere still a permutation, another one
            assert sorted(official.tolist()) == list(range(L))
            assert torch.equal(official, inv) == (min(h, w) == 1)


def _release_scan(x, d, H, W):
    """multi_mamba.MultiScan.scan / local_scan.local_scan_bchw restated: x (B, C, H, W) -> (B, C, L')."""
    if d.startswith(("h", "v")):
        seq = (x if d[0] == "h" else x.transpose(2, 3)).flatten(2)
        return seq.flip([-1]) if d.endswith("flip") else seq
    k, (B, C) = int(d[1:].split("_")[0]), x.shape[:2]
    hg, wg = math.ceil(H / k), math.ceil(W / k)
    x = F.pad(x, (0, wg * k - W, 0, hg * k - H)).view(B, C, hg, k, wg, k).permute(0, 1, 2, 4, 3, 5).reshape(B, C, -1)
    return x.flip([-1]) if d.endswith("flip") else x


def _release_reverse(y, d, H, W):
    """MultiScan.reverse / local_scan.local_reverse restated: y (B, C, L') -> (B, C, H W) row-major."""
    B, C, _ = y.shape
    y = y.flip([-1]) if d.endswith("flip") else y
    if d.startswith("h"):
        return y
    if d.startswith("v"):                       # rearrange 'b d (h w) -> b d (w h)', h=H, w=W
        return y.reshape(B, C, H, W).transpose(2, 3).reshape(B, C, -1)
    k = int(d[1:].split("_")[0])
    hg, wg = math.ceil(H / k), math.ceil(W / k)
    y = y.reshape(B, C, hg, wg, k, k).permute(0, 1, 2, 4, 3, 5).reshape(B, C, hg * k, wg * k)
    return y[:, :, :H, :W].reshape(B, C, -1)


@pytest.mark.parametrize("H, W", [(5, 7), (7, 7), (8, 3), (14, 9)])
def test_orders_are_the_releases(H, W):
    """Our index orders against the release's scan and reverse ops: the scans (padding included)
    always, the reverse with official_v_reverse always, the exact one on square maps."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, H, W)
    tokens = torch.cat([x.flatten(2), torch.zeros(1, 2, 1)], dim=2)
    for d in DIRECTION_NAMES:
        s = _release_scan(x, d, H, W)
        assert torch.equal(tokens[:, :, scan_order(d, H, W)], s), d
        y = torch.randn_like(s)
        release = _release_reverse(y, d, H, W)
        assert torch.equal(y[:, :, reverse_order(d, H, W, official_v_reverse=True)], release), d
        assert torch.equal(y[:, :, reverse_order(d, H, W)], release) == (H == W or not d.startswith("v")), d


def _naive_local_scan(m: LocalSS2D, u):
    """LocalSS2D.scan written out direction by direction: each sequence built token by token
    (zeros where the windows pad), padded at the end to the longest, its own parameters, the
    recurrence, mapped back position by position, gated, summed."""
    b, e, h, w = u.shape
    n, r, L = m.d_state, m.dt_rank, h * w
    dirs = m.multi_scan.directions
    padded = torch.cat([u.reshape(b, e, L), torch.zeros(b, e, 1)], dim=2)
    seqs = [scan_order(d, h, w).tolist() for d in dirs]
    longest = max(len(s) for s in seqs)
    total = torch.zeros(b, L, e)
    for k, seq in enumerate(seqs):
        seq = seq + [L] * (longest - len(seq))
        x = torch.stack([padded[:, :, i] for i in seq], dim=2)            # (b, e, longest)
        proj = torch.einsum("bdl,cd->bcl", x, m.x_proj_weight[k])
        dt, B, C = proj.split([r, n, n], dim=1)
        delta = F.softplus(torch.einsum("brl,dr->bdl", dt, m.dt_projs_weight[k]) + m.dt_projs_bias[k][:, None])
        A = -torch.exp(m.A_logs.view(len(dirs), e, n)[k])
        y = selective_scan_ref(x.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
                               m.Ds.view(len(dirs), e)[k])
        back = torch.zeros(b, L, e)
        for t, pos in enumerate(seq):
            if pos < L:
                back[:, pos] = y[:, t]
        gate = m.multi_scan.attn
        s = torch.sigmoid(gate.channel_select(F.gelu(gate.global_reduce(gate.norm(back).mean(1, keepdim=True)))))
        total += back * s
    return total.view(b, h, w, e)


@pytest.mark.parametrize("size, dirs", [((5, 7), MIXED), ((6, 6), ["w2_flip", "v", "h_flip", "w7"]),
                                         ((9, 4), ["v", "v_flip", "w3", "h"])])
def test_local_scan_matches_a_naive_scan(size, dirs):
    torch.manual_seed(0)
    m = LocalSS2D(8, dirs, d_state=4, chunk=0)
    with torch.no_grad():
        m.A_logs.add_(torch.randn_like(m.A_logs) * 0.3)
        m.Ds.normal_()
        for p in m.multi_scan.attn.parameters():
            p.normal_(0, 0.3)
    u = torch.randn(2, 16, *size)
    with torch.no_grad():
        assert_fp32_close(m.scan(u), _naive_local_scan(m, u))


def test_timm_interface_and_odd_sizes():
    """97 x 131 (stride-4 map 24 x 32: w7 pads every stage) and 100 x 132 (odd maps from 25 x 33
    on: the patch merging pads them): finite outputs, every stage's shape."""
    torch.manual_seed(0)
    model = mambaout.create_model("local_vmamba_tiny", num_classes=5, **SMALL).eval()
    for (hh, ww), stages in [((97, 131), [(24, 32), (12, 16), (6, 8), (3, 4)]),
                             ((100, 132), [(25, 33), (13, 17), (7, 9), (4, 5)])]:
        x = torch.randn(1, 3, hh, ww)
        with torch.no_grad():
            final, inter = model.forward_intermediates(x)
            assert [tuple(t.shape[1:]) for t in inter] == [(c, *s) for c, s in zip((16, 32, 64, 128), stages)]
            assert all(torch.isfinite(t).all() for t in inter)
            logits = model.forward_head(final)
            assert logits.shape == (1, 5) and torch.isfinite(logits).all()
    with torch.no_grad():
        assert torch.allclose(model(x), logits, atol=1e-6)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 128)
        assert [t.shape[1] for t in model.forward_intermediates(x, indices=2, intermediates_only=True)] == [64, 128]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32] and model.dims == (16, 32, 64, 128)
    assert [layer.downsample is None for layer in model.layers] == [False, False, False, True]
    assert model.in_chans == 3 and {"layers.0.blocks.0.op.A_logs", "layers.0.blocks.0.op.Ds"} <= model.no_weight_decay()
    x = torch.randn(1, 3, 32, 32)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(x).shape == (1, 7)
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (1, 1, 1, 128)
    model.set_grad_checkpointing(True)
    model.train()
    model(x).sum().backward()
    assert has_selective_scan(model)


def test_release_column_reverse_option():
    """official_v_reverse changes nothing on square maps and only the column scans elsewhere."""
    torch.manual_seed(0)
    a = LocalVMamba(num_classes=3, **SMALL).eval()
    b = LocalVMamba(num_classes=3, official_v_reverse=True, **SMALL).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        sq, wide = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 96)
        assert torch.equal(a(sq), b(sq)) and not torch.allclose(a(wide), b(wide))


def _release_checkpoint(path, model, wrapper):
    """As LocalMamba's training script's CheckpointManager writes it ('model' plus epoch,
    optimiser, scaler, EMA), or as its tools/convert_ckpt.py re-wraps it ('state_dict')."""
    sd = model.state_dict()
    if wrapper == "state_dict":
        torch.save({"state_dict": sd}, path)
    else:
        torch.save({"epoch": 299, "model": sd, "ema_model": None, "dyrep": None,
                    "optimizer": {"state": {}, "param_groups": []}, "scaler": {"scale": 65536.0},
                    "args": argparse.Namespace(model="timm_local_vssm_tiny", drop_path_rate=0.2)}, path)


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_release_checkpoint_loads_strict_and_reproduces_logits(tmp_path, wrapper):
    """A depth-reduced LocalVMamba-T (the release's layout at every name; the full-size names
    are checked on the meta device above) saved as the release does, loaded by name."""
    torch.manual_seed(0)
    model = mambaout.create_model("local_vmamba_tiny", num_classes=4, **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "local_vssm_tiny.ckpt"
    _release_checkpoint(path, model, wrapper)
    loaded = mambaout.create_model("local_vmamba_tiny", num_classes=4, checkpoint_path=path, **SMALL).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    other = dict(SMALL, directions=["h", "v", "w2"])                  # 3 directions: other shapes
    with pytest.raises(mambaout.MambaOutError, match="does not fit the model"):
        mambaout.create_model("local_vmamba_tiny", num_classes=4, checkpoint_path=path, **other)


def test_bad_options_are_one_line_errors():
    for kwargs, match in [(dict(depths=(1, 1, 1, 1)), r"'tiny' directions table has 15 blocks"),
                          (dict(directions="huge"), "unknown directions table 'huge'"),
                          (dict(depths=(1, 1, 1, 1), directions=["h", "w0"]), "unknown scan direction 'w0'"),
                          (dict(depths=(1, 1), dims=(8, 16), directions=[["h"], ["v"], ["h"]]), "2 non-empty lists"),
                          (dict(depths=(1, 1), dims=(8, 24), directions=["h"]), "must double")]:
        with pytest.raises(mambaout.MambaOutError, match=match) as err:
            mambaout.create_model("local_vmamba_tiny", **kwargs)
        assert "\n" not in str(err.value)


def test_short_training_lowers_the_loss():
    """A few AdamW steps on a fixed batch of 32 px images (two classes: bright left or right
    half) bring the loss down: the gradients reach every part, the gates and scans included."""
    torch.manual_seed(0)
    model = LocalVMamba(num_classes=2, depths=(1, 1, 1, 1), dims=(16, 32, 64, 128),
                        directions=[["h", "w2_flip", "v", "w7"], ["w2", "v_flip", "h_flip", "w7_flip"]] * 2)
    x = torch.randn(8, 3, 32, 32) * 0.2
    y = torch.tensor([0, 1] * 4)
    x[y == 0, :, :, :16] += 1.0
    x[y == 1, :, :, 16:] += 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert model.layers[0].blocks[0].op.multi_scan.attn.global_reduce.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_upernet_row_and_backbone_load_a_classifier_checkpoint(tmp_path):
    """Table 3's UperNet-LocalVMamba-T: 57M params and ~970G counted as fvcore does (969.1G
    here; the same 0.7G offset as VMamba-T's 963.3 vs 964); its backbone is LocalVMamba's
    stages and loads a classification checkpoint (the release's `classifier.*` dropped)."""
    seg = measure("upernet_local_vmamba_tiny")
    assert seg["convention"] == "fvcore" and round_half_up(seg["params"] / 1e6, 0) == 57
    assert abs(seg["macs"] / 1e9 - 970) < 1.5
    model = LocalVMamba(num_classes=10, **SMALL)
    path = tmp_path / "local.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    backbone = mambaout.create_backbone("local_vmamba_tiny", checkpoint_path=path, out_indices=(1, 2),
                                        depths=SMALL["depths"], dims=SMALL["dims"], directions=MIXED)
    assert type(backbone).__name__ == "LocalVMambaBackbone"
    assert torch.equal(backbone.layers[1].blocks[0].op.in_proj.weight, model.layers[1].blocks[0].op.in_proj.weight)
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 8, 12), (1, 64, 4, 6)]
