"""Grad-CAM API (issue 12, first part): maps at the input size in [0, 1], methods, layers, errors."""
import sys

import numpy as np
import pytest
import torch

import mambaout
from mambaout.cam import METHODS, grad_cam
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
