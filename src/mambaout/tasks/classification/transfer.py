"""Fine-grained transfer (supplementary Table 9): fine-tune one model on each fine-grained dataset
found under a folder, then the table of top-1 per dataset beside the paper's.

Each dataset is an ordinary training run (the `finegrained` recipe, data/finegrained.py's
reader) in its own folder `<output>/<dataset>/`, so each can also be resumed, validated or
exported on its own. Rerunning `transfer` with the same output skips the finished runs and
resumes the unfinished ones; what a run was started with must then be what is given again
(engine/resume.py says what may change: more epochs).

The table reports each run's top-1 on the dataset's test split after its last epoch (a test set
is not used to pick an epoch; the best epoch's top-1 is in the JSON and CSV beside it).
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ...data.finegrained import LAYOUTS
from ...distributed import is_main_process, one_group_for_all_runs
from ...data.sources import find_dataset
from ...engine import RunOptions
from ...errors import MambaOutError
from ...models import get_variant
from ...utils import atomic_write, write_csv
from .recipe import Recipe, finegrained_recipe
from .train import train

log = logging.getLogger("mambaout")

# Supplementary Table 9: top-1 (%) after fine-tuning ImageNet weights at 224 px.
TABLE9 = {
    "mambaout_tiny": {"cub": 88.0, "cars": 94.3, "dogs": 95.5, "pets": 95.4, "aircraft": 90.8, "average": 92.8},
    "vmamba_tiny": {"cub": 87.9, "cars": 93.2, "dogs": 95.5, "pets": 94.8, "aircraft": 88.0, "average": 91.9},
}
PAPER_NAMES = {"mambaout_tiny": "MambaOut-Tiny", "vmamba_tiny": "VMamba-T"}


def _last_summary(out: Path) -> Optional[dict]:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _run_one(name: str, data: Path, out: Path, model: str, changes: dict, opts: RunOptions) -> dict:
    """Train, resume or skip the run of dataset `name` in `out`; its row of the table."""
    from ...engine.resume import plan_resume
    source = {"data": str(data), "dataset": name}
    last = out / "last.pth"
    given = dict(changes, model=model)
    if last.exists():
        recipe, source, run_opts = plan_resume(last, Recipe, given, source, replace(opts, resume=str(last),
                                                                                   output=str(out)))
        summary = _last_summary(out)
        if summary and summary.get("status") == "finished" and summary.get("epochs") == recipe.epochs:
            log.info("%s: finished run in %s, skipped", LAYOUTS[name].title, out)
            return _row(name, data, out, summary, "finished earlier")
        log.info("%s: resuming %s", LAYOUTS[name].title, last)
        action = "resumed"
    else:
        recipe = replace(finegrained_recipe(), **given)
        if "img_size" not in changes:
            recipe.img_size = get_variant(model).input_size
        run_opts = replace(opts, output=str(out), resume=None)
        action = "trained"
    result = train(recipe, replace(run_opts, data=str(data)), dataset=name)
    summary = _last_summary(out) or {}
    status = action if result.status == "finished" else result.status
    return _row(name, data, out, summary, status)


def _row(name: str, data: Path, out: Path, summary: dict, status: str) -> dict:
    layout = LAYOUTS[name]
    return {"dataset": name, "title": layout.title, "data": str(data), "run": str(out), "status": status,
            "top1": summary.get("final"), "best_top1": summary.get("best"), "best_epoch": summary.get("best_epoch"),
            "epochs_run": summary.get("epochs_run"), "epochs": summary.get("epochs"),
            "classes": summary.get("num_classes"), "train_images": summary.get("train_images"),
            "test_images": summary.get("val_images"), "skipped_images": summary.get("skipped_images")}


def transfer(root, datasets: Optional[Sequence[str]] = None, model: str = "mambaout_tiny", pretrained: bool = False,
             checkpoint: Optional[str] = None, output: Optional[str] = None, changes: Optional[dict] = None,
             opts: RunOptions = RunOptions()) -> dict:
    """Fine-tune `model` (from its released weights with `pretrained`, or from `checkpoint`) on
    each of `datasets` (default: all five; those not under `root` are left out unless named)
    found under `root`, with the finegrained recipe and `changes` to it; then Table 9.
    Returns {"model", "rows", "average", "paper", "complete", "files"}; writes table9.json and
    table9.csv in the output folder (default runs/transfer-<model>)."""
    root = Path(root)
    if not root.is_dir():
        raise MambaOutError(f"dataset folder not found: {root}")
    named = list(datasets) if datasets else []
    for name in named:
        if name not in LAYOUTS:
            raise MambaOutError(f"unknown dataset {name!r}: choose from {', '.join(LAYOUTS)}")
    model = get_variant(model).name
    changes = dict(changes or {})
    for key in ("model", "base"):
        changes.pop(key, None)
    out = Path(output) if output else Path("runs") / f"transfer-{model}"
    found: Dict[str, Path] = {}
    for name in named or list(LAYOUTS):
        folder = find_dataset(root, name)
        if folder is not None:
            found[name] = folder
        elif named:
            layout = LAYOUTS[name]
            raise MambaOutError(f"{layout.title} not found under {root} (looked for {', '.join(layout.markers)} "
                                f"in it and two levels down; see docs/transfer.md for the layout)")
    if not found:
        raise MambaOutError(f"no fine-grained dataset under {root} (expected e.g. {root}/CUB_200_2011/images.txt; "
                            f"the layouts are in docs/transfer.md)")
    if not (pretrained or checkpoint):
        log.warning("neither --pretrained nor --checkpoint: training from random weights (Table 9 fine-tunes "
                    "ImageNet weights)")
    opts = replace(opts, pretrained=pretrained, initial_checkpoint=checkpoint)
    rows: List[dict] = []
    with one_group_for_all_runs():
        for name, folder in found.items():
            row = _run_one(name, folder, out / name, model, changes, opts)
            rows.append(row)
            if row["status"] in ("interrupted", "stopped"):
                break
    return _table(model, rows, found, out)


def _table(model: str, rows: List[dict], found: Dict[str, Path], out: Path) -> dict:
    done = [r for r in rows if r["status"] not in ("interrupted", "stopped") and r["top1"] is not None]
    average = sum(r["top1"] for r in done) / len(done) if done else None
    complete = len(done) == len(LAYOUTS)
    report = {"model": model, "output": str(out), "rows": rows, "average": average, "averaged": len(done),
              "complete": complete,
              "pending": [n for n in found if n not in {r["dataset"] for r in done}],
              "paper": {PAPER_NAMES[m]: v for m, v in TABLE9.items()}}
    files = {"json": str(out / "table9.json"), "csv": str(out / "table9.csv")}
    report["files"] = files
    if not is_main_process():      # under torchrun rank 0 writes the table
        return report
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(files["json"], lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    csv_rows = [{"dataset": r["title"], "top1": _num(r["top1"]), "best_top1": _num(r["best_top1"]),
                 "paper_mambaout_tiny": TABLE9["mambaout_tiny"][r["dataset"]],
                 "paper_vmamba_tiny": TABLE9["vmamba_tiny"][r["dataset"]], "status": r["status"],
                 "epochs_run": r["epochs_run"], "train_images": r["train_images"], "test_images": r["test_images"],
                 "run": r["run"]} for r in rows]
    csv_rows.append({"dataset": "Average" + ("" if complete else f" ({len(done)} of {len(LAYOUTS)})"),
                     "top1": _num(average), "paper_mambaout_tiny": TABLE9["mambaout_tiny"]["average"],
                     "paper_vmamba_tiny": TABLE9["vmamba_tiny"]["average"]})
    write_csv(csv_rows, files["csv"])
    return report


def _num(v):
    return None if v is None else round(float(v), 2)


def format_table(report: dict) -> str:
    """Table 9 as text: our top-1 per dataset beside the paper's MambaOut-Tiny and VMamba-T."""
    def f(v):
        return "-" if v is None else f"{v:.1f}"
    head = (f"{'dataset':<18} {'train/test images':>17} {report['model'] + ' top-1':>24} {'paper MambaOut-Tiny':>20} "
            f"{'paper VMamba-T':>15}  status")
    lines = [f"Table 9: fine-grained transfer, top-1 (%) on each test set after the last epoch", head, "-" * len(head)]
    for r in report["rows"]:
        sizes = f"{r['train_images'] or '-'}/{r['test_images'] or '-'}"
        lines.append(f"{r['title']:<18} {sizes:>17} {f(r['top1']):>24} {TABLE9['mambaout_tiny'][r['dataset']]:>20.1f} "
                     f"{TABLE9['vmamba_tiny'][r['dataset']]:>15.1f}  {r['status']}")
    label = "Average" if report["complete"] else f"Average ({report['averaged']} of {len(LAYOUTS)})"
    lines.append(f"{label:<18} {'':>17} {f(report['average']):>24} {TABLE9['mambaout_tiny']['average']:>20.1f} "
                 f"{TABLE9['vmamba_tiny']['average']:>15.1f}")
    if report["pending"]:
        lines.append(f"not finished: {', '.join(report['pending'])} (rerun the same command to resume)")
    lines.append(f"written: {report['files']['json']}, {report['files']['csv']}")
    return "\n".join(lines)
