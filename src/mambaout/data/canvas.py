"""Canvases of scikit-learn's digits, the embedded data of the dense tasks (segmentation and
detection): a coloured background with a gentle gradient, digits pasted at random free places
in a contrasting colour, Gaussian noise. One generator draws everything, so a canvas is a pure
function of the generator's seed."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
from PIL import Image


def paste_digits(rng: np.random.Generator, n: int, digit_images: np.ndarray, digit_labels: np.ndarray,
                 digit_px: Tuple[int, int], max_digits: int) -> Tuple[np.ndarray, List[Tuple[np.ndarray, int]]]:
    """(image (n, n, 3) uint8, [(mask (n, n) bool, digit), ...]): 1..max_digits digits of
    digit_px[0]..digit_px[1] pixels at non-overlapping places (a digit with no free place after 20
    tries is left out); a digit's mask is where its bilinearly upscaled ink is above half."""
    dark = rng.random() < 0.5                      # dark background, light digits, or the reverse
    bg_range, fg_range = ((0, 110), (145, 255)) if dark else ((145, 255), (0, 110))
    ramp = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    image = (rng.uniform(*bg_range, 3).astype(np.float32)
             + ramp[:, None, None] * rng.uniform(-40, 40, 3).astype(np.float32)
             + ramp[None, :, None] * rng.uniform(-40, 40, 3).astype(np.float32))
    image = np.broadcast_to(image, (n, n, 3)).copy()
    placed, instances = [], []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        s = int(rng.integers(digit_px[0], digit_px[1] + 1))
        for _try in range(20):
            y, x = (int(v) for v in rng.integers(0, n - s + 1, 2))
            if all(y >= py + ps or py >= y + s or x >= px + ps or px >= x + s for py, px, ps in placed):
                break
        else:
            continue                               # no free place for a digit this size
        placed.append((y, x, s))
        k = int(rng.integers(len(digit_labels)))
        ink = np.asarray(Image.fromarray(digit_images[k]).resize((s, s), Image.BILINEAR),
                         dtype=np.float32)[..., None] / 255.0
        colour = rng.uniform(*fg_range, 3).astype(np.float32)
        image[y:y + s, x:x + s] = image[y:y + s, x:x + s] * (1 - ink) + colour * ink
        mask = np.zeros((n, n), dtype=bool)
        mask[y:y + s, x:x + s] = ink[..., 0] > 0.5
        if mask.any():
            instances.append((mask, int(digit_labels[k])))
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), instances
