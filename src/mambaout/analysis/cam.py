"""Class activation maps (Figure 2 of the supplementary) for any MambaOut classifier, on the
pytorch-grad-cam package (`pip install grad-cam`, in the `cam` extra).

MambaOut's stages and blocks keep activations channels-last, (N, H, W, C); pytorch-grad-cam
expects (N, C, H, W), so maps taken at those modules are transposed on the way in."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ..errors import MambaOutError, require

# method name -> pytorch_grad_cam class name
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
           "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM",
           "ablationcam": "AblationCAM", "gradcamelementwise": "GradCAMElementWise"}


def _package():
    return require("pytorch_grad_cam", "cam", "Grad-CAM", package="grad-cam")


def default_layer(model: nn.Module, size) -> str:
    """The last stage whose map has at least 4 cells on the short side of an (H, W) input: the
    last stage (stride 32) from 128 px up, an earlier one for small inputs (e.g. stages.1 at
    32 px), where the last stage is a single cell and its map carries no position."""
    stages = getattr(model, "stages", None)
    if stages is None:
        raise MambaOutError(f"{type(model).__name__} has no stages: name a layer (e.g. one from "
                            "model.named_modules())")
    short = min(size)
    best = 0
    for i in range(len(stages)):
        if math.ceil(short / (4 * 2 ** i)) >= 4:  # stem stride 4, then x2 per stage
            best = i
    return f"stages.{best}"


def _layer(model: nn.Module, layer: Optional[str], size) -> nn.Module:
    modules = dict(model.named_modules())
    name = default_layer(model, size) if layer is None else layer
    if name not in modules:
        close = [n for n in modules if name in n][:5]
        raise MambaOutError(f"no layer '{name}' in the model" + (f"; e.g. {', '.join(close)}" if close else ""))
    return modules[name]


def _to_nchw(t: torch.Tensor) -> torch.Tensor:
    """MambaOut's channels-last (N, H, W, C) activations -> (N, C, H, W); other shapes pass."""
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t


def grad_cam(model: nn.Module, images: torch.Tensor, target: Union[None, int, Sequence[int]] = None,
             layer: Optional[str] = None, method: str = "gradcam") -> np.ndarray:
    """Class activation maps of `model` for normalised images (N, 3, H, W): float32 (N, H, W) in
    [0, 1] at the input size. target: None (each image's top class), a class index, or one per
    image. layer: a module name (default: default_layer, the last stage from 128 px up). method: one of METHODS."""
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
    target_layer = _layer(model, layer, images.shape[-2:])
    with getattr(cams, METHODS[method])(model=model, target_layers=[target_layer], reshape_transform=_to_nchw) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)


def overlay(rgb: np.ndarray, cam: np.ndarray, title: str = "", min_side: int = 256):
    """A PIL image: the map (H, W) in [0, 1] as a JET heat map over the RGB float image (H, W, 3)
    the model saw, enlarged to at least `min_side` pixels, with `title` in a band above it."""
    from PIL import Image, ImageDraw, ImageFont
    from pytorch_grad_cam.utils.image import show_cam_on_image
    picture = Image.fromarray(show_cam_on_image(rgb.astype(np.float32), cam, use_rgb=True, image_weight=0.5))
    scale = max(1.0, min_side / min(picture.size))
    if scale > 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.BICUBIC)
    if not title:
        return picture
    font = ImageFont.load_default(size=max(12, picture.width // 22))
    band = font.getbbox("Ag")[3] + 10
    out = Image.new("RGB", (picture.width, picture.height + band), "white")
    out.paste(picture, (0, band))
    text = title
    while len(text) > 4 and ImageDraw.Draw(out).textlength(text, font=font) > picture.width - 10:
        text = text[:-2].rstrip() + "…" if not text.endswith("…") else text[:-2] + "…"
    ImageDraw.Draw(out).text((5, 5), text, fill="black", font=font)
    return out


def explain_one(classifier, x: torch.Tensor, target: Optional[int] = None, method: str = "gradcam",
                layer: Optional[str] = None, title_suffix: str = ""):
    """One normalised image (3, H, W) through a `predict.Classifier`: (class probabilities, the
    explained class (target, or the top one), its map (H, W), the titled overlay picture)."""
    batch = x.unsqueeze(0).to(classifier.device)
    probs = classifier.probs(batch)[0]
    k = int(probs.argmax()) if target is None else target
    cam = grad_cam(classifier.model, batch, target=[k], layer=layer, method=method)[0]
    title = f"{classifier.names[k]}  {100 * float(probs[k]):.1f}%{title_suffix}"
    return probs, k, cam, overlay(classifier.view(x), cam, title)


def _save_npy(path, array):
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to the temporary name
        np.save(f, array)


def explain_images(paths, classifier, out_dir, target=None, method: str = "gradcam", layer: Optional[str] = None,
                   save_npy: bool = False) -> dict:
    """Grad-CAM overlays (and raw maps) of image files for a loaded `predict.Classifier`:
    <out_dir>/<name>_cam.png, titled with the class and its probability, and <name>_cam.npy (the
    float32 map at the model's input size) with save_npy. target: None (each image's top class),
    a class index or a class name. Unreadable images are reported in "errors", the others go on."""
    from ..data import predict_to_folder
    from ..utils import atomic_write
    _package()
    if not hasattr(classifier.model, "parameters"):
        raise MambaOutError("Grad-CAM needs a PyTorch model (a checkpoint or --model), not an ONNX file")
    cls = None if target is None else classifier.class_index(target)

    def explain(path, x, stem, out):
        probs, k, cam, picture = explain_one(classifier, x, cls, method, layer)
        png = out / f"{stem}_cam.png"
        atomic_write(png, lambda tmp: picture.save(tmp, format="PNG"))
        entry = {"image": str(path), "overlay": str(png), "class": k, "label": classifier.names[k],
                 "prob": round(float(probs[k]), 6), "method": method,
                 "layer": layer or default_layer(classifier.model, x.shape[-2:])}
        if save_npy:
            npy = out / f"{stem}_cam.npy"
            atomic_write(npy, lambda tmp: _save_npy(tmp, cam))
            entry["npy"] = str(npy)
        return entry
    r = predict_to_folder(paths, out_dir, explain, read=classifier.read)
    return {"results": r["written"], "errors": r["errors"]}
