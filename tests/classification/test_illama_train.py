"""iLLaMA's soft mask schedule as a recipe option: the schedule, its defaults and errors, the
engine's per-epoch hook, and `mambaout train --model illama_tiny_causal` on the embedded digits
lowering the loss, switching the mask at the cutoff epoch and resuming bit for bit."""
import csv
import re
from dataclasses import replace

import pytest
import torch

from mambaout.cli import main
from mambaout.errors import MambaOutError
from mambaout.models.illama import ILLaMA
from mambaout.recipe import Recipe, digits_recipe
from mambaout.tasks.classification.recipe import ILLAMA_SOFT_MASK, soft_mask_schedule
from mambaout.tasks.classification.task import ClassificationTask
from runs import model_state

# the embedded digits (1442 train images, 22 updates of 64 an epoch) at 32 px: 2 tokens a side
ARGS = ["--model", "illama_tiny_causal", "--img-size", "32", "--epochs", "2", "--lr", "1e-3",
        "--warmup-epochs", "1", "--soft-mask-ratio", "0.5", "--soft-mask-epochs", "1", "-j", "0", "--no-progress"]


def test_schedule_is_illamas():
    """mask_scheduler.py, mode soft, schedule constant: r before the cutoff epoch, then 0;
    iLLaMA-T's run: r = 1.0 for epochs 0-49 (its log), causal from 50."""
    assert ILLAMA_SOFT_MASK == (1.0, 50)
    assert [soft_mask_schedule(e, 1.0, 50) for e in (0, 49, 50, 299)] == [1.0, 1.0, 0.0, 0.0]
    assert [soft_mask_schedule(e, 0.3, 0) for e in (0, 5)] == [0.0, 0.0]
    task = ClassificationTask(Recipe(model="illama_tiny_causal"))
    task.check()                                   # iLLaMA's schedule filled in for a causal iLLaMA
    r = task.recipe
    assert (r.soft_mask_ratio, r.soft_mask_epochs) == (1.0, 50)
    assert [r.soft_mask_at(e) for e in (0, 49, 50)] == [1.0, 1.0, 0.0]
    for name in ("illama_tiny", "mambaout_tiny"):  # no mask: nothing filled in, no schedule
        task = ClassificationTask(Recipe(model=name))
        task.check()
        assert task.recipe.soft_mask_ratio is None and task.recipe.soft_mask_at(0) is None


def test_start_epoch_sets_the_mask_of_the_epoch_on_model_and_ema():
    task = ClassificationTask(replace(digits_recipe(), model="illama_tiny_causal", epochs=4,
                                      soft_mask_ratio=0.5, soft_mask_epochs=2))
    task.check()
    model, ema = (ILLaMA(img_size=32, patch_size=16, dim=16, depth=1, num_heads=2, causal=True) for _ in range(2))
    seen = []
    for epoch in range(4):
        task.start_epoch(epoch, [model, ema])
        seen.append((model.soft_mask_ratio, ema.soft_mask_ratio))
    assert seen == [(0.5, 0.5), (0.5, 0.5), (0.0, 0.0), (0.0, 0.0)]
    other = ClassificationTask(replace(digits_recipe(), model="mambaout_femto"))
    other.check()
    other.start_epoch(0, [torch.nn.Linear(1, 1)])  # no schedule: models untouched


@pytest.mark.parametrize("model, changes, message", [
    ("illama_tiny", dict(soft_mask_ratio=0.5), "apply to a model with a causal attention mask"),
    ("mambaout_femto", dict(soft_mask_epochs=3), "mambaout_femto has none"),
    ("illama_tiny_causal", dict(soft_mask_ratio=1.5), r"must be in \[0, 1\]"),
    ("illama_tiny_causal", dict(soft_mask_epochs=-1), "must be >= 0"),
    ("illama_tiny_causal", dict(), "held for 50 epochs, which leaves none of the run's 20 causal"),
])
def test_bad_soft_mask_is_one_line(model, changes, message, tmp_path, capsys):
    with pytest.raises(MambaOutError, match=message):
        ClassificationTask(replace(digits_recipe(), model=model, **changes)).check()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in changes.items()]
    assert main(["train", "--model", model, "--output", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_train_switches_the_mask_at_the_cutoff_and_resumes_bitwise(tmp_path, one_thread, monkeypatch):
    seen = []
    original = ILLaMA.set_soft_mask

    def record(self, ratio):
        seen.append(ratio)
        original(self, ratio)
    monkeypatch.setattr(ILLaMA, "set_soft_mask", record)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(["train", "--output", str(ref), *ARGS]) == 0
    assert seen == [0.5, 0.0]                      # epoch 0 soft, causal from the cutoff (epoch 1)
    recipe = torch.load(ref / "last.pth", map_location="cpu", weights_only=True)["recipe"]
    assert (recipe["model"], recipe["soft_mask_ratio"], recipe["soft_mask_epochs"]) == ("illama_tiny_causal", 0.5, 1)
    losses = [float(r["loss"]) for r in csv.DictReader(open(ref / "steps.csv"))]
    assert len(losses) == 44 and sum(losses[-5:]) < sum(losses[:5]), losses
    # stop in epoch 0 (soft), resume across the cutoff: the mask comes back from the epoch
    seen.clear()
    assert main(["train", "--output", str(cut), *ARGS, "--max-updates", "15"]) == 0
    assert main(["train", "--resume", str(cut / "last.pth")]) == 0
    assert seen == [0.5, 0.5, 0.0]
    a, b = model_state(ref / "last.pth"), model_state(cut / "last.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "steps.csv").read_text() == (cut / "steps.csv").read_text()
    # a resumed run cannot change the schedule: it is part of the run
    assert main(["train", "--resume", str(cut / "last.pth"), "--soft-mask-epochs", "2"]) == 2
