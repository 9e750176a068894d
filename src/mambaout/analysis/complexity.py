"""Parameter and MAC counting, with the two conventions the paper's tables use.

"fvcore" (the classification tables, at 224x224): the paper counts MACs the way
fvcore's FlopCountAnalysis does: one MAC per multiply-add in convolutions and matrix
products (biases not counted), plus normalisation layers (LayerNorm: 5 per element with
affine, 4 without; eval-mode BatchNorm 2); cheap elementwise ops (activations, gating
products, residual adds, pooling means) are not counted. We count at the ATen level with
a dispatch mode, so no tracing and no fvcore dependency.

"mmcv" (segmentation, UperNet at 512x2048): the UperNet numbers of MambaOut (and of the
ConvNeXt / Swin papers it compares with) come from mmsegmentation's tools/get_flops.py,
i.e. mmcv's get_model_complexity_info on the segmentor's forward_dummy (backbone and
decode head; the auxiliary head is not run, as in our eval-mode forward). mmcv hooks modules by exact type (MMCV_RULES):
Conv: output positions x k x Cin/groups x Cout, plus Cout per output position for the
bias; Linear: input elements x out features (no bias); BatchNorm / GroupNorm /
InstanceNorm / LayerNorm: 1 per input element, 2 with affine; ReLU-like activations:
1 per output element; pooling: 1 per input element; nn.Upsample: 1 per output element.
Everything else counts 0: functional ops (F.interpolate, matmuls, adds, cat), GELU, and
module types outside the table, among them nn.SyncBatchNorm, which the configs'
norm_cfg=SyncBN builds. Our UperNet holds nn.BatchNorm2d (the training code converts it),
so this convention skips BatchNorm modules as get_flops skipped the SyncBN ones. With
that rule all eight paper rows (Tiny k3..k11, Small, Base) round to the printed numbers
and ConvNeXt-T's UperNet to its 939G. Counting BatchNorm (as "fvcore" does) shifts Tiny
by +0.24G, enough to turn Table 3's 936 / 941 into 937 / 942.

"mmcv" for detection (Mask R-CNN, the paper's "FLOPs" at 1280x800): mmdetection's
tools/get_flops.py runs mmcv's counter on the detector's forward_dummy (mmdet's
two_stage.py / standard_roi_head.py): backbone, FPN and RPN head on one 3 x 1280 x 800
image, then the box head on 1000 random proposals (RoIs pooled to 7x7) and the mask head
on the first 100 of them (rois[:100], 14x14). Our MambaOutMaskRCNN.forward_dummy runs the
same pass (count_macs calls a model's forward_dummy when it has one); RoIAlign, anchors,
NMS and box decoding count 0 (functional or outside mmcv's table), so the pooled features
are made at their shape. Same module rules as above, plus ConvTranspose2d (the mask
head's 2x upsampling): input positions x k x Cin x Cout/groups, plus for the bias Cout x
Hout x Hout per image (mmcv's formula, which squares the output height; the RoI maps are
square). Where torchvision's parts differ from mmdet's, we count mmdet's (together 0.044G
at 1280x800): the ReLU after the RPN's 3x3 conv is an nn.ReLU module in torchvision but
F.relu (uncounted) in mmdet; the two box-head ReLUs are F.relu in torchvision but an
nn.ReLU module (counted, 1 per output) in mmdet; mmdet's box regressor predicts
num_classes x 4 deltas (torchvision (num_classes + 1) x 4) and its mask logits conv
num_classes maps (torchvision num_classes + 1). With these rules Tiny / Small / Base give
262.46 / 353.71 / 494.71G at (H, W) = (800, 1280) or (1280, 800), which round to the
paper's 262 / 354 / 495G (counting torchvision's parts as they are gives 262.51, i.e. 263,
for Tiny). The model's own resize / normalisation (GeneralizedRCNNTransform) is not part
of the count: the image goes to forward_dummy at the given size, as in get_flops.

Both run on the meta device: no memory, no compute.
"""
from __future__ import annotations

from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal
from math import prod
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..models import costs

aten = torch.ops.aten


def _shape(t):
    return tuple(t.shape)


def _mm(args, out):                       # (M, K) @ (K, N)
    return prod(_shape(args[0])) * _shape(args[1])[-1]


def _addmm(args, out):                    # bias + (M, K) @ (K, N)
    return prod(_shape(args[1])) * _shape(args[2])[-1]


def _bmm(args, out):                      # (B, M, K) @ (B, K, N)
    return prod(_shape(args[0])) * _shape(args[1])[-1]


def _conv(args, out):
    weight, transposed = args[1], args[6]
    w = _shape(weight)
    if transposed:                        # every input element meets Cout/g * k*k weights
        return prod(_shape(args[0])) * w[1] * prod(w[2:])
    return prod(_shape(out)) * prod(w[1:])  # N*Cout*Hout*Wout * Cin/g*kh*kw


def _layer_norm(args, out):               # native_layer_norm(input, shape, weight, bias, eps)
    return prod(_shape(args[0])) * (5 if args[2] is not None else 4)


def _group_norm(args, out):               # native_group_norm(input, weight, bias, ...)
    return prod(_shape(args[0])) * (5 if args[1] is not None else 4)


def _batch_norm(args, out):               # eval-mode batch norm folds to a scale and shift
    return prod(_shape(args[0])) * (2 if args[1] is not None else 1)


def _native_batch_norm(args, out):        # native_batch_norm(input, weight, bias, mean, var, training, ...)
    if args[5]:                           # training: normalise with batch statistics, like a LayerNorm
        return prod(_shape(args[0])) * (5 if args[1] is not None else 4)
    return _batch_norm(args, out)


def _sdpa(args, out):                     # q @ k^T and attn @ v
    q, k, v = (_shape(a) for a in args[:3])
    return prod(q[:-1]) * k[-2] * q[-1] + prod(q[:-1]) * k[-2] * v[-1]


HANDLERS: Dict[object, Callable] = {
    aten.mm: _mm, aten.addmm: _addmm, aten.bmm: _bmm, aten.baddbmm: lambda a, o: _bmm(a[1:], o),
    aten.convolution: _conv, aten._convolution: _conv,
    aten.native_layer_norm: _layer_norm, aten.native_group_norm: _group_norm,
    aten._native_batch_norm_legit_no_training: _batch_norm, aten.native_batch_norm: _native_batch_norm,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
    aten._scaled_dot_product_efficient_attention: _sdpa,
    aten._scaled_dot_product_flash_attention: _sdpa,
    aten._scaled_dot_product_cudnn_attention: _sdpa,
}


class MacCounter(TorchDispatchMode):
    """Counts MACs of every op dispatched inside it, in total and per module-free op name."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.by_op: Dict[str, int] = {}
        self._paused = 0                  # > 0 inside declare_macs regions

    def __enter__(self):
        costs.ACTIVE.append(self)       # so that models can declare conventional MACs (costs.declare_macs)
        return super().__enter__()

    def __exit__(self, *exc):
        costs.ACTIVE.remove(self)
        return super().__exit__(*exc)

    def add(self, name: str, macs: int):
        self.total += macs
        self.by_op[name] = self.by_op.get(name, 0) + macs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._paused:
            return out
        handler = HANDLERS.get(func.overloadpacket)
        if handler is not None:
            macs = int(handler(args, out if isinstance(out, torch.Tensor) else out[0]))
            self.add(func.overloadpacket.__name__, macs)
        return out


def _mmcv_conv(m, x, out):
    positions = out.shape[0] * prod(out.shape[2:])
    weights = prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    return positions * (weights + (m.out_channels if m.bias is not None else 0))


def _mmcv_norm(m, x, out):
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    return x.numel() * (2 if affine else 1)


def _mmcv_linear(m, x, out):
    return x.numel() * out.shape[-1]


def _mmcv_deconv(m, x, out):             # mmcv's deconv hook: bias over Hout x Hout (sic)
    weights = prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    bias = m.out_channels * out.shape[0] * out.shape[2] * out.shape[2] if m.bias is not None else 0
    return x.shape[0] * prod(x.shape[2:]) * weights + bias


def _mmcv_output(m, x, out):
    return out.numel()


def _mmcv_input(m, x, out):
    return x.numel()


# mmcv's module table (exact types, as mmcv matches them); unlisted modules count 0.
MMCV_RULES: Dict[type, Callable] = {
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d), _mmcv_conv),
    **dict.fromkeys((nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6), _mmcv_output),
    **dict.fromkeys((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                     nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                     nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), _mmcv_input),
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm1d,
                     nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm), _mmcv_norm),
    nn.Linear: _mmcv_linear,
    nn.Upsample: _mmcv_output,
    nn.ConvTranspose2d: _mmcv_deconv,
}
# The paper's segmentation models ran with SyncBatchNorm, which mmcv's table lacks (see above).
MMCV_SKIPPED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONVENTIONS = ("fvcore", "mmcv")


def _mmdet_rules(model: nn.Module) -> Dict[nn.Module, Optional[Callable]]:
    """Per-module rules that count torchvision's Mask R-CNN parts as mmdetection's are counted
    (None: not counted). Empty for models without torchvision's RPN / RoI heads."""
    rpn, roi = getattr(model, "rpn", None), getattr(model, "roi_heads", None)
    if rpn is None or roi is None:
        return {}
    rules: Dict[nn.Module, Optional[Callable]] = {}
    for m in rpn.head.modules():                 # mmdet's RPNHead applies F.relu
        if type(m) in MMCV_RULES and not isinstance(m, (nn.Conv2d, nn.Linear)):
            rules[m] = None
    for m in roi.box_head.children():            # mmdet's box head: fc -> nn.ReLU (counted)
        if type(m) is nn.Linear:
            rules[m] = lambda m, x, out: _mmcv_linear(m, x, out) + out.numel()
    # mmdet predicts num_classes x 4 box deltas (no background box) and num_classes mask maps.
    reg = roi.box_predictor.bbox_pred
    rules[reg] = lambda m, x, out: x.numel() * (out.shape[-1] - 4)
    logits = roi.mask_predictor.mask_fcn_logits
    rules[logits] = lambda m, x, out: _mmcv_conv(m, x, out) * (m.out_channels - 1) // m.out_channels
    return rules


@contextmanager
def _mmcv_counter(model: nn.Module, by_type: Dict[str, int]):
    """Forward hooks adding each counted module's MACs to by_type[type name]."""
    special = _mmdet_rules(model)

    def hook(m, inputs, out):
        name = type(m).__name__
        rule = special.get(m, MMCV_RULES.get(type(m)))
        by_type[name] = by_type.get(name, 0) + int(rule(m, inputs[0], out))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if (m in special and special[m] is not None)
               or (m not in special and type(m) in MMCV_RULES and type(m) not in MMCV_SKIPPED)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, img_size=224, in_chans: Optional[int] = None,
               batch_size: int = 1, convention: str = "fvcore", num_frames: Optional[int] = None) -> int:
    """MACs of one eval-mode forward pass for a `batch_size` x in_chans x H x W input
    (img_size: int or (H, W)), on the meta device (the model is copied there, so a real
    model is untouched). convention: "fvcore" or "mmcv" (see the module docstring).
    A model with a `forward_dummy` (the Mask R-CNN models) is counted on that pass.
    A video model (one with a `num_frames` attribute) is counted on one clip,
    batch_size x in_chans x T x H x W, T = num_frames (default: the model's)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    in_chans = in_chans or getattr(model, "in_chans", 3)
    frames = num_frames or getattr(model, "num_frames", None)
    meta_model = _to_meta(model)
    x = torch.empty(batch_size, in_chans, *((frames,) if frames else ()), h, w, device="meta")
    by_op: Dict[str, int] = {}
    counter = MacCounter() if convention == "fvcore" else _mmcv_counter(meta_model, by_op)
    # Count the paper's formulation (Algorithm 1), not the fast path: folding the LayerNorm
    # affine into fc1 at inference would count 4 instead of 5 operations per normalised element,
    # and the fused plan calls no submodules, so mmcv's module hooks would not see them.
    fast = [(m, m.fast) for m in meta_model.modules() if hasattr(m, "fast")]
    try:
        for m, _ in fast:
            m.fast = False
        run = getattr(meta_model, "forward_dummy", None) or meta_model
        with torch.no_grad(), counter:
            run(x)
    finally:
        for m, flag in fast:
            m.fast = flag
    return counter.total if convention == "fvcore" else sum(by_op.values())


def _to_meta(model: nn.Module) -> nn.Module:
    import copy
    if next(model.parameters()).device.type != "meta":
        model = copy.deepcopy(model).to("meta")
    return model.eval()


def _video_views(num_frames: int, measured: dict) -> dict:
    """A video model's numbers beyond one clip's: its clip length, the views of Table 10's test
    protocol (2 clips x 3 crops) and the MACs of all of them (ours, and in the paper's convention
    where the family has one), as Table 10 prints them (G, one decimal)."""
    from ..models.registry import VIDEO_TEST_CLIPS, VIDEO_TEST_CROPS
    views = VIDEO_TEST_CLIPS * VIDEO_TEST_CROPS
    out = dict(num_frames=num_frames, views=views, views_macs=measured["macs"] * views,
               views_macs_g=round_half_up(measured["macs"] * views / 1e9))
    if "paper_convention_macs" in measured:
        theirs = measured["paper_convention_macs"] * views
        out.update(paper_convention_views_macs=theirs, paper_convention_views_macs_g=round_half_up(theirs / 1e9))
    return out


def round_half_up(value: float, digits: int = 1) -> float:
    """Round like the paper's tables: 4.486 -> 4.5, 8.95 -> 9.0 (not banker's rounding)."""
    q = Decimal(1).scaleb(-digits)
    return float(Decimal(repr(value)).quantize(q, rounding=ROUND_HALF_UP))


def measure(name: str, img_size=None, convention: Optional[str] = None, **model_kwargs) -> dict:
    """Params and MACs of a named model, built directly on the meta device.

    Classification variants: at `img_size` (default: its own input size, 224 or 32 for the
    CIFAR study models), convention "fvcore" by default; params_m and macs_g are rounded
    like the paper's tables: one decimal, three below 1G (Table 8 prints MACs in M);
    params_m counts as the paper does (VMamba's rows: without the classifier, see
    "params_counted"), params is every parameter.
    Video variants (registry.is_video): macs of one clip of num_frames (model_kwargs may give
    num_frames), plus num_frames, views (Table 10's 2 clips x 3 crops), views_macs / views_macs_g
    (all six views: what Table 10 prints) and, for VideoMamba, paper_convention_views_macs(_g).
    Segmentation models ('upernet_*'): at img_size int or (H, W) (default 512 x 2048),
    convention "mmcv" by default, params of the whole model (auxiliary head included, as
    the paper's), MACs of the eval forward (no auxiliary head); params_m and macs_g
    rounded to integers as the paper prints them, and the paper's numbers beside them.
    Detection models ('mask_rcnn_*'): at img_size int or (H, W) (default 800 x 1280, the
    paper's 1280 x 800), convention "mmcv" by default, params of the whole model (default
    80 categories), MACs of forward_dummy (box head on 1000 RoIs, mask head on 100; the
    paper calls these multiply-adds FLOPs), rounded to integers, and the paper's numbers
    (paper_macs_g is the paper's "FLOPs").
    """
    from ..models import DETECTION_VARIANTS, SEGMENTATION_VARIANTS, create_model, get_variant
    from ..models.detection_variants import FLOPS_SIZE
    from ..models.segmentation_variants import MACS_SIZE
    seg = SEGMENTATION_VARIANTS.get(name) or DETECTION_VARIANTS.get(name)
    if seg is None:
        img_size = img_size or get_variant(name).input_size
        model_kwargs["img_size"] = img_size
    else:
        img_size = img_size or (MACS_SIZE if name in SEGMENTATION_VARIANTS else FLOPS_SIZE)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    convention = convention or ("fvcore" if seg is None else seg.convention)
    with torch.device("meta"):
        model = create_model(name, **model_kwargs)
    params = count_params(model)
    macs = count_macs(model, img_size, convention=convention)
    if seg is None:
        counted = params
        if get_variant(name).params_without_head:   # the paper's count (VMamba's): no classifier
            counted -= sum(p.numel() for p in model.get_classifier().parameters())
        out = {"model": name, "img_size": img_size, "convention": convention, "params": params,
               "macs": macs, "params_m": round_half_up(counted / 1e6),
               "params_counted": "without the classifier" if counted != params else "all",
               "macs_g": round_half_up(macs / 1e9, 1 if macs >= 1e9 else 3)}
        if hasattr(model, "paper_macs"):       # a family the paper counts another way (Vim, EfficientVMamba)
            theirs = model.paper_macs(img_size)
            out.update(paper_convention=model.paper_macs_convention, paper_convention_macs=theirs,
                       paper_convention_macs_g=round_half_up(theirs / 1e9, 1 if theirs >= 1e9 else 3))
        if getattr(model, "num_frames", None):   # a video model: one clip counted, and the test protocol
            out.update(_video_views(model.num_frames, out))
        return out
    return {"model": name, "img_size": img_size, "convention": convention, "params": params,
            "macs": macs, "params_m": round_half_up(params / 1e6, 0),
            "macs_g": round_half_up(macs / 1e9, 0),
            "paper_params_m": seg.paper_params_m,
            "paper_macs_g": seg.paper_macs_g if name in SEGMENTATION_VARIANTS else seg.paper_flops_g}
