"""Segmentation data: the ADE20K layout, own data, bad samples, joint transforms, digits canvases."""
import logging
import random

import numpy as np
import pytest
import torch
from imagesets import make_seg_folder
from PIL import Image
from torchvision import tv_tensors

from mambaout.tasks.segmentation.ade20k import ADE20K_CLASSES, ADE20K_PALETTE
from mambaout.data.datasets import SeededSamples
from mambaout.data.skips import SkippedSample
from mambaout.tasks.segmentation.data import (SKIP_REASONS, DigitsSegmentation, PhotoMetricDistortion, RandomCropCatMax,
                                              RescaleToFit, SegFolder, SkipCounts, _hsv_to_rgb, _rgb_to_hsv,
                                              collate_seg_eval, collate_seg_train, seg_eval_transform,
                                              seg_train_transform)
from mambaout.data.transforms import IMAGENET_MEAN, IMAGENET_STD, rescale_size
from mambaout.errors import MambaOutError


def _pair(image, mask):
    return tv_tensors.Image(torch.as_tensor(image)), tv_tensors.Mask(torch.as_tensor(mask).long())


def _unnormalize(x):
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (x * std + mean) * 255


def _one_line(e):
    return "\n" not in str(e.value) and str(e.value)


# ----------------------------------------------------------------------------- folder layout

def test_ade_layout_reduces_zero_label_pixel_exactly(tmp_path):
    root = make_seg_folder(tmp_path / "ade")
    raw = np.array(Image.open(root / "annotations/training/000.png"))
    raw[0, :4] = [0, 1, 150, 255]
    Image.fromarray(raw).save(root / "annotations/training/000.png")

    ds = SegFolder(root, "train")
    assert len(ds) == 4 and len(SegFolder(root, "val")) == len(SegFolder(root, "validation")) == 2
    assert ds.classes == list(ADE20K_CLASSES) and ds.palette == list(ADE20K_PALETTE) and ds.num_classes == 150
    for i, (img_path, ann_path) in enumerate(ds.samples):
        image, mask = ds[i]
        raw = np.array(Image.open(ann_path)).astype(np.int64)
        expected = np.where((raw == 0) | (raw == 255), 255, raw - 1)
        assert image.dtype == torch.uint8 and image.shape == (3, 28, 40)
        assert mask.dtype == torch.int64 and np.array_equal(mask.numpy(), expected)
    assert ds[0][1][0, :4].tolist() == [255, 0, 149, 255]


def test_own_data_without_reduction_and_class_names(tmp_path):
    root = make_seg_folder(tmp_path / "own", labels=(0, 1, 2, 3))
    names = tmp_path / "names.txt"
    names.write_text("road\ncar\n\nsky\ntree\n")
    ds = SegFolder(root, "training", reduce_zero_label=False, class_names=names)
    assert ds.num_classes == 4 and ds.classes == ["road", "car", "sky", "tree"] and len(ds.palette) == 4
    for i, (_, ann_path) in enumerate(ds.samples):
        assert np.array_equal(ds[i][1].numpy(), np.array(Image.open(ann_path)))
    assert SegFolder(root, "training", reduce_zero_label=False, num_classes=4).classes == ["0", "1", "2", "3"]

    with pytest.raises(MambaOutError, match="3 names for 4 classes") as e:
        names.write_text("a\nb\nc\n")
        SegFolder(root, "training", reduce_zero_label=False, num_classes=4, class_names=names)
    assert _one_line(e)
    with pytest.raises(MambaOutError, match="num_classes"):
        SegFolder(root, "training", reduce_zero_label=False)


def test_layout_errors_are_one_line(tmp_path):
    with pytest.raises(MambaOutError, match="not found") as e:
        SegFolder(tmp_path / "nowhere")
    assert _one_line(e)
    (tmp_path / "a/images/training").mkdir(parents=True)
    with pytest.raises(MambaOutError, match="annotations/training") as e:
        SegFolder(tmp_path / "a", "train")
    assert _one_line(e)
    (tmp_path / "a/annotations/training").mkdir(parents=True)
    with pytest.raises(MambaOutError, match="no annotated images.*images/training") as e:
        SegFolder(tmp_path / "a", "train")
    assert _one_line(e)


def test_bad_samples_are_skipped_counted_and_logged(tmp_path, caplog):
    root = make_seg_folder(tmp_path / "bad", n=(10, 1))
    img, ann = root / "images/training", root / "annotations/training"
    good = Image.open(img / "000.jpg")
    (ann / "000.png").unlink()                                     # no annotation
    (img / "001.jpg").write_bytes(b"")                             # empty image
    data = (img / "002.jpg").read_bytes()
    (img / "002.jpg").write_bytes(data[: len(data) // 2])          # truncated JPEG
    data = (ann / "003.png").read_bytes()
    (ann / "003.png").write_bytes(data[: len(data) // 2])          # truncated PNG
    Image.new("L", (good.width + 1, good.height)).save(ann / "004.png")   # another size
    Image.new("L", good.size, 200).save(ann / "005.png")           # 200 -> 199 >= 150
    Image.new("RGB", good.size).save(ann / "006.png")              # colour, not labels
    with caplog.at_level(logging.WARNING, logger="mambaout"):
        ds = SegFolder(root, "train", transform=seg_train_transform(32, scale=(64, 32)))
        assert ds.scan_skips == {"no annotation": 1} and len(ds) == 9
        assert "1 of 10 images" in caplog.text
        (img / "007.jpg").unlink()                                 # vanished after the scan
        wrapped = SeededSamples(ds, seed=0)
        items = [wrapped[(i, 0)] for i in range(len(ds))]
    assert all(not isinstance(b, Exception) for b in items)
    images, masks, skips = collate_seg_train(items)
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)
    assert skips == {"unreadable image": 3, "unreadable annotation": 2, "size mismatch": 1, "label out of range": 1}
    for name, reason in [("001.jpg", "unreadable image"), ("003.png", "unreadable annotation"),
                         ("004.png", "size mismatch"), ("005.png", "label out of range"),
                         ("007.jpg", "unreadable image")]:
        assert any(name in r.getMessage() and reason in r.getMessage() for r in caplog.records), name
    bad = [b for b in items if isinstance(b, SkippedSample)]
    assert {b.source.rsplit("/", 1)[-1] for b in bad} == {"001.jpg", "002.jpg", "007.jpg", "003.png", "004.png",
                                                         "005.png", "006.png"}
    # what an engine does with the counts: sum per epoch, all-reduce as a tensor, print
    epoch = SkipCounts() + skips + ds.scan_skips
    assert SkipCounts.from_tensor(epoch.to_tensor() * 2) == {k: 2 * v for k, v in epoch.items()}
    assert epoch.to_tensor().shape == (len(SKIP_REASONS),)
    assert str(epoch) == "8 (3 unreadable image, 2 unreadable annotation, 1 no annotation, 1 size mismatch, " \
                         "1 label out of range)" and str(SkipCounts()) == "0"
    mismatch = next(b for b in bad if b.reason == "size mismatch")
    assert collate_seg_train([mismatch, None]) == (None, None, {"size mismatch": 1, "unreadable image": 1})


# ----------------------------------------------------------------------------- transforms

def _blocks(h, w, classes, block, seed):
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor(classes)[torch.randint(len(classes), ((h + block - 1) // block, (w + block - 1) // block),
                                               generator=g)]
    return grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]


COLOURS = torch.tensor([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10], [10, 250, 250]])


def _colour_coded(h, w, block=8, seed=0):
    """An image whose colour is its mask's class (COLOURS) and the mask."""
    mask = _blocks(h, w, [0, 1, 2, 3, 4], block, seed)
    return _pair(COLOURS[mask].permute(2, 0, 1).to(torch.uint8), mask)


def test_train_transform_shapes_padding_and_values():
    crop = 64
    tf = seg_train_transform(crop, scale=(128, 48), ratio_range=(0.5, 2.0), photometric=True)
    for seed in range(20):
        random.seed(seed), torch.manual_seed(seed)
        image = torch.randint(0, 256, (3, 90, 150), dtype=torch.uint8)
        image, mask = _pair(image, _blocks(90, 150, [0, 3, 7], 6, seed))
        x, y = tf(image, mask)
        assert type(x) is torch.Tensor and type(y) is torch.Tensor
        assert x.shape == (3, crop, crop) and x.dtype == torch.float32
        assert y.shape == (crop, crop) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 3, 7, 255}

    # a small image: resized by the "fit within" rule, then padded bottom/right with 0 and 255
    tf = seg_train_transform(crop, scale=(48, 24), ratio_range=(1.0, 1.0), hflip=0.0, photometric=False)
    image, mask = _pair(torch.full((3, 30, 40), 128, dtype=torch.uint8), torch.full((30, 40), 2))
    h, w = rescale_size(30, 40, (48, 24))
    assert (h, w) == (24, 32)
    x, y = tf(image, mask)
    assert (x[:, h:] == 0).all() and (x[:, :, w:] == 0).all() and (x[:, :h, :w] != 0).all()
    assert (y[h:] == 255).all() and (y[:, w:] == 255).all() and (y[:h, :w] == 2).all()


def test_rescale_follows_mmseg_fit_within_rule():
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)        # a typical ADE image is unchanged
    assert rescale_size(300, 4000, (2048, 512)) == (154, 2048)      # long side binds
    assert rescale_size(1000, 1500, (1024, 256)) == (256, 384)      # short side binds (ratio 0.5)


def test_mask_resize_samples_the_pixel_the_bilinear_image_centres_on():
    # image = 30 x (row, column) ramps; mask = the source pixel's id. Upscaled 8 -> 37, each
    # mask pixel must name the source pixel nearest to where bilinear sampled the image.
    rows, cols = torch.arange(8)[:, None].expand(8, 8), torch.arange(8)[None, :].expand(8, 8)
    image, mask = _pair(torch.stack([rows * 30, cols * 30, rows * 0]).to(torch.uint8), rows * 8 + cols)
    x, y = RescaleToFit((37, 37))(image, mask)
    assert y.shape == (37, 37)
    assert torch.equal(y // 8, (x[0].float() / 30).round().long())
    assert torch.equal(y % 8, (x[1].float() / 30).round().long())


@pytest.mark.parametrize("scale", [(64, 32), (256, 128)])
def test_image_and_mask_stay_aligned(scale):
    crop_no_resize = seg_train_transform(24, scale=(64, 48), ratio_range=(1.0, 1.0), cat_max_ratio=0.75,
                                         photometric=False)
    resizing = seg_train_transform(32, scale=scale, ratio_range=(0.5, 2.0), photometric=False)
    checked = 0
    for seed in range(12):
        image, mask = _colour_coded(48, 64, seed=seed)
        random.seed(seed), torch.manual_seed(seed)
        x, y = crop_no_resize(image, mask)                       # crop, flip, pad only: exact
        rgb = _unnormalize(x).round().long()
        inside = y != 255
        assert torch.equal(rgb.permute(1, 2, 0)[inside], COLOURS[y[inside]])

        random.seed(seed), torch.manual_seed(seed)
        x, y = resizing(image, mask)
        rgb = _unnormalize(x).permute(1, 2, 0)
        inside = y != 255
        # more than half a source pixel (<= 2.7 output pixels here) from class borders and the
        # crop's edges, where bilinear blends colours, the colour is the class's
        edged = torch.nn.functional.pad(y.float(), (3, 3, 3, 3), value=-1)[None, None]
        highest = torch.nn.functional.max_pool2d(edged, 7, 1)[0, 0]
        lowest = -torch.nn.functional.max_pool2d(-edged, 7, 1)[0, 0]
        interior = inside & (highest == lowest)
        assert ((rgb[interior] - COLOURS[y[interior]]).abs().max(-1).values < 3).all()
        checked += int(interior.sum())
    assert checked > 300


def _position_coded(h, w):
    """An image whose first two channels are the row and the column."""
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    return tv_tensors.Image(torch.stack([rows, cols, torch.zeros_like(rows)]).to(torch.uint8))


def test_cat_max_ratio_retries_then_takes_the_last_window():
    image = _position_coded(100, 120)
    crop = RandomCropCatMax(32, cat_max_ratio=0.75)

    # one class everywhere: no window passes; 10 checked windows, then an 11th is taken
    mask = tv_tensors.Mask(torch.zeros(100, 120, dtype=torch.long))
    random.seed(7)
    x, y = crop(image, mask)
    random.seed(7)
    windows = [(random.randint(0, 68), random.randint(0, 88)) for _ in range(11)]
    assert (x[0, 0, 0].item(), x[1, 0, 0].item()) == windows[-1] and y.shape == (32, 32)

    # two classes everywhere: the first window passes
    mask = tv_tensors.Mask(torch.arange(120).remainder(2).expand(100, 120).clone())
    random.seed(7)
    x, _ = crop(image, mask)
    assert (x[0, 0, 0].item(), x[1, 0, 0].item()) == windows[0]

    # only the top-left corner is mixed: the rule finds it far more often than chance,
    # and 255 does not count as a class
    mask = torch.zeros(100, 120, dtype=torch.long)
    mask[:40, :40] = torch.arange(40).remainder(2)[None, :] + 1
    mask[60:, 80:] = 255
    mask = tv_tensors.Mask(mask)

    def balanced_rate(ratio):
        c, hits = RandomCropCatMax(32, cat_max_ratio=ratio), 0
        for s in range(150):
            random.seed(s)
            _, y = c(image, mask)
            counts = torch.bincount(y[y != 255])
            counts = counts[counts > 0]
            hits += len(counts) > 1 and counts.max().item() / counts.sum().item() < 0.75
        return hits / 150

    assert balanced_rate(0.75) > balanced_rate(1.0) + 0.3


def test_seeded_samples_are_deterministic(tmp_path):
    ds = SegFolder(make_seg_folder(tmp_path / "ade"), "train", transform=seg_train_transform(16, scale=(64, 24)))
    a, b = SeededSamples(ds, seed=3), SeededSamples(ds, seed=3)
    first = a[(2, 1)]
    random.random(), torch.rand(5), np.random.rand()                # unrelated draws do not matter
    again = b[(2, 1)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    others = [a[(2, e)][0] for e in range(2, 6)]
    assert any(not torch.equal(first[0], o) for o in others)


def test_photometric_distortion_is_mmseg_like():
    rgb = torch.randint(0, 256, (3, 16, 16)).float()
    assert (_hsv_to_rgb(_rgb_to_hsv(rgb)) - rgb).abs().max() < 1e-3
    hsv = _rgb_to_hsv(torch.tensor([[255.0], [0.0], [0.0]])[..., None])
    assert hsv.flatten().tolist() == [0.0, 255.0, 255.0]          # red: H 0, S 255, V 255 (OpenCV 8-bit)
    image, mask = _pair(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8), torch.zeros(20, 20))
    changed = 0
    for seed in range(10):
        random.seed(seed)
        out, m = PhotoMetricDistortion()(image, mask)
        assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8 and out.shape == image.shape
        assert m is mask
        changed += not torch.equal(out, image)
    assert changed >= 8                                             # 1 - 1/16 of draws change something


def test_eval_transform_resizes_image_only():
    image, mask = _pair(torch.randint(0, 256, (3, 300, 700), dtype=torch.uint8), _blocks(300, 700, [0, 5], 10, 0))
    x, y = seg_eval_transform((2048, 512))(image, mask)
    assert x.shape == (3, *rescale_size(300, 700, (2048, 512))) == (3, 512, 1195)
    assert torch.equal(y, mask.as_subclass(torch.Tensor))
    x, y = seg_eval_transform(None)(Image.new("RGB", (70, 30)))
    assert x.shape == (3, 30, 70) and y is None
    batch = [(x, torch.zeros(30, 70)), SkippedSample(1, "f.png", "size mismatch", ""), (x[:, :20], torch.zeros(20, 70))]
    images, masks, skips = collate_seg_eval(batch)
    assert [m.shape for m in masks] == [(30, 70), (20, 70)] and skips == {"size mismatch": 1}


# ----------------------------------------------------------------------------- digits

def test_digits_segmentation_is_deterministic_and_in_range():
    train, val = DigitsSegmentation("train"), DigitsSegmentation("val", length=30)
    assert len(train) == 1000 and len(val) == 30 and len(DigitsSegmentation("val")) == 200
    assert train.classes == ["background"] + [str(d) for d in range(10)] and train.num_classes == 11
    first = [train.canvas(i) for i in range(40)]
    random.seed(1), torch.manual_seed(1), np.random.seed(1)
    again = [DigitsSegmentation("train").canvas(i) for i in range(40)]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert not np.array_equal(val.canvas(0)[0], first[0][0])
    labels = np.concatenate([m.ravel() for _, m in first])
    assert labels.min() == 0 and labels.max() <= 10 and len(np.unique(labels)) == 11
    assert max(len(np.unique(m)) for _, m in first) >= 3            # several digits on one canvas
    assert 0.03 < (labels > 0).mean() < 0.5
    image, mask = train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and mask.shape == (64, 64)
    x, y = DigitsSegmentation("train", transform=seg_train_transform(48, scale=(64, 64)))[3]
    assert x.shape == (3, 48, 48) and y.shape == (48, 48) and set(y.unique().tolist()) <= set(range(11)) | {255}
    with pytest.raises(MambaOutError):
        DigitsSegmentation("test")
