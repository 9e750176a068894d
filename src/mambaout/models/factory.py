"""create_model: any model of the tables by name (classification, segmentation, detection)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

from timm.models import PretrainedCfg

from ..errors import MambaOutError
from .detection_variants import DETECTION_VARIANTS
from .efficient_vmamba import EfficientVMamba
from .illama import ILLaMA
from .isotropic import IsotropicMambaOut, IsotropicNet
from .local_vmamba import LocalVMamba
from .mambaout import MambaOut
from .mask_rcnn import create_mask_rcnn
from .registry import check_options, get_variant, model_kwargs, pretrained_cfg, split_name
from .segmentation_variants import SEGMENTATION_VARIANTS
from .upernet import create_upernet
from .variants import Variant
from .vim import Vim
from .vmamba import VMamba
from .weights import (HUB_FILE, extract_state_dict, fetch_pretrained, fit_state_dict, hub_file, load_checkpoint,
                      read_checkpoint, url_file)

log = logging.getLogger("mambaout")


def model_class(v: Variant):
    if v.arch == "mambaout":
        return MambaOut
    return {"mambaout_iso": IsotropicMambaOut, "isotropic": IsotropicNet, "vmamba": VMamba,
            "local_vmamba": LocalVMamba, "efficient_vmamba": EfficientVMamba, "vim": Vim, "illama": ILLaMA}[v.arch]


def create_model(name: str, pretrained: bool = False, num_classes: Optional[int] = None,
                 in_chans: int = 3, drop_path_rate: Optional[float] = None,
                 checkpoint_path=None, img_size: Optional[int] = None,
                 pretrained_cfg=None, pretrained_cfg_overlay: Optional[dict] = None, cache_dir=None,
                 scriptable: Optional[bool] = None, exportable: Optional[bool] = None,
                 no_jit: Optional[bool] = None, **overrides):
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


def _pretrained_state_dict(v: Variant, cfg: dict, cache_dir):
    """(state dict, description) of the weights the cfg points at, in timm's order of sources:
    an in-memory state_dict, a local file, the hub (hf_hub_id), a url."""
    if cfg.get("state_dict") is not None:
        return extract_state_dict(cfg["state_dict"]), f"{v.name} pretrained_cfg state_dict"
    tag, hub_id = cfg.get("tag"), cfg.get("hf_hub_id")
    if cfg.get("file"):
        path = Path(cfg["file"]).expanduser()
    elif hub_id and not cfg.get("hf_hub_filename") and hub_id == f"timm/{v.name}.{tag}":
        path = fetch_pretrained(v.name, tag, cache_dir)   # also looks in our local weights folder
    elif hub_id:
        path = hub_file(hub_id, cfg.get("hf_hub_filename") or HUB_FILE, cache_dir)
    elif cfg.get("url"):
        path = url_file(cfg["url"], cache_dir)
    else:
        raise MambaOutError(f"{v.name} has no released weights")
    return extract_state_dict(read_checkpoint(path)), f"{path}"
