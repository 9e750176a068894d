"""create_model: any model of the tables by name (classification, segmentation, detection)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch.nn as nn
from timm.models import PretrainedCfg
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import FeatureGetterNet

from ..errors import CheckpointError, MambaOutError
from .backbone import BACKBONES, create_backbone
from .blocks import stage_indices
from .detection_variants import DETECTION_VARIANTS
from .efficient_vmamba import EfficientVMamba
from . import hub
from .illama import ILLaMA
from .isotropic import IsotropicMambaOut, IsotropicNet
from .local_vmamba import LocalVMamba
from .mambaout import MambaOut
from .mambaout_video import MambaOutVideo
from .mask_rcnn import create_mask_rcnn
from .registry import check_options, get_variant, model_kwargs, pretrained_cfg, split_name
from .segmentation_variants import SEGMENTATION_VARIANTS
from .upernet import create_upernet
from .variants import Variant
from .videomamba import VideoMamba
from .vim import Vim
from .vmamba import VMamba
from .weights import (HUB_FILE, extract_state_dict, fetch_pretrained, fit_state_dict, hub_file, load_checkpoint,
                      read_checkpoint, url_file)

log = logging.getLogger("mambaout")


def model_class(v: Variant):
    if v.arch == "mambaout":
        return MambaOut
    return {"mambaout_iso": IsotropicMambaOut, "isotropic": IsotropicNet, "vmamba": VMamba,
            "local_vmamba": LocalVMamba, "efficient_vmamba": EfficientVMamba, "vim": Vim, "illama": ILLaMA,
            "videomamba": VideoMamba, "mambaout_video": MambaOutVideo}[v.arch]


def create_model(name: str, pretrained: Optional[bool] = None, num_classes: Optional[int] = None,
                 in_chans: int = 3, drop_path_rate: Optional[float] = None,
                 checkpoint_path=None, img_size: Optional[int] = None,
                 pretrained_cfg=None, pretrained_cfg_overlay: Optional[dict] = None, cache_dir=None,
                 scriptable: Optional[bool] = None, exportable: Optional[bool] = None,
                 no_jit: Optional[bool] = None, **overrides):
    """Build a model of the variant table by name ('mambaout_tiny' or 'mambaout_tiny.in1k'),
    or the model of a folder / hub repo in timm's format ('local-dir:/path', 'hf-hub:org/name':
    config.json + model.safetensors, as `mambaout.save_pretrained` and timm write them).

    pretrained: load the released timm hub weights (cached by huggingface_hub). Default (None):
        no for a table name, yes for a folder / hub name (its weights are what it is; timm's
        create_model needs pretrained=True for them). pretrained=False with such a name builds
        its architecture (config.json's, with its model_args) untrained.
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

    timm's factory keywords (timm.create_model / build_model_with_cfg), classification models:
    pretrained_cfg: a tag ('in1k', as in 'name.tag'; it wins over a tag in the name), or a
        dict / timm PretrainedCfg that replaces the registry's cfg (timm's defaults fill what
        it leaves out); its weight source (state_dict, file, hf_hub_id [+ hf_hub_filename],
        url) is what pretrained=True loads.
    pretrained_cfg_overlay: keys that override the cfg (e.g. {'file': 'w.safetensors'},
        {'crop_pct': 0.9}); every key must be a PretrainedCfg field.
    cache_dir: where hub (huggingface_hub) and url (torch.hub) weights are cached and looked
        up, instead of their default caches.
    scriptable, exportable, no_jit: accepted and ignored; our models always script, export
        and use no jit-scripted layers.

    Folder / hub names: the architecture config.json names (ours, or the timm name
    mambaout.register_timm() gives it, 'mo_<variant>'), its num_classes (another num_classes re-initialises the classifier, as
    for released weights), model_args and pretrained_cfg (the evaluation transform and
    label_names, in model.pretrained_cfg); model.safetensors loads strictly (hub files through
    huggingface_hub's cache, or `cache_dir`). pretrained_cfg cannot be given (config.json is it),
    pretrained_cfg_overlay can.

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
    if hub.is_hub_name(name):
        return _create_from_hub(name, pretrained, num_classes, in_chans, drop_path_rate, checkpoint_path, img_size,
                                pretrained_cfg, pretrained_cfg_overlay, cache_dir, overrides)
    if overrides.pop("features_only", False):     # timm's feature extractor (features_model, below)
        return features_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                              drop_path_rate=drop_path_rate, checkpoint_path=checkpoint_path, img_size=img_size,
                              pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay,
                              cache_dir=cache_dir, **overrides)
    if (name in DETECTION_VARIANTS or name in SEGMENTATION_VARIANTS) and (
            pretrained_cfg is not None or pretrained_cfg_overlay or cache_dir is not None):
        raise MambaOutError(f"{name}: pretrained_cfg, pretrained_cfg_overlay and cache_dir apply to "
                            f"classification models only")
    if name in DETECTION_VARIANTS:
        if in_chans != 3:
            overrides["in_chans"] = in_chans
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return create_mask_rcnn(name, pretrained=pretrained, checkpoint_path=checkpoint_path,
                                drop_path_rate=drop_path_rate, **overrides)
    if name in SEGMENTATION_VARIANTS:
        if in_chans != 3:
            overrides["in_chans"] = in_chans
        return create_upernet(name, num_classes=num_classes, pretrained=pretrained,
                              checkpoint_path=checkpoint_path, drop_path_rate=drop_path_rate, **overrides)
    v = get_variant(name)
    cfg = _resolve_cfg(name, v, pretrained_cfg, pretrained_cfg_overlay)
    if num_classes is None:
        num_classes = cfg.get("num_classes", v.num_classes)
    if not isinstance(num_classes, int) or num_classes < 0:
        raise MambaOutError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    kwargs = model_kwargs(v)
    cls = model_class(v)
    check_options(cls, overrides, "model")
    kwargs.update(overrides)
    if img_size is not None and "img_size" in kwargs:
        kwargs["img_size"] = img_size
    try:
        model = cls(in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate or 0.0, **kwargs)
    except ValueError as e:  # a configuration the architecture cannot take (sizes, options)
        raise MambaOutError(f"{v.name}: {e}") from None
    model.pretrained_cfg = dict(cfg, num_classes=num_classes)
    model.variant = v.name
    # What rebuilds this model beyond the variant (timm's factory records the same attribute):
    # save_pretrained writes it as config.json's model_args.
    model._model_args = dict(overrides)
    if in_chans != 3:
        model._model_args["in_chans"] = in_chans
    if img_size is not None and "img_size" in kwargs:
        model._model_args["img_size"] = kwargs["img_size"]
    if pretrained and checkpoint_path is None:
        sd, source = _pretrained_state_dict(v, cfg, cache_dir)
        fit_state_dict(model, sd, source=source)
        log.info("loaded pretrained weights %s", source)
    elif checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model


_CFG_FIELDS = tuple(f.name for f in dataclasses.fields(PretrainedCfg))


def _check_cfg(cfg: dict, what: str) -> None:
    """One line (MambaOutError) for keys timm's PretrainedCfg does not have."""
    unknown = sorted(set(cfg) - set(_CFG_FIELDS))
    if unknown:
        raise MambaOutError(f"unknown {what} key(s): {', '.join(unknown)} (timm PretrainedCfg fields: "
                            f"{', '.join(_CFG_FIELDS)})")


def _resolve_cfg(name: str, v: Variant, given, overlay) -> dict:
    """The model's pretrained_cfg from timm's `pretrained_cfg` / `pretrained_cfg_overlay`
    (timm/models/_builder.py resolve_pretrained_cfg): None = the registry's for `name`, a
    string = the registry's for that tag, a dict / PretrainedCfg = itself on timm's defaults."""
    if given is None:
        cfg = pretrained_cfg(name)
    elif isinstance(given, str):
        cfg = pretrained_cfg(f"{split_name(name)[0]}.{given}")
    elif isinstance(given, (dict, PretrainedCfg)):
        if isinstance(given, dict):
            _check_cfg(given, "pretrained_cfg")
            given = PretrainedCfg(**given)
        cfg = given.to_dict()
        cfg.setdefault("architecture", v.name)
    else:
        raise MambaOutError(f"pretrained_cfg must be a tag, a dict or a timm PretrainedCfg, "
                            f"got {type(given).__name__}")
    if overlay:
        if not isinstance(overlay, dict):
            raise MambaOutError(f"pretrained_cfg_overlay must be a dict, got {type(overlay).__name__}")
        _check_cfg(overlay, "pretrained_cfg_overlay")
        cfg = dict(cfg, **overlay)
    return cfg


def _create_from_hub(name: str, pretrained: Optional[bool], num_classes, in_chans: int, drop_path_rate, checkpoint_path,
                     img_size, given_cfg, overlay, cache_dir, overrides: dict):
    """The model of a 'local-dir:' / 'hf-hub:' name (see create_model): its config.json's
    architecture, class count, model_args and pretrained_cfg, and (unless pretrained=False or a
    checkpoint_path replaces them) its model.safetensors, loaded strictly."""
    if given_cfg is not None:
        raise MambaOutError(f"{name}: pretrained_cfg cannot be given with a model folder or hub name (its "
                            f"config.json is the cfg); pretrained_cfg_overlay can change keys of it")
    folder = hub.read_config(name, cache_dir)
    v = get_variant(folder.variant)
    args = folder.constructor_args()
    args.update(overrides)
    if num_classes is None:
        num_classes = folder.num_classes
    cfg = folder.model_cfg(pretrained_cfg(v.name))
    if num_classes != folder.num_classes:      # a new classifier: the folder's class names do not apply
        cfg.pop("label_names", None)
        cfg.pop("label_descriptions", None)
    model = create_model(v.name, pretrained=False, num_classes=num_classes,
                         in_chans=folder.in_chans() if in_chans == 3 else in_chans, drop_path_rate=drop_path_rate,
                         img_size=img_size if img_size is not None else folder.img_size(), pretrained_cfg=cfg,
                         pretrained_cfg_overlay=overlay, **args)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    elif pretrained is None or pretrained:
        weights = folder.weights_file()
        sd = extract_state_dict(read_checkpoint(weights))
        if num_classes == folder.num_classes:     # strict: config.json and the weights must agree
            own = model.state_dict()
            bad = next((k for k, t in sd.items() if k in own and own[k].shape != t.shape), None)
            if bad is not None:
                raise CheckpointError(f"{weights} does not fit the model its config.json describes "
                                      f"({folder.architecture}): '{bad}' has shape {tuple(sd[bad].shape)} in the weights but "
                                      f"{tuple(own[bad].shape)} in the model")
        fit_state_dict(model, sd, source=str(weights))
        log.info("loaded %s (%s, %d classes)", name, v.name, folder.num_classes)
    return model


def _pretrained_state_dict(v: Variant, cfg: dict, cache_dir):
    """(state dict, description) of the weights the cfg points at, in timm's order of sources:
    an in-memory state_dict, a local file, the hub (hf_hub_id), a url."""
    if cfg.get("state_dict") is not None:
        return extract_state_dict(cfg["state_dict"]), f"{v.name} pretrained_cfg state_dict"
    tag, hub_id = cfg.get("tag"), cfg.get("hf_hub_id")
    if cfg.get("file"):
        path = Path(cfg["file"]).expanduser()
        if cfg.get("source") == "local-dir" or path.is_dir():
            path = path / HUB_FILE      # timm's 'local-dir:' cfg names the folder (timm/models/_builder.py)
    elif hub_id and not cfg.get("hf_hub_filename") and hub_id == f"timm/{v.name}.{tag}":
        path = fetch_pretrained(v.name, tag, cache_dir)   # also looks in our local weights folder
    elif hub_id:
        path = hub_file(hub_id, cfg.get("hf_hub_filename") or HUB_FILE, cache_dir)
    elif cfg.get("url"):
        path = url_file(cfg["url"], cache_dir)
    else:
        raise MambaOutError(f"{v.name} has no released weights")
    return extract_state_dict(read_checkpoint(path)), f"{path}"


# ---- features_only: timm's feature extractors --------------------------------------------------

# Options of a classifier's head: meaningless without one. timm's feature extractors accept and
# drop them (its builder passes num_classes from the cfg), so do we.
_FEATURES_DROP = ("num_classes", "global_pool", "drop_rate")
_FEATURE_CLS = (None, "list", "getter")      # timm's feature_cls values that return a list of maps


def features_model(name: str, out_indices: Union[None, int, Sequence[int]] = None, output_fmt: str = "NCHW",
                   output_stride: Optional[int] = None, pretrained: bool = False, pretrained_cfg=None,
                   pretrained_cfg_overlay: Optional[dict] = None, cache_dir=None, checkpoint_path=None,
                   feature_cls: Optional[str] = None, **kwargs) -> nn.Module:
    """`timm.create_model(name, features_only=True, ...)` for our variants: a module whose
    forward returns a list of maps and whose `feature_info` is timm's FeatureInfo.

    out_indices: stage (block, for isotropic models) indices, negative allowed, or an int n =
        the last n; None = timm's default: (0, 1, 2, 3) for 4-stage models, the last 3 blocks
        for isotropic ones. Maps come in model order.
    output_fmt: "NCHW" (default) or "NHWC" (4-stage models, MambaOut-S iso), "NLC" (tokens:
        ViT-like, Vim, iLLaMA), as timm's feature extractors.
    output_stride: None or the native stride (32 for 4-stage models, the patch size for
        isotropic ones); our families have no dilated stages.
    pretrained / pretrained_cfg / pretrained_cfg_overlay / cache_dir: as create_model (timm's
        factory keywords); the classifier's weights load into the trunk, the head is dropped.
    checkpoint_path: a classification checkpoint create_backbone / create_model reads.
    feature_cls: timm's option; only the list-returning ones (None, 'list', 'getter').
    kwargs: the model's constructor options (drop_path_rate, in_chans, depths, ...); head
        options (num_classes, global_pool, drop_rate) are accepted and dropped.
    """
    v = get_variant(name)
    kwargs = {k: val for k, val in kwargs.items() if val is not None}   # as timm's create_model: None = default
    if feature_cls not in _FEATURE_CLS:
        raise MambaOutError(f"feature_cls={feature_cls!r} is not supported for {v.name}: our feature "
                            f"extractors return a list of maps (feature_cls None, 'list' or 'getter')")
    for key in _FEATURES_DROP:
        kwargs.pop(key, None)
    cfg = _resolve_cfg(name, v, pretrained_cfg, pretrained_cfg_overlay)
    if v.arch in BACKBONES:
        module = _hierarchical(name, v, out_indices, output_fmt, output_stride, pretrained, cfg, cache_dir,
                               checkpoint_path, kwargs)
    else:
        module = _isotropic(name, v, out_indices, output_fmt, output_stride, pretrained, cfg, cache_dir,
                            checkpoint_path, kwargs)
    module.pretrained_cfg = pretrained_cfg_for_features(cfg)    # timm's: the cfg less the classifier's keys
    module.default_cfg = module.pretrained_cfg
    module.variant = v.name
    return module


def _hierarchical(name, v, out_indices, output_fmt, output_stride, pretrained, cfg, cache_dir, checkpoint_path,
                  kwargs) -> nn.Module:
    n = len(v.depths)
    if output_stride not in (None, 32):
        raise MambaOutError(f"{v.name}: output_stride={output_stride} is not supported (no dilated stages; "
                            f"the last stage is at stride 32)")
    if output_fmt not in ("NCHW", "NHWC"):
        raise MambaOutError(f"{v.name}: output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
    kwargs.pop("img_size", None)          # these families take any input size (as create_model does)
    indices = tuple(range(n)) if out_indices is None else _indices(v, n, out_indices, "stages")
    backbone = create_backbone(name, out_indices=indices, checkpoint_path=checkpoint_path, **kwargs)
    if pretrained and checkpoint_path is None:
        sd, source = _pretrained_state_dict(v, cfg, cache_dir)
        backbone.load_classification_state_dict(sd, source=source)
        log.info("loaded pretrained backbone weights %s", source)
    backbone.output_fmt = output_fmt
    return backbone


def _isotropic(name, v, out_indices, output_fmt, output_stride, pretrained, cfg, cache_dir, checkpoint_path,
               kwargs) -> nn.Module:
    model = create_model(name, pretrained=pretrained, pretrained_cfg=cfg, cache_dir=cache_dir,
                         checkpoint_path=checkpoint_path, **kwargs)
    info = _isotropic_info(model)
    stride = info[0]["reduction"]
    if output_stride not in (None, stride):
        raise MambaOutError(f"{v.name}: output_stride={output_stride} is not supported (an isotropic model's "
                            f"maps are all at its patch stride, {stride})")
    formats = ("NCHW", "NHWC") if v.arch == "mambaout_iso" else ("NCHW", "NLC")
    if output_fmt not in formats:
        raise MambaOutError(f"{v.name}: output_fmt must be one of {', '.join(formats)}, got {output_fmt!r}")
    # timm's ViT default: the last three blocks (timm/models/vision_transformer.py).
    indices = list(range(len(info) - 3, len(info))) if out_indices is None else \
        list(_indices(v, len(info), out_indices, "blocks"))
    model.reset_classifier(0)
    model.feature_info = info
    return FeatureGetterNet(model, out_indices=indices, output_fmt=output_fmt, norm=False, prune=True)


def _isotropic_info(model: nn.Module) -> List[dict]:
    """The model's per-block feature_info; derived (channels, patch stride, `blocks.i`) for the
    isotropic classes that do not carry one."""
    if getattr(model, "feature_info", None):
        return [dict(f) for f in model.feature_info]
    patch = getattr(model, "patch_size", None) or model.stem.conv.stride[0]
    return [dict(num_chs=model.num_features, reduction=patch, module=f"blocks.{i}") for i in range(len(model.blocks))]


def _indices(v, n: int, out_indices, what: str) -> tuple:
    """timm's out_indices (a list of indices, negative allowed, or an int n = the last n) as sorted
    non-negative indices, or one line naming the valid range."""
    try:
        if isinstance(out_indices, bool) or not isinstance(out_indices, int) and not all(
                isinstance(i, int) and not isinstance(i, bool) for i in out_indices):
            raise TypeError
        take = stage_indices(n, out_indices)
    except (TypeError, ValueError):
        raise MambaOutError(f"{v.name}: out_indices must be {what} indices in -{n}..{n - 1} or a count 1..{n}, "
                            f"got {out_indices!r}") from None
    if not take:
        raise MambaOutError(f"{v.name}: out_indices is empty")
    return tuple(sorted(set(take)))
