"""Checkpoints written before the layout of issue 19 (format mambaout-train-v1, as main wrote
them at b743282) still resume, validate and predict. The test writes such a file itself: the
session's digits run, with the recipe as it was stored then (a `repeated_aug` field, since
removed) and with exactly the keys that main wrote."""
import json

import torch

from mambaout.cli import main
from mambaout.data import DigitsDataset

# What a classification last.pth held at b743282 (engine/loop.py state() + the task's meta).
V1_KEYS = {"format", "task", "model_name", "num_classes", "recipe", "class_names", "img_size", "data_source",
           "run_options", "model", "optimizer", "scheduler", "scaler", "ema", "epoch", "step_in_epoch",
           "global_step", "best_score", "best_epoch", "best_step", "history", "world_size", "global_batch", "rng"}
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng")


def test_v1_checkpoints_resume_validate_and_predict(digits_checkpoint, tmp_path, capsys):
    obj = torch.load(digits_checkpoint.parent / "last.pth", map_location="cpu", weights_only=True)
    assert set(obj) == V1_KEYS and obj["format"] == "mambaout-train-v1" and obj["epoch"] == 3
    obj["recipe"]["repeated_aug"] = False
    last, best = tmp_path / "run" / "last.pth", tmp_path / "run" / "best.pth"
    last.parent.mkdir()
    torch.save(obj, last)
    torch.save({k: v for k, v in obj.items() if k not in TRAINING_STATE}, best)

    assert main(["validate", "--checkpoint", str(best), "--json"]) == 0
    top1 = json.loads(capsys.readouterr().out)["top1"]
    assert top1 > 80, top1

    image = tmp_path / "seven.png"
    val = DigitsDataset("val", img_size=32)
    index = next(i for i in range(len(val)) if val[i][1] == 7)
    val[index][0].save(image)
    assert main(["predict", str(image), "--checkpoint", str(best), "--json", "--top-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["topk"][0]["label"] == "7"

    assert main(["train", "--resume", str(last), "--epochs", "4", "--no-progress"]) == 0
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 4 and resumed["recipe"]["epochs"] == 4
    assert len(resumed["history"]) == len(obj["history"]) + 1
