"""The training loop every task runs on, from one CPU to many machines (torchrun + DDP).

Reads top to bottom: set up -> data -> model -> optimiser/schedule -> (resume) -> updates,
with validation, checkpoints and logs every `recipe.val_interval(...)` updates (every epoch
for classification, every N iterations for segmentation) and at the end.

Determinism: each sample is produced under its own seed (data.SeededSamples) and each
micro-batch's random draws (mixup, drop path) come from a seed derived from (seed, epoch,
update, rank). So a run resumed from any checkpoint, even one written mid-epoch, follows the
same path as an uninterrupted run (bitwise on CPU), and the global batch is the same set of
samples for any number of processes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from .. import checkpoint as ckpt
from ..data import DataPipelineError, ResumableSampler, SampleFailure, SeededSamples, shutdown_workers
from ..data.datasets import sample_seed
from ..data.loader import worker_ignore_signals
from ..distributed import Dist, all_reduce_sum, cleanup, setup
from ..errors import CheckpointError, MambaOutError, TrainingDiverged, WriteError
from ..utils import amp_dtype as to_amp_dtype
from ..utils import atomic_write
from . import logs
from .optim import build_optimizer, build_scheduler
from .resume import check_resume, run_options_record
from .syncbn import convert_sync_batchnorm
from .task import Task

log = logging.getLogger("mambaout")


@dataclass
class RunOptions:
    """Where and how to run; not part of the recipe."""
    data: Optional[str] = None            # dataset root; None = the task's embedded default
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
    checkpoint_every: int = 0             # also save last.pth every N updates (0: validations only)
    tensorboard: bool = False
    progress: bool = True
    max_updates: Optional[int] = None     # stop after this many updates in total (tests, smoke runs)


@dataclass
class TrainResult:
    output: Path
    best: Optional[float]                 # best validation score (task.score_key), None if none ran
    final: Optional[float]                # score of the last validation
    epochs_run: int                       # validations run (= epochs for per-epoch tasks)
    status: str                           # "finished", "interrupted", "stopped"
    history: List[dict] = field(default_factory=list)
    global_step: int = 0

    @property
    def best_top1(self) -> Optional[float]:   # classification's names for best / final
        return self.best

    @property
    def final_top1(self) -> Optional[float]:
        return self.final


def _micro_seed(seed: int, epoch: int, update: int, micro: int, rank: int) -> int:
    return sample_seed(seed + 7919, epoch, (update * 1000 + micro) * 10_000 + rank)


@dataclass
class _Saved:
    """The run's newest checkpoint that can be resumed, for the message of a failed write."""
    path: Optional[Path] = None
    step: int = 0

    def hint(self, command: str) -> str:
        if self.path is None:
            return "no checkpoint had been written yet"
        return (f"the run up to update {self.step} is kept in {self.path}; make room, then resume with: "
                f"mambaout {command} --resume {self.path}")


def fit(task: Task, opts: RunOptions = RunOptions()) -> TrainResult:
    d = setup(opts.device)
    saved = _Saved()
    try:
        return _fit(task, opts, d, saved)
    except WriteError as e:     # disk full, quota, permission: one line, what is kept, how to go on
        raise MambaOutError(f"{e}; {saved.hint(task.command)}") from e
    finally:
        cleanup(d)


def _save_last(state: dict, out: Path, saved: _Saved, step: int):
    """last.pth, atomically; a warning first when the disk has less room than it needs."""
    path = out / "last.pth"
    need = ckpt.nbytes(state)
    free = ckpt.free_bytes(out)
    if free is not None and free < need:
        log.warning("low disk space: %.0f MB free in %s, last.pth needs about %.0f MB (a failed write keeps "
                    "the previous last.pth)", free / 2 ** 20, out, need / 2 ** 20)
    ckpt.save(state, path)
    saved.path, saved.step = path, step


def _fit(task: Task, opts: RunOptions, d: Dist, saved: _Saved) -> TrainResult:
    t_start = time.time()
    recipe = task.recipe
    _check_options(recipe, opts)
    task.check()
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)

    resume_obj = ckpt.read_training_checkpoint(opts.resume) if opts.resume else None
    if resume_obj is not None:
        if resume_obj.get("task", "classification") != task.name:
            raise CheckpointError(f"cannot resume: {opts.resume} is a {resume_obj.get('task', 'classification')} "
                                  f"run, this is {task.name}")
        task.check_resume(resume_obj, opts.resume)
        changed = check_resume(resume_obj, recipe, task.data_source(), opts, opts.resume)
        if changed and d.is_main:
            log.info("resuming with changes: %s", "; ".join(changed))
        saved.path, saved.step = Path(opts.resume), int(resume_obj["global_step"])

    # ---- output folder (rank 0 writes everything) -------------------------------------------
    out = Path(opts.output) if opts.output else (
        Path(opts.resume).resolve().parent if opts.resume else
        Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{recipe.model}")
    if d.is_main:
        if resume_obj is None and (out / "last.pth").exists():
            raise MambaOutError(f"{out} already holds a run (last.pth); resume it with --resume "
                                f"{out / 'last.pth'} or choose another --output")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(out, e) from None

    # ---- data ---------------------------------------------------------------------------------
    train_set, val_set = task.build_data()
    if resume_obj is not None and int(resume_obj["num_classes"]) != task.num_classes:
        raise CheckpointError(f"cannot resume: {opts.resume} has {resume_obj['num_classes']} classes, "
                              f"the dataset has {task.num_classes}")
    sampler = ResumableSampler(len(train_set), d.rank, d.world, recipe.seed)
    per_update = recipe.batch_size * recipe.grad_accum_steps
    updates_per_epoch = sampler.per_rank // per_update
    if updates_per_epoch == 0:
        raise MambaOutError(f"{len(train_set)} training samples are fewer than one global batch of "
                            f"{recipe.global_batch(d.world)}; lower --batch-size")
    total_updates = recipe.total_updates(updates_per_epoch)
    val_every = recipe.val_interval(updates_per_epoch)
    loader = DataLoader(SeededSamples(train_set, recipe.seed), batch_size=recipe.batch_size,
                        sampler=sampler, num_workers=opts.workers, collate_fn=task.collate,
                        pin_memory=d.device.type == "cuda", drop_last=True,
                        persistent_workers=False, worker_init_fn=worker_ignore_signals)

    # ---- model --------------------------------------------------------------------------------
    model = task.build_model(opts.pretrained and resume_obj is None,
                             opts.initial_checkpoint if resume_obj is None else None, resume_obj is not None)
    if opts.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(d.device)
    if d.enabled:   # batch statistics over all processes (heads with BatchNorm; no-op without)
        model = convert_sync_batchnorm(model, d.device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)

    # ---- optimiser, schedule, AMP, EMA --------------------------------------------------------
    peak_lr = recipe.peak_lr(d.world)
    optimizer = build_optimizer(model, recipe, peak_lr)
    scheduler = build_scheduler(optimizer, recipe, updates_per_epoch)
    amp_dtype = to_amp_dtype(opts.amp)
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if recipe.model_ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=recipe.model_ema_decay)

    # ---- resume -------------------------------------------------------------------------------
    epoch, step0, global_step = 0, 0, 0
    best, best_epoch, best_step, history = None, None, None, []
    if resume_obj is not None:
        model.load_state_dict(resume_obj["model"])
        optimizer.load_state_dict(resume_obj["optimizer"])
        if resume_obj.get("scaler"):
            scaler.load_state_dict(resume_obj["scaler"])
        if ema is not None and resume_obj.get("ema"):
            ema.module.load_state_dict(resume_obj["ema"])
        epoch, step0 = int(resume_obj["epoch"]), int(resume_obj["step_in_epoch"])
        saved_batch = resume_obj.get("global_batch")
        if step0 > 0 and saved_batch is not None and int(saved_batch) != recipe.global_batch(d.world):
            raise CheckpointError(
                f"cannot resume mid-epoch with another global batch: {opts.resume} was written with "
                f"{saved_batch} samples per update, this run has {recipe.global_batch(d.world)} "
                f"(processes x --batch-size x --grad-accum-steps)")
        global_step = int(resume_obj["global_step"])
        best = resume_obj.get("best_score", resume_obj.get("best_top1"))
        best = None if best is None or best < 0 else float(best)   # older checkpoints: -1 = none
        best_epoch, best_step = resume_obj.get("best_epoch"), resume_obj.get("best_step")
        history = list(resume_obj.get("history", []))
        ckpt.set_rng_state(resume_obj["rng"])
        scheduler.step_update(global_step)
        if d.is_main:
            log.info("resumed %s at epoch %d, update %d/%d (%d of %d updates done)", opts.resume, epoch + 1,
                     step0, updates_per_epoch, global_step, total_updates)

    train_model = model
    if opts.compile:
        train_model = torch.compile(model)
    if d.enabled:
        train_model = DDP(train_model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    if d.is_main:
        log.info("training %s (%s params) on %d samples, %d classes, %d process(es) x batch %d x accum %d "
                 "= global batch %d, peak lr %.3g, %d updates (%d per epoch) -> %s", recipe.model,
                 f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", len(train_set), task.num_classes,
                 d.world, recipe.batch_size, recipe.grad_accum_steps, recipe.global_batch(d.world),
                 peak_lr, total_updates, updates_per_epoch, out)
    tb = logs.tensorboard(out) if opts.tensorboard and d.is_main else None
    step_log = logs.StepLog(out / "steps.csv", global_step) if d.is_main else None

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
        if step_in_epoch == updates_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
        return {"format": ckpt.FORMAT, "task": task.name, "model_name": recipe.model,
                "num_classes": task.num_classes, "recipe": recipe.to_dict(), **task.checkpoint_meta(),
                "data_source": task.data_source(), "run_options": run_options_record(opts),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "ema": ema.module.state_dict() if ema is not None else None,
                "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                "best_score": best, "best_epoch": best_epoch, "best_step": best_step, "history": history,
                "world_size": d.world, "global_batch": recipe.global_batch(d.world), "rng": ckpt.rng_state()}

    def stop_on_data_error(e: DataPipelineError, epoch: int, step_in_epoch: int) -> DataPipelineError:
        # Save the state before the update that needed the sample (nothing of that update
        # was applied), then end with one line: what failed, what was kept, how to go on.
        if not d.is_main:  # rank 0 keeps the checkpoints; torchrun ends the other processes
            return DataPipelineError(e.failure, f"{e} (process rank {d.rank})")
        where = out / "last.pth"
        _save_last(state(epoch, step_in_epoch), out, saved, global_step)
        atomic_write(out / "error.log", lambda tmp: Path(tmp).write_text(e.failure.traceback))
        return DataPipelineError(e.failure, (
            f"{e}; progress saved in {where} ({global_step} updates), traceback in {out / 'error.log'}; "
            f"resume with: mambaout {task.command} --resume {where} (the sample is drawn again with the "
            f"same augmentation: fix or remove it, or change the recipe, first)"))

    status, final, skipped, stop_requested, batches = "finished", None, 0, False, None
    skipped_total, loss_sum, loss_n, t_interval, reasons = 0, 0.0, 0, time.time(), Counter()
    try:
        while global_step < total_updates and status == "finished":
            # ---- one pass over the data (an epoch), possibly cut short ------------------------
            sampler.set_epoch(epoch, start=step0 * per_update)
            train_model.train()
            last = min(updates_per_epoch, step0 + total_updates - global_step)
            bar = logs.progress_bar(d.is_main and opts.progress, last - step0,
                                    f"epoch {epoch + 1}" if task.per_epoch else f"{global_step}/{total_updates}")
            batches = iter(loader)
            for update in range(step0, last):
                optimizer.zero_grad(set_to_none=True)
                update_loss = torch.zeros((), dtype=torch.float64)
                for micro in range(recipe.grad_accum_steps):
                    batch = next(batches)
                    if isinstance(batch, SampleFailure):
                        raise stop_on_data_error(DataPipelineError(batch), epoch, update)
                    skipped += _count(batch[2], reasons)
                    seed = _micro_seed(recipe.seed, epoch, update, micro, d.rank)
                    torch.manual_seed(seed)
                    np.random.seed(seed % 2 ** 32)
                    inputs, targets = task.train_inputs(batch, d.device)
                    if opts.channels_last and isinstance(inputs, torch.Tensor):
                        inputs = inputs.contiguous(memory_format=torch.channels_last)
                    sync = micro == recipe.grad_accum_steps - 1 or not d.enabled
                    ctx = train_model.no_sync() if (d.enabled and not sync) else contextlib.nullcontext()
                    with ctx, torch.autocast(d.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss = task.forward_loss(train_model, inputs, targets)
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
                if tb is not None:
                    tb.add_scalar("train/loss", mean_loss, global_step)
                    tb.add_scalar("train/lr", lr, global_step)

                # ---- validate, log, checkpoint -----------------------------------------------
                validated = global_step % val_every == 0 or global_step == total_updates
                if validated:
                    skipped = int(all_reduce_sum(torch.tensor(skipped, dtype=torch.float64).to(d.device), d).item())
                    skipped_total += skipped
                    if skipped and d.is_main:
                        log.warning("skipped %d unusable sample(s) since the last validation%s", skipped,
                                    f" (this process: {_reasons(reasons)})" if reasons else "")
                    try:
                        metrics = task.evaluate(ema.module if ema is not None else model, d, amp_dtype,
                                                opts.channels_last, opts.workers, opts.val_batch_size)
                    except DataPipelineError as e:
                        raise stop_on_data_error(e, epoch, update + 1) from None
                    train_model.train()
                    final = metrics[task.score_key]
                    row = {"epoch": epoch + 1, "train_loss": loss_sum / max(loss_n, 1), **task.row(metrics),
                           "lr": lr, ("epoch_time_s" if task.per_epoch else "time_s"): round(time.time() - t_interval, 2),
                           "skipped_images": skipped}
                    if not task.per_epoch:
                        row = {"step": global_step, **row}
                    history.append(row)
                    is_best = best is None or final > best
                    if is_best:
                        best, best_epoch, best_step = final, epoch + 1, global_step
                    if d.is_main:
                        where = (f"epoch {epoch + 1}/{_epochs(total_updates, updates_per_epoch)}" if task.per_epoch
                                 else f"update {global_step}/{total_updates}")
                        log.info("%s: train loss %.4f, %s (best %.2f%% @ %s), %.1fs", where, row["train_loss"],
                                 task.describe(metrics), best, best_epoch if task.per_epoch else best_step,
                                 time.time() - t_interval)
                        s = state(epoch, update + 1)
                        _save_last(s, out, saved, global_step)
                        if is_best:      # weights, EMA, class names, recipe, metrics: no training state
                            ckpt.save(ckpt.inference_state(s), out / "best.pth")
                        logs.write_logs(out, history, tb, task.metric_keys, "epoch" if task.per_epoch else "step")
                    skipped, loss_sum, loss_n, t_interval = 0, 0.0, 0, time.time()
                    reasons.clear()

                done_updates = opts.max_updates is not None and global_step >= opts.max_updates
                ending = global_step < total_updates and (stop_requested or done_updates)
                periodic = opts.checkpoint_every and global_step % opts.checkpoint_every == 0
                if d.is_main and not validated and (ending or periodic):
                    _save_last(state(epoch, update + 1), out, saved, global_step)
                if ending:
                    status = "interrupted" if stop_requested else "stopped"
                    break
            if bar is not None:
                bar.close()
            shutdown_workers(batches)
            if status == "finished":
                epoch, step0 = epoch + 1, 0
    finally:
        if batches is not None:
            shutdown_workers(batches)   # on every exit path: workers ignore SIGTERM (data/loader.py)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if tb is not None:
            tb.close()
        if step_log is not None:
            step_log.close()

    result = TrainResult(out, best, final, len(history), status, history, global_step)
    if d.is_main:
        summary = {"task": task.name, "model": recipe.model, "status": status, "metric": task.score_key,
                   "best": best, "best_epoch": best_epoch, "best_step": best_step, "final": final,
                   f"best_{task.score_key}": best, f"final_{task.score_key}": final,
                   "epochs_run": len(history) if task.per_epoch else round(global_step / updates_per_epoch, 2),
                   "epochs": _epochs(total_updates, updates_per_epoch), "validations": len(history),
                   "global_step": global_step, "total_updates": total_updates,
                   "num_classes": task.num_classes, "train_images": len(train_set), "val_images": len(val_set),
                   "skipped_images": skipped_total, "world_size": d.world,
                   "data": opts.data or "embedded default", "wall_time_s": round(time.time() - t_start, 1),
                   "checkpoints": {"last": str(out / "last.pth"),
                                   "best": str(out / "best.pth") if (out / "best.pth").exists() else None},
                   "recipe": recipe.to_dict()}
        atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
        if status == "interrupted":
            log.warning("stopped by %s after update %d; resume with: mambaout %s --resume %s",
                        signal.Signals(stop["signal"]).name, global_step, task.command, out / "last.pth")
    return result


def _count(skipped, reasons: Counter) -> int:
    """A batch's skipped samples: a count, or a Counter of reasons (added to `reasons`)."""
    if isinstance(skipped, int):
        return skipped
    reasons.update(skipped)
    return sum(skipped.values())


def _reasons(reasons: Counter) -> str:
    return ", ".join(f"{n} {r}" for r, n in reasons.most_common())


def _epochs(total_updates: int, updates_per_epoch: int) -> int:
    return -(-total_updates // updates_per_epoch)


def _check_options(r, opts: RunOptions):
    if r.batch_size <= 0 or r.grad_accum_steps <= 0:
        raise MambaOutError("--batch-size and --grad-accum-steps must be positive")
    to_amp_dtype(opts.amp)   # one line for an unknown --amp, before any data is read
    if opts.pretrained and opts.initial_checkpoint:
        raise MambaOutError("give --pretrained or --initial-checkpoint, not both")


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
