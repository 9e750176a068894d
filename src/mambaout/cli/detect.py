"""`mambaout detect train|eval|predict`: Mask R-CNN detection and instance segmentation."""
from __future__ import annotations

import json
from typing import Optional

from ..errors import MambaOutError
from ..tasks.detection.recipe import DetRecipe
from .common import _add_command_group, _add_run_flags, _add_train_run_flags, _amp, _plan, _report_images
from .flags import RecipeFlags

# The DetRecipe fields `mambaout detect train` has flags for, in --help order; flags left at
# None keep the recipe's value (--schedule also picks a new run's base recipe: 1x or 3x).
DET_TRAIN_FLAGS = RecipeFlags(DetRecipe, (
    "model", "schedule", "epochs", "lr_steps", "batch_size", "grad_accum_steps", "lr", "warmup_iters",
    "weight_decay", "min_size", "max_size", "rois_per_image", "proposals", "drop_path", "clip_grad", "seed",
), defaults=(("COCO", DetRecipe),))
DET_RECIPE_FLAGS = DET_TRAIN_FLAGS.flags   # flag (dest) -> DetRecipe field

DET_PATHS = ("train_ann", "train_images", "val_ann", "val_images")


def _detection():
    """mambaout.tasks.detection, or one line naming the extra when pycocotools is missing."""
    try:
        from ..tasks.detection import task as detection
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "pycocotools":
            raise MambaOutError("mambaout detect needs pycocotools: pip install 'mambaout[detection]'") from None
        raise
    return detection


def det_recipe_changes(args) -> dict:
    # --schedule picks a new run's base recipe; checked against the run's own on resume
    return DET_TRAIN_FLAGS.given(args)


def det_recipe_from_args(args, changes: Optional[dict] = None):
    """The COCO 1x recipe (or 3x) with data; the embedded digit canvases otherwise."""
    from dataclasses import replace
    det_digits_recipe = _detection().det_digits_recipe
    has_data = args.data or args.train_ann
    recipe = (DetRecipe.three_x() if args.schedule == "3x" else DetRecipe()) if has_data else det_digits_recipe()
    changes = det_recipe_changes(args) if changes is None else changes
    return replace(recipe, **{k: v for k, v in changes.items() if k != "schedule"})


def cmd_detect_train(args) -> int:
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
    return _report_images(r, "written", lambda p: print(f"{p['image']} -> {p['drawn']}: {len(p['detections'])} "
                                                        "detection(s)"), args.json)


def add_detect_parser(sub):
    ds = _add_command_group(sub, "detect", "object detection + instance segmentation: Mask R-CNN on COCO-format data")

    s = ds.add_parser("train", help="train Mask R-CNN (COCO 1x recipe with data; embedded digit canvases without)")
    s.add_argument("--data", help="COCO 2017 layout: annotations/instances_{train,val}2017.json, {train,val}2017/")
    for flag in ("train-ann", "train-images", "val-ann", "val-images"):
        s.add_argument(f"--{flag}", help="another layout: annotation JSON files and image folders")
    DET_TRAIN_FLAGS.add(s, "model")
    g = s.add_argument_group("recipe (defaults: mmdetection's Swin Mask R-CNN 1x with the authors' lr)")
    DET_TRAIN_FLAGS.add(g, "schedule", "seed")
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
    s.add_argument("--json", action="store_true", help="print the per-image results (and errors) as JSON")
    s.set_defaults(func=cmd_detect_predict)
