"""Browser demo (`mambaout demo`): a Gradio page where an uploaded image gets the model's top-5
classes and a Grad-CAM overlay, for released weights or any `mambaout train` checkpoint.

Gradio is an optional extra (`pip install 'mambaout[demo]'`). The page's one API endpoint is
`predict`: image file -> (top-5 label confidences, overlay). Uploads that are not images, empty
or larger than the limit get a message on the page; the server goes on serving."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional

from ..errors import MambaOutError, first_line, require

log = logging.getLogger("mambaout")

DIGIT_CLASSES = [str(d) for d in range(10)]


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a closed network
    return require("gradio", "demo", "the demo")


def example_images(classifier, folder) -> List[str]:
    """Example uploads: digits of the embedded set for a digits model, else the photographs that
    scikit-learn ships (and scikit-image's, where it is installed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if classifier.names == DIGIT_CLASSES:
        from ..data.datasets import DigitsDataset
        val = DigitsDataset("val", img_size=64)
        first = {}
        for i, t in enumerate(val.targets):
            first.setdefault(t, i)
        paths = []
        for digit in (0, 3, 5, 7):
            path = folder / f"digit_{digit}.png"
            val[first[digit]][0].save(path)
            paths.append(str(path))
        return paths
    import sklearn.datasets
    photos = Path(sklearn.datasets.__file__).parent / "images"
    paths = [str(p) for p in sorted(photos.glob("*.jpg"))]
    try:
        import skimage.data
        from PIL import Image
        for name in ("chelsea", "coffee", "astronaut"):
            path = folder / f"{name}.png"
            Image.fromarray(getattr(skimage.data, name)()).save(path)
            paths.append(str(path))
    except Exception:  # noqa: BLE001 - scikit-image is optional; its images are a bonus
        pass
    return paths


def make_predict(classifier, max_mb: float, method: str = "gradcam", layer: Optional[str] = None):
    """The page's function: file path -> ({class: probability} of the top 5, overlay PIL image).
    Every problem with the upload becomes a gr.Error, shown on the page."""
    gr = _gradio()
    from ..analysis.cam import explain_one

    def predict(path):
        if not path:
            raise gr.Error("Upload an image first.")
        name = Path(path).name
        size = os.path.getsize(path)
        if size > max_mb * 1e6:
            raise gr.Error(f"{name} is {size / 1e6:.1f} MB; the limit is {max_mb:g} MB.")
        try:
            x = classifier.read(path, name=name)
        except MambaOutError as e:
            raise gr.Error(f"{str(e)[0].upper()}{str(e)[1:]}.") from None
        probs, _, _, picture = explain_one(classifier, x, None, method, layer, title_suffix=f"  ({method})")
        p, idx = probs.topk(min(5, classifier.num_classes))
        top = {}
        for q, i in zip(p.tolist(), idx.tolist()):  # ImageNet repeats a few names ("crane", "maillot")
            label = classifier.names[i]
            top[label if label not in top else f"{label} (class {i})"] = float(q)
        return top, picture

    return predict


def build_demo(classifier, max_mb: float = 20.0, method: str = "gradcam", layer: Optional[str] = None,
               examples: Optional[List[str]] = None):
    """The Gradio Interface (not launched)."""
    gr = _gradio()
    from ..analysis.cam import _package
    _package()  # a missing grad-cam package is one line now, not an error on the first upload
    if layer is not None and layer not in dict(classifier.model.named_modules()):
        raise MambaOutError(f"no layer '{layer}' in the model (see model.named_modules())")
    name = classifier.info.get("model_name") or "model"
    return gr.Interface(
        fn=make_predict(classifier, max_mb, method, layer),
        inputs=gr.File(label="Image (JPEG, PNG, WebP, ...)", type="filepath"),
        outputs=[gr.Label(num_top_classes=5, label="Top-5 classes"), gr.Image(label="Grad-CAM", type="pil")],
        examples=[[p] for p in examples] if examples else None,
        cache_examples=False,
        title=f"MambaOut: {name}",
        description=(f"{classifier.num_classes} classes, input {classifier.size}px. Upload an image: the model's "
                     f"top-5 classes and a {method} map of its top class over what the model sees "
                     f"(uploads up to {max_mb:g} MB)."),
        flagging_mode="never",
        api_name="predict",
    )


def serve(classifier, host: str = "127.0.0.1", port: int = 7860, max_mb: float = 20.0, method: str = "gradcam",
          layer: Optional[str] = None) -> int:
    """Build and serve the demo until interrupted."""
    gr = _gradio()
    if not 0 <= port <= 65535:
        raise MambaOutError(f"--port must be 0..65535, got {port}")
    folder = tempfile.mkdtemp(prefix="mambaout-demo-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    demo = build_demo(classifier, max_mb, method, layer, example_images(classifier, folder))
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts
    try:
        demo.launch(server_name=host, server_port=port, max_file_size=int(max_mb * 1e6), show_error=True,
                    theme=theme, allowed_paths=[folder], share=False, inbrowser=False)
    except OSError as e:
        raise MambaOutError(f"cannot serve on {host}:{port}: {first_line(e)}") from None
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
