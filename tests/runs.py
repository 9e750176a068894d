"""Running mambaout in tests: a tiny recipe and its command line, subprocess runs on one
thread, waiting for updates, and the SIGTERM-then-printed-resume check the tasks share."""
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mambaout.recipe import digits_recipe

ROOT = Path(__file__).resolve().parents[1]   # the repository
# a tiny, fast recipe for folders of 24px images (3 classes)
TINY = replace(digits_recipe(), img_size=24, batch_size=8, epochs=2, lr=1e-3, warmup_epochs=1)


def tiny_args(data, out, *extra):
    return ["train", "--data", str(data), "--output", str(out), "--model", "mambaout_femto",
            "--img-size", "24", "-b", "8", "--epochs", "3", "--lr", "1e-3", "--warmup-epochs", "1",
            "--aa", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--drop-path", "0",
            "--hflip", "0", "-j", "0", "--no-progress", *extra]


def env1():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    env.pop("WORLD_SIZE", None)
    return env


def model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "mambaout", *args], env=env1(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_steps(out, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        f = out / "steps.csv"
        if f.exists() and len(f.read_text().splitlines()) - 1 >= n:
            return
        if proc.poll() is not None:
            raise AssertionError("run ended early: " + proc.stderr.read()[-2000:])
        time.sleep(0.02)
    raise AssertionError("timed out waiting for steps")


def printed_resume_command(err: str) -> list:
    """The arguments of the `resume with: mambaout ...` command a stopped run printed."""
    import re
    import shlex
    found = re.findall(r"resume with: mambaout (.+)$", err, flags=re.M)
    assert found, err[-2000:]
    return shlex.split(found[-1])


def check_sigterm_and_printed_resume(args_for, tmp_path, command, steps=3):
    """A run `args_for(out)` stopped by SIGTERM after `steps` updates and resumed with exactly
    the command it printed (`mambaout <command> --resume <out>/last.pth`) ends with bitwise the
    weights and the per-update log of the same run left uninterrupted (one thread each)."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    r = subprocess.run([sys.executable, "-m", "mambaout", *args_for(ref)], env=env1(), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    p = _run_cli(args_for(cut))
    _wait_steps(cut, steps, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "stopped by SIGTERM" in err, err[-2000:]
    printed = printed_resume_command(err)
    assert printed == [*command, "--resume", str(cut / "last.pth")]
    r = subprocess.run([sys.executable, "-m", "mambaout", *printed], env=env1(), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = model_state(ref / "last.pth"), model_state(cut / "last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref / "steps.csv").read_text() == (cut / "steps.csv").read_text()
