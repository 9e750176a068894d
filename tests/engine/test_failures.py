"""Error paths of a training run with loader workers: a transform that raises, an error in the
model, a diverged loss. Each ends the process promptly, non-zero, with one clear line; no
worker process is left behind; the last checkpoint is kept."""
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambaout.data import DataPipelineError
from mambaout.tasks.classification.train import RunOptions, train
from imagesets import make_folder
from runs import TINY, env1, tiny_args, ROOT

# Runs `mambaout` with a fault injected: FAULT=train|eval puts ExplodingOp into the train/eval
# transform (it raises on the 23x23 "marked" image, in training only from the 2nd epoch on);
# FAULT=forward makes the model raise at its 5th training forward.
FAULT_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    import mambaout.tasks.classification.task as T
    from mambaout.data.datasets import sample_seed
    FAULT = os.environ["FAULT"]
    LATE = {sample_seed(0, e, i) for e in (1, 2, 3) for i in range(200)}

    class ExplodingOp:
        def __init__(self, late):
            self.late = late
        def __call__(self, img):
            if img.size == (23, 23) and (not self.late or torch.initial_seed() in LATE):
                raise RuntimeError("exploded on the marked image")
            return img

    orig = T.recipe_transforms
    def recipe_transforms(recipe, *a, **k):
        train_tf, eval_tf = orig(recipe, *a, **k)
        if FAULT == "train":
            train_tf.transforms.insert(0, ExplodingOp(late=True))
        if FAULT == "eval":
            eval_tf.transforms.insert(0, ExplodingOp(late=False))
        return train_tf, eval_tf
    T.recipe_transforms = recipe_transforms

    if FAULT == "forward":
        orig_create = T.create_model
        def create_model(*a, **k):
            model = orig_create(*a, **k)
            calls = []
            def hook(module, inputs):
                if module.training:
                    calls.append(1)
                    if len(calls) == 5:
                        raise RuntimeError("the model broke")
            model.register_forward_pre_hook(hook)
            return model
        T.create_model = create_model

    from mambaout.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _folder(tmp_path, mark=None):
    data = make_folder(tmp_path / "data", per_class=(20, 4))   # 60 train images: 7 updates of 8
    if mark:
        Image.fromarray(np.full((23, 23, 3), 200, np.uint8)).save(data / mark / "marked.png")
    return data


def _leftover_processes(marker: str):
    """Processes (other than us) whose command line mentions `marker` (a run folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd:
                found.append((pid, cmd))
    return found


def _run_fault(tmp_path, fault, data, out, *extra, workers="2"):
    script = tmp_path / "run_with_fault.py"
    script.write_text(FAULT_SCRIPT)
    args = tiny_args(data, out, *extra)
    args[args.index("-j") + 1] = workers
    t0 = time.time()
    p = subprocess.run([sys.executable, str(script), *args], env=dict(env1(), FAULT=fault), cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    return p, time.time() - t0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fault is injected through a forked worker")
def test_transform_error_in_worker_ends_run_with_one_line_and_checkpoint(tmp_path):
    data = _folder(tmp_path, mark="train/red")
    out = tmp_path / "run"
    p, took = _run_fault(tmp_path, "train", data, out)
    assert p.returncode == 2, p.stderr[-3000:]
    assert took < 120, f"took {took:.0f}s"
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if "mambaout: error" in line]
    assert len(errors) == 1, errors
    line = errors[0]
    for needle in ("mambaout: error: data pipeline error in epoch 2 at sample", "marked.png", "ExplodingOp",
                   "RuntimeError: exploded on the marked image", f"--resume {out / 'last.pth'}"):
        assert needle in line, (needle, line)
    assert not _leftover_processes(str(out))
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and ck["global_step"] == 7 + ck["step_in_epoch"]
    assert "exploded on the marked image" in (out / "error.log").read_text()

    # the line's advice works: remove the sample, resume, finish
    (data / "train/red/marked.png").unlink()
    r = subprocess.run([sys.executable, "-m", "mambaout", *tiny_args(data, out, "--resume", str(out / "last.pth"))],
                       env=env1(), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(out / "last.pth", map_location="cpu", weights_only=True)["epoch"] == 3


def test_validation_transform_error_keeps_the_epoch(tmp_path):
    data = _folder(tmp_path, mark="val/green")
    out = tmp_path / "run"
    p, took = _run_fault(tmp_path, "eval", data, out)
    assert p.returncode == 2 and took < 120, p.stderr[-3000:]
    line = p.stderr.strip().splitlines()[-1]
    assert "data pipeline error in evaluation at sample" in line and "marked.png" in line, line
    assert "Traceback" not in p.stderr
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 0, 7)  # epoch 1's training kept
    assert not _leftover_processes(str(out))


@pytest.mark.parametrize("fault, extra, code", [("forward", (), 1), ("none", ("--lr", "1e12"), 3)])
def test_any_training_error_with_workers_exits_promptly(tmp_path, fault, extra, code):
    """An exception in the model and a diverged loss, with loader workers that ignore SIGTERM:
    the process ends (it used to wait forever for its workers at exit)."""
    data = _folder(tmp_path)
    out = tmp_path / "run"
    p, took = _run_fault(tmp_path, fault, data, out, "--checkpoint-every", "1", *extra)
    assert p.returncode == code, p.stderr[-3000:]
    assert took < 120, f"took {took:.0f}s"
    assert not _leftover_processes(str(out))
    if fault == "none":
        assert "loss is" in p.stderr.strip().splitlines()[-1]


def test_library_call_leaves_no_workers_behind(tmp_path):
    """train() raising in a Python session (a notebook) stops its workers at once."""
    data = _folder(tmp_path, mark="train/blue")
    out = tmp_path / "run"

    def explode(img):
        if img.size == (23, 23):
            raise ValueError("bad sample")
        return img
    import mambaout.tasks.classification.task as T
    orig = T.recipe_transforms
    T.recipe_transforms = lambda r: (lambda tr, ev: (tr.transforms.insert(0, explode), (tr, ev))[1])(*orig(r))
    try:
        with pytest.raises(DataPipelineError, match="epoch 1 at sample .*marked.png.*explode raised ValueError"):
            train(replace(TINY, epochs=1), RunOptions(data=str(data), output=str(out), workers=2, progress=False))
    finally:
        T.recipe_transforms = orig
    assert not [c for c in multiprocessing.active_children() if c.is_alive()]


@pytest.fixture
def small_disk(tmp_path):
    """A 120 MB tmpfs: room for one last.pth (74 MB) and one best.pth (25 MB) of a femto, not
    for a second last.pth beside the first (an atomic write needs both at once)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({r.stderr.strip() or 'mount failed'}); "
                    "the injected-ENOSPC tests in test_segment/test_detect still run")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_ends_in_one_line_and_keeps_last(tmp_path, small_disk):
    """A real full disk (ENOSPC) at the second epoch's last.pth: one line naming the file, the
    reason and the resume command, exit 2; the first epoch's last.pth intact; no temp file;
    the run copied to a disk with room resumes to the end."""
    data = make_folder(tmp_path / "data", per_class=(16, 3))
    out = small_disk / "run"
    r = subprocess.run([sys.executable, "-m", "mambaout", *tiny_args(data, out, "--epochs", "2")], env=env1(),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[-1].startswith(f"mambaout: error: cannot write {out / 'last.pth'}: No space left on device"), lines
    assert f"resume with: mambaout train --resume {out / 'last.pth'}" in lines[-1]
    assert "low disk space" in r.stderr          # said before the write that failed
    assert not list(out.glob("*.tmp")) and (out / "best.pth").stat().st_size < 0.4 * (out / "last.pth").stat().st_size
    assert torch.load(out / "last.pth", map_location="cpu", weights_only=True)["global_step"] == 6
    import shutil
    moved = shutil.copytree(out, tmp_path / "moved")
    r = subprocess.run([sys.executable, "-m", "mambaout", "train", "--resume", str(moved / "last.pth"), "-j", "0"],
                       env=env1(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(moved / "last.pth", map_location="cpu", weights_only=True)["global_step"] == 12
