"""Training with the paper's recipe, from one CPU to many machines (torchrun + DDP).

Reads top to bottom: set up -> data -> model -> optimiser/schedule -> (resume) ->
for each epoch: train updates, validate, write checkpoints and logs.

Determinism: each sample is augmented under its own seed (data.SeededSamples) and
each micro-batch's mixup/drop-path draws come from a seed derived from (seed, epoch,
update, rank). So a run resumed from any checkpoint, even one written mid-epoch,
follows the same path as an uninterrupted run (bitwise on CPU), and the global batch
is the same set of images for any number of processes.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from .data import (DataPipelineError, ResumableSampler, SampleFailure, SeededSamples, build_datasets,
                   collate_skip_bad, recipe_transforms, shutdown_workers, worker_ignore_signals)
from .data.datasets import sample_seed
from .distributed import Dist, all_reduce_sum, cleanup, setup
from .errors import CheckpointError, MambaOutError
from .evaluate import evaluate, make_eval_loader
from .models import create_model, get_variant
from .recipe import Recipe

log = logging.getLogger("mambaout")


class TrainingDiverged(MambaOutError):
    """The loss became NaN or infinite."""


@dataclass
class RunOptions:
    """Where and how to run; not part of the recipe."""
    data: Optional[str] = None            # ImageFolder root with train/ and val/; None = embedded digits
    output: Optional[str] = None          # run folder; default ./runs/<time>-<model>
    resume: Optional[str] = None          # training checkpoint to continue from
    pretrained: bool = False              # start from the released weights (fine-tuning)
    initial_checkpoint: Optional[str] = None  # start from these weights (fine-tuning)
    device: str = "auto"
    workers: int = 2
    amp: Optional[str] = None             # None, "bf16" or "fp16"
    channels_last: bool = False
    compile: bool = False
    grad_checkpointing: bool = False
    val_batch_size: Optional[int] = None
    checkpoint_every: int = 0             # also save last.pth every N updates (0: epoch ends only)
    tensorboard: bool = False
    progress: bool = True
    max_updates: Optional[int] = None     # stop after this many updates in total (tests, smoke runs)


@dataclass
class TrainResult:
    output: Path
    best_top1: float
    final_top1: Optional[float]
    epochs_run: int
    status: str                           # "finished", "interrupted", "stopped"
    history: List[dict] = field(default_factory=list)


def _micro_seed(recipe: Recipe, epoch: int, update: int, micro: int, rank: int) -> int:
    return sample_seed(recipe.seed + 7919, epoch, (update * 1000 + micro) * 10_000 + rank)


def train(recipe: Recipe, opts: RunOptions = RunOptions()) -> TrainResult:
    d = setup(opts.device)
    try:
        return _train(recipe, opts, d)
    finally:
        cleanup(d)


def _train(recipe: Recipe, opts: RunOptions, d: Dist) -> TrainResult:
    t_start = time.time()
    variant = get_variant(recipe.model)
    recipe.model = variant.name
    _check_recipe(recipe, opts)
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)

    resume_obj = ckpt.read_training_checkpoint(opts.resume) if opts.resume else None
    if resume_obj is not None:
        if resume_obj["model_name"] != recipe.model:
            raise CheckpointError(f"cannot resume: {opts.resume} trains {resume_obj['model_name']}, "
                                  f"this run trains {recipe.model}")
        if resume_obj.get("img_size") not in (None, recipe.img_size):
            raise CheckpointError(f"cannot resume: {opts.resume} was trained at {resume_obj['img_size']}px, "
                                  f"this run uses {recipe.img_size}px")

    # ---- output folder (rank 0 writes everything) -------------------------------------------
    out = Path(opts.output) if opts.output else (
        Path(resume_obj_dir(opts.resume)) if opts.resume else
        Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{recipe.model}")
    if d.is_main:
        if resume_obj is None and (out / "last.pth").exists():
            raise MambaOutError(f"{out} already holds a run (last.pth); resume it with --resume "
                                f"{out / 'last.pth'} or choose another --output")
        out.mkdir(parents=True, exist_ok=True)

    # ---- data ---------------------------------------------------------------------------------
    train_tf, eval_tf = recipe_transforms(recipe)
    train_set, val_set, classes = build_datasets(opts.data, recipe.img_size, train_tf, eval_tf)
    num_classes = len(classes)
    if resume_obj is not None and int(resume_obj["num_classes"]) != num_classes:
        raise CheckpointError(f"cannot resume: {opts.resume} has {resume_obj['num_classes']} classes, "
                              f"the dataset has {num_classes}")
    sampler = ResumableSampler(len(train_set), d.rank, d.world, recipe.seed)
    per_update = recipe.batch_size * recipe.grad_accum_steps
    updates_per_epoch = sampler.per_rank // per_update
    if updates_per_epoch == 0:
        raise MambaOutError(f"{len(train_set)} training images are fewer than one global batch of "
                            f"{recipe.global_batch(d.world)}; lower --batch-size")
    loader = DataLoader(SeededSamples(train_set, recipe.seed), batch_size=recipe.batch_size,
                        sampler=sampler, num_workers=opts.workers, collate_fn=collate_skip_bad,
                        pin_memory=d.device.type == "cuda", drop_last=True,
                        persistent_workers=False, worker_init_fn=worker_ignore_signals)
    val_loader = make_eval_loader(val_set, d, opts.val_batch_size or 2 * recipe.batch_size, opts.workers)

    # ---- model --------------------------------------------------------------------------------
    model = create_model(recipe.model, num_classes=num_classes, img_size=recipe.img_size,
                         drop_path_rate=recipe.drop_path_rate(),
                         drop_rate=recipe.drop, pretrained=opts.pretrained and resume_obj is None,
                         checkpoint_path=opts.initial_checkpoint if resume_obj is None else None)
    if opts.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(d.device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)

    # ---- optimiser, schedule, AMP, EMA --------------------------------------------------------
    peak_lr = recipe.peak_lr(d.world)
    optimizer = build_optimizer(model, recipe, peak_lr)
    scheduler = build_scheduler(optimizer, recipe, updates_per_epoch)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[opts.amp]
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if recipe.model_ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=recipe.model_ema_decay)
    mixup_fn = None
    if recipe.mixup > 0 or recipe.cutmix > 0:
        from timm.data import Mixup
        mixup_fn = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                         switch_prob=recipe.mixup_switch_prob, label_smoothing=recipe.smoothing,
                         num_classes=num_classes)
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    criterion = (SoftTargetCrossEntropy() if mixup_fn else
                 LabelSmoothingCrossEntropy(recipe.smoothing) if recipe.smoothing > 0 else nn.CrossEntropyLoss())

    # ---- resume -------------------------------------------------------------------------------
    start_epoch, start_step, global_step = 0, 0, 0
    best_top1, best_epoch, history = -1.0, -1, []
    if resume_obj is not None:
        model.load_state_dict(resume_obj["model"])
        optimizer.load_state_dict(resume_obj["optimizer"])
        if resume_obj.get("scaler"):
            scaler.load_state_dict(resume_obj["scaler"])
        if ema is not None and resume_obj.get("ema"):
            ema.module.load_state_dict(resume_obj["ema"])
        start_epoch, start_step = int(resume_obj["epoch"]), int(resume_obj["step_in_epoch"])
        saved_batch = resume_obj.get("global_batch")
        if start_step > 0 and saved_batch is not None and int(saved_batch) != recipe.global_batch(d.world):
            raise CheckpointError(
                f"cannot resume mid-epoch with another global batch: {opts.resume} was written with "
                f"{saved_batch} images per update, this run has {recipe.global_batch(d.world)} "
                f"(processes x --batch-size x --grad-accum-steps)")
        global_step = int(resume_obj["global_step"])
        best_top1, best_epoch = float(resume_obj["best_top1"]), int(resume_obj["best_epoch"])
        history = list(resume_obj.get("history", []))
        ckpt.set_rng_state(resume_obj["rng"])
        scheduler.step_update(global_step)
        if d.is_main:
            log.info("resumed %s at epoch %d, update %d/%d", opts.resume, start_epoch + 1, start_step,
                     updates_per_epoch)

    train_model = model
    if opts.compile:
        train_model = torch.compile(model)
    if d.enabled:
        train_model = DDP(train_model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    if d.is_main:
        log.info("training %s (%s params) on %d images, %d classes, %d process(es) x batch %d x accum %d "
                 "= global batch %d, peak lr %.3g, %d epochs -> %s", recipe.model,
                 f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", len(train_set), num_classes,
                 d.world, recipe.batch_size, recipe.grad_accum_steps, recipe.global_batch(d.world),
                 peak_lr, recipe.epochs, out)
    tb = _tensorboard(out) if opts.tensorboard and d.is_main else None
    step_log = _open_step_log(out / "steps.csv", global_step) if d.is_main else None

    stop = {"signal": None}

    def on_stop_signal(signum, frame):
        # SIGTERM or a first Ctrl-C: finish the current update, save last.pth, exit cleanly.
        # A second Ctrl-C aborts at once (default behaviour).
        stop["signal"] = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handlers = {}
    if _main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous_handlers[sig] = signal.signal(sig, on_stop_signal)

    def state(epoch: int, step_in_epoch: int) -> dict:
        return {"format": ckpt.FORMAT, "model_name": recipe.model, "num_classes": num_classes,
                "class_names": list(classes), "img_size": recipe.img_size, "recipe": recipe.to_dict(),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "ema": ema.module.state_dict() if ema is not None else None,
                "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                "best_top1": best_top1, "best_epoch": best_epoch, "history": history,
                "world_size": d.world, "global_batch": recipe.global_batch(d.world), "rng": ckpt.rng_state()}

    def stop_on_data_error(e: DataPipelineError, epoch: int, step_in_epoch: int) -> DataPipelineError:
        # Save the state before the update that needed the sample (nothing of that update
        # was applied), then end with one line: what failed, what was kept, how to go on.
        if not d.is_main:  # rank 0 keeps the checkpoints; torchrun ends the other processes
            return DataPipelineError(e.failure, f"{e} (process rank {d.rank})")
        where = out / "last.pth"
        ckpt.save(state(epoch, step_in_epoch), where)
        (out / "error.log").write_text(e.failure.traceback)
        return DataPipelineError(e.failure, (
            f"{e}; progress saved in {where} ({global_step} updates), traceback in {out / 'error.log'}; "
            f"resume with: mambaout train --resume {where} (the sample is drawn again with the same "
            f"augmentation: fix or remove it, or change the recipe, first)"))

    status, final_top1, skipped_total, stop_requested, batches = "finished", None, 0, False, None
    try:
        for epoch in range(start_epoch, recipe.epochs):
            # ---- one epoch of updates --------------------------------------------------------
            step0 = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch, start=step0 * per_update)
            train_model.train()
            t_epoch, loss_sum, loss_n, skipped = time.time(), 0.0, 0, 0
            bar = _progress(d.is_main and opts.progress, updates_per_epoch - step0, epoch, recipe.epochs)
            batches = iter(loader)
            for update in range(step0, updates_per_epoch):
                optimizer.zero_grad(set_to_none=True)
                update_loss = torch.zeros((), dtype=torch.float64)
                for micro in range(recipe.grad_accum_steps):
                    batch = next(batches)
                    if isinstance(batch, SampleFailure):
                        raise stop_on_data_error(DataPipelineError(batch), epoch, update)
                    images, targets, n_bad = batch
                    skipped += n_bad
                    seed = _micro_seed(recipe, epoch, update, micro, d.rank)
                    torch.manual_seed(seed)
                    np.random.seed(seed % 2 ** 32)
                    if images is None:     # a whole micro-batch of unreadable files
                        images = torch.zeros(0, 3, recipe.img_size, recipe.img_size)
                        targets = torch.zeros(0, dtype=torch.long)
                    if mixup_fn is not None and len(images) % 2:
                        images, targets = images[:-1], targets[:-1]   # timm's Mixup needs even batches
                    images, targets = images.to(d.device, non_blocking=True), targets.to(d.device, non_blocking=True)
                    if mixup_fn is not None and len(images):
                        images, targets = mixup_fn(images, targets)
                    if opts.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    sync = micro == recipe.grad_accum_steps - 1 or not d.enabled
                    ctx = train_model.no_sync() if (d.enabled and not sync) else contextlib.nullcontext()
                    with ctx, torch.autocast(d.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = train_model(images)
                        loss = criterion(logits.float(), targets) if len(images) else logits.sum() * 0
                    scaler.scale(loss / recipe.grad_accum_steps).backward()
                    update_loss += loss.detach().double().cpu() / recipe.grad_accum_steps
                # all processes agree on the loss (and on stopping) before stepping
                flags = torch.stack([update_loss, torch.tensor(float(stop["signal"] is not None),
                                                               dtype=torch.float64)])
                flags = all_reduce_sum(flags.to(d.device), d).cpu()
                mean_loss = flags[0].item() / d.world
                stop_requested = flags[1].item() > 0
                if not math.isfinite(mean_loss):
                    kept = (f"the last good checkpoint is {out / 'last.pth'}" if (out / "last.pth").exists()
                            else "no checkpoint had been written yet")
                    raise TrainingDiverged(f"loss is {mean_loss} at epoch {epoch + 1}, update {update + 1}: "
                                           f"stopped; {kept} (try a lower --lr or --clip-grad)")
                if recipe.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model, step=global_step)
                global_step += 1
                scheduler.step_update(global_step)
                loss_sum, loss_n = loss_sum + mean_loss, loss_n + 1
                lr = optimizer.param_groups[0]["lr"]
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                    bar.update(1)
                if d.is_main:
                    step_log.write(f"{global_step},{epoch + 1},{update + 1},{mean_loss!r},{lr!r}\n")
                    step_log.flush()
                if tb is not None:
                    tb.add_scalar("train/loss", mean_loss, global_step)
                    tb.add_scalar("train/lr", lr, global_step)
                done_updates = opts.max_updates is not None and global_step >= opts.max_updates
                if stop_requested or done_updates or (
                        opts.checkpoint_every and global_step % opts.checkpoint_every == 0):
                    if update + 1 < updates_per_epoch:
                        if d.is_main:
                            ckpt.save(state(epoch, update + 1), out / "last.pth")
                        if stop_requested:
                            status = "interrupted"
                            break
                        if done_updates:
                            status = "stopped"
                            break
            if bar is not None:
                bar.close()
            shutdown_workers(batches)
            skipped = int(all_reduce_sum(torch.tensor(skipped, dtype=torch.float64).to(d.device), d).item())
            skipped_total += skipped
            if skipped and d.is_main:
                log.warning("epoch %d: skipped %d unreadable image(s)", epoch + 1, skipped)
            if status != "finished":
                break

            # ---- validate, log, checkpoint ---------------------------------------------------
            try:
                metrics = evaluate(ema.module if ema is not None else model, val_loader, d, amp_dtype,
                                   opts.channels_last)
            except DataPipelineError as e:
                raise stop_on_data_error(e, epoch + 1, 0) from None
            final_top1 = metrics["top1"]
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(loss_n, 1), "val_loss": metrics["loss"],
                   "top1": metrics["top1"], "top5": metrics["top5"], "lr": optimizer.param_groups[0]["lr"],
                   "epoch_time_s": round(time.time() - t_epoch, 2), "skipped_images": skipped}
            history.append(row)
            is_best = metrics["top1"] > best_top1
            if is_best:
                best_top1, best_epoch = metrics["top1"], epoch + 1
            if d.is_main:
                log.info("epoch %d/%d: train loss %.4f, val loss %.4f, top-1 %.2f%%, top-5 %.2f%% "
                         "(best %.2f%% @ %d), %.1fs", epoch + 1, recipe.epochs, row["train_loss"],
                         row["val_loss"], row["top1"], row["top5"], best_top1, best_epoch, row["epoch_time_s"])
                s = state(epoch + 1, 0)
                ckpt.save(s, out / "last.pth")
                if is_best:
                    ckpt.save(s, out / "best.pth")
                _write_logs(out, history, tb)
            if stop_requested and epoch + 1 < recipe.epochs:
                status = "interrupted"
                break
            if opts.max_updates is not None and global_step >= opts.max_updates and epoch + 1 < recipe.epochs:
                status = "stopped"
                break
    finally:
        if batches is not None:
            shutdown_workers(batches)   # on every exit path: workers ignore SIGTERM (data/loader.py)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if tb is not None:
            tb.close()
        if step_log is not None:
            step_log.close()

    result = TrainResult(out, best_top1, final_top1, len(history), status, history)
    if d.is_main:
        summary = {"model": recipe.model, "status": status, "best_top1": best_top1 if best_epoch > 0 else None,
                   "best_epoch": best_epoch if best_epoch > 0 else None, "final_top1": final_top1,
                   "epochs_run": len(history), "epochs": recipe.epochs, "global_step": global_step,
                   "num_classes": num_classes, "train_images": len(train_set), "val_images": len(val_set),
                   "skipped_images": skipped_total, "world_size": d.world,
                   "data": opts.data or "digits (embedded)", "wall_time_s": round(time.time() - t_start, 1),
                   "checkpoints": {"last": str(out / "last.pth"),
                                   "best": str(out / "best.pth") if (out / "best.pth").exists() else None},
                   "recipe": recipe.to_dict()}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if status == "interrupted":
            log.warning("stopped by %s after update %d; resume with: mambaout train --resume %s",
                        signal.Signals(stop["signal"]).name, global_step, out / "last.pth")
    return result


def build_optimizer(model: nn.Module, recipe: Recipe, lr: float):
    """AdamW (Table 2) through timm: no weight decay on 1-d parameters (norms, biases, layer scale)."""
    from timm.optim import create_optimizer_v2
    kw = dict(eps=recipe.opt_eps, betas=tuple(recipe.opt_betas)) if "adam" in recipe.opt.lower() else {}
    return create_optimizer_v2(model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay, **kw)


def build_scheduler(optimizer, recipe: Recipe, updates_per_epoch: int):
    """Linear warmup from warmup_lr for warmup_epochs, then cosine decay to min_lr at the last
    update; stepped per optimizer update (`step_update(n)` sets the lr for update n+1)."""
    from timm.scheduler import CosineLRScheduler
    if recipe.sched != "cosine":
        raise MambaOutError(f"only the cosine schedule of Table 2 is supported, got {recipe.sched!r}")
    return CosineLRScheduler(optimizer, t_initial=recipe.epochs * updates_per_epoch, lr_min=recipe.min_lr,
                             warmup_t=round(recipe.warmup_epochs * updates_per_epoch),
                             warmup_lr_init=recipe.warmup_lr, t_in_epochs=False)


def resume_obj_dir(path) -> str:
    return str(Path(path).resolve().parent)


def _check_recipe(r: Recipe, opts: RunOptions):
    if r.epochs <= 0 or r.batch_size <= 0 or r.grad_accum_steps <= 0 or r.img_size <= 0:
        raise MambaOutError("--epochs, --batch-size, --grad-accum-steps and --img-size must be positive")
    if (r.mixup > 0 or r.cutmix > 0) and r.batch_size % 2:
        raise MambaOutError(f"--batch-size must be even with mixup/cutmix (got {r.batch_size})")
    if opts.amp not in (None, "bf16", "fp16"):
        raise MambaOutError(f"--amp must be bf16 or fp16, got {opts.amp}")
    if not 0 < r.scale[0] <= r.scale[1] <= 1:
        raise MambaOutError(f"--scale needs 0 < MIN <= MAX <= 1 (fractions of the image area), got {r.scale}")
    if not 0 < r.ratio[0] <= r.ratio[1]:
        raise MambaOutError(f"--ratio needs 0 < MIN <= MAX (crop aspect ratios), got {r.ratio}")
    if opts.pretrained and opts.initial_checkpoint:
        raise MambaOutError("give --pretrained or --initial-checkpoint, not both")


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _progress(enabled: bool, total: int, epoch: int, epochs: int):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="it", dynamic_ncols=True,
                mininterval=1.0, leave=False)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MambaOutError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))


def _open_step_log(path: Path, global_step: int):
    """steps.csv: one row per optimizer update; rows past a resumed step are dropped."""
    rows = []
    if path.exists() and global_step > 0:
        rows = [r for r in path.read_text().splitlines()[1:] if r and int(r.split(",")[0]) <= global_step]
    f = open(path, "w")
    f.write("step,epoch,update,loss,lr\n" + "".join(r + "\n" for r in rows))
    return f


def _write_logs(out: Path, history: List[dict], tb):
    from .utils import atomic_write

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[0]))
            w.writeheader()
            w.writerows(history)
    atomic_write(out / "metrics.csv", write_csv)
    if tb is not None:
        row = history[-1]
        for k in ("val_loss", "top1", "top5"):
            tb.add_scalar(f"val/{k}", row[k], row["epoch"])
    plot_curves(history, out / "curves.png")


def plot_curves(history: List[dict], path: Path):
    """Loss and accuracy per epoch as a PNG (skipped, with a note, without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no curves.png")
        return
    from .utils import atomic_write
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [h["top1"] for h in history], "o-", label="top-1")
    b.plot(ep, [h["top5"] for h in history], "o-", label="top-5")
    b.set_xlabel("epoch"), b.set_ylabel("val accuracy (%)"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
