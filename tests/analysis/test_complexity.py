import pytest
import torch

import mambaout
from mambaout.analysis.complexity import count_macs, measure, round_half_up

# Table 1 (and the official README for kobe): params (M), MACs (G) at their rounding, and the
# exact fvcore MACs the paper's numbers come from.
TABLE1 = {
    "mambaout_femto": (7.3, 1.2, 1_156_177_152),
    "mambaout_kobe": (9.1, 1.5, 1_515_186_432),
    "mambaout_tiny": (26.5, 4.5, 4_486_040_064),
    "mambaout_small": (48.5, 9.0, 8_960_334_336),
    "mambaout_base": (84.8, 15.8, 15_826_206_720),
}


@pytest.mark.parametrize("name", TABLE1)
def test_table1_params_and_macs(name):
    params_m, macs_g, macs_exact = TABLE1[name]
    m = measure(name)
    assert m["params_m"] == params_m
    assert m["macs_g"] == macs_g
    assert m["macs"] == macs_exact
    v = mambaout.VARIANTS[name]
    assert (v.paper_params_m, v.paper_macs_g) == (params_m, macs_g)


def test_counter_agrees_with_fvcore():
    fvcore = pytest.importorskip("fvcore.nn")
    model = mambaout.create_model("mambaout_femto").eval()
    ours = count_macs(model, 160)
    theirs = fvcore.FlopCountAnalysis(model, torch.randn(1, 3, 160, 160))
    theirs.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert ours == theirs.total()


def test_count_macs_leaves_model_untouched_and_scales_with_size():
    model = mambaout.create_model("mambaout_femto")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = count_macs(model, 224), count_macs(model, 448)
    assert 3.9 < b / a < 4.1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"


def test_round_half_up():
    assert round_half_up(8.95) == 9.0 and round_half_up(4.45) == 4.5 and round_half_up(1.149) == 1.1
