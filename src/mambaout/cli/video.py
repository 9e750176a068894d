"""`mambaout video train|eval|predict`: video classification (Something-Something V2, Table 10)."""
from __future__ import annotations

import json
from typing import Optional

from ..tasks.video.recipe import RECIPES, VideoRecipe, moving_digits_recipe
from .common import _add_command_group, _add_run_flags, _add_train_run_flags, _amp, _plan, _report_images
from .flags import RecipeFlags

# The VideoRecipe fields `mambaout video train` has flags for, in --help order.
VIDEO_TRAIN_FLAGS = RecipeFlags(VideoRecipe, (
    "model", "num_frames", "img_size", "epochs", "batch_size", "num_sample", "grad_accum_steps", "lr", "lr_base",
    "lr_base_size", "opt", "weight_decay", "layer_decay", "warmup_epochs", "warmup_lr", "min_lr", "clip_grad",
    ("aa", "auto_augment"), "scale", "hflip", "mixup", "cutmix", "smoothing", "reprob", "drop_path", "test_clips",
    "test_crops", "seed",
), defaults=(("SSV2", VideoRecipe), ("moving digits", moving_digits_recipe)))
LIST_HELP = {"train_list": "a list file of '<video> <label>' lines to train on (instead of --data)",
             "val_list": "the list file to validate on (with --train-list)",
             "video_root": "the folder the list files' relative paths start from (default: each list's folder)"}


def video_recipe_changes(args) -> dict:
    changes = VIDEO_TRAIN_FLAGS.given(args)
    if changes.get("auto_augment") in ("none", ""):
        changes["auto_augment"] = None
    return changes


def video_recipe_from_args(args, changes: Optional[dict] = None):
    """SSV2's recipe (VideoMamba-Ti's) with data; the moving digits' recipe without."""
    from dataclasses import replace
    has_data = bool(args.data or args.train_list)
    base = RECIPES["ssv2" if has_data else "digits"]()
    return replace(base, **(video_recipe_changes(args) if changes is None else changes))


def _lists(args) -> dict:
    return {k: getattr(args, k, None) for k in LIST_HELP}


def cmd_video_train(args) -> int:
    from ..tasks.video.task import train_video
    recipe, source, opts = _plan(args, VideoRecipe, video_recipe_changes(args), {"data": args.data, **_lists(args)},
                                 lambda given: video_recipe_from_args(args, given))
    result = train_video(recipe, opts, lists={k: source.get(k) for k in LIST_HELP})
    if result.status == "finished":
        print(f"done: best top-1 {result.best:.2f}%, final top-1 {result.final:.2f}% after {result.epochs_run} "
              f"epochs; checkpoints and logs in {result.output}")
    return 0


def cmd_video_eval(args) -> int:
    from ..tasks.video.task import evaluate_checkpoint
    r = evaluate_checkpoint(args.checkpoint, args.data, _lists(args), views=args.views, device=args.device,
                            workers=args.workers, batch_size=args.batch_size, amp=_amp(args))
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} on {r['data']}, {r['videos']} videos, {r['views']} views of {r['num_frames']} frames at "
              f"{r['img_size']}px: top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%, loss {r['loss']:.4f}"
              + (f" ({r['skipped']} unreadable videos skipped)" if r["skipped"] else ""))
    return 0


def cmd_video_predict(args) -> int:
    from ..tasks.video.task import predict_videos
    r = predict_videos(args.videos, args.checkpoint, args.top_k, args.views, args.device)

    def show(p):
        print(f"{p['video']} ({p['views']} views)")
        for t in p["topk"]:
            print(f"  {100 * t['prob']:6.2f}%  {t['label']}  (class {t['index']})")
    return _report_images(r, "predictions", show, args.json)


def _add_list_flags(s):
    for name, help in LIST_HELP.items():
        s.add_argument("--" + name.replace("_", "-"), metavar="FILE" if name != "video_root" else "DIR", help=help)


VIEWS_HELP = "views per video: 1 (centre clip, centre crop), full (the recipe's clips x crops: 2x3), or CxK"


def add_video_parser(sub):
    vs = _add_command_group(sub, "video", "video classification: Something-Something V2, list files or class "
                                          "folders; the embedded moving digits without data (train|eval|predict)")

    s = vs.add_parser("train", help="train a video model (VideoMamba-Ti's SSV2 recipe with data; moving digits without)")
    s.add_argument("--data", help="Something-Something V2 as released (20bn-something-something-v2/, labels/) or "
                                  "DIR/{train,val}/<class>/<video>")
    _add_list_flags(s)
    VIDEO_TRAIN_FLAGS.add(s, "model")
    g = s.add_argument_group("recipe (defaults: VideoMamba-Ti on SSV2 with data, the moving digits' without)")
    VIDEO_TRAIN_FLAGS.add(g, "num_frames", "seed")
    _add_train_run_flags(s)
    s.add_argument("--val-batch-size", type=int)
    s.set_defaults(func=cmd_video_train)

    s = vs.add_parser("eval", help="top-1/top-5 of a checkpoint over one view or the multi-view protocol")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", help="the dataset (default: the one the checkpoint trained on)")
    _add_list_flags(s)
    s.add_argument("--views", default="full", help=VIEWS_HELP + " (default: full)")
    s.add_argument("-b", "--batch-size", type=int, default=8)
    s.add_argument("--json", action="store_true")
    _add_run_flags(s)
    s.set_defaults(func=cmd_video_eval)

    s = vs.add_parser("predict", help="top-k classes for video files")
    s.add_argument("videos", nargs="+", metavar="VIDEO")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--views", default="full", help=VIEWS_HELP + " (default: full)")
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_video_predict)
