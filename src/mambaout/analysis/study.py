"""`mambaout study`: Table 8's Conv vs Attention vs SSM comparison, rerunnable.

Trains one isotropic study model per (token mixer, seed) with the ordinary training
loop (train.py), on a CIFAR-10/100 folder the user provides or on the embedded digits
set, then reports mean +- std of the best top-1 over seeds, next to the paper's
CIFAR numbers where they apply, and writes runs.csv, summary.csv and a bar plot.

Each run lives in <output>/<model>-seed<N>/. A finished run is reused and an
interrupted one resumed when the same sweep is started again, so a long sweep is
never lost to a crash.

The paper trains 200 epochs on CIFAR and gives no other setting; our CIFAR recipe
(cifar_recipe) is a common small-ViT-on-CIFAR one and says so.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import MambaOutError
from ..tasks.classification.recipe import Recipe, digits_recipe
from ..utils import write_csv

MIXERS = ("conv", "attn", "attn_causal", "ssm", "ssm_bi")
DIMS = (64, 192)


def model_for(mixer: str, dim: int) -> str:
    """'conv', 64 -> 'study_conv_d64'; a registered model name passes through."""
    from ..models import VARIANTS
    if mixer in VARIANTS:
        return mixer
    if mixer not in MIXERS:
        raise MambaOutError(f"unknown mixer '{mixer}': choose from {', '.join(MIXERS)} "
                            f"(or give a model name from `mambaout models`)")
    if dim not in DIMS:
        raise MambaOutError(f"--dim must be one of {', '.join(map(str, DIMS))} (Table 8), got {dim}")
    return f"study_{mixer}_d{dim}"


def cifar_recipe(model: str) -> Recipe:
    """Our CIFAR setting for the 200-epoch runs of Table 8 (the paper gives only the epochs,
    the 32x32 input and patch 4): AdamW lr 1e-3 at batch 128, 10 warmup epochs, cosine,
    weight decay 0.05, RandAugment, Mixup/CutMix, label smoothing, random erasing, flips,
    crops of 35-100% of the image, stochastic depth 0.1."""
    return replace(Recipe(), model=model, img_size=32, epochs=200, batch_size=128, lr=1e-3,
                   warmup_epochs=10, scale=(0.35, 1.0), drop_path=0.1)


def study_recipe(model: str, data: Optional[str], seed: int, epochs: Optional[int] = None,
                 batch_size: Optional[int] = None, lr: Optional[float] = None) -> Recipe:
    """The digits recipe (a few CPU minutes per model) or the CIFAR one, with overrides."""
    r = cifar_recipe(model) if data else replace(digits_recipe(), model=model, epochs=10)
    r = replace(r, seed=seed)
    if epochs is not None:
        r.epochs = epochs
    if batch_size is not None:
        r.batch_size = batch_size
    if lr is not None:
        r.lr = lr
    return r


@dataclass
class Study:
    mixers: Sequence[str] = ("conv", "attn", "ssm")
    seeds: Sequence[int] = (0,)
    dim: int = 64
    data: Optional[str] = None                  # CIFAR folder; None = embedded digits
    output: str = "runs/study"
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    device: str = "auto"
    workers: int = 2
    progress: bool = True


def run_study(study: Study, log=print) -> List[dict]:
    """Train and evaluate every (mixer, seed); returns one row per run."""
    from .complexity import measure
    from ..tasks.classification.train import RunOptions, train
    if not study.seeds:
        raise MambaOutError("give at least one seed")
    for flag in ("epochs", "batch_size"):
        if getattr(study, flag) is not None and getattr(study, flag) <= 0:
            raise MambaOutError(f"--{flag.replace('_', '-')} must be positive")
    models = [model_for(m, study.dim) for m in study.mixers]
    if len(set(models)) != len(models):
        raise MambaOutError(f"a mixer is listed twice: {', '.join(study.mixers)}")
    if study.data is not None and not Path(study.data).is_dir():
        raise MambaOutError(f"dataset folder not found: {study.data}")
    out = Path(study.output)
    rows = []
    for model in models:
        size = measure(model)
        for seed in study.seeds:
            run_dir = out / f"{model}-seed{seed}"
            summary = _read_summary(run_dir)
            if summary and summary.get("status") == "finished":
                log(f"{model} seed {seed}: finished earlier, reusing {run_dir}")
            else:
                resume = run_dir / "last.pth" if (run_dir / "last.pth").exists() else None
                log(f"{model} seed {seed}: {'resuming' if resume else 'training'} -> {run_dir}")
                recipe = study_recipe(model, study.data, seed, study.epochs, study.batch_size, study.lr)
                result = train(recipe, RunOptions(
                    data=study.data, output=str(run_dir), resume=str(resume) if resume else None,
                    device=study.device, workers=study.workers, progress=study.progress))
                if result.status != "finished":
                    raise MambaOutError(f"{model} seed {seed} stopped ({result.status}); run the same "
                                        f"command again to resume it")
                summary = _read_summary(run_dir)
            rows.append(dict(model=model, seed=seed, best_top1=summary["best_top1"],
                             final_top1=summary["final_top1"], epochs=summary["epochs_run"],
                             params=size["params"], macs=size["macs"],
                             wall_time_s=summary["wall_time_s"], run=str(run_dir)))
    return rows


def _read_summary(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def summarize(rows: List[dict]) -> List[dict]:
    """Mean and sample std of the best top-1 over seeds, per model, in the rows' order."""
    from ..models import VARIANTS
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        runs = [r for r in rows if r["model"] == model]
        accs = [r["best_top1"] for r in runs if r["best_top1"] is not None]
        mean = sum(accs) / len(accs) if accs else None
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        v = VARIANTS[model]
        paper = v.paper_cifar or (None, None)
        out.append(dict(model=model, mixer=v.extra.get("mixer"), causal=bool(v.extra.get("causal")),
                        bidirectional=bool(v.extra.get("bidirectional")), dim=v.dims[0],
                        params_m=runs[0]["params"] / 1e6, macs_m=runs[0]["macs"] / 1e6,
                        seeds=len(accs), top1_mean=mean, top1_std=std if accs else None,
                        paper_cifar10=paper[0], paper_cifar100=paper[1]))
    return out


def format_table(summary: List[dict], data_name: str) -> str:
    head = (f"{'model':<24}{'params':>8}{'MACs':>9}{'seeds':>7}{'top-1 ' + data_name:>24}"
            f"{'paper C10':>11}{'paper C100':>12}")
    lines = [head, "-" * len(head)]
    for s in summary:
        acc = "-" if s["top1_mean"] is None else f"{s['top1_mean']:.2f} +- {s['top1_std']:.2f}"
        p10 = "-" if s["paper_cifar10"] is None else f"{s['paper_cifar10']:.1f}"
        p100 = "-" if s["paper_cifar100"] is None else f"{s['paper_cifar100']:.1f}"
        lines.append(f"{s['model']:<24}{s['params_m']:>7.2f}M{s['macs_m']:>8.1f}M{s['seeds']:>7}"
                     f"{acc:>24}{p10:>11}{p100:>12}")
    return "\n".join(lines)



def plot(summary: List[dict], path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    done = [s for s in summary if s["top1_mean"] is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(done) + 1), 3.6))
    colors = {"conv": "tab:blue", "attn": "tab:orange", "ssm": "tab:green"}
    ax.bar(range(len(done)), [s["top1_mean"] for s in done], yerr=[s["top1_std"] for s in done],
           capsize=4, color=[colors.get(s["mixer"], "tab:gray") for s in done])
    ax.set_xticks(range(len(done)), [s["model"].replace("study_", "") for s in done], rotation=20)
    ax.set_ylabel("top-1 (%), mean +- std over seeds")
    lo = min(s["top1_mean"] - (s["top1_std"] or 0) for s in done) if done else 0
    ax.set_ylim(max(0.0, lo - 5), 100)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(study: Study, rows: List[dict]) -> dict:
    """Write runs.csv, summary.csv, study.png under the study folder; return the paths + table."""
    out = Path(study.output)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    data_name = "digits" if study.data is None else Path(study.data).name
    write_csv(rows, out / "runs.csv")
    write_csv(summary, out / "summary.csv")
    plot(summary, out / "study.png", f"Token mixers on {data_name}, dim {study.dim}, "
                                     f"{len(study.seeds)} seed(s)")
    return dict(table=format_table(summary, data_name), summary=summary,
                files=[str(out / n) for n in ("runs.csv", "summary.csv", "study.png")])
