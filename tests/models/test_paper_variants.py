"""The ablation and comparison models of Tables 3, 5, 6, 7, 8 and 11 against the paper's numbers."""
import pytest
import torch

import mambaout
from mambaout.analysis.complexity import count_macs, count_params, measure, round_half_up
from mambaout.models import VARIANTS

PAPER = [n for n, v in VARIANTS.items() if v.paper_params_m is not None and v.source != "Table 1"
         and not n.endswith("_rw") and n != "mambaout_kobe"]

# Exact at the table's rounding where the paper fully gives the structure. One documented
# exception: k9's MACs are 4.554G, which rounds to 4.6 (Table 3 prints 4.5; k7 4.486 and
# k11 4.638 round as printed, and the conv's MACs grow with k^2, so no one count fits all).
EXACT = {"mambaout_tiny_k3", "mambaout_tiny_k5", "mambaout_tiny_k7", "mambaout_tiny_k11",
         "mambaout_t15", "mambaout_s_iso"}
# Table 8's attention models are standard ViT layers (12*D^2 weights per layer; their MACs
# match the table to 1%), which cannot hold 0.7M / 6M parameters: 0.61M / 5.36M.
PARAMS_NOT_MATCHED = {"study_attn_d64": 0.608e6, "study_attn_d192": 5.362e6}


def test_paper_rows_are_registered():
    for name in ["mambaout_tiny_k3", "mambaout_tiny_k5", "mambaout_tiny_k7", "mambaout_tiny_k9",
                 "mambaout_tiny_k11", "mambaout_t15", "mambaout_s_iso", "mambaout_attn_tiny",
                 "vmamba_mixed_stage_tiny", "vit_small_p16", "study_conv_d64", "study_attn_d64",
                 "study_ssm_d64", "study_conv_d192", "study_attn_d192", "study_ssm_d192"]:
        assert name in PAPER, name
    for name in ["vit_tiny_p16", "vit_tiny_p16_causal", "vit_small_p16_causal",
                 "study_attn_causal_d64", "study_ssm_bi_d192"]:
        assert name in VARIANTS


@pytest.mark.parametrize("name", PAPER)
def test_params_and_macs_match_the_paper(name):
    v = VARIANTS[name]
    m = measure(name)
    macs = m.get("paper_convention_macs", m["macs"])     # Vim-S: LocalMamba's hand count (the paper's 5.1G)
    assert abs(macs / 1e9 - v.paper_macs_g) <= 0.05 * v.paper_macs_g, m
    if name in PARAMS_NOT_MATCHED:
        assert abs(m["params"] - PARAMS_NOT_MATCHED[name]) < 0.01e6, m
    else:  # within 5%, or equal at the table's printed precision (Table 8: "6M" for 5.6M)
        assert (abs(m["params"] / 1e6 - v.paper_params_m) <= 0.05 * v.paper_params_m
                or at_table_rounding(m["params"] / 1e6, v.paper_params_m)), m
    if name in EXACT:
        assert at_table_rounding(m["params"] / 1e6, v.paper_params_m), m
        assert at_table_rounding(macs / 1e9, v.paper_macs_g), m


def at_table_rounding(value, printed):
    """Does `value` print as `printed` with the table's number of decimals (half up)?"""
    digits = len(repr(float(printed)).split(".")[1].rstrip("0"))
    return round_half_up(value, digits) == printed


def test_kernel_ablation_changes_only_the_conv():
    base = mambaout.create_model("mambaout_tiny").state_dict()
    for k in (3, 5, 9, 11):
        sd = mambaout.create_model(f"mambaout_tiny_k{k}").state_dict()
        assert sd.keys() == base.keys()
        for key, t in sd.items():
            if key.endswith("conv.weight") and ".blocks." in key:
                assert t.shape[-2:] == (k, k)
            else:
                assert t.shape == base[key].shape, key
    assert measure("mambaout_tiny_k7")["macs"] == measure("mambaout_tiny")["macs"]


def test_s_iso_block_count_follows_from_table5():
    # Each 384-wide Gated CNN block holds ~1.2M weights and costs ~235M MACs on 14x14 tokens;
    # with the patch-16 stem and the MLP head, 18 blocks give 24.0M / 4.30G, 17 or 19 do not.
    for depth, ok in ((17, False), (18, True), (19, False)):
        with torch.device("meta"):
            model = mambaout.create_model("mambaout_s_iso", depth=depth)
        p, macs = count_params(model) / 1e6, count_macs(model, 224) / 1e9
        assert (round(p) == 24 and round(macs, 1) == 4.3) == ok, (depth, p, macs)


@pytest.mark.parametrize("name", ["mambaout_tiny_k3", "mambaout_t15", "mambaout_attn_tiny",
                                  "vmamba_mixed_stage_tiny", "mambaout_s_iso"])
def test_new_variants_forward_backward(name):
    model = mambaout.create_model(name, num_classes=5, drop_path_rate=0.1)
    size = 64 if VARIANTS[name].arch == "mambaout" else 48
    x = torch.randn(2, 3, size, size)
    y = model(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model(x))


def test_hybrid_stages_have_their_second_mixer():
    attn = mambaout.create_model("mambaout_attn_tiny")
    ssm = mambaout.create_model("vmamba_mixed_stage_tiny")
    for i, stage in enumerate(attn.stages):
        for blk in stage.blocks:
            assert (blk.mixer is not None) == (i >= 2)
    blk = ssm.stages[2].blocks[0]
    hidden = blk.fc2.in_features
    assert blk.conv.in_channels == hidden and blk.split_indices == (hidden, 0, hidden)
    assert ssm.stages[1].blocks[0].mixer is None
    # The attention adds no weights: the same state-dict as MambaOut-Tiny.
    tiny = mambaout.create_model("mambaout_tiny").state_dict()
    assert {k: v.shape for k, v in attn.state_dict().items()} == {k: v.shape for k, v in tiny.items()}
