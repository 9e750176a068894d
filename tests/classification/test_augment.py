"""Augmentation: every recipe's transforms over many seeded samples, the 0-bit posterize of
Table 2's RandAugment, and the --scale / --ratio flags."""
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data import auto_augment as timm_aa
from torch.utils.data import Dataset

from mambaout.cli import main, recipe_from_args, build_parser
from mambaout.data import SampleFailure, SeededSamples, recipe_transforms
from mambaout.data.transforms import posterize_keep_zero_bits
from mambaout.recipe import Recipe, digits_recipe
from mambaout.analysis.study import cifar_recipe, study_recipe


def _images():
    """RGB photos-like noise in a few shapes: non-square, tiny, elongated, flat, grey-origin."""
    rng = np.random.default_rng(0)
    noise = lambda h, w: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    return [noise(96, 128), noise(5, 7), noise(40, 300), Image.new("RGB", (33, 33), (0, 0, 0)),
            Image.fromarray(rng.integers(0, 256, (50, 64), dtype=np.uint8), "L").convert("RGB")]


class _Cycle(Dataset):
    """n samples cycling over a few images (the transform does the work)."""

    def __init__(self, images, n, transform):
        self.images, self.n, self.transform = images, n, transform

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.transform(self.images[i % len(self.images)]), 0


def _run_seeded(recipe: Recipe, n: int, epochs=(0,)):
    train_tf, eval_tf = recipe_transforms(recipe)
    images = _images()
    samples = SeededSamples(_Cycle(images, n, train_tf), recipe.seed)
    for epoch in epochs:
        for i in range(n):
            item = samples[(i, epoch)]
            assert not isinstance(item, SampleFailure), item.describe()
            assert item[0].shape == (3, recipe.img_size, recipe.img_size)
            assert torch.isfinite(item[0]).all()
    for img in images:
        assert eval_tf(img).shape == (3, recipe.img_size, recipe.img_size)


def test_table2_transform_20000_seeded_samples_no_error():
    """Table 2's training transform (RandAugment rand-m9-mstd0.5-inc1, random erasing, flips,
    RandomResizedCrop) at 64px and at 224px, 20,000 seeded samples: none raises."""
    _run_seeded(replace(Recipe(), img_size=64), 4000, epochs=range(4))
    _run_seeded(Recipe(), 4000)


@pytest.mark.parametrize("name, recipe", [
    ("digits", digits_recipe()),
    ("study-digits", study_recipe("study_conv_d64", None, seed=1)),
    ("study-cifar", cifar_recipe("study_conv_d64")),
    ("table2-odd-crop", replace(Recipe(), img_size=40, scale=(0.01, 0.02), ratio=(0.1, 10.0))),
])
def test_every_recipe_augmentation_many_seeded_samples(name, recipe):
    _run_seeded(recipe, 3000)


def _posterize_op(recipe=Recipe()):
    train_tf, _ = recipe_transforms(recipe)
    ra = next(t for t in train_tf.transforms if isinstance(t, timm_aa.RandAugment))
    return next(op for op in ra.ops if op.name == "PosterizeIncreasing")


def test_zero_bit_posterize_draw_gives_black_image():
    op = _posterize_op()
    assert op.aug_fn is posterize_keep_zero_bits
    img = _images()[0]
    drawn = []
    op.aug_fn = lambda im, bits, **kw: drawn.append(bits) or posterize_keep_zero_bits(im, bits, **kw)
    zero_seeds = []
    for seed in range(3000):
        random.seed(seed)
        drawn.clear()
        out = op(img)
        if drawn == [0]:
            zero_seeds.append(seed)
            assert out.mode == "RGB" and out.size == img.size
            assert np.asarray(out).max() == 0, "a 0-bit posterize must give the black image"
        elif drawn:
            assert drawn[0] >= 1 and np.array_equal(np.asarray(out), np.asarray(ImageOps.posterize(img, drawn[0])))
    # magnitude ~ N(9, 0.5) clipped at 10 -> 0 bits with p ~ 2.3%, applied with p 0.5
    assert 10 <= len(zero_seeds) <= 70, len(zero_seeds)
    # the same 0-bit draws are what timm's own op (unpatched) fails on with this Pillow
    if int(Image.__version__.split(".")[0]) >= 13:
        op.aug_fn = timm_aa.posterize
        random.seed(zero_seeds[0])
        with pytest.raises(ValueError):
            op(img)


def test_other_draws_are_unchanged_from_timm():
    """Same seed -> same tensor as timm's create_transform, except where timm raises (0 bits)."""
    r = replace(Recipe(), img_size=48)
    ours, _ = recipe_transforms(r)
    theirs = create_transform(r.img_size, is_training=True, auto_augment=r.auto_augment, re_prob=r.reprob,
                              re_mode="pixel", re_count=1, interpolation=r.interpolation, hflip=r.hflip,
                              color_jitter=0.4, scale=r.scale, ratio=r.ratio)
    img = _images()[0]
    same = raised = 0
    for seed in range(2500):
        outs = []
        for tf in (ours, theirs):
            random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
            try:
                outs.append(tf(img))
            except ValueError:
                outs.append(None)
        if outs[1] is None:
            raised += 1
            assert outs[0] is not None
        else:
            assert torch.equal(outs[0], outs[1]), seed
            same += 1
    assert same >= 2400, (same, raised)
    # Pillow >= 13 raises on 0 bits (timm's op fails there); older Pillow gives the black image too
    assert (raised >= 1) if int(Image.__version__.split(".")[0]) >= 13 else (raised == 0), raised


def test_posterize_keep_zero_bits_modes():
    for mode in ("RGB", "L"):
        img = Image.new(mode, (9, 4), 200 if mode == "L" else (200, 100, 50))
        assert np.asarray(posterize_keep_zero_bits(img, 0)).max() == 0
        assert posterize_keep_zero_bits(img, 0).mode == mode
        assert np.array_equal(np.asarray(posterize_keep_zero_bits(img, 3)), np.asarray(ImageOps.posterize(img, 3)))
        assert posterize_keep_zero_bits(img, 8) is img


def test_scale_and_ratio_flags(tmp_path, capsys):
    args = build_parser().parse_args(["train", "--data", "x", "--scale", "0.5", "1", "--ratio", "0.5", "2"])
    r = recipe_from_args(args)
    assert r.scale == (0.5, 1.0) and r.ratio == (0.5, 2.0)
    crop = recipe_transforms(r)[0].transforms[0]
    assert crop.scale == (0.5, 1.0) and crop.ratio == (0.5, 2.0)
    assert recipe_from_args(build_parser().parse_args(["train", "--data", "x"])).ratio == pytest.approx((0.75, 4 / 3))
    for bad, needle in ((["--scale", "0", "1"], "--scale"), (["--scale", "0.9", "0.5"], "--scale"),
                        (["--scale", "0.5", "1.5"], "--scale"), (["--ratio", "2", "1"], "--ratio"),
                        (["--ratio", "-1", "1"], "--ratio")):
        code = main(["train", "--output", str(tmp_path / "r"), "--epochs", "1", "-j", "0", *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err
    code = main(["train", "--scale", "0.5"])
    assert code == 2 and "--scale" in capsys.readouterr().err
