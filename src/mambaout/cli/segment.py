"""`mambaout segment train|eval|predict`: UperNet semantic segmentation."""
from __future__ import annotations

import json
from typing import Optional

from ..tasks.segmentation.recipe import SegRecipe
from .common import _add_command_group, _add_run_flags, _add_train_run_flags, _amp, _fmt, _plan, _report_images
from .flags import RecipeFlags

# The SegRecipe fields `mambaout segment train` has flags for, in --help order
# (--no-reduce-zero-label, --no-photometric: the switches); flags left at None keep the recipe's value.
SEG_TRAIN_FLAGS = RecipeFlags(SegRecipe, (
    "model", "iters", "batch_size", "grad_accum_steps", "crop_size", "scale", "ratio_range", "lr", "warmup_iters",
    "weight_decay", "min_lr", "drop_path", "aux_weight", "head_channels", "head_dropout", "aux_channels",
    "val_every", "test_mode", "clip_grad", "num_classes", "reduce_zero_label", "photometric", "seed",
), defaults=(("ADE20K", SegRecipe),))
SEG_RECIPE_FLAGS = SEG_TRAIN_FLAGS.flags   # flag (dest) -> SegRecipe field


def seg_recipe_changes(args) -> dict:
    return SEG_TRAIN_FLAGS.given(args)


def seg_recipe_from_args(args, changes: Optional[dict] = None):
    """The ADE20K recipe with --data; the embedded digits-canvas recipe otherwise."""
    from dataclasses import replace
    from ..tasks.segmentation.task import digits_seg_recipe
    recipe = SegRecipe() if args.data else digits_seg_recipe()
    return replace(recipe, **(seg_recipe_changes(args) if changes is None else changes))


def cmd_segment_train(args) -> int:
    from ..tasks.segmentation.task import train_segmentation
    recipe, source, opts = _plan(args, SegRecipe, seg_recipe_changes(args),
                                 {"data": args.data, "class_names": args.class_names},
                                 lambda given: seg_recipe_from_args(args, given))
    result = train_segmentation(recipe, opts, class_names=source.get("class_names"))
    if result.status == "finished":
        print(f"done: best mIoU {result.best:.2f}%, final mIoU {result.final:.2f}% after {result.global_step} "
              f"iterations; checkpoints and logs in {result.output}")
    return 0


def cmd_segment_eval(args) -> int:
    from ..tasks.segmentation.task import evaluate_checkpoint
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
    from ..tasks.segmentation.task import predict_images
    r = predict_images(args.images, args.checkpoint, args.output, mode=args.mode, ms=args.ms, device=args.device)
    return _report_images(r, "written", lambda p: print(f"{p['image']} -> {p['labels']}, {p['overlay']}"),
                          args.json)


def add_segment_parser(sub):
    ss = _add_command_group(sub, "segment", "semantic segmentation: UperNet on ADE20K-layout data (train|eval|predict)")

    s = ss.add_parser("train", help="train UperNet (ADE20K recipe with --data; embedded digit canvases without)")
    s.add_argument("--data", help="root with images/{training,validation} and annotations/{training,validation}")
    SEG_TRAIN_FLAGS.add(s, "model")
    g = s.add_argument_group("recipe (defaults: the Swin UperNet ADE20K config with the authors' settings)")
    SEG_TRAIN_FLAGS.add(g, "iters", "reduce_zero_label")
    g.add_argument("--class-names", metavar="FILE", help="one class name per line")
    SEG_TRAIN_FLAGS.add(g, "photometric", "seed")
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
    s.add_argument("--json", action="store_true", help="print the per-image results (and errors) as JSON")
    s.set_defaults(func=cmd_segment_predict)
