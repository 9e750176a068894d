"""The `mambaout` command: a thin layer of argument parsing over the library."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional

from .errors import MambaOutError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + traceback-ish noise
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def cmd_models(args) -> int:
    from .complexity import measure
    from .models import VARIANTS, list_models
    names = list_models(args.pattern)
    rows = []
    for name in names:
        v = VARIANTS[name]
        m = measure(name, args.img_size)
        rows.append(dict(model=name, depths=list(v.depths), dims=list(v.dims),
                         expansion=round(v.expansion_ratio, 3), conv_ratio=v.conv_ratio,
                         drop_path=v.drop_path, paper_params_m=v.paper_params_m,
                         paper_macs_g=v.paper_macs_g, paper_top1=v.paper_top1,
                         params=m["params"], macs=m["macs"], params_m=m["params_m"],
                         macs_g=m["macs_g"], weights=[f"{name}.{t}" for t in v.hub_tags],
                         source=v.source))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = (f"{'model':<24}{'depths':<16}{'dims':<22}{'paper P(M)':>11}{'P(M)':>8}"
            f"{'paper MACs(G)':>15}{'MACs(G)':>9}{'paper top-1':>13}  weights")
    print(f"MambaOut variants: params and MACs measured at {args.img_size}x{args.img_size} "
          f"(MACs: fvcore convention, rounded half up), next to the paper's numbers")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<24}{str(tuple(r['depths'])):<16}{str(tuple(r['dims'])):<22}"
              f"{_fmt(r['paper_params_m']):>11}{r['params_m']:>8.1f}{_fmt(r['paper_macs_g']):>15}"
              f"{r['macs_g']:>9.1f}{_fmt(r['paper_top1']):>13}  {', '.join(r['weights'])}")
    return 0


def cmd_complexity(args) -> int:
    from .complexity import measure
    from .models import get_variant
    get_variant(args.model)
    if args.img_size <= 0:
        raise MambaOutError(f"--img-size must be positive, got {args.img_size}")
    kw = {} if args.num_classes is None else {"num_classes": args.num_classes}
    m = measure(args.model, args.img_size, **kw)
    if args.json:
        print(json.dumps(m))
    else:
        print(f"{m['model']} at {m['img_size']}x{m['img_size']}: {m['params']:,} params "
              f"({m['params_m']:.1f}M), {m['macs']:,} MACs ({m['macs'] / 1e9:.3f}G, "
              f"{m['macs_g']:.1f}G rounded half up)")
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mambaout", description="MambaOut models: build, measure, load weights.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("models", help="the variant table: paper vs measured params/MACs")
    s.add_argument("pattern", nargs="?", help="shell-style filter, e.g. '*base*'")
    s.add_argument("--img-size", type=int, default=224)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("complexity", help="measure params and MACs of one model")
    s.add_argument("model")
    s.add_argument("--img-size", type=int, default=224)
    s.add_argument("--num-classes", type=int, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_complexity)

    s = sub.add_parser("convert", help="re-save an official/timm checkpoint as safetensors (timm layout)")
    s.add_argument("model")
    s.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin/.safetensors file")
    s.add_argument("-o", "--output", required=True, help="output .safetensors file")
    s.add_argument("--num-classes", type=int, default=None)
    s.set_defaults(func=cmd_convert)
    return p


def _version() -> str:
    from . import __version__
    return __version__


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
        return args.func(args)
    except MambaOutError as e:
        print(f"mambaout: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mambaout: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
