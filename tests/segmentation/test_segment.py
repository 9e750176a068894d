"""Segmentation on the engine: training (loss, resume, torchrun parity, bad data), eval (mIoU
against an independent count), predict (label maps and overlays), and the command line."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mambaout.cli import main
from mambaout.engine import RunOptions
from mambaout.recipe import SegRecipe
from mambaout.tasks.segmentation.task import evaluate_checkpoint, predict_images, train_segmentation
from imagesets import make_seg_folder
from runs import ROOT, env1, model_state


def seg_args(data, out, *extra):
    return ["segment", "train", "--data", str(data), "--output", str(out), "--model", "upernet_mambaout_femto",
            "--crop-size", "32", "--scale", "64", "32", "-b", "4", "--iters", "6", "--val-every", "3",
            "--lr", "2e-3", "--warmup-iters", "1", "--head-channels", "32", "--aux-channels", "16", "--num-classes", "4",
            "--drop-path", "0", "-j", "0", "--no-progress", "--device", "cpu", *extra]


def small_recipe(**kw):
    r = SegRecipe(model="upernet_mambaout_femto", num_classes=4, crop_size=32, scale=(64, 32), batch_size=4,
                  iters=6, val_every=3, lr=2e-3, warmup_iters=1, head_channels=32, aux_channels=16, drop_path=0.0)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_seg_folder(tmp_path_factory.mktemp("ade") / "data", n=(16, 4), labels=(0, 1, 2, 3, 4))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("segrun") / "run"
    res = train_segmentation(small_recipe(iters=150, val_every=75, lr=5e-3), RunOptions(
        data=str(data), output=str(out), workers=0, progress=False))
    return out, res


def test_loss_decreases_and_outputs(trained):
    out, res = trained
    assert res.status == "finished" and res.global_step == 150 and len(res.history) == 2
    losses = [float(r.split(",")[3]) for r in (out / "steps.csv").read_text().splitlines()[1:]]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    for name in ("last.pth", "best.pth", "metrics.csv", "steps.csv", "curves.png", "summary.json"):
        assert (out / name).exists(), name
    assert (out / "metrics.csv").read_text().startswith("step,epoch,train_loss,mIoU,mAcc,aAcc")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["best_mIoU"] == max(h["mIoU"] for h in res.history)
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck["task"] == "segmentation" and ck["global_step"] == 150 and len(ck["class_names"]) == 4


def _labels_of(path):
    return np.asarray(Image.open(path), dtype=np.int64)


def test_eval_miou_equals_independent_count_of_predictions(trained, data, tmp_path):
    out, _ = trained
    r = evaluate_checkpoint(out / "last.pth", data=str(data), workers=0, device="cpu")
    assert r["images"] == 4 and r["skipped"] == 0
    # predict writes label maps in the annotation encoding (reduce-zero-label: class k -> k + 1)
    images = sorted((data / "images" / "validation").glob("*.jpg"))
    p = predict_images([str(i) for i in images], out / "last.pth", tmp_path / "pred", device="cpu")
    assert not p["errors"] and len(p["written"]) == 4
    inter, union = np.zeros(4), np.zeros(4)
    for img in images:
        pred = _labels_of(tmp_path / "pred" / f"{img.stem}.png")
        gt = _labels_of(data / "annotations" / "validation" / f"{img.stem}.png")
        assert pred.shape == gt.shape and pred.min() >= 1          # 0 ("other") is never predicted
        keep = gt != 0
        for c in range(1, 5):
            inter[c - 1] += np.sum((pred == c) & (gt == c) & keep)
            union[c - 1] += np.sum(((pred == c) | (gt == c)) & keep)
        assert (tmp_path / "pred" / f"{img.stem}_overlay.png").exists()
    present = union > 0
    assert r["mIoU"] == pytest.approx(100 * np.mean(inter[present] / union[present]), abs=1e-6)
    assert r["aAcc"] > 40  # the colour gives the class away (chance: 25%)


def test_eval_modes_and_cli(trained, data, capsys):
    out, _ = trained
    assert main(["segment", "eval", "--checkpoint", str(out / "last.pth"), "--data", str(data), "-j", "0",
                 "--device", "cpu", "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main(["segment", "eval", "--checkpoint", str(out / "last.pth"), "--data", str(data), "-j", "0",
                 "--device", "cpu", "--mode", "slide", "--ms", "--json"]) == 0
    ms = json.loads(capsys.readouterr().out)
    assert ms["mode"] == "slide" and ms["ms"] and 0 <= ms["mIoU"] <= 100 and ms["images"] == whole["images"]
    assert main(["segment", "eval", "--checkpoint", str(out / "last.pth"), "--data", str(data), "-j", "0",
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "aAcc" in text and "mAcc" in text and "IoU" in text.splitlines()[1]


def test_resume_equals_uninterrupted(data, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    opts = dict(data=str(data), workers=0, progress=False)
    train_segmentation(small_recipe(iters=5), RunOptions(output=str(ref), **opts))
    res = train_segmentation(small_recipe(iters=5), RunOptions(output=str(cut), max_updates=2, **opts))
    assert res.status == "stopped"
    train_segmentation(small_recipe(iters=5), RunOptions(output=str(cut), resume=str(cut / "last.pth"), **opts))
    a, b = model_state(ref / "last.pth"), model_state(cut / "last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref / "steps.csv").read_text() == (cut / "steps.csv").read_text()


def test_torchrun_two_processes_match_one_process(data, tmp_path):
    """2 processes x batch 2 (gloo, BatchNorm statistics all-reduced) == 1 process x batch 4."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = seg_args(data, "X", "--iters", "4", "--val-every", "2", "--head-dropout", "0")
    args = args[:args.index("--output")] + args[args.index("--output") + 2:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "mambaout", *args, "-b", "2", "--output", str(two)],
                        env=env1(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    r1 = subprocess.run([sys.executable, "-m", "mambaout", *args, "-b", "4", "--output", str(one)],
                        env=env1(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-3000:]
    l1 = [float(r.split(",")[3]) for r in (one / "steps.csv").read_text().splitlines()[1:]]
    l2 = [float(r.split(",")[3]) for r in (two / "steps.csv").read_text().splitlines()[1:]]
    assert len(l1) == 4 and l1 == pytest.approx(l2, rel=1e-3, abs=1e-4)
    a, b = model_state(one / "last.pth"), model_state(two / "last.pth")
    for k in a:
        # The output norms' biases feed only BatchNorm-ed convs: their gradient is zero up to
        # float noise, which Adam scales to lr-sized steps of either sign. Not compared.
        if not k.startswith("backbone.out_norms.") or not k.endswith("bias"):
            assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4), k
    # The two runs' mIoU is not compared: their weights differ by float rounding (another batch
    # split), which flips the argmax of pixels whose two best scores are that close. The
    # evaluation itself is exact under torchrun: test_torchrun_eval_is_exact.
    s1, s2 = (json.loads((p / "summary.json").read_text()) for p in (one, two))
    assert s2["world_size"] == 2 and s1["world_size"] == 1 and s1["val_images"] == s2["val_images"] == 4


EVAL_SCRIPT = """
import json, os, sys
from mambaout.tasks.segmentation import metrics
from mambaout.tasks.segmentation.task import evaluate_checkpoint
matrices = []
compute = metrics.IoUMeter.compute
metrics.IoUMeter.compute = lambda self: matrices.append(self.matrix.tolist()) or compute(self)
r = evaluate_checkpoint(sys.argv[1], data=sys.argv[2], workers=0, device="cpu")
with open(sys.argv[3] + os.environ.get("RANK", "0") + ".json", "w") as f:
    json.dump({"matrix": matrices[-1], "metrics": r}, f)
"""


def test_torchrun_eval_is_exact(trained, data, tmp_path):
    """One checkpoint evaluated by 1 and by 2 processes: every image is predicted by one process
    with the same computation (batch 1, one thread) and the confusion matrices are summed as
    integers, so every process ends with the 1-process matrix and metrics, bit for bit."""
    out, _ = trained
    script = tmp_path / "seg_eval.py"
    script.write_text(EVAL_SCRIPT)
    for n, launcher in ((1, []), (2, ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        r = subprocess.run([sys.executable, *launcher, str(script), str(out / "last.pth"), str(data),
                            str(tmp_path / f"p{n}_")], env=env1(), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    text = (tmp_path / "p1_0.json").read_text()
    one = json.loads(text)
    assert sum(map(sum, one["matrix"])) > 0 and one["metrics"]["images"] == 4
    for rank in (0, 1):   # compared as text: NaN (a class absent from the data) equals itself there
        assert (tmp_path / f"p2_{rank}.json").read_text() == text, rank


def test_bad_data_is_skipped_and_counted(tmp_path, caplog):
    data = make_seg_folder(tmp_path / "data", n=(12, 2), labels=(0, 1, 2, 3, 4))
    train_imgs, train_anns = data / "images" / "training", data / "annotations" / "training"
    (train_imgs / "000.jpg").write_bytes(b"not an image")                          # unreadable image
    Image.new("L", (10, 10)).save(train_anns / "001.png")                          # another size
    Image.fromarray(np.full((28, 40), 200, np.uint8)).save(train_anns / "002.png")  # label out of range
    (train_anns / "003.png").unlink()                                               # no annotation
    out = tmp_path / "run"
    res = train_segmentation(small_recipe(iters=4, val_every=4), RunOptions(data=str(data), output=str(out),
                                                                             workers=0, progress=False))
    assert res.status == "finished"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] == 11 and summary["skipped_images"] >= 1
    text = caplog.text
    assert "no annotation" in text and "size mismatch" in text or "unreadable image" in text


@pytest.mark.parametrize("extra, needle", [
    (["--model", "upernet_mambaout_tiny_k8"], "unknown model"),
    (["--model", "mambaout_tiny"], "classification model"),
    (["--iters", "0"], "must be positive"),
    (["-b", "1"], "at least 2 images"),
    (["--ratio-range", "2", "1"], "--ratio-range"),
])
def test_cli_errors_are_one_line(data, tmp_path, capsys, extra, needle):
    code = main(seg_args(data, tmp_path / "r", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_cli_path_errors(tmp_path, capsys):
    code = main(seg_args(tmp_path / "missing", tmp_path / "r"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "not found" in err[-1]
    for argv in (["segment", "eval", "--checkpoint", str(tmp_path / "nope.pth")],
                 ["segment", "predict", "x.jpg", "--checkpoint", str(tmp_path / "nope.pth"), "-o", str(tmp_path)]):
        assert main(argv) == 2
        assert "checkpoint not found" in capsys.readouterr().err


def test_predict_reports_unreadable_images(trained, tmp_path, capsys):
    out, _ = trained
    good = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"")
    code = main(["segment", "predict", str(good), str(bad), "--checkpoint", str(out / "last.pth"),
                 "-o", str(tmp_path / "p"), "--device", "cpu"])
    assert code == 1 and "cannot read" in capsys.readouterr().err
    assert Image.open(tmp_path / "p" / "a.png").size == (50, 30)
    # an image of the same name from another folder gets its own files, not the first one's
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / "a.png"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(twin)
    assert main(["segment", "predict", str(good), str(twin), "--checkpoint", str(out / "last.pth"),
                 "-o", str(tmp_path / "q"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "q" / "a.png").size == (50, 30) and Image.open(tmp_path / "q" / "a_2.png").size == (40, 20)
    # --json: the per-image report of every predict command (files written, errors), errors on stderr too
    capsys.readouterr()
    code = main(["segment", "predict", str(good), str(bad), "--checkpoint", str(out / "last.pth"),
                 "-o", str(tmp_path / "j"), "--device", "cpu", "--json"])
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert code == 1 and [w["image"] for w in r["written"]] == [str(good)] and r["written"][0]["labels"].endswith("a.png")
    assert [e["image"] for e in r["errors"]] == [str(bad)]
    assert cap.err.strip().splitlines() == [f"mambaout: error: {r['errors'][0]['error']}"]
    assert cap.err.count("cannot read") == 1 and str(bad) in cap.err


# ---- resume with the printed command, conflicts, failed writes ---------------------------------------

def test_sigterm_then_the_printed_command_equals_uninterrupted(data, tmp_path):
    """Own data and a non-default recipe, stopped by SIGTERM, resumed with exactly the command
    the run printed: bitwise the weights and the per-update log of the uninterrupted run."""
    from runs import check_sigterm_and_printed_resume
    check_sigterm_and_printed_resume(lambda out: seg_args(data, out, "--iters", "60", "--val-every", "30"),
                                     tmp_path, ["segment", "train"])


def test_conflicting_flag_on_resume_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(seg_args(data, out, "--max-updates", "2")) == 0
    last = str(out / "last.pth")
    for extra, needle in ((["--lr", "1e-3"], "with lr = 0.001: the run has lr = 0.002"),
                          (["--data", str(tmp_path)], f"with --data {tmp_path}: the run trained on"),
                          (["--crop-size", "48"], "crop_size = 48: the run has crop_size = 32")):
        capsys.readouterr()
        assert main(["segment", "train", "--resume", last, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    # flags equal to the run's own, and what may change midway (--iters), are accepted
    assert main(["segment", "train", "--resume", last, "--lr", "2e-3", "--iters", "8", "-j", "0", "--no-progress",
                 "--device", "cpu"]) == 0
    assert torch.load(out / "last.pth", map_location="cpu", weights_only=True)["global_step"] == 8


def test_failed_write_is_one_line_and_keeps_last(data, tmp_path, capsys, monkeypatch):
    """A disk that fills up while best.pth is written (ENOSPC, injected): one line naming the
    file, the reason and the resume command; last.pth intact and resumable; no temp file."""
    import errno
    import os
    from mambaout.engine import checkpoint as ckpt
    real = ckpt._torch_save

    def full_disk(obj, path):
        if ".best.pth." in str(path):
            with open(path, "wb") as f:
                f.write(b"partial")                 # what a full disk leaves: a partial temp file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, path)
    monkeypatch.setattr(ckpt, "_torch_save", full_disk)
    out = tmp_path / "run"
    assert main(seg_args(data, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"cannot write {out / 'best.pth'}: No space left on device" in err[0]
    assert f"the run up to update 3 is kept in {out / 'last.pth'}" in err[0]
    assert f"resume with: mambaout segment train --resume {out / 'last.pth'}" in err[0]
    assert not list(out.glob("*.tmp")) and not (out / "best.pth").exists()
    monkeypatch.undo()
    assert main(["segment", "train", "--resume", str(out / "last.pth"), "-j", "0", "--no-progress"]) == 0
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 6 and (out / "best.pth").exists()
