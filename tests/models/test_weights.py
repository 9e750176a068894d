import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import mambaout
from mambaout.errors import CheckpointError
from mambaout.models.weights import official_to_timm
from helpers import assert_fp32_close, timm_to_official


@pytest.fixture(scope="module")
def femto():
    torch.manual_seed(0)
    return mambaout.create_model("mambaout_femto").eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


def _fresh(name="mambaout_femto", **kw):
    return mambaout.create_model(name, **kw).eval()


# safetensors files hold flat tensors only, so no wrappers there
@pytest.mark.parametrize("layout", ["timm", "official"])
@pytest.mark.parametrize("wrapper,fmt", [(None, "pth"), ("model", "pth"), ("state_dict", "pth"),
                                         (None, "bin"), (None, "safetensors")])
def test_layouts_load_and_give_identical_outputs(tmp_path, femto, x, layout, wrapper, fmt):
    sd = femto.state_dict()
    if layout == "official":
        sd = timm_to_official(sd)
        assert "downsample_layers.0.conv1.weight" in sd and "norm.weight" in sd and "head.fc2.weight" in sd
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({wrapper: sd} if wrapper else sd, path)
    model = _fresh()
    mambaout.load_checkpoint(model, path)
    with torch.no_grad():
        assert torch.equal(model(x), femto(x))


def test_matches_timm_reference_implementation(femto, x):
    """timm's own MambaOut, given the same weights, computes the same outputs as ours."""
    timm = pytest.importorskip("timm")
    ref = timm.create_model("mambaout_femto").eval()
    ref.load_state_dict(femto.state_dict(), strict=True)
    with torch.no_grad():
        assert_fp32_close(femto(x), ref(x))   # timm's block vs our fast path: another float order
    # and timm's own converter for the official layout agrees with ours
    from timm.models.mambaout import checkpoint_filter_fn
    official = timm_to_official(femto.state_dict())
    assert official_to_timm(dict(official)).keys() == checkpoint_filter_fn(dict(official), ref).keys()


def test_rw_variant_loads_timm_layout(tmp_path):
    a = _fresh("mambaout_small_rw")
    b = _fresh("mambaout_small_rw")
    path = tmp_path / "rw.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in a.state_dict().items()}}, path)
    mambaout.load_checkpoint(b, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_pickled_object_is_refused(tmp_path, femto):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"model": femto.state_dict(), "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        mambaout.load_checkpoint(_fresh(), path)
    assert not (tmp_path / "pwned").exists()
    path2 = tmp_path / "evil2.pth"
    with open(path2, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(CheckpointError):
        mambaout.load_checkpoint(_fresh(), path2)
    assert not (tmp_path / "pwned").exists()


def test_training_args_beside_the_weights_load_inert(tmp_path, femto, x):
    """Released checkpoints of the timm/DeiT-style trainers (Vim, iLLaMA, EfficientVMamba,
    LocalVMamba) keep the script's argparse.Namespace under 'args': it is read as an empty
    plain dict, never as a Namespace, and the weights load."""
    import argparse
    path = tmp_path / "release.pth"
    torch.save({"model": femto.state_dict(), "args": argparse.Namespace(lr=1e-3, model="x"), "epoch": 299}, path)
    obj = mambaout.models.weights.read_checkpoint(path)
    assert not isinstance(obj["args"], argparse.Namespace) and obj["epoch"] == 299
    model = _fresh()
    mambaout.load_checkpoint(model, path)
    with torch.no_grad():
        assert torch.equal(model(x), femto(x))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint_is_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pth"):
        mambaout.load_checkpoint(_fresh(), path)


def test_truncated_checkpoints(tmp_path, femto):
    good = tmp_path / "good.pth"
    torch.save(femto.state_dict(), good)
    data = good.read_bytes()
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        mambaout.load_checkpoint(_fresh(), bad)
    st = tmp_path / "good.safetensors"
    save_file(femto.state_dict(), str(st))
    bad_st = tmp_path / "trunc.safetensors"
    bad_st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        mambaout.load_checkpoint(_fresh(), bad_st)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        mambaout.load_checkpoint(_fresh(), tmp_path / "nope.pth")


def test_other_variant_names_first_mismatching_key(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(_fresh("mambaout_tiny").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"'stem.conv1.weight' has shape \(48, 3, 3, 3\) in the "
                                              r"checkpoint but \(24, 3, 3, 3\)"):
        mambaout.load_checkpoint(_fresh("mambaout_femto"), path)
    kobe = tmp_path / "kobe.pth"
    torch.save(_fresh("mambaout_kobe").state_dict(), kobe)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        mambaout.load_checkpoint(_fresh("mambaout_femto"), kobe)


def test_not_a_mambaout_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        mambaout.load_checkpoint(_fresh(), path)


def test_class_count_mismatch_keeps_backbone_and_reinits_head(tmp_path, femto, caplog):
    path = tmp_path / "in1k.pth"
    torch.save(timm_to_official(femto.state_dict()), path)
    with caplog.at_level(logging.WARNING, logger="mambaout"):
        model = mambaout.create_model("mambaout_femto", num_classes=10, checkpoint_path=path).eval()
    assert "re-initialised the classifier" in caplog.text
    for k, v in femto.state_dict().items():
        if not k.startswith("head.fc."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.head.fc.weight.shape == (10, 4 * 288)
    with pytest.raises(CheckpointError, match="has 1000 classes, the model has 10"):
        mambaout.load_checkpoint(_fresh(num_classes=10), path, strict_classes=True)


def test_pretrained_offline_and_not_cached_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MAMBAOUT_WEIGHTS_DIR", str(tmp_path / "w"))
    with pytest.raises(CheckpointError) as e:
        mambaout.create_model("mambaout_femto", pretrained=True)
    msg = str(e.value)
    assert "https://huggingface.co/timm/mambaout_femto.in1k/resolve/main/model.safetensors" in msg
    assert str(tmp_path / "w" / "mambaout_femto.in1k.safetensors") in msg
    assert "\n" not in msg


def test_pretrained_from_local_weights_dir(tmp_path, monkeypatch, femto, x):
    monkeypatch.setenv("MAMBAOUT_WEIGHTS_DIR", str(tmp_path))
    save_file(femto.state_dict(), str(tmp_path / "mambaout_femto.in1k.safetensors"))
    model = mambaout.create_model("mambaout_femto", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(model(x), femto(x))
    fine = mambaout.create_model("mambaout_femto", pretrained=True, num_classes=4)
    assert torch.equal(fine.stem.conv1.weight, femto.stem.conv1.weight)
    gray = mambaout.create_model("mambaout_femto", pretrained=True, in_chans=1)
    assert torch.allclose(gray.stem.conv1.weight, femto.stem.conv1.weight.sum(1, keepdim=True))


def test_pretrained_from_hf_cache(tmp_path, monkeypatch, femto, x):
    """A file already in huggingface_hub's cache is used without any network access."""
    hf = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("MAMBAOUT_WEIGHTS_DIR", str(tmp_path / "empty"))
    cache = tmp_path / "hub"
    snap = cache / "models--timm--mambaout_femto.in1k" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file(femto.state_dict(), str(snap / "model.safetensors"))
    (cache / "models--timm--mambaout_femto.in1k" / "refs").mkdir()
    (cache / "models--timm--mambaout_femto.in1k" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf.constants, "HF_HUB_CACHE", str(cache), raising=False)
    real = hf.hf_hub_download
    monkeypatch.setattr(hf, "hf_hub_download", lambda *a, **k: real(*a, cache_dir=str(cache), **k))
    model = mambaout.create_model("mambaout_femto", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(model(x), femto(x))
