"""The `mambaout` command: a thin layer of argument parsing over the library."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import List, Optional

from .errors import MambaOutError, TrainingDiverged


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + traceback-ish noise
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def _fmt_g(v):  # MACs in G: one decimal, three for the small study models (Table 8 prints M)
    return "-" if v is None else f"{v:.1f}" if v >= 1 else f"{v:.3f}"


def img_size_arg(text: str):
    """--img-size N or HxW (e.g. 512x2048) -> int or (H, W)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (give N or HxW, e.g. 512x2048)")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _size_pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def _size_text(size) -> str:
    h, w = _size_pair(size)
    return f"{h}x{w}"


# The dense-prediction tables of `mambaout models`: the list function and variant table of each
# task, its head, the variant fields with the paper's MACs and scores, and how they print.
DENSE_TABLES = {
    "segmentation": dict(
        head="upernet", macs_field="paper_macs_g", scores_field="paper_miou",
        score_keys=("paper_miou_ss", "paper_miou_ms"), macs_label="MACs(G)", score_label="paper mIoU SS/MS",
        title="Segmentation (UperNet, ADE20K): params of the whole model, MACs of one eval forward at 512x2048 "
              "counted as mmcv's get_flops does (the paper's numbers), rounded half up"),
    "detection": dict(
        head="mask_rcnn", macs_field="paper_flops_g", scores_field="paper_ap",
        score_keys=("paper_box_ap", "paper_mask_ap"), macs_label="FLOPs(G)", score_label="paper AP box/mask",
        title="Detection (Mask R-CNN 1x, COCO): params of the whole model, FLOPs (multiply-adds) at 1280x800 "
              "as mmdet's get_flops counts them, rounded half up"),
}


def dense_rows(task: str, pattern=None) -> list:
    """`mambaout models` rows of the segmentation or detection models, measured as the paper counts."""
    from .complexity import measure
    from . import models
    spec = DENSE_TABLES[task]
    table = models.SEGMENTATION_VARIANTS if task == "segmentation" else models.DETECTION_VARIANTS
    names = (models.list_segmentation_models if task == "segmentation" else models.list_detection_models)(pattern)
    rows = []
    for name in names:
        v, m = table[name], measure(name)
        scores = getattr(v, spec["scores_field"]) or (None, None)
        rows.append(dict(model=name, task=task, head=spec["head"], backbone=v.backbone, drop_path=v.drop_path,
                         img_size=list(m["img_size"]), convention=m["convention"], params=m["params"],
                         macs=m["macs"], params_m=m["params_m"], macs_g=m["macs_g"],
                         paper_params_m=v.paper_params_m, paper_macs_g=getattr(v, spec["macs_field"]),
                         **dict(zip(spec["score_keys"], scores)), source=v.source))
    return rows


def _print_dense_rows(task: str, rows):
    spec = DENSE_TABLES[task]
    paper_macs = f"paper {spec['macs_label']}"
    head = (f"{'model':<28}{'size':>10}{'paper P(M)':>11}{'P(M)':>6}{paper_macs:>16}{spec['macs_label']:>10}"
            f"{spec['score_label']:>19}  source")
    print("\n" + spec["title"])
    print(head)
    print("-" * len(head))
    for r in rows:
        first, second = (r[k] for k in spec["score_keys"])
        score = f"{first}/{second}" if first else "-"
        print(f"{r['model']:<28}{_size_text(tuple(r['img_size'])):>10}{_fmt(r['paper_params_m'], 0):>11}"
              f"{r['params_m']:>6.0f}{_fmt(r['paper_macs_g'], 0):>16}{r['macs_g']:>10.0f}{score:>19}  {r['source']}")


def cmd_models(args) -> int:
    from .complexity import measure
    from .models import VARIANTS, list_models
    # --json lists the classification rows unless --task segmentation (or all) asks for more
    task = args.task or ("classification" if args.json else "all")
    names = list_models(args.pattern) if task in ("classification", "all") else []
    dense = {t: dense_rows(t, args.pattern) for t in DENSE_TABLES if task in (t, "all")}
    rows = []
    for name in names:
        v = VARIANTS[name]
        m = measure(name, args.img_size)
        rows.append(dict(model=name, depths=list(v.depths), dims=list(v.dims),
                         expansion=round(v.expansion_ratio, 3), conv_ratio=v.conv_ratio,
                         drop_path=v.drop_path, paper_params_m=v.paper_params_m,
                         paper_macs_g=v.paper_macs_g, paper_top1=v.paper_top1,
                         params=m["params"], macs=m["macs"], params_m=m["params_m"],
                         macs_g=m["macs_g"], img_size=m["img_size"],
                         weights=[f"{name}.{t}" for t in v.hub_tags], source=v.source))
    if args.json:
        print(json.dumps(rows + [r for t in dense for r in dense[t]], indent=2))
        return 0
    if not rows:
        for t, dense_table in dense.items():
            if dense_table:
                _print_dense_rows(t, dense_table)
        return 0
    head = (f"{'model':<24}{'depths':<16}{'dims':<22}{'size':>5}{'paper P(M)':>11}{'P(M)':>8}"
            f"{'paper MACs(G)':>15}{'MACs(G)':>9}{'paper top-1':>13}  {'source':<18}weights")
    print("Variants: params and MACs measured at each model's input size (--img-size to change; "
          "MACs: fvcore convention, rounded half up), next to the paper's numbers")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<24}{str(tuple(r['depths'])):<16}{str(tuple(r['dims'])):<22}{r['img_size']:>5}"
              f"{_fmt(r['paper_params_m']):>11}{r['params_m']:>8.1f}{_fmt_g(r['paper_macs_g']):>15}"
              f"{_fmt_g(r['macs_g']):>9}{_fmt(r['paper_top1']):>13}  {r['source']:<18}"
              f"{', '.join(r['weights'])}")
    for t, dense_table in dense.items():
        if dense_table:
            _print_dense_rows(t, dense_table)
    return 0


def cmd_complexity(args) -> int:
    from .complexity import measure
    from .models import DETECTION_VARIANTS, SEGMENTATION_VARIANTS, get_variant
    seg, det = args.model in SEGMENTATION_VARIANTS, args.model in DETECTION_VARIANTS
    if not (seg or det):
        get_variant(args.model)
    if args.img_size is not None and min(_size_pair(args.img_size)) <= 0:
        raise MambaOutError(f"--img-size must be positive, got {_size_text(args.img_size)}")
    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    m = measure(args.model, args.img_size, **kw)
    if args.json:
        print(json.dumps(m))
    elif seg or det:
        paper = (f"; paper {m['paper_params_m']}M / {m['paper_macs_g']}G" if m["paper_params_m"] else
                 "; no paper numbers")
        what = ("whole model incl. the auxiliary head), {macs} MACs ({g:.3f}G, {r:.0f}G) of one eval forward"
                if seg else "whole model), {macs} MACs ({g:.3f}G, {r:.0f}G) of backbone, FPN and RPN head on the "
                "image plus the box head on 1000 RoIs and the mask head on 100 (mmdet's forward_dummy)")
        print(f"{m['model']} at {_size_text(m['img_size'])}: {m['params']:,} params ({m['params_m']:.0f}M, "
              + what.format(macs=f"{m['macs']:,}", g=m["macs"] / 1e9, r=m["macs_g"])
              + f", counted as mmcv's get_flops does{paper}")
    else:
        print(f"{m['model']} at {_size_text(m['img_size'])}: {m['params']:,} params "
              f"({m['params_m']:.1f}M), {m['macs']:,} MACs ({m['macs'] / 1e9:.3f}G, "
              f"{_fmt_g(m['macs_g'])}G rounded half up)")
    return 0


def cmd_convert(args) -> int:
    """Load a checkpoint in any supported layout and save it as safetensors in ours (= timm's)."""
    from safetensors.torch import save_file
    from .models import create_model
    from .utils import atomic_write
    model = create_model(args.model, num_classes=args.num_classes, checkpoint_path=args.checkpoint)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"architecture": model.variant, "num_classes": str(model.num_classes), "format": "timm"}
    atomic_write(args.output, lambda tmp: save_file(sd, tmp, metadata=meta))
    print(f"wrote {args.output}: {model.variant}, {len(sd)} tensors, timm layout")
    return 0


# flag -> Recipe field; values left at None keep the recipe's default
RECIPE_FLAGS = {
    "model": "model", "img_size": "img_size", "epochs": "epochs", "batch_size": "batch_size",
    "grad_accum_steps": "grad_accum_steps", "lr": "lr", "lr_base": "lr_base", "lr_base_size": "lr_base_size",
    "opt": "opt", "opt_eps": "opt_eps", "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs",
    "warmup_lr": "warmup_lr", "min_lr": "min_lr", "clip_grad": "clip_grad", "aa": "auto_augment",
    "mixup": "mixup", "cutmix": "cutmix", "mixup_switch_prob": "mixup_switch_prob",
    "mixup_prob": "mixup_prob", "reprob": "reprob", "smoothing": "smoothing", "drop_path": "drop_path",
    "drop": "drop", "model_ema_decay": "model_ema_decay", "crop_pct": "crop_pct", "hflip": "hflip",
    "scale": "scale", "ratio": "ratio", "seed": "seed",
}


def _given(args, flags: dict) -> dict:
    """The recipe fields the command line sets (flags left at None keep the recipe's value)."""
    return {field: tuple(v) if isinstance(v, list) else v for flag, field in flags.items()
            if (v := getattr(args, flag, None)) is not None}


def _plan(args, recipe_cls, given: dict, source: dict, new_recipe):
    """(recipe, data source, run options): a new run's from the flags and the task's defaults
    (new_recipe(given)); with --resume the checkpoint's, checked against what is given."""
    opts = _run_options(args)
    if args.resume:
        from .engine.resume import plan_resume
        return plan_resume(args.resume, recipe_cls, given, source, opts)
    return new_recipe(given), source, opts


def recipe_changes(args) -> dict:
    changes = _given(args, RECIPE_FLAGS)
    if changes.get("auto_augment") in ("none", ""):
        changes["auto_augment"] = None
    if args.model_ema:
        changes["model_ema"] = True
    return changes


def recipe_from_args(args, changes: Optional[dict] = None):
    """Table 2 when --data is given; the digits recipe on the embedded set otherwise."""
    from dataclasses import replace
    from .recipe import Recipe, digits_recipe
    recipe = replace(Recipe() if args.data else digits_recipe(), **(recipe_changes(args) if changes is None else changes))
    if args.data and args.img_size is None:  # the model's own size (32 for the CIFAR study models)
        from .models import get_variant
        recipe.img_size = get_variant(recipe.model).input_size
    return recipe


def cmd_train(args) -> int:
    from .recipe import Recipe
    from .train import train
    recipe, _, opts = _plan(args, Recipe, recipe_changes(args), {"data": args.data},
                            lambda given: recipe_from_args(args, given))
    result = train(recipe, opts)
    if result.status == "finished":
        print(f"done: best top-1 {result.best_top1:.2f}%, final top-1 {result.final_top1:.2f}% "
              f"after {result.epochs_run} epochs; checkpoints and logs in {result.output}")
    return 0


def cmd_validate(args) -> int:
    from .evaluate import validate
    amp = _amp(args)
    r = validate(args.checkpoint, args.model, args.pretrained, args.data, args.split, args.batch_size,
                 args.workers, args.img_size, args.crop_pct, args.device, amp, args.channels_last,
                 onnx=args.onnx, bf16=args.bf16)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} on {r['data']} [{r['split']}], {r['images']} images at {r['img_size']}px: "
              f"top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%, loss {r['loss']:.4f}"
              + (f" ({r['skipped']} unreadable images skipped)" if r["skipped"] else ""))
    return 0


def cmd_predict(args) -> int:
    from .predict import predict
    r = predict(args.images, args.checkpoint, args.model, args.pretrained, args.top_k, args.batch_size,
                args.img_size, args.device, onnx=args.onnx)

    def show(p):
        print(p["image"])
        for t in p["topk"]:
            print(f"  {100 * t['prob']:6.2f}%  {t['label']}  (class {t['index']})")
    return _report_images(r, "predictions", show, args.json)


def _report_images(r: dict, key: str, show, as_json: bool) -> int:
    """Per-image results on stdout (JSON, or `show` for each of r[key]), one stderr line per
    unreadable image (r["errors"]), exit code 1 if there was any."""
    if as_json:
        print(json.dumps(r))
    else:
        for item in r[key]:
            show(item)
    for e in r["errors"]:
        print(f"mambaout: error: {e['error']}", file=sys.stderr)
    return 1 if r["errors"] else 0


def cmd_cam(args) -> int:
    from .cam import explain_images
    from .predict import Classifier
    if not args.images:
        raise MambaOutError("no images given")
    clf = Classifier.load(args.checkpoint, args.model, args.pretrained, args.img_size, args.device)
    r = explain_images(args.images, clf, args.output, target=args.target, method=args.method, layer=args.layer,
                       save_npy=args.save_npy)
    return _report_images(r, "results", lambda e: print(f"{e['image']}: {e['label']} ({100 * e['prob']:.1f}%) -> "
                                                        f"{e['overlay']}"), args.json)


def cmd_demo(args) -> int:
    from .demo import serve
    from .predict import Classifier
    if args.max_mb <= 0:
        raise MambaOutError(f"--max-mb must be positive, got {args.max_mb}")
    clf = Classifier.load(args.checkpoint, args.model, args.pretrained, args.img_size, args.device, random_ok=True)
    return serve(clf, host=args.host, port=args.port, max_mb=args.max_mb, method=args.method, layer=args.layer)


def cmd_benchmark(args) -> int:
    from . import benchmark as bench
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    records = []
    for mode in modes:
        st = bench.Settings(batch_size=args.batch_size, img_size=args.img_size, mode=mode, device=args.device,
                            precision=args.precision, channels_last=args.channels_last, compile=args.torchcompile,
                            backend=args.backend, warmup=args.warmup, repeats=args.repeats, iters=args.iters,
                            threads=args.threads, peak_tflops=args.peak_tflops)
        records += bench.run(args.model, args.compare or [], st)
    if args.csv:
        bench.write_csv(records, args.csv)
    if args.plot:
        bench.plot(records, args.plot)
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        r0 = records[0]
        print(f"{r0['device_name']}, {r0['threads'] or ''} threads, torch {r0['torch']}: batch {r0['batch_size']}, "
              f"{r0['img_size']}px, {r0['precision']}, backend {r0['backend']}"
              + (", channels-last" if r0["channels_last"] else "") + (", compiled" if r0["compile"] else "")
              + f"; median of {args.repeats} interleaved repeats of {args.iters} step(s)")
        if r0["device"] == "cpu":
            print(bench.isa_line(bench.cpu_isa()))
            print(bench.allocator_line())
        print(bench.format_table(records))
        ours = next((r for r in records if r["impl"] == "mambaout"), None)
        if ours and ours.get("ratio_vs_fp32"):
            extra = "".join(f", {ours[k]:.2f}x {label}" for k, label in (
                ("ratio_vs_autocast", "ours under autocast"), ("ratio_vs_timm", "timm at its " + next(
                    (r["row_precision"] for r in records if r["impl"] == "timm"), "")))
                if ours.get(k))
            print(f"ours at {ours['row_precision']}: {ours['ratio_vs_fp32']:.2f}x ours in fp32{extra}")
        peaks = {("bf16" if r["row_precision"].startswith("bf16") else r["row_precision"]): r["peak_gflops"]
                 for r in records if r.get("peak_source") == "measured GEMM"}
        if peaks:
            line = "GEMM peak measured here: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in sorted(peaks.items()))
            if {"fp32", "bf16"} <= peaks.keys():
                line += (f" (bf16 / fp32 = {peaks['bf16'] / peaks['fp32']:.2f}x: the most a GEMM-bound "
                         "forward gains from bf16 on this CPU)")
            print(line)
    return 0


def cmd_export(args) -> int:
    from .export import export
    r = export(args.model, args.format, args.output, args.checkpoint, args.pretrained, args.img_size,
               args.opset, check=not args.no_check, quantize=args.quantize, calibration=args.calibration,
               calibration_images=args.calibration_images, calibration_method=args.calibration_method)
    if args.json:
        print(json.dumps(r))
    elif args.quantize:
        print(f"wrote {r['output']} (int8 QDQ ONNX, {r['model']}, {r['num_classes']} classes; calibrated on "
              f"{r['calibration_images']} images of {r['calibration']}; top-1 agrees with fp32 on "
              f"{100 * r['int8_top1_agreement']:.1f}% of them, max abs logit diff {r['int8_max_abs_diff']:.3g})")
    else:
        parity = f", max abs diff vs PyTorch {r['max_abs_diff']:.2e}" if "max_abs_diff" in r else ""
        print(f"wrote {r['output']} ({r['format']}, {r['model']}, {r['num_classes']} classes, "
              f"dynamic batch{' and image size' if r['dynamic_size'] else ''}{parity})")
    return 0


def cmd_seqlen(args) -> int:
    from . import seqlen
    settings = seqlen.settings_for(args.preset, args.img_size, args.stride, args.dim, args.frames, args.tubelet)
    rows = [seqlen.analyse(s) for s in settings]
    if args.plot:
        seqlen.plot(rows, args.plot)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("FLOPs of one Transformer block (attention + MLP ratio 4): linear 24*D^2*L, quadratic 4*L^2*D; "
          "ratio = L/(6D), long-sequence when L > 6D")
    print(seqlen.format_table(rows))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


# segment train flag -> SegRecipe field; values left at None keep the recipe's default
SEG_RECIPE_FLAGS = {
    "model": "model", "iters": "iters", "batch_size": "batch_size", "grad_accum_steps": "grad_accum_steps",
    "crop_size": "crop_size", "scale": "scale", "ratio_range": "ratio_range", "lr": "lr",
    "warmup_iters": "warmup_iters", "weight_decay": "weight_decay", "min_lr": "min_lr",
    "drop_path": "drop_path", "aux_weight": "aux_weight", "val_every": "val_every", "clip_grad": "clip_grad",
    "head_channels": "head_channels", "aux_channels": "aux_channels", "head_dropout": "head_dropout",
    "num_classes": "num_classes", "seed": "seed", "test_mode": "test_mode",
}


def seg_recipe_changes(args) -> dict:
    changes = _given(args, SEG_RECIPE_FLAGS)
    if args.no_reduce_zero_label:
        changes["reduce_zero_label"] = False
    if args.no_photometric:
        changes["photometric"] = False
    return changes


def seg_recipe_from_args(args, changes: Optional[dict] = None):
    """The ADE20K recipe with --data; the embedded digits-canvas recipe otherwise."""
    from dataclasses import replace
    from .tasks.segmentation import digits_seg_recipe
    from .recipe import SegRecipe
    recipe = SegRecipe() if args.data else digits_seg_recipe()
    return replace(recipe, **(seg_recipe_changes(args) if changes is None else changes))


def _amp(args):
    """--amp [--amp-dtype] -> None, "bf16" or "fp16"."""
    return {"bfloat16": "bf16", "float16": "fp16"}[args.amp_dtype] if args.amp else None


def _run_options(args):
    from .engine import RunOptions
    amp = _amp(args)
    return RunOptions(data=args.data, output=args.output, resume=args.resume, pretrained=args.pretrained,
                      initial_checkpoint=args.initial_checkpoint, device=args.device, workers=args.workers,
                      amp=amp, channels_last=args.channels_last, compile=args.torchcompile,
                      grad_checkpointing=args.grad_checkpointing, checkpoint_every=args.checkpoint_every,
                      tensorboard=args.log_tensorboard, progress=not args.no_progress,
                      max_updates=args.max_updates, val_batch_size=getattr(args, "val_batch_size", None))


def cmd_segment_train(args) -> int:
    from .recipe import SegRecipe
    from .tasks.segmentation import train_segmentation
    recipe, source, opts = _plan(args, SegRecipe, seg_recipe_changes(args),
                                 {"data": args.data, "class_names": args.class_names},
                                 lambda given: seg_recipe_from_args(args, given))
    result = train_segmentation(recipe, opts, class_names=source.get("class_names"))
    if result.status == "finished":
        print(f"done: best mIoU {result.best:.2f}%, final mIoU {result.final:.2f}% after {result.global_step} "
              f"iterations; checkpoints and logs in {result.output}")
    return 0


def cmd_segment_eval(args) -> int:
    from .tasks.segmentation import evaluate_checkpoint
    amp = _amp(args)
    r = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, mode=args.mode, ms=args.ms,
                            device=args.device, workers=args.workers, amp=amp)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']} on {r['data']} [{r['split']}], {r['images']} images, {r['mode']}"
          f"{' + multi-scale/flip' if r['ms'] else ''}: mIoU {r['mIoU']:.2f}%, aAcc {r['aAcc']:.2f}%, "
          f"mAcc {r['mAcc']:.2f}%" + (f" ({r['skipped']} samples skipped: {r['skip_reasons']})" if r["skipped"] else ""))
    width = max(len(n) for n in r["class_names"])
    for name, iou, acc in zip(r["class_names"], r["per_class_iou"], r["per_class_acc"]):
        print(f"  {name:<{width}}  IoU {_fmt(iou, 2):>6}  Acc {_fmt(acc, 2):>6}")
    return 0


def cmd_segment_predict(args) -> int:
    from .tasks.segmentation import predict_images
    r = predict_images(args.images, args.checkpoint, args.output, mode=args.mode, ms=args.ms, device=args.device)
    for p in r["written"]:
        print(f"{p['image']} -> {p['labels']}, {p['overlay']}")
    for e in r["errors"]:
        print(f"mambaout: error: cannot read {e['image']}: {e['error']}", file=sys.stderr)
    return 1 if r["errors"] else 0


# detect train flag -> DetRecipe field
DET_RECIPE_FLAGS = {
    "model": "model", "epochs": "epochs", "batch_size": "batch_size", "grad_accum_steps": "grad_accum_steps",
    "lr": "lr", "warmup_iters": "warmup_iters", "weight_decay": "weight_decay", "min_size": "min_size",
    "max_size": "max_size", "rois_per_image": "rois_per_image", "proposals": "proposals",
    "drop_path": "drop_path", "clip_grad": "clip_grad", "lr_steps": "lr_steps", "seed": "seed",
}


def _detection():
    """mambaout.tasks.detection, or one line naming the extra when pycocotools is missing."""
    try:
        from .tasks import detection
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "pycocotools":
            raise MambaOutError("mambaout detect needs pycocotools: pip install 'mambaout[detection]'") from None
        raise
    return detection


DET_PATHS = ("train_ann", "train_images", "val_ann", "val_images")


def det_recipe_changes(args) -> dict:
    changes = _given(args, DET_RECIPE_FLAGS)
    if args.schedule:   # picks a new run's base recipe; checked against the run's own on resume
        changes["schedule"] = args.schedule
    return changes


def det_recipe_from_args(args, changes: Optional[dict] = None):
    """The COCO 1x recipe (or 3x) with data; the embedded digit canvases otherwise."""
    from dataclasses import replace
    from .recipe import DetRecipe
    det_digits_recipe = _detection().det_digits_recipe
    has_data = args.data or args.train_ann
    recipe = (DetRecipe.three_x() if args.schedule == "3x" else DetRecipe()) if has_data else det_digits_recipe()
    changes = det_recipe_changes(args) if changes is None else changes
    return replace(recipe, **{k: v for k, v in changes.items() if k != "schedule"})


def cmd_detect_train(args) -> int:
    from .recipe import DetRecipe
    recipe, source, opts = _plan(args, DetRecipe, det_recipe_changes(args),
                                 {"data": args.data, **{k: getattr(args, k) for k in DET_PATHS}},
                                 lambda given: det_recipe_from_args(args, given))
    result = _detection().train_detection(recipe, opts, **{k: source.get(k) for k in DET_PATHS})
    if result.status == "finished":
        print(f"done: best box AP {result.best:.2f}, final box AP {result.final:.2f} after {result.epochs_run} "
              f"epochs; checkpoints and logs in {result.output}")
    return 0


def cmd_detect_eval(args) -> int:
    detection = _detection()
    METRICS = detection.METRICS
    r = detection.evaluate_checkpoint(args.checkpoint, data=args.data, ann=args.ann, images=args.images,
                            results_file=args.results, device=args.device, workers=args.workers,
                            batch_size=args.batch_size, amp=_amp(args))
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']} on {r['annotations']}: {r['images']} images, {r['detections']} detections"
          + (f" ({r['skipped']} unreadable images skipped)" if r["skipped"] else ""))
    for t, label in (("bbox", "box "), ("segm", "mask")):
        print(f"  {label}  " + "  ".join(f"{k} {r[f'{t}_{k}']:.1f}" for k in METRICS))
    if args.results:
        print(f"COCO results written to {args.results}")
    return 0


def cmd_detect_predict(args) -> int:
    r = _detection().predict_images(args.images, args.checkpoint, args.output, score_thr=args.score_thr,
                                    device=args.device)
    for p in r["written"]:
        print(f"{p['image']} -> {p['drawn']}: {len(p['detections'])} detection(s)")
    for e in r["errors"]:
        print(f"mambaout: error: cannot read {e['image']}: {e['error']}", file=sys.stderr)
    return 1 if r["errors"] else 0


def _add_detect_parser(sub):
    det = sub.add_parser("detect", help="object detection + instance segmentation: Mask R-CNN on COCO-format data")
    ds = det.add_subparsers(dest="detect_command", metavar="train|eval|predict", parser_class=_Parser)
    det.set_defaults(func=lambda args: (det.print_help(), 2)[1])

    s = ds.add_parser("train", help="train Mask R-CNN (COCO 1x recipe with data; embedded digit canvases without)")
    s.add_argument("--data", help="COCO 2017 layout: annotations/instances_{train,val}2017.json, {train,val}2017/")
    for flag in ("train-ann", "train-images", "val-ann", "val-images"):
        s.add_argument(f"--{flag}", help="another layout: annotation JSON files and image folders")
    s.add_argument("--model", help="default: mask_rcnn_mambaout_tiny with data, mask_rcnn_mambaout_femto without")
    g = s.add_argument_group("recipe (defaults: mmdetection's Swin Mask R-CNN 1x with the authors' lr)")
    g.add_argument("--schedule", choices=["1x", "3x"], help="1x (default): 12 epochs; 3x: 36 epochs, multi-scale 480-800")
    g.add_argument("--epochs", type=int)
    g.add_argument("--lr-steps", type=int, nargs="+", metavar="EPOCH", help="lr x0.1 after these epochs (8 11)")
    g.add_argument("-b", "--batch-size", type=int, help="per process (COCO: 16 in total)")
    g.add_argument("--grad-accum-steps", type=int)
    g.add_argument("--lr", type=float, help="peak lr (1e-4)")
    g.add_argument("--warmup-iters", type=int, help="linear warmup from 0.001 x lr (500)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--min-size", type=int, help="shorter image side (800)")
    g.add_argument("--max-size", type=int, help="longer image side at most (1333)")
    g.add_argument("--rois-per-image", type=int, help="RoIs sampled per image for the box/mask heads (512)")
    g.add_argument("--proposals", type=int, help="RPN proposals kept per image in training (2000)")
    g.add_argument("--drop-path", type=float, help="backbone stochastic depth (default: per model)")
    g.add_argument("--clip-grad", type=float)
    g.add_argument("--seed", type=int)
    _add_train_run_flags(s)
    s.add_argument("--val-batch-size", type=int)
    s.set_defaults(func=cmd_detect_train)

    s = ds.add_parser("eval", help="COCO box and mask AP of a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", help="COCO 2017 layout root (its val2017 split)")
    s.add_argument("--ann", help="annotation JSON (another layout; with --images)")
    s.add_argument("--images", help="image folder of --ann")
    s.add_argument("--results", metavar="FILE.json", help="also write the COCO results JSON")
    s.add_argument("-b", "--batch-size", type=int, default=2)
    s.add_argument("--json", action="store_true", help="print the APs (percent) as JSON")
    _add_run_flags(s)
    s.set_defaults(func=cmd_detect_eval)

    s = ds.add_parser("predict", help="draw boxes, classes, scores and masks on images; detections.json")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("-o", "--output", required=True, metavar="DIR")
    s.add_argument("--score-thr", type=float, default=0.5)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_detect_predict)


def _add_train_run_flags(s):
    """Flags of every training command: where the run goes and how it runs (engine options)."""
    s.add_argument("--output", help="run folder (default: ./runs/<time>-<model>)")
    s.add_argument("--resume", help="continue from a training checkpoint (last.pth)")
    s.add_argument("--pretrained", action="store_true", help="start from the released weights (fine-tune)")
    s.add_argument("--initial-checkpoint", help="start from these weights (fine-tune)")
    _add_run_flags(s)
    s.add_argument("--torchcompile", "--compile", dest="torchcompile", action="store_true")
    s.add_argument("--grad-checkpointing", action="store_true")
    s.add_argument("--checkpoint-every", type=int, default=0, help="also save last.pth every N updates")
    s.add_argument("--log-tensorboard", action="store_true")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--max-updates", type=int, help="stop after N optimizer updates (smoke tests)")


def _add_segment_parser(sub):
    seg = sub.add_parser("segment", help="semantic segmentation: UperNet on ADE20K-layout data (train|eval|predict)")
    ss = seg.add_subparsers(dest="segment_command", metavar="train|eval|predict", parser_class=_Parser)
    seg.set_defaults(func=lambda args: (seg.print_help(), 2)[1])

    s = ss.add_parser("train", help="train UperNet (ADE20K recipe with --data; embedded digit canvases without)")
    s.add_argument("--data", help="root with images/{training,validation} and annotations/{training,validation}")
    s.add_argument("--model", help="default: upernet_mambaout_tiny with --data, upernet_mambaout_femto without")
    g = s.add_argument_group("recipe (defaults: the Swin UperNet ADE20K config with the authors' settings)")
    g.add_argument("--iters", type=int, help="optimizer updates in total (ADE20K: 160000)")
    g.add_argument("-b", "--batch-size", type=int, help="per process (ADE20K: 16 in total)")
    g.add_argument("--grad-accum-steps", type=int)
    g.add_argument("--crop-size", type=int, help="training crop (ADE20K: 512)")
    g.add_argument("--scale", type=int, nargs=2, metavar=("W", "H"),
                   help="random-resize base scale in training and the resize at test time (ADE20K: 2048 512)")
    g.add_argument("--ratio-range", type=float, nargs=2, metavar=("MIN", "MAX"), help="random resize ratios (0.5 2.0)")
    g.add_argument("--lr", type=float, help="peak lr (1e-4)")
    g.add_argument("--warmup-iters", type=int, help="linear warmup (1500)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--min-lr", type=float)
    g.add_argument("--drop-path", type=float, help="backbone stochastic depth (default: per model)")
    g.add_argument("--aux-weight", type=float, help="auxiliary FCN head loss weight (0.4)")
    g.add_argument("--head-channels", type=int, help="UperNet decode head width (512)")
    g.add_argument("--head-dropout", type=float, help="dropout before the heads' classifiers (0.1)")
    g.add_argument("--aux-channels", type=int, help="auxiliary FCN head width (256)")
    g.add_argument("--val-every", type=int, help="validate every N updates (16000)")
    g.add_argument("--test-mode", choices=["whole", "slide"], help="validation inference (whole)")
    g.add_argument("--clip-grad", type=float)
    g.add_argument("--num-classes", type=int, help="classes of your own data (ADE20K: 150)")
    g.add_argument("--no-reduce-zero-label", action="store_true",
                   help="label 0 is a real class (ADE20K: 0 = other, ignored)")
    g.add_argument("--class-names", metavar="FILE", help="one class name per line")
    g.add_argument("--no-photometric", action="store_true", help="no photometric distortion")
    g.add_argument("--seed", type=int)
    _add_train_run_flags(s)
    s.add_argument("--val-batch-size", type=int)
    s.set_defaults(func=cmd_segment_train)

    s = ss.add_parser("eval", help="mIoU, aAcc, mAcc and per-class IoU of a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", help="dataset root (default: the checkpoint's embedded default)")
    s.add_argument("--split", default="validation")
    s.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: the recipe's)")
    s.add_argument("--ms", action="store_true", help="multi-scale (0.5-1.75) + flip testing")
    s.add_argument("--json", action="store_true")
    _add_run_flags(s)
    s.set_defaults(func=cmd_segment_eval)

    s = ss.add_parser("predict", help="label maps (annotation encoding) and colour overlays for images")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("-o", "--output", required=True, metavar="DIR")
    s.add_argument("--mode", choices=["whole", "slide"])
    s.add_argument("--ms", action="store_true")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_segment_predict)


def cmd_study(args) -> int:
    from .study import Study, report, run_study
    study = Study(mixers=args.mixers, seeds=args.seeds, dim=args.dim, data=args.data,
                  output=args.output, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  device=args.device, workers=args.workers, progress=not args.no_progress)
    rows = run_study(study, log=lambda msg: print(msg, flush=True))
    result = report(study, rows)
    print(result["table"])
    print("wrote " + ", ".join(result["files"]))
    return 0


def _add_run_flags(s):
    s.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    s.add_argument("-j", "--workers", type=int, default=2, help="data loading processes")
    s.add_argument("--amp", action="store_true", help="mixed precision (see --amp-dtype)")
    s.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"])
    s.add_argument("--channels-last", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mambaout", description="MambaOut models: build, measure, load weights.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("models", help="the variant table: paper vs measured params/MACs")
    s.add_argument("pattern", nargs="?", help="shell-style filter, e.g. '*base*'")
    s.add_argument("--img-size", type=int, help="default: each model's own (224; 32 for study_*)")
    s.add_argument("--task", choices=["classification", "segmentation", "detection", "all"],
                   help="which tables (default: all; with --json the classification rows only)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("complexity", help="measure params and MACs of one model")
    s.add_argument("model")
    s.add_argument("--img-size", type=img_size_arg, metavar="N|HxW",
                   help="default: the model's own (224; 32 for study_*; 512x2048 for upernet_*; 800x1280 for mask_rcnn_*)")
    s.add_argument("--num-classes", type=int, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_complexity)

    s = sub.add_parser("train", help="train or fine-tune (Table 2 recipe; embedded digits set without --data)")
    s.add_argument("--data", help="ImageFolder root with train/<class>/* and val/<class>/*")
    s.add_argument("--model", help="default: mambaout_femto on digits, mambaout_tiny with --data")
    g = s.add_argument_group("recipe (defaults: Table 2 with --data, the digits recipe without)")
    g.add_argument("--epochs", type=int)
    g.add_argument("-b", "--batch-size", type=int, help="per process")
    g.add_argument("--grad-accum-steps", type=int)
    g.add_argument("--lr", type=float, help="absolute peak lr (default: lr-base x global batch / lr-base-size)")
    g.add_argument("--lr-base", type=float)
    g.add_argument("--lr-base-size", type=int)
    g.add_argument("--opt", help="optimizer (timm name, default adamw)")
    g.add_argument("--opt-eps", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--warmup-lr", type=float)
    g.add_argument("--min-lr", type=float)
    g.add_argument("--clip-grad", type=float)
    g.add_argument("--img-size", type=int)
    g.add_argument("--aa", help="RandAugment policy, e.g. rand-m9-mstd0.5-inc1, or none")
    g.add_argument("--mixup", type=float)
    g.add_argument("--cutmix", type=float)
    g.add_argument("--mixup-prob", type=float)
    g.add_argument("--mixup-switch-prob", type=float)
    g.add_argument("--reprob", type=float, help="random erasing probability")
    g.add_argument("--smoothing", type=float, help="label smoothing")
    g.add_argument("--drop-path", type=float, help="stochastic depth (default: per model)")
    g.add_argument("--drop", type=float, help="head dropout")
    g.add_argument("--hflip", type=float)
    g.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="random-resized-crop area range, fractions of the image (Table 2 / timm: 0.08 1.0)")
    g.add_argument("--ratio", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="random-resized-crop aspect-ratio range (timm: 0.75 1.333)")
    g.add_argument("--crop-pct", type=float, help="eval crop fraction")
    g.add_argument("--model-ema", action="store_true")
    g.add_argument("--model-ema-decay", type=float)
    g.add_argument("--seed", type=int)
    _add_train_run_flags(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("validate", help="top-1/top-5/loss of a checkpoint on an ImageFolder split or the digits set")
    s.add_argument("--checkpoint", help="training checkpoint, or weights file with --model")
    s.add_argument("--model")
    s.add_argument("--pretrained", action="store_true")
    s.add_argument("--data", help="ImageFolder root (uses <data>/<split>/ if present); default: digits")
    s.add_argument("--split", default="val")
    s.add_argument("-b", "--batch-size", type=int, default=128)
    s.add_argument("--img-size", type=int)
    s.add_argument("--crop-pct", type=float)
    s.add_argument("--json", action="store_true")
    _add_run_flags(s)
    s.add_argument("--onnx", help="evaluate this exported (fp32 or int8) ONNX file with ONNX Runtime")
    s.add_argument("--bf16", action="store_true", help="bf16 weights and inputs (--amp: autocast instead)")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("predict", help="top-k classes for image files")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--checkpoint")
    s.add_argument("--model")
    s.add_argument("--pretrained", action="store_true")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("-b", "--batch-size", type=int, default=32)
    s.add_argument("--img-size", type=int)
    s.add_argument("--onnx", help="run this exported ONNX file through ONNX Runtime instead")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict)

    from .cam import METHODS
    s = sub.add_parser("cam", help="Grad-CAM overlays (PNG, titled with class and probability) for image files")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--checkpoint")
    s.add_argument("--model")
    s.add_argument("--pretrained", action="store_true")
    s.add_argument("--class", dest="target", metavar="K", help="class index or name (default: each image's top class)")
    s.add_argument("--method", default="gradcam", choices=list(METHODS))
    s.add_argument("--layer", help="module name of the maps (default: the last stage with at least 4x4 cells; stages.3 from 128 px up)")
    s.add_argument("-o", "--output", required=True, metavar="DIR")
    s.add_argument("--save-npy", action="store_true", help="also the raw map at the input size (float32 .npy)")
    s.add_argument("--img-size", type=int)
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_cam)

    s = sub.add_parser("demo", help="browser demo (Gradio): upload an image, see the top-5 classes and Grad-CAM")
    s.add_argument("--checkpoint")
    s.add_argument("--model")
    s.add_argument("--pretrained", action="store_true")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--max-mb", type=float, default=20.0, help="largest upload accepted, in MB (default 20)")
    s.add_argument("--method", default="gradcam", choices=list(METHODS))
    s.add_argument("--layer")
    s.add_argument("--img-size", type=int)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("benchmark", help="throughput vs timm (interleaved, median of repeats)")
    s.add_argument("--model", nargs="+", default=["mambaout_tiny"])
    s.add_argument("--compare", action="append", choices=["timm", "reference"],
                   help="also run timm's implementation (+ convnext_tiny) or our reference block")
    s.add_argument("--mode", default="infer", choices=["infer", "train", "both"])
    s.add_argument("-b", "--batch-size", type=int, default=16)
    s.add_argument("--img-size", type=int, default=224)
    s.add_argument("--device", default="cpu")
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                   help="bf16: ours with bf16 weights and under autocast, timm under autocast; fp16: autocast; "
                        "int8: ours quantized (needs --backend onnxruntime), timm fp32; ours also runs fp32")
    s.add_argument("--channels-last", action="store_true")
    s.add_argument("--torchcompile", "--compile", dest="torchcompile", action="store_true")
    s.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--iters", type=int, default=1, help="timed steps per repeat")
    s.add_argument("--threads", type=int)
    s.add_argument("--peak-tflops", type=float, help="device peak for MFU (known GPUs are built in)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--csv", help="also write the records to this CSV file")
    s.add_argument("--plot", help="also write a bar chart PNG")
    s.set_defaults(func=cmd_benchmark)

    s = sub.add_parser("export", help="export to ONNX or TorchScript, checked against PyTorch")
    s.add_argument("model")
    s.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--checkpoint")
    s.add_argument("--pretrained", action="store_true")
    s.add_argument("--img-size", type=int)
    s.add_argument("--opset", type=int, default=17)
    s.add_argument("--no-check", action="store_true", help="skip the parity check")
    s.add_argument("--quantize", choices=["int8"], help="int8 static quantization (ONNX Runtime, QDQ, per-channel)")
    s.add_argument("--calibration", metavar="DIR", help="images to calibrate int8 on (default: the digits set)")
    s.add_argument("--calibration-images", type=int, default=64)
    s.add_argument("--calibration-method", default="minmax", choices=["minmax", "percentile", "entropy"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("convert", help="re-save an official/timm checkpoint as safetensors (timm layout)")
    s.add_argument("model")
    s.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin/.safetensors file")
    s.add_argument("-o", "--output", required=True, help="output .safetensors file")
    s.add_argument("--num-classes", type=int, default=None)
    s.set_defaults(func=cmd_convert)

    _add_segment_parser(sub)
    _add_detect_parser(sub)

    s = sub.add_parser("study", help="Table 8: train isotropic Conv / Attention / SSM models over seeds and compare")
    s.add_argument("--mixers", nargs="+", default=["conv", "attn", "ssm"], metavar="MIXER",
                   help="conv, attn, attn_causal, ssm, ssm_bi (or model names); default: conv attn ssm")
    s.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="N", help="default: 0")
    s.add_argument("--dim", type=int, default=64, help="64 or 192 (Table 8); default 64")
    s.add_argument("--data", default=None,
                   help="CIFAR-10/100 folder in torchvision's format (default: the embedded digits set)")
    s.add_argument("-o", "--output", default="runs/study", help="study folder (default runs/study); "
                   "finished runs in it are reused, interrupted ones resumed")
    s.add_argument("--epochs", type=int, help="default: 10 on digits, 200 on CIFAR (the paper's)")
    s.add_argument("-b", "--batch-size", type=int, help="default: 64 on digits, 128 on CIFAR")
    s.add_argument("--lr", type=float, help="peak lr (default: 2e-3 on digits, 1e-3 on CIFAR)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    s.add_argument("-j", "--workers", type=int, default=2, help="data loading processes")
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("seqlen", help="the paper's long-sequence criterion: is L > 6D for this input?")
    s.add_argument("--preset", action="append", metavar="NAME",
                   help="imagenet-224, coco-800x1333, ade20k-512x2048, kinetics-16x224, kinetics-16x224-t2 "
                        "or all (repeatable; default: all unless --img-size is given)")
    s.add_argument("--img-size", metavar="H[xW]", help="custom input, e.g. 224 or 800x1333")
    s.add_argument("--stride", type=int, help="patch size / total stride of the stage (default 16)")
    s.add_argument("--dim", type=int, help="token width D (default 384 = ViT-S)")
    s.add_argument("--frames", type=int, help="video: frames T in the clip (with --img-size)")
    s.add_argument("--tubelet", type=int, help="video: frames per token t (default 1)")
    s.add_argument("--plot", metavar="FILE.png", help="also write the ratio-over-L plot")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_seqlen)
    return p


def _version() -> str:
    from . import __version__
    return __version__


@contextlib.contextmanager
def _report_on_rank0():
    """Under torchrun every process runs the command: only rank 0 prints its report (stdout), so
    that `--json` output stays one document; errors still reach stderr from every process."""
    if os.environ.get("RANK", "0") in ("", "0"):
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and argument errors end here
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _report_on_rank0():
            return args.func(args)
    except MambaOutError as e:
        print(f"mambaout: error: {e}", file=sys.stderr)
        return 3 if isinstance(e, TrainingDiverged) else 2
    except KeyboardInterrupt:
        print("mambaout: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
