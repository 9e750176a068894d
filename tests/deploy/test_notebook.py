"""notebooks/finetune.ipynb (issue 22): executed end to end with nbclient on a tiny ImageFolder
of coloured shapes, starting from the digits checkpoint (a pretrained stand-in with another
class count: there is no network), and checked: no cell fails, the head is re-initialised,
validation prints a top-1, the hub folder and the ONNX file are written."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "finetune.ipynb"
NEEDED = ("nbclient", "nbformat", "ipykernel", "pytorch_grad_cam", "onnx", "onnxruntime")
MISSING = [m for m in NEEDED if importlib.util.find_spec(m) is None]

# class -> (shape, fill colour): learnable from either cue in a few updates
SHAPES = {"circle": ("ellipse", (220, 50, 40)), "square": ("rectangle", (40, 170, 60)),
          "triangle": ("polygon", (50, 70, 220))}


def make_shapes(root: Path, per_class=(10, 4), size=48, seed=0) -> Path:
    """root/{train,val}/<shape>/*.png: one filled shape of random size and place on a noisy grey
    background."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for cls, (kind, colour) in SHAPES.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                bg = np.clip(rng.normal(128, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                img = Image.fromarray(bg)
                side = int(rng.integers(size // 2, size - 4))
                x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
                box = (x0, y0, x0 + side, y0 + side)
                draw = ImageDraw.Draw(img)
                if kind == "polygon":
                    draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side // 2, y0)], fill=colour)
                else:
                    getattr(draw, kind)(box, fill=colour)
                img.save(folder / f"{i:03d}.png")
    return root


def _cells(nb):
    return {c.get("id"): c for c in nb["cells"]}


def _text(cell) -> str:
    """stdout/stderr streams and text/plain results of an executed code cell."""
    parts = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif o["output_type"] in ("execute_result", "display_data"):
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_notebook_is_stored_clean():
    """No outputs in the repository (small file, clean diffs) and a papermill parameters cell
    that sets every parameter the test injects."""
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and params[0] is code[0]
    source = "".join(params[0]["source"])
    for name in ("DATA_DIR", "MODEL", "PRETRAINED", "INIT_CHECKPOINT", "EPOCHS", "IMG_SIZE", "BATCH_SIZE",
                 "OUT_DIR"):
        assert re.search(rf"^{name} = ", source, re.M), name


def _kernel(tmp_path: Path, monkeypatch) -> str:
    """A kernelspec running this interpreter (the venv's python, whatever kernels the user has
    installed), found first through JUPYTER_PATH."""
    name = "mambaout-test-python"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mambaout test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


# skipif, not a skip in the body: decided before the digits checkpoint is trained
@pytest.mark.skipif(bool(MISSING), reason=f"executing the notebook needs {', '.join(MISSING)} "
                                          "(pip install -e '.[dev]')")
def test_finetune_notebook_runs(tmp_path, digits_checkpoint, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    data = make_shapes(tmp_path / "shapes")
    out = tmp_path / "out"
    params = {"DATA_DIR": str(data), "MODEL": "mambaout_femto", "PRETRAINED": False,
              "INIT_CHECKPOINT": str(digits_checkpoint), "EPOCHS": 2, "IMG_SIZE": 32, "BATCH_SIZE": 8,
              "LR": 2e-3, "AUTO_AUGMENT": None, "WORKERS": 0, "DEVICE": "cpu", "OUT_DIR": str(out)}
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()),
                                         id="injected-parameters")
    injected.metadata["tags"] = ["injected-parameters"]   # papermill's convention
    nb.cells.insert(at + 1, injected)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)", id="which-python"))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")      # no network from the kernel either
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(nb, kernel_name=_kernel(tmp_path, monkeypatch), timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"a notebook cell failed:\n{str(e)[-3000:]}")

    cells = _cells(nb)
    errors = [c.get("id") for c in nb.cells if any(o["output_type"] == "error" for o in c.get("outputs", []))]
    assert not errors
    assert _text(cells["which-python"]).strip() == sys.executable   # the kernel is this interpreter
    # The head is replaced (10 digits -> 3 shapes), as the notebook says.
    assert "10-class classifier, the model has 3 classes" in _text(cells["train"])
    assert "3 classes; 30 train and 12 val images" in _text(cells["data"])
    top1 = re.search(r"top-1 (\d+\.\d+)%", _text(cells["validate"]))
    assert top1, _text(cells["validate"])
    assert re.search(r"max abs logit difference vs the fine-tuned model: \S+", _text(cells["timm"]))
    onnx_top1 = re.search(r"ONNX Runtime on val: top-1 (\d+\.\d+)%", _text(cells["onnx"]))
    assert onnx_top1 and onnx_top1.group(1) == top1.group(1)
    assert (out / "run" / "best.pth").is_file()
    assert (out / "hub" / "config.json").is_file() and (out / "hub" / "model.safetensors").is_file()
    assert (out / "model.onnx").stat().st_size > 1e6
    assert list((out / "cam").glob("*_cam.png"))
