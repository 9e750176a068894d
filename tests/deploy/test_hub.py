"""A trained model as a folder timm and the Hugging Face hub read (deploy/hub.py), and
'local-dir:' / 'hf-hub:' model names everywhere a model name is taken (models/hub.py).

The proof is timm itself: the folder of a trained digits checkpoint loads in a process that
never imports mambaout, with the same logits and the class names."""
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

import mambaout
from mambaout.cli import main
from mambaout.deploy import hub as writer
from mambaout.errors import MambaOutError
from mambaout.models import hub as reader
from helpers import assert_fp32_close

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def one_error_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def folder(digits_checkpoint, tmp_path_factory):
    """The digits checkpoint saved by save_pretrained (its own class names, '0'..'9')."""
    out = tmp_path_factory.mktemp("hub") / "digits-femto"
    r = mambaout.save_pretrained(digits_checkpoint, out)
    assert r["architecture"] == "mambaout_femto" and r["timm_native"] and r["from_checkpoint"]
    return out


@pytest.fixture(scope="module")
def reference(digits_checkpoint):
    """The checkpoint as `mambaout validate --checkpoint` loads it, and its record."""
    from mambaout.models.weights import read_checkpoint
    from mambaout.tasks.classification.predict import load_for_inference
    model, info = load_for_inference(digits_checkpoint)
    return model, info, read_checkpoint(digits_checkpoint)


def digit_inputs(n=4, size=32):
    from mambaout.data import DigitsDataset
    from mambaout.data.transforms import eval_transform
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    ds = DigitsDataset("val", size, eval_transform(size, 1.0, "bicubic", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    return torch.stack([ds[i][0] for i in range(n)])


# ---- the folder in plain timm --------------------------------------------------------------------

PLAIN_TIMM = r"""
import sys, torch, timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
assert not any(m == "mambaout" or m.startswith("mambaout.") for m in sys.modules), "mambaout was imported"
x = torch.load(sys.argv[2])
with torch.no_grad():
    logits = model(x)
cfg = timm.data.resolve_model_data_config(model)
torch.save({"logits": logits, "labels": list(model.pretrained_cfg.get("label_names") or []),
            "data": cfg, "num_classes": model.num_classes}, sys.argv[3])
"""


def test_plain_timm_loads_the_folder_with_equal_logits_and_class_names(folder, reference, tmp_path):
    model, info, record = reference
    x = digit_inputs()
    torch.save(x, tmp_path / "x.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", PLAIN_TIMM, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "o.pt")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = torch.load(tmp_path / "o.pt")
    with torch.no_grad():
        ours = model(x)
    assert_fp32_close(out["logits"], ours)               # timm's MambaOut vs ours: same function
    assert (out["logits"].argmax(1) == ours.argmax(1)).all()
    assert out["num_classes"] == 10 and out["labels"] == list(record["class_names"])
    # timm's data config is the evaluation `mambaout validate --checkpoint` runs
    recipe = record["recipe"]
    assert tuple(out["data"]["input_size"]) == (3, record["img_size"], record["img_size"])
    assert out["data"]["crop_pct"] == recipe["crop_pct"] and out["data"]["interpolation"] == recipe["interpolation"]
    assert tuple(out["data"]["mean"]) == tuple(model.pretrained_cfg["mean"])


def test_config_is_what_timm_writes_for_the_same_model(folder, tmp_path):
    """timm re-saving the model it loaded from our folder (its own save_for_hf) writes the same
    architecture, classes, label names and evaluation transform."""
    import timm
    from timm.models import save_for_hf
    ours = json.loads((folder / "config.json").read_text())
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    save_for_hf(model, tmp_path / "again", safe_serialization=True)
    theirs = json.loads((tmp_path / "again" / "config.json").read_text())
    for key in ("architecture", "num_classes", "num_features", "global_pool"):
        assert ours[key] == theirs[key], key
    assert theirs["pretrained_cfg"]["label_names"] == ours["label_names"] == [str(i) for i in range(10)]
    for key in ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "first_conv", "classifier"):
        assert ours["pretrained_cfg"][key] == theirs["pretrained_cfg"][key], key
    from safetensors.torch import load_file
    a, b = load_file(folder / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the folder in mambaout -----------------------------------------------------------------------

def test_create_model_round_trip(folder, reference):
    model, info, record = reference
    loaded = mambaout.create_model(f"local-dir:{folder}").eval()
    x = digit_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))          # the same weights through the same code
    cfg = loaded.pretrained_cfg
    assert list(cfg["label_names"]) == record["class_names"] and loaded.variant == "mambaout_femto"
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == record["recipe"]["crop_pct"]
    assert cfg["file"] == str(folder / "model.safetensors") and "hf_hub_id" not in cfg
    assert mambaout.get_variant(f"local-dir:{folder}").name == "mambaout_femto"
    assert mambaout.pretrained_cfg(f"local-dir:{folder}")["label_names"] == tuple(record["class_names"])
    # another class count: the backbone loads, a new classifier, no stale class names
    five = mambaout.create_model(f"local-dir:{folder}", num_classes=5)
    assert five.num_classes == 5 and "label_names" not in five.pretrained_cfg
    assert torch.equal(five.stem.conv1.weight, model.stem.conv1.weight)
    # pretrained=False: the architecture only
    bare = mambaout.create_model(f"local-dir:{folder}", pretrained=False)
    assert not torch.equal(bare.stem.conv1.weight, model.stem.conv1.weight)
    # the released-weights name stays ours (not a hub folder)
    assert not reader.is_hub_name("hf-hub:timm/mambaout_femto.in1k")
    assert mambaout.get_variant("hf-hub:timm/mambaout_femto.in1k").name == "mambaout_femto"


def test_validate_from_the_folder_equals_the_checkpoint(folder, digits_checkpoint):
    from mambaout.tasks.classification.evaluate import validate
    a = validate(digits_checkpoint, workers=0, device="cpu", batch_size=256)
    b = validate(None, f"local-dir:{folder}", True, workers=0, device="cpu", batch_size=256)
    assert (a["top1"], a["top5"], a["img_size"]) == (b["top1"], b["top5"], b["img_size"])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


def test_predict_with_a_folder_prints_its_class_names(digits_checkpoint, tmp_path, capsys):
    from mambaout.data import DigitsDataset
    out = tmp_path / "named"
    mambaout.save_pretrained(digits_checkpoint, out, class_names=NAMES)
    img, target = DigitsDataset("val", 32)[0][:2]
    img.save(tmp_path / "digit.png")
    assert main(["predict", str(tmp_path / "digit.png"), "--model", f"local-dir:{out}", "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    top = printed.splitlines()[1].split()
    assert top[1] in NAMES and top[-1].rstrip(")") == str(NAMES.index(top[1]))
    assert sum(name in printed for name in NAMES) == 3


def test_fine_tuning_starts_from_the_folder(folder, reference, tmp_path):
    """`train --model local-dir:DIR --pretrained`: the folder's architecture trains (and is what
    the run records) from the folder's weights; without --pretrained from scratch."""
    from mambaout.cli.classify import recipe_from_args
    from mambaout.recipe import digits_recipe
    from mambaout.tasks.classification.task import ClassificationTask
    model, _, _ = reference
    for pretrained in (True, False):
        task = ClassificationTask(replace(digits_recipe(), model=f"local-dir:{folder}"))
        task.check()
        assert task.recipe.model == "mambaout_femto"
        task.classes = [str(i) for i in range(10)]
        built = task.build_model(pretrained, None)
        assert torch.equal(built.stem.conv1.weight, model.stem.conv1.weight) == pretrained
        assert torch.equal(built.head.fc.weight, model.head.fc.weight) == pretrained
    # with --data the folder's input size is the default, as a variant's own is
    from mambaout.cli import build_parser
    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--model", f"local-dir:{folder}"])
    assert recipe_from_args(args).img_size == 32


# ---- export --format hub, the card, the training command -------------------------------------------

def test_export_hub_cli(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", "--format", "hub", "--checkpoint", str(digits_checkpoint), "-o", str(out)]) == 0
    assert "mambaout_femto, 10 classes, input 3x32x32, class names" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    # an existing folder is refused in one line, then replaced with --overwrite (other files stay)
    (out / "notes.txt").write_text("mine")
    before = (out / "config.json").stat().st_mtime_ns
    assert main(["export", "--format", "hub", "--checkpoint", str(digits_checkpoint), "-o", str(out)]) == 2
    assert "not empty" in one_error_line(capsys.readouterr().err)
    assert (out / "config.json").stat().st_mtime_ns == before
    assert main(["export", "mambaout_femto", "--format", "hub", "--checkpoint", str(digits_checkpoint), "-o",
                 str(out), "--overwrite", "--dataset", "sklearn-digits", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["output"] == str(out) and (out / "notes.txt").read_text() == "mine"
    assert "sklearn-digits" in (out / "README.md").read_text()
    # the checkpoint names another model; options that do not apply; no EMA in this run
    for argv, needle in ((["mambaout_tiny", "--checkpoint", str(digits_checkpoint)], "holds mambaout_femto"),
                         (["--checkpoint", str(digits_checkpoint), "--quantize", "int8"], "--quantize"),
                         (["--checkpoint", str(digits_checkpoint), "--ema"], "no EMA"),
                         ([], "give MODEL or --checkpoint")):
        assert main(["export", *argv, "--format", "hub", "-o", str(tmp_path / "other")]) == 2
        assert needle in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "other").exists()


def test_export_hub_of_a_folder_and_released_names(folder, tmp_path, capsys):
    """A 'local-dir:' model exports again (to a new folder, same weights and names); ONNX export
    takes the folder too and records its class names."""
    assert main(["export", f"local-dir:{folder}", "--format", "hub", "-o", str(tmp_path / "copy")]) == 0
    capsys.readouterr()
    a = json.loads((folder / "config.json").read_text())
    b = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert a["label_names"] == b["label_names"] and a["pretrained_cfg"]["input_size"] == b["pretrained_cfg"]["input_size"]
    pytest.importorskip("onnx")
    assert main(["export", f"local-dir:{folder}", "--format", "onnx", "-o", str(tmp_path / "m.onnx"), "--no-check"]) == 0
    from mambaout.models.onnx import onnx_metadata
    meta = onnx_metadata(tmp_path / "m.onnx")
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["img_size"] == 32


def test_model_card_front_matter_metrics_command_citation(folder, reference):
    _, _, record = reference
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
    assert {"image-classification", "timm", "mambaout"} <= set(meta["tags"])
    assert meta["datasets"] == ["digits"] and meta["metrics"] == ["accuracy"]
    best = next(r for r in record["history"] if r["epoch"] == record["best_epoch"])
    values = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["Top-1 accuracy"] == round(record["best_score"], 2) == round(best["top1"], 2)
    assert values["Top-5 accuracy"] == round(best["top5"], 2)
    assert f"| top-1 (%) | {best['top1']:.2f} |" in text
    assert "Yu, Weihao and Wang, Xinchao" in text and "yu2025mambaout" in text and "CVPR 2025" in text
    command = text.split("```bash\n")[1].split("\n")[0]
    assert command.startswith("mambaout train") and "--epochs 3" in command
    assert_command_rebuilds(command, record["recipe"], None)


def assert_command_rebuilds(command, recipe: dict, data):
    """The command, parsed by `mambaout train`'s own parser, gives the recorded recipe."""
    import shlex
    from mambaout.cli import build_parser
    from mambaout.cli.classify import recipe_from_args
    argv = shlex.split(command)[1:]
    if data:
        argv[argv.index("--data") + 1] = data
    rebuilt = recipe_from_args(build_parser().parse_args(argv)).to_dict()
    assert rebuilt == {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items()}, command


@pytest.mark.parametrize("changes", [
    dict(),
    dict(base="vmamba", model="mambaout_tiny", epochs=30, model_ema=True, auto_augment=None, scale=(0.5, 1.0)),
    dict(model="vmamba_tiny", lr=3e-4, batch_size=32, img_size=160, clip_grad=1.0, drop_path=0.1, seed=7),
])
def test_training_command_rebuilds_the_recipe(changes, tmp_path):
    from mambaout.tasks.classification.recipe import RECIPES
    base = changes.get("base", "table2")
    recipe = replace(RECIPES[base](), **changes)
    if "img_size" not in changes:
        recipe.img_size = mambaout.get_variant(recipe.model).input_size
    command, notes = writer.training_command(recipe.to_dict(), str(tmp_path))
    assert notes == []
    assert_command_rebuilds(command, recipe.to_dict(), str(tmp_path))


def test_fields_without_a_flag_are_the_ones_train_lacks():
    from dataclasses import fields
    from mambaout.cli.classify import TRAIN_FLAGS
    from mambaout.tasks.classification.recipe import Recipe
    assert set(writer.NO_FLAG) == {f.name for f in fields(Recipe)} - set(TRAIN_FLAGS.flag_names)
    assert all(TRAIN_FLAGS.flag_names[k] == v for k, v in writer.FLAG_NAMES.items())


# ---- families timm lacks: VMamba --------------------------------------------------------------------

def test_vmamba_folder_loads_through_mambaout(tmp_path):
    model = mambaout.create_model("vmamba_tiny", num_classes=5, depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)).eval()
    r = mambaout.save_pretrained(model, tmp_path / "vm", class_names=list("abcde"))
    config = json.loads((tmp_path / "vm" / "config.json").read_text())
    assert r["architecture"] == config["architecture"] == "mo_vmamba_tiny" and not r["timm_native"]
    assert config["model_args"] == {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
    loaded = mambaout.create_model(f"local-dir:{tmp_path / 'vm'}").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert list(loaded.pretrained_cfg["label_names"]) == list("abcde") and loaded.variant == "vmamba_tiny"
    assert "mambaout.register_timm()" in (tmp_path / "vm" / "README.md").read_text()
    # the name is the one register_timm gives it in timm's registry
    compat = pytest.importorskip("mambaout.models.timm_compat")
    assert compat.timm_name("vmamba_tiny") == reader.PREFIX + "vmamba_tiny"


# ---- the hub: a repo in huggingface_hub's cache, push_to_hub without a network -------------------------

def fake_hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """huggingface_hub's cache layout holding `folder` as repo_id's main revision (as a download
    leaves it), so 'hf-hub:' names resolve offline."""
    commit = "0" * 40
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    return root


def test_hf_hub_name_loads_from_the_cache(folder, reference, tmp_path):
    import timm
    cache = fake_hub_cache(tmp_path / "hf", "someone/digits-femto", folder)
    model, _, record = reference
    ours = mambaout.create_model("hf-hub:someone/digits-femto", cache_dir=cache).eval()
    theirs = timm.create_model("hf-hub:someone/digits-femto", pretrained=True, cache_dir=cache).eval()
    x = digit_inputs(2)
    with torch.no_grad():
        assert torch.equal(ours(x), model(x))
        assert_fp32_close(theirs(x), model(x))
    assert ours.pretrained_cfg["hf_hub_id"] == "someone/digits-femto"
    assert list(ours.pretrained_cfg["label_names"]) == record["class_names"]
    with pytest.raises(MambaOutError, match="not cached.*could not be downloaded"):
        mambaout.create_model("hf-hub:someone/elsewhere", cache_dir=cache)


def test_push_to_hub_without_network_or_token_is_one_line(folder, digits_checkpoint, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants
    # offline: the command's one line, at once
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    assert main(["push-to-hub", str(digits_checkpoint), "someone/digits"]) == 2
    assert "offline" in one_error_line(capsys.readouterr().err) and time.time() - t < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # no token anywhere
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["push-to-hub", str(folder), "someone/digits"]) == 2
    assert "no Hugging Face token" in one_error_line(capsys.readouterr().err)
    # the hub at a local port nobody listens on: refused at once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t = time.time()
    assert main(["push-to-hub", str(folder), "someone/digits", "--token", "hf_test"]) == 2
    assert "unreachable" in one_error_line(capsys.readouterr().err) and time.time() - t < 5
    # a server that takes the connection and never answers: the timeout, not huggingface_hub's retries
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        t = time.time()
        with pytest.raises(MambaOutError, match="unreachable"):
            mambaout.push_to_hub(folder, "someone/digits", token="hf_test")
        assert time.time() - t < writer.HUB_TIMEOUT_S + 3
    # bad input is told before any network
    for argv, needle in ((["push-to-hub", str(tmp_path / "nothing"), "someone/digits"], "not found"),
                         (["push-to-hub", str(folder), "not a repo!"], "invalid hub repo id"),
                         (["push-to-hub", str(tmp_path), "someone/digits"], "no config.json")):
        assert main(argv) == 2
        assert needle in one_error_line(capsys.readouterr().err)


def test_push_to_hub_cli_without_token_in_a_fresh_process(folder, tmp_path):
    """The real setting: no HF_TOKEN, no stored token (an empty HF_HOME), network allowed."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hfhome"), HF_HUB_OFFLINE="0", OMP_NUM_THREADS="1",
               HF_ENDPOINT="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-m", "mambaout", "push-to-hub", str(folder), "someone/digits"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "no Hugging Face token" in one_error_line(proc.stderr)


# ---- error paths: one line each ------------------------------------------------------------------------

def test_bad_folders_are_one_line(folder, tmp_path, capsys):
    cases = {}
    (tmp_path / "empty").mkdir()
    cases["empty"] = "has no config.json"
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text('{"architecture": "mambaout_femto", ')
    cases["corrupt"] = "is not valid JSON"
    for name, arch, needle in (("unknown", "nope_net", "which mambaout does not have"),
                               ("timm_only", "resnet18", "it is a timm model")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"architecture": arch, "pretrained_cfg": {}}))
        cases[name] = needle
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "mismatch").mkdir()
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(dict(config, model_args={"dims": [32, 64, 128, 256]})))
    (tmp_path / "mismatch" / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    cases["mismatch"] = "does not fit the model its config.json describes"
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text(json.dumps(config))
    cases["no_weights"] = "has no model.safetensors"
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "config.json").write_text(json.dumps(dict(config, label_names=["a", "b"])))
    cases["labels"] = "label_names has 2 entries for 10 classes"
    cases["missing"] = "model folder not found"
    for name, needle in cases.items():
        with pytest.raises(MambaOutError, match=needle):
            mambaout.create_model(f"local-dir:{tmp_path / name}")
        assert main(["validate", "--model", f"local-dir:{tmp_path / name}"]) == 2
        assert needle.split(" (")[0] in one_error_line(capsys.readouterr().err)
    with pytest.raises(MambaOutError, match="pretrained_cfg cannot be given"):
        mambaout.create_model(f"local-dir:{folder}", pretrained_cfg={"crop_pct": 0.9})
    with pytest.raises(MambaOutError, match="nothing after"):
        mambaout.create_model("local-dir:")
    with pytest.raises(MambaOutError, match="not cached.*could not be downloaded"):
        mambaout.create_model("hf-hub:nobody/nothing")
    # save_pretrained: a file in the way, a model that is not ours, class names that do not fit
    (tmp_path / "file").write_text("x")
    with pytest.raises(MambaOutError, match="not a folder"):
        mambaout.save_pretrained(folder, tmp_path / "file")
    with pytest.raises(MambaOutError, match="not a model of mambaout's variant table"):
        mambaout.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "linear")
    with pytest.raises(MambaOutError, match="3 class names for a model of 10 classes"):
        mambaout.save_pretrained(f"local-dir:{folder}", tmp_path / "names", class_names=["a", "b", "c"])
