"""Tiny fake copies of five fine-grained datasets (no downloads).

Each writer lays its files out as the dataset's official archive unpacks to, following the
archives' documented layouts (CUB-200-2011, Stanford Cars as torchvision expects it,
Stanford Dogs, Oxford-IIIT Pets, FGVC-Aircraft 2013b), with the real files' quirks: CUB
file names capitalised unlike their folders, Cars annotations in MATLAB struct arrays,
Dogs lists in MATLAB cells, Pets' header lines and PNGs saved under .jpg names, and
Aircraft's 20-pixel copyright banner. Each class has its own dominant colour (plus seeded
noise) so that a tiny model can learn the classes. With missing=True exactly one image
listed in the train split file (train / trainval) is absent from disk.
"""
import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
import scipy.io
from PIL import Image

BANNER = 20  # FGVC-Aircraft: rows of copyright banner at the bottom of every image


@dataclass
class FakeSet:
    name: str                 # "cub" | "cars" | "dogs" | "pets" | "aircraft"
    path: Path                # the folder a user passes as --data
    classes: List[str]        # class names in class-index order, as the reader must return them
    sizes: Dict[str, int]     # split -> number of readable images the reader must return
    listed: Dict[str, int]    # split -> number of entries the split file lists


def class_colour(i, n):
    """A saturated RGB colour per class, hues spread evenly (class 0 of 3: red, 1: green, 2: blue)."""
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.8, 0.85))


def _image(rng, colour, height=None, banner=0):
    w, h = 40 + int(rng.integers(-4, 5)), height or 32 + int(rng.integers(-4, 5))
    pixels = np.array(colour, np.float32) + rng.normal(0, 12, (h, w, 3))
    if banner:  # near-black strip with a white stripe through it
        pixels[h - banner:] = 15 + rng.normal(0, 4, (banner, w, 3))
        pixels[h - banner // 2 - 2: h - banner // 2 + 1, 2: w - 2] = 245
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _save(rng, path, colour, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(rng, colour, **kw).save(path, format="JPEG", quality=90)


def _names(real, n, extra):
    """The first n of `real`, continued with extra(i) (1-based i) when n is larger."""
    return [real[i] if i < len(real) else extra(i + 1) for i in range(n)]


def _interleave(n_train, n_test):
    """True (train) / False (test) flags for n_train + n_test images, the two splits mixed."""
    keys = [((k + 0.5) / n, s) for s, n in ((0, n_train), (1, n_test)) for k in range(n)]
    return [s == 0 for _, s in sorted(keys)]


def _write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _cell(strings, shape):
    """A MATLAB cell array of strings (numpy object array) of the given shape."""
    out = np.empty(len(strings), dtype=object)
    out[:] = list(strings)
    return out.reshape(shape)


CUB = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
       "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet", "Brewer_Blackbird",
       "Red_winged_Blackbird"]


def write_cub(root, classes=3, train=4, test=2, missing=True) -> FakeSet:
    top, rng = Path(root) / "CUB_200_2011", np.random.default_rng(1)
    names = _names(CUB, classes, lambda i: f"Bird_{i}")
    images, labels, split, boxes = [], [], [], []
    for c, name in enumerate(names):
        folder = f"{c + 1:03d}.{name}"
        stem = "_".join(p.capitalize() for p in name.split("_"))  # real quirk: Black_Footed_...
        for k, is_train in enumerate(_interleave(train, test)):
            rel = f"{folder}/{stem}_{k + 1:04d}_{int(rng.integers(100, 800000))}.jpg"
            images.append(rel), labels.append(c + 1), split.append(int(is_train))
            boxes.append(" ".join(f"{v:.1f}" for v in (*rng.integers(0, 8, 2), *rng.integers(16, 28, 2))))
            if missing and is_train and sum(split) == min(2, classes * train):
                continue  # listed, never written
            _save(rng, top / "images" / rel, class_colour(c, classes))
    _write_lines(top / "images.txt", [f"{i + 1} {p}" for i, p in enumerate(images)])
    _write_lines(top / "image_class_labels.txt", [f"{i + 1} {c}" for i, c in enumerate(labels)])
    _write_lines(top / "train_test_split.txt", [f"{i + 1} {s}" for i, s in enumerate(split)])
    _write_lines(top / "classes.txt", [f"{c + 1} {c + 1:03d}.{n}" for c, n in enumerate(names)])
    _write_lines(top / "bounding_boxes.txt", [f"{i + 1} {b}" for i, b in enumerate(boxes)])
    listed = {"train": classes * train, "test": classes * test}
    return FakeSet("cub", top, [n.replace("_", " ") for n in names],
                   {"train": listed["train"] - bool(missing), "test": listed["test"]}, listed)


CARS = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012",
        "Acura TL Type-S 2008", "Acura TSX Sedan 2012", "Acura Integra Type R 2001",
        "Acura ZDX Hatchback 2012", "Aston Martin V8 Vantage Convertible 2012"]


def _annotations(rng, labels):
    """A 1 x N MATLAB struct array with the fields of cars_*_annos.mat."""
    dtype = [(f, object) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    out = np.zeros((1, len(labels)), dtype=dtype)
    for i, c in enumerate(labels):
        x, y = rng.integers(1, 10, 2)
        out[0, i] = (np.uint16(x), np.uint16(y), np.uint16(x + 30), np.uint16(y + 20),
                     np.uint8(c + 1), f"{i + 1:05d}.jpg")
    return out


def write_cars(root, classes=3, train=4, test=2, missing=True) -> FakeSet:
    top, rng = Path(root) / "stanford_cars", np.random.default_rng(2)
    names = _names(CARS, classes, lambda i: f"Make{i} Model Sedan 2012")
    (top / "devkit").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(top / "devkit" / "cars_meta.mat", {"class_names": _cell(names, (1, classes))})
    for split, per, mat in (("train", train, "devkit/cars_train_annos.mat"),
                            ("test", test, "cars_test_annos_withlabels.mat")):
        labels = rng.permutation(np.repeat(np.arange(classes), per))  # classes mixed, as in the real files
        ann = _annotations(rng, labels)
        scipy.io.savemat(top / mat, {"annotations": ann})
        for i, c in enumerate(labels):
            if not (missing and split == "train" and i == min(1, len(labels) - 1)):
                _save(rng, top / f"cars_{split}" / ann[0, i]["fname"], class_colour(c, classes))
    listed = {"train": classes * train, "test": classes * test}
    return FakeSet("cars", top, names, {"train": listed["train"] - bool(missing), "test": listed["test"]}, listed)


DOGS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog",
        "n02086079-Pekinese", "n02086240-Shih-Tzu", "n02086646-Blenheim_spaniel",
        "n02086910-papillon", "n02087046-toy_terrier"]


def write_dogs(root, classes=3, train=4, test=2, missing=True) -> FakeSet:
    top, rng = Path(root) / "stanford_dogs", np.random.default_rng(3)
    folders = sorted(_names(DOGS, classes, lambda i: f"n03{i:06d}-Breed_{i}"))
    lists = {"train": [], "test": []}
    for c, folder in enumerate(folders):
        wnid = folder.split("-")[0]
        numbers = rng.choice(np.arange(100, 20000), train + test, replace=False)
        for n, is_train in zip(sorted(numbers), _interleave(train, test)):
            rel, split = f"{folder}/{wnid}_{n}", "train" if is_train else "test"
            lists[split].append((rel, c))
            if missing and is_train and len(lists["train"]) == min(2, classes * train):
                continue  # listed, never written
            _save(rng, top / "Images" / f"{rel}.jpg", class_colour(c, classes))
            _write_lines(top / "Annotation" / rel, [f"<annotation><filename>{wnid}_{n}</filename></annotation>"])
    for split, items in lists.items():
        scipy.io.savemat(top / f"{split}_list.mat", {
            "file_list": _cell([f"{r}.jpg" for r, _ in items], (len(items), 1)),
            "annotation_list": _cell([r for r, _ in items], (len(items), 1)),
            "labels": np.array([[c + 1.0] for _, c in items])})
    listed = {s: len(v) for s, v in lists.items()}
    return FakeSet("dogs", top, [f.split("-", 1)[1].replace("_", " ") for f in folders],
                   {"train": listed["train"] - bool(missing), "test": listed["test"]}, listed)


PETS = ["Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle",
        "Bengal", "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau",
        "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees",
        "havanese", "japanese_chin", "keeshond", "leonberger", "Maine_Coon", "miniature_pinscher",
        "newfoundland", "Persian", "pomeranian", "pug", "Ragdoll", "Russian_Blue", "saint_bernard",
        "samoyed", "scottish_terrier", "shiba_inu", "Siamese", "Sphynx", "staffordshire_bull_terrier",
        "wheaten_terrier", "yorkshire_terrier"]
PETS_HEADER = ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids", "#SPECIES: 1:Cat 2:Dog",
               "#BREED ID: 1-25:Cat 1:12:Dog", "#All images with 1st letter as captial are cat images",
               "#images with small first letter are dog images"]


def write_pets(root, classes=3, train=4, test=2, missing=True) -> FakeSet:
    if classes > len(PETS):
        raise ValueError(f"Oxford-IIIT Pets has {len(PETS)} classes")
    top, rng = Path(root) / "oxford-iiit-pet", np.random.default_rng(4)
    names = PETS[:classes]
    breed = {n: 1 + [m for m in PETS if m[0].isupper() == n[0].isupper()].index(n) for n in PETS}
    lines = {"trainval": [], "test": []}
    for c, name in enumerate(names):
        species = 1 if name[0].isupper() else 2
        for k, is_train in enumerate(_interleave(train, test)):
            stem, split = f"{name}_{k + 1}", "trainval" if is_train else "test"
            lines[split].append(f"{stem} {c + 1} {species} {breed[name]}")
            if missing and is_train and len(lines["trainval"]) == min(2, classes * train):
                continue  # listed, never written
            image, path = _image(rng, class_colour(c, classes)), top / "images" / f"{stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            if split == "trainval" and len(lines["trainval"]) == 3:
                image.save(path, format="PNG")  # quirk: a PNG under a .jpg name
            elif split == "trainval" and len(lines["trainval"]) == 4:
                image.convert("RGBA").save(path, format="PNG")  # quirk: RGBA PNG under .jpg
            else:
                image.save(path, format="JPEG", quality=90)
    _write_lines(top / "annotations" / "trainval.txt", lines["trainval"])
    _write_lines(top / "annotations" / "test.txt", lines["test"])
    _write_lines(top / "annotations" / "list.txt", PETS_HEADER + sorted(lines["trainval"] + lines["test"]))
    listed = {s: len(v) for s, v in lines.items()}
    return FakeSet("pets", top, [n.replace("_", " ") for n in names],
                   {"trainval": listed["trainval"] - bool(missing), "test": listed["test"]}, listed)


AIRCRAFT = [("707-320", "Boeing 707", "Boeing"), ("Boeing 717", "Boeing 717", "Boeing"),
            ("F-16A/B", "F-16A/B", "Lockheed Martin"), ("F/A-18", "F/A-18", "McDonnell Douglas"),
            ("Falcon 2000", "Falcon 2000", "Dassault Aviation"), ("Tu-134", "Tu-134", "Tupolev"),
            ("Yak-42", "Yak-42", "Yakovlev")]


def write_aircraft(root, classes=3, train=4, val=2, test=2, missing=True) -> FakeSet:
    top, rng = Path(root) / "fgvc-aircraft-2013b", np.random.default_rng(5)
    rows = _names(AIRCRAFT, classes, lambda i: (f"Variant-{i}", f"Family {i}", f"Maker {i}"))
    ids = iter(rng.choice(np.arange(34000, 2300000), classes * (train + val + test), replace=False))
    split_of = {"train": [], "val": [], "test": []}  # split -> [(image id, class)]
    for c in range(classes):
        for split, per in (("train", train), ("val", val), ("test", test)):
            split_of[split] += [(f"{next(ids):07d}", c) for _ in range(per)]
    absent = split_of["train"][min(1, classes * train - 1)][0] if missing else None
    for items in split_of.values():
        for image_id, c in items:
            if image_id != absent:
                _save(rng, top / "data" / "images" / f"{image_id}.jpg", class_colour(c, classes),
                      height=int(rng.integers(52, 61)), banner=BANNER)
    split_of["trainval"] = split_of["train"] + split_of["val"]
    data = top / "data"
    for col, what, listing in ((0, "variant", "variants"), (1, "family", "families"),
                               (2, "manufacturer", "manufacturers")):
        _write_lines(data / f"{listing}.txt", list(dict.fromkeys(r[col] for r in rows)))
        for split, items in split_of.items():
            _write_lines(data / f"images_{what}_{split}.txt", [f"{i} {rows[c][col]}" for i, c in sorted(items)])
    listed = {s: len(v) for s, v in split_of.items()}
    sizes = {s: n - (missing and s in ("train", "trainval")) for s, n in listed.items()}
    return FakeSet("aircraft", top, [r[0] for r in rows], sizes, listed)


WRITERS = {"cub": write_cub, "cars": write_cars, "dogs": write_dogs, "pets": write_pets, "aircraft": write_aircraft}


def write_all(root, **kw) -> Dict[str, FakeSet]:
    """All five sets under one root; keyword arguments go to every writer (val: aircraft only)."""
    val = {"val": kw.pop("val")} if "val" in kw else {}
    return {name: writer(root, **kw, **(val if name == "aircraft" else {})) for name, writer in WRITERS.items()}
