"""create_model: any model of the tables by name (classification, segmentation, detection)."""
from __future__ import annotations

import logging
from typing import Optional

from ..errors import MambaOutError
from .detection_variants import DETECTION_VARIANTS
from .isotropic import IsotropicMambaOut, IsotropicNet
from .mambaout import MambaOut
from .mask_rcnn import create_mask_rcnn
from .registry import check_options, get_variant, model_kwargs, pretrained_cfg
from .segmentation_variants import SEGMENTATION_VARIANTS
from .upernet import create_upernet
from .variants import Variant
from .vmamba import VMamba
from .weights import extract_state_dict, fetch_pretrained, fit_state_dict, load_checkpoint, read_checkpoint

log = logging.getLogger("mambaout")


def model_class(v: Variant):
    if v.arch == "mambaout":
        return MambaOut
    return {"mambaout_iso": IsotropicMambaOut, "isotropic": IsotropicNet, "vmamba": VMamba}[v.arch]


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
