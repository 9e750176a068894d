"""The benchmark's limit (the model's GEMMs alone at their own shapes) and the OpenVINO backend
(issue 26): shapes counted as our inference plan runs them, the bound reported per row, OpenVINO's
outputs equal to PyTorch's, and one-line errors for a missing extra and misused flags."""
import json
import sys

import numpy as np
import pytest
import torch

import mambaout
from mambaout.cli import main
from mambaout.deploy import benchmark as bench

SMALL = ["--model", "mambaout_femto", "-b", "2", "--img-size", "64", "--repeats", "1", "--warmup", "1"]


def run_json(capsys, args):
    code = main(args + ["--json"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if code == 0 else None), cap.err


def test_model_gemms_follow_the_inference_plan():
    model = mambaout.create_model("mambaout_femto").eval()
    gemms = bench.model_gemms(model, img_size=64, batch_size=3)
    expected = {}
    for i, stage in enumerate(model.stages):
        rows = 3 * (64 // (4 * 2 ** i)) ** 2             # stage i at stride 4 * 2^i of 64 px, batch 3
        for blk in stage.blocks:
            hidden, ident, cc = blk.split_indices
            c = blk.norm.normalized_shape[0]
            # gate + identity (C -> ident), gate + conv branch (C -> cc), fc2's two halves
            for k, n in ((c, ident), (c, ident), (c, cc), (c, cc), (ident, c), (cc, c)):
                expected[(rows, k, n)] = expected.get((rows, k, n), 0) + 1
    for lin in (m for m in model.head.modules() if isinstance(m, torch.nn.Linear)):  # once per image
        expected[(3, lin.in_features, lin.out_features)] = 1
    assert gemms == expected


def test_model_gemms_of_other_implementations():
    """timm's MambaOut runs the same products (its blocks carry the same split); another model's GEMMs
    are its linear layers."""
    timm = pytest.importorskip("timm")
    ours = bench.model_gemms(mambaout.create_model("mambaout_femto").eval(), img_size=64, batch_size=2)
    assert bench.model_gemms(timm.create_model("mambaout_femto").eval(), img_size=64, batch_size=2) == ours
    convnext = timm.create_model("convnext_atto", conv_mlp=False).eval()
    gemms = bench.model_gemms(convnext, img_size=64, batch_size=2)
    blk = convnext.stages[0].blocks[0]
    assert gemms[(2 * 16 * 16, blk.mlp.fc1.in_features, blk.mlp.fc1.out_features)] == len(convnext.stages[0].blocks)


def test_gemm_only_time_grows_with_the_work():
    one = bench.gemm_only_ms({(256, 64, 64): 1}, "fp32", repeats=3)
    many = bench.gemm_only_ms({(256, 64, 64): 1, (4096, 256, 256): 4}, "fp32", repeats=3)
    assert 0 < one < many


def test_benchmark_reports_the_gemm_only_bound(capsys):
    code = main(["benchmark", *SMALL, "--mode", "both"])
    out = capsys.readouterr().out
    assert code == 0 and "of GEMM-only" in out and "GEMM-only bound, mambaout_femto fp32:" in out
    code, records, err = run_json(capsys, ["benchmark", *SMALL, "--mode", "both"])
    assert code == 0, err
    infer = next(r for r in records if r["mode"] == "infer")
    train = next(r for r in records if r["mode"] == "train")
    assert infer["gemm_only_ms"] > 0 and infer["share_of_gemm_only"] == pytest.approx(
        infer["gemm_only_ms"] / infer["step_ms"], rel=0.02)
    assert infer["gemm_only_img_per_s"] == pytest.approx(2000 / infer["gemm_only_ms"], rel=0.02)
    assert infer["share_of_dense_only"] == pytest.approx(
        (infer["gemm_only_ms"] + infer["dense_convs_ms"]) / infer["step_ms"], rel=0.02)
    assert train["gemm_only_ms"] is None and train["share_of_gemm_only"] is None


# ---- OpenVINO ----------------------------------------------------------------------------------------

def test_openvino_runs_our_export_like_pytorch(tmp_path):
    pytest.importorskip("openvino")
    from mambaout.deploy.export import export_onnx
    from mambaout.models.openvino import openvino_runner
    model = mambaout.create_model("mambaout_femto", num_classes=7).eval()
    path = tmp_path / "femto.onnx"
    export_onnx(model, path, 64)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    out = openvino_runner(path, "fp32", threads=1)(x.numpy())
    assert out.shape == (3, 7)
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-3)


SIGNAL_STACK_PROBE = """
import gc, signal, subprocess, sys
signal.signal(signal.SIGCHLD, lambda *a: None)      # as a DataLoader with workers leaves it
from mambaout.models.openvino import openvino_compile
first, second = openvino_compile(sys.argv[1]), openvino_compile(sys.argv[1])
del first; gc.collect()                              # freed in the order they were made
del second; gc.collect()
junk = [bytearray(2**20) for _ in range(64)]         # reuse what OpenVINO freed
print([subprocess.run(["true"]).returncode for _ in range(3)])   # each child's exit raises SIGCHLD
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack")
def test_openvino_models_freed_in_any_order_keep_signals_safe(tmp_path):
    """OpenVINO 2026.4 leaves a freed alternate signal stack installed when two compiled models are
    freed in creation order; the next handled signal then segfaulted the process (the full test suite
    crashed here). openvino_compile keeps the process's own stack."""
    pytest.importorskip("openvino")
    import subprocess
    from mambaout.deploy.export import export_onnx
    path = tmp_path / "femto.onnx"
    export_onnx(mambaout.create_model("mambaout_femto").eval(), path, 64)
    out = subprocess.run([sys.executable, "-X", "faulthandler", "-c", SIGNAL_STACK_PROBE, str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == "[0, 0, 0]"


@pytest.mark.parametrize("precision, rows", [
    ("fp32", {"mambaout": "fp32", "timm": "fp32", "timm:convnext_tiny": "fp32"}),
    ("int8", {"mambaout": "int8", "mambaout:fp32": "fp32", "timm": "fp32", "timm:convnext_tiny": "fp32"}),
])
def test_benchmark_openvino_backend(capsys, precision, rows):
    pytest.importorskip("openvino")
    code, records, err = run_json(capsys, ["benchmark", *SMALL, "--compare", "timm", "--backend", "openvino",
                                           "--precision", precision])
    assert code == 0, err
    assert {r["impl"]: r["row_precision"] for r in records} == rows
    assert {r["backend"] for r in records} == {"openvino"} and all(r["img_per_s"] > 0 for r in records)


def test_benchmark_compare_openvino_beside_torch(capsys):
    pytest.importorskip("openvino")
    code, records, err = run_json(capsys, ["benchmark", *SMALL, "--compare", "openvino"])
    assert code == 0, err
    assert {(r["impl"], r["backend"], r["row_precision"]) for r in records} == {
        ("mambaout", "torch", "fp32"), ("openvino", "openvino", "fp32")}
    ours = next(r for r in records if r["impl"] == "mambaout")
    assert ours["ratio_vs_openvino"] > 0
    code = main(["benchmark", *SMALL, "--compare", "openvino"])
    assert code == 0 and "fp32 openvino" in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    (["--compare", "openvino", "--backend", "onnxruntime"], "--compare openvino adds ours through OpenVINO"),
    (["--compare", "openvino", "--mode", "train"], "--compare openvino adds ours through OpenVINO"),
    (["--backend", "openvino", "--precision", "fp16"], "the openvino backend measures fp32, bf16 and int8"),
    (["--backend", "openvino", "--mode", "train"], "the openvino backend measures CPU inference only"),
    (["--precision", "int8"], "add --backend onnxruntime or --backend openvino"),
])
def test_benchmark_openvino_misuse_is_one_line(capsys, args, needle):
    code = main(["benchmark", *SMALL, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_missing_openvino_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    code = main(["benchmark", *SMALL, "--backend", "openvino"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "the OpenVINO backend needs the openvino package: pip install 'mambaout[openvino]'" in err


def test_openvino_rejects_a_corrupt_file(tmp_path):
    pytest.importorskip("openvino")
    from mambaout.errors import MambaOutError
    from mambaout.models.openvino import openvino_compile
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(MambaOutError, match="OpenVINO cannot compile"):
        openvino_compile(bad, "fp32")
    with pytest.raises(MambaOutError, match="not found"):
        openvino_compile(tmp_path / "missing.onnx", "fp32")
    with pytest.raises(MambaOutError, match="precision must be one of"):
        openvino_compile(bad, "fp16")


def test_dense_convs_are_the_stem_and_downsampling():
    model = mambaout.create_model("mambaout_femto").eval()
    convs = bench.model_dense_convs(model, img_size=64, batch_size=2)
    dense = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    assert sum(convs.values()) == len(dense) == 2 + 3          # stem conv1, conv2; three downsamplings
    first = (2, 3, 64, 64, model.stem.conv1.out_channels, model.stem.conv1.kernel_size,
             model.stem.conv1.stride, model.stem.conv1.padding)
    assert convs[first] == 1
    assert bench.conv_only_ms(convs, "fp32", repeats=1) > 0


# ---- glibc's malloc thresholds ------------------------------------------------------------------------

NUDGE_PROBE = """
import sys, torch, mambaout
from mambaout.models.fast import malloc_thresholds_raised
model = mambaout.create_model("mambaout_femto").eval()
x = torch.randn(2, 3, 64, 64)
model(x).sum().backward()                      # training: no nudge
before = malloc_thresholds_raised()
with torch.no_grad():
    model(x)                                   # the first CPU inference forward
print(before, malloc_thresholds_raised())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's thresholds")
@pytest.mark.parametrize("env, expected", [({}, "False True"), ({"MAMBAOUT_MALLOC_NUDGE": "0"}, "False False")])
def test_first_cpu_inference_raises_malloc_thresholds_once(env, expected):
    import os
    import platform
    import subprocess
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    out = subprocess.run([sys.executable, "-c", NUDGE_PROBE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == expected.split()
