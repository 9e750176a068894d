"""`mambaout study` end to end on the digits set, and CIFAR folders as training data."""
import csv
import json
import pickle

import numpy as np
import pytest

from mambaout import cli
from mambaout.data import CifarDataset, build_datasets
from mambaout.errors import MambaOutError
from mambaout.analysis.study import Study, model_for, summarize


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_study_two_mixers_one_seed_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "study"
    code, out, err = run(capsys, "study", "--mixers", "conv", "attn", "--seeds", "0", "--epochs", "1",
                         "--no-progress", "-j", "0", "-o", str(out_dir))
    assert code == 0, err
    assert "study_conv_d64" in out and "study_attn_d64" in out and "+-" in out
    for name in ("runs.csv", "summary.csv", "study.png"):
        assert (out_dir / name).stat().st_size > 0
    rows = list(csv.DictReader(open(out_dir / "runs.csv")))
    assert [r["model"] for r in rows] == ["study_conv_d64", "study_attn_d64"]
    assert all(0 <= float(r["best_top1"]) <= 100 for r in rows)
    summary = list(csv.DictReader(open(out_dir / "summary.csv")))
    assert summary[0]["paper_cifar10"] == "79.8"
    # Starting the same sweep again reuses the finished runs instead of training again.
    code, out2, _ = run(capsys, "study", "--mixers", "conv", "attn", "--epochs", "1", "--no-progress",
                        "-j", "0", "-o", str(out_dir))
    assert code == 0 and out2.count("finished earlier") == 2


def test_summary_mean_and_std_over_seeds():
    rows = [dict(model="study_ssm_d64", seed=s, best_top1=a, params=1, macs=2)
            for s, a in enumerate((70.0, 72.0, 74.0))]
    (s,) = summarize(rows)
    assert s["top1_mean"] == pytest.approx(72.0) and s["top1_std"] == pytest.approx(2.0)
    assert s["mixer"] == "ssm" and s["seeds"] == 3 and s["paper_cifar100"] == 47.0


@pytest.mark.parametrize("argv, message", [
    (["--mixers", "mamba"], "unknown mixer"),
    (["--dim", "100"], "--dim must be one of"),
    (["--data", "/no/such/dir"], "not found"),
    (["--mixers", "conv", "conv"], "listed twice"),
    (["--epochs", "0"], "must be positive"),
])
def test_study_bad_input_one_line(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "study", "-o", str(tmp_path / "s"), *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_model_for():
    assert model_for("ssm_bi", 192) == "study_ssm_bi_d192"
    assert model_for("vit_tiny_p16", 64) == "vit_tiny_p16"


def write_cifar(root, n=6, classes=10, corrupt=None, evil=False):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(t) for t in rng.integers(0, classes, n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    if corrupt:
        (folder / corrupt).write_bytes((folder / corrupt).read_bytes()[:100])
    if evil:
        class Evil:
            def __reduce__(self):
                import os
                return (os.system, ("echo pwned",))
        (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    return folder


def test_cifar_folder_loads_from_parent_or_itself(tmp_path):
    folder = write_cifar(tmp_path)
    for root in (tmp_path, folder):
        train, val, classes = build_datasets(str(root), 32)
        assert (len(train), len(val), len(classes)) == (30, 6, 10)
        img, label = train[0]
        assert img.size == (32, 32) and img.mode == "RGB" and 0 <= label < 10
    # Pixel layout: CIFAR rows are 1024 R, then G, then B values of a 32x32 image.
    raw = pickle.loads((folder / "data_batch_1").read_bytes())["data"][0]
    assert np.array_equal(np.asarray(train[0][0]), raw.reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar_damaged_or_malicious_files_fail_cleanly(tmp_path):
    with pytest.raises(MambaOutError, match="cannot read CIFAR file"):
        CifarDataset(write_cifar(tmp_path / "a", corrupt="data_batch_3"), "train")
    with pytest.raises(MambaOutError, match="refusing to load"):
        CifarDataset(write_cifar(tmp_path / "b", evil=True), "val")
    with pytest.raises(MambaOutError, match="labels outside"):
        CifarDataset(write_cifar(tmp_path / "c", classes=12), "train")
    folder = write_cifar(tmp_path / "d")
    (folder / "data_batch_5").unlink()
    with pytest.raises(MambaOutError, match="missing"):
        CifarDataset(folder, "train")


def test_train_command_accepts_a_cifar_folder(tmp_path, capsys):
    write_cifar(tmp_path / "data", n=40)
    code, out, err = run(capsys, "train", "--model", "study_conv_d64", "--data", str(tmp_path / "data"),
                         "--epochs", "1", "-b", "16", "--no-progress", "-j", "0",
                         "--output", str(tmp_path / "run"))
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_images"] == 200 and summary["val_images"] == 40 and summary["num_classes"] == 10


def test_table_models_bad_sizes_are_one_line_errors(capsys):
    code, _, err = run(capsys, "complexity", "study_conv_d64", "--img-size", "30")
    assert code == 2 and "not divisible by patch_size" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "complexity", "vit_tiny_p16", "--img-size", "384", "--json")
    assert code == 0 and json.loads(out)["img_size"] == 384
    code, _, err = run(capsys, "benchmark", "--model", "study_conv_d64", "--compare", "timm")
    assert code == 2 and "timm has no study_conv_d64" in err


def test_study_model_exports_at_its_fixed_size(tmp_path):
    from mambaout.deploy.export import export
    r = export("study_attn_causal_d64", "onnx", tmp_path / "s.onnx")
    assert r["img_size"] == 32 and r["dynamic_size"] is False and r["max_abs_diff"] <= 1e-4
