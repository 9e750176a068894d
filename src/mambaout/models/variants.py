"""The variant table: every model this package builds is one row here.

The registry, `mambaout models`, the docs and the tests all read this table.
Paper numbers are the specification: Table 1 of the supplementary (femto, tiny,
small, base), the official README (kobe), and the ablations and comparison models
of Tables 3, 5, 6, 7, 8 and 11. The ``_rw`` rows are the community variants trained
by Ross Wightman for timm; their configurations are facts read from timm's registry
and they have no paper numbers.

Four architectures (``arch``): "mambaout", the 4-stage hierarchical model
(mambaout.py); "mambaout_iso", the isotropic MambaOut of Table 5; "isotropic",
the ViT-like study models of Tables 8 and 11 with a conv, attention or SSM token
mixer (isotropic.py); and "vmamba", VMamba v0, the vision Mamba of the main
comparison (vmamba.py); and the other comparators: "local_vmamba", "efficient_vmamba"
(hierarchical, ``depths`` / ``dims`` per stage), "vim" and "illama" (isotropic). For the
isotropic ones ``depths`` and ``dims`` hold one entry and ``extra`` the constructor arguments
the hierarchical model does not have. The video models of Table 10 (clips in, not images):
"videomamba" (isotropic) and "mambaout_video" (the MambaOut row's fields plus ``extra``).
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
    arch: str = "mambaout"              # "mambaout" | "mambaout_iso" | "isotropic"
    stage_mixers: Tuple[str, ...] = ("", "", "", "")  # Table 7 hybrids: "", "attn", "ssm"
    extra: dict = field(default_factory=dict)          # further constructor arguments
    input_size: int = 224               # default (train / test) image size
    paper_cifar: Optional[Tuple[float, float]] = None  # Table 8: CIFAR-10 / CIFAR-100 top-1
    num_classes: int = 1000             # default classifier size
    params_without_head: bool = False   # the paper's params exclude the classifier (VMamba's count)


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

# Table 3: kernel size of the depthwise conv in MambaOut-Tiny (k7 is mambaout_tiny).
_K_PAPER = {3: (26, 4.4), 5: (26, 4.4), 7: (27, 4.5), 9: (27, 4.5), 11: (27, 4.6)}
for _k, (_p, _m) in _K_PAPER.items():
    VARIANTS[f"mambaout_tiny_k{_k}"] = Variant(
        f"mambaout_tiny_k{_k}", (3, 3, 9, 3), (96, 192, 384, 576), kernel_size=_k, drop_path=0.2,
        paper_params_m=_p, paper_macs_g=_m, paper_top1={3: 82.2, 5: 82.6, 7: 82.7, 9: 82.9, 11: 82.8}[_k],
        source="Table 3")

_TINY = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 576), drop_path=0.2)


def _vit(size, dim, heads, causal, top1, **paper):
    """Table 11: ViT with fully-visible or causal attention (class token last when causal)."""
    return Variant(f"vit_{size}_p16" + ("_causal" if causal else ""), (12,), (dim,), arch="isotropic",
                   drop_path=0.1, extra={"patch_size": 16, "mixer": "attn", "num_heads": heads,
                                         "causal": causal, "pool": "cls"},
                   paper_top1=top1, source="Table 11", **paper)


def _study(mixer, dim, suffix="", paper=None, **opts):
    """Table 8: 12 isotropic layers, patch 4 on 32x32 (CIFAR), one token mixer."""
    numbers = dict(zip(("paper_params_m", "paper_macs_g", "paper_cifar"), paper or ()))
    return Variant(f"study_{mixer}{suffix}_d{dim}", (12,), (dim,), arch="isotropic", input_size=32,
                   num_classes=10, extra={"patch_size": 4, "mixer": mixer, **opts},
                   source="Table 8", **numbers)


for _v in [
    # Table 6: as many blocks as VMamba-T, expansion 4 to match its MACs.
    Variant("mambaout_t15", (2, 2, 9, 2), (96, 192, 384, 576), expansion_ratio=4.0, drop_path=0.2,
            paper_params_m=32, paper_macs_g=5.5, paper_top1=82.9, source="Table 6"),
    # Table 5: isotropic MambaOut-S; 18 blocks derived from the table (see isotropic.py).
    Variant("mambaout_s_iso", (18,), (384,), drop_path=0.1, arch="mambaout_iso",
            extra={"patch_size": 16}, paper_params_m=24, paper_macs_g=4.3, paper_top1=80.5,
            source="Table 5"),
    # Table 7: conv + attention / conv + selective SSM in stages 3 and 4 (see hybrid.py).
    Variant("mambaout_attn_tiny", **_TINY, stage_mixers=("", "", "attn", "attn"),
            paper_params_m=26, paper_macs_g=4.7, paper_top1=83.3, source="Table 7"),
    Variant("vmamba_mixed_stage_tiny", **_TINY, stage_mixers=("", "", "ssm", "ssm"),
            paper_params_m=28, paper_macs_g=5.2, paper_top1=82.1, source="Table 7"),
    _vit("tiny", 192, 3, False, 72.2),
    _vit("tiny", 192, 3, True, 70.6),
    _vit("small", 384, 6, False, 79.8, paper_params_m=22, paper_macs_g=4.6),  # also Table 5
    _vit("small", 384, 6, True, 78.9),
    # Table 8 (paper: params M, MACs G, (CIFAR-10, CIFAR-100) top-1), plus causal / bidirectional
    # variants the study compares against.
    _study("conv", 64, paper=(0.7, 0.043, (79.8, 52.1))),
    _study("attn", 64, paper=(0.7, 0.045, (77.3, 50.8))),
    _study("attn", 64, "_causal", causal=True),
    _study("ssm", 64, paper=(0.7, 0.056, (76.1, 47.0))),
    _study("ssm", 64, "_bi", bidirectional=True),
    _study("conv", 192, paper=(6.0, 0.357, (88.9, 68.5))),
    _study("attn", 192, paper=(6.0, 0.361, (86.9, 66.8))),
    _study("attn", 192, "_causal", causal=True),
    _study("ssm", 192, paper=(6.0, 0.399, (86.3, 63.1))),
    _study("ssm", 192, "_bi", bidirectional=True),
    # VMamba v0 (vmamba.py), the main table's vision Mamba: its own paper's numbers (params
    # without the classifier, FLOPs in its fvcore + selective-scan convention, top-1), the
    # drop path of its configs (B: 0.6 with EMA, the run behind 83.7).
    Variant("vmamba_tiny", (2, 2, 9, 2), (96, 192, 384, 768), drop_path=0.2, arch="vmamba",
            paper_params_m=22, paper_macs_g=5.6, paper_top1=82.2, source="VMamba v0", params_without_head=True),
    Variant("vmamba_small", (2, 2, 27, 2), (96, 192, 384, 768), drop_path=0.3, arch="vmamba",
            paper_params_m=44, paper_macs_g=11.2, paper_top1=83.5, source="VMamba v0", params_without_head=True),
    Variant("vmamba_base", (2, 2, 27, 2), (128, 256, 512, 1024), drop_path=0.6, arch="vmamba",
            paper_params_m=75, paper_macs_g=18.0, paper_top1=83.7, source="VMamba v0", params_without_head=True),
    # The other comparators of the paper's tables, each in its own module: LocalVMamba
    # (local_vmamba.py: a VMamba-like trunk with searched local scan directions per block and a
    # channel gate on each direction's output), EfficientVMamba (efficient_vmamba.py: atrous selective scan + conv branch in
    # stages 1-2, inverted residual blocks in 3-4), Vim (vim.py: isotropic, bidirectional
    # Mamba, class token in the middle) and iLLaMA (illama.py: LLaMA blocks on patches, causal
    # or fully visible). Paper numbers as the MambaOut paper quotes them.
    Variant("local_vmamba_tiny", (2, 2, 9, 2), (96, 192, 384, 768), drop_path=0.2, arch="local_vmamba",
            extra={"directions": "tiny"}, paper_params_m=26, paper_macs_g=5.7, paper_top1=82.7,
            source="LocalVMamba"),   # params with the classifier (25.5M; 24.8M without would print 25)
    Variant("local_vmamba_small", (2, 2, 27, 2), (96, 192, 384, 768), drop_path=0.3, arch="local_vmamba",
            extra={"directions": "small"}, paper_params_m=50, paper_macs_g=11.4, paper_top1=83.7,
            source="LocalVMamba"),   # params with the classifier (49.7M; 49.0M without)
    # EfficientVMamba-S: depths and drop path 0.1 from the released training log's module tree
    # (log_efficient_vmamba_small.txt; its yaml's 0.2 was not the run's): 11.274M params (all,
    # classifier included), FLOPs 1.343G in the log's fvcore count (efficient_vmamba.paper_flops).
    Variant("efficient_vmamba_small", (2, 2, 4, 2), (64, 128, 256, 512), drop_path=0.1, arch="efficient_vmamba",
            paper_params_m=11, paper_macs_g=1.3, paper_top1=78.7, source="EfficientVMamba"),
    Variant("vim_small", (24,), (384,), drop_path=0.05, arch="vim", extra={"patch_size": 16},
            paper_params_m=26, paper_macs_g=5.1, paper_top1=80.5, source="Table 5"),
    Variant("illama_tiny", (12,), (192,), arch="illama", extra={"patch_size": 16, "num_heads": 3},
            paper_params_m=5.7, paper_macs_g=1.3, paper_top1=76.2, source="Table 11"),
    # iLLaMA-T's one release (its README) is the causal model trained with the soft mask.
    Variant("illama_tiny_causal", (12,), (192,), arch="illama",
            extra={"patch_size": 16, "num_heads": 3, "causal": True},
            paper_params_m=5.7, paper_macs_g=1.3, paper_top1=75.0, source="Table 11",
            official_url="https://huggingface.co/techmonsterwang/iLLaMA/resolve/main/illama-tiny-in1k-75.0.pth"),
]:
    VARIANTS[_v.name] = _v

# Table 10, video (Something-Something V2, 174 classes; registry.VIDEO_ARCHS): clips of 8 frames
# at 224. The paper's numbers are of the whole test protocol (2 clips x 3 crops) and live in
# paper_tables.py, not on these rows (whose paper_* fields are ImageNet's). VideoMamba-Ti
# (videomamba.py: the official SSV2 run's drop path 0.1); MambaOut-Femto on clips
# (mambaout_video.py: kt = 3 depthwise conv over time in stages 2-4, the design the MACs budget
# fixes) and its frame-averaging baseline (every conv frame by frame); the paper gives no drop
# path for it: the comparison's SSV2 value.
_SSV2 = dict(num_classes=174, source="Table 10")
_FEMTO = dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 288), drop_path=0.1)   # VideoMamba-Ti's SSV2 value
for _v in [
    Variant("videomamba_tiny", (24,), (192,), arch="videomamba", drop_path=0.1,
            extra={"patch_size": 16, "num_frames": 8},
            official_url="https://huggingface.co/OpenGVLab/VideoMamba/resolve/main/videomamba_t16_ssv2_f8_res224.pth",
            **_SSV2),
    Variant("mambaout_femto_video", **_FEMTO, arch="mambaout_video",
            extra={"temporal_kernels": (1, 3, 3, 3), "num_frames": 8}, **_SSV2),
    Variant("mambaout_femto_frames", **_FEMTO, arch="mambaout_video",
            extra={"temporal_kernels": (1, 1, 1, 1), "num_frames": 8}, **_SSV2),
]:
    VARIANTS[_v.name] = _v
