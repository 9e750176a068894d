"""Where a classification run's images come from: `--data DIR` in whichever layout it has.

    none                 the embedded digits
    CIFAR-10 / -100      torchvision's python format (train: the training batches, val: test)
    a fine-grained set   CUB-200-2011, Stanford Cars, Stanford Dogs, Oxford-IIIT Pets, FGVC
                         Aircraft as their archives unpack (data/finegrained.py), recognised from
                         their files or named with `dataset`
    an ImageFolder tree  DIR/train/<class>/* and DIR/val/<class>/* (or DIR/test/, as the class-folder
                         copies of Stanford Cars ship)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from ..errors import MambaOutError
from .datasets import CifarDataset, DigitsDataset, ImageFolder, find_cifar
from .finegrained import LAYOUTS, find_layout, find_layouts, get_layout, open_split

EVAL_FOLDERS = ("val", "test")


def image_folder_root(root: Path, dataset: Optional[str]) -> Optional[Path]:
    """The ImageFolder tree (a train/ folder beside val/ or test/) at root or, for a named
    dataset (Stanford Cars' class-folder copy: car_data/car_data/{train,test}), inside it."""
    for folder in ([root] + [d for d in sorted(root.rglob("*")) if d.is_dir() and len(d.relative_to(root).parts) <= 2]
                   if dataset else [root]):
        if (folder / "train").is_dir() and any((folder / s).is_dir() for s in EVAL_FOLDERS):
            return folder
    return None


def find_dataset(root, name: str) -> Optional[Path]:
    """The folder under `root` (or `root` itself, two levels down at most) holding fine-grained
    dataset `name` as it ships; for Stanford Cars also a class-folder copy (train/ and test/
    class folders in a folder whose name says "car")."""
    found = find_layout(root, name)
    if found is not None:
        return found[1]
    if name == "cars":
        root = Path(root)
        for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir() and len(p.relative_to(root).parts) <= 2)]:
            if "car" in folder.name.lower() and image_folder_root(folder, None) is not None:
                return folder
    return None


def build_datasets(data: Optional[str], img_size: int, train_tf=None, eval_tf=None,
                   dataset: Optional[str] = None):
    """(train, val, class names) for a training run: the embedded digits if `data` is None, else
    `data` in its layout (see the module's docstring); a fine-grained set trains on its official
    training split and validates on its test split. `dataset` (cub, cars, dogs, pets, aircraft)
    says which fine-grained set `data` must hold."""
    if data is None:
        if dataset:
            raise MambaOutError(f"--dataset {dataset} needs --data DIR (the folder holding it)")
        return (DigitsDataset("train", img_size, train_tf), DigitsDataset("val", img_size, eval_tf),
                list(DigitsDataset.classes))
    root = Path(data)
    if not root.is_dir():
        raise MambaOutError(f"dataset folder not found: {root}")
    if dataset:
        get_layout(dataset)   # one line for an unknown name
    elif find_cifar(root) is not None:
        cifar = find_cifar(root)
        train = CifarDataset(cifar, "train", train_tf)
        return train, CifarDataset(cifar, "val", eval_tf), train.classes
    found = find_layout(root, dataset)
    if found is not None:
        layout, folder = found
        train = open_split(folder, layout, layout.train_split, train_tf)
        return train, open_split(folder, layout, layout.eval_split, eval_tf, classes=train.classes), train.classes
    tree = image_folder_root(root, dataset)
    if tree is None:
        if dataset:
            layout = LAYOUTS[dataset]
            raise MambaOutError(f"{root} does not hold {layout.title} as it ships (none of "
                                f"{', '.join(layout.markers)} found in it or two levels down), nor a "
                                f"train/ + test/ class-folder copy")
        raise MambaOutError(f"{root} has no 'train' folder beside a 'val' or 'test' one (expected "
                            f"{root}/train/<class>/* and {root}/val/<class>/*), and is none of the "
                            f"fine-grained datasets ({', '.join(LAYOUTS)}) or CIFAR")
    eval_folder = next(tree / s for s in EVAL_FOLDERS if (tree / s).is_dir())
    train = ImageFolder(tree / "train", train_tf)
    return train, ImageFolder(eval_folder, eval_tf, classes=train.classes), train.classes


def eval_dataset(data: str, split: Optional[str], transform: Callable, classes: Optional[Sequence[str]] = None,
                 dataset: Optional[str] = None) -> Tuple[object, str]:
    """(dataset, split name) to evaluate on: `split` of `data` in its layout; None = the split a
    training run validates on (val, or test where a dataset has no val: the fine-grained test
    sets). An ImageFolder without that sub-folder is read as the class folders themselves."""
    root = Path(data)
    if not root.is_dir():
        raise MambaOutError(f"dataset folder not found: {root}")
    if dataset:
        get_layout(dataset)
    elif find_cifar(root) is not None:
        if split not in (None, "val", "test", "train"):
            raise MambaOutError(f"CIFAR has the splits train and val (its test batch), not {split!r}")
        ds = CifarDataset(find_cifar(root), "train" if split == "train" else "val", transform)
        return _checked_classes(ds, classes, root), split or "val"
    found = _model_layout(root, dataset, classes)
    if found is not None:
        layout, folder = found
        split = split or layout.eval_split
        return open_split(folder, layout, split, transform, classes=classes), split
    tree = image_folder_root(root, dataset) or root
    if split is None:
        split = next((s for s in EVAL_FOLDERS if (tree / s).is_dir()), "val")
    folder = tree / split if (tree / split).is_dir() else tree
    return ImageFolder(folder, transform, classes=classes), split


def _model_layout(root: Path, dataset: Optional[str], classes: Optional[Sequence[str]]):
    """The fine-grained dataset under root to evaluate a model on: the named one, the only one,
    or of several the one whose class names are the model's."""
    found = find_layouts(root, dataset)
    if len(found) > 1 and classes is not None:
        for layout, folder in found:
            try:
                names = layout.read(folder, layout.eval_split)[1]
            except MambaOutError:
                continue
            if list(names) == list(classes):
                return layout, folder
    return find_layout(root, dataset)


def _checked_classes(ds, classes, root):
    if classes is not None and list(classes) != list(ds.classes):
        raise MambaOutError(f"{root}: its {len(ds.classes)} class names are not the model's ({len(classes)})")
    return ds
