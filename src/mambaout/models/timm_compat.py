"""mambaout's models inside timm: `features_only` with timm's semantics, and timm's registry.

Code written for timm (segmentation_models_pytorch's `tu-` encoders, detection codebases,
transformers' TimmBackbone) builds a backbone with
`timm.create_model(name, features_only=True, out_indices=..., output_stride=...)` and reads
the module's `feature_info` (a timm FeatureInfo: channels(), reduction(), module_name()).
This module gives our families that interface.

features_model(name, ...)
    4-stage families (mambaout's hierarchical rows, vmamba, local_vmamba, efficient_vmamba):
    the very module `create_backbone` builds (MambaOutBackbone / VMambaBackbone ...), so the
    maps are those of our UperNet / Mask R-CNN backbones, with timm's FeatureInfo. Our
    choice, and its one difference from timm's own `mambaout_*` feature extractor: each output
    passes the LayerNorm that create_backbone adds per output (`out_norms`, what the authors
    and VMamba use for dense heads; weight 1 / bias 0 until trained, i.e. a per-position
    standardisation). timm's FeatureListNet returns the raw stage outputs; those are
    `forward_intermediates` of the classifier, or timm's own `mambaout_*` names.
    Isotropic families (vit_*, study_*, mambaout_s_iso, vim, illama): timm's FeatureGetterNet
    over the classifier's `forward_intermediates` (raw block outputs as NCHW token grids),
    which is what timm's ViT gives for features_only (timm/models/vision_transformer.py:
    feature_cfg feature_cls='getter', default out_indices=3, i.e. the last three blocks).
    No family has dilated stages: output_stride other than the native one is refused.

register_timm()
    Registers every row of our variant table in timm's registry as "mo_<name>"
    (TIMM_PREFIX), e.g. "mo_vmamba_tiny", "mo_mambaout_femto", with our pretrained cfgs, so
    `timm.create_model("mo_vmamba_tiny", features_only=True)` and smp's
    `encoder_name="tu-mo_vmamba_tiny"` build our models. Not done on import: an import that
    adds 42 names to another library's global registry would surprise timm users; call it
    once (it is idempotent). The prefix: timm's names may not hold ':' / '/' (model sources,
    timm/models/_factory.py parse_model_name) nor '.' (the pretrained tag), so a namespace
    must be a plain prefix; "mo_" starts no timm model name. timm's own MambaOut names
    (`mambaout_tiny`, ...) stay timm's; `mo_mambaout_tiny` is ours (the same state-dict
    layout, so the same weights and logits).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, is_model, model_entrypoint, register_model

from .factory import create_model, features_model
from .registry import pretrained_cfg, split_name
from .variants import VARIANTS

log = logging.getLogger("mambaout")

TIMM_PREFIX = "mo_"
# timm's registry reads a module's `default_cfgs` when register_model runs (timm/models/_registry.py),
# and appends each registered name to the module's __all__: both are filled by register_timm.
default_cfgs: Dict[str, object] = {}
__all__ = ["TIMM_PREFIX", "features_model", "register_timm", "timm_name", "variant_of"]


def timm_name(name: str) -> str:
    """The name under which register_timm puts a variant in timm's registry ('vmamba_tiny' ->
    'mo_vmamba_tiny'; a tag stays: 'mambaout_tiny.in1k' -> 'mo_mambaout_tiny.in1k')."""
    return TIMM_PREFIX + name


# ---- timm's registry ------------------------------------------------------------------------------

def _entrypoint(variant: str, registered: str):
    """timm's model entrypoint for one variant: `fn(pretrained=False, **kwargs)`, named as registered
    (register_model reads fn.__name__). timm's factory passes its keywords through
    (timm/models/_factory.py create_model): pretrained_cfg (None, a tag from 'name.tag', a dict or
    PretrainedCfg), pretrained_cfg_overlay, cache_dir, and the model's kwargs (features_only,
    out_indices, output_stride, feature_cls, in_chans, num_classes, drop_path_rate, ...; device and
    dtype, which timm's own models take; pretrained_model_args, the source folder's arguments)."""
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        return _build(variant, registered, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = registered
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"mambaout's {variant} (mambaout.create_model('{variant}')), registered in timm by register_timm."
    entrypoint.mambaout_variant = variant
    return entrypoint


def _build(variant: str, registered: str, pretrained: bool, features_only: bool = False,
           pretrained_model_args: Optional[dict] = None, device=None, dtype=None, **kwargs) -> nn.Module:
    place = torch.device(device) if device is not None else contextlib.nullcontext()
    with place:
        if features_only:
            model = features_model(variant, pretrained=pretrained, **kwargs)
        else:
            model = create_model(variant, pretrained=pretrained, **kwargs)
    if dtype is not None:
        model.to(dtype=dtype)
    # As timm's builder: the cfg names the registered architecture, so a folder timm writes for this
    # model (push_to_hf_hub / save_for_hf) names a model timm can rebuild after register_timm().
    cfg = dict(model.pretrained_cfg, architecture=registered)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    model.pretrained_model_args = dict(pretrained_model_args or {})
    return model


def register_timm() -> List[str]:
    """Register every variant of our table in timm's registry as TIMM_PREFIX + name (with its
    pretrained cfgs: `timm.list_models('mo_*', pretrained=True)` lists the released weights).
    Idempotent: names already registered by this function are kept; a name some other code
    registered is left alone (a warning). Returns the registered names."""
    names = []
    for v in VARIANTS.values():
        registered = timm_name(v.name)
        if is_model(registered):
            if getattr(model_entrypoint(registered), "mambaout_variant", None) == v.name:
                names.append(registered)
            else:
                log.warning("timm already has a model named %s that is not mambaout's; left as it is", registered)
            continue
        tags = [f"{v.name}.{t}" for t in v.hub_tags] or [v.name]
        cfgs = {timm_name(t): pretrained_cfg(t) for t in tags}
        default_cfgs.update(generate_default_cfgs(cfgs))
        fn = _entrypoint(v.name, registered)
        globals()[registered] = fn           # register_model lists it in this module's __all__
        register_model(fn)
        names.append(registered)
    return names


def variant_of(name: str) -> str:
    """Our variant name of a name register_timm registered ('mo_vmamba_tiny.tag' ->
    'vmamba_tiny.tag', e.g. the `architecture` of a folder timm wrote); other names unchanged."""
    base, tag = split_name(name)
    if base.startswith(TIMM_PREFIX) and base[len(TIMM_PREFIX):] in VARIANTS:
        return name.replace(base, base[len(TIMM_PREFIX):], 1)
    return name
