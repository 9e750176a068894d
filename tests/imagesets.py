"""Small ImageFolder trees written by the tests (no downloads)."""
import io
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def _image(rng, color, size=24):
    base = np.array(color, dtype=np.float32)
    noise = rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def make_folder(root, per_class=(16, 6), size=24, seed=0, damaged=False):
    """root/train/<color>/*.png and root/val/<color>/*.png; class = dominant colour.
    With damaged=True, train/red also holds a truncated JPEG, a zero-byte file, and
    grayscale, CMYK and RGBA images (the last three are readable and are used)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in zip(("train", "val"), per_class):
        for cls, color in COLORS.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _image(rng, color, size).save(d / f"{i:03d}.png")
    if damaged:
        d = root / "train" / "red"
        buf = io.BytesIO()
        _image(rng, COLORS["red"], 64).save(buf, format="JPEG", quality=95)
        (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        (d / "empty.jpg").write_bytes(b"")
        (d / "notanimage.png").write_bytes(b"hello, this is text")
        _image(rng, COLORS["red"], size).convert("L").save(d / "gray.png")
        _image(rng, COLORS["red"], size).convert("CMYK").save(d / "cmyk.jpg")
        rgba = _image(rng, COLORS["red"], size).convert("RGBA")
        rgba.putalpha(200)
        rgba.save(d / "rgba.png")
    return root


def make_seg_folder(root, n=(4, 2), size=(40, 28), labels=(0, 1, 2, 3, 150), seed=0):
    """An ADE20K-layout tree: root/images/{training,validation}/<i>.jpg with PNG label maps
    root/annotations/{training,validation}/<i>.png. Each label map is a grid of 4x4-pixel
    blocks of raw values drawn from `labels`; the image is a noisy colour per value. size is
    (width, height). Returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    w, h = size
    for split, count in zip(("training", "validation"), n):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            blocks = rng.choice(np.asarray(labels), size=((h + 3) // 4, (w + 3) // 4))
            label = np.kron(blocks, np.ones((4, 4), dtype=blocks.dtype))[:h, :w].astype(np.uint8)
            lab = label.astype(np.float32)
            colour = np.stack([lab * 37 % 256, lab * 91 % 256, lab * 53 % 256], -1)
            image = np.clip(colour + rng.normal(0, 8, colour.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / split / f"{i:03d}.png")
    return root


def _rect_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def make_coco_set(root, size=(60, 40)):
    """A tiny COCO-format set: root/images/*, root/instances.json. size is (width, height).
    Categories {1: cat, 5: dog, 90: brush} (non-contiguous ids). Returns (images_dir, ann_file,
    expected) where expected holds the masks (H, W) uint8 of the annotations that train on.

    image 1 a.png: ann 101 polygon rectangle x 10..30, y 5..20 (dog), ann 102 compressed RLE
      rectangle x 40..55, y 25..35 (brush), ann 103 crowd uncompressed RLE (cat)
    image 2 b.jpg: ann 201 uncompressed RLE rectangle x 2..12, y 22..38 (cat), ann 202 a
      degenerate box (0.5 px wide), ann 203 a box outside the image (both dropped in training)
    image 3 c.png: no annotation (a negative)
    image 4 missing.png: not on disk; image 5 broken.jpg: not an image
    ann 301 on image 999 (unknown image), ann 302 of category 7 (unknown), ann 303 bbox "oops"
    """
    import json

    from pycocotools import mask as mask_utils
    root = Path(root)
    w, h = size
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "c.png"):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images_dir / name)
    (images_dir / "broken.jpg").write_bytes(b"this is not a jpeg")
    poly_mask = _rect_mask(h, w, 10, 5, 30, 20)
    rle_mask = _rect_mask(h, w, 40, 25, 55, 35)
    crowd_mask = _rect_mask(h, w, 0, 0, 8, 8)
    unc_mask = _rect_mask(h, w, 2, 22, 12, 38)
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode("ascii")
    images = [{"id": i, "file_name": n, "height": h, "width": w}
              for i, n in enumerate(["a.png", "b.jpg", "c.png", "missing.png", "broken.jpg"], 1)]
    anns = [
        {"id": 101, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 15], "area": 300.0, "iscrowd": 0,
         "segmentation": [[10, 5, 30, 5, 30, 20, 10, 20]]},
        {"id": 102, "image_id": 1, "category_id": 90, "bbox": [40, 25, 15, 10], "area": 150.0, "iscrowd": 0,
         "segmentation": rle},
        {"id": 103, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64.0, "iscrowd": 1,
         "segmentation": _uncompressed_rle(crowd_mask)},
        {"id": 201, "image_id": 2, "category_id": 1, "bbox": [2, 22, 10, 16], "area": 160.0, "iscrowd": 0,
         "segmentation": _uncompressed_rle(unc_mask)},
        {"id": 202, "image_id": 2, "category_id": 5, "bbox": [30, 5, 0.5, 10], "area": 5.0, "iscrowd": 0,
         "segmentation": [[30, 5, 30.5, 5, 30.5, 15, 30, 15]]},
        {"id": 203, "image_id": 2, "category_id": 5, "bbox": [w + 10, 5, 5, 5], "area": 25.0, "iscrowd": 0,
         "segmentation": [[w + 10, 5, w + 15, 5, w + 15, 10, w + 10, 10]]},
        {"id": 301, "image_id": 999, "category_id": 5, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0},
        {"id": 302, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0},
        {"id": 303, "image_id": 1, "category_id": 5, "bbox": "oops", "area": 25.0, "iscrowd": 0},
    ]
    cats = [{"id": 90, "name": "brush"}, {"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}]
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    expected = {101: poly_mask, 102: rle_mask, 103: crowd_mask, 201: unc_mask}
    return images_dir, ann_file, expected
