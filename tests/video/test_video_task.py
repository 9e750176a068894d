"""The video task on the engine (tasks/video, `mambaout video train|eval|predict`): the SSV2
recipe, multi-view evaluation, skipping unreadable videos, exact resume, eval and predict, and
the errors a user can make. Videos are written here, tiny (32x32, 12 frames, a moving bar)."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mambaout.cli import main
from mambaout.data.video import write_video
from mambaout.tasks.video.recipe import VideoRecipe, moving_digits_recipe
from mambaout.tasks.video.task import RunOptions, evaluate_views, train_video, view_logits

av = pytest.importorskip("av")

SIZE, FRAMES = 32, 12


def _clip(direction: int, rng) -> np.ndarray:
    """A bright vertical bar crossing a dark frame left to right (+1) or right to left (-1)."""
    frames = np.full((FRAMES, SIZE, SIZE, 3), 20, np.uint8)
    xs = np.linspace(2, SIZE - 6, FRAMES).astype(int)[::direction]
    for t, x in enumerate(xs):
        frames[t, :, x:x + 4] = 230
    return np.clip(frames.astype(int) + rng.integers(-10, 10, frames.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """DIR/{train,val}/{left,right}/*.mp4 (6 + 2 per class) plus, in train/left, an empty and a
    truncated file (skipped and counted)."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for name, direction in (("left", -1), ("right", 1)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                write_video(folder / f"{i}.mp4", _clip(direction, rng))
    bad = root / "train" / "left"
    (bad / "empty.mp4").write_bytes(b"")
    whole = (bad / "0.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    return root


TINY = ["--model", "mambaout_femto_video", "--num-frames", "4", "--img-size", "32", "-b", "4", "--num-sample", "1",
        "--epochs", "2", "--lr", "1e-3", "--warmup-epochs", "0", "--aa", "none", "--mixup", "0", "--cutmix", "0",
        "--reprob", "0", "--drop-path", "0", "--layer-decay", "none", "--scale", "0.8", "1", "-j", "0",
        "--no-progress", "--device", "cpu"]


def test_the_ssv2_recipe_is_videomambas_and_never_flips():
    r = VideoRecipe()
    assert (r.model, r.num_frames, r.img_size, r.epochs, r.warmup_epochs) == ("videomamba_tiny", 8, 224, 35, 5)
    assert (r.weight_decay, r.drop_path, r.layer_decay, r.num_sample) == (0.1, 0.1, 0.75, 2)
    assert r.auto_augment == "rand-m5-n2-mstd0.25-inc1" and r.hflip == 0.0
    assert (r.test_clips, r.test_crops) == (2, 3)
    assert r.peak_lr(world_size=8) == pytest.approx(4e-4 * 64 * 8 * 2 / 256)   # VideoMamba's 1.6e-3
    from mambaout.tasks.video.data import build_video_datasets
    assert moving_digits_recipe().hflip == 0.0                 # a flip would turn "left" into "right"


def test_multi_view_evaluation_is_the_mean_of_the_single_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5)).eval()
    views = torch.randn(3, 6, 3, 2, 4, 4)                       # 3 videos x 6 views
    with torch.no_grad():
        together = view_logits(model, views)
        one_by_one = torch.stack([view_logits(model, views[:, v]) for v in range(6)]).mean(0)
    assert torch.allclose(together, one_by_one, atol=1e-6)
    assert torch.allclose(together.sum(1), torch.ones(3))


def test_train_skips_and_counts_unreadable_videos_and_resumes_exactly(folders, tmp_path, one_thread):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(["video", "train", "--data", str(folders), "--output", str(ref), *TINY]) == 0
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["train_images"] == 14
    assert summary["skipped_images"] >= 2                      # the empty and the truncated file
    assert main(["video", "train", "--data", str(folders), "--output", str(cut), *TINY, "--max-updates", "3"]) == 0
    assert main(["video", "train", "--resume", str(cut / "last.pth"), "-j", "0", "--no-progress"]) == 0
    a = torch.load(ref / "last.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(cut / "last.pth", map_location="cpu", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref / "steps.csv").read_text() == (cut / "steps.csv").read_text()


def test_eval_and_predict_a_checkpoint(folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["video", "train", "--data", str(folders), "--output", str(out), *TINY]) == 0
    capsys.readouterr()
    assert main(["video", "eval", "--checkpoint", str(out / "best.pth"), "--views", "1", "--json", "-j", "0"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert (one["videos"], one["views"], one["num_frames"]) == (4, "1x1", 4)
    assert main(["video", "eval", "--checkpoint", str(out / "best.pth"), "--json", "-j", "0"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["views"] == "2x3" and full["videos"] == 4
    video = folders / "val" / "right" / "0.mp4"
    assert main(["video", "predict", str(video), str(folders / "train" / "left" / "empty.mp4"), "--checkpoint",
                 str(out / "best.pth"), "--top-k", "2", "--json"]) == 1
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert [p["views"] for p in r["predictions"]] == [6]
    assert {t["label"] for t in r["predictions"][0]["topk"]} == {"left", "right"}
    assert "empty.mp4" in r["errors"][0]["error"] and "empty.mp4" in captured.err
    # a classification checkpoint, an image model, a missing folder: one line each
    assert main(["video", "eval", "--checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert main(["video", "train", "--model", "mambaout_femto", "--output", str(tmp_path / "x"), "--epochs", "1"]) == 2
    assert "not a video model" in capsys.readouterr().err
    assert main(["video", "train", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "y")]) == 2
    assert main(["video", "train", "--train-list", str(tmp_path / "a.txt"), "--output", str(tmp_path / "z")]) == 2
    assert "give both --train-list and --val-list" in capsys.readouterr().err


def test_list_files_train_like_folders(folders, tmp_path):
    lines = {split: [f"{split}/{c}/{i}.mp4 {k}" for k, c in enumerate(("left", "right"))
                     for i in range(6 if split == "train" else 2)] for split in ("train", "val")}
    for split, rows in lines.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(rows) + "\n")
    recipe = replace(moving_digits_recipe(), num_frames=4, img_size=32, batch_size=4, epochs=1, scale=(0.8, 1.0))
    result = train_video(recipe, RunOptions(output=str(tmp_path / "run"), workers=0, progress=False),
                         lists={"train_list": str(tmp_path / "train.txt"), "val_list": str(tmp_path / "val.txt"),
                                "video_root": str(folders)})
    assert result.status == "finished"
    source = torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=True)["data_source"]
    assert source["video_root"] == str(folders.resolve()) and source["data"] is None


def test_evaluate_views_counts_each_video_once():
    from mambaout.distributed import Dist
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 3)).eval()
    batches = [(torch.randn(2, 2, 3, 2, 4, 4), torch.tensor([0, 1]), 1), (None, None, 2)]
    r = evaluate_views(model, batches, Dist())
    assert (r["videos"], r["skipped"]) == (2, 3) and 0 <= r["top1"] <= 100
