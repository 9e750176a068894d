"""The five fine-grained datasets of Table 9, read as their archives unpack.

Each layout has a reader that returns the image files of one official split with their class
indices, and the class names taken from the dataset's own files:

    cub       CUB-200-2011   CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt,
                             classes.txt, images/<NNN.Name>/*.jpg}
    cars      Stanford Cars  stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat,
                             cars_train/, cars_test/, cars_test_annos_withlabels.mat} (torchvision's)
    dogs      Stanford Dogs  {Images/<wnid-Breed>/*.jpg, train_list.mat, test_list.mat}
    pets      Oxford-IIIT    {images/*.jpg, annotations/{trainval,test,list}.txt}
    aircraft  FGVC Aircraft  fgvc-aircraft-2013b/data/{images/<id>.jpg, variants.txt,
                             images_variant_{train,val,trainval,test}.txt}; the bottom 20 pixel
                             rows (a copyright banner) are cropped away as each image is read

Ids in the files are 1-based. A file a split lists but that is missing or unreadable is
skipped and counted while training, as in an ImageFolder; an entry whose label contradicts
the file's own class folder (CUB, Dogs) or name (Pets) is left out with a warning. A wrong or
partial layout (a missing split file, a class id out of range, a line that does not parse) is
one line naming the file and the line.

`find_layout(root)` recognises a layout from its files (at `root` or in a folder inside it);
`open_split(root, name, split)` reads one split. Table 9 trains on `train_split` and reports
top-1 on `eval_split` (the official test sets).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import MambaOutError
from .datasets import LabelledFiles

log = logging.getLogger("mambaout")

Samples = List[Tuple[str, int]]


class LayoutError(MambaOutError):
    """A fine-grained dataset's files do not have its official layout."""


@dataclass(frozen=True)
class Layout:
    name: str                    # --dataset NAME
    title: str
    folder: str                  # the top folder its archive unpacks to
    splits: Tuple[str, ...]      # the official splits, by their names in the dataset's files
    train_split: str             # what Table 9's protocol trains on
    eval_split: str              # and evaluates on
    sizes: Tuple[int, int, int]  # classes, train_split images, eval_split images (the full dataset)
    markers: Tuple[str, ...]     # any of these files inside the folder says it is this layout
    read: Callable[[Path, str], Tuple[Samples, List[str]]]
    crop_bottom: int = 0


# ---- reading the files ----------------------------------------------------------------------------

def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise LayoutError(f"{path}: missing ({what})")
    return path


def _rows(path: Path, what: str, fields: int) -> Iterator[Tuple[int, List[str]]]:
    """(line number, fields) of a whitespace-separated text file: blank and '#' lines skipped;
    the last field takes the rest of the line (names with spaces). A short line is one error."""
    _need(path, what)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise LayoutError(f"{path}: cannot read ({e.strerror or e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, fields - 1)
        if len(parts) < fields:
            raise LayoutError(f"{path}:{n}: expected {fields} fields, got {line!r}")
        yield n, parts


def _int(path: Path, n: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LayoutError(f"{path}:{n}: {what} {text!r} is not a number") from None


def _class_index(path: Path, n: int, value: int, count: int) -> int:
    """A 1-based class id as a 0-based index, or one line naming the file and line."""
    if not 1 <= value <= count:
        raise LayoutError(f"{path}:{n}: class id {value} outside 1..{count}")
    return value - 1


def _loadmat(path: Path, what: str, keys: Sequence[str]) -> dict:
    _need(path, what)
    import scipy.io
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as e:     # truncated / not a MATLAB file: scipy raises several kinds
        raise LayoutError(f"{path}: cannot read the MATLAB file ({type(e).__name__}: {str(e)[:100]})") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise LayoutError(f"{path}: no {', '.join(missing)} in the file (not the {what})")
    return mat


def _strings(value) -> List[str]:
    """A MATLAB cell array of strings (squeezed: one str, or an array of str) as a list."""
    import numpy as np
    return [str(v) for v in np.atleast_1d(value).tolist()]


def _ints(value) -> List[int]:
    import numpy as np
    return [int(v) for v in np.atleast_1d(value).tolist()]


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def _drop_mislabelled(path: Path, samples: list, wrong: List[str]) -> Samples:
    if wrong:
        log.warning("%s: %d entries left out, their label contradicts the file's class (first: %s)",
                    path, len(wrong), wrong[0])
    return samples


# ---- the five layouts -----------------------------------------------------------------------------

def read_cub(root: Path, split: str) -> Tuple[Samples, List[str]]:
    classes_txt = root / "classes.txt"
    folders = {}
    for n, (cid, folder) in _rows(classes_txt, "CUB-200-2011's class list", 2):
        folders[_int(classes_txt, n, cid, "class id")] = folder
    if sorted(folders) != list(range(1, len(folders) + 1)):
        raise LayoutError(f"{classes_txt}: class ids are not 1..{len(folders)}")
    classes = [_pretty(folders[i].split(".", 1)[-1]) for i in range(1, len(folders) + 1)]
    paths, labels, is_train = {}, {}, {}
    images_txt, labels_txt, split_txt = root / "images.txt", root / "image_class_labels.txt", root / "train_test_split.txt"
    for n, (iid, rel) in _rows(images_txt, "CUB-200-2011's image list", 2):
        paths[_int(images_txt, n, iid, "image id")] = rel
    for n, (iid, cid) in _rows(labels_txt, "CUB-200-2011's labels", 2):
        labels[_int(labels_txt, n, iid, "image id")] = (n, _class_index(labels_txt, n, _int(labels_txt, n, cid, "class id"),
                                                                        len(classes)))
    for n, (iid, flag) in _rows(split_txt, "CUB-200-2011's split file", 2):
        if flag not in ("0", "1"):
            raise LayoutError(f"{split_txt}:{n}: split flag {flag!r} is not 1 (train) or 0 (test)")
        is_train[_int(split_txt, n, iid, "image id")] = flag == "1"
    samples, wrong = [], []
    for iid, rel in sorted(paths.items()):
        for table, path in ((labels, labels_txt), (is_train, split_txt)):
            if iid not in table:
                raise LayoutError(f"{path}: image id {iid} (of {images_txt}) is not listed")
        if is_train[iid] != (split == "train"):
            continue
        target = labels[iid][1]
        if "/" in rel and rel.split("/", 1)[0] != folders[target + 1]:
            wrong.append(f"{rel} labelled {folders[target + 1]}")
            continue
        samples.append((str(root / "images" / rel), target))
    return _drop_mislabelled(labels_txt, samples, wrong), classes


def read_cars(root: Path, split: str) -> Tuple[Samples, List[str]]:
    meta = root / "devkit" / "cars_meta.mat"
    classes = _strings(_loadmat(meta, "Stanford Cars' class names", ("class_names",))["class_names"])
    if split == "train":
        annos, images = root / "devkit" / "cars_train_annos.mat", root / "cars_train"
    else:
        annos, images = root / "cars_test_annos_withlabels.mat", root / "cars_test"
        if not annos.exists() and (root / "devkit" / annos.name).exists():
            annos = root / "devkit" / annos.name
    import numpy as np
    table = np.atleast_1d(_loadmat(annos, f"Stanford Cars' {split} annotations", ("annotations",))["annotations"])
    if table.dtype.names is None or not {"class", "fname"} <= set(table.dtype.names):
        raise LayoutError(f"{annos}: annotations without 'class' and 'fname' (the test annotations without "
                          f"labels? Stanford Cars' test labels are in cars_test_annos_withlabels.mat)")
    samples = []
    for n, entry in enumerate(table, 1):
        cid = int(np.asarray(entry["class"]).item())
        samples.append((str(images / str(entry["fname"])), _class_index(annos, n, cid, len(classes))))
    return samples, classes


def read_dogs(root: Path, split: str) -> Tuple[Samples, List[str]]:
    images = _need(root / "Images", "Stanford Dogs' image folder")
    folders = sorted(d.name for d in images.iterdir() if d.is_dir())
    if not folders:
        raise LayoutError(f"{images}: no class folders (expected Images/<wnid>-<Breed>/)")
    classes = [_pretty(f.split("-", 1)[-1]) for f in folders]
    lst = root / f"{split}_list.mat"
    mat = _loadmat(lst, f"Stanford Dogs' {split} split", ("file_list", "labels"))
    files, labels = _strings(mat["file_list"]), _ints(mat["labels"])
    if len(files) != len(labels):
        raise LayoutError(f"{lst}: {len(files)} files but {len(labels)} labels")
    samples, wrong = [], []
    for n, (rel, label) in enumerate(zip(files, labels), 1):
        target = _class_index(lst, n, label, len(classes))
        if rel.split("/", 1)[0] != folders[target]:
            wrong.append(f"{rel} labelled {folders[target]}")
            continue
        samples.append((str(images / rel), target))
    return _drop_mislabelled(lst, samples, wrong), classes


def read_pets(root: Path, split: str) -> Tuple[Samples, List[str]]:
    ann = _need(root / "annotations", "Oxford-IIIT Pets' annotations folder")
    lst = ann / f"{split}.txt"
    entries = [(n, name, _int(lst, n, cid, "class id")) for n, (name, cid, _) in _rows(lst, f"Oxford-IIIT Pets' {split} split", 3)]
    # class names: each class id's breed (the image name without its trailing _<n>), from list.txt
    # (every image) when present, else the split itself; the most common spelling per id wins
    every = ann / "list.txt"
    named = ([(name, _int(every, n, cid, "class id")) for n, (name, cid, _) in _rows(every, "", 3)]
             if every.exists() else [(name, cid) for _, name, cid in entries])
    by_id: Dict[int, Counter] = {}
    for name, cid in named:
        by_id.setdefault(cid, Counter())[name.rsplit("_", 1)[0]] += 1
    count = len(by_id)
    for n, _, cid in entries:
        _class_index(lst, n, cid, count)
    if sorted(by_id) != list(range(1, count + 1)):
        raise LayoutError(f"{every if every.exists() else lst}: class ids are not 1..{count}")
    breeds = [by_id[i].most_common(1)[0][0] for i in range(1, count + 1)]
    samples, wrong = [], []
    for n, name, cid in entries:
        if name.rsplit("_", 1)[0] != breeds[cid - 1]:
            wrong.append(f"{name} labelled {breeds[cid - 1]}")
            continue
        samples.append((str(root / "images" / f"{name}.jpg"), cid - 1))
    return _drop_mislabelled(lst, samples, wrong), [_pretty(b) for b in breeds]


def read_aircraft(root: Path, split: str) -> Tuple[Samples, List[str]]:
    data = root / "data" if (root / "data").is_dir() else root
    variants = data / "variants.txt"
    _need(variants, "FGVC Aircraft's variant list")
    classes = [line.strip() for line in variants.read_text(encoding="utf-8", errors="replace").splitlines()
               if line.strip()]
    index = {c: i for i, c in enumerate(classes)}
    lst = data / f"images_variant_{split}.txt"
    samples = []
    for n, (iid, variant) in _rows(lst, f"FGVC Aircraft's {split} split", 2):
        if variant not in index:
            raise LayoutError(f"{lst}:{n}: variant {variant!r} is not in {variants.name}")
        samples.append((str(data / "images" / f"{iid}.jpg"), index[variant]))
    return samples, classes


LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (
    Layout("cub", "CUB-200-2011", "CUB_200_2011", ("train", "test"), "train", "test", (200, 5994, 5794),
           ("images.txt", "image_class_labels.txt", "train_test_split.txt"), read_cub),
    Layout("cars", "Stanford Cars", "stanford_cars", ("train", "test"), "train", "test", (196, 8144, 8041),
           ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"), read_cars),
    Layout("dogs", "Stanford Dogs", "stanford_dogs", ("train", "test"), "train", "test", (120, 12000, 8580),
           ("train_list.mat", "test_list.mat"), read_dogs),
    Layout("pets", "Oxford-IIIT Pets", "oxford-iiit-pet", ("trainval", "test"), "trainval", "test",
           (37, 3680, 3669), ("annotations/trainval.txt", "annotations/test.txt", "annotations/list.txt"),
           read_pets),
    Layout("aircraft", "FGVC Aircraft", "fgvc-aircraft-2013b", ("train", "val", "trainval", "test"), "trainval",
           "test", (100, 6667, 3333), ("data/variants.txt", "variants.txt", "data/images_variant_trainval.txt"),
           read_aircraft, crop_bottom=20),
)}


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise MambaOutError(f"unknown dataset {name!r}: choose from {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def _is(layout: Layout, folder: Path) -> bool:
    return any((folder / m).exists() for m in layout.markers)


def _candidates(root: Path, depth: int = 2) -> Iterator[Path]:
    """root, then the folders inside it (breadth first, to `depth` levels; hidden ones skipped)."""
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            yield folder
            try:
                nxt += sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
            except OSError:
                continue
        level = nxt


def find_layouts(root, name: Optional[str] = None) -> List[Tuple[Layout, Path]]:
    """[(layout, its folder)] of the fine-grained datasets at `root` or in folders inside it (two
    levels down at most; the first folder of each); with `name`, only that layout is looked for."""
    layouts = [get_layout(name)] if name else list(LAYOUTS.values())
    found: Dict[str, Tuple[Layout, Path]] = {}
    for folder in _candidates(Path(root)):
        for layout in layouts:
            if layout.name not in found and _is(layout, folder):
                found[layout.name] = (layout, folder)
    return list(found.values())


def find_layout(root, name: Optional[str] = None) -> Optional[Tuple[Layout, Path]]:
    """(layout, its folder) of the one fine-grained dataset at `root` (see find_layouts); None if
    there is none; a folder holding several is one line asking which (unless `name` says)."""
    found = find_layouts(root, name)
    if len(found) > 1:
        where = ", ".join(f"{layout.name} in {folder}" for layout, folder in found)
        raise MambaOutError(f"{root} holds several fine-grained datasets ({where}): pass --dataset NAME or the "
                            f"dataset's own folder")
    return found[0] if found else None


def open_split(folder, layout: Layout, split: str, transform: Optional[Callable] = None,
               classes: Optional[Sequence[str]] = None) -> LabelledFiles:
    """One split of a fine-grained dataset as a dataset of files. `classes`: the class names a
    model was trained with; they must be the dataset's."""
    if split not in layout.splits:
        raise MambaOutError(f"{layout.title} has no split {split!r}: choose from {', '.join(layout.splits)}")
    folder = Path(folder)
    samples, names = layout.read(folder, split)
    if classes is not None and list(classes) != list(names):
        i = next((i for i, (a, b) in enumerate(zip(classes, names)) if a != b), min(len(classes), len(names)))
        first = (f"class {i} is {names[i]!r} there, {classes[i]!r} in the model" if i < min(len(classes), len(names))
                 else f"{len(names)} classes there, {len(classes)} in the model")
        raise MambaOutError(f"{folder}: the model was trained on other classes than {layout.title}'s ({first})")
    if not samples:
        raise LayoutError(f"{folder}: the {split} split of {layout.title} lists no images")
    return LabelledFiles(samples, names, transform, crop_bottom=layout.crop_bottom)
