"""The model and analysis tools: models, complexity, benchmark, seqlen, study, erf."""
from __future__ import annotations

import json

from ..errors import MambaOutError
from .common import _fmt, _fmt_g, _size_pair, _size_text, img_size_arg


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
    from ..analysis.complexity import measure
    from .. import models
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


_METRICS = {"top-1": "paper top-1", "cifar": "paper C10/C100", "miou": "paper mIoU SS/MS",
            "ap": "paper AP box/mask", "ssv2": "paper SSV2", "mean": "paper mean"}


def paper_rows() -> list:
    """`mambaout models --paper`: every model the paper's tables cite, table by table, with the
    paper's params / MACs / score and ours measured (None where mambaout does not build it)."""
    from ..analysis.complexity import measure
    from ..models import DETECTION_VARIANTS, SEGMENTATION_VARIANTS, VARIANTS
    from ..models.paper_tables import PAPER_TABLES
    measured, rows = {}, []
    for table in PAPER_TABLES:
        for name in table.models:
            v = VARIANTS.get(name) or SEGMENTATION_VARIANTS.get(name) or DETECTION_VARIANTS.get(name)
            if v is not None and name not in measured:
                measured[name] = measure(name)
            m = measured.get(name, {})
            if name in VARIANTS:
                score = v.paper_cifar if table.metric == "cifar" else v.paper_top1
                paper = (v.paper_params_m, v.paper_macs_g, score)
            elif v is not None:
                score = v.paper_miou if name in SEGMENTATION_VARIANTS else v.paper_ap
                paper = (v.paper_params_m, m.get("paper_macs_g"), score)
            else:
                paper = (None, None, None)
            own = table.numbers.get(name, (None, None, None))
            paper = tuple(o if o is not None else p for o, p in zip(own, paper))
            # a video model's MACs as the table counts them: the test protocol's views of a video
            views = "views_macs_g" in m
            rows.append(dict(table=table.key, title=table.title, metric=table.metric, model=name, built=v is not None,
                             paper_params_m=paper[0], paper_macs_g=paper[1], paper_score=paper[2],
                             params_m=m.get("params_m"), macs_g=m.get("views_macs_g" if views else "macs_g"),
                             paper_convention_macs_g=m.get("paper_convention_views_macs_g" if views
                                                           else "paper_convention_macs_g"),
                             convention=m.get("convention"), params_counted=m.get("params_counted", "all"),
                             img_size=m.get("img_size")))
    return rows


def _print_paper_rows(rows) -> None:
    print("Every model the paper's tables cite: the paper's params / MACs / score and ours measured "
          "(MACs as each table counts them; * in the family's own convention where the paper quotes it: "
          "`mambaout complexity NAME` gives both)")
    title = None
    for r in rows:
        if r["title"] != title:
            title = r["title"]
            head = (f"{'model':<28}{'paper P(M)':>11}{'P(M)':>7}{'paper MACs(G)':>15}{'MACs(G)':>9}"
                    f"{_METRICS[r['metric']]:>19}")
            print(f"\n{title}\n{head}\n{'-' * len(head)}")
        dense = isinstance(r["img_size"], (tuple, list))      # segmentation / detection: integers
        params = lambda v: _fmt(v, 0 if dense else 1)
        macs = (lambda v: _fmt(v, 0)) if dense else _fmt_g
        score = r["paper_score"]
        score = "-" if score is None else "/".join(map(str, score)) if isinstance(score, (tuple, list)) else str(score)
        as_printed = lambda v: "-" if v is None else f"{v:g}"       # the paper's numbers as it prints them
        ours = macs(r["macs_g"]) if r["paper_convention_macs_g"] is None else f"{macs(r['paper_convention_macs_g'])}*"
        print(f"{r['model']:<28}{as_printed(r['paper_params_m']):>11}{params(r['params_m']):>7}"
              f"{macs(r['paper_macs_g']):>15}{ours:>9}{score:>19}"
              + ("" if r["built"] else "  (not in mambaout yet)"))


def cmd_models(args) -> int:
    from ..analysis.complexity import measure
    from ..models import VARIANTS, list_models
    if args.paper:
        if args.pattern or args.task or args.img_size:
            raise MambaOutError("--paper prints the paper's tables whole: leave out the pattern, --task and --img-size")
        rows = paper_rows()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_paper_rows(rows)
        return 0
    # --json lists the classification rows unless --task segmentation (or all) asks for more
    task = args.task or ("classification" if args.json else "all")
    names = list_models(args.pattern) if task in ("classification", "all") else []
    dense = {t: dense_rows(t, args.pattern) for t in DENSE_TABLES if task in (t, "all")}
    video = video_rows(args.pattern) if task in ("video", "all") else []
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
        print(json.dumps(rows + [r for t in dense for r in dense[t]] + video, indent=2))
        return 0
    if not rows:
        for t, dense_table in dense.items():
            if dense_table:
                _print_dense_rows(t, dense_table)
        _print_video_rows(video)
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
    _print_video_rows(video)
    return 0


def video_rows(pattern=None) -> list:
    """`models --task video`: each video model with its params and MACs of one view and of the
    test protocol's views (ours, and in the family's own convention), Table 10's numbers beside."""
    from ..analysis.complexity import measure
    from ..models import VARIANTS, list_video_models
    from ..models.paper_tables import PAPER_TABLES
    table10 = next(t for t in PAPER_TABLES if t.key == "table10").numbers
    rows = []
    for name in list_video_models(pattern):
        m, v = measure(name), VARIANTS[name]
        paper = table10.get(name, (None, None, None))
        rows.append(dict(model=name, task="video", num_frames=m["num_frames"], img_size=m["img_size"], views=m["views"],
                         params=m["params"], params_m=m["params_m"], macs_view_g=m["macs_g"],
                         macs_views_g=m["views_macs_g"], paper_convention_macs_views_g=m.get("paper_convention_views_macs_g"),
                         paper_params_m=paper[0], paper_macs_g=paper[1], paper_top1=paper[2], source=v.source))
    return rows


def _print_video_rows(rows) -> None:
    if not rows:
        return
    head = (f"{'video model':<24}{'clip':>10}{'views':>6}{'paper P(M)':>11}{'P(M)':>7}{'MACs/view(G)':>13}"
            f"{'paper MACs(G)':>14}{'MACs(G)':>9}{'own conv.(G)':>13}{'paper SSV2':>11}")
    print("\nVideo (Table 10: Something-Something V2; MACs of a video = views x one view, the paper's 2 clips x 3 "
          "crops; 'own conv.': the family's own counting convention)")
    print(head)
    print("-" * len(head))
    for r in rows:
        clip = f"{r['num_frames']}x{r['img_size']}"
        print(f"{r['model']:<24}{clip:>10}{r['views']:>6}{_fmt(r['paper_params_m'], 0):>11}{r['params_m']:>7.1f}"
              f"{r['macs_view_g']:>13.2f}{_fmt(r['paper_macs_g'], 0):>14}{r['macs_views_g']:>9.1f}"
              f"{_fmt(r['paper_convention_macs_views_g']):>13}{_fmt(r['paper_top1']):>11}")


def cmd_complexity(args) -> int:
    from ..analysis.complexity import measure
    from ..models import DETECTION_VARIANTS, SEGMENTATION_VARIANTS, get_variant
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
        counted = "" if m.get("params_counted", "all") == "all" else f" {m['params_counted']}"
        print(f"{m['model']} at {_size_text(m['img_size'])}: {m['params']:,} params "
              f"({m['params_m']:.1f}M{counted}), {m['macs']:,} MACs ({m['macs'] / 1e9:.3f}G, "
              f"{_fmt_g(m['macs_g'])}G rounded half up)")
        if "paper_convention" in m:
            print(f"  in the paper's convention, {m['paper_convention']}: {m['paper_convention_macs']:,} MACs "
                  f"({m['paper_convention_macs'] / 1e9:.3f}G, {_fmt_g(m['paper_convention_macs_g'])}G)")
    return 0


def cmd_benchmark(args) -> int:
    from ..deploy import benchmark as bench
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
        if set(args.compare or []) & set(bench.COMPARE_PAIRS):
            print("\nTable 4 (paper: RTX 4090, fp16, PyTorch 2.3):")
            print(bench.format_table4(records))
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
        bounds = {(r["model"], r["row_precision"]): r for r in records
                  if (r["impl"] == "mambaout" or r["impl"].startswith("mambaout:")) and r.get("gemm_only_ms")}
        for (model, precision), r in bounds.items():
            print(f"GEMM-only bound, {model} {precision}: its own GEMMs alone take {r['gemm_only_ms']:.1f} ms per "
                      f"batch ({r['gemm_only_img_per_s']:.1f} img/s); this forward runs at "
                      f"{100 * r['share_of_gemm_only']:.0f}% of that rate; with its dense convolutions (stem, "
                  f"downsampling: {r['dense_convs_ms']:.1f} ms alone) at {100 * r['share_of_dense_only']:.0f}%")
    return 0


def cmd_seqlen(args) -> int:
    from ..analysis import seqlen
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


def cmd_study(args) -> int:
    from ..analysis.study import Study, report, run_study
    study = Study(mixers=args.mixers, seeds=args.seeds, dim=args.dim, data=args.data,
                  output=args.output, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  device=args.device, workers=args.workers, progress=not args.no_progress)
    rows = run_study(study, log=lambda msg: print(msg, flush=True))
    result = report(study, rows)
    print(result["table"])
    print("wrote " + ", ".join(result["files"]))
    return 0


def cmd_erf(args) -> int:
    import sys
    from ..analysis import erf
    settings = erf.ErfSettings(models=args.model, output=args.output, checkpoints=args.checkpoint or [],
                               data=args.data, num_images=args.num_images, img_size=args.img_size,
                               device=args.device, seed=args.seed)
    results = erf.run(settings, say=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("Effective receptive field (RepLKNet's method): area ratio = the smallest centred square "
          "holding more than 20/50/99% of log10(map + 1) / max, over the image's area")
    head = f"{'model':<28}{'images':>7}{'feature map':>16}{'r20':>8}{'r50':>8}{'r99':>8}  centroid / centre"
    print(head)
    print("-" * len(head))
    for label, r in results.items():
        ratios = "".join(f"{'-' if r[k] is None else format(r[k], '.4f'):>8}"
                         for k in ("area_ratio_20", "area_ratio_50", "area_ratio_99"))
        fmap = "x".join(str(v) for v in r["feature_map"])
        centroid = "-" if r["centroid"] is None else "({:.1f}, {:.1f})".format(*r["centroid"])
        print(f"{label:<28}{r['images']:>7}{fmap:>16}{ratios}  {centroid} / {tuple(r['centre'])}")
    first = next(iter(results.values()))
    print("wrote " + ", ".join([first["png"]] + [r["npy"] for r in results.values()]))
    return 0


def add_models_parser(sub):
    s = sub.add_parser("models", help="the variant table: paper vs measured params/MACs")
    s.add_argument("pattern", nargs="?", help="shell-style filter, e.g. '*base*'")
    s.add_argument("--img-size", type=int, help="default: each model's own (224; 32 for study_*)")
    s.add_argument("--task", choices=["classification", "segmentation", "detection", "video", "all"],
                   help="which tables (default: all; with --json the classification rows only)")
    s.add_argument("--paper", action="store_true",
                   help="every model the paper's tables cite, grouped by table: the paper's numbers and ours")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)


def add_complexity_parser(sub):
    s = sub.add_parser("complexity", help="measure params and MACs of one model")
    s.add_argument("model")
    s.add_argument("--img-size", type=img_size_arg, metavar="N|HxW",
                   help="default: the model's own (224; 32 for study_*; 512x2048 for upernet_*; 800x1280 for mask_rcnn_*)")
    s.add_argument("--num-classes", type=int, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_complexity)


def add_benchmark_parser(sub):
    s = sub.add_parser("benchmark", help="throughput vs timm (interleaved, median of repeats)")
    s.add_argument("--model", nargs="+", default=["mambaout_tiny"])
    s.add_argument("--compare", action="append", choices=["timm", "reference", "openvino", "vmamba", "local_vmamba",
                                                          "efficient_vmamba", "vim", "illama"],
                   help="also run timm's implementation (+ convnext_tiny), our reference block, ours compiled by "
                        "OpenVINO (same precision, CPU inference), or the "
                        "comparator the paper pairs with each MambaOut model (vmamba: Table 4's VMamba-T/S/B; "
                        "local_vmamba, efficient_vmamba, vim, illama: the main table's / Table 5's; the "
                        "Table 4 layout is printed)")
    s.add_argument("--mode", default="infer", choices=["infer", "train", "both"])
    s.add_argument("-b", "--batch-size", type=int, default=16)
    s.add_argument("--img-size", type=int, default=224)
    s.add_argument("--device", default="cpu")
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                   help="bf16: ours with bf16 weights and under autocast, timm under autocast; fp16: autocast; "
                        "int8: ours quantized (needs --backend onnxruntime or openvino), timm fp32; ours also runs fp32")
    s.add_argument("--channels-last", action="store_true")
    s.add_argument("--torchcompile", "--compile", dest="torchcompile", action="store_true")
    s.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"],
                   help="onnxruntime / openvino: every row exported to ONNX and run by that runtime (CPU "
                        "inference; int8 rows quantized by `export --quantize int8`'s quantizer)")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--iters", type=int, default=1, help="timed steps per repeat")
    s.add_argument("--threads", type=int)
    s.add_argument("--peak-tflops", type=float, help="device peak for MFU (known GPUs are built in)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--csv", help="also write the records to this CSV file")
    s.add_argument("--plot", help="also write a bar chart PNG")
    s.set_defaults(func=cmd_benchmark)


def add_study_parser(sub):
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


def add_seqlen_parser(sub):
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


def add_erf_parser(sub):
    s = sub.add_parser("erf", help="effective receptive field maps and area ratios (RepLKNet's method)")
    s.add_argument("model", nargs="+", help="model name(s), one panel each")
    s.add_argument("--checkpoint", action="append", metavar="FILE",
                   help="weights for a model: none, or one per model in the same order (repeat the flag)")
    s.add_argument("--data", help="a folder of images, flat or <class>/<image> (default: random noise)")
    s.add_argument("-n", "--num-images", type=int, default=50, help="images to average over (default 50)")
    s.add_argument("--img-size", type=int, default=1024,
                   help="square input size (default 1024, RepLKNet's and VMamba's; smaller is faster)")
    s.add_argument("-o", "--output", required=True, help="folder for erf.png, <model>_erf.npy, erf.json")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    s.add_argument("--seed", type=int, default=0, help="seed of the noise images and of fresh models' initialisation (default 0)")
    s.add_argument("--json", action="store_true", help="print {model: {area_ratio_20, ...}} on stdout")
    s.set_defaults(func=cmd_erf)
