"""DataLoader worker processes: how they treat signals, and how they are stopped.

Workers ignore SIGTERM and SIGINT so that a signal to the whole process group (Slurm,
`timeout`, Ctrl-C) reaches only the main process, which then saves and exits cleanly.
The price: `Process.terminate()` (SIGTERM), which PyTorch and multiprocessing use to stop
workers that do not exit on request, no longer stops them, and a process that ended with
an exception would wait for them forever at exit. So whoever starts workers stops them
with `shutdown_workers`, on every exit path, and an exit hook kills any that remain.
"""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit hook before ours (see below)
import signal

from torch.utils.data import DataLoader

_JOIN_TIMEOUT_S = 5.0


def worker_ignore_signals(_worker_id=None):
    """DataLoader worker_init_fn: leave SIGTERM and SIGINT to the main process. The workers
    still end with the main process (PyTorch's watchdog notices a dead parent)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def shutdown_workers(batches) -> None:
    """Stop the worker processes of a DataLoader iterator now: ask them to exit (PyTorch's
    own shutdown), then SIGKILL any that are still alive. Safe to call twice, and on the
    iterator of a loader without workers."""
    workers = list(getattr(batches, "_workers", ()))
    try:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join(_JOIN_TIMEOUT_S)


@contextlib.contextmanager
def checked_batches(loader):
    """`with checked_batches(loader) as batches: for batch in batches: ...` -- the loader's
    batches, with a SampleFailure (a transform that raised) turned into DataPipelineError, and
    the workers stopped however the block ends."""
    from .datasets import DataPipelineError, SampleFailure

    def raising(it):
        for batch in it:
            if isinstance(batch, SampleFailure):
                raise DataPipelineError(batch)
            yield batch
    it = iter(loader)
    try:
        yield raising(it)
    finally:
        shutdown_workers(it)


def eval_loader(dataset, dist, batch_size: int, workers: int, collate_fn) -> DataLoader:
    """The evaluation loader every task uses: each sample on exactly one process
    (EvalShardSampler), read errors caught per sample (GuardedSamples) and handed to the task's
    `collate_fn`, workers that leave signals to the main process."""
    from .datasets import GuardedSamples
    from .samplers import EvalShardSampler
    return DataLoader(GuardedSamples(dataset), batch_size=batch_size,
                      sampler=EvalShardSampler(len(dataset), dist.rank, dist.world), num_workers=workers,
                      collate_fn=collate_fn, pin_memory=dist.device.type == "cuda", persistent_workers=False,
                      worker_init_fn=worker_ignore_signals)


@atexit.register
def _kill_remaining_workers():
    # Registered after multiprocessing's own exit hook, so it runs before it: that hook
    # terminates (SIGTERM) daemonic children and then joins them, which never returns for a
    # worker that ignores SIGTERM, e.g. one left behind by an exception's traceback.
    for p in multiprocessing.active_children():
        if p.daemon:
            p.kill()
            p.join(_JOIN_TIMEOUT_S)
