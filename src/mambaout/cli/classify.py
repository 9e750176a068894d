"""The classification commands: train, validate, predict, cam, demo, export, convert."""
from __future__ import annotations

import json
from typing import Optional

from ..errors import MambaOutError
from ..tasks.classification.recipe import RECIPES, Recipe, digits_recipe, finegrained_recipe, vmamba_recipe
from .common import _add_engine_flags, _add_run_flags, _add_train_run_flags, _amp, _plan, _report_images
from .flags import RecipeFlags

# The Recipe fields `mambaout train` has flags for, in --help order (--aa sets auto_augment);
# flags left at None keep the recipe's value.
TRAIN_FLAGS = RecipeFlags(Recipe, (
    ("recipe", "base"), "model", "epochs", "batch_size", "grad_accum_steps", "lr", "lr_base", "lr_base_size", "opt", "opt_eps",
    "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "clip_grad", "img_size", ("aa", "auto_augment"),
    "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "reprob", "smoothing", "drop_path", "drop", "hflip",
    "scale", "ratio", "crop_pct", "crop_mode", "train_crop", "model_ema", "model_ema_decay", "soft_mask_ratio", "soft_mask_epochs", "seed",
), defaults=(("Table 2", Recipe), ("vmamba", vmamba_recipe), ("finegrained", finegrained_recipe),
             ("digits", digits_recipe)))
RECIPE_FLAGS = TRAIN_FLAGS.flags   # flag (dest) -> Recipe field
MODEL_HELP = ("model name, or a saved model folder / hub repo: 'local-dir:DIR', 'hf-hub:org/name' "
              "(its weights; --pretrained implied)")


def recipe_changes(args) -> dict:
    changes = TRAIN_FLAGS.given(args)
    if changes.get("auto_augment") in ("none", ""):
        changes["auto_augment"] = None
    return changes


def recipe_from_args(args, changes: Optional[dict] = None):
    """With --data the base recipe --recipe names (Table 2 by default); the digits recipe
    otherwise; then the flags' changes."""
    from dataclasses import replace
    changes = recipe_changes(args) if changes is None else changes
    base = changes.get("base")
    if not args.data and base not in (None, "digits"):
        raise MambaOutError(f"--recipe {base} is a recipe for your data: give --data DIR (without it, the "
                            "embedded digits train with their own recipe)")
    if args.data and base == "digits":
        raise MambaOutError("--recipe digits is the embedded digits' recipe: leave out --data, or pick table2 / vmamba")
    recipe = replace(RECIPES[base or "table2"]() if args.data else digits_recipe(), **changes)
    if args.data and args.img_size is None:  # the model's own size (32 for the CIFAR study models)
        from ..models import get_variant, pretrained_cfg
        from ..models.hub import is_hub_name
        # a model folder / hub repo: the size its weights were trained and evaluated at
        recipe.img_size = (int(pretrained_cfg(recipe.model)["input_size"][-1]) if is_hub_name(recipe.model)
                           else get_variant(recipe.model).input_size)
    return recipe


def _pretrained(args) -> bool:
    """--pretrained, implied by a model folder / hub name ('local-dir:DIR', 'hf-hub:org/name'):
    its weights are what such a name names."""
    from ..models.hub import is_hub_name
    return bool(args.pretrained or is_hub_name(getattr(args, "model", None)))


def cmd_train(args) -> int:
    from ..tasks.classification.train import train
    given_source = {"data": args.data, **({"dataset": args.dataset} if args.dataset else {})}
    recipe, source, opts = _plan(args, Recipe, recipe_changes(args), given_source,
                                 lambda given: recipe_from_args(args, given))
    result = train(recipe, opts, dataset=source.get("dataset"))
    if result.status == "finished":
        print(f"done: best top-1 {result.best:.2f}%, final top-1 {result.final:.2f}% "
              f"after {result.epochs_run} epochs; checkpoints and logs in {result.output}")
    return 0


def cmd_transfer(args) -> int:
    from dataclasses import replace
    from ..tasks.classification.transfer import format_table, transfer
    from .common import _run_options
    if args.pretrained and args.checkpoint:
        raise MambaOutError("give --pretrained or --checkpoint, not both")
    opts = replace(_run_options(args), data=None, output=None, resume=None)
    report = transfer(args.root, args.datasets, args.model, _pretrained(args), args.checkpoint, args.output,
                      recipe_changes(args), opts)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def cmd_validate(args) -> int:
    from ..tasks.classification.evaluate import validate
    amp = _amp(args)
    r = validate(args.checkpoint, args.model, _pretrained(args), args.data, args.split, args.batch_size,
                 args.workers, args.img_size, args.crop_pct, args.device, amp, args.channels_last,
                 onnx=args.onnx, bf16=args.bf16, dataset_name=args.dataset)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} on {r['data']} [{r['split']}], {r['images']} images at {r['img_size']}px: "
              f"top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%, loss {r['loss']:.4f}"
              + (f" ({r['skipped']} unreadable images skipped)" if r["skipped"] else ""))
    return 0


def cmd_predict(args) -> int:
    from ..tasks.classification.predict import predict
    r = predict(args.images, args.checkpoint, args.model, _pretrained(args), args.top_k, args.batch_size,
                args.img_size, args.device, onnx=args.onnx)

    def show(p):
        print(p["image"])
        for t in p["topk"]:
            print(f"  {100 * t['prob']:6.2f}%  {t['label']}  (class {t['index']})")
    return _report_images(r, "predictions", show, args.json)


def cmd_cam(args) -> int:
    from ..analysis.cam import explain_images
    from ..tasks.classification.predict import Classifier
    if not args.images:
        raise MambaOutError("no images given")
    clf = Classifier.load(args.checkpoint, args.model, _pretrained(args), args.img_size, args.device)
    r = explain_images(args.images, clf, args.output, target=args.target, method=args.method, layer=args.layer,
                       save_npy=args.save_npy)
    return _report_images(r, "results", lambda e: print(f"{e['image']}: {e['label']} ({100 * e['prob']:.1f}%) -> "
                                                        f"{e['overlay']}"), args.json)


def cmd_demo(args) -> int:
    from ..deploy.demo import serve
    from ..tasks.classification.predict import Classifier
    if args.max_mb <= 0:
        raise MambaOutError(f"--max-mb must be positive, got {args.max_mb}")
    clf = Classifier.load(args.checkpoint, args.model, _pretrained(args), args.img_size, args.device, random_ok=True)
    return serve(clf, host=args.host, port=args.port, max_mb=args.max_mb, method=args.method, layer=args.layer)


def cmd_export(args) -> int:
    if args.format == "hub":
        return _export_hub(args)
    from ..deploy.export import export
    model = args.model or _checkpoint_model(args.checkpoint)
    r = export(model, args.format, args.output, args.checkpoint, _pretrained(args), args.img_size,
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


def _checkpoint_model(checkpoint) -> str:
    """MODEL left out: the model a training checkpoint records."""
    if not checkpoint:
        raise MambaOutError("give MODEL, or --checkpoint FILE of a training run")
    from ..engine.checkpoint import read_training_checkpoint
    return read_training_checkpoint(checkpoint, resume=False)["model_name"]


def _export_hub(args) -> int:
    """--format hub: a folder timm and the Hugging Face hub read (deploy/hub.py)."""
    from ..deploy.hub import export_hub
    given = [flag for flag, on in (("--quantize", args.quantize), ("--img-size", args.img_size),
                                   ("--no-check", args.no_check), ("--calibration", args.calibration)) if on]
    if given:
        raise MambaOutError(f"{', '.join(given)} do not apply to --format hub (the folder records the "
                            f"checkpoint's evaluation size and transform)")
    r = export_hub(args.model, args.output, args.checkpoint, args.pretrained, overwrite=args.overwrite,
                   ema=args.ema, dataset=args.dataset)
    if args.json:
        print(json.dumps(r))
    else:
        where = ("plain timm loads it: timm.create_model('local-dir:{0}', pretrained=True)" if r["timm_native"] else
                 "timm loads it after `import mambaout; mambaout.register_timm()`").format(r["output"])
        print(f"wrote {r['output']} (config.json, model.safetensors, README.md; {r['architecture']}, "
              f"{r['num_classes']} classes, input {'x'.join(map(str, r['input_size']))}"
              f"{', class names' if r['class_names'] else ''}); {where}")
    return 0


def cmd_push_to_hub(args) -> int:
    from ..deploy.hub import push_to_hub
    kwargs = {k: v for k, v in (("ema", args.ema), ("dataset", args.dataset)) if v}
    r = push_to_hub(args.source, args.repo_id, private=args.private, token=args.token,
                    commit_message=args.message, **kwargs)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"uploaded {', '.join(r['files'])} to {r['url']}; load it with --model hf-hub:{r['repo_id']}")
    return 0


def cmd_convert(args) -> int:
    """Load a checkpoint in any supported layout and save it as safetensors in ours (= timm's)."""
    from safetensors.torch import save_file
    from ..models import create_model
    from ..utils import atomic_write
    model = create_model(args.model, num_classes=args.num_classes, checkpoint_path=args.checkpoint)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"architecture": model.variant, "num_classes": str(model.num_classes), "format": "timm"}
    atomic_write(args.output, lambda tmp: save_file(sd, tmp, metadata=meta))
    print(f"wrote {args.output}: {model.variant}, {len(sd)} tensors, timm layout")
    return 0


DATA_HELP = ("the images: an ImageFolder root (train/<class>/* beside val/ or test/), a CIFAR folder, or one "
             "of the fine-grained datasets as it ships (CUB-200-2011, Stanford Cars, Stanford Dogs, Oxford-IIIT "
             "Pets, FGVC Aircraft; see docs/transfer.md)")


def _add_dataset_flag(s):
    from ..data.finegrained import LAYOUTS
    s.add_argument("--dataset", choices=list(LAYOUTS),
                   help="the fine-grained dataset --data holds (default: recognised from its files)")


def add_train_parser(sub):
    s = sub.add_parser("train", help="train or fine-tune (Table 2 recipe; embedded digits set without --data)")
    s.add_argument("--data", help=DATA_HELP)
    _add_dataset_flag(s)
    TRAIN_FLAGS.add(s, "base", "model")
    g = s.add_argument_group("recipe (defaults: Table 2 with --data, the digits recipe without)")
    TRAIN_FLAGS.add(g, "epochs", "seed")
    _add_train_run_flags(s)
    s.set_defaults(func=cmd_train)


def add_transfer_parser(sub):
    from ..data.finegrained import LAYOUTS
    s = sub.add_parser("transfer", help="Table 9: fine-tune on each fine-grained dataset under a folder, then the table",
                       description="Fine-tunes --model on each fine-grained dataset found under --root (each an "
                                   "ordinary resumable run in <output>/<dataset>/, the finegrained recipe), then "
                                   "prints and writes Table 9 (table9.json, table9.csv). Rerunning the command "
                                   "skips finished runs and resumes unfinished ones.")
    s.add_argument("--root", required=True, help="the folder holding the datasets as they ship (docs/transfer.md)")
    s.add_argument("--datasets", nargs="+", choices=list(LAYOUTS), metavar="NAME",
                   help=f"which of {', '.join(LAYOUTS)} (default: every one found under --root)")
    s.add_argument("--model", default="mambaout_tiny", help=MODEL_HELP + " (default: mambaout_tiny)")
    s.add_argument("--pretrained", action="store_true", help="start from the model's released ImageNet weights")
    s.add_argument("--checkpoint", help="start from these weights (a training checkpoint or weights file)")
    s.add_argument("-o", "--output", help="where the runs and the table go (default: runs/transfer-<model>)")
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    g = s.add_argument_group("recipe (default: finegrained; each flag changes it for every dataset)")
    TRAIN_FLAGS.add(g, "epochs", "seed")
    _add_engine_flags(s)
    s.set_defaults(func=cmd_transfer, data=None, resume=None, initial_checkpoint=None)


def add_validate_parser(sub):
    s = sub.add_parser("validate", help="top-1/top-5/loss of a checkpoint on an ImageFolder split or the digits set")
    s.add_argument("--checkpoint", help="training checkpoint, or weights file with --model")
    s.add_argument("--model", help=MODEL_HELP)
    s.add_argument("--pretrained", action="store_true")
    s.add_argument("--data", help=DATA_HELP + "; default: the embedded digits")
    _add_dataset_flag(s)
    s.add_argument("--split", help="the split to evaluate (an ImageFolder: <data>/<split>/ if present; default: "
                                   "val, or the test split of a dataset without val, e.g. the fine-grained ones)")
    s.add_argument("-b", "--batch-size", type=int, default=128)
    s.add_argument("--img-size", type=int)
    s.add_argument("--crop-pct", type=float)
    s.add_argument("--json", action="store_true")
    _add_run_flags(s)
    s.add_argument("--onnx", help="evaluate this exported (fp32 or int8) ONNX file with ONNX Runtime")
    s.add_argument("--bf16", action="store_true", help="bf16 weights and inputs (--amp: autocast instead)")
    s.set_defaults(func=cmd_validate)


def add_predict_parser(sub):
    s = sub.add_parser("predict", help="top-k classes for image files")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--checkpoint")
    s.add_argument("--model", help=MODEL_HELP)
    s.add_argument("--pretrained", action="store_true")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("-b", "--batch-size", type=int, default=32)
    s.add_argument("--img-size", type=int)
    s.add_argument("--onnx", help="run this exported ONNX file through ONNX Runtime instead")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict)


def add_cam_parser(sub):
    from ..analysis.cam import METHODS
    s = sub.add_parser("cam", help="Grad-CAM overlays (PNG, titled with class and probability) for image files")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--checkpoint")
    s.add_argument("--model", help=MODEL_HELP)
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


def add_demo_parser(sub):
    from ..analysis.cam import METHODS
    s = sub.add_parser("demo", help="browser demo (Gradio): upload an image, see the top-5 classes and Grad-CAM")
    s.add_argument("--checkpoint")
    s.add_argument("--model", help=MODEL_HELP)
    s.add_argument("--pretrained", action="store_true")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--max-mb", type=float, default=20.0, help="largest upload accepted, in MB (default 20)")
    s.add_argument("--method", default="gradcam", choices=list(METHODS))
    s.add_argument("--layer")
    s.add_argument("--img-size", type=int)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_demo)


def add_export_parser(sub):
    s = sub.add_parser("export", help="export to ONNX or TorchScript, checked against PyTorch, or to a folder "
                                      "timm and the Hugging Face hub read (--format hub)")
    s.add_argument("model", nargs="?", help="model name, 'local-dir:DIR' or 'hf-hub:org/name' (default: the "
                                            "--checkpoint's)")
    s.add_argument("--format", required=True, choices=["onnx", "torchscript", "hub"],
                   help="hub: config.json + model.safetensors + README.md model card in folder -o")
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
    g = s.add_argument_group("--format hub")
    g.add_argument("--overwrite", action="store_true", help="replace the files of an existing, non-empty folder")
    g.add_argument("--ema", action="store_true", help="the checkpoint's EMA weights instead of the trained ones")
    g.add_argument("--dataset", help="the training data's name in the model card (default: the data folder's)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export)


def add_push_to_hub_parser(sub):
    s = sub.add_parser("push-to-hub", help="upload a model folder (export --format hub) or a training checkpoint "
                                           "to the Hugging Face hub")
    s.add_argument("source", metavar="CHECKPOINT_OR_FOLDER")
    s.add_argument("repo_id", metavar="REPO_ID", help="org/name or name (your namespace)")
    s.add_argument("--private", action="store_true", help="make a new repository private")
    s.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or `hf auth login`'s)")
    s.add_argument("--message", help="commit message")
    s.add_argument("--ema", action="store_true", help="a checkpoint's EMA weights instead of the trained ones")
    s.add_argument("--dataset", help="the training data's name in the model card (default: the data folder's)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_push_to_hub)


def add_convert_parser(sub):
    s = sub.add_parser("convert", help="re-save an official/timm checkpoint as safetensors (timm layout)")
    s.add_argument("model")
    s.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin/.safetensors file")
    s.add_argument("-o", "--output", required=True, help="output .safetensors file")
    s.add_argument("--num-classes", type=int, default=None)
    s.set_defaults(func=cmd_convert)
