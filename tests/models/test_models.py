import pytest
import torch

import mambaout
from mambaout.models import VARIANTS, GatedCNNBlock

ALL = mambaout.list_models()
HIERARCHICAL = [n for n in ALL if VARIANTS[n].arch == "mambaout"]
SMALL = ["mambaout_femto", "mambaout_small_rw"]  # one of each structure family, cheap enough


@pytest.mark.parametrize("name", ALL)
def test_every_variant_forward_backward(name):  # at its own input size (224; 32 for study_*)
    model = mambaout.create_model(name, drop_path_rate=0.1)
    size = VARIANTS[name].input_size
    x = torch.randn(1, 3, size, size)
    y = model(x)
    assert y.shape == (1, model.num_classes)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("size", [160, 257, (193, 131)])
def test_forward_backward_other_sizes(name, size):
    model = mambaout.create_model(name, num_classes=7)
    h, w = (size, size) if isinstance(size, int) else size
    y = model(torch.randn(2, 3, h, w))
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.square().mean().backward()


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_other_sizes_shapes_all_variants(name):
    with torch.device("meta"):
        model = mambaout.create_model(name)
        for size in (160, 257):
            feats = model.forward_features(torch.empty(1, 3, size, size))
            s = size
            for _ in range(5):
                s = (s + 1) // 2
            assert feats.shape == (1, s, s, VARIANTS[name].dims[-1])


def test_forward_intermediates_shapes_and_strides():
    model = mambaout.create_model("mambaout_femto").eval()
    x = torch.randn(2, 3, 224, 224)
    final, feats = model.forward_intermediates(x)
    assert [f.shape for f in feats] == [(2, c, 224 // r, 224 // r) for c, r in
                                        zip((48, 96, 192, 288), (4, 8, 16, 32))]
    assert [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]
    assert [i["num_chs"] for i in model.feature_info] == [48, 96, 192, 288]
    assert torch.allclose(final, model.forward_features(x))
    nhwc = model.forward_intermediates(x, indices=[1, -1], output_fmt="NHWC", intermediates_only=True)
    assert [f.shape for f in nhwc] == [(2, 28, 28, 96), (2, 7, 7, 288)]
    assert torch.allclose(nhwc[0].permute(0, 3, 1, 2), feats[1])
    early = model.forward_intermediates(x, indices=2, stop_early=True, intermediates_only=True)
    assert [f.shape[1] for f in early] == [192, 288]
    odd = model.forward_intermediates(torch.randn(1, 3, 257, 200), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in odd] == [(65, 50), (33, 25), (17, 13), (9, 7)]
    with pytest.raises(ValueError):
        model.forward_intermediates(x, indices=[4])


def test_eval_is_deterministic_and_train_mode_uses_drop_path():
    model = mambaout.create_model("mambaout_femto", drop_path_rate=0.5, drop_rate=0.3).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_forward_head_pre_logits_and_reset_classifier():
    model = mambaout.create_model("mambaout_femto").eval()
    feats = model.forward_features(torch.randn(1, 3, 64, 64))
    assert model.forward_head(feats, pre_logits=True).shape == (1, 4 * 288)
    model.reset_classifier(5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4 * 288)


def test_drop_path_increases_linearly_over_all_blocks():
    model = mambaout.create_model("mambaout_tiny", drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for s in model.stages for b in s.blocks]
    assert len(rates) == 18 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert rates == pytest.approx(torch.linspace(0, 0.2, 18).tolist())


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(1)
    a = mambaout.create_model("mambaout_femto", num_classes=3)
    b = mambaout.create_model("mambaout_femto", num_classes=3)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 96, 96)
    a(x).sum().backward()
    b(x).sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_block_matches_algorithm_1_split():
    blk = GatedCNNBlock(96)
    hidden = int(8 / 3 * 96)
    assert blk.fc1.out_features == 2 * hidden and blk.split_indices == (hidden, hidden - 96, 96)
    assert blk.conv.kernel_size == (7, 7) and blk.conv.groups == 96 and blk.norm.eps == 1e-6
    part = GatedCNNBlock(96, conv_ratio=1.5, ls_init_value=1e-6, kernel_size=3)
    assert part.conv.in_channels == 144 and part.ls.gamma.shape == (96,)


def test_in_chans_and_overrides():
    model = mambaout.create_model("mambaout_femto", in_chans=1, kernel_size=5, num_classes=10)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)
    assert model.stages[0].blocks[0].conv.kernel_size == (5, 5)
    with pytest.raises(mambaout.MambaOutError, match="unknown model option"):
        mambaout.create_model("mambaout_femto", kernel=5)


def test_unknown_model_suggests_close_names():
    with pytest.raises(mambaout.UnknownModelError, match="did you mean mambaout_tiny"):
        mambaout.create_model("mambaout_tiy")
    assert mambaout.list_models("*base*_rw") == ["mambaout_base_short_rw", "mambaout_base_tall_rw",
                                                 "mambaout_base_wide_rw", "mambaout_base_plus_rw"]
    assert "mambaout_tiny.in1k" in mambaout.list_models(pretrained=True)


def test_pretrained_cfg():
    cfg = mambaout.create_model("mambaout_tiny").pretrained_cfg
    assert cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bicubic"
    assert cfg["input_size"] == (3, 224, 224) and cfg["hf_hub_id"] == "timm/mambaout_tiny.in1k"
    assert cfg["mean"] == (0.485, 0.456, 0.406)
    assert mambaout.pretrained_cfg("mambaout_base_plus_rw.sw_e150_in12k")["num_classes"] == 11821
    assert mambaout.pretrained_cfg("mambaout_base_wide_rw")["crop_pct"] == 0.95


def test_unknown_model_option_is_one_line_naming_the_valid_ones():
    """Options are checked against the constructor's signature, not its local variable names
    (`dim` is a local of MambaOut.__init__, not an option)."""
    for build, what in ((mambaout.create_model, "model"), (mambaout.create_backbone, "backbone")):
        with pytest.raises(mambaout.MambaOutError) as e:
            build("mambaout_femto", dim=3)
        msg = str(e.value)
        assert msg.startswith(f"unknown {what} option(s): dim; valid: ") and "kernel_size" in msg and "\n" not in msg
    with pytest.raises(mambaout.MambaOutError, match="unknown backbone option.*num_classes"):
        mambaout.create_backbone("mambaout_femto", num_classes=3)      # a head option: backbones have none
