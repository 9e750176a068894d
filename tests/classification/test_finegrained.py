"""The five fine-grained datasets of Table 9 as they ship (fake copies written by
tests/finegrained_sets.py), the finegrained recipe, and `mambaout transfer`."""
import csv
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finegrained_sets import BANNER, WRITERS, write_all, write_cub  # noqa: E402

from mambaout.cli import main  # noqa: E402
from mambaout.data import build_datasets, eval_dataset, recipe_transforms  # noqa: E402
from mambaout.data.finegrained import LAYOUTS, LayoutError, find_layout, open_split  # noqa: E402
from mambaout.errors import MambaOutError  # noqa: E402
from mambaout.recipe import finegrained_recipe  # noqa: E402
from mambaout.tasks.classification.train import RunOptions, train  # noqa: E402


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("finegrained"))


def _copy(fs, tmp_path):
    dst = tmp_path / fs.path.name
    shutil.copytree(fs.path, dst)
    return dst


# ---- readers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(WRITERS))
def test_each_split_has_its_size_and_the_dataset_class_names(sets, name):
    fs = sets[name]
    layout, folder = find_layout(fs.path)
    assert layout.name == name and folder == fs.path
    assert set(layout.splits) == set(fs.listed)
    for split in layout.splits:
        ds = open_split(folder, layout, split)
        assert ds.classes == fs.classes
        assert len(ds) == fs.listed[split]                       # what the split file lists
        readable = sum(ds[i] is not None for i in range(len(ds)))  # a missing file is skipped (None)
        assert readable == fs.sizes[split]
        assert set(ds.targets) == set(range(len(fs.classes)))


def test_layouts_are_found_from_a_parent_folder_and_by_name(sets):
    root = sets["cub"].path.parent
    with pytest.raises(MambaOutError, match="holds several fine-grained datasets .*pass --dataset NAME"):
        find_layout(root)
    for name, fs in sets.items():
        layout, folder = find_layout(root, name)
        assert (layout.name, folder) == (name, fs.path)
    train_set, val_set, classes = build_datasets(str(root), 32, dataset="pets")
    assert classes == sets["pets"].classes and len(val_set) == sets["pets"].listed["test"]


def test_the_protocol_trains_on_train_or_trainval_and_evaluates_on_test(sets):
    for name, fs in sets.items():
        train_set, val_set, classes = build_datasets(str(fs.path), 32)
        layout = LAYOUTS[name]
        assert len(train_set) == fs.listed[layout.train_split] and len(val_set) == fs.listed["test"]
    assert LAYOUTS["pets"].train_split == LAYOUTS["aircraft"].train_split == "trainval"


def test_aircraft_images_lose_exactly_their_bottom_20_rows(sets):
    fs = sets["aircraft"]
    ds = open_split(fs.path, LAYOUTS["aircraft"], "test")
    for i in range(len(ds)):
        raw = Image.open(ds.samples[i][0]).convert("RGB")
        img = ds.read(i)
        assert img.size == (raw.width, raw.height - BANNER)
        assert np.array_equal(np.asarray(img), np.asarray(raw)[:-BANNER])
    # the banner is what went: the kept rows are the class colour, not near-black
    assert np.asarray(ds.read(0)).mean() > np.asarray(Image.open(ds.samples[0][0]).convert("RGB"))[-BANNER:].mean() + 50


def test_pets_reads_through_header_lines_and_non_jpeg_files(sets):
    fs = sets["pets"]
    assert (fs.path / "annotations" / "list.txt").read_text().startswith("#")
    ds = open_split(fs.path, LAYOUTS["pets"], "trainval")
    kinds = {Image.open(p).format for p, _ in ds.samples if Path(p).exists()}
    assert "PNG" in kinds                                    # PNGs saved as .jpg are read by content
    assert all(ds[i] is None or ds[i][0].mode == "RGB" for i in range(len(ds)))


def test_an_entry_contradicting_its_class_folder_is_left_out(sets, tmp_path):
    root = _copy(sets["dogs"], tmp_path)
    mat = scipy.io.loadmat(root / "train_list.mat")
    labels = mat["labels"].copy()
    labels[0, 0] = 2 if labels[0, 0] != 2 else 3            # the first image now claims another breed
    scipy.io.savemat(root / "train_list.mat", {"file_list": mat["file_list"], "annotation_list": mat["annotation_list"],
                                                "labels": labels})
    ds = open_split(root, LAYOUTS["dogs"], "train")
    assert len(ds) == sets["dogs"].listed["train"] - 1


# ---- wrong or partial layouts: one line naming the file (and the line) ------------------------

def _break(root: Path, name: str, how: str):
    if name == "cub" and how == "missing":
        (root / "train_test_split.txt").unlink()
        return "train_test_split.txt: missing"
    if name == "cub":
        f = root / "image_class_labels.txt"
        lines = f.read_text().splitlines()
        lines[2] = lines[2].split()[0] + " 201"
        f.write_text("\n".join(lines) + "\n")
        return "image_class_labels.txt:3: class id 201 outside 1..3"
    if name == "pets" and how == "missing":
        (root / "annotations" / "trainval.txt").unlink()
        return "trainval.txt: missing"
    if name == "pets":
        f = root / "annotations" / "trainval.txt"
        lines = f.read_text().splitlines()
        parts = lines[1].split()
        lines[1] = " ".join([parts[0], "38", *parts[2:]])
        f.write_text("\n".join(lines) + "\n")
        return "trainval.txt:2: class id 38 outside 1..3"
    if name == "aircraft" and how == "missing":
        (root / "data" / "images_variant_trainval.txt").unlink()
        return "images_variant_trainval.txt: missing"
    if name == "aircraft":
        f = root / "data" / "images_variant_trainval.txt"
        lines = f.read_text().splitlines()
        lines[3] = lines[3].split()[0] + " F-35X"
        f.write_text("\n".join(lines) + "\n")
        return "images_variant_trainval.txt:4: variant 'F-35X' is not in variants.txt"
    if name == "dogs" and how == "missing":
        (root / "test_list.mat").unlink()
        return "test_list.mat: missing"
    if name == "dogs":
        mat = scipy.io.loadmat(root / "train_list.mat")
        labels = mat["labels"].copy()
        labels[4, 0] = 121
        scipy.io.savemat(root / "train_list.mat", dict(file_list=mat["file_list"],
                                                       annotation_list=mat["annotation_list"], labels=labels))
        return "train_list.mat:5: class id 121 outside 1..3"
    if how == "missing":
        (root / "cars_test_annos_withlabels.mat").unlink()
        return "cars_test_annos_withlabels.mat: missing"
    f = root / "devkit" / "cars_train_annos.mat"
    annos = scipy.io.loadmat(f)["annotations"]
    annos[0, 1]["class"] = np.array([[197]], dtype=np.uint8)
    scipy.io.savemat(f, {"annotations": annos})
    return "cars_train_annos.mat:2: class id 197 outside 1..3"


@pytest.mark.parametrize("how", ["missing", "out_of_range"])
@pytest.mark.parametrize("name", list(WRITERS))
def test_a_wrong_or_partial_layout_is_one_line_naming_the_file(sets, tmp_path, capsys, name, how):
    root = _copy(sets[name], tmp_path)
    expected = _break(root, name, how)
    with pytest.raises(LayoutError) as e:
        build_datasets(str(root), 32)
    assert expected in str(e.value) and "\n" not in str(e.value)
    code = main(["train", "--data", str(root), "--recipe", "finegrained", "--model", "mambaout_femto", "--epochs", "1",
                 "-j", "0", "--output", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mambaout: error: ") and expected in err[-1]
    assert "Traceback" not in "\n".join(err) and not (tmp_path / "run" / "last.pth").exists()


def test_a_corrupt_mat_file_and_an_unknown_dataset_are_one_line(sets, tmp_path):
    root = _copy(sets["cars"], tmp_path)
    (root / "devkit" / "cars_meta.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(LayoutError, match="cars_meta.mat: cannot read the MATLAB file"):
        build_datasets(str(root), 32)
    with pytest.raises(MambaOutError, match="does not hold Stanford Dogs"):
        build_datasets(str(sets["cub"].path), 32, dataset="dogs")
    with pytest.raises(MambaOutError, match="unknown dataset 'birds'"):
        build_datasets(str(root), 32, dataset="birds")


def test_an_image_folder_may_name_its_eval_split_test(tmp_path):
    """The class-folder copy of Stanford Cars: car_data/car_data/{train,test}/<class>/*.jpg."""
    from imagesets import make_folder
    tree = tmp_path / "car_data" / "car_data"
    make_folder(tree, per_class=(4, 2))
    (tree / "val").rename(tree / "test")
    with pytest.raises(MambaOutError, match="no 'train' folder"):
        build_datasets(str(tmp_path), 32)
    train_set, val_set, classes = build_datasets(str(tmp_path), 32, dataset="cars")
    assert (len(train_set), len(val_set), classes) == (12, 6, ["blue", "green", "red"])
    train_set, val_set, _ = build_datasets(str(tree), 32)
    assert len(val_set) == 6
    from mambaout.data.sources import find_dataset
    assert find_dataset(tmp_path, "cars") == tree


# ---- the recipe ----------------------------------------------------------------------------------

def test_the_finegrained_recipe_is_mmpretrains_cub_recipe_at_224():
    r = finegrained_recipe()
    assert (r.opt, r.lr_base, r.lr_base_size, r.weight_decay, r.epochs, r.warmup_epochs) == ("sgd", 0.01, 64, 5e-4, 100, 5)
    assert r.warmup_lr == pytest.approx(0.01 * r.peak_lr()) and r.min_lr == 0   # at batch 64
    assert r.peak_lr() == pytest.approx(0.01)                   # batch 64 on one process
    assert (r.mixup, r.cutmix, r.auto_augment, r.reprob, r.smoothing) == (0, 0, None, 0, 0)
    train_tf, eval_tf = recipe_transforms(replace(r, img_size=224))
    from torchvision.transforms import RandomCrop, Resize
    resize = next(t for t in train_tf.transforms if isinstance(t, Resize))
    assert tuple(resize.size) == (256, 256) and any(isinstance(t, RandomCrop) for t in train_tf.transforms)
    # squash: a wide image keeps both of its ends in the centre crop
    img = Image.fromarray(np.concatenate([np.full((100, 100, 3), v, np.uint8) for v in (250, 128, 0)], 1))
    x = eval_tf(img)
    assert x.shape == (3, 224, 224)
    assert x[:, :, :20].mean() > 1 and x[:, :, -20:].mean() < -1
    center = recipe_transforms(replace(r, img_size=224, crop_mode="center"))[1](img)
    assert center[:, :, :20].mean() == pytest.approx(center[:, :, -20:].mean())  # the short-side resize: the middle only
    optimizer = torch.optim.SGD  # timm's "sgd" is Nesterov SGD with momentum 0.9
    from timm.optim import create_optimizer_v2
    opt = create_optimizer_v2(torch.nn.Linear(2, 2), opt=r.opt, lr=0.01, weight_decay=r.weight_decay)
    assert isinstance(opt, optimizer) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


# ---- training, evaluation and prediction on each layout ----------------------------------------

TINY = dict(model="mambaout_femto", img_size=32, batch_size=4, epochs=4, lr=0.005, warmup_epochs=0, drop_path=0.0)


@pytest.mark.parametrize("name", list(WRITERS))
def test_train_on_each_layout_lowers_the_loss_and_keeps_the_class_names(sets, tmp_path, name):
    fs = sets[name]
    out = tmp_path / "run"
    result = train(replace(finegrained_recipe(), **TINY),
                   RunOptions(data=str(fs.path), output=str(out), workers=0, progress=False), dataset=name)
    assert result.status == "finished"
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] == fs.listed[LAYOUTS[name].train_split]
    assert 1 <= summary["skipped_images"] <= TINY["epochs"]   # the one missing file, each epoch it is drawn
    ckpt = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    assert ckpt["class_names"] == fs.classes
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert last["data_source"] == {"data": str(fs.path.resolve()), "dataset": name}


def test_validate_predict_and_resume_use_the_layout(sets, tmp_path, capsys):
    fs = sets["aircraft"]
    out = tmp_path / "run"
    args = ["train", "--data", str(fs.path), "--recipe", "finegrained", "--model", "mambaout_femto", "--img-size", "32",
            "-b", "4", "--epochs", "2", "--lr", "0.005", "--warmup-epochs", "0", "--drop-path", "0", "-j", "0",
            "--no-progress", "--output", str(out)]
    assert main(args + ["--max-updates", "3"]) == 0
    assert main(["train", "--resume", str(out / "last.pth"), "-j", "0", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    capsys.readouterr()
    assert main(["validate", "--checkpoint", str(out / "best.pth"), "--data", str(fs.path.parent), "--json",
                 "-j", "0"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["split"], r["images"]) == ("test", fs.sizes["test"])
    assert main(["validate", "--checkpoint", str(out / "best.pth"), "--data", str(fs.path), "--split", "val",
                 "--json", "-j", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == fs.sizes["val"]
    assert main(["validate", "--checkpoint", str(out / "best.pth"), "--data", str(fs.path), "--split", "dev"]) == 2
    assert "has no split 'dev'" in capsys.readouterr().err
    # another dataset's classes are not the model's
    assert main(["validate", "--checkpoint", str(out / "best.pth"), "--data", str(sets["cub"].path)]) == 2
    assert "trained on other classes" in capsys.readouterr().err
    image = open_split(fs.path, LAYOUTS["aircraft"], "test").samples[0][0]
    assert main(["predict", "--checkpoint", str(out / "best.pth"), image, "--json"]) == 0
    labels = [t["label"] for t in json.loads(capsys.readouterr().out)["predictions"][0]["topk"]]
    assert set(labels) == set(fs.classes)


# ---- mambaout transfer ---------------------------------------------------------------------------

def _transfer(root, out, *extra):
    return main(["transfer", "--root", str(root), "--datasets", "cub", "pets", "--model", "mambaout_femto",
                 "--img-size", "32", "-b", "4", "--epochs", "2", "--lr", "0.005", "--warmup-epochs", "0",
                 "--drop-path", "0", "-j", "0", "--no-progress", "-o", str(out), *extra])


def test_transfer_writes_table9_and_resumes_after_an_interruption(sets, tmp_path, capsys):
    root, out = sets["cub"].path.parent, tmp_path / "transfer"
    assert _transfer(root, out, "--max-updates", "2") == 0           # stops inside the first run
    printed = capsys.readouterr().out
    assert "not finished: cub, pets" in printed
    assert json.loads((out / "cub" / "summary.json").read_text())["status"] == "stopped"
    assert not (out / "pets").exists()
    assert _transfer(root, out, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["dataset"], r["status"]) for r in report["rows"]] == [("cub", "resumed"), ("pets", "trained")]
    assert report["pending"] == [] and not report["complete"] and report["averaged"] == 2
    assert report["average"] == pytest.approx(sum(r["top1"] for r in report["rows"]) / 2)
    assert report["paper"]["MambaOut-Tiny"]["average"] == 92.8 and report["paper"]["VMamba-T"]["cub"] == 87.9
    for r in report["rows"]:
        assert json.loads((Path(r["run"]) / "summary.json").read_text())["epochs_run"] == 2
    rows = list(csv.DictReader(open(out / "table9.csv")))
    assert [r["dataset"] for r in rows] == ["CUB-200-2011", "Oxford-IIIT Pets", "Average (2 of 5)"]
    assert rows[0]["paper_mambaout_tiny"] == "88.0" and rows[1]["paper_vmamba_tiny"] == "94.8"
    # a third run skips both; a changed recipe is one line, not a silent new run
    assert _transfer(root, out) == 0
    text = capsys.readouterr().out
    assert text.count("finished earlier") == 2 and "Table 9" in text
    assert _transfer(root, out, "--lr", "0.1") == 2
    assert "cannot resume" in capsys.readouterr().err


def test_transfer_reports_what_it_cannot_find(sets, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["transfer", "--root", str(empty), "-o", str(tmp_path / "o")]) == 2
    assert "no fine-grained dataset under" in capsys.readouterr().err
    only_cub = tmp_path / "only"
    write_cub(only_cub)
    assert main(["transfer", "--root", str(only_cub), "--datasets", "cub", "dogs", "-o", str(tmp_path / "o")]) == 2
    assert "Stanford Dogs not found under" in capsys.readouterr().err
    assert main(["transfer", "--root", str(tmp_path / "nowhere")]) == 2
    assert main(["transfer", "--root", str(only_cub), "--datasets", "birds"]) == 2
    assert "invalid choice: 'birds'" in capsys.readouterr().err


def test_eval_dataset_defaults_to_the_split_training_validates_on(sets):
    from mambaout.data import eval_transform
    tf = eval_transform(32)
    ds, split = eval_dataset(str(sets["pets"].path), None, tf)
    assert split == "test" and len(ds) == sets["pets"].listed["test"]
    ds, split = eval_dataset(str(sets["pets"].path), "trainval", tf, classes=sets["pets"].classes)
    assert split == "trainval"


def test_an_error_deep_in_a_full_size_split_file_names_its_line_at_once(tmp_path):
    """CUB-200-2011's real counts (11,788 images, 200 classes): a bad class id on line 9,000 is
    found and named without reading any image."""
    root = tmp_path / "CUB_200_2011"
    root.mkdir()
    n, classes = 11788, 200
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, classes + 1)))
    (root / "images.txt").write_text("".join(f"{i} {(i % classes) + 1:03d}.Bird_{(i % classes) + 1}/b_{i}.jpg\n"
                                             for i in range(1, n + 1)))
    (root / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, n + 1)))
    labels = [f"{i} {(i % classes) + 1}" for i in range(1, n + 1)]
    labels[8999] = "9000 0"
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    with pytest.raises(LayoutError, match=r"image_class_labels.txt:9000: class id 0 outside 1..200"):
        build_datasets(str(root), 32)


def test_transfer_under_torchrun_runs_every_dataset_in_one_process_group(sets, tmp_path):
    """Two runs in one torchrun job: the process group outlives the first run (creating it again
    on torchrun's store fails), rank 0 alone writes and prints the table."""
    import subprocess
    from runs import ROOT, env1
    out = tmp_path / "t"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "mambaout", "transfer", "--root", str(sets["cub"].path.parent), "--datasets", "cub",
                        "pets", "--model", "mambaout_femto", "--img-size", "32", "-b", "2", "--epochs", "1",
                        "--warmup-epochs", "0", "--drop-path", "0", "-j", "0", "--no-progress", "--device", "cpu",
                        "-o", str(out), "--json"], env=env1(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert [row["status"] for row in report["rows"]] == ["trained", "trained"]
    assert json.loads((out / "pets" / "summary.json").read_text())["world_size"] == 2


def test_transfer_stopped_by_sigterm_resumes_when_run_again(sets, tmp_path):
    """A SIGTERM mid-run saves last.pth and writes the partial table; the same command again
    resumes that run (not restarts it) and trains the next dataset."""
    import signal
    import subprocess
    from runs import ROOT, _run_cli, _wait_steps, env1
    out = tmp_path / "t"
    args = ["transfer", "--root", str(sets["cub"].path.parent), "--datasets", "cub", "pets", "--model",
            "mambaout_femto", "--img-size", "32", "-b", "2", "--epochs", "3", "--warmup-epochs", "0", "--drop-path",
            "0", "-j", "0", "--no-progress", "-o", str(out), "--json"]
    p = _run_cli(args)
    _wait_steps(out / "cub", 2, p)
    p.send_signal(signal.SIGTERM)
    stdout, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    first = json.loads(stdout)
    assert [r["status"] for r in first["rows"]] == ["interrupted"] and first["pending"] == ["cub", "pets"]
    done_before = json.loads((out / "cub" / "summary.json").read_text())["global_step"]
    assert 2 <= done_before < 18
    r = subprocess.run([sys.executable, "-m", "mambaout", *args], env=env1(), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert [row["status"] for row in report["rows"]] == ["resumed", "trained"]
    steps = [int(line.split(",")[0]) for line in (out / "cub" / "steps.csv").read_text().splitlines()[1:]]
    total = json.loads((out / "cub" / "summary.json").read_text())["total_updates"]
    assert steps == list(range(1, total + 1)) and total == 18   # 3 epochs x 6 updates, each logged once
    assert "resuming" in r.stderr
