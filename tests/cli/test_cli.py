"""The CLI answers bad input with one clear line and a non-zero exit."""
import json
import subprocess
import sys

import pytest
import torch

import mambaout
from mambaout.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_models_table(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    for name in mambaout.list_models():
        assert name in out
    tiny = next(l for l in out.splitlines() if l.startswith("mambaout_tiny "))
    assert "26.5    26.5" in tiny and "4.5      4.5" in tiny and "82.7" in tiny


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "*femto*", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 1
    assert rows[0]["params_m"] == 7.3 and rows[0]["macs_g"] == 1.2 and rows[0]["macs"] == 1156177152


def test_models_paper_has_every_table_and_comparator(capsys):
    """`models --paper`: each of the paper's tables with every model it cites, the paper's
    numbers beside ours; every model is built (the video models' MACs are of Table 10's 6 views)."""
    from mambaout.models.paper_tables import PAPER_TABLES
    code, out, _ = run(capsys, "models", "--paper", "--json")
    rows = json.loads(out)
    assert code == 0
    assert [(r["table"], r["model"]) for r in rows] == [(t.key, m) for t in PAPER_TABLES for m in t.models]
    assert all(r["built"] for r in rows)
    by = {(r["table"], r["model"]): r for r in rows}
    for name in ("vim_small", "local_vmamba_tiny", "local_vmamba_small", "efficient_vmamba_small", "illama_tiny",
                 "illama_tiny_causal", "vmamba_tiny"):
        assert any(r["model"] == name and r["built"] and r["params_m"] for r in rows), name
    assert by[("imagenet", "mambaout_tiny")]["paper_score"] == 82.7 and by[("imagenet", "mambaout_tiny")]["params_m"] == 26.5
    assert by[("table8", "study_conv_d64")]["paper_score"] == [79.8, 52.1]
    femto, ti = by[("table10", "mambaout_femto_video")], by[("table10", "videomamba_tiny")]
    assert (femto["paper_macs_g"], femto["macs_g"]) == (58, 58.3)
    assert (ti["paper_macs_g"], ti["macs_g"], ti["paper_convention_macs_g"]) == (54, 86.9, 51.6)
    assert by[("ade20k", "upernet_vmamba_tiny")]["paper_score"] == [47.3, 48.3]
    code, out, _ = run(capsys, "models", "--paper")
    assert code == 0 and "Table 11: causal vs fully visible" in out and "(not in mambaout yet)" not in out
    assert "--paper prints the paper" in one_error_line(run(capsys, "models", "--paper", "*tiny*")[2])


def test_complexity(capsys):
    code, out, _ = run(capsys, "complexity", "mambaout_small", "--json")
    m = json.loads(out)
    assert code == 0 and m["params_m"] == 48.5 and m["macs_g"] == 9.0
    code, out, _ = run(capsys, "complexity", "mambaout_femto", "--img-size", "160")
    assert code == 0 and "160x160" in out


@pytest.mark.parametrize("argv,needle", [
    (["complexity", "mambaout_tiy"], "did you mean mambaout_tiny"),
    (["complexity", "resnet50"], "unknown model 'resnet50'"),
    (["complexity", "mambaout_tiny", "--img-size", "0"], "--img-size must be positive"),
    (["complexity", "mambaout_tiny", "--img-size", "big"], "invalid int value"),
    (["complexity"], "required"),
    (["frobnicate"], "invalid choice"),
    (["convert", "mambaout_femto", "--checkpoint", "/no/such/file.pth", "-o", "x.safetensors"],
     "checkpoint not found: /no/such/file.pth"),
])
def test_bad_input_one_line(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in one_error_line(err)


def test_convert_roundtrip_and_errors(tmp_path, capsys):
    from helpers import timm_to_official
    src = mambaout.create_model("mambaout_femto").eval()
    official = tmp_path / "mambaout_femto.pth"
    torch.save({"model": timm_to_official(src.state_dict())}, official)
    out = tmp_path / "out.safetensors"
    code, stdout, _ = run(capsys, "convert", "mambaout_femto", "--checkpoint", str(official), "-o", str(out))
    assert code == 0 and out.exists()
    back = mambaout.create_model("mambaout_femto", checkpoint_path=out).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), src(x))

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02garbage")
    code, _, err = run(capsys, "convert", "mambaout_femto", "--checkpoint", str(corrupt), "-o", str(out))
    assert code == 2 and "cannot read checkpoint" in one_error_line(err)

    code, _, err = run(capsys, "convert", "mambaout_tiny", "--checkpoint", str(official), "-o", str(out))
    line = one_error_line(err)
    assert code == 2 and "'stem.conv1.weight' has shape (24, 3, 3, 3) in the checkpoint but (48, 3, 3, 3)" in line
    # the earlier good output was not damaged by the failed conversions
    assert mambaout.create_model("mambaout_femto", checkpoint_path=out) is not None


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "mambaout", "complexity", "mambaout_femto", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["params"] == 7304536
    r = subprocess.run([sys.executable, "-m", "mambaout", "complexity", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown model" in r.stderr


@pytest.mark.parametrize("offline_env", ["flag", "unreachable"])
def test_pretrained_offline_is_one_line(tmp_path, capsys, monkeypatch, offline_env):
    from PIL import Image
    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(img)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MAMBAOUT_WEIGHTS_DIR", str(tmp_path / "w"))
    if offline_env == "unreachable":
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code, _, err = run(capsys, "predict", str(img), "--model", "mambaout_femto", "--pretrained")
    assert code == 2
    assert "mambaout_femto.in1k/resolve/main/model.safetensors" in one_error_line(err)


def test_closed_pipe_is_no_traceback():
    """`mambaout models | head -1`: the reader has left; the command ends quietly (141)."""
    import os
    read_end, write_end = os.pipe()
    os.close(read_end)                        # every write of the command meets a closed pipe
    try:
        for buffering in ("1", ""):           # unbuffered: the first print fails; buffered: the flush
            r = subprocess.run([sys.executable, "-m", "mambaout", "models"], stdout=write_end, stderr=subprocess.PIPE,
                               text=True, timeout=120, env=dict(os.environ, PYTHONUNBUFFERED=buffering))
            assert r.returncode == 141 and r.stderr == "", r.stderr
    finally:
        os.close(write_end)
