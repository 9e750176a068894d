"""The `mambaout` command: a thin layer of argument parsing over the library.

One module per command group, each parsing its flags, calling one library function and
printing the report: classify.py (train, transfer, validate, predict, cam, demo, export, convert),
segment.py (`mambaout segment ...`), detect.py (`mambaout detect ...`), video.py
(`mambaout video ...`), tools.py (models,
complexity, benchmark, seqlen, study, erf). flags.py generates the training commands' recipe flags
from the recipe dataclasses; common.py holds what the command modules share."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import List, Optional

from ..errors import MambaOutError, TrainingDiverged
from . import classify, detect, segment, tools, video
from .classify import (RECIPE_FLAGS, TRAIN_FLAGS, cmd_cam, cmd_convert, cmd_demo, cmd_export, cmd_predict,
                       cmd_train, cmd_validate, recipe_changes, recipe_from_args)
from .common import _Parser, img_size_arg
from .detect import (DET_PATHS, DET_RECIPE_FLAGS, DET_TRAIN_FLAGS, cmd_detect_eval, cmd_detect_predict,
                     cmd_detect_train, det_recipe_changes, det_recipe_from_args)
from .segment import (SEG_RECIPE_FLAGS, SEG_TRAIN_FLAGS, cmd_segment_eval, cmd_segment_predict,
                      cmd_segment_train, seg_recipe_changes, seg_recipe_from_args)
from .tools import (DENSE_TABLES, cmd_benchmark, cmd_complexity, cmd_erf, cmd_models, cmd_seqlen, cmd_study,
                    dense_rows)

__all__ = [
    "main", "build_parser", "img_size_arg",
    "recipe_changes", "recipe_from_args", "RECIPE_FLAGS", "TRAIN_FLAGS",
    "seg_recipe_changes", "seg_recipe_from_args", "SEG_RECIPE_FLAGS", "SEG_TRAIN_FLAGS",
    "det_recipe_changes", "det_recipe_from_args", "DET_RECIPE_FLAGS", "DET_TRAIN_FLAGS", "DET_PATHS",
    "DENSE_TABLES", "dense_rows",
    "cmd_train", "cmd_validate", "cmd_predict", "cmd_cam", "cmd_demo", "cmd_export", "cmd_convert",
    "cmd_segment_train", "cmd_segment_eval", "cmd_segment_predict",
    "cmd_detect_train", "cmd_detect_eval", "cmd_detect_predict",
    "cmd_models", "cmd_complexity", "cmd_benchmark", "cmd_seqlen", "cmd_study", "cmd_erf",
]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mambaout", description="MambaOut models: build, measure, load weights.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # the commands in `mambaout --help` order
    tools.add_models_parser(sub)
    tools.add_complexity_parser(sub)
    classify.add_train_parser(sub)
    classify.add_transfer_parser(sub)
    classify.add_validate_parser(sub)
    classify.add_predict_parser(sub)
    classify.add_cam_parser(sub)
    classify.add_demo_parser(sub)
    tools.add_benchmark_parser(sub)
    classify.add_export_parser(sub)
    classify.add_push_to_hub_parser(sub)
    classify.add_convert_parser(sub)
    segment.add_segment_parser(sub)
    detect.add_detect_parser(sub)
    video.add_video_parser(sub)
    tools.add_study_parser(sub)
    tools.add_seqlen_parser(sub)
    tools.add_erf_parser(sub)
    return p


def _version() -> str:
    from .. import __version__
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
            code = args.func(args)
            sys.stdout.flush()     # a closed pipe shows here, while BrokenPipeError is still caught
            return code
    except MambaOutError as e:
        print(f"mambaout: error: {e}", file=sys.stderr)
        return 3 if isinstance(e, TrainingDiverged) else 2
    except KeyboardInterrupt:
        print("mambaout: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `mambaout models | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # nor one at exit's flush
        return 141             # 128 + SIGPIPE, as a shell pipeline reports it
