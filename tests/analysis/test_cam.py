"""Grad-CAM API (issue 12, first part): maps at the input size in [0, 1], methods, layers, errors."""
import json
import sys

import numpy as np
import pytest
import torch

import mambaout
from mambaout.analysis.cam import METHODS, grad_cam
from mambaout.errors import MambaOutError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mambaout.create_model("mambaout_femto", num_classes=3)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "eigencam", "layercam"])
def test_maps_shape_range_for_methods(model, method):
    x = torch.randn(2, 3, 64, 80)
    maps = grad_cam(model, x, method=method)
    assert maps.shape == (2, 64, 80) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0


def test_targets_and_layers(model):
    x = torch.randn(2, 3, 64, 64)
    top = model.eval()(x).argmax(1).tolist()
    assert np.allclose(grad_cam(model, x), grad_cam(model, x, target=top), atol=1e-5)
    assert grad_cam(model, x, target=[0, 2], layer="stages.1").shape == (2, 64, 64)
    assert grad_cam(model, x, target=1, layer="stages.2.blocks.0").shape == (2, 64, 64)


@pytest.mark.parametrize("kw, needle", [
    (dict(method="nope"), "unknown CAM method"),
    (dict(layer="stages.9"), "no layer"),
    (dict(target=7), "out of range"),
    (dict(target=[0]), "1 targets for 2 images"),
])
def test_errors_are_one_line(model, kw, needle):
    with pytest.raises(MambaOutError, match=needle):
        grad_cam(model, torch.randn(2, 3, 32, 32), **kw)


def test_missing_package_names_the_extra(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(MambaOutError, match=r"pip install 'mambaout\[cam\]'"):
        grad_cam(model, torch.randn(1, 3, 32, 32))


# ---- default layer ----------------------------------------------------------------------------------

def test_default_layer_keeps_a_grid_of_cells(model):
    from mambaout.analysis.cam import default_layer
    assert default_layer(model, (224, 224)) == "stages.3"
    assert default_layer(model, (128, 160)) == "stages.3"
    assert default_layer(model, (64, 64)) == "stages.2"
    assert default_layer(model, (32, 32)) == "stages.1"
    assert default_layer(model, (8, 8)) == "stages.0"


# ---- localisation: a model trained here to tell two shapes apart looks at the shape -----------------

SIDE, LONG, WIDE = 128, 64, 20


def shape_canvases(n, rng):
    """Empty (noisy) canvases with nothing (class 0), a horizontal bar (1) or a vertical bar (2) at
    a random position. The empty class makes "a bar is here" the evidence for classes 1 and 2, so
    the model cannot score them from the background alone."""
    x = rng.uniform(0.0, 0.1, (n, 3, SIDE, SIDE)).astype(np.float32)
    y = rng.integers(0, 3, n)
    boxes = []
    for i in range(n):
        if y[i] == 0:
            boxes.append(None)
            continue
        h, w = (WIDE, LONG) if y[i] == 1 else (LONG, WIDE)
        r, c = rng.integers(0, SIDE - h + 1), rng.integers(0, SIDE - w + 1)
        x[i, :, r:r + h, c:c + w] = 1.0
        boxes.append((r, c, h, w))
    return torch.from_numpy((x - 0.5) / 0.5), torch.from_numpy(y), boxes


def peak_distance(cam, box):
    """Pixels from the map's maximum to the box (0 inside it)."""
    r, c = np.unravel_index(cam.argmax(), cam.shape)
    r0, c0, h, w = box
    return max(r0 - r, r - (r0 + h - 1), c0 - c, c - (c0 + w - 1), 0)


def test_cam_peak_lies_on_the_shape():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = mambaout.create_model("mambaout_femto", num_classes=3, depths=(1, 1, 1, 1), dims=(16, 32, 48, 64),
                                kernel_size=3)
    steps = 250
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + np.cos(np.pi * s / steps)))
    net.train()
    for _ in range(steps):
        x, y, _ = shape_canvases(32, rng)
        loss = torch.nn.functional.cross_entropy(net(x), y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    net.eval()
    x, y, boxes = shape_canvases(200, np.random.default_rng(100))
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.95, f"the shape model did not learn ({accuracy:.2f}); the CAM check needs a trained model"
    keep = [i for i in range(len(boxes)) if boxes[i] is not None][:16]
    x, y, boxes = x[keep], y[keep], [boxes[i] for i in keep]
    shifted_boxes = boxes[1:] + boxes[:1]  # another image's bar: how near a peak lands by chance

    def distances(layer):
        cams = grad_cam(net, x, target=y.tolist(), layer=layer)
        return ([peak_distance(c, b) for c, b in zip(cams, boxes)],
                [peak_distance(c, b) for c, b in zip(cams, shifted_boxes)],
                [peak_distance(c.T, b) for c, b in zip(cams, boxes)])  # a (W, H) misreading of the maps

    # The default layer, the last stage: 4x4 cells of 32 px at 128 px, so the peak sits on a cell
    # centre and the stride-2 convolutions place it up to half a cell off; it still follows the bar.
    near, shifted, _ = distances(None)
    assert sum(d <= 16 for d in near) >= 8, (sorted(near), sorted(shifted))
    assert sum(d <= 16 for d in near) >= sum(d <= 16 for d in shifted) + 2, (sorted(near), sorted(shifted))
    assert np.median(near) < np.median(shifted), (sorted(near), sorted(shifted))
    # Stage 3 (8x8 cells of 16 px): the peak is on the bar or next to it.
    near, shifted, mirrored = distances("stages.2")
    assert sum(d <= 16 for d in near) >= 12 and np.median(near) <= 10, (sorted(near), sorted(shifted))
    assert np.median(shifted) > np.median(near) + 8 and np.median(mirrored) > np.median(near) + 4


# ---- mambaout cam -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights_and_images(tmp_path_factory):
    """A 1000-class weights file (random femto, safetensors) and photographs that scikit-learn ships."""
    from safetensors.torch import save_file
    import sklearn.datasets
    from pathlib import Path
    tmp = tmp_path_factory.mktemp("cam")
    torch.manual_seed(0)
    net = mambaout.create_model("mambaout_femto")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "femto.safetensors"))
    photos = sorted(str(p) for p in (Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))
    assert len(photos) == 2
    return tmp / "femto.safetensors", photos


def test_cam_cli_writes_overlays_and_maps(weights_and_images, tmp_path, capsys):
    from PIL import Image
    from mambaout.cli import main
    from mambaout.tasks.classification.predict import class_names_for
    weights, photos = weights_and_images
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    out = tmp_path / "out"
    names = class_names_for(1000, None)
    code = main(["cam", *photos, str(bad), "--checkpoint", str(weights), "--model", "mambaout_femto", "-o", str(out),
                 "--save-npy", "--json", "--class", names[281]])
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert code == 1 and len(cap.err.strip().splitlines()) == 1 and "notes.jpg: not an image" in cap.err
    assert [e["image"] for e in r["results"]] == photos and r["errors"][0]["image"] == str(bad)
    for e in r["results"]:
        assert e["class"] == 281 and e["label"] == names[281] and 0 < e["prob"] < 1 and e["layer"] == "stages.3"
        cam = np.load(e["npy"])
        assert cam.shape == (224, 224) and cam.dtype == np.float32 and 0 <= cam.min() and cam.max() <= 1
        with Image.open(e["overlay"]) as im:
            assert im.format == "PNG" and im.width == 256 and im.height > 256  # enlarged, title band above
    assert sorted(p.name for p in out.iterdir()) == ["china_cam.npy", "china_cam.png", "flower_cam.npy",
                                                      "flower_cam.png"]
    # the top class (no --class), another method, no maps; same stems in two folders do not collide
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "china.jpg").write_bytes(open(photos[0], "rb").read())
    code = main(["cam", photos[0], str(twin / "china.jpg"), "--checkpoint", str(weights), "--model", "mambaout_femto",
                 "-o", str(tmp_path / "top"), "--method", "gradcam++", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and [e["method"] for e in r["results"]] == ["gradcam++"] * 2
    assert sorted(p.name for p in (tmp_path / "top").iterdir()) == ["china_2_cam.png", "china_cam.png"]


@pytest.mark.parametrize("extra, needle", [
    (["--class", "1000"], "class 1000 out of range 0..999"),
    (["--class", "no such class"], "no class 'no such class'"),
    (["--layer", "stages.7"], "no layer 'stages.7'"),
    (["--method", "magic"], "invalid choice: 'magic'"),
])
def test_cam_cli_errors_are_one_line(weights_and_images, tmp_path, capsys, extra, needle):
    from mambaout.cli import main
    weights, photos = weights_and_images
    code = main(["cam", photos[0], "--checkpoint", str(weights), "--model", "mambaout_femto", "-o", str(tmp_path),
                 *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err


def test_cam_cli_needs_weights_and_output(tmp_path, capsys):
    from mambaout.cli import main
    assert main(["cam", "x.png", "--model", "mambaout_femto", "-o", str(tmp_path)]) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert main(["cam", "x.png", "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "-o/--output" in capsys.readouterr().err
    assert main(["cam", "x.png", "--checkpoint", str(tmp_path / "missing.pth"), "-o", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_dense_prediction_models_are_refused_in_one_line(tmp_path, capsys):
    """cam / predict / demo / export take classification models; a segmentation checkpoint or a
    detection name gets one line naming the right command, not a traceback."""
    from mambaout.cli import main
    seg = tmp_path / "seg.pth"
    torch.save({"format": "mambaout-train-v1", "task": "segmentation", "model_name": "upernet_mambaout_femto",
                "num_classes": 150, "model": {}}, seg)
    for args in (["cam", "x.png", "--checkpoint", str(seg), "-o", str(tmp_path)],
                 ["predict", "x.png", "--checkpoint", str(seg)],
                 ["demo", "--checkpoint", str(seg)]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "segmentation checkpoint: use mambaout segment" in err, err
    for args in (["export", "mask_rcnn_mambaout_femto", "--format", "onnx", "-o", str(tmp_path / "x.onnx")],
                 ["cam", "x.png", "--model", "upernet_mambaout_femto", "--pretrained", "-o", str(tmp_path)]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not a row of the variant table" in err, err
