"""What the command modules share: the parser class, the run flags, the run plan of a training
command, and formatting and reporting helpers."""
from __future__ import annotations

import argparse
import json
import sys


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


def _amp(args):
    """--amp [--amp-dtype] -> None, "bf16" or "fp16"."""
    return {"bfloat16": "bf16", "float16": "fp16"}[args.amp_dtype] if args.amp else None


def _run_options(args):
    from ..engine import RunOptions
    amp = _amp(args)
    return RunOptions(data=args.data, output=args.output, resume=args.resume, pretrained=args.pretrained,
                      initial_checkpoint=args.initial_checkpoint, device=args.device, workers=args.workers,
                      amp=amp, channels_last=args.channels_last, compile=args.torchcompile,
                      grad_checkpointing=args.grad_checkpointing, checkpoint_every=args.checkpoint_every,
                      tensorboard=args.log_tensorboard, progress=not args.no_progress,
                      max_updates=args.max_updates, val_batch_size=getattr(args, "val_batch_size", None))


def _plan(args, recipe_cls, given: dict, source: dict, new_recipe):
    """(recipe, data source, run options): a new run's from the flags and the task's defaults
    (new_recipe(given)); with --resume the checkpoint's, checked against what is given."""
    opts = _run_options(args)
    if args.resume:
        from ..engine.resume import plan_resume
        return plan_resume(args.resume, recipe_cls, given, source, opts)
    return new_recipe(given), source, opts


def _add_run_flags(s):
    s.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    s.add_argument("-j", "--workers", type=int, default=2, help="data loading processes")
    s.add_argument("--amp", action="store_true", help="mixed precision (see --amp-dtype)")
    s.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"])
    s.add_argument("--channels-last", action="store_true")


def _add_train_run_flags(s):
    """Flags of every training command: where the run goes and how it runs (engine options)."""
    s.add_argument("--output", help="run folder (default: ./runs/<time>-<model>)")
    s.add_argument("--resume", help="continue from a training checkpoint (last.pth)")
    s.add_argument("--pretrained", action="store_true", help="start from the released weights (fine-tune)")
    s.add_argument("--initial-checkpoint", help="start from these weights (fine-tune)")
    _add_engine_flags(s)


def _add_engine_flags(s):
    """How a training run runs (engine options), for commands that start runs."""
    _add_run_flags(s)
    s.add_argument("--torchcompile", "--compile", dest="torchcompile", action="store_true")
    s.add_argument("--grad-checkpointing", action="store_true")
    s.add_argument("--checkpoint-every", type=int, default=0, help="also save last.pth every N updates")
    s.add_argument("--log-tensorboard", action="store_true")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--max-updates", type=int, help="stop after N optimizer updates (smoke tests)")


def _add_command_group(sub, name: str, help: str):
    """`mambaout <name> train|eval|predict`: the group's parser (alone it prints its help and
    exits 2) and its subcommands' subparsers (dest <name>_command)."""
    group = sub.add_parser(name, help=help)
    commands = group.add_subparsers(dest=f"{name}_command", metavar="train|eval|predict", parser_class=_Parser)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])
    return commands
