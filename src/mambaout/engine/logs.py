"""What a run writes besides checkpoints: steps.csv (one row per update), metrics.csv (one row
per validation), curves.png, TensorBoard scalars, and the progress bar."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Sequence

from ..errors import WriteError, require
from ..utils import atomic_write, write_csv

log = logging.getLogger("mambaout")


def progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="it", dynamic_ncols=True, mininterval=1.0, leave=False)


def tensorboard(out: Path):
    require("tensorboard", "tensorboard", "--log-tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(out / "tensorboard"))


class StepLog:
    """steps.csv: one row per optimizer update, flushed as it is written; rows past a resumed
    step are dropped. A failed write is a WriteError (the file and the reason)."""

    def __init__(self, path: Path, global_step: int):
        self.path = path
        rows = []
        if path.exists() and global_step > 0:
            rows = [r for r in path.read_text().splitlines()[1:] if r and int(r.split(",")[0]) <= global_step]
        self.f = self._guard(lambda: open(path, "w"))
        self.write("step,epoch,update,loss,lr\n" + "".join(r + "\n" for r in rows))

    def _guard(self, fn):
        try:
            return fn()
        except OSError as e:
            raise WriteError(self.path, e) from None

    def write(self, text: str):
        self._guard(lambda: (self.f.write(text), self.f.flush()))

    def close(self):
        try:
            self.f.close()
        except OSError:
            pass        # every row was flushed when written: a failure there was reported then


def write_logs(out: Path, history: List[dict], tb, metric_keys: Sequence[str], x_key: str):
    """metrics.csv (atomically), the latest row to TensorBoard, curves.png."""
    write_csv(history, out / "metrics.csv")
    if tb is not None:
        row = history[-1]
        for k in ("val_loss", *metric_keys):
            if k in row:
                tb.add_scalar(f"val/{k}", row[k], row[x_key])
    plot_curves(history, out / "curves.png", metric_keys, x_key)


def plot_curves(history: List[dict], path: Path, metric_keys: Sequence[str] = ("top1", "top5"),
                x_key: str = "epoch"):
    """Losses and the task's metrics over `x_key` as a PNG (skipped, with a note, without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no curves.png")
        return
    x = [h[x_key] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        if key in history[0]:
            a.plot(x, [h[key] for h in history], "o-", label=label)
    a.set_xlabel(x_key), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    for key in metric_keys:
        b.plot(x, [h[key] for h in history], "o-", label=key)
    b.set_xlabel(x_key), b.set_ylabel("validation (%)"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
