"""Segmentation evaluation: mIoU against a hand computation, DDP summing, whole / slide /
multi-scale + flip inference, colour maps."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mambaout.errors import MambaOutError
from mambaout.tasks.segmentation.metrics import (IoUMeter, colorize, confusion_matrix, infer_multiscale, infer_slide, infer_whole,
                                     metrics_from_confusion, overlay)


def _hand_metrics(preds, targets, num_classes, ignore=255):
    """Per-class counting with boolean masks, one class at a time (not via a confusion matrix)."""
    pred = np.concatenate([p.ravel() for p in preds])
    target = np.concatenate([t.ravel() for t in targets])
    valid = target != ignore
    pred, target = pred[valid], target[valid]
    iou, acc = [], []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (target == c))
        fp = np.sum((pred == c) & (target != c))
        fn = np.sum((pred != c) & (target == c))
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        acc.append(tp / (tp + fn) if tp + fn else math.nan)
    present_iou = [v for v in iou if not math.isnan(v)]
    present_acc = [v for v in acc if not math.isnan(v)]
    return {"aAcc": 100 * np.mean(pred == target), "mIoU": 100 * sum(present_iou) / len(present_iou),
            "mAcc": 100 * sum(present_acc) / len(present_acc), "IoU": [100 * v for v in iou],
            "Acc": [100 * v for v in acc]}


def _random_batches(seed, n=3, num_classes=6):
    """Label maps of several sizes: class 5 appears nowhere, class 4 only in predictions,
    about 10% of pixels ignored."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for k in range(n):
        shape = (2, 9 + k, 13 - k)
        target = rng.integers(0, 4, shape)
        pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, 5, shape))
        target[rng.random(shape) < 0.1] = 255
        preds.append(pred), targets.append(target)
    return preds, targets


def _assert_metrics_equal(got, want):
    for key in ("aAcc", "mIoU", "mAcc"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    for key in ("IoU", "Acc"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_a_hand_computation(seed):
    preds, targets = _random_batches(seed)
    meter = IoUMeter(6)
    for p, t in zip(preds, targets):
        meter.update(torch.from_numpy(p), torch.from_numpy(t))
    got, want = meter.compute(), _hand_metrics(preds, targets, 6)
    _assert_metrics_equal(got, want)
    assert math.isnan(got["IoU"][5]) and math.isnan(got["Acc"][5])     # absent from both: left out
    assert got["IoU"][4] == 0 and math.isnan(got["Acc"][4])            # predicted only: IoU 0 counts
    assert meter.matrix.dtype == torch.int64 and meter.matrix.sum() == sum((t != 255).sum() for t in targets)


def test_metrics_on_a_tiny_example():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    m = metrics_from_confusion(confusion_matrix(pred, target, 4))
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    assert m["IoU"][:3] == pytest.approx([100 / 3, 200 / 3, 50]) and math.isnan(m["IoU"][3])
    assert m["mIoU"] == pytest.approx(50) and m["aAcc"] == pytest.approx(400 / 6)
    assert m["Acc"][:3] == pytest.approx([50, 100, 50]) and m["mAcc"] == pytest.approx(200 / 3)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(torch.zeros(4), torch.tensor([0, 1, 4, 255]), 4)
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(torch.tensor([0, 7, 0, 0]), torch.zeros(4), 4)


def test_ddp_sum_of_two_meters_equals_one_meter():
    preds, targets = _random_batches(3, n=4)
    whole, rank0, rank1 = IoUMeter(6), IoUMeter(6), IoUMeter(6)
    for k, (p, t) in enumerate(zip(preds, targets)):
        whole.update(torch.from_numpy(p), torch.from_numpy(t))
        (rank0 if k % 2 == 0 else rank1).update(torch.from_numpy(p), torch.from_numpy(t))
    other = rank1.matrix.clone()
    rank1.all_reduce(lambda t: t.add_(rank0.matrix))        # in place, like dist.all_reduce
    rank0.all_reduce(lambda t: t + other)                   # or returning the sum
    for meter in (rank0, rank1):
        assert torch.equal(meter.matrix, whole.matrix)
        _assert_metrics_equal(meter.compute(), whole.compute())


# ----------------------------------------------------------------------------- inference

def _pixelwise_model(num_classes=5, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, num_classes, 1).eval()


def test_slide_equals_whole_for_a_pixelwise_model():
    model, image = _pixelwise_model(), torch.randn(2, 3, 50, 70)
    whole = infer_whole(model, image, 5)
    slide = infer_slide(model, image, 5, crop=24, stride=16)
    assert whole.shape == slide.shape == (2, 5, 50, 70)
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)
    resized = infer_slide(model, image, 5, crop=(20, 30), stride=(11, 17), out_size=(25, 35))
    torch.testing.assert_close(resized, infer_whole(model, image, 5, out_size=(25, 35)), atol=1e-5, rtol=1e-5)


def test_slide_windows_follow_mmseg_and_cover_every_pixel():
    h, w = 50, 70
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    image = torch.stack([rows, cols, torch.zeros(h, w)])[None]     # a window's corner tells where it is
    seen = []

    def first_window_only(x):
        corner = (int(x[0, 0, 0, 0]), int(x[0, 1, 0, 0]))
        seen.append((corner, tuple(x.shape[-2:])))
        return torch.full((1, 1, *x.shape[-2:]), float(corner == (0, 0)))

    out = infer_slide(first_window_only, image, 1, crop=24, stride=16)[0, 0]
    # rows: max(50 - 24 + 15, 0) // 16 + 1 = 3 windows at 0, 16, and 32 moved back to end at 50;
    # columns: max(70 - 24 + 15, 0) // 16 + 1 = 4 windows at 0, 16, 32, and 48 moved back to 46
    windows = [(y, x) for y in (0, 16, 26) for x in (0, 16, 32, 46)]
    assert seen == [(c, (24, 24)) for c in windows]
    counts = torch.zeros(h, w)
    for y, x in windows:
        counts[y:y + 24, x:x + 24] += 1
    assert counts.min() == 1 and counts.max() == 4
    want = torch.zeros(h, w)
    want[:24, :24] = 1 / counts[:24, :24]                    # each window's logits divided by the count
    torch.testing.assert_close(out, want)

    seen.clear()
    small = infer_slide(first_window_only, image[..., :10, :12], 1, crop=24, stride=16)
    assert seen == [((0, 0), (10, 12))] and torch.equal(small, torch.ones(1, 1, 10, 12))  # the whole image


def test_model_output_is_resized_to_the_input_and_class_count_checked():
    low_res = torch.nn.Sequential(_pixelwise_model(), torch.nn.AvgPool2d(4))
    assert infer_whole(low_res, torch.randn(1, 3, 32, 48), 5).shape == (1, 5, 32, 48)
    with pytest.raises(MambaOutError, match="expected 7 classes"):
        infer_whole(_pixelwise_model(), torch.randn(1, 3, 8, 8), 7)


def test_multiscale_flip_shapes_sizes_and_probabilities():
    sizes = []
    model = _pixelwise_model()

    def recording(x):
        sizes.append(tuple(x.shape[-2:]))
        return model(x)

    image = torch.randn(1, 3, 100, 150)
    probs = infer_multiscale(recording, image, 5, scales=(0.5, 1.0), base_size=(256, 64))
    # fit within (128, 32) and (256, 64): factors min(128/150, 32/100) = 0.32, min(256/150, 64/100) = 0.64
    assert sizes == [(32, 48), (32, 48), (64, 96), (64, 96)]
    assert probs.shape == (1, 5, 100, 150) and probs.min() >= 0 and probs.max() <= 1
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 100, 150))

    sizes.clear()
    infer_multiscale(recording, image, 5, scales=(0.5, 1.25), flip=False, base_size=None)
    assert sizes == [(50, 75), (125, 188)]                   # r x the image's own size

    # a flip-equivariant model: flipping, inferring and flipping back changes nothing, and
    # on a flat image every scale agrees with the model's own softmax
    flat = torch.ones(1, 3, 40, 60) * torch.tensor([0.3, -0.2, 0.5])[None, :, None, None]
    with_flip = infer_multiscale(model, flat, 5, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), base_size=(128, 48))
    without = infer_multiscale(model, flat, 5, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=False,
                               base_size=(128, 48))
    with torch.no_grad():
        torch.testing.assert_close(with_flip, model(flat).softmax(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_flip, without, atol=1e-5, rtol=1e-5)

    # a model that is not flip-equivariant: the mirrored pass is undone, so the average is symmetric
    def leftward(x):
        ramp = torch.linspace(0, 4, x.shape[-1])
        return torch.stack([ramp, -ramp])[None, :, None, :].expand(x.shape[0], 2, x.shape[-2], -1)
    sym = infer_multiscale(leftward, flat, 2, scales=(1.0,), base_size=(60, 40))
    torch.testing.assert_close(sym, sym.flip(-1))
    lopsided = infer_multiscale(leftward, flat, 2, scales=(1.0,), flip=False, base_size=(60, 40))
    assert (lopsided - lopsided.flip(-1)).abs().max() > 0.4
    assert infer_multiscale(leftward, flat, 2, scales=(1.0,), mode="slide", crop=16, stride=10,
                            base_size=(60, 40)).shape == (1, 2, 40, 60)


# ----------------------------------------------------------------------------- pictures

def test_colorize_and_overlay():
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    labels = torch.tensor([[0, 1], [2, 255]])
    assert np.array_equal(np.asarray(colorize(labels, palette)),
                          np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 0, 0]]], dtype=np.uint8))
    image = Image.fromarray(np.full((2, 2, 3), 100, dtype=np.uint8))
    out = np.asarray(overlay(image, labels, palette, alpha=0.5)).astype(int)
    assert out[0, 0].tolist() == [178, 50, 50] and out[1, 1].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, torch.zeros(3, 2, dtype=torch.long), palette)
