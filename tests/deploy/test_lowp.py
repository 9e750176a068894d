"""Low-precision CPU inference (issue 13): int8 ONNX export calibrated on images and validated,
the bf16/int8 benchmark rows with the ISA report, and one-line errors for missing extras."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from mambaout.deploy import benchmark as bench
from mambaout.cli import main


@pytest.fixture(scope="module")
def digits_ckpt(digits_checkpoint):
    return digits_checkpoint


def run_json(capsys, args):
    code = main(args + ["--json"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if code == 0 else None), cap.err


def _near_ties(checkpoint, margin):
    """How many digits val images have their two best logits within `margin` (as validate
    sees them: the checkpoint's evaluation transform)."""
    import torch
    from mambaout.tasks.classification.predict import load_for_inference
    from mambaout.data import DigitsDataset, eval_transform
    model, info = load_for_inference(checkpoint)
    cfg = model.pretrained_cfg
    tf = eval_transform(info["img_size"], info["crop_pct"], info["interpolation"], cfg["mean"], cfg["std"])
    images = torch.stack([img for img, _ in DigitsDataset("val", info["img_size"], tf)])
    with torch.no_grad():
        top2 = model(images).topk(2, dim=1).values
    return int((top2[:, 0] - top2[:, 1] <= margin).sum())


def test_int8_export_validates_close_to_fp32(digits_ckpt, tmp_path, capsys):
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    code, r, err = run_json(capsys, ["export", "mambaout_femto", "--checkpoint", str(digits_ckpt), "--format", "onnx",
                                     "-o", str(fp32)])
    assert code == 0, err
    code, r, err = run_json(capsys, ["export", "mambaout_femto", "--checkpoint", str(digits_ckpt), "--format", "onnx",
                                     "--quantize", "int8", "-o", str(int8)])
    assert code == 0, err
    assert r["quantize"] == "int8" and r["calibration_images"] == 64 and r["fp32_max_abs_diff"] <= 1e-4
    assert r["int8_top1_agreement"] >= 0.95
    # the int8 file holds int8 weights and QDQ nodes, and is smaller
    import onnx
    proto = onnx.load(str(int8))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == [str(d) for d in range(10)] and "quantization" in meta
    results = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        code, results[name], err = run_json(capsys, ["validate", "--onnx", str(path), "-j", "0"])
        assert code == 0, err
    code, torch_r, err = run_json(capsys, ["validate", "--checkpoint", str(digits_ckpt), "-j", "0", "--device", "cpu"])
    # the fp32 file computes the checkpoint's logits within the export's parity bound (1e-4),
    # in another float order: only images whose two best logits are closer than twice that may
    # change their top-1 (usually none)
    near_ties = _near_ties(digits_ckpt, margin=2e-4)
    assert abs(results["fp32"]["top1"] - torch_r["top1"]) <= 100 * near_ties / 355
    assert results["fp32"]["images"] == results["int8"]["images"] == 355
    assert abs(results["int8"]["top1"] - results["fp32"]["top1"]) <= 1.0, results
    assert results["int8"]["quantization"] and results["fp32"]["quantization"] is None
    # predict through the int8 file uses the checkpoint's class names
    img = tmp_path / "d.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(img)
    code, p, _ = run_json(capsys, ["predict", str(img), "--onnx", str(int8)])
    assert code == 0 and p["predictions"][0]["topk"][0]["label"] in [str(d) for d in range(10)]


def test_int8_calibration_folder(digits_ckpt, tmp_path, capsys, caplog):
    calib = tmp_path / "calib"
    for cls in ("a", "b"):
        (calib / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(
                calib / cls / f"{i}.png")
    (calib / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    code, r, err = run_json(capsys, ["export", "mambaout_femto", "--checkpoint", str(digits_ckpt), "--format", "onnx",
                                     "--quantize", "int8", "--calibration", str(calib), "-o", str(tmp_path / "q.onnx")])
    assert code == 0, err
    assert r["calibration_images"] == 10 and r["calibration"] == str(calib)
    assert "skipped 1 unreadable calibration images" in caplog.text


@pytest.mark.parametrize("extra, needle", [
    (["--quantize", "int8", "--calibration", "/nonexistent/folder"], "calibration folder not found"),
    (["--quantize", "int8", "--calibration", "EMPTY"], "no images in calibration folder"),
    (["--quantize", "int8", "--calibration-images", "0"], "--calibration-images must be positive"),
    (["--quantize", "int4"], "invalid choice: 'int4'"),
])
def test_int8_export_errors_are_one_line(digits_ckpt, tmp_path, capsys, extra, needle):
    extra = [str(tmp_path) if e == "EMPTY" else e for e in extra]
    code = main(["export", "mambaout_femto", "--checkpoint", str(digits_ckpt), "--format", "onnx",
                 "-o", str(tmp_path / "x.onnx"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_needs_onnx_format(tmp_path, capsys):
    code = main(["export", "mambaout_femto", "--format", "torchscript", "--quantize", "int8", "-o", str(tmp_path / "x")])
    assert code == 2 and "--quantize int8 needs --format onnx" in capsys.readouterr().err


@pytest.mark.parametrize("module, args", [
    ("onnx", ["export", "mambaout_femto", "--format", "onnx", "-o", "OUT"]),
    ("onnxruntime", ["validate", "--onnx", "OUT"]),
    ("onnxruntime", ["export", "mambaout_femto", "--format", "onnx", "--quantize", "int8", "-o", "OUT"]),
])
def test_missing_optional_dependency_is_one_line(monkeypatch, tmp_path, capsys, module, args):
    monkeypatch.setitem(sys.modules, module, None)
    code = main([str(tmp_path / "x.onnx") if a == "OUT" else a for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"needs the {module} package: pip install 'mambaout[export]'" in err


def test_validate_onnx_rejects_torch_flags(tmp_path, capsys):
    assert main(["validate", "--onnx", str(tmp_path / "x.onnx"), "--model", "mambaout_femto"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["validate", "--onnx", str(tmp_path / "x.onnx"), "--bf16"]) == 2
    assert "apply to PyTorch models" in capsys.readouterr().err


def test_validate_bf16_weights_and_autocast(digits_ckpt, capsys):
    common = ["validate", "--checkpoint", str(digits_ckpt), "-j", "0", "--device", "cpu"]
    runs = {}
    for name, extra in (("fp32", []), ("bf16", ["--bf16"]), ("autocast", ["--amp"])):
        code, runs[name], err = run_json(capsys, common + extra)
        assert code == 0, err
    assert [runs[k]["precision"] for k in runs] == ["fp32", "bf16", "bf16-autocast"]
    for k in ("bf16", "autocast"):
        assert abs(runs[k]["top1"] - runs["fp32"]["top1"]) <= 1.0 and runs[k]["images"] == 355
        assert runs[k]["loss"] == pytest.approx(runs["fp32"]["loss"], rel=0.05)
    assert main(common + ["--bf16", "--amp"]) == 2
    assert "pick one" in capsys.readouterr().err


# ---- benchmark ---------------------------------------------------------------------------------------

def test_benchmark_bf16_rows(capsys):
    code = main(["benchmark", "--model", "mambaout_femto", "--compare", "timm", "--precision", "bf16",
                 "-b", "2", "--img-size", "64", "--repeats", "1", "--warmup", "1"])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[1].startswith("CPU ISA: AVX2 ") and out.splitlines()[2].startswith("Allocator: ")
    assert "ours at bf16:" in out and "x ours in fp32" in out
    assert "GEMM peak measured here: bf16 " in out and "fp32 " in out and "bf16 / fp32 = " in out
    code, records, _ = run_json(capsys, ["benchmark", "--model", "mambaout_femto", "--compare", "timm", "--precision",
                                         "bf16", "-b", "2", "--img-size", "64", "--repeats", "1", "--warmup", "1"])
    rows = {r["impl"]: r["row_precision"] for r in records}
    assert rows == {"mambaout": "bf16", "mambaout:fp32": "fp32", "mambaout:autocast": "bf16-autocast",
                    "timm": "bf16-autocast", "timm:convnext_tiny": "bf16-autocast"}
    ours = next(r for r in records if r["impl"] == "mambaout")
    assert {"ratio_vs_fp32", "ratio_vs_autocast", "ratio_vs_timm"} <= set(ours)
    assert ours["peak_source"] == "measured GEMM" and ours["peak_gflops"] > 0 and 0 < ours["mfu"]


def test_benchmark_int8_rows(capsys):
    code, records, err = run_json(capsys, ["benchmark", "--model", "mambaout_femto", "--compare", "timm", "--precision",
                                           "int8", "--backend", "onnxruntime", "-b", "2", "--img-size", "64",
                                           "--repeats", "1", "--warmup", "1"])
    assert code == 0, err
    assert {r["impl"]: r["row_precision"] for r in records} == {
        "mambaout": "int8", "mambaout:fp32": "fp32", "timm": "fp32", "timm:convnext_tiny": "fp32"}
    assert main(["benchmark", "--model", "mambaout_femto", "--precision", "int8"]) == 2
    assert "add --backend onnxruntime" in capsys.readouterr().err


def test_gemm_peak_takes_the_best_shape():
    small = bench.gemm_peak_gflops("fp32", repeats=1, shapes=((64, 32, 32),))
    both = bench.gemm_peak_gflops("fp32", repeats=1, shapes=((64, 32, 32), (512, 256, 256)))
    assert 0 < small < both    # a tiny GEMM is far below the machine's peak; the best shape counts


def test_allocator_report(monkeypatch):
    from mambaout.models import fast
    for k in ("LD_PRELOAD", "GLIBC_TUNABLES", *bench.MALLOC_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setitem(fast._MALLOC_NUDGE, "applied", False)
    assert bench.allocator() == "glibc malloc, default thresholds" and "docs/performance.md" in bench.allocator_line()
    monkeypatch.setitem(fast._MALLOC_NUDGE, "applied", True)
    assert "thresholds raised by mambaout" in bench.allocator() and "page faults" not in bench.allocator_line()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "33554432")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1073741824:glibc.rtld.nns=2")
    assert bench.allocator() == ("glibc malloc, MALLOC_MMAP_THRESHOLD_=33554432 "
                                 "glibc.malloc.trim_threshold=1073741824")
    assert "page faults" not in bench.allocator_line()
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert bench.allocator() == "jemalloc (LD_PRELOAD)"


def test_isa_report():
    isa = bench.cpu_isa()
    assert set(isa) == {"AVX2", "AVX-512", "AVX512_BF16", "AVX512_VNNI", "AMX", "torch_capability"}
    no_bf16 = dict(isa, AVX512_BF16=False, AMX=False)
    assert "no native bf16 here" in bench.isa_line(no_bf16)
    assert "no native bf16" not in bench.isa_line(dict(isa, AVX512_BF16=True))


def test_int8_bias_handling_is_exact(tmp_path):
    """Shared zero biases (a fresh model) get their own copies before quantization, so no int32
    bias is dequantized at run time; at load the int8 GEMMs take their bias adds into their
    epilogue, with outputs equal bit for bit to ONNX Runtime's own graph of the same file."""
    import onnx
    import onnxruntime as ort
    import torch
    from mambaout.deploy.export import export_onnx
    from mambaout.models.onnx import fold_gemm_biases, onnx_session, ort_int8_model
    from mambaout.models import create_model
    from mambaout.deploy.quantize import quantize_int8
    torch.manual_seed(0)
    model = create_model("mambaout_femto", num_classes=10).eval()
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(model, fp32, 64)
    rng = np.random.default_rng(0)
    quantize_int8(fp32, int8, [rng.standard_normal((4, 3, 64, 64)).astype(np.float32) for _ in range(2)])
    proto = onnx.load(str(int8))
    int32 = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    dq_of_bias = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32}
    readers = [n.op_type for n in proto.graph.node if set(n.input) & dq_of_bias]
    assert readers and set(readers) <= {"Conv", "Gemm"}, readers   # only the conv/Gemm own their int32 bias
    fused = onnx.load_from_string(ort_int8_model(int8, ort))
    counts = {op: sum(n.op_type == op for n in fused.graph.node) for op in ("MatMulIntegerToFloat", "Add")}
    with_bias = sum(len(n.input) == 7 for n in fused.graph.node if n.op_type == "MatMulIntegerToFloat")
    assert with_bias >= counts["MatMulIntegerToFloat"] // 2 and fold_gemm_biases(fused) == 0  # nothing left to fold
    x = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    plain = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    ours = onnx_session(int8).run(None, {"input": x})[0]
    # bit for bit, as both graphs do the same float operations in the same order: the same int8
    # kernel accumulates exactly in int32, then one fp32 multiply by the scales and one fp32 add
    # of the bias (in the GEMM's epilogue here, in an Add node there)
    np.testing.assert_array_equal(ours, plain)
    # an fp32 file is loaded as it is
    assert ort_int8_model(fp32, ort) is None
    np.testing.assert_allclose(onnx_session(fp32).run(None, {"input": x})[0], model(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-4)
