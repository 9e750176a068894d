"""The training loop every task runs on, from one CPU to many machines (torchrun + DDP).

Reads top to bottom: set up -> data -> model -> optimiser/schedule -> (resume) -> updates,
with validation, checkpoints and logs every `recipe.val_interval(...)` updates (every epoch
for classification, every N iterations for segmentation) and at the end. `_fit` is the whole
run in a few lines; everything it sets up and changes lives in one `TrainState`, and each
step is a named function over it. `_update` is the one place where the model trains.

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
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset

from . import checkpoint as ckpt
from ..data import DataPipelineError, ResumableSampler, SampleFailure, SeededSamples, shutdown_workers
from ..data.datasets import sample_seed
from ..data.loader import worker_ignore_signals
from ..distributed import Dist, all_reduce_sum, cleanup, setup
from ..errors import CheckpointError, MambaOutError, TrainingDiverged, WriteError
from ..utils import amp_dtype as to_amp_dtype
from ..utils import atomic_write
from . import logs
from .optim import build_optimizer, build_scheduler
from .resume import check_resume, check_same_model, run_options_record
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


@dataclass(eq=False)
class TrainState:
    """One run: what set-up builds, and the progress the steps below read and change. The
    progress fields (epoch .. history) are what last.pth records besides weights and optimiser."""
    task: Task
    opts: RunOptions
    d: Dist
    saved: _Saved                          # the newest resumable checkpoint (a failed write's message)
    out: Path                              # the run folder (rank 0 writes everything)
    resume_obj: Optional[dict]             # the checkpoint being continued; None for a new run
    t_start: float
    # data (_build_data)
    train_set: Dataset = field(init=False)
    val_set: Dataset = field(init=False)
    sampler: ResumableSampler = field(init=False)
    loader: DataLoader = field(init=False)
    per_update: int = field(init=False)            # samples per process per update
    updates_per_epoch: int = field(init=False)
    total_updates: int = field(init=False)
    val_every: int = field(init=False)             # validate, log and save every this many updates
    # model and optimisation (_build_model, _build_optimisation, _start)
    model: nn.Module = field(init=False)           # the module whose weights are saved
    train_model: nn.Module = field(init=False)     # the same, compiled and / or wrapped in DDP
    peak_lr: float = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: Any = field(init=False)
    amp_dtype: Optional[torch.dtype] = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)
    ema: Any = None                                # timm ModelEmaV3 with recipe.model_ema
    # progress (in last.pth)
    epoch: int = 0
    step0: int = 0                 # the update the current epoch starts at (> 0 after a mid-epoch resume)
    global_step: int = 0           # updates done in the whole run
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    best_step: Optional[int] = None
    history: List[dict] = field(default_factory=list)     # one row per validation (metrics.csv)
    # since the last validation
    loss_sum: float = 0.0
    loss_n: int = 0
    skipped: int = 0               # unusable samples (this process until a validation sums them)
    reasons: Counter = field(default_factory=Counter)     # why, this process only
    t_interval: float = 0.0
    # the run as a whole
    skipped_total: int = 0
    final: Optional[float] = None  # score of the last validation
    status: str = "finished"       # "interrupted" (a signal), "stopped" (max_updates)
    stop_signal: Optional[int] = None      # set by the signal handler, on this process
    stop_requested: bool = False           # on any process, agreed at the last update
    # open handles, closed by _release
    tb: Any = None
    step_log: Optional[logs.StepLog] = None
    bar: Any = None
    batches: Optional[Iterator] = None
    previous_handlers: Dict[int, Any] = field(default_factory=dict)

    @property
    def recipe(self):
        return self.task.recipe

    def on_stop_signal(self, signum, frame):
        # SIGTERM or a first Ctrl-C: finish the current update, save last.pth, exit cleanly.
        # A second Ctrl-C aborts at once (default behaviour).
        self.stop_signal = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)


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
    """The run: set up, resume, then epochs of updates (validating, logging and saving every
    `val_every` updates) until the last update, a stop signal or max_updates; the summary."""
    st = _setup(task, opts, d, saved)
    if st.resume_obj is not None:
        _resume(st)
    _start(st)
    try:
        while st.global_step < st.total_updates and st.status == "finished":
            _train_epoch(st)
    finally:
        _release(st)
    return _summary(st)


# ---- set up -------------------------------------------------------------------------------------

def _setup(task: Task, opts: RunOptions, d: Dist, saved: _Saved) -> TrainState:
    """Checks, the checkpoint to continue, the output folder, then data, model and optimiser."""
    t_start = time.time()
    recipe = task.recipe
    _check_options(recipe, opts)
    task.check()
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    resume_obj = _read_resume(task, opts, d, saved)
    st = TrainState(task, opts, d, saved, _output_folder(task, opts, d, resume_obj), resume_obj, t_start)
    _build_data(st)
    _build_model(st)
    _build_optimisation(st)
    return st


def _read_resume(task: Task, opts: RunOptions, d: Dist, saved: _Saved) -> Optional[dict]:
    """The --resume checkpoint, checked against this task, recipe, data and options."""
    resume_obj = ckpt.read_training_checkpoint(opts.resume) if opts.resume else None
    if resume_obj is None:
        return None
    if resume_obj.get("task", "classification") != task.name:
        raise CheckpointError(f"cannot resume: {opts.resume} is a {resume_obj.get('task', 'classification')} "
                              f"run, this is {task.name}")
    check_same_model(resume_obj, task.recipe, opts.resume)
    if hasattr(task, "check_resume"):   # what only the task can tell (classification: the input size)
        task.check_resume(resume_obj, opts.resume)
    changed = check_resume(resume_obj, task.recipe, task.data_source(), opts, opts.resume)
    if changed and d.is_main:
        log.info("resuming with changes: %s", "; ".join(changed))
    saved.path, saved.step = Path(opts.resume), int(resume_obj["global_step"])
    return resume_obj


def _output_folder(task: Task, opts: RunOptions, d: Dist, resume_obj: Optional[dict]) -> Path:
    """--output, else the resumed run's folder, else runs/<time>-<model>; made by rank 0."""
    out = Path(opts.output) if opts.output else (
        Path(opts.resume).resolve().parent if opts.resume else
        Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{task.recipe.model}")
    if d.is_main:
        if resume_obj is None and (out / "last.pth").exists():
            raise MambaOutError(f"{out} already holds a run (last.pth); resume it with --resume "
                                f"{out / 'last.pth'} or choose another --output")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(out, e) from None
    return out


def _build_data(st: TrainState):
    """The datasets, the resumable sampler, the schedule's lengths and the training loader."""
    task, recipe, d, opts = st.task, st.recipe, st.d, st.opts
    st.train_set, st.val_set = task.build_data()
    if st.resume_obj is not None and int(st.resume_obj["num_classes"]) != task.num_classes:
        raise CheckpointError(f"cannot resume: {opts.resume} has {st.resume_obj['num_classes']} classes, "
                              f"the dataset has {task.num_classes}")
    st.sampler = ResumableSampler(len(st.train_set), d.rank, d.world, recipe.seed)
    st.per_update = recipe.batch_size * recipe.grad_accum_steps
    st.updates_per_epoch = st.sampler.per_rank // st.per_update
    if st.updates_per_epoch == 0:
        raise MambaOutError(f"{len(st.train_set)} training samples are fewer than one global batch of "
                            f"{recipe.global_batch(d.world)}; lower --batch-size")
    st.total_updates = recipe.total_updates(st.updates_per_epoch)
    st.val_every = recipe.val_interval(st.updates_per_epoch)
    st.loader = DataLoader(SeededSamples(st.train_set, recipe.seed), batch_size=recipe.batch_size,
                           sampler=st.sampler, num_workers=opts.workers, collate_fn=task.collate,
                           pin_memory=d.device.type == "cuda", drop_last=True,
                           persistent_workers=False, worker_init_fn=worker_ignore_signals)


def _build_model(st: TrainState):
    """The task's model on the device: released / initial weights unless resuming, sync BN."""
    opts, d, resume_obj = st.opts, st.d, st.resume_obj
    model = st.task.build_model(opts.pretrained and resume_obj is None,
                                opts.initial_checkpoint if resume_obj is None else None)
    if opts.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(d.device)
    if d.enabled:   # batch statistics over all processes (heads with BatchNorm; no-op without)
        model = convert_sync_batchnorm(model, d.device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    st.model = model


def _build_optimisation(st: TrainState):
    """Optimiser, schedule, AMP (a loss scaler for fp16) and EMA."""
    recipe = st.recipe
    st.peak_lr = recipe.peak_lr(st.d.world)
    st.optimizer = build_optimizer(st.model, recipe, st.peak_lr)
    st.scheduler = build_scheduler(st.optimizer, recipe, st.updates_per_epoch)
    st.amp_dtype = to_amp_dtype(st.opts.amp)
    st.scaler = torch.amp.GradScaler(st.d.device.type, enabled=st.amp_dtype == torch.float16)
    if recipe.model_ema:
        from timm.utils import ModelEmaV3
        st.ema = ModelEmaV3(st.model, decay=recipe.model_ema_decay)


def _resume(st: TrainState):
    """Weights, optimiser, scaler, EMA, position, best score, history and RNGs from --resume."""
    obj, recipe, d = st.resume_obj, st.recipe, st.d
    st.model.load_state_dict(obj["model"])
    st.optimizer.load_state_dict(obj["optimizer"])
    if obj.get("scaler"):
        st.scaler.load_state_dict(obj["scaler"])
    if st.ema is not None and obj.get("ema"):
        st.ema.module.load_state_dict(obj["ema"])
    st.epoch, st.step0 = int(obj["epoch"]), int(obj["step_in_epoch"])
    saved_batch = obj.get("global_batch")
    if st.step0 > 0 and saved_batch is not None and int(saved_batch) != recipe.global_batch(d.world):
        raise CheckpointError(
            f"cannot resume mid-epoch with another global batch: {st.opts.resume} was written with "
            f"{saved_batch} samples per update, this run has {recipe.global_batch(d.world)} "
            f"(processes x --batch-size x --grad-accum-steps)")
    st.global_step = int(obj["global_step"])
    best = obj.get("best_score", obj.get("best_top1"))
    st.best = None if best is None or best < 0 else float(best)   # older checkpoints: -1 = none
    st.best_epoch, st.best_step = obj.get("best_epoch"), obj.get("best_step")
    st.history = list(obj.get("history", []))
    ckpt.set_rng_state(obj["rng"])
    st.scheduler.step_update(st.global_step)
    if d.is_main:
        log.info("resumed %s at epoch %d, update %d/%d (%d of %d updates done)", st.opts.resume, st.epoch + 1,
                 st.step0, st.updates_per_epoch, st.global_step, st.total_updates)


def _start(st: TrainState):
    """Compile / wrap the model for training, announce the run, open the logs, catch SIGTERM and SIGINT."""
    opts, d, recipe, task = st.opts, st.d, st.recipe, st.task
    st.train_model = st.model
    if opts.compile:
        st.train_model = torch.compile(st.model)
    if d.enabled:
        st.train_model = DDP(st.train_model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    if d.is_main:
        log.info("training %s (%s params) on %d samples, %d classes, %d process(es) x batch %d x accum %d "
                 "= global batch %d, peak lr %.3g, %d updates (%d per epoch) -> %s", recipe.model,
                 f"{sum(p.numel() for p in st.model.parameters()) / 1e6:.2f}M", len(st.train_set),
                 task.num_classes, d.world, recipe.batch_size, recipe.grad_accum_steps,
                 recipe.global_batch(d.world), st.peak_lr, st.total_updates, st.updates_per_epoch, st.out)
    st.tb = logs.tensorboard(st.out) if opts.tensorboard and d.is_main else None
    st.step_log = logs.StepLog(st.out / "steps.csv", st.global_step) if d.is_main else None
    if _main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            st.previous_handlers[sig] = signal.signal(sig, st.on_stop_signal)
    st.t_interval = time.time()


# ---- training -----------------------------------------------------------------------------------

def _train_epoch(st: TrainState):
    """One pass over the data (an epoch), from st.step0 (a mid-epoch resume), possibly cut short
    by the end of the run, a stop signal or max_updates."""
    st.sampler.set_epoch(st.epoch, start=st.step0 * st.per_update)
    if hasattr(st.task, "start_epoch"):   # optional task hook: per-epoch model settings, derived from
        # the epoch alone (a resumed run calls it again), e.g. iLLaMA's soft attention mask
        st.task.start_epoch(st.epoch, [st.model] + ([st.ema.module] if st.ema is not None else []))
    st.train_model.train()
    last = min(st.updates_per_epoch, st.step0 + st.total_updates - st.global_step)
    st.bar = logs.progress_bar(st.d.is_main and st.opts.progress, last - st.step0,
                               f"epoch {st.epoch + 1}" if st.task.per_epoch
                               else f"{st.global_step}/{st.total_updates}")
    st.batches = iter(st.loader)
    for update in range(st.step0, last):
        mean_loss = _update(st, update)
        lr = _log_update(st, update, mean_loss)
        validated = st.global_step % st.val_every == 0 or st.global_step == st.total_updates
        if validated:
            _validate_and_save(st, update, lr)
        if _stop_or_checkpoint(st, update, validated):
            break
    if st.bar is not None:
        st.bar.close()
    shutdown_workers(st.batches)
    if st.status == "finished":
        st.epoch, st.step0 = st.epoch + 1, 0


def _update(st: TrainState, update: int) -> float:
    """The training step, the only one: one optimizer update over grad_accum_steps micro-batches
    (forward and backward each), stepped on the loss all processes agree on, which it returns."""
    recipe, d, task = st.recipe, st.d, st.task
    st.optimizer.zero_grad(set_to_none=True)
    update_loss = torch.zeros((), dtype=torch.float64)
    for micro in range(recipe.grad_accum_steps):
        batch = next(st.batches)
        if isinstance(batch, SampleFailure):
            raise _stop_on_data_error(st, DataPipelineError(batch), update)
        st.skipped += _count(batch[2], st.reasons)
        seed = _micro_seed(recipe.seed, st.epoch, update, micro, d.rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        inputs, targets = task.train_inputs(batch, d.device)
        if st.opts.channels_last and isinstance(inputs, torch.Tensor):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        sync = micro == recipe.grad_accum_steps - 1 or not d.enabled
        ctx = st.train_model.no_sync() if (d.enabled and not sync) else contextlib.nullcontext()
        with ctx, torch.autocast(d.device.type, dtype=st.amp_dtype, enabled=st.amp_dtype is not None):
            loss = task.forward_loss(st.train_model, inputs, targets)
        st.scaler.scale(loss / recipe.grad_accum_steps).backward()
        update_loss += loss.detach().double().cpu() / recipe.grad_accum_steps
    # all processes agree on the loss (and on stopping) before stepping
    flags = torch.stack([update_loss, torch.tensor(float(st.stop_signal is not None), dtype=torch.float64)])
    flags = all_reduce_sum(flags.to(d.device), d).cpu()
    mean_loss = flags[0].item() / d.world
    st.stop_requested = flags[1].item() > 0
    if not math.isfinite(mean_loss):
        raise _diverged(st, mean_loss, update)
    if recipe.clip_grad is not None:
        st.scaler.unscale_(st.optimizer)
        nn.utils.clip_grad_norm_(st.model.parameters(), recipe.clip_grad)
    st.scaler.step(st.optimizer)
    st.scaler.update()
    if st.ema is not None:
        st.ema.update(st.model, step=st.global_step)
    st.global_step += 1
    st.scheduler.step_update(st.global_step)
    return mean_loss


def _diverged(st: TrainState, mean_loss: float, update: int) -> TrainingDiverged:
    """The NaN / inf stop: nothing of this update was applied; say what is kept."""
    last = st.out / "last.pth"
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint had been written yet"
    return TrainingDiverged(f"loss is {mean_loss} at epoch {st.epoch + 1}, update {update + 1}: "
                            f"stopped; {kept} (try a lower --lr or --clip-grad)")


def _log_update(st: TrainState, update: int, mean_loss: float) -> float:
    """The update's loss and learning rate to the interval's mean, the bar, steps.csv and
    TensorBoard; returns the learning rate."""
    st.loss_sum, st.loss_n = st.loss_sum + mean_loss, st.loss_n + 1
    lr = st.optimizer.param_groups[0]["lr"]
    if st.bar is not None:
        st.bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        st.bar.update(1)
    if st.d.is_main:
        st.step_log.write(f"{st.global_step},{st.epoch + 1},{update + 1},{mean_loss!r},{lr!r}\n")
    if st.tb is not None:
        st.tb.add_scalar("train/loss", mean_loss, st.global_step)
        st.tb.add_scalar("train/lr", lr, st.global_step)
    return lr


def _stop_or_checkpoint(st: TrainState, update: int, validated: bool) -> bool:
    """Whether the run ends after this update (a stop signal on any process, or max_updates)
    before its last one; then, or every checkpoint_every updates, last.pth unless just saved."""
    opts = st.opts
    done_updates = opts.max_updates is not None and st.global_step >= opts.max_updates
    ending = st.global_step < st.total_updates and (st.stop_requested or done_updates)
    periodic = opts.checkpoint_every and st.global_step % opts.checkpoint_every == 0
    if st.d.is_main and not validated and (ending or periodic):
        _save_last(_checkpoint(st, update + 1), st.out, st.saved, st.global_step)
    if ending:
        st.status = "interrupted" if st.stop_requested else "stopped"
    return ending


# ---- validate, log, checkpoint ------------------------------------------------------------------

def _validate_and_save(st: TrainState, update: int, lr: float):
    """After update `update` of the epoch: the skipped samples of all processes, the task's
    evaluation, a history row and the best score; rank 0 logs and saves last.pth (best.pth)."""
    d, task, opts = st.d, st.task, st.opts
    st.skipped = int(all_reduce_sum(torch.tensor(st.skipped, dtype=torch.float64).to(d.device), d).item())
    st.skipped_total += st.skipped
    if st.skipped and d.is_main:
        log.warning("skipped %d unusable sample(s) since the last validation%s", st.skipped,
                    f" (this process: {_reasons(st.reasons)})" if st.reasons else "")
    try:
        metrics = task.evaluate(st.ema.module if st.ema is not None else st.model, d, st.amp_dtype,
                                opts.channels_last, opts.workers, opts.val_batch_size)
    except DataPipelineError as e:
        raise _stop_on_data_error(st, e, update + 1) from None
    st.train_model.train()
    st.final = metrics[task.score_key]
    row = {"epoch": st.epoch + 1, "train_loss": st.loss_sum / max(st.loss_n, 1), **task.row(metrics),
           "lr": lr, ("epoch_time_s" if task.per_epoch else "time_s"): round(time.time() - st.t_interval, 2),
           "skipped_images": st.skipped}
    if not task.per_epoch:
        row = {"step": st.global_step, **row}
    st.history.append(row)
    is_best = st.best is None or st.final > st.best
    if is_best:
        st.best, st.best_epoch, st.best_step = st.final, st.epoch + 1, st.global_step
    if d.is_main:
        _report_and_save(st, update, metrics, row, is_best)
    st.skipped, st.loss_sum, st.loss_n, st.t_interval = 0, 0.0, 0, time.time()
    st.reasons.clear()


def _report_and_save(st: TrainState, update: int, metrics: dict, row: dict, is_best: bool):
    """Rank 0 after a validation: the log line, last.pth, best.pth when it is the best, metrics.csv."""
    task = st.task
    where = (f"epoch {st.epoch + 1}/{_epochs(st.total_updates, st.updates_per_epoch)}" if task.per_epoch
             else f"update {st.global_step}/{st.total_updates}")
    log.info("%s: train loss %.4f, %s (best %.2f%% @ %s), %.1fs", where, row["train_loss"],
             task.describe(metrics), st.best, st.best_epoch if task.per_epoch else st.best_step,
             time.time() - st.t_interval)
    s = _checkpoint(st, update + 1)
    _save_last(s, st.out, st.saved, st.global_step)
    if is_best:      # weights, EMA, class names, recipe, metrics: no training state
        ckpt.save(ckpt.inference_state(s), st.out / "best.pth")
    logs.write_logs(st.out, st.history, st.tb, task.metric_keys, "epoch" if task.per_epoch else "step")


def _checkpoint(st: TrainState, step_in_epoch: int) -> dict:
    """What last.pth holds, at update `step_in_epoch` of the current epoch (the end of an epoch
    is written as the start of the next)."""
    task, recipe, d, epoch = st.task, st.recipe, st.d, st.epoch
    if step_in_epoch == st.updates_per_epoch:
        epoch, step_in_epoch = epoch + 1, 0
    return {"format": ckpt.FORMAT, "task": task.name, "model_name": recipe.model,
            "num_classes": task.num_classes, "recipe": recipe.to_dict(), **task.checkpoint_meta(),
            "data_source": task.data_source(), "run_options": run_options_record(st.opts),
            "model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
            "scheduler": st.scheduler.state_dict(),
            "scaler": st.scaler.state_dict() if st.scaler.is_enabled() else None,
            "ema": st.ema.module.state_dict() if st.ema is not None else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": st.global_step,
            "best_score": st.best, "best_epoch": st.best_epoch, "best_step": st.best_step,
            "history": st.history, "world_size": d.world, "global_batch": recipe.global_batch(d.world),
            "rng": ckpt.rng_state()}


def _stop_on_data_error(st: TrainState, e: DataPipelineError, step_in_epoch: int) -> DataPipelineError:
    """The error that ends the run after a data failure, with what was kept and how to go on."""
    # Save the state before the update that needed the sample (nothing of that update
    # was applied), then end with one line: what failed, what was kept, how to go on.
    if not st.d.is_main:  # rank 0 keeps the checkpoints; torchrun ends the other processes
        return DataPipelineError(e.failure, f"{e} (process rank {st.d.rank})")
    where = st.out / "last.pth"
    _save_last(_checkpoint(st, step_in_epoch), st.out, st.saved, st.global_step)
    atomic_write(st.out / "error.log", lambda tmp: Path(tmp).write_text(e.failure.traceback))
    return DataPipelineError(e.failure, (
        f"{e}; progress saved in {where} ({st.global_step} updates), traceback in {st.out / 'error.log'}; "
        f"resume with: mambaout {st.task.command} --resume {where} (the sample is drawn again with the "
        f"same augmentation: fix or remove it, or change the recipe, first)"))


# ---- end ----------------------------------------------------------------------------------------

def _release(st: TrainState):
    """On every exit path: loader workers, signal handlers, TensorBoard and steps.csv."""
    if st.batches is not None:
        shutdown_workers(st.batches)   # on every exit path: workers ignore SIGTERM (data/loader.py)
    for sig, handler in st.previous_handlers.items():
        signal.signal(sig, handler)
    if st.tb is not None:
        st.tb.close()
    if st.step_log is not None:
        st.step_log.close()


def _summary(st: TrainState) -> TrainResult:
    """The result; rank 0 writes summary.json and, after a stop signal, how to resume."""
    task, recipe, d, opts, out = st.task, st.recipe, st.d, st.opts, st.out
    result = TrainResult(out, st.best, st.final, len(st.history), st.status, st.history, st.global_step)
    if d.is_main:
        summary = {"task": task.name, "model": recipe.model, "status": st.status, "metric": task.score_key,
                   "best": st.best, "best_epoch": st.best_epoch, "best_step": st.best_step, "final": st.final,
                   f"best_{task.score_key}": st.best, f"final_{task.score_key}": st.final,
                   "epochs_run": (len(st.history) if task.per_epoch
                                  else round(st.global_step / st.updates_per_epoch, 2)),
                   "epochs": _epochs(st.total_updates, st.updates_per_epoch), "validations": len(st.history),
                   "global_step": st.global_step, "total_updates": st.total_updates,
                   "num_classes": task.num_classes, "train_images": len(st.train_set),
                   "val_images": len(st.val_set), "skipped_images": st.skipped_total, "world_size": d.world,
                   "data": opts.data or "embedded default", "wall_time_s": round(time.time() - st.t_start, 1),
                   "checkpoints": {"last": str(out / "last.pth"),
                                   "best": str(out / "best.pth") if (out / "best.pth").exists() else None},
                   "recipe": recipe.to_dict()}
        atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
        if st.status == "interrupted":
            log.warning("stopped by %s after update %d; resume with: mambaout %s --resume %s",
                        signal.Signals(st.stop_signal).name, st.global_step, task.command, out / "last.pth")
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
