"""The MambaOut variant table: every model this package builds is one row here.

The registry, `mambaout models`, the docs and the tests all read this table.
Paper numbers are the specification: Table 1 of the supplementary (femto, tiny,
small, base) and the official README (kobe). The ``_rw`` rows are the community
variants trained by Ross Wightman for timm; their configurations are facts read
from timm's registry and they have no paper numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

OFFICIAL_RELEASE = "https://github.com/yuweihao/MambaOut/releases/download/model/{name}.pth"


@dataclass(frozen=True)
class Variant:
    name: str
    depths: Tuple[int, ...]
    dims: Tuple[int, ...]
    expansion_ratio: float = 8 / 3
    kernel_size: int = 7
    conv_ratio: float = 1.0
    stem_mid_norm: bool = True          # norm between the two stem convs
    downsample: str = "conv"            # "conv": conv -> norm; "conv_nf": norm -> conv
    ls_init_value: Optional[float] = None  # layer scale init; None = no layer scale
    head: str = "mlp"                   # "mlp": pool -> norm -> fc -> act -> norm -> fc
                                        # "norm_mlp": pool -> norm -> fc -> act -> fc
    act: str = "gelu"
    drop_path: float = 0.0              # peak stochastic depth used to train it
    # What the paper (or official README) reports; None where it reports nothing.
    paper_params_m: Optional[float] = None
    paper_macs_g: Optional[float] = None
    paper_top1: Optional[float] = None
    # Pretrained weights on the Hugging Face hub (timm/<name>.<tag>), first = default.
    hub_tags: Tuple[str, ...] = ()
    official_url: Optional[str] = None
    source: str = "Table 1"
    # Per-tag pretrained cfg overrides (crop_pct, input size, class count).
    tag_cfgs: dict = field(default_factory=dict)


_RW = dict(stem_mid_norm=False, downsample="conv_nf", ls_init_value=1e-6, head="norm_mlp",
           source="timm (community)")
_BASE_DIMS = (128, 256, 512, 768)
_CROP95 = {"crop_pct": 0.95, "test_crop_pct": 1.0}

VARIANTS = {v.name: v for v in [
    Variant("mambaout_femto", (3, 3, 9, 3), (48, 96, 192, 288), drop_path=0.025,
            paper_params_m=7.3, paper_macs_g=1.2, paper_top1=78.9, hub_tags=("in1k",),
            official_url=OFFICIAL_RELEASE.format(name="mambaout_femto")),
    Variant("mambaout_kobe", (3, 3, 15, 3), (48, 96, 192, 288), drop_path=0.025,
            paper_params_m=9.1, paper_macs_g=1.5, paper_top1=80.0, hub_tags=("in1k",),
            official_url=OFFICIAL_RELEASE.format(name="mambaout_kobe"), source="official README"),
    Variant("mambaout_tiny", (3, 3, 9, 3), (96, 192, 384, 576), drop_path=0.2,
            paper_params_m=26.5, paper_macs_g=4.5, paper_top1=82.7, hub_tags=("in1k",),
            official_url=OFFICIAL_RELEASE.format(name="mambaout_tiny")),
    Variant("mambaout_small", (3, 4, 27, 3), (96, 192, 384, 576), drop_path=0.4,
            paper_params_m=48.5, paper_macs_g=9.0, paper_top1=84.1, hub_tags=("in1k",),
            official_url=OFFICIAL_RELEASE.format(name="mambaout_small")),
    Variant("mambaout_base", (3, 4, 27, 3), _BASE_DIMS, drop_path=0.6,
            paper_params_m=84.8, paper_macs_g=15.8, paper_top1=84.2, hub_tags=("in1k",),
            official_url=OFFICIAL_RELEASE.format(name="mambaout_base")),
    Variant("mambaout_small_rw", (3, 4, 27, 3), (96, 192, 384, 576), drop_path=0.4,
            hub_tags=("sw_e450_in1k",), **_RW),
    Variant("mambaout_base_short_rw", (3, 3, 25, 3), _BASE_DIMS, expansion_ratio=3.0,
            conv_ratio=1.25, drop_path=0.6, hub_tags=("sw_e500_in1k",),
            tag_cfgs={"sw_e500_in1k": _CROP95}, **_RW),
    Variant("mambaout_base_tall_rw", (3, 4, 30, 3), _BASE_DIMS, expansion_ratio=2.5,
            conv_ratio=1.25, drop_path=0.6, hub_tags=("sw_e500_in1k",),
            tag_cfgs={"sw_e500_in1k": _CROP95}, **_RW),
    Variant("mambaout_base_wide_rw", (3, 4, 27, 3), _BASE_DIMS, expansion_ratio=3.0,
            conv_ratio=1.5, act="silu", drop_path=0.6, hub_tags=("sw_e500_in1k",),
            tag_cfgs={"sw_e500_in1k": _CROP95}, **_RW),
    Variant("mambaout_base_plus_rw", (3, 4, 30, 3), _BASE_DIMS, expansion_ratio=3.0,
            conv_ratio=1.5, act="silu", drop_path=0.6,
            hub_tags=("sw_e150_in12k_ft_in1k", "sw_e150_r384_in12k_ft_in1k", "sw_e150_in12k"),
            tag_cfgs={"sw_e150_r384_in12k_ft_in1k": {"input_size": (3, 384, 384),
                                                     "test_input_size": (3, 384, 384),
                                                     "crop_mode": "squash"},
                      "sw_e150_in12k": {"num_classes": 11821}},
            **_RW),
]}
