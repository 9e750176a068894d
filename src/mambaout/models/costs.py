"""Declared costs: how a module whose MAC count follows a convention (the selective scan:
VMamba's formula, whatever our chunked implementation computes) tells the counter.

The counter (analysis/complexity.py, MacCounter) registers itself in ACTIVE while it runs;
a module wraps the ops it wants counted by formula in `declare_macs(n)`. Models import only
this module, never the counter, so the analysis layer stays above the models.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import List

ACTIVE: List = []   # MAC counters currently entered, innermost last (each has add(name, n) and _paused)


def declare_macs(macs: int, name: str = "selective_scan"):
    """Context manager for a module whose MACs follow a convention rather than its ops.

    While a MacCounter is active, the ops inside are not counted and `macs` is added
    instead, under by_op[name] (the selective scan: the paper counts it with VMamba's
    formula, whatever matmuls our chunked implementation uses). Nested declarations count
    only the outermost. Without an active counter it does nothing.
    """
    if not ACTIVE:
        return nullcontext()
    return _declared(list(ACTIVE), int(macs), name)


@contextmanager
def _declared(counters, macs, name):
    for c in counters:
        c._paused += 1
    try:
        yield
    finally:
        for c in counters:
            c._paused -= 1
    for c in counters:
        if not c._paused:
            c.add(name, macs)
