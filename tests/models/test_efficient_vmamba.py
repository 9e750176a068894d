"""EfficientVMamba-S: its size and FLOPs (the training log's 11.274M / 1.343G, the paper's 11M /
1.3G), the official state-dict layout and checkpoint files, the atrous scan against the
official indexing, odd sizes, timm's interface, BatchNorm in train / eval, a short training."""
import csv
import math

import pytest
import torch
import torch.nn.functional as F

import mambaout
from mambaout.analysis.complexity import count_macs, measure, round_half_up
from mambaout.cli import main
from mambaout.models.efficient_vmamba import AtrousSS2D, EfficientVMamba, paper_flops
from mambaout.models.ssm import has_selective_scan, selective_scan_ref

from helpers import assert_fp32_close
from imagesets import make_folder

NAME = "efficient_vmamba_small"
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))   # small enough for CPU tests


def our_macs(depths, dims, img=224, classes=1000, n=16):
    """Our counter's convention, written out per image: every conv / linear / einsum MAC,
    LayerNorm 5 and eval BatchNorm 2 per element, the atrous scan 9 L D N + L D over each
    padded sub-grid; pools, means, activations, gates and adds 0."""
    side = img // 4
    c = dims[0]
    total = side * side * (48 * c + 5 * c)                                   # patch embed + LN
    for i, (depth, c) in enumerate(zip(depths, dims)):
        L = side * side
        if i < 2:
            e, r, sub = 2 * c, math.ceil(c / 16), math.ceil(side / 2) ** 2
            ssm = 2 * L * c * e + 9 * L * e + 4 * sub * e * (r + 2 * n) + 4 * sub * r * e \
                + 4 * sub * e * (9 * n + 1) + 5 * L * e + L * e * c
            conv = 9 * L * c + 2 * L * c + L * c * c
            gate = 5 * L * c + 2 * c * (c // 8)
            total += depth * (5 * L * c + ssm + conv + 2 * gate)
        else:
            m = 4 * c
            total += depth * (L * c * m + 2 * L * m + 9 * L * m + 2 * L * m + 2 * m * (m // 8)
                              + L * m * c + 2 * L * c)
        if i < len(dims) - 1:
            side = math.ceil(side / 2)
            total += side * side * 4 * c * (5 + dims[i + 1])                 # patch merging
    return total + 5 * side * side * dims[-1] + dims[-1] * classes


def pooled_elements(depths, dims, img=224):
    """What fvcore counts and our counter does not: nn.AdaptiveAvgPool2d's input elements
    (each inverted residual block's squeeze-excite on its 4C map, the classifier's pool)."""
    sides = [img // 4]
    for _ in dims[1:]:
        sides.append(math.ceil(sides[-1] / 2))
    return sum(depths[i] * 4 * dims[i] * sides[i] ** 2 for i in (2, 3)) + dims[-1] * sides[-1] ** 2


def test_params_and_flops_are_the_logs_and_the_papers():
    """Params: 11,273,688 = the log's 11.274M (all parameters, classifier included), the
    paper's 11M. FLOPs: our counter (the scan declared by run_scan) equals its closed form;
    the official count (fvcore + the scan formula, paper_flops) adds the pooled elements and
    gives the log's 1.343G and the paper's 1.3G; ours alone would print 1.342."""
    m = measure(NAME)
    v = mambaout.get_variant(NAME)
    assert m["params"] == 11_273_688 and round(m["params"] / 1e6, 2) == 11.27 and m["params_counted"] == "all"
    assert round_half_up(m["params"] / 1e6, 0) == v.paper_params_m == 11
    assert m["macs"] == our_macs(v.depths, v.dims) == 1_341_545_984
    with torch.device("meta"):
        model = mambaout.create_model(NAME)
    flops = paper_flops(model)
    assert flops == m["macs"] + pooled_elements(v.depths, v.dims) == 1_342_574_592
    assert round(flops / 1e9, 3) == 1.343 and round(m["macs"] / 1e9, 3) == 1.342
    assert round_half_up(flops / 1e9, 1) == m["macs_g"] == v.paper_macs_g == 1.3
    assert (v.depths, v.dims, v.drop_path, v.paper_top1) == ((2, 2, 4, 2), (64, 128, 256, 512), 0.1, 78.7)


@pytest.mark.parametrize("depths, dims, params, flops_g", [
    ((2, 2, 4, 2), (48, 96, 192, 384), 6_493_660, 0.8),        # EfficientVMamba-T: log 6.494M, paper 0.8G
    ((2, 2, 9, 2), (96, 192, 384, 768), 33_717_136, 4.0)])     # EfficientVMamba-B: log 33.717M, paper 4.0G
def test_the_other_official_sizes_build_at_their_logged_params(depths, dims, params, flops_g):
    """The released T and B (their logs' module trees: same blocks, these widths and depths)."""
    with torch.device("meta"):
        model = EfficientVMamba(depths=depths, dims=dims)
    assert sum(p.numel() for p in model.parameters()) == params
    assert round_half_up(paper_flops(model) / 1e9, 1) == flops_g


@pytest.mark.parametrize("size", [(97, 131), (64, 48)])
def test_paper_flops_closed_form_at_other_sizes(size):
    # widths above 16: at dt_rank 1 torch.einsum turns the dt projection into a broadcast
    # multiply, which our counter does not see (fvcore traces the einsum and counts it)
    with torch.device("meta"):
        model = EfficientVMamba(num_classes=7, depths=(1, 2, 1, 1), dims=(32, 48, 96, 160))
    ours = count_macs(model, size)
    sides = [(size[0] // 4, size[1] // 4)]
    for _ in range(3):
        sides.append(((sides[-1][0] + 1) // 2, (sides[-1][1] + 1) // 2))
    area = [h * w for h, w in sides]
    assert paper_flops(model, size) == ours + 4 * 96 * area[2] + 4 * 160 * area[3] + 160 * area[3]


def test_official_key_names_and_shapes():
    """Keys and shapes as the log's module tree prints them (patch_embed.0/.2, layers.N.blocks.M
    with op / conv_branch / se, the conv stages as Sequential(Permute, blocks 1..d, Permute,
    merging d+2), classifier.norm / head)."""
    with torch.device("meta"):
        model = mambaout.create_model(NAME)
    sd = model.state_dict()
    op = "layers.0.blocks.0.op."
    ir = "layers.2.1."
    expected = {
        "patch_embed.0.weight": (64, 3, 4, 4), "patch_embed.0.bias": (64,), "patch_embed.2.weight": (64,),
        "layers.0.blocks.0.norm.weight": (64,), op + "in_proj.weight": (256, 64), op + "conv2d.weight": (128, 1, 3, 3),
        op + "conv2d.bias": (128,), op + "x_proj_weight": (4, 4 + 32, 128), op + "dt_projs_weight": (4, 128, 4),
        op + "dt_projs_bias": (4, 128), op + "A_logs": (512, 16), op + "Ds": (512,), op + "out_norm.weight": (128,),
        op + "out_proj.weight": (64, 128),
        "layers.0.blocks.1.conv_branch.0.weight": (64, 1, 3, 3), "layers.0.blocks.1.conv_branch.0.bias": (64,),
        "layers.0.blocks.1.conv_branch.1.running_var": (64,), "layers.0.blocks.1.conv_branch.3.weight": (64, 64, 1, 1),
        "layers.0.blocks.1.se.norm.weight": (64,), "layers.0.blocks.1.se.global_reduce.weight": (8, 64),
        "layers.0.blocks.1.se.channel_select.bias": (64,),
        "layers.0.downsample.norm.weight": (256,), "layers.0.downsample.reduction.weight": (128, 256),
        "layers.1.blocks.1.op.x_proj_weight": (4, 8 + 32, 256), "layers.1.downsample.reduction.weight": (256, 512),
        ir + "conv_pw.0.weight": (1024, 256, 1, 1), ir + "conv_pw.1.num_batches_tracked": (),
        ir + "conv_dw.0.weight": (1024, 1, 3, 3), ir + "conv_dw.1.weight": (1024,),
        ir + "se.conv_reduce.weight": (128, 1024, 1, 1), ir + "se.conv_reduce.bias": (128,),
        ir + "se.conv_expand.weight": (1024, 128, 1, 1), ir + "conv_pw2.0.weight": (256, 1024, 1, 1),
        ir + "conv_pw2.1.running_mean": (256,), "layers.2.4.conv_pw2.1.bias": (256,),
        "layers.2.6.norm.weight": (1024,), "layers.2.6.reduction.weight": (512, 1024),
        "layers.3.2.se.conv_expand.bias": (2048,), "classifier.norm.weight": (512,),
        "classifier.head.weight": (1000, 512), "classifier.head.bias": (1000,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    # 4 EVSS blocks x 28 (BatchNorm buffers included) + 3 mergings x 3 + 6 IR blocks x 22
    # + patch embed 4 + classifier 4: the log's module tree gives the same 241 module keys
    assert len(sd) == 4 * 28 + 3 * 3 + 6 * 22 + 4 + 4 == 261
    assert not any(k.startswith(("layers.2.5.", "layers.3.3.", "layers.3.4.", "layers.2.0.")) for k in sd)
    assert model.layers[2].downsample is model.layers[2][6] and model.layers[3].downsample is None
    assert model.layers[2].blocks[0] is model.layers[2][1] and len(model.layers[3].blocks) == 2
    assert isinstance(model.layers[1].blocks[1].drop_path, torch.nn.Identity)   # create_model: no drop path
    trained = EfficientVMamba(drop_path_rate=0.1, depths=(2, 2, 4, 2), dims=(8, 16, 32, 64))
    probs = [b.drop_path.drop_prob for layer in trained.layers for b in layer.blocks
             if hasattr(b.drop_path, "drop_prob")]
    assert probs == pytest.approx([0.1 * i / 9 for i in range(1, 10)])   # the log's 0.0111, 0.0222, ...


def _official_atrous_scan(m: AtrousSS2D, u):
    """The official EfficientScan / EfficientMerge written as that code indexes (pad, views of
    the transposed map, slice assignment), each direction through the reference recurrence."""
    b, e, h, w = u.shape
    n, r = m.d_state, m.dt_rank
    x = F.pad(u, (0, w % 2, 0, h % 2))
    H, W = x.shape[2] // 2, x.shape[3] // 2
    xt = x.transpose(2, 3)
    xs = [x[:, :, ::2, ::2], xt[:, :, ::2, 1::2], x[:, :, ::2, 1::2], xt[:, :, 1::2, 1::2]]
    ys = []
    for k, seq in enumerate(xs):
        seq = seq.reshape(b, e, -1)
        proj = torch.einsum("bdl,cd->bcl", seq, m.x_proj_weight[k])
        dt, B, C = proj.split([r, n, n], dim=1)
        delta = F.softplus(torch.einsum("brl,dr->bdl", dt, m.dt_projs_weight[k]) + m.dt_projs_bias[k][:, None])
        A = -torch.exp(m.A_logs.view(4, e, n)[k])
        ys.append(selective_scan_ref(seq.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                                     C.transpose(1, 2), m.Ds.view(4, e)[k]).transpose(1, 2))   # (b, e, L)
    y = x.new_empty(b, e, 2 * H, 2 * W)
    y[:, :, ::2, ::2] = ys[0].reshape(b, e, H, W)
    y[:, :, 1::2, ::2] = ys[1].reshape(b, e, W, H).transpose(2, 3)
    y[:, :, ::2, 1::2] = ys[2].reshape(b, e, H, W)
    y[:, :, 1::2, 1::2] = ys[3].reshape(b, e, W, H).transpose(2, 3)
    return y[:, :, :h, :w].permute(0, 2, 3, 1)


@pytest.mark.parametrize("chunk, h, w", [(0, 5, 7), (2, 6, 4), (3, 7, 7)])
def test_atrous_scan_matches_the_official_indexing(chunk, h, w):
    torch.manual_seed(0)
    m = AtrousSS2D(8, d_state=4, chunk=chunk)
    with torch.no_grad():
        m.A_logs.add_(torch.randn_like(m.A_logs) * 0.3)
        m.Ds.normal_()
    u = torch.randn(2, 16, h, w)
    assert torch.allclose(m.scan(u), _official_atrous_scan(m, u), rtol=1e-5, atol=1e-5)
    # each position is scanned once, within its own sub-grid: a change at (0, 0) reaches only
    # the (even, even) positions after it in row-major order
    v = u.clone()
    v[:, :, 0, 0] += 1.0
    moved = (m.scan(v) - m.scan(u)).abs().amax(dim=(0, 3)) > 0
    assert moved[0::2, 0::2].all() and moved.sum() == moved[0::2, 0::2].sum()
    assert has_selective_scan(m)


def test_odd_sizes_timm_interface_and_backbone(one_thread):
    """Any input of at least 4x4 works (odd maps are padded by the scan and the mergings, as
    officially); a smaller one is a one-line ValueError."""
    torch.manual_seed(0)
    model = mambaout.create_model(NAME, num_classes=5, **SMALL).eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert [t.shape[1:] for t in inter] == [(16, 24, 32), (32, 12, 16), (64, 6, 8), (128, 3, 4)]
        assert torch.allclose(model.forward_head(final), model(x), atol=1e-6)
        official = model.patch_embed(x)                    # the official forward: layers, then classifier
        for layer in model.layers:
            official = layer(official)
        assert torch.allclose(model.classifier(official), model(x), atol=1e-6)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 128)
        assert [t.shape[-2:] for t in model.forward_intermediates(torch.randn(1, 3, 37, 45), intermediates_only=True)] \
            == [(9, 11), (5, 6), (3, 3), (2, 2)]
        assert model(torch.randn(1, 3, 4, 4)).shape == (1, 5)
    too_small = r"^EfficientVMamba needs images of at least 4x4 pixels .*got shape \(1, 3, 3, 9\)$"
    with pytest.raises(ValueError, match=too_small):
        model(torch.randn(1, 3, 3, 9))
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32] and model.dims == SMALL["dims"]
    assert model.get_classifier() is model.classifier.head
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (2, 3, 4, 128)
    assert model.no_weight_decay() == {f"layers.{i}.blocks.0.op.{p}" for i in (0, 1) for p in ("A_logs", "Ds")}
    model = mambaout.create_model(NAME, num_classes=3, **SMALL)
    model.set_grad_checkpointing(True)
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.layers[2][1].conv_pw[0].weight.grad is not None
    backbone = mambaout.create_backbone(NAME, out_indices=(1, 3), **SMALL).eval()
    with torch.no_grad():
        assert [o.shape for o in backbone(x)] == [(2, 32, 12, 16), (2, 128, 3, 4)]
    with pytest.raises(mambaout.MambaOutError, match=r"^efficient_vmamba_small: depths \(1, 1\) and dims"):
        mambaout.create_model(NAME, depths=(1, 1), dims=(16, 32, 64))
    with pytest.raises(mambaout.MambaOutError, match=r"unknown model option\(s\): kernel_size; valid: .*ssm_stages"):
        mambaout.create_model(NAME, kernel_size=3)


def test_batchnorm_train_and_eval(one_thread):
    """eval(): running statistics, so an image's logits do not depend on the rest of the batch
    and repeat exactly; train(): batch statistics (they do depend on it) and the running
    statistics move; BatchNorm sits in the EVSS conv branch and in every inverted residual."""
    torch.manual_seed(0)
    model = mambaout.create_model(NAME, num_classes=4, **SMALL)
    x = torch.randn(4, 3, 48, 48)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 2 + 2 * 3      # conv branch of each EVSS block, three per IR block
    model.train()
    before = [bn.running_mean.clone() for bn in bns]
    with torch.no_grad():
        train_all, train_one = model(x), model(x[:2])
    assert all(bn.num_batches_tracked.item() == 2 for bn in bns)
    assert all(not torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    assert not torch.allclose(train_all[:2], train_one, atol=1e-4)
    model.eval()
    stats = [bn.running_var.clone() for bn in bns]
    with torch.no_grad():
        eval_all, eval_one = model(x), model(x[:2])
    assert_fp32_close(eval_one, eval_all[:2])
    assert all(torch.equal(s, bn.running_var) for s, bn in zip(stats, bns))
    assert not torch.allclose(eval_all, train_all, atol=1e-4)


def _lib_trainer_checkpoint(path, model, ema):
    """A file as the official lib trainer writes it (lib/utils/misc.py CheckpointManager._save):
    epoch, the model's state dict (DDP unwrapped) under 'model', the EMA wrapper's under
    'ema_model' ('module.' keys), the optimizer and the additions (AMP scaler, dyrep; None when
    unused). No args are saved."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save({"epoch": 299, "model": model.state_dict(),
                "ema_model": {"module." + k: v for k, v in ema.state_dict().items()},
                "optimizer": opt.state_dict(), "scaler": None, "dyrep": None}, path)


def test_official_checkpoint_loads_strict_and_reproduces_logits(tmp_path, one_thread):
    torch.manual_seed(0)
    model = mambaout.create_model(NAME, num_classes=4)
    ema = mambaout.create_model(NAME, num_classes=4)
    with torch.no_grad():          # trained-looking BatchNorm statistics, so they must load too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(1000)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "checkpoint-294.pth.tar"
    _lib_trainer_checkpoint(path, model, ema)
    loaded = mambaout.create_model(NAME, num_classes=4, checkpoint_path=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)             # 'model' is what loads, not 'ema_model'
    assert torch.equal(loaded.layers[2][1].conv_pw[1].running_var, model.layers[2][1].conv_pw[1].running_var)
    ema_only = tmp_path / "ema.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, ema_only)   # a bare EMA state dict
    with torch.no_grad():
        assert torch.equal(mambaout.create_model(NAME, num_classes=4, checkpoint_path=ema_only).eval()(x), expected)
    backbone = mambaout.create_backbone(NAME, checkpoint_path=path)
    assert torch.equal(backbone.layers[3][2].conv_pw2[0].weight, model.layers[3][2].conv_pw2[0].weight)


def test_short_training_lowers_the_loss(one_thread):
    torch.manual_seed(0)
    model = mambaout.create_model(NAME, num_classes=2, drop_path_rate=0.1, **SMALL).train()
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([0, 1] * 4)
    x[y == 1] += 0.5                                       # a learnable difference
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0], losses


def test_backbone_ending_at_a_conv_stage_loads_a_classifier_checkpoint(tmp_path, one_thread):
    model = mambaout.create_model(NAME, **SMALL)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict()}, path)
    backbone = mambaout.create_backbone(NAME, out_indices=(0, 1, 2), checkpoint_path=path, **SMALL)
    assert torch.equal(backbone.layers[2][1].conv_pw[0].weight, model.layers[2][1].conv_pw[0].weight)


def test_engine_trains_it_by_name(tmp_path, one_thread):
    """`mambaout train --model efficient_vmamba_small` (the full-size model at 32 px, batch 8:
    its stage 4 is 1x1, so BatchNorm normalises over the batch) lowers the loss."""
    data = make_folder(tmp_path / "data", per_class=(8, 2), size=32)
    args = ["--model", NAME, "--img-size", "32", "-b", "8", "--epochs", "4", "--lr", "1e-3", "--warmup-epochs", "1",
            "--aa", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--smoothing", "0", "--drop-path", "0.1",
            "-j", "0", "--no-progress"]
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), *args]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "steps.csv"))]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
