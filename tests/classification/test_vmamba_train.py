"""VMamba on the same engine: `mambaout train --recipe vmamba --model vmamba_tiny` on a folder of
images lowers the loss and resumes mid-run bit for bit; the recipe is VMamba's."""
import csv
import json
from dataclasses import replace

import pytest
import torch

from mambaout.cli import main
from mambaout.recipe import Recipe, vmamba_recipe
from imagesets import make_folder
from runs import model_state

# 3 classes x 8 images of 32px, batch 8: 3 updates an epoch; 4 epochs; VMamba's recipe without
# its ImageNet-strength augmentation (which would hide a loss trend in 12 updates).
ARGS = ["--recipe", "vmamba", "--model", "vmamba_tiny", "--img-size", "32", "-b", "8", "--epochs", "4",
        "--lr", "1e-3", "--warmup-epochs", "1", "--aa", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0",
        "--smoothing", "0", "--drop-path", "0", "-j", "0", "--no-progress"]


def test_vmamba_recipe_is_vmambas():
    r, t2 = vmamba_recipe(), Recipe()
    assert (r.base, r.model, r.epochs, r.warmup_epochs, r.weight_decay, r.clip_grad, r.smoothing) == \
        ("vmamba", "vmamba_tiny", 300, 20, 0.05, 5.0, 0.1)
    assert (r.lr_base, r.lr_base_size) == (5e-4, 512)
    assert replace(r, batch_size=128).peak_lr(world_size=8) == pytest.approx(1e-3)   # VMamba's 8 x 128
    assert (r.auto_augment, r.mixup, r.cutmix, r.reprob, r.model_ema, r.model_ema_decay, r.crop_pct) == \
        ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.25, True, 0.9999, 0.875)
    assert r.lr_base / r.lr_base_size == t2.lr_base / t2.lr_base_size          # the same lr per image


def test_train_lowers_the_loss_and_resumes_bitwise(tmp_path, one_thread):
    data = make_folder(tmp_path / "data", per_class=(8, 2), size=32)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(["train", "--data", str(data), "--output", str(ref), *ARGS]) == 0
    recipe = torch.load(ref / "last.pth", map_location="cpu", weights_only=True)["recipe"]
    assert (recipe["base"], recipe["clip_grad"], recipe["model_ema"], recipe["model"]) == \
        ("vmamba", 5.0, True, "vmamba_tiny")
    losses = [float(r["loss"]) for r in csv.DictReader(open(ref / "steps.csv"))]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    assert main(["train", "--data", str(data), "--output", str(cut), *ARGS, "--max-updates", "5"]) == 0
    assert main(["train", "--resume", str(cut / "last.pth")]) == 0
    a, b = model_state(ref / "last.pth"), model_state(cut / "last.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "steps.csv").read_text() == (cut / "steps.csv").read_text()


def test_recipe_needs_data(tmp_path, capsys):
    assert main(["train", "--recipe", "vmamba", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--recipe vmamba is a recipe for your data" in err[0]


def test_benchmark_compare_vmamba_prints_table4(capsys):
    code = main(["benchmark", "--model", "mambaout_tiny", "--compare", "vmamba", "--mode", "both", "-b", "1",
                 "--img-size", "32", "--repeats", "1", "--warmup", "0", "--json"])
    assert code == 0
    records = json.loads(capsys.readouterr().out)
    assert {(r["model"], r["mode"]) for r in records} == {(m, mode) for m in ("mambaout_tiny", "vmamba_tiny")
                                                          for mode in ("infer", "train")}
    vm = [r for r in records if r["impl"] == "vmamba"]
    assert all(r["ours"] == "mambaout_tiny" and r["ratio"] > 0 for r in vm)
    assert all(r["scan"] == "pytorch (recurrence / chunked)" for r in vm)      # which scan ran
    assert all(r["scan"] is None for r in records if r["impl"] == "mambaout")
    assert main(["benchmark", "--model", "mambaout_tiny", "--compare", "vmamba", "-b", "1", "--img-size", "32",
                 "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "Table 4" in out and "vmamba_tiny" in out and "582" in out and "MambaOut / vmamba_tiny: infer" in out
    assert "selective scan: pytorch" in out
    assert main(["benchmark", "--model", "mambaout_femto", "--compare", "vmamba", "--img-size", "32"]) == 2
    assert "pairs mambaout_tiny with vmamba_tiny" in capsys.readouterr().err


def test_compare_choices_are_the_benchmarks():
    """The CLI's --compare choices are the benchmark's families (kept as a literal for a fast CLI)."""
    import argparse
    from mambaout.cli import build_parser
    from mambaout.deploy.benchmark import COMPARE_CHOICES
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    compare = next(a for a in sub.choices["benchmark"]._actions if a.dest == "compare")
    assert tuple(compare.choices) == COMPARE_CHOICES


@pytest.mark.parametrize("family,ours,theirs", [("efficient_vmamba", "mambaout_femto", "efficient_vmamba_small"),
                                                ("vim", "mambaout_s_iso", "vim_small")])
def test_benchmark_compares_the_other_families(family, ours, theirs, capsys):
    """--compare takes every comparator family; the Table 4 layout lists the pair (the paper's
    Table 4 has no column for them: '-')."""
    assert main(["benchmark", "--model", ours, "--compare", family, "-b", "1", "--img-size", "32",
                 "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert f"MambaOut / {theirs}: infer" in out and theirs in out
