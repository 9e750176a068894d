"""COCO-format detection data: reading, label mapping, masks, bad data, transforms, digits."""
import json
import random

import numpy as np
import pytest
import torch

from imagesets import make_coco_set
from mambaout.tasks.detection.data import (CocoDetection, DetSkipCounts, DigitsDetection, coco_layout, collate_det,
                                det_eval_transform, det_train_transform, detector_resize_kwargs)
from mambaout.data.datasets import SampleFailure, SeededSamples
from mambaout.data.skips import SkippedSample
from mambaout.errors import MambaOutError


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    return make_coco_set(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def train_set(coco_set):
    images_dir, ann_file, _ = coco_set
    return CocoDetection(images_dir, ann_file, train=True)


def _item(ds, image_id):
    return ds[ds.ids.index(image_id)]


def test_labels_contiguous_and_mapped_back(train_set):
    ds = train_set
    assert ds.cat_ids == [1, 5, 90]
    assert ds.label_to_cat_id == {1: 1, 2: 5, 3: 90}
    assert ds.cat_id_to_label == {1: 1, 5: 2, 90: 3}
    assert ds.classes == ["cat", "dog", "brush"] and ds.num_classes == 3
    image, target = _item(ds, 1)
    assert [ds.label_to_cat_id[int(l)] for l in target["labels"]] == [5, 90]


def test_train_targets_masks_crowd_and_negatives(train_set, coco_set):
    _, _, expected = coco_set
    image, t = _item(train_set, 1)
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 60)
    assert t["image_id"] == 1 and t["orig_size"] == (40, 60)
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [2, 3]   # crowd ann 103 left out
    assert t["boxes"].tolist() == [[10, 5, 30, 20], [40, 25, 55, 35]]
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 40, 60)
    assert np.array_equal(t["masks"][0].numpy(), expected[101])                  # polygon
    assert np.array_equal(t["masks"][1].numpy(), expected[102])                  # compressed RLE
    assert t["iscrowd"].tolist() == [0, 0]
    _, t = _item(train_set, 2)                                                   # degenerate boxes dropped
    assert t["labels"].tolist() == [1] and np.array_equal(t["masks"][0].numpy(), expected[201])  # uncompressed
    image, t = _item(train_set, 3)                                               # a negative
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 40, 60) and t["labels"].shape == (0,)


def test_bad_data_counted_never_raising(train_set, coco_set):
    assert train_set.scan_skips == {"degenerate box": 2, "unknown image id": 1, "unknown category": 1,
                                    "malformed annotation": 1}
    assert len(train_set) == 5                                                   # negatives and bad files kept
    missing, broken = _item(train_set, 4), _item(train_set, 5)
    assert isinstance(missing, SkippedSample) and missing.reason == "missing image"
    assert isinstance(broken, SkippedSample) and broken.reason == "unreadable image"
    images, targets, skips = collate_det([train_set[i] for i in range(len(train_set))])
    assert len(images) == len(targets) == 3
    assert isinstance(skips, DetSkipCounts) and skips == {"missing image": 1, "unreadable image": 1}
    assert skips.images_skipped() == 2 and str(skips) == "2 (1 missing image, 1 unreadable image)"
    assert DetSkipCounts.from_tensor((skips + train_set.scan_skips).to_tensor()) == skips + train_set.scan_skips
    # a transform that raises travels as a SampleFailure, which the collate hands back
    bad = SeededSamples(CocoDetection(coco_set[0], coco_set[1], transform=lambda i, t: 1 / 0), seed=0)
    failure = collate_det([bad[(0, 0)]])
    assert isinstance(failure, SampleFailure) and "a.png" in failure.source


def test_eval_mode_keeps_everything_for_cocoeval(coco_set):
    images_dir, ann_file, _ = coco_set
    ds = CocoDetection(images_dir, ann_file, train=False)
    assert "degenerate box" not in ds.scan_skips and ds.scan_skips.total() == 3
    image, target = _item(ds, 1)
    assert target == {"image_id": 1, "orig_size": (40, 60)}
    gt = ds.coco
    assert sorted(gt.getAnnIds()) == [101, 102, 103, 201, 202, 203]             # crowd and degenerate kept
    assert gt.anns[103]["iscrowd"] == 1 and sorted(gt.getImgIds()) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("content, fault", [
    (b"{not json", "not a JSON file"),
    (json.dumps([1, 2]).encode(), "top level is a JSON list"),
    (json.dumps({"annotations": [], "categories": [{"id": 1}]}).encode(), "no 'images' list"),
    (json.dumps({"images": [], "annotations": {}, "categories": [{"id": 1}]}).encode(),
     "'annotations' is a JSON dict, expected a list"),
    (json.dumps({"images": [{"id": 1, "height": 4, "width": 4}], "annotations": [],
                 "categories": [{"id": 1}]}).encode(), "images[0] has no 'file_name'"),
    (json.dumps({"images": [], "annotations": [], "categories": [{"id": "x"}]}).encode(),
     "categories[0] has no integer 'id'"),
])
def test_malformed_annotation_file_one_line(tmp_path, content, fault):
    ann = tmp_path / "bad.json"
    ann.write_bytes(content)
    with pytest.raises(MambaOutError) as e:
        CocoDetection(tmp_path, ann)
    msg = str(e.value)
    assert "\n" not in msg and str(ann) in msg and fault in msg


def test_coco_layout(tmp_path):
    with pytest.raises(MambaOutError, match=r"missing annotations/instances_train2017.json, train2017/"):
        (tmp_path / "annotations").mkdir()
        (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
        (tmp_path / "val2017").mkdir()
        coco_layout(tmp_path)
    (tmp_path / "annotations" / "instances_train2017.json").write_text("{}")
    (tmp_path / "train2017").mkdir()
    layout = coco_layout(tmp_path)
    assert layout.val_ann == tmp_path / "annotations" / "instances_val2017.json"
    assert layout.train_images == tmp_path / "train2017"


def _tight(mask):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_flip_and_resize_keep_boxes_masks_aligned(train_set):
    image, target = _item(train_set, 1)
    img, t = det_train_transform(hflip=1.0)(image, target)                       # default: no resize
    assert img.dtype == torch.float32 and img.shape == (3, 40, 60) and 0 <= img.min() and img.max() <= 1
    assert torch.allclose(img, image.flip(-1).float() / 255)
    assert t["boxes"].tolist() == [[30, 5, 50, 20], [5, 25, 20, 35]]
    assert all(_tight(m) == b for m, b in zip(t["masks"], t["boxes"].tolist()))
    assert t["masks"].dtype == torch.uint8 and type(t["boxes"]) is torch.Tensor
    img, t = det_train_transform(min_size=80, hflip=0.0)(image, target)         # 2x, as mmdet's keep_ratio resize
    assert img.shape == (3, 80, 120) and t["masks"].shape == (2, 80, 120)
    assert t["boxes"].tolist() == [[20, 10, 60, 40], [80, 50, 110, 70]]
    assert all(_tight(m) == b for m, b in zip(t["masks"], t["boxes"].tolist()))
    assert t["orig_size"] == (40, 60)
    tf = det_train_transform(multiscale=(48, 80), max_size=1000)
    sizes = set()
    for s in range(12):
        random.seed(s)
        sizes.add(tf(image, target)[0].shape[1])
    assert sizes <= {48, 80} and len(sizes) == 2
    assert detector_resize_kwargs(multiscale=(480, 800)) == {"min_size": tuple(range(480, 801, 32)), "max_size": 1333}
    assert detector_resize_kwargs() == {"min_size": 800, "max_size": 1333}


def test_boxes_degenerate_after_resize_dropped_and_counted(train_set):
    tf = det_train_transform(min_size=2, hflip=0.0)                             # 40x60 -> 2x3: boxes < 1 px
    batch = [tf(*_item(train_set, i)) for i in (1, 2, 3)]
    images, targets, skips = collate_det(batch)
    kept = sum(len(t["boxes"]) for t in targets)
    assert skips["box degenerate after resize"] == 3 - kept > 0 and skips.annotations_dropped() == 3 - kept
    assert all(len(t["labels"]) == len(t["masks"]) == len(t["boxes"]) and "dropped_boxes" not in t for t in targets)


def test_eval_transform(train_set):
    image, target = _item(train_set, 1)
    img, t = det_eval_transform()(image, target)
    assert img.shape == (3, 40, 60) and img.dtype == torch.float32
    assert t == {"image_id": 1, "orig_size": (40, 60), "size": (40, 60)}
    img, t = det_eval_transform(min_size=20)(image, target)
    assert img.shape == (3, 20, 30) and t["size"] == (20, 30) and t["orig_size"] == (40, 60)


def test_digits_detection_deterministic_tight_boxes():
    ds = DigitsDetection("val", length=6)
    again = DigitsDetection("val", length=6)
    torch.manual_seed(123)
    (a_img, a), (b_img, b) = ds[3], again[3]
    assert torch.equal(a_img, b_img) and torch.equal(a["masks"], b["masks"]) and torch.equal(a["boxes"], b["boxes"])
    assert not torch.equal(ds[2][0], a_img)
    assert ds.label_to_cat_id == {i: i for i in range(1, 11)} and ds.classes == [str(d) for d in range(10)]
    n_ann = 0
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
        assert 1 <= len(t["labels"]) <= 4 and ((t["labels"] >= 1) & (t["labels"] <= 10)).all()
        assert t["image_id"] == i + 1
        for m, box in zip(t["masks"], t["boxes"].tolist()):
            assert _tight(m) == box
            assert 1 <= box[2] - box[0] <= 40 and 1 <= box[3] - box[1] <= 40
        n_ann += len(t["labels"])
    gt = ds.coco
    assert len(gt.getAnnIds()) == n_ann and len(gt.getImgIds()) == 6
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[4]))
    assert [a["bbox"] for a in ann] == [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in a["boxes"].tolist()]
    assert np.array_equal(np.stack([gt.annToMask(x) for x in ann]), a["masks"].numpy())


def test_bad_masks_and_size_mismatch(coco_set, tmp_path):
    images_dir, ann_file, _ = coco_set
    data = json.loads(ann_file.read_text())
    next(a for a in data["annotations"] if a["id"] == 102)["segmentation"]["counts"] = "!!!!"
    next(a for a in data["annotations"] if a["id"] == 201)["segmentation"] = [[10, 5, "x", 5, 30, 20, 10, 20]]
    next(a for a in data["annotations"] if a["id"] == 202).pop("segmentation")       # box-only: box is the mask
    next(im for im in data["images"] if im["id"] == 3)["width"] = 61
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))
    ds = CocoDetection(images_dir, changed)
    assert _item(ds, 1).reason == "unreadable annotation" and _item(ds, 3).reason == "size mismatch"
    assert ds.scan_skips["malformed annotation"] == 2                      # ann 303, and 201's polygon
    assert isinstance(_item(ds, 2), tuple) and len(_item(ds, 2)[1]["labels"]) == 0
    assert ds.coco.anns[202]["segmentation"] == [[30, 5, 30.5, 5, 30.5, 15, 30, 15]]


def test_transforms_pickle_for_loader_workers():
    import pickle
    for tf in (det_train_transform(), det_train_transform(multiscale=(480, 800)), det_eval_transform(800)):
        pickle.loads(pickle.dumps(tf))
