import json

import numpy as np
import pytest
import torch

import mambaout
from mambaout.cli import main
from mambaout.deploy.export import check_parity, export_onnx, export_torchscript
from mambaout.models.onnx import onnx_session

SMALL = dict(batch_size=2, img_size=64, warmup=1, repeats=2)


def test_benchmark_records_and_ratios(tmp_path, capsys):
    code = main(["benchmark", "--model", "mambaout_femto", "--compare", "timm", "--compare", "reference",
                 "--mode", "both", "-b", "2", "--img-size", "64", "--repeats", "2", "--warmup", "1",
                 "--json", "--csv", str(tmp_path / "b.csv"), "--plot", str(tmp_path / "b.png")])
    records = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {(r["impl"], r["mode"]) for r in records} == {
        (i, m) for i in ("mambaout", "timm", "timm:convnext_tiny", "reference") for m in ("infer", "train")}
    for r in records:
        assert r["img_per_s"] > 0 and r["step_ms"] > 0 and r["device"] == "cpu"
    for mode in ("infer", "train"):
        ours = next(r for r in records if r["impl"] == "mambaout" and r["mode"] == mode)
        timm_r = next(r for r in records if r["impl"] == "timm" and r["mode"] == mode)
        assert ours["ratio_vs_timm"] == pytest.approx(ours["img_per_s"] / timm_r["img_per_s"], rel=1e-2)
        assert "ratio_vs_convnext_tiny" in ours and "ratio_vs_reference" in ours
    assert ours["gmacs_per_img"] == pytest.approx(1.156 * (64 / 224) ** 2, rel=0.05)
    assert (tmp_path / "b.png").stat().st_size > 1000
    assert len((tmp_path / "b.csv").read_text().splitlines()) == 1 + len(records)


def test_benchmark_table_and_onnxruntime_backend(capsys):
    code = main(["benchmark", "--model", "mambaout_femto", "--compare", "timm", "--backend", "onnxruntime",
                 "-b", "2", "--img-size", "64", "--repeats", "1", "--warmup", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "backend onnxruntime" in out and "timm" in out and "x" in out


def test_benchmark_bad_input(capsys):
    assert main(["benchmark", "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["benchmark", "--model", "mambaout_femto", "--backend", "onnxruntime", "--mode", "train",
                 "-b", "2", "--img-size", "32"]) == 2
    assert "inference only" in capsys.readouterr().err
    assert main(["benchmark", "--device", "cuda", "--model", "mambaout_femto"]) == (
        0 if torch.cuda.is_available() else 2)


@pytest.mark.parametrize("name", ["mambaout_femto", "mambaout_small_rw"])
def test_onnx_export_parity_dynamic_batch_and_size(tmp_path, name):
    model = mambaout.create_model(name, depths=(1, 1, 2, 1), num_classes=7).eval()
    path = export_onnx(model, tmp_path / "m.onnx", 96)
    diff = check_parity(model, path, "onnx", sizes=((1, 96), (3, 96), (2, 64), (2, 131)))
    assert diff <= 1e-4
    sess = onnx_session(path)
    x = torch.randn(4, 3, 80, 112)
    out = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() <= 1e-4


def test_torchscript_export_parity(tmp_path):
    model = mambaout.create_model("mambaout_femto", num_classes=5).eval()
    path = export_torchscript(model, tmp_path / "m.pt", 64)
    assert check_parity(model, path, "torchscript", sizes=((1, 64), (3, 64), (2, 96))) <= 1e-4


def test_export_cli_and_predict_with_onnx(tmp_path, capsys):
    from PIL import Image
    from mambaout.engine.checkpoint import FORMAT, save
    model = mambaout.create_model("mambaout_femto", num_classes=3).eval()
    ck = tmp_path / "ck.pth"
    save({"format": FORMAT, "model": model.state_dict(), "model_name": "mambaout_femto", "num_classes": 3,
          "class_names": ["cat", "dog", "eel"], "img_size": 64, "recipe": {"crop_pct": 1.0},
          "optimizer": {}, "epoch": 1}, ck)
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "mambaout_femto", "--format", "onnx", "--checkpoint", str(ck), "-o", str(onnx_path),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["max_abs_diff"] <= 1e-4 and r["img_size"] == 64 and r["num_classes"] == 3
    imgs = []
    for i, c in enumerate([(200, 0, 0), (0, 200, 0)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (70, 50), c).save(p)
        imgs.append(str(p))
    assert main(["predict", *imgs, "--onnx", str(onnx_path), "--json", "--top-k", "3"]) == 0
    via_onnx = json.loads(capsys.readouterr().out)
    assert main(["predict", *imgs, "--checkpoint", str(ck), "--json", "--top-k", "3"]) == 0
    via_torch = json.loads(capsys.readouterr().out)
    for a, b in zip(via_onnx["predictions"], via_torch["predictions"]):
        # ONNX Runtime and PyTorch round in another order: each class's probability agrees within
        # the export's parity bound, and the order of classes whose probabilities are closer than
        # that (the random model's near-ties) is not compared
        pa, pb = ({t["label"]: t["prob"] for t in p["topk"]} for p in (a, b))
        assert set(pa) == set(pb) == {"cat", "dog", "eel"}
        assert all(pa[k] == pytest.approx(pb[k], abs=1e-4) for k in pb)
        for topk in (a["topk"], b["topk"]):
            assert [t["prob"] for t in topk] == sorted((t["prob"] for t in topk), reverse=True)
        first, second = b["topk"][0]["prob"], b["topk"][1]["prob"]
        if first - second > 2e-4:
            assert a["topk"][0]["label"] == b["topk"][0]["label"]
    assert main(["predict", imgs[0], "--onnx", str(tmp_path / "none.onnx")]) == 2
    assert "ONNX file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    assert main(["predict", imgs[0], "--onnx", str(bad)]) == 2
    assert "cannot load ONNX model" in capsys.readouterr().err


def test_export_errors(tmp_path, capsys):
    assert main(["export", "mambaout_nope", "--format", "onnx", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["export", "mambaout_femto", "--format", "tflite", "-o", "x"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["export", "mambaout_femto", "--format", "onnx", "--checkpoint", str(tmp_path / "no.pth"),
                 "-o", str(tmp_path / "x.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
