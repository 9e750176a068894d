"""Training: recipe, schedule, data robustness, resume, SIGTERM/SIGKILL, DDP parity, validate, predict."""
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import mambaout
from mambaout.cli import main
from mambaout.recipe import Recipe
from mambaout.tasks.classification.train import RunOptions, TrainingDiverged, build_optimizer, build_scheduler, train
from imagesets import make_folder
from runs import ROOT, TINY, _run_cli, _wait_steps, env1, model_state, printed_resume_command, tiny_args

# ---- recipe and schedule ------------------------------------------------------------------------

def test_recipe_defaults_are_table2():
    r = Recipe()
    assert (r.img_size, r.epochs, r.opt, r.opt_eps, r.opt_betas) == (224, 300, "adamw", 1e-8, (0.9, 0.999))
    assert (r.lr_base, r.lr_base_size, r.sched, r.warmup_epochs) == (4e-3, 4096, "cosine", 20)
    assert (r.weight_decay, r.clip_grad, r.auto_augment) == (0.05, None, "rand-m9-mstd0.5-inc1")
    assert not hasattr(r, "repeated_aug") and (r.cutmix, r.mixup, r.mixup_switch_prob) == (1.0, 0.8, 0.5)
    assert (r.reprob, r.smoothing, r.model_ema, r.interpolation) == (0.25, 0.1, False, "bicubic")
    drop = {m: replace(r, model=m).drop_path_rate() for m in
            ("mambaout_femto", "mambaout_tiny", "mambaout_small", "mambaout_base")}
    assert drop == {"mambaout_femto": 0.025, "mambaout_tiny": 0.2, "mambaout_small": 0.4, "mambaout_base": 0.6}
    # peak lr 4e-3 at global batch 4096, linear in processes x batch x accumulation
    assert replace(r, batch_size=128, grad_accum_steps=4).peak_lr(world_size=8) == pytest.approx(4e-3)
    assert replace(r, batch_size=256).peak_lr(world_size=2) == pytest.approx(5e-4)
    assert replace(r, lr=1e-3).peak_lr(world_size=64) == 1e-3
    assert Recipe.from_dict(r.to_dict()) == r


def test_lr_schedule_warmup_then_cosine():
    r = replace(Recipe(), epochs=10, warmup_epochs=2, lr=1e-2, warmup_lr=1e-6, min_lr=1e-5)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=r.lr)
    upe = 5
    sched = build_scheduler(opt, r, upe)
    lrs = []
    for step in range(r.epochs * upe + 1):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    warm = r.warmup_epochs * upe
    assert lrs[0] == pytest.approx(1e-6)
    for s in range(warm):              # linear warmup towards the peak
        assert lrs[s] == pytest.approx(1e-6 + (1e-2 - 1e-6) * s / warm)
    # then the cosine curve over the whole run, warmup included (timm's and the official
    # train.py's semantics: the cosine is not shifted by the warmup)
    for s in range(warm, len(lrs)):
        t = s / (r.epochs * upe)
        assert lrs[s] == pytest.approx(1e-5 + 0.5 * (1e-2 - 1e-5) * (1 + math.cos(math.pi * t)), rel=1e-6)
    assert max(lrs) == lrs[warm] and all(a > b for a, b in zip(lrs[warm:], lrs[warm + 1:-1]))
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-3)


def test_no_weight_decay_on_norms_biases_layer_scale():
    model = mambaout.create_model("mambaout_small_rw", num_classes=3)  # has layer scale
    opt = build_optimizer(model, Recipe(), 1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            no_decay = p.ndim <= 1
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), n
    decayless = {names[id(p)].rsplit(".", 1)[-1] for g in opt.param_groups if g["weight_decay"] == 0
                 for p in g["params"]}
    assert {"bias", "gamma", "weight"} <= decayless   # norm weights, biases, layer scale
    assert opt.defaults["eps"] == 1e-8 and opt.defaults["betas"] == (0.9, 0.999)


# ---- data robustness and outputs ------------------------------------------------------------------

def test_damaged_dataset_trains_and_writes_outputs(tmp_path, caplog):
    data = make_folder(tmp_path / "data", damaged=True)
    out = tmp_path / "run"
    res = train(TINY, RunOptions(data=str(data), output=str(out), workers=0, progress=False))
    assert res.status == "finished" and res.epochs_run == 2
    summary = json.loads((out / "summary.json").read_text())
    # truncated JPEG, zero-byte file and a text file are skipped and counted, every epoch;
    # grayscale, CMYK and RGBA are converted and used
    assert summary["skipped_images"] >= 2 * 1 and summary["train_images"] == 3 * 16 + 6
    assert "skipping unreadable image" in caplog.text
    for name in ("last.pth", "best.pth", "metrics.csv", "steps.csv", "curves.png", "summary.json"):
        assert (out / name).exists(), name
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,train_loss,val_loss,top1,top5")
    ck = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    assert ck["class_names"] == ["blue", "green", "red"] and ck["model_name"] == "mambaout_femto"
    assert ck["recipe"]["img_size"] == 24
    assert summary["best_top1"] == max(h["top1"] for h in res.history)
    # the same folder is not overwritten by a new run
    with pytest.raises(mambaout.MambaOutError, match="already holds a run"):
        train(TINY, RunOptions(data=str(data), output=str(out), workers=0, progress=False))


def test_digits_dataset_split_is_deterministic():
    from mambaout.data import DigitsDataset
    a, b = DigitsDataset("train"), DigitsDataset("val")
    assert len(a) + len(b) == 1797 and len(set(b.targets)) == 10
    assert DigitsDataset("val").targets == b.targets
    img, t = DigitsDataset("val", img_size=40)[0]
    assert img.size == (40, 40) and img.mode == "RGB"


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path):
    data = make_folder(tmp_path / "data", per_class=(16, 3))
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="loss is (nan|inf)"):
        train(replace(TINY, lr=1e12, warmup_epochs=0, epochs=3),
              RunOptions(data=str(data), output=str(out), workers=0, progress=False, checkpoint_every=1))
    assert model_state(out / "last.pth")  # the last checkpoint written before the blow-up still loads


# ---- resume ----------------------------------------------------------------------------------------

def test_resume_errors_are_one_line(tmp_path, capsys):
    data = make_folder(tmp_path / "data", per_class=(8, 2))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    other = tmp_path / "other"
    train(replace(TINY, epochs=1, model="mambaout_kobe"),
          RunOptions(data=str(data), output=str(other), workers=0, progress=False))
    cases = [(tmp_path / "missing.pth", "checkpoint not found"), (bad, "cannot read checkpoint"),
             (other / "last.pth", "with model = 'mambaout_femto': the run has model = 'mambaout_kobe'")]
    weights = tmp_path / "weights.pth"
    torch.save(mambaout.create_model("mambaout_femto").state_dict(), weights)
    cases.append((weights, "not a mambaout training checkpoint"))
    for path, needle in cases:
        code = main(tiny_args(data, tmp_path / "new", "--resume", str(path)))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err


def test_sigkill_sigterm_sigint_mid_epoch_resume_bitwise(tmp_path):
    """A run with its own data and recipe killed with SIGKILL mid-epoch, and runs stopped by
    SIGTERM and by Ctrl-C (SIGINT), all resume to the same final weights as an uninterrupted run
    (bitwise on CPU): the stopped ones with exactly the command they print, the killed one with
    `mambaout train --resume last.pth` alone."""
    data = make_folder(tmp_path / "data", per_class=(27, 3), damaged=True)  # 87 images -> 10 updates/epoch
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    p_ref = _run_cli(tiny_args(data, ref))
    p_kill = _run_cli(tiny_args(data, killed, "--checkpoint-every", "4"))
    _wait_steps(killed, 13, p_kill)
    p_kill.send_signal(signal.SIGKILL)
    p_kill.wait()
    stopped = {killed: ["train", "--resume", str(killed / "last.pth")]}
    for sig, steps in ((signal.SIGTERM, 14), (signal.SIGINT, 15)):
        out = tmp_path / sig.name
        p = _run_cli(tiny_args(data, out))
        _wait_steps(out, steps, p)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert f"stopped by {sig.name}" in err
        assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
        stopped[out] = printed_resume_command(err)
        assert stopped[out] == ["train", "--resume", str(out / "last.pth")]
    assert p_ref.wait(timeout=300) == 0, p_ref.stderr.read()[-2000:]

    for out, command in stopped.items():
        ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
        assert ck["step_in_epoch"] > 0, f"{out.name} must stop mid-epoch"
        r = subprocess.run([sys.executable, "-m", "mambaout", *command], env=env1(), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        a, b = model_state(ref / "last.pth"), model_state(out / "last.pth")
        for key in a:
            assert torch.equal(a[key], b[key]), (out.name, key)
        # the per-update log of the resumed run equals the uninterrupted one
        assert (out / "steps.csv").read_text() == (ref / "steps.csv").read_text()


def test_sigterm_to_the_whole_process_group_with_loader_workers(tmp_path):
    """Slurm, `timeout` and Ctrl-C signal every process of the group, data workers included:
    the run still saves last.pth and exits cleanly instead of dying of a killed worker."""
    data = make_folder(tmp_path / "data", per_class=(27, 3))
    out = tmp_path / "group"
    args = tiny_args(data, out, "--epochs", "30")
    args[args.index("-j") + 1] = "2"
    p = _run_cli(args, start_new_session=True)
    _wait_steps(out, 3, p)
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert (out / "last.pth").exists()


def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 processes x batch 8 (gloo) == 1 process x batch 16: same losses and final weights."""
    data = make_folder(tmp_path / "data", per_class=(16, 5))   # 15 val images: uneven shards
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--data", str(data), "--model", "mambaout_femto", "--img-size", "24", "--epochs", "2",
            "--lr", "2e-3", "--warmup-epochs", "1", "--aa", "none", "--mixup", "0", "--cutmix", "0",
            "--reprob", "0", "--drop-path", "0", "-j", "0", "--no-progress", "--device", "cpu"]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "mambaout", "train", *args, "-b", "8", "--output", str(two)],
                        env=env1(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    r1 = subprocess.run([sys.executable, "-m", "mambaout", "train", *args, "-b", "16", "--output", str(one)],
                        env=env1(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-3000:]
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["world_size"] == 2 and s1["world_size"] == 1 and s1["global_step"] == s2["global_step"] == 6
    l1 = [float(r.split(",")[3]) for r in (one / "steps.csv").read_text().splitlines()[1:]]
    l2 = [float(r.split(",")[3]) for r in (two / "steps.csv").read_text().splitlines()[1:]]
    assert l1 == pytest.approx(l2, rel=1e-4, abs=1e-5)
    a, b = model_state(one / "last.pth"), model_state(two / "last.pth")
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    # validation counted every image once in both. Their top-1 is not compared: the two runs'
    # weights differ by float rounding (the batch is split differently), which may flip the
    # argmax of an image whose two best logits are that close; the evaluation itself is exact
    # under torchrun (the next test).
    assert s1["val_images"] == s2["val_images"] == 15


def test_torchrun_validation_is_exact(trained):
    """One checkpoint validated by 1 and by 2 processes: each image is evaluated by one process
    with the same computation (batch 1, one thread), so the counts are equal exactly; the loss
    sums the same float64 terms in another order (15 terms: within 15 float64 eps)."""
    data, out = trained
    args = ["-m", "mambaout", "validate", "--checkpoint", str(out / "best.pth"), "--data", str(data),
            "-b", "1", "-j", "0", "--device", "cpu", "--json"]
    runs = {}
    for n, launcher in ((1, []), (2, ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        r = subprocess.run([sys.executable, *launcher, *args], env=env1(), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        lines = r.stdout.strip().splitlines()
        assert len(lines) == 1, r.stdout     # under torchrun only rank 0 prints the report
        runs[n] = json.loads(lines[0])
    one, two = runs[1], runs[2]
    assert one["images"] == two["images"] == 15
    assert (one["top1"], one["top5"]) == (two["top1"], two["top5"])
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-13)


# ---- validate / predict / fine-tune ------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    data = make_folder(tmp / "data", per_class=(16, 5))
    out = tmp / "run"
    train(TINY, RunOptions(data=str(data), output=str(out), workers=0, progress=False))
    return data, out


def test_validate_agrees_with_hand_count(trained, capsys):
    data, out = trained
    # batch 1, as the hand count: the same computation per image, so the same argmax
    code = main(["validate", "--checkpoint", str(out / "best.pth"), "--data", str(data), "--json", "-j", "0",
                 "-b", "1"])
    r = json.loads(capsys.readouterr().out)
    model, info = mambaout.tasks.classification.predict.load_for_inference(out / "best.pth")
    from mambaout.data import eval_transform, load_image
    tf = eval_transform(24, 1.0)
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for cls_idx, cls in enumerate(info["class_names"]):
            for f in sorted((data / "val" / cls).iterdir()):
                logits = model(tf(load_image(f))[None])
                correct += int(logits.argmax().item() == cls_idx)
                loss += torch.nn.functional.cross_entropy(logits, torch.tensor([cls_idx])).item()
                total += 1
    assert code == 0 and r["images"] == total == 15
    assert r["top1"] == pytest.approx(100 * correct / total)
    assert r["top5"] == 100.0            # 3 classes: top-5 is always right
    assert r["loss"] == pytest.approx(loss / total, rel=1e-4)


def test_predict_uses_checkpoint_class_names(trained, capsys, tmp_path):
    data, out = trained
    imgs = sorted(str(p) for p in (data / "val" / "green").iterdir())[:3]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    code = main(["predict", *imgs, str(bad), "--checkpoint", str(out / "best.pth"), "--json", "--top-k", "2"])
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert code == 1 and len(r["predictions"]) == 3 and r["errors"][0]["image"] == str(bad)
    assert len(cap.err.strip().splitlines()) == 1 and "cannot read" in cap.err
    for p in r["predictions"]:
        assert len(p["topk"]) == 2 and {t["label"] for t in p["topk"]} <= {"red", "green", "blue"}
        assert sum(t["prob"] for t in p["topk"]) <= 1.0 + 1e-6


def test_predict_imagenet_names_for_1000_class_model(tmp_path):
    from mambaout.tasks.classification.predict import class_names_for
    names = class_names_for(1000, None)
    assert len(names) == 1000 and names[1].startswith("goldfish")
    weights = tmp_path / "w.pth"
    torch.save(mambaout.create_model("mambaout_femto").state_dict(), weights)
    from PIL import Image
    Image.new("RGB", (50, 40), (10, 200, 30)).save(tmp_path / "x.png")
    from mambaout.tasks.classification.predict import predict
    r = predict([str(tmp_path / "x.png")], checkpoint=weights, model_name="mambaout_femto", top_k=3,
                img_size=64)
    assert len(r["predictions"][0]["topk"]) == 3 and r["predictions"][0]["topk"][0]["label"] in names


def test_finetune_from_initial_checkpoint_new_class_count(trained, tmp_path):
    data, out = trained
    pre = tmp_path / "in1k.pth"
    base = mambaout.create_model("mambaout_femto")
    torch.save({"model": base.state_dict()}, pre)
    res = train(replace(TINY, epochs=1), RunOptions(data=str(data), output=str(tmp_path / "ft"), workers=0,
                                                    progress=False, initial_checkpoint=str(pre)))
    assert res.status == "finished"
    ck = torch.load(tmp_path / "ft" / "last.pth", map_location="cpu", weights_only=True)
    assert ck["model"]["head.fc.weight"].shape == (3, 4 * 288) and ck["num_classes"] == 3


def test_best_pth_holds_weights_not_training_state(trained, tmp_path, capsys):
    """best.pth: weights, class names, recipe, metrics, without the optimizer (about the
    weights' size); fine-tuning, cam and export take it, resuming is pointed to last.pth."""
    from mambaout.engine.checkpoint import TRAINING_STATE
    data, out = trained
    best = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    assert not set(TRAINING_STATE) & set(best) and {"model", "recipe", "class_names", "history"} <= set(best)
    weights = sum(v.numel() * v.element_size() for v in best["model"].values())
    assert (out / "best.pth").stat().st_size < 1.05 * weights < 0.5 * (out / "last.pth").stat().st_size
    assert main(tiny_args(data, tmp_path / "ft", "--epochs", "1", "--initial-checkpoint", str(out / "best.pth"))) == 0
    img = sorted((data / "val" / "red").iterdir())[0]
    assert main(["cam", str(img), "--checkpoint", str(out / "best.pth"), "-o", str(tmp_path / "cam")]) == 0
    assert main(["export", "mambaout_femto", "--checkpoint", str(out / "best.pth"), "--format", "torchscript",
                 "-o", str(tmp_path / "m.pt")]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "best.pth")]) == 2
    assert "resume from the run's last.pth" in capsys.readouterr().err


def test_validate_errors(tmp_path, capsys):
    code = main(["validate", "--checkpoint", str(tmp_path / "none.pth")])
    assert code == 2 and "checkpoint not found" in capsys.readouterr().err
    code = main(["validate"])
    assert code == 2 and "--checkpoint" in capsys.readouterr().err
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")])
    assert code == 2 and "dataset folder not found" in capsys.readouterr().err


def test_checkpoint_of_the_previous_format_still_resumes(tmp_path, capsys):
    """A last.pth written before checkpoints kept their data source and run options resumes
    with the flags of its run (the recipe still comes from the checkpoint)."""
    data = make_folder(tmp_path / "data", per_class=(8, 2))
    out = tmp_path / "run"
    assert main(tiny_args(data, out, "--max-updates", "2", "--epochs", "2")) == 0
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    for key in ("data_source", "run_options"):
        del ck[key]
    torch.save(ck, out / "last.pth")
    assert main(["train", "--resume", str(out / "last.pth"), "--data", str(data), "-j", "0", "--no-progress"]) == 0
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 2 * 3 and ck["recipe"]["lr"] == 1e-3 and ck["data_source"]["data"] == str(data)


def test_options_amp_ema_channels_last_checkpointing_and_resume(tmp_path):
    """bf16 autocast (CPU), EMA, channels-last, gradient checkpointing and accumulation run
    together, and the EMA weights survive a resume."""
    data = make_folder(tmp_path / "data", per_class=(16, 3))
    out = tmp_path / "run"
    r = replace(TINY, epochs=2, model_ema=True, model_ema_decay=0.9, grad_accum_steps=2, batch_size=4)
    opts = RunOptions(data=str(data), output=str(out), workers=0, progress=False, amp="bf16",
                      channels_last=True, grad_checkpointing=True, max_updates=3)
    res = train(r, opts)
    assert res.status == "stopped"
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck["ema"] is not None and ck["global_step"] == 3 and ck["step_in_epoch"] == 3
    with pytest.raises(mambaout.MambaOutError, match="with batch_size = 8: the run has batch_size = 4"):
        train(replace(r, batch_size=8), replace(opts, resume=str(out / "last.pth"), max_updates=None))
    res = train(r, replace(opts, resume=str(out / "last.pth"), max_updates=None))
    assert res.status == "finished" and res.epochs_run == 2
    ck2 = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck2["global_step"] == 2 * 6 and not torch.equal(ck2["ema"]["stem.conv1.weight"],
                                                           ck2["model"]["stem.conv1.weight"])
