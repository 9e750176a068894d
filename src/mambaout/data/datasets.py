"""Datasets: an ImageFolder that survives damaged files, and the embedded digits set.

A sample that cannot be read comes back as None; `collate_skip_bad` drops it and
counts it, so one bad file never ends a run. Every sample is produced under its
own seed (see SeededSamples), which makes augmentation independent of worker
count and batch order: the property exact resume and multi-process parity rest on.
"""
from __future__ import annotations

import logging
import pickle
import random
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import MambaOutError, first_line
from ..utils import unique_stem

log = logging.getLogger("mambaout")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


# What opening a damaged or non-image file raises (PIL uses all of these).
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_error(e: Exception) -> str:
    """One line for a failed image read: the error's first line, or its type when it has none."""
    return first_line(e, limit=10_000)


def predict_to_folder(paths, output, predict_one, read=None) -> dict:
    """The loop of every command that writes per-image results to a folder (segment predict,
    detect predict, cam): `output` is created; for each image `predict_one(path, image, stem,
    out)` writes its files and returns the image's report entry (stem: the file name stem,
    unique within the run). An image that cannot be read (`read(path)`, default load_image;
    MambaOutError or a read error) is reported in "errors" as {"image", "error": one line} and
    the others go on. Returns {"written": [entries], "errors": [...]}."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    read = read or load_image
    written, errors, used = [], [], set()
    for path in paths:
        try:
            image = read(path)
        except MambaOutError as e:
            errors.append({"image": str(path), "error": str(e)})
            continue
        except READ_ERRORS as e:
            errors.append({"image": str(path), "error": f"cannot read {path}: {read_error(e)}"})
            continue
        written.append(predict_one(path, image, unique_stem(path, used), out))
    return {"written": written, "errors": errors}


def load_image(path) -> Image.Image:
    """Open an image fully (truncated files fail here, not later) as RGB.
    Grayscale, palette, CMYK and RGBA images are converted; alpha is composited on white."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGB", im.size, (255, 255, 255))
            bg.paste(im, mask=im.getchannel("A"))
            return bg
        return im.convert("RGB")


class LabelledFiles(Dataset):
    """Image files with their class indices (`samples`: [(path, target)]) and the class names;
    a file that cannot be read (missing, truncated, not an image) comes back as None, counted
    and skipped by collate_skip_bad. `crop_bottom`: pixel rows cut from the bottom of every
    image as it is read (FGVC Aircraft's copyright banner)."""

    def __init__(self, samples: Sequence[Tuple[str, int]], classes: Sequence[str],
                 transform: Optional[Callable] = None, crop_bottom: int = 0):
        self.samples = [(str(p), int(t)) for p, t in samples]
        self.classes, self.transform, self.crop_bottom = list(classes), transform, int(crop_bottom)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [t for _, t in self.samples]

    def __len__(self):
        return len(self.samples)

    def read(self, i) -> Image.Image:
        """Image i as RGB, its bottom `crop_bottom` rows cut away (raises READ_ERRORS)."""
        img = load_image(self.samples[i][0])
        if self.crop_bottom:
            w, h = img.size
            if h <= self.crop_bottom:
                raise ValueError(f"{h} pixel rows, not more than the {self.crop_bottom} to crop")
            img = img.crop((0, 0, w, h - self.crop_bottom))
        return img

    def __getitem__(self, i):
        path, target = self.samples[i]
        try:
            img = self.read(i)
        except READ_ERRORS as e:
            log.warning("skipping unreadable image %s (%s)", path, read_error(e)[:120])
            return None
        return (self.transform(img) if self.transform else img), target


class ImageFolder(LabelledFiles):
    """root/<class>/<image> with classes sorted by name (torchvision's ImageFolder layout)."""

    def __init__(self, root, transform: Optional[Callable] = None, classes: Optional[Sequence[str]] = None):
        root = Path(root)
        if not root.is_dir():
            raise MambaOutError(f"dataset folder not found: {root}")
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if classes is None:
            classes = found
        elif set(found) - set(classes):
            extra = sorted(set(found) - set(classes))
            raise MambaOutError(f"{root} has classes the model does not know: {', '.join(extra[:5])}")
        index = {c: i for i, c in enumerate(classes)}
        samples = [(str(p), index[c]) for c in found for p in sorted((root / c).rglob("*"))
                   if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()]
        if not samples:
            raise MambaOutError(f"no images found under {root} (expected {root}/<class>/<image>)")
        super().__init__(samples, classes, transform)
        self.root = root


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (1797 8x8 images, 10 classes), upscaled to RGB.

    The split is deterministic and stratified: every 5th image of each class (in the
    original order) goes to val, the rest to train -> 1442 train / 355 val.
    """

    classes = [str(d) for d in range(10)]

    def __init__(self, split: str = "train", img_size: int = 32, transform: Optional[Callable] = None):
        from sklearn.datasets import load_digits
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        digits = load_digits()
        images = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        rank_in_class = np.zeros(len(images), dtype=int)
        seen = {}
        for i, t in enumerate(digits.target):
            rank_in_class[i] = seen.get(t, 0)
            seen[t] = rank_in_class[i] + 1
        is_val = rank_in_class % 5 == 4
        keep = np.nonzero(is_val if split == "val" else ~is_val)[0]
        self.images, self.targets = images[keep], digits.target[keep].tolist()
        self.img_size, self.transform, self.split = img_size, transform, split
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L").resize((self.img_size, self.img_size),
                                                             Image.BICUBIC).convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[i]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return zlib.crc32(f"{seed}/{epoch}/{index}".encode())


@dataclass
class SampleFailure:
    """A sample whose transform (or other processing) raised. It travels from the loader
    worker to the main process as data, not as a worker exception, so the main process can
    end the run with one line that names the sample, and keep its checkpoint."""
    index: int
    epoch: Optional[int]  # None for evaluation
    source: str          # the file, or "<dataset>[index]"
    operation: str       # the transform that raised, e.g. "RandAugment op PosterizeIncreasing"
    error: str           # "ValueError: ..."
    traceback: str

    def describe(self) -> str:
        where = "evaluation" if self.epoch is None else f"epoch {self.epoch + 1}"
        return (f"data pipeline error in {where} at sample {self.index} ({self.source}): "
                f"{self.operation} raised {self.error}")


class DataPipelineError(MambaOutError):
    """A transform raised on a sample (not an unreadable file: those are skipped)."""

    def __init__(self, failure: SampleFailure, message: Optional[str] = None):
        super().__init__(message or failure.describe())
        self.failure = failure


class GuardedSamples(Dataset):
    """Wraps a dataset so that an exception while producing an item comes back as a
    SampleFailure (see collate_skip_bad) instead of crashing the loader worker."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, None)
        try:
            return self._get(index, epoch)
        except Exception as e:
            samples = getattr(self.dataset, "samples", None)
            source = samples[index][0] if samples else f"{type(self.dataset).__name__}[{index}]"
            first = first_line(e, 200, default="")
            return SampleFailure(index, epoch, source, _failed_operation(e.__traceback__),
                                 f"{type(e).__name__}: {first}".rstrip(": "),
                                 "".join(traceback.format_exception(type(e), e, e.__traceback__)))

    def _get(self, index: int, epoch: Optional[int]):
        return self.dataset[index]


class SeededSamples(GuardedSamples):
    """Wraps a dataset so that item (index, epoch) is produced under its own RNG seed.

    Samplers yield (index, epoch) pairs; the random augmentations of a sample then do
    not depend on which worker made it or what came before it."""

    def __init__(self, dataset: Dataset, seed: int):
        super().__init__(dataset)
        self.seed = seed

    def _get(self, index: int, epoch: Optional[int]):
        s = sample_seed(self.seed, epoch or 0, index)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        return self.dataset[index]


def _failed_operation(tb) -> str:
    """The innermost transform on the traceback: 'augmentation op PosterizeIncreasing' (timm's
    RandAugment ops), 'RandomResizedCropAndInterpolation', a plain function's name; else the
    innermost function."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    is_op = [(o := f.f_locals.get("self")) is not None and callable(o) and not isinstance(o, Dataset) for f in frames]
    if not any(is_op):
        f = frames[-1]
        return f"{f.f_code.co_name} ({Path(f.f_code.co_filename).name})"
    i = max(k for k, op in enumerate(is_op) if op)
    obj = frames[i].f_locals["self"]
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        return f"augmentation op {name}"
    container = any(isinstance(getattr(obj, a, None), (list, tuple)) for a in ("transforms", "ops", "policy"))
    if container and i + 1 < len(frames):   # a plain function inside Compose & co.
        return frames[i + 1].f_code.co_name
    return type(obj).__name__


def collate_skip_bad(batch):
    """Default collation after dropping unreadable samples; returns (images, targets, n_skipped),
    or the first SampleFailure of the batch (the caller raises DataPipelineError)."""
    for b in batch:
        if isinstance(b, SampleFailure):
            return b
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images = torch.stack([b[0] for b in good])
    targets = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, targets, skipped


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch cannot run code."""

    ALLOWED = {(m, f) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
               for f in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"),
                                                       ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.") and module.endswith("multiarray"):
            try:  # numpy 2 renamed numpy.core (what CIFAR's pickles name) to numpy._core
                from numpy._core import multiarray
            except ImportError:
                from numpy.core import multiarray
            return getattr(multiarray, name)
        return super().find_class(module, name)


CIFAR_LAYOUTS = {  # folder -> (train files, test files, meta file, label key, names key)
    "cifar-10-batches-py": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                            "labels", "label_names"),
    "cifar-100-python": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def find_cifar(root: Path) -> Optional[Path]:
    """The CIFAR-10/100 python-format folder at `root` or directly inside it, else None."""
    for folder in (root, *(root / name for name in CIFAR_LAYOUTS)):
        if folder.name in CIFAR_LAYOUTS and folder.is_dir():
            return folder
    return None


class CifarDataset(Dataset):
    """CIFAR-10 or CIFAR-100 in torchvision's download format (`cifar-10-batches-py/` with
    data_batch_1..5 and test_batch, or `cifar-100-python/` with train and test; fine labels).
    "train" is the 50,000 training images, "val" the 10,000 test images, as in Table 8."""

    def __init__(self, folder, split: str = "train", transform: Optional[Callable] = None):
        folder = Path(folder)
        if folder.name not in CIFAR_LAYOUTS:
            raise MambaOutError(f"{folder} is not a CIFAR folder ({' or '.join(CIFAR_LAYOUTS)})")
        train_files, test_files, meta, label_key, names_key = CIFAR_LAYOUTS[folder.name]
        data, labels = [], []
        for name in train_files if split == "train" else test_files:
            batch = self._read(folder / name)
            try:
                data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels += [int(t) for t in batch[label_key]]
            except (KeyError, ValueError, TypeError) as e:
                raise MambaOutError(f"{folder / name}: not a CIFAR batch ({e})") from None
        self.images = np.concatenate(data).transpose(0, 2, 3, 1)  # N, 32, 32, 3
        self.targets = labels
        if len(self.images) != len(labels):
            raise MambaOutError(f"{folder}: {len(self.images)} images but {len(labels)} labels")
        self.classes = [str(c) for c in self._read(folder / meta)[names_key]]
        if labels and not 0 <= min(labels) <= max(labels) < len(self.classes):
            raise MambaOutError(f"{folder}: labels outside 0..{len(self.classes) - 1}")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            with open(path, "rb") as f:
                return _ArrayUnpickler(f, encoding="latin1").load()
        except FileNotFoundError:
            raise MambaOutError(f"CIFAR file missing: {path}") from None
        except Exception as e:  # truncated, corrupt or foreign pickle
            raise MambaOutError(f"cannot read CIFAR file {path}: {e}") from None

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), self.targets[i]
