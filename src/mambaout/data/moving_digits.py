"""Moving digits: the embedded video dataset (7 motion classes), made on the fly.

A clip shows one of scikit-learn's handwritten digits on a plain, lightly noisy canvas, moving
over T frames: still, left, right, up, down, towards (growing) or away (shrinking). The digit
images are split as in DigitsDataset (every 5th of each class is val), so no val digit is in train.

The point of the set is time: each opposite pair is made from ONE draw (digit, colours, path,
noise) rendered forward and reversed, so clip i of "left" is clip i of "right" played backwards,
and likewise up / down and towards / away. Their frames are the same set in reverse order; a
model that only pools over frames cannot tell the two apart (its best is 4/7 = 57%: "still"
and half of each pair), while one that mixes information over time can reach 100%.

Every clip is a pure function of (split, index): generated when asked, nothing is cached.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .datasets import DigitsDataset

MOTIONS = ("still", "left", "right", "up", "down", "towards", "away")

# motion -> (the path its draw comes from, whether the path is played backwards). The forward
# path of each axis moves right, down and towards the camera (the digit grows).
MOTION_PATHS = {
    "still": ("still", False),
    "left": ("horizontal", True), "right": ("horizontal", False),
    "up": ("vertical", True), "down": ("vertical", False),
    "towards": ("depth", False), "away": ("depth", True),
}
PATH_CODES = {"still": 0, "horizontal": 1, "vertical": 2, "depth": 3}
SPLIT_CODES = {"train": 0, "val": 1}
SEED = 20250725
PER_CLASS = {"train": 300, "val": 80}
NOISE_STD = 6.0      # grey levels of the canvas noise, drawn anew for every frame


class MovingDigits(Dataset):
    """`per_class` clips of each motion (default 300 train / 80 val), interleaved: index i has
    class i % 7 and draw i // 7, so clip i of "left" and the "right" clip of the same draw are
    indices 7k + 1 and 7k + 2. __getitem__ -> (uint8 frames [T, H, W, 3] through `transform`
    when given, class index)."""

    classes = list(MOTIONS)

    def __init__(self, split: str = "train", num_frames: int = 8, img_size: int = 32,
                 transform: Optional[Callable] = None, per_class: Optional[int] = None):
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if num_frames < 2 or img_size < 16:
            raise ValueError(f"need at least 2 frames of at least 16 pixels, got {num_frames} of {img_size}")
        self.split, self.num_frames, self.img_size, self.transform = split, int(num_frames), int(img_size), transform
        self.per_class = PER_CLASS[split] if per_class is None else int(per_class)
        self.digits = DigitsDataset(split).images            # 8x8 uint8, this split's digits only
        self.targets = [i % len(MOTIONS) for i in range(len(self))]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self):
        return self.per_class * len(MOTIONS)

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} outside 0..{len(self) - 1}")
        frames = self.clip(MOTIONS[i % len(MOTIONS)], i // len(MOTIONS))
        return (self.transform(frames) if self.transform else frames), i % len(MOTIONS)

    def clip(self, motion: str, draw: int) -> np.ndarray:
        """The clip of `motion` from draw number `draw`: uint8 [T, H, W, 3]."""
        path, backwards = MOTION_PATHS[motion]
        rng = np.random.default_rng((SEED, SPLIT_CODES[self.split], PATH_CODES[path], draw))
        frames = render(rng, self.digits, path, self.num_frames, self.img_size)
        return np.ascontiguousarray(frames[::-1]) if backwards else frames


def digit_path(rng: np.random.Generator, path: str, frames: int, n: int):
    """(top, left, size) per frame, int arrays of length `frames`, of a digit on an n x n canvas
    along `path`: "still" (one place), "horizontal" (moving right by 70-100% of the free width),
    "vertical" (down, likewise) or "depth" (growing about 2.5x about a fixed centre)."""
    u = n / 32
    t = np.linspace(0.0, 1.0, frames)
    if path == "depth":
        small, big = rng.uniform(6 * u, 9 * u), rng.uniform(18 * u, 24 * u)
        size = small + (big - small) * t
        cy, cx = rng.uniform(big / 2, n - big / 2, 2)
        return np.round(cy - size / 2).astype(int), np.round(cx - size / 2).astype(int), np.round(size).astype(int)
    s = int(round(rng.uniform(10 * u, 14 * u if path != "still" else 16 * u)))
    free = n - s
    if path == "still":
        top, left = rng.integers(0, free + 1, 2)
        return np.full(frames, top), np.full(frames, left), np.full(frames, s)
    travel = rng.uniform(0.7 * free, free)
    start = rng.uniform(0, free - travel)
    moving = np.round(start + travel * t).astype(int)
    across = np.full(frames, int(rng.integers(0, free + 1)))
    return (across, moving, np.full(frames, s)) if path == "horizontal" else (moving, across, np.full(frames, s))


def render(rng: np.random.Generator, digits: np.ndarray, path: str, frames: int, n: int) -> np.ndarray:
    """uint8 [frames, n, n, 3]: a random digit of `digits` moving along a random `path` (one of
    digit_path's) on a plain canvas with fresh light noise in every frame; a light digit on a dark
    background, colours drawn per clip. (Both polarities made the task two tasks: a from-scratch
    model learnt the dark backgrounds within minutes and stayed at chance on the light ones.)"""
    digit = Image.fromarray(digits[int(rng.integers(len(digits)))])
    bg_range, fg_range = (0, 100), (155, 255)
    background, colour = rng.uniform(*bg_range, 3), rng.uniform(*fg_range, 3)
    tops, lefts, sizes = digit_path(rng, path, frames, n)
    noise = rng.standard_normal((frames, n, n, 3), dtype=np.float32) * NOISE_STD
    video = noise + background.astype(np.float32)
    inks = {}
    for f, (y, x, s) in enumerate(zip(tops, lefts, sizes)):
        if s not in inks:
            inks[s] = np.asarray(digit.resize((s, s), Image.BILINEAR), dtype=np.float32)[..., None] / 255.0
        ink = inks[s][max(0, -y):n - y, max(0, -x):n - x]        # the part inside the canvas
        y, x = max(0, y), max(0, x)
        region = video[f, y:y + ink.shape[0], x:x + ink.shape[1]]
        region += (colour.astype(np.float32) - region) * ink
    return np.clip(video + 0.5, 0, 255).astype(np.uint8)
