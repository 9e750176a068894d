"""COCO evaluation: predictions -> COCO results, COCOeval AP, results files, DDP gathering."""
import io
import contextlib
import json
import math

import pytest
import torch

from mambaout.tasks.detection.data import DigitsDetection, coco_from_dict
from mambaout.distributed import Dist
from mambaout.errors import MambaOutError
from mambaout.tasks.detection.metrics import (coco_evaluate, gather_image_ids, gather_results, outputs_to_original,
                                     predictions_to_coco, write_results)

METRICS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}


@pytest.fixture(scope="module")
def digits():
    ds = DigitsDetection("val", length=6)
    items = [ds[i] for i in range(len(ds))]
    return ds, items


def _perfect_outputs(items, shift=0.0):
    outputs = []
    for _, t in items:
        n = len(t["labels"])
        boxes = t["boxes"].as_subclass(torch.Tensor).clone()
        boxes[:, [0, 2]] += shift
        outputs.append({"boxes": boxes, "labels": t["labels"], "scores": torch.linspace(1.0, 0.5, n),
                        "masks": t["masks"].as_subclass(torch.Tensor)[:, None].float() * 0.9})
    return outputs, [t["image_id"] for _, t in items]


def test_ground_truth_as_predictions_scores_100(digits):
    ds, items = digits
    outputs, ids = _perfect_outputs(items)
    results = predictions_to_coco(outputs, ids, ds.label_to_cat_id)
    assert len(results) == len(ds.coco.getAnnIds())
    r = results[0]
    assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert isinstance(r["segmentation"]["counts"], str)
    metrics = coco_evaluate(ds.coco, results)
    assert set(metrics) == {"bbox", "segm"} and set(metrics["bbox"]) == METRICS
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(100.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(100.0)
        assert math.isnan(metrics[iou_type]["APl"])          # no object above 96^2 px on 96 px canvases


def test_shifted_boxes_lower_ap(digits):
    ds, items = digits
    outputs, ids = _perfect_outputs(items, shift=6.0)
    metrics = coco_evaluate(ds.coco, predictions_to_coco(outputs, ids, ds.label_to_cat_id), iou_types=("bbox",))
    assert set(metrics) == {"bbox"} and metrics["bbox"]["AP"] < 60


def test_results_file_reloads_with_the_same_ap(digits, tmp_path):
    from pycocotools.cocoeval import COCOeval
    ds, items = digits
    outputs, ids = _perfect_outputs(items, shift=2.0)
    results = predictions_to_coco(outputs, ids, ds.label_to_cat_id)
    path = write_results(results, tmp_path / "out" / "results.json")
    assert json.loads(path.read_text()) == results
    metrics = coco_evaluate(ds.coco, results, iou_types=("bbox",))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(str(path)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] * 100 == pytest.approx(metrics["bbox"]["AP"])
    again = coco_evaluate(ds.coco, json.loads(path.read_text()), ("bbox",))["bbox"]
    assert all(again[m] == pytest.approx(v, nan_ok=True) for m, v in metrics["bbox"].items())


def test_category_ids_mapped_back_to_dataset_ids():
    box_of = {1: [2, 2, 12, 10], 5: [20, 5, 35, 25], 90: [5, 20, 15, 30]}
    gt = coco_from_dict({
        "images": [{"id": 7, "file_name": "x.png", "height": 32, "width": 40}],
        "annotations": [{"id": k, "image_id": 7, "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
                        for k, (c, b) in enumerate(box_of.items(), 1)],
        "categories": [{"id": c, "name": str(c)} for c in box_of]})
    label_to_cat_id = {1: 1, 2: 5, 3: 90}
    output = {"boxes": torch.tensor([box_of[1], box_of[5], box_of[90]], dtype=torch.float32),
              "labels": torch.tensor([1, 2, 3]), "scores": torch.tensor([0.9, 0.8, 0.7])}
    results = predictions_to_coco([output], [7], label_to_cat_id)
    assert [r["category_id"] for r in results] == [1, 5, 90]
    assert results[1]["bbox"] == [20.0, 5.0, 15.0, 20.0]
    assert coco_evaluate(gt, results, ("bbox",))["bbox"]["AP"] == pytest.approx(100.0)
    with pytest.raises(MambaOutError, match="category id"):              # labels left unmapped
        coco_evaluate(gt, predictions_to_coco([output], [7], {1: 1, 2: 2, 3: 3}), ("bbox",))
    with pytest.raises(MambaOutError, match="label"):
        predictions_to_coco([output], [7], {1: 1, 2: 5})
    with pytest.raises(TypeError, match="label_to_cat_id"):                 # a list of labels is no mapping
        predictions_to_coco([output], [7], list(label_to_cat_id))
    with pytest.raises(MambaOutError, match="image id"):
        coco_evaluate(gt, predictions_to_coco([output], [8], label_to_cat_id), ("bbox",))


def test_empty_results_give_zeros(digits):
    ds, _ = digits
    assert coco_evaluate(ds.coco, []) == {t: {m: 0.0 for m in METRICS} for t in ("bbox", "segm")}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 96, 96)}
    assert predictions_to_coco([empty], [1], ds.label_to_cat_id) == []


def test_images_without_detections_still_count(digits):
    ds, items = digits
    outputs, ids = _perfect_outputs(items)
    results = [r for r in predictions_to_coco(outputs, ids, ds.label_to_cat_id) if r["image_id"] != 1]
    assert coco_evaluate(ds.coco, results, ("bbox",))["bbox"]["AP"] < 100
    only = coco_evaluate(ds.coco, results, ("bbox",), image_ids=gather_image_ids(ids[1:]))
    assert only["bbox"]["AP"] == pytest.approx(100.0)


def test_gather_without_process_group_is_identity():
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
               {"image_id": 1, "category_id": 2, "bbox": [0, 0, 2, 2], "score": 0.4}]
    assert gather_results(results, None) == results
    assert gather_results(results, Dist()) == results
    assert gather_image_ids([3, 1, 3], Dist()) == [1, 3]


def test_outputs_to_original():
    out = {"boxes": torch.tensor([[10.0, 5.0, 20.0, 15.0]]), "labels": torch.tensor([1]),
           "scores": torch.tensor([0.9]), "masks": torch.ones(1, 1, 20, 30)}
    back = outputs_to_original(out, (20, 30), (40, 60))
    assert back["boxes"].tolist() == [[20, 10, 40, 30]] and back["masks"].shape == (1, 1, 40, 60)
    assert outputs_to_original(out, (20, 30), (20, 30)) is out


def test_gather_dedupes_by_image_owner(monkeypatch):
    import torch.distributed as dist
    per_rank = [[{"image_id": 1, "score": 0.9}, {"image_id": 3, "score": 0.8}],
                [{"image_id": 2, "score": 0.7}, {"image_id": 1, "score": 0.1}]]   # image 1 again on rank 1

    def all_gather_object(parts, obj):
        parts[:] = per_rank

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    merged = gather_results(per_rank[0], Dist(rank=0, world=2))
    assert merged == [{"image_id": 1, "score": 0.9}, {"image_id": 3, "score": 0.8}, {"image_id": 2, "score": 0.7}]
