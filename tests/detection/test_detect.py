"""Detection on the engine: a few training iterations lower the loss, resume equals an
uninterrupted run, eval's AP equals pycocotools' re-score of the results JSON, 2-process
evaluation counts each image once, predict draws, bad data, command-line errors."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from mambaout.cli import main
from mambaout.engine import RunOptions
from mambaout.tasks.detection.task import det_digits_recipe, evaluate_checkpoint, predict_images, train_detection
from imagesets import make_coco_set
from runs import ROOT, env1, model_state


def tiny_recipe(**kw):
    small = dict(epochs=1, lr_steps=(1,), batch_size=2, min_size=64, max_size=64, rois_per_image=32, proposals=50,
                 warmup_iters=1, lr=1e-3)
    return replace(det_digits_recipe(), **{**small, **kw})


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A tiny COCO set with every kind of bad data (make_coco_set) used for training and val."""
    images, ann, _ = make_coco_set(tmp_path_factory.mktemp("coco") / "set")
    return dict(train_ann=str(ann), train_images=str(images), val_ann=str(ann), val_images=str(images))


@pytest.fixture(scope="module")
def trained(coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("detrun") / "run"
    res = train_detection(tiny_recipe(epochs=8, lr_steps=(6, 7)), RunOptions(output=str(out), workers=0,
                                                                                progress=False), **coco)
    return out, res


def test_training_lowers_the_loss_on_bad_data(trained):
    out, res = trained
    assert res.status == "finished" and res.epochs_run == 8
    losses = [float(r.split(",")[3]) for r in (out / "steps.csv").read_text().splitlines()[1:]]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    summary = json.loads((out / "summary.json").read_text())
    # 5 images: missing.png and broken.jpg are skipped every epoch, the negative c.png is kept
    assert summary["task"] == "detection" and summary["train_images"] == 5 and summary["skipped_images"] > 0
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck["class_names"] == ["cat", "dog", "brush"] and ck["cat_ids"] == [1, 5, 90]


def test_eval_ap_equals_rescored_results_json(trained, coco, tmp_path):
    from pycocotools.cocoeval import COCOeval
    from mambaout.tasks.detection.data import CocoDetection
    out, _ = trained
    results = tmp_path / "results.json"
    m = evaluate_checkpoint(out / "last.pth", ann=coco["val_ann"], images=coco["val_images"], results_file=results,
                            device="cpu", workers=0)
    assert m["images"] == 3 and m["skipped"] == 2
    rows = json.loads(results.read_text())
    assert rows and {r["category_id"] for r in rows} <= {1, 5, 90}
    assert all(len(r["bbox"]) == 4 and isinstance(r["segmentation"]["counts"], str) for r in rows)
    # the ground truth as the dataset reads it: the file holds malformed annotations (a bbox "oops",
    # box-only ones) that pycocotools cannot score; CocoDetection drops or completes them
    gt = CocoDetection(coco["val_images"], coco["val_ann"], train=False).coco
    res = gt.loadRes(str(results))           # the standard way to score a results file
    for iou_type, key in (("bbox", "bbox_AP"), ("segm", "segm_AP")):
        ev = COCOeval(gt, res, iou_type)
        ev.params.imgIds = [1, 2, 3]
        ev.evaluate(), ev.accumulate(), ev.summarize()
        assert m[key] == pytest.approx(100 * max(ev.stats[0], 0), abs=1e-6)


def test_resume_equals_uninterrupted(coco, tmp_path, one_thread):
    # One thread: with two, Mask R-CNN training is not bitwise reproducible from run to run on
    # a loaded CPU (two identical in-process runs differed in the FPN's P5 conv weight, last
    # bits; classification and UperNet did not), so the comparison would hold only by timing.
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    r = tiny_recipe(epochs=2)
    train_detection(r, RunOptions(output=str(ref), workers=0, progress=False), **coco)
    res = train_detection(r, RunOptions(output=str(cut), workers=0, progress=False, max_updates=1), **coco)
    assert res.status == "stopped"
    train_detection(r, RunOptions(output=str(cut), workers=0, progress=False, resume=str(cut / "last.pth")), **coco)
    a, b = model_state(ref / "last.pth"), model_state(cut / "last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref / "steps.csv").read_text() == (cut / "steps.csv").read_text()


def test_two_process_eval_counts_each_image_once(trained, coco, tmp_path):
    """1 and 2 processes with the same per-image computation (batch 1, one thread): every image
    is predicted by one process, so the gathered detections and the APs are equal exactly."""
    out, _ = trained
    args = ["-m", "mambaout", "detect", "eval", "--checkpoint", str(out / "last.pth"), "--ann", coco["val_ann"],
            "--images", coco["val_images"], "--json", "-j", "0", "--device", "cpu", "-b", "1"]
    runs = {}
    for n, launcher in ((1, []), (2, ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        r = subprocess.run([sys.executable, *launcher, *args, "--results", str(tmp_path / f"{n}.json")],
                           env=env1(), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        lines = r.stdout.strip().splitlines()
        assert len(lines) == 1, r.stdout     # under torchrun only rank 0 prints the report
        runs[n] = json.loads(lines[0])
    one, two = runs[1], runs[2]
    assert two["images"] == one["images"] == 3 and two["detections"] == one["detections"] > 0
    by_image = [sorted(json.loads((tmp_path / f"{n}.json").read_text()), key=lambda r: r["image_id"]) for n in (1, 2)]
    assert by_image[0] == by_image[1]
    aps = [json.dumps({k: v for k, v in r.items() if k.startswith(("bbox_", "segm_"))}) for r in (one, two)]
    assert aps[0] == aps[1]   # as text: a NaN AP (no object of a size) equals itself there


def test_predict_draws_and_writes_json(trained, coco, tmp_path, capsys):
    out, _ = trained
    img = f"{coco['val_images']}/a.png"
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    code = main(["detect", "predict", img, str(bad), "--checkpoint", str(out / "last.pth"), "-o", str(tmp_path / "p"),
                 "--score-thr", "0.0", "--device", "cpu"])
    assert code == 1 and "cannot read" in capsys.readouterr().err
    drawn = Image.open(tmp_path / "p" / "a.png")
    assert drawn.size == Image.open(img).size
    dets = json.loads((tmp_path / "p" / "detections.json").read_text())
    assert dets[0]["image"] == img and all(d["label"] in ("cat", "dog", "brush") for d in dets[0]["detections"])
    code = main(["detect", "predict", img, str(bad), "--checkpoint", str(out / "last.pth"), "-o", str(tmp_path / "j"),
                 "--score-thr", "0.0", "--device", "cpu", "--json"])
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert code == 1 and r["written"] == json.loads((tmp_path / "j" / "detections.json").read_text())
    assert [e["image"] for e in r["errors"]] == [str(bad)]
    assert cap.err.strip().splitlines() == [f"mambaout: error: {r['errors'][0]['error']}"]
    assert cap.err.count("cannot read") == 1 and str(bad) in cap.err


def test_eval_json_cli(trained, coco, capsys):
    out, _ = trained
    assert main(["detect", "eval", "--checkpoint", str(out / "last.pth"), "--ann", coco["val_ann"], "--images",
                 coco["val_images"], "-j", "0", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "box" in text and "mask" in text and "AP50" in text


@pytest.mark.parametrize("extra, needle", [
    (["--model", "mask_rcnn_mambaout_tinny"], "unknown model"),
    (["--model", "upernet_mambaout_tiny"], "not a detection model"),
    (["--epochs", "0"], "must be positive"),
    (["--train-ann", "x.json"], "give all of"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, extra, needle):
    code = main(["detect", "train", "--output", str(tmp_path / "r"), "-j", "0", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_malformed_annotation_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    (tmp_path / "imgs").mkdir()
    code = main(["detect", "train", "--train-ann", str(bad), "--train-images", str(tmp_path / "imgs"),
                 "--val-ann", str(bad), "--val-images", str(tmp_path / "imgs"), "--output", str(tmp_path / "r"), "-j", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.json" in err[0], err


def test_recipes_1x_3x_and_step_schedule():
    from mambaout.cli import build_parser, det_recipe_from_args
    from mambaout.engine import build_optimizer, build_scheduler
    from mambaout.recipe import DetRecipe
    from mambaout.tasks.detection.task import build_detector
    r = det_recipe_from_args(build_parser().parse_args(["detect", "train", "--data", "x", "--schedule", "3x"]))
    assert (r.epochs, r.lr_steps, r.multiscale) == (36, (27, 33), (480, 800))
    with torch.device("meta"):
        model = build_detector(r, 80)
    assert model.transform.min_size == tuple(range(480, 801, 32)) and model.transform.max_size == 1333
    one_x = DetRecipe()
    assert (one_x.epochs, one_x.lr_steps, one_x.lr, one_x.weight_decay, one_x.warmup_iters) == (12, (8, 11), 1e-4, 0.05, 500)
    lin = torch.nn.Linear(2, 2)
    opt = build_optimizer(lin, one_x, one_x.lr)
    sched = build_scheduler(opt, one_x, updates_per_epoch=100)   # 500 warmup updates = 5 epochs

    def lr_of_update(n):          # the lr used by update n (1-based): set by step_update(n - 1)
        sched.step_update(n - 1)
        return opt.param_groups[0]["lr"]
    assert lr_of_update(1) == pytest.approx(1e-7)
    assert lr_of_update(501) == pytest.approx(1e-4) and lr_of_update(800) == pytest.approx(1e-4)
    assert lr_of_update(801) == pytest.approx(1e-5) and lr_of_update(1100) == pytest.approx(1e-5)
    assert lr_of_update(1101) == pytest.approx(1e-6)


def test_missing_pycocotools_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins
    import mambaout.tasks
    real_import = builtins.__import__

    def no_coco(name, *a, **kw):
        if name.startswith("pycocotools"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *a, **kw)
    for mod in [m for m in sys.modules if m.startswith(("mambaout.tasks.detection", "pycocotools"))]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.delattr(mambaout.tasks, "detection", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_coco)
    code = main(["detect", "train", "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'mambaout[detection]'" in err[0], err


# ---- resume with the printed command, conflicts, failed writes ---------------------------------------

def det_args(coco, out, *extra):
    return ["detect", "train", *[a for k in ("train_ann", "train_images", "val_ann", "val_images")
                                 for a in (f"--{k.replace('_', '-')}", coco[k])],
            "--output", str(out), "--model", "mask_rcnn_mambaout_femto", "--epochs", "4", "--lr-steps", "3",
            "-b", "2", "--min-size", "64", "--max-size", "64", "--rois-per-image", "32", "--proposals", "50",
            "--warmup-iters", "1", "--lr", "1e-3", "-j", "0", "--no-progress", "--device", "cpu", *extra]


def test_sigterm_then_the_printed_command_equals_uninterrupted(coco, tmp_path):
    """Own COCO files and a non-default recipe, stopped by SIGTERM, resumed with exactly the
    command the run printed: bitwise the weights and the per-update log of the uninterrupted run."""
    from runs import check_sigterm_and_printed_resume
    check_sigterm_and_printed_resume(lambda out: det_args(coco, out), tmp_path, ["detect", "train"])


def test_conflicting_flag_on_resume_is_one_line(coco, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(det_args(coco, out, "--max-updates", "1")) == 0
    last = str(out / "last.pth")
    for extra, needle in ((["--schedule", "3x"], "with schedule = '3x': the run has schedule = '1x'"),
                          (["--train-ann", str(tmp_path / "other.json")], "with --train-ann "),
                          (["--model", "mask_rcnn_mambaout_kobe"], "model = 'mask_rcnn_mambaout_kobe'")):
        capsys.readouterr()
        assert main(["detect", "train", "--resume", last, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_failed_write_is_one_line_and_keeps_last(coco, tmp_path, capsys, monkeypatch):
    """The disk fills up at the second epoch's last.pth (ENOSPC, injected): one line; the first
    epoch's last.pth stays intact and resumable; no temp file is left."""
    import errno
    import os
    from mambaout.engine import checkpoint as ckpt
    real, calls = ckpt._torch_save, []

    def full_disk(obj, path):
        if ".last.pth." in str(path):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, path)
    monkeypatch.setattr(ckpt, "_torch_save", full_disk)
    out = tmp_path / "run"
    assert main(det_args(coco, out, "--epochs", "3", "--lr-steps", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"cannot write {out / 'last.pth'}: No space left on device" in err[0]
    assert f"the run up to update 2 is kept in {out / 'last.pth'}" in err[0]
    assert not list(out.glob("*.tmp"))
    assert torch.load(out / "last.pth", map_location="cpu", weights_only=True)["global_step"] == 2
    monkeypatch.undo()
    assert main(["detect", "train", "--resume", str(out / "last.pth"), "-j", "0", "--no-progress"]) == 0
    assert torch.load(out / "last.pth", map_location="cpu", weights_only=True)["global_step"] == 6
