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
