"""Self-checks of tests/finegrained_sets.py: each fake set is read back here with numpy, PIL and
scipy only (independent minimal readers), and the counts and names must match its FakeSet."""
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from finegrained_sets import BANNER, WRITERS, class_colour, write_aircraft, write_all, write_pets


def _lines(p):
    return [line.split() for line in Path(p).read_text().splitlines() if line and not line.startswith("#")]


def _readable(paths):
    ok = 0
    for p in paths:
        if Path(p).is_file():
            with Image.open(p) as im:
                im.convert("RGB").load()
            ok += 1
    return ok


def _read(fs):
    """split -> (listed paths, labels 0-based) and class names, straight from the files."""
    t = fs.path
    if fs.name == "cub":
        paths = {i: t / "images" / p for i, p in _lines(t / "images.txt")}
        label = {i: int(c) - 1 for i, c in _lines(t / "image_class_labels.txt")}
        out = {"train": ([], []), "test": ([], [])}
        for i, s in _lines(t / "train_test_split.txt"):
            out["train" if s == "1" else "test"][0].append(paths[i])
            out["train" if s == "1" else "test"][1].append(label[i])
        names = [n.split(".", 1)[1].replace("_", " ") for _, n in _lines(t / "classes.txt")]
        return out, names
    if fs.name == "cars":
        names = list(scipy.io.loadmat(t / "devkit/cars_meta.mat", squeeze_me=True)["class_names"])
        out = {}
        for split, mat in (("train", "devkit/cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
            ann = scipy.io.loadmat(t / mat, squeeze_me=True)["annotations"]
            assert set(ann.dtype.names) == {"bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"}
            out[split] = ([t / f"cars_{split}" / f for f in ann["fname"]], [int(c) - 1 for c in ann["class"]])
        return out, names
    if fs.name == "dogs":
        out = {}
        for split in ("train", "test"):
            m = scipy.io.loadmat(t / f"{split}_list.mat", squeeze_me=True)
            assert all(a == f[:-4] for a, f in zip(m["annotation_list"], m["file_list"]))
            out[split] = ([t / "Images" / f for f in m["file_list"]], [int(x) - 1 for x in m["labels"]])
        folders = sorted(p.name for p in (t / "Images").iterdir())
        return out, [f.split("-", 1)[1].replace("_", " ") for f in folders]
    if fs.name == "pets":
        out, names = {}, {}
        for split in ("trainval", "test"):
            rows = _lines(t / "annotations" / f"{split}.txt")
            out[split] = ([t / "images" / f"{r[0]}.jpg" for r in rows], [int(r[1]) - 1 for r in rows])
            names.update({int(r[1]) - 1: r[0].rsplit("_", 1)[0].replace("_", " ") for r in rows})
        return out, [names[i] for i in sorted(names)]
    variants = (t / "data/variants.txt").read_text().splitlines()
    out = {}
    for split in ("train", "val", "trainval", "test"):
        rows = [l.split(" ", 1) for l in (t / f"data/images_variant_{split}.txt").read_text().splitlines()]
        out[split] = ([t / "data/images" / f"{i}.jpg" for i, _ in rows], [variants.index(v) for _, v in rows])
    return out, variants


@pytest.mark.parametrize("missing", [True, False])
@pytest.mark.parametrize("name", list(WRITERS))
def test_read_back(tmp_path, name, missing):
    fs = WRITERS[name](tmp_path, missing=missing)
    assert fs.path.parent == tmp_path and fs.name == name
    splits, names = _read(fs)
    assert names == fs.classes and len(set(names)) == len(names) == 3
    assert set(splits) == set(fs.sizes) == set(fs.listed)
    for split, (paths, labels) in splits.items():
        assert len(paths) == fs.listed[split], split
        assert _readable(paths) == fs.sizes[split], split
        assert sorted(set(labels)) == [0, 1, 2]
        # each image's dominant colour is its class colour
        for p, c in list(zip(paths, labels))[:6]:
            if p.is_file():
                with Image.open(p) as im:
                    rgb = np.asarray(im.convert("RGB"), np.float32)
                body = rgb[:-BANNER] if name == "aircraft" else rgb
                assert np.abs(body.mean((0, 1)) - class_colour(c, 3)).max() < 20, p
    first = "trainval" if name == "pets" else "train"
    assert fs.sizes[first] == fs.listed[first] - missing
    on_disk = ("trainval", "test") if name == "aircraft" else fs.sizes  # trainval = train + val
    assert sum(1 for _ in fs.path.rglob("*.jpg")) == sum(fs.sizes[s] for s in on_disk)


def test_expected_names_and_quirks(tmp_path):
    sets = write_all(tmp_path, classes=5)
    assert sets["cub"].classes[:2] == ["Black footed Albatross", "Laysan Albatross"]
    first = next((sets["cub"].path / "images/001.Black_footed_Albatross").iterdir())
    assert first.name.startswith("Black_Footed_Albatross_")  # real quirk: capitalised unlike the folder
    assert sets["cars"].classes[0] == "AM General Hummer SUV 2000"
    assert sets["dogs"].classes == ["Chihuahua", "Japanese spaniel", "Maltese dog", "Pekinese", "Shih-Tzu"]
    assert sets["pets"].classes[:3] == ["Abyssinian", "american bulldog", "american pit bull terrier"]
    assert any("/" in v for v in sets["aircraft"].classes) and any(" " in v for v in sets["aircraft"].classes)
    header = (sets["pets"].path / "annotations/list.txt").read_text().splitlines()
    assert sum(l.startswith("#") for l in header[:6]) == 6 and len(header) == 6 + 5 * 6
    formats = {}
    for p in (sets["pets"].path / "images").glob("*.jpg"):
        with Image.open(p) as im:
            formats.setdefault((im.format, im.mode), 0)
            formats[(im.format, im.mode)] += 1
    assert formats[("PNG", "RGB")] == 1 and formats[("PNG", "RGBA")] == 1
    a = write_aircraft(tmp_path / "a", classes=2, train=1, val=1, test=1)
    with Image.open(next((a.path / "data/images").glob("*.jpg"))) as im:
        rgb = np.asarray(im.convert("RGB"), np.float32)
    assert 52 <= rgb.shape[0] <= 60 and rgb[-BANNER:].mean() < 80 and rgb[-BANNER:].max() > 200
    assert a.sizes == {"train": 1, "val": 2, "trainval": 3, "test": 2}
    assert write_pets(tmp_path / "p", missing=False).sizes == {"trainval": 12, "test": 6}
