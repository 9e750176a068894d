"""Skip accounting shared by the dense tasks: a dataset returns a SkippedSample (the file at
fault and the reason) for a sample it cannot use, the collate function drops it and counts the
reason in a SkipCounts, and the training loop sums the counts per epoch (across processes as a
fixed-order tensor) and prints them. Each task subclasses SkipCounts with its REASONS."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Tuple

import torch

from .datasets import SampleFailure

log = logging.getLogger("mambaout")


@dataclass
class SkippedSample:
    """What a dataset returns instead of a sample it cannot use; the collate functions drop it
    and count `reason` (one of its task's SkipCounts.REASONS)."""
    index: int
    source: str   # the file at fault
    reason: str
    detail: str


def skip(index: int, source: str, reason: str, detail: str) -> SkippedSample:
    """A SkippedSample, with the warning that names the file."""
    log.warning("skipping %s: %s (%s)", source, reason, detail)
    return SkippedSample(index, source, reason, detail)


class SkipCounts(Counter):
    """Skipped samples per reason (keys from REASONS, a subclass's). Sums with `+` / `update`;
    crosses processes as a fixed-order tensor (`to_tensor` / `from_tensor`) for an all-reduce."""

    REASONS: ClassVar[Tuple[str, ...]] = ()

    def __add__(self, other) -> "SkipCounts":
        return type(self)(Counter.__add__(self, other))

    def total(self) -> int:
        return sum(self.values())

    def to_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor([self[r] for r in self.REASONS], dtype=torch.int64, device=device)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "SkipCounts":
        return cls({r: int(n) for r, n in zip(cls.REASONS, t.tolist()) if n})

    def __str__(self) -> str:
        order = {r: i for i, r in enumerate(self.REASONS)}
        ranked = sorted(self.items(), key=lambda kv: (-kv[1], order.get(kv[0], len(order))))
        parts = ", ".join(f"{n} {r}" for r, n in ranked if n)
        return f"{self.total()} ({parts})" if parts else "0"


def split_batch(batch, counts: SkipCounts):
    """(first SampleFailure or None, usable samples): SkippedSample markers are counted in
    `counts` and dropped, as is a bare None (the ImageFolder convention for an unreadable
    image), counted as "unreadable image"."""
    good = []
    for b in batch:
        if isinstance(b, SampleFailure):
            return b, []
        if isinstance(b, SkippedSample):
            counts[b.reason] += 1
        elif b is None:
            counts["unreadable image"] += 1
        else:
            good.append(b)
    return None, good
