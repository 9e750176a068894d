"""create_model / list_models over the variant table, and the segmentation and detection models built on its rows."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
from typing import List, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..errors import MambaOutError, UnknownModelError
from .mambaout import MambaOut
from .detection_variants import DETECTION_VARIANTS
from .segmentation_variants import SEGMENTATION_VARIANTS
from .variants import VARIANTS, Variant
from .weights import fetch_pretrained, fit_state_dict, load_checkpoint, read_checkpoint, extract_state_dict

log = logging.getLogger("mambaout")


def list_models(pattern: Optional[str] = None, pretrained: bool = False) -> List[str]:
    """Model names, optionally filtered by a shell-style pattern ('*tiny*'). With
    pretrained=True, list 'name.tag' for every released weight instead."""
    names = []
    for v in VARIANTS.values():
        names += [f"{v.name}.{t}" for t in v.hub_tags] if pretrained else [v.name]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


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
    """The variant-table row of a classification model name (a tag after '.' is ignored)."""
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


FIRST_CONV = {"mambaout": "stem.conv1", "mambaout_iso": "stem.conv", "isotropic": "patch_embed.proj"}


def pretrained_cfg(name: str) -> dict:
    """Input size, normalisation and crop of the (default or named) released weights."""
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
               official_url=v.official_url, num_classes=v.num_classes, input_size=(3, size, size),
               test_input_size=(3, test_size, test_size), pool_size=(size // 32, size // 32),
               crop_pct=1.0, crop_mode="center",
               interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               first_conv=FIRST_CONV[v.arch], classifier="head" if v.arch == "isotropic" else "head.fc",
               license="apache-2.0")
    cfg.update(v.tag_cfgs.get(tag, {}))
    return cfg


def model_class(v: Variant):
    if v.arch == "mambaout":
        return MambaOut
    from .isotropic import IsotropicMambaOut, IsotropicNet
    return {"mambaout_iso": IsotropicMambaOut, "isotropic": IsotropicNet}[v.arch]


def model_kwargs(v: Variant) -> dict:
    """Constructor arguments of a variant's model class."""
    if v.arch == "mambaout":
        return dict(depths=v.depths, dims=v.dims, expansion_ratio=v.expansion_ratio,
                    kernel_size=v.kernel_size, conv_ratio=v.conv_ratio, ls_init_value=v.ls_init_value,
                    stem_mid_norm=v.stem_mid_norm, downsample=v.downsample, head=v.head, act=v.act,
                    stage_mixers=v.stage_mixers)
    if v.arch == "mambaout_iso":
        return dict(depth=v.depths[0], dim=v.dims[0], expansion_ratio=v.expansion_ratio,
                    kernel_size=v.kernel_size, **v.extra)
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


def create_model(name: str, pretrained: bool = False, num_classes: Optional[int] = None,
                 in_chans: int = 3, drop_path_rate: Optional[float] = None,
                 checkpoint_path=None, img_size: Optional[int] = None, **overrides):
    """Build a model of the variant table by name ('mambaout_tiny' or 'mambaout_tiny.in1k').

    pretrained: load the released timm hub weights (cached by huggingface_hub).
    num_classes: classifier size (default: the variant's, 1000 for ImageNet models and 10 for
        the CIFAR study models, or the tag's own, e.g. 11821 for in12k);
        with weights of another class count the backbone loads and the classifier is
        re-initialised.
    drop_path_rate: stochastic depth; None means 0 (use the variant's training value
        via `mambaout.models.VARIANTS[name].drop_path` when training).
    checkpoint_path: a local checkpoint (timm or official layout, .pth/.safetensors).
    img_size: input size the model is built for; only the ViT-like models with a position
        embedding need it (default: the variant's input size), the others take any size.
    overrides: any MambaOut constructor argument (kernel_size, conv_ratio, drop_rate, ...).

    Segmentation names ('upernet_mambaout_tiny', see list_segmentation_models) build a
    UperNetSegmentor (models/upernet.py, create_upernet): num_classes defaults to 150,
    pretrained loads the backbone's ImageNet weights, checkpoint_path is a classification
    checkpoint for the backbone or a whole segmentation state dict, and overrides go to the
    backbone.

    Detection names ('mask_rcnn_mambaout_tiny', see list_detection_models) build a torchvision
    MaskRCNN on the backbone (models/mask_rcnn.py, create_mask_rcnn): num_classes counts the
    object categories (default 80, background excluded), pretrained / checkpoint_path as for
    segmentation (a whole detection state dict instead of a segmentation one), overrides go to
    create_mask_rcnn (min_size, rois_per_image, MaskRCNN options, backbone options).
    """
    if name in DETECTION_VARIANTS:
        from .mask_rcnn import create_mask_rcnn   # mask_rcnn -> backbone imports this module
        if in_chans != 3:
            overrides["in_chans"] = in_chans
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return create_mask_rcnn(name, pretrained=pretrained, checkpoint_path=checkpoint_path,
                                drop_path_rate=drop_path_rate, **overrides)
    if name in SEGMENTATION_VARIANTS:
        from .upernet import create_upernet   # upernet -> backbone imports this module
        if in_chans != 3:
            overrides["in_chans"] = in_chans
        return create_upernet(name, num_classes=num_classes, pretrained=pretrained,
                              checkpoint_path=checkpoint_path, drop_path_rate=drop_path_rate, **overrides)
    v = get_variant(name)
    cfg = pretrained_cfg(name)
    if num_classes is None:
        num_classes = cfg["num_classes"]
    if not isinstance(num_classes, int) or num_classes < 0:
        raise MambaOutError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    kwargs = model_kwargs(v)
    cls = model_class(v)
    check_options(cls, overrides, "model")
    kwargs.update(overrides)
    if img_size is not None and v.arch == "isotropic":
        kwargs["img_size"] = img_size
    try:
        model = cls(in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate or 0.0, **kwargs)
    except ValueError as e:  # a configuration the architecture cannot take (sizes, options)
        raise MambaOutError(f"{v.name}: {e}") from None
    model.pretrained_cfg = dict(cfg, num_classes=num_classes)
    model.variant = v.name
    if pretrained and checkpoint_path is None:
        if cfg["tag"] is None:
            raise MambaOutError(f"{v.name} has no released weights")
        path = fetch_pretrained(v.name, cfg["tag"])
        fit_state_dict(model, extract_state_dict(read_checkpoint(path)), source=f"{v.name}.{cfg['tag']} weights")
        log.info("loaded pretrained weights %s", path)
    elif checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model
