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
