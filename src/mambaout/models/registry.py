"""The model names: the variant tables (classification, segmentation, detection) looked up by
name, listed, and turned into constructor arguments and pretrained configs. A leaf of the
models package: it builds nothing (factory.py does) and imports no model module; model folder
and hub names ('local-dir:', 'hf-hub:') are answered from their config.json (hub.py)."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
from typing import List, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..errors import MambaOutError, UnknownModelError
from .detection_variants import DETECTION_VARIANTS
from .hub import is_hub_name, read_config
from .segmentation_variants import SEGMENTATION_VARIANTS
from .variants import VARIANTS, Variant

log = logging.getLogger("mambaout")


def list_models(pattern: Optional[str] = None, pretrained: bool = False) -> List[str]:
    """Image classification model names, optionally filtered by a shell-style pattern
    ('*tiny*'). With pretrained=True, list 'name.tag' for every released weight instead. The
    video models (rows of the same table, clips in) are listed by `list_video_models`."""
    names = []
    for v in VARIANTS.values():
        if v.arch in VIDEO_ARCHS:
            continue
        names += [f"{v.name}.{t}" for t in v.hub_tags] if pretrained else [v.name]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def list_video_models(pattern: Optional[str] = None) -> List[str]:
    """Video classification model names (Table 10: 'videomamba_tiny', 'mambaout_femto_video',
    ...), optionally filtered like list_models."""
    return [n for n, v in VARIANTS.items() if v.arch in VIDEO_ARCHS and (not pattern or fnmatch.fnmatch(n, pattern))]


def is_video(name: str) -> bool:
    """Does the classification name (tag, folder or hub name as get_variant takes them) build
    a video model, whose input is a clip (B, C, T, H, W)? Its clip length is the model's
    `num_frames` (the row's extra['num_frames'] unless overridden). Segmentation and detection
    names answer False; an unknown name raises UnknownModelError."""
    if not is_hub_name(name) and split_name(name)[0] in {**SEGMENTATION_VARIANTS, **DETECTION_VARIANTS}:
        return False
    return get_variant(name).arch in VIDEO_ARCHS


def list_segmentation_models(pattern: Optional[str] = None) -> List[str]:
    """Segmentation model names ('upernet_mambaout_tiny', ...), optionally filtered like list_models."""
    return [n for n in SEGMENTATION_VARIANTS if not pattern or fnmatch.fnmatch(n, pattern)]


def list_detection_models(pattern: Optional[str] = None) -> List[str]:
    """Detection model names ('mask_rcnn_mambaout_tiny', ...), optionally filtered like list_models."""
    return [n for n in DETECTION_VARIANTS if not pattern or fnmatch.fnmatch(n, pattern)]


def split_name(name: str) -> Tuple[str, Optional[str]]:
    """'mambaout_tiny.in1k' -> ('mambaout_tiny', 'in1k'); also accepts 'timm/' / 'hf-hub:' prefixes."""
    for prefix in ("hf-hub:", "hf_hub:", "timm/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    base, _, tag = name.partition(".")
    return base, tag or None


def get_variant(name: str) -> Variant:
    """The variant-table row of a classification model name (a tag after '.' is ignored); for
    a model folder / hub repo ('local-dir:/path', 'hf-hub:org/name') the row of the
    architecture its config.json names."""
    if is_hub_name(name):
        return VARIANTS[read_config(name).variant]
    base, _ = split_name(name)
    if base in SEGMENTATION_VARIANTS:
        raise UnknownModelError(f"'{name}' is a segmentation model, not a row of the variant table "
                                f"(see list_segmentation_models)")
    if base in DETECTION_VARIANTS:
        raise UnknownModelError(f"'{name}' is a detection model, not a row of the variant table "
                                f"(see list_detection_models)")
    if base not in VARIANTS:
        raise unknown_model(name)
    return VARIANTS[base]


def unknown_model(name: str) -> UnknownModelError:
    """One-line error with the closest names of all tables (classification, segmentation, detection)."""
    base, _ = split_name(name)
    close = difflib.get_close_matches(base, list(VARIANTS) + list(SEGMENTATION_VARIANTS) + list(DETECTION_VARIANTS),
                                      n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownModelError(f"unknown model '{name}'{hint} (see `mambaout models`)")


FIRST_CONV = {"mambaout": "stem.conv1", "mambaout_iso": "stem.conv", "isotropic": "patch_embed.proj",
              "vmamba": "patch_embed.proj", "local_vmamba": "patch_embed.0", "efficient_vmamba": "patch_embed.0",
              "vim": "patch_embed.proj", "illama": "patch_embed.proj", "videomamba": "patch_embed.proj",
              "mambaout_video": "stem.conv1"}
CLASSIFIER = {"mambaout": "head.fc", "mambaout_iso": "head.fc", "isotropic": "head", "vmamba": "head",
              "local_vmamba": "classifier.head", "efficient_vmamba": "classifier.head", "vim": "head", "illama": "head",
              "videomamba": "head", "mambaout_video": "head.fc"}
# Families whose input is a clip (B, C, T, H, W): Table 10's video models.
VIDEO_ARCHS = ("videomamba", "mambaout_video")
# Table 10's test protocol, whose MACs the paper prints: 2 clips x 3 spatial crops = 6 views a video.
VIDEO_TEST_CLIPS, VIDEO_TEST_CROPS = 2, 3
# Families whose constructor takes one depth / width and the input size (a position embedding).
ISOTROPIC = ("isotropic", "vim", "illama")
# Families with per-stage depths / dims and nothing else from the MambaOut row.
HIERARCHICAL = ("vmamba", "local_vmamba", "efficient_vmamba")


def pretrained_cfg(name: str) -> dict:
    """Input size, normalisation and crop of the (default or named) released weights.

    Every key is a field of timm's PretrainedCfg (timm/models/_pretrained.py), so
    `PretrainedCfg(**cfg)` holds it, as timm's own models' cfgs; where the official
    release lives (the Variant row's official_url) is timm's `origin_url`. For a model folder /
    hub repo name: its config.json's cfg (label names included) on its variant's."""
    if is_hub_name(name):
        hub = read_config(name)
        return hub.model_cfg(pretrained_cfg(hub.variant))
    v = get_variant(name)
    _, tag = split_name(name)
    if tag is None:
        tag = v.hub_tags[0] if v.hub_tags else None
    elif tag not in v.hub_tags:
        raise UnknownModelError(f"no pretrained tag '{tag}' for {v.name}; available: "
                                + (", ".join(v.hub_tags) or "none"))
    size = v.input_size
    test_size = 288 if v.arch == "mambaout" else size
    cfg = dict(architecture=v.name, tag=tag, hf_hub_id=f"timm/{v.name}.{tag}" if tag else None,
               origin_url=v.official_url, num_classes=v.num_classes, input_size=(3, size, size),
               test_input_size=(3, test_size, test_size), pool_size=(size // 32, size // 32),
               crop_pct=1.0, crop_mode="center",
               interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               first_conv=FIRST_CONV[v.arch], classifier=CLASSIFIER[v.arch],
               license="apache-2.0")
    cfg.update(v.tag_cfgs.get(tag, {}))
    return cfg


def model_kwargs(v: Variant) -> dict:
    """Constructor arguments of a variant's model class."""
    if v.arch == "mambaout":
        return dict(depths=v.depths, dims=v.dims, expansion_ratio=v.expansion_ratio,
                    kernel_size=v.kernel_size, conv_ratio=v.conv_ratio, ls_init_value=v.ls_init_value,
                    stem_mid_norm=v.stem_mid_norm, downsample=v.downsample, head=v.head, act=v.act,
                    stage_mixers=v.stage_mixers)
    if v.arch == "mambaout_video":
        return dict(depths=v.depths, dims=v.dims, expansion_ratio=v.expansion_ratio,
                    kernel_size=v.kernel_size, conv_ratio=v.conv_ratio, ls_init_value=v.ls_init_value,
                    stem_mid_norm=v.stem_mid_norm, downsample=v.downsample, head=v.head, act=v.act, **v.extra)
    if v.arch == "mambaout_iso":
        return dict(depth=v.depths[0], dim=v.dims[0], expansion_ratio=v.expansion_ratio,
                    kernel_size=v.kernel_size, **v.extra)
    if v.arch in HIERARCHICAL:
        return dict(depths=v.depths, dims=v.dims, **v.extra)
    return dict(img_size=v.input_size, depth=v.depths[0], dim=v.dims[0], **v.extra)


def check_options(cls, given, what: str, exclude=()) -> None:
    """One line (MambaOutError) for options `cls`'s constructor does not take, naming the ones
    it does (read from its signature, not from its local variables)."""
    params = inspect.signature(cls.__init__).parameters.values()
    valid = sorted(p.name for p in params if p.name != "self" and p.name not in exclude
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise MambaOutError(f"unknown {what} option(s): {', '.join(unknown)}; valid: {', '.join(valid)}")
