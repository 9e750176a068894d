"""Small shared helpers."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .errors import MambaOutError, WriteError


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Write a file via `write(tmp_path)` into a temp file beside `path`, then rename it into
    place: a crash mid-write never leaves a half-written file at `path`, and a failed write
    (disk full, quota, permission, read-only folder) leaves the old file as it was, removes
    the temp file and raises WriteError (one line naming `path` and the reason)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(path, e) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_csv(rows: Sequence[dict], path, fieldnames: Optional[Sequence[str]] = None) -> Path:
    """`rows` as a CSV file with a header, written atomically (atomic_write). The columns:
    `fieldnames`, default the first row's keys."""
    import csv
    rows = list(rows)

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(fieldnames or rows[0]))
            w.writeheader()
            w.writerows(rows)
    return atomic_write(path, write)


def absolute(path) -> Optional[str]:
    """`path` as an absolute path string (None stays None): what a checkpoint records of the
    data it was trained on, so that a resumed run finds it from any working directory."""
    return None if path is None else str(Path(path).resolve())


def amp_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """--amp's dtype: None (off), "bf16" or "fp16"."""
    dtypes = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise MambaOutError(f"--amp must be bf16 or fp16, got {name}")
    return dtypes[name]


def resolve_device(device: str) -> torch.device:
    """'auto' (CUDA when there is one, else the CPU), 'cpu', 'cuda' or 'cuda:N'; a name PyTorch
    does not know or a GPU that is not there is one MambaOutError line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MambaOutError(f"unknown device '{device}' (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MambaOutError(f"device {device} asked for, but no CUDA GPU is available")
    return dev


def unique_stem(path, used: set) -> str:
    """The file stem of `path`, made unique among `used` (and added to it): "cat", then "cat_2",
    "cat_3", ... for images of the same name from different folders, so no output overwrites
    another."""
    base = Path(path).stem
    stem, n = base, 1
    while stem in used:
        n += 1
        stem = f"{base}_{n}"
    used.add(stem)
    return stem
