"""Class activation maps (Figure 2 of the supplementary) for any MambaOut classifier, on the
pytorch-grad-cam package (`pip install grad-cam`, in the `cam` extra).

MambaOut's stages and blocks keep activations channels-last, (N, H, W, C); pytorch-grad-cam
expects (N, C, H, W), so maps taken at those modules are transposed on the way in."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from .errors import MambaOutError

# method name -> pytorch_grad_cam class name
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
           "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM",
           "ablationcam": "AblationCAM", "gradcamelementwise": "GradCAMElementWise"}


def _package():
    try:
        import pytorch_grad_cam
    except ModuleNotFoundError:
        raise MambaOutError("Grad-CAM needs the grad-cam package: pip install 'mambaout[cam]'") from None
    return pytorch_grad_cam


def _layer(model: nn.Module, layer: Optional[str]) -> nn.Module:
    if layer is None:
        stages = getattr(model, "stages", None)
        if stages is None:
            raise MambaOutError(f"{type(model).__name__} has no stages: name a layer (e.g. one from "
                                "model.named_modules())")
        return stages[-1]
    modules = dict(model.named_modules())
    if layer not in modules:
        close = [n for n in modules if layer in n][:5]
        raise MambaOutError(f"no layer '{layer}' in the model" + (f"; e.g. {', '.join(close)}" if close else ""))
    return modules[layer]


def _to_nchw(t: torch.Tensor) -> torch.Tensor:
    """MambaOut's channels-last (N, H, W, C) activations -> (N, C, H, W); other shapes pass."""
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t


def grad_cam(model: nn.Module, images: torch.Tensor, target: Union[None, int, Sequence[int]] = None,
             layer: Optional[str] = None, method: str = "gradcam") -> np.ndarray:
    """Class activation maps of `model` for normalised images (N, 3, H, W): float32 (N, H, W) in
    [0, 1] at the input size. target: None (each image's top class), a class index, or one per
    image. layer: a module name (default: the last stage). method: one of METHODS."""
    cams = _package()
    if method not in METHODS:
        raise MambaOutError(f"unknown CAM method '{method}': choose from {', '.join(METHODS)}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise MambaOutError(f"images must be a (N, 3, H, W) tensor, got shape {tuple(images.shape)}")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model.eval()
    n = images.shape[0]
    if target is None:
        with torch.no_grad():
            classes = model(images).argmax(1).tolist()
    else:
        classes = [int(target)] * n if isinstance(target, int) else [int(t) for t in target]
        if len(classes) != n:
            raise MambaOutError(f"{len(classes)} targets for {n} images")
    num_classes = getattr(model, "num_classes", None)
    if num_classes and any(not 0 <= c < num_classes for c in classes):
        raise MambaOutError(f"class index out of range 0..{num_classes - 1}: {classes}")
    target_layer = _layer(model, layer)
    with getattr(cams, METHODS[method])(model=model, target_layers=[target_layer], reshape_transform=_to_nchw) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)
