"""A trained model as a folder timm and the Hugging Face hub read: `save_pretrained`, its model
card, `push_to_hub`. The reading side ('local-dir:' / 'hf-hub:' model names) is
mambaout/models/hub.py.

The folder is what timm's `save_for_hf` writes (timm 1.0.31, timm/models/_hub.py
`save_config_for_hf`): config.json (architecture, num_classes, num_features, global_pool,
label_names, model_args, pretrained_cfg) and model.safetensors (the state dict; ours is timm's
layout), plus README.md, a model card with YAML front matter (library_name: timm, tags,
datasets, metrics; the fields huggingface.co reads), as timm's `push_to_hf_hub` adds one. For
the MambaOut rows timm has itself (mambaout_femto ... mambaout_base_plus_rw), plain
`timm.create_model("local-dir:DIR", pretrained=True)` loads it; the other families need
`import mambaout; mambaout.register_timm()` first (the architecture is their timm name,
models/hub.timm_architecture), and `mambaout.create_model("local-dir:DIR")` loads all.

From a training checkpoint (engine/checkpoint.py: model_name, num_classes, class_names,
img_size, recipe, history, best_score, data_source) the folder holds the weights that
`mambaout validate --checkpoint` evaluates (the trained ones, or with ema=True the EMA), the
class names as label_names, and the evaluation transform validate uses for it
(input_size = the checkpoint's img_size, the recipe's crop_pct and interpolation, the model's
mean / std) in pretrained_cfg; the card holds the metrics of the best epoch and the training
command, rebuilt from the recorded recipe (`training_command`).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence, Union

import torch.nn as nn

from ..errors import CheckpointError, MambaOutError, WriteError, first_line
from ..models import hub as reader
from ..utils import atomic_write

log = logging.getLogger("mambaout")

PAPER_NAME = "MambaOut: Do We Really Need Mamba for Vision?"
PAPER_IDS = "arXiv:2405.07992"
# The paper's entry as its authors give it (github.com/yuweihao/MambaOut, README, Bibtex).
CITATION = """@inproceedings{yu2025mambaout,
  title={MambaOut: Do We Really Need Mamba for Vision?},
  author={Yu, Weihao and Wang, Xinchao},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  year={2025}
}"""
TAGS = ("image-classification", "timm", "mambaout")
# pretrained_cfg keys naming where weights come from: never written (the folder is the source).
SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")
# Recipe fields `mambaout train` has no flag for (cli/classify.py TRAIN_FLAGS; checked by
# tests/deploy/test_hub.py) and the flags whose name is not the field's.
NO_FLAG = ("opt_betas", "sched", "interpolation")
FLAG_NAMES = {"base": "recipe", "auto_augment": "aa"}
HUB_TIMEOUT_S = 5.0        # the reachability / token check before an upload: never hang offline


# ---- save_pretrained ---------------------------------------------------------------------------

def save_pretrained(model_or_checkpoint: Union[nn.Module, str, os.PathLike], out_dir, *,
                    model_name: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                    dataset: Optional[str] = None, license: str = "apache-2.0", ema: bool = False,
                    repo_id: Optional[str] = None, overwrite: bool = False) -> dict:
    """Write `out_dir`: config.json, model.safetensors and README.md (see the module docstring).

    model_or_checkpoint: a model (mambaout.create_model's, or timm's MambaOut), a training
        checkpoint (best.pth / last.pth of `mambaout train`), a plain weights file (with
        model_name), a model folder, or a 'local-dir:' / 'hf-hub:' name.
    class_names: label_names (default: the checkpoint's, or the model's pretrained_cfg's).
    dataset: the name the card gives the training data (default: the checkpoint's data folder's
        name, 'digits' for the embedded set).
    license: the card's and pretrained_cfg's license (default apache-2.0, the code's).
    ema: from a checkpoint that kept an EMA of the weights, write the EMA (the weights its
        metrics were measured on) instead of the trained weights.
    repo_id: the hub repo the card's usage lines name (default: a placeholder).
    overwrite: replace config.json / model.safetensors / README.md in an existing, non-empty
        out_dir (other files there stay); without it such a folder is refused (one line).

    Returns {"output", "architecture", "variant", "num_classes", "timm_native", "files", ...}.
    """
    out = Path(out_dir)
    _check_output(out, overwrite)
    model, info, record = _load(model_or_checkpoint, model_name, ema)
    variant = _variant(model)
    names = list(class_names) if class_names is not None else (
        info.get("class_names") or model.pretrained_cfg.get("label_names"))
    if names is not None and len(names) != model.num_classes:
        raise MambaOutError(f"{len(names)} class names for a model of {model.num_classes} classes")
    names = [str(n) for n in names] if names else None
    config = hf_config(model, variant, info, names, license)
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    card = model_card(config, variant, record, dataset=dataset, repo_id=repo_id or None,
                      params=sum(p.numel() for p in model.parameters()), folder=out.name, ema=ema)
    files = {
        reader.WEIGHTS_FILE: lambda tmp: _save_safetensors(sd, tmp),
        "README.md": lambda tmp: Path(tmp).write_text(card, encoding="utf-8"),
        reader.CONFIG_FILE: lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"),
    }
    _write_folder(out, files)
    timm_native = config["architecture"] == variant and reader.timm_architecture(variant) == variant
    return {"output": str(out), "architecture": config["architecture"], "variant": variant,
            "num_classes": model.num_classes, "class_names": names is not None, "timm_native": timm_native,
            "input_size": list(config["pretrained_cfg"]["input_size"]), "files": list(files),
            "from_checkpoint": record is not None}


def export_hub(model_name: Optional[str], out_dir, checkpoint=None, pretrained: bool = False, **kwargs) -> dict:
    """`mambaout export MODEL --format hub -o DIR [--checkpoint F | --pretrained]`: the folder of
    a checkpoint (MODEL may be left out: the checkpoint names it), of the released weights, of a
    'local-dir:' / 'hf-hub:' model, or (with a warning) of an untrained model."""
    from ..models import create_model
    if checkpoint is not None:
        return save_pretrained(checkpoint, out_dir, model_name=model_name, **kwargs)
    if not model_name:
        raise MambaOutError("give MODEL or --checkpoint FILE")
    _check_output(Path(out_dir), kwargs.get("overwrite", False))
    if not (pretrained or reader.is_hub_name(model_name)):
        log.warning("%s with random weights (no --checkpoint or --pretrained): the folder holds an untrained model",
                    model_name)
    model = create_model(model_name, pretrained=True if pretrained else None).eval()
    return save_pretrained(model, out_dir, **kwargs)


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MambaOutError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MambaOutError(f"{out} exists and is not empty: pick a new folder, or pass --overwrite "
                            f"(overwrite=True) to replace its config.json, {reader.WEIGHTS_FILE} and README.md")


def _load(source, model_name: Optional[str], ema: bool):
    """(model in eval mode, info as load_for_inference gives it, the training checkpoint or None)."""
    from ..engine import checkpoint as ckpt
    from ..models import create_model
    from ..models.weights import fit_state_dict, read_checkpoint
    from ..tasks.classification.predict import load_for_inference
    if isinstance(source, nn.Module):
        if ema:
            raise MambaOutError("ema=True applies to a training checkpoint, not to a model")
        return source.eval(), {}, None
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        source = f"local-dir:{source}"           # a model folder given as a plain path
    if isinstance(source, str) and reader.is_hub_name(source):
        if ema:
            raise MambaOutError("ema=True applies to a training checkpoint, not to a model folder")
        return create_model(source).eval(), {}, None
    if not isinstance(source, (str, os.PathLike)):
        raise MambaOutError(f"save_pretrained takes a model or a checkpoint path, got {type(source).__name__}")
    obj = read_checkpoint(source)
    model, info = load_for_inference(source, model_name)
    record = obj if obj.get("format") == ckpt.FORMAT else None
    if ema:
        if record is None or not isinstance(record.get("ema"), dict):
            raise CheckpointError(f"{source} holds no EMA of the weights (the run did not use --model-ema)")
        fit_state_dict(model, dict(record["ema"]), source=f"checkpoint {source} (EMA)")
    return model.eval(), info, record


def _variant(model: nn.Module) -> str:
    """Our variant of a model: mambaout.create_model's records it; timm's MambaOut names it in
    its pretrained_cfg."""
    name = getattr(model, "variant", None) or reader.variant_of(
        str(getattr(model, "pretrained_cfg", {}).get("architecture", "")))
    if name is None or name not in reader.VARIANTS:
        raise MambaOutError(f"{type(model).__name__} is not a model of mambaout's variant table: "
                            f"save it with timm.models.save_for_hf")
    return name


def hf_config(model: nn.Module, variant: str, info: dict, label_names, license: str) -> dict:
    """config.json in timm's layout (save_config_for_hf): the architecture (timm's name), class
    count, features, pooling, label names, constructor arguments beyond the variant's, and the
    pretrained_cfg with the evaluation transform."""
    from ..models.registry import pretrained_cfg as registry_cfg
    cfg = {k: v for k, v in dict(model.pretrained_cfg).items()
           if k in reader.CFG_FIELDS and k not in SOURCE_KEYS and k != "architecture"}
    for key, value in registry_cfg(variant).items():     # a timm model's cfg may lack ours (first conv, ...)
        if key not in SOURCE_KEYS and key not in ("architecture", "tag", "origin_url", "test_input_size"):
            cfg.setdefault(key, value)
    args = {k: v for k, v in dict(getattr(model, "_model_args", {}) or {}).items()
            if k not in ("num_classes", "drop_rate", "drop_path_rate", "pretrained_cfg", "pretrained_cfg_overlay")}
    for key, value in args.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise MambaOutError(f"model option {key}={value!r} cannot be written to config.json "
                                f"(not JSON): build the model with plain values") from None
    in_chans = int(args.get("in_chans", getattr(model, "in_chans", 3)) or 3)
    if info.get("img_size"):
        # the checkpoint's evaluation, as `mambaout validate --checkpoint` runs it
        size = int(info["img_size"])
        cfg.update(input_size=(in_chans, size, size), crop_pct=float(info.get("crop_pct", cfg.get("crop_pct", 1.0))),
                   interpolation=info.get("interpolation", cfg.get("interpolation", "bicubic")),
                   crop_mode=info.get("crop_mode", "center"), pool_size=(max(1, size // 32),) * 2)
        for key in ("tag", "origin_url", "test_input_size", "test_crop_pct", "test_pool_size"):
            cfg.pop(key, None)         # those describe the released weights, not these
    else:
        cfg["input_size"] = (in_chans, *tuple(cfg.get("input_size", (3, 224, 224)))[1:])
    cfg["fixed_input_size"] = getattr(model, "pos_embed", None) is not None
    if cfg["fixed_input_size"] and "img_size" in inspect.signature(type(model).__init__).parameters:
        # a position embedding fixes the input size: the one the model was built for
        size = args.get("img_size", cfg["input_size"][-1])
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        args["img_size"] = size
        cfg["input_size"] = (in_chans, size, size)
        for key in ("test_input_size", "test_pool_size"):      # a fixed size has no other test size
            cfg.pop(key, None)
    if tuple(cfg["input_size"][1:]) != tuple(tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))[1:]) \
            and not info.get("img_size"):
        cfg.pop("pool_size", None)     # timm's rule: the source's pool size no longer applies
    cfg["num_classes"] = model.num_classes
    cfg.pop("label_names", None)
    cfg.pop("label_descriptions", None)
    cfg.update(license=license, paper_name=PAPER_NAME, paper_ids=PAPER_IDS, custom_load=False)
    arch = reader.timm_architecture(variant)
    if arch == variant:
        _warn_timm_args(variant, args)
    config = {"architecture": arch, "num_classes": model.num_classes,
              "num_features": int(getattr(model, "num_features", 0) or 0)}
    pool = getattr(getattr(model, "head", None), "global_pool", None) or getattr(model, "global_pool", None)
    pool = getattr(pool, "pool_type", pool)
    if isinstance(pool, str) and pool:
        config["global_pool"] = pool
    if label_names:
        config["label_names"] = list(label_names)
    if args:
        config["model_args"] = args
    config["pretrained_cfg"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if v is not None}
    return config


def _warn_timm_args(variant: str, args: dict) -> None:
    """A MambaOut row timm has: options timm's MambaOut does not take make the folder
    mambaout-only (timm raises on them); say so now rather than at the user's timm."""
    from timm.models.mambaout import MambaOut as TimmMambaOut
    theirs = set(inspect.signature(TimmMambaOut.__init__).parameters)
    foreign = sorted(set(args) - theirs)
    if foreign:
        log.warning("%s built with %s: timm's MambaOut has no such option, so only mambaout loads this folder",
                    variant, ", ".join(foreign))


def _save_safetensors(sd: dict, path) -> None:
    from safetensors.torch import save_file
    save_file(sd, str(path), metadata={"format": "pt"})     # "pt": what transformers' loaders expect


def _write_folder(out: Path, files: dict) -> None:
    """Each file complete or absent: a new folder is written beside `out` and renamed into
    place; into an existing one (overwrite) each file goes through atomic_write, config.json
    last (a folder is read from it)."""
    if out.is_dir():
        for name, write in files.items():
            atomic_write(out / name, write)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise WriteError(out, e) from e
    try:
        for name, write in files.items():
            atomic_write(stage / name, write)
        os.chmod(stage, 0o777 & ~_umask())
        os.replace(stage, out)
    except OSError as e:
        raise WriteError(out, e) from e
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- the model card ------------------------------------------------------------------------------

def _best_row(record: dict) -> Optional[dict]:
    history = [r for r in record.get("history") or [] if isinstance(r, dict)]
    best = record.get("best_epoch")
    rows = [r for r in history if r.get("epoch") == best]
    return rows[-1] if rows else (history[-1] if history else None)


def _dataset_name(record: Optional[dict], dataset: Optional[str]) -> Optional[str]:
    if dataset:
        return dataset
    if record is None:
        return None
    data = (record.get("data_source") or {}).get("data")
    return Path(str(data)).name if data else "digits"


def model_card(config: dict, variant: str, record: Optional[dict], dataset: Optional[str] = None,
               repo_id: Optional[str] = None, params: Optional[int] = None, folder: str = "model",
               ema: bool = False) -> str:
    """README.md: YAML front matter (library_name timm, tags, license, datasets, metrics and a
    model-index with the checkpoint's results) and the card: what the model is, its evaluation
    transform, results, the training command, usage with timm and mambaout, the citation."""
    import yaml
    pcfg = config["pretrained_cfg"]
    name = repo_id.split("/")[-1] if repo_id else folder
    data = _dataset_name(record, dataset)
    row = _best_row(record) if record is not None else None
    meta = {"library_name": "timm", "license": pcfg.get("license", "apache-2.0"),
            "pipeline_tag": "image-classification", "tags": list(TAGS)}
    if data:
        meta["datasets"] = [data]
    results = []
    if row is not None:
        meta["metrics"] = ["accuracy"]
        for key, label in (("top1", "Top-1 accuracy"), ("top5", "Top-5 accuracy")):
            if isinstance(row.get(key), (int, float)):
                results.append({"type": "accuracy", "name": label, "value": round(float(row[key]), 2)})
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": data or "unknown", "type": data or "unknown", "split": "validation"},
            "metrics": results}]}]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    arch = config["architecture"]
    size = pcfg["input_size"]
    lines = ["---", front.rstrip("\n"), "---", f"# {name}", "",
             f"An image classifier of the MambaOut paper's model families: **{variant}**"
             + (f", {params / 1e6:.2f}M parameters" if params else "") + f", {config['num_classes']} classes"
             + (f", trained on {data}" if record is not None and data else "") + ", saved by mambaout "
             "in timm's format (config.json + model.safetensors).", "",
             "## Model details", "",
             f"- **Architecture:** `{arch}`" + (
                 " (timm's own)" if arch == variant else
                 f" (mambaout's `{variant}`, registered in timm by `mambaout.register_timm()`)"),
             f"- **Classes:** {config['num_classes']}" + (": " + ", ".join(config["label_names"][:20])
                                                           + (", ..." if len(config["label_names"]) > 20 else "")
                                                           if config.get("label_names") else ""),
             f"- **Evaluation transform:** resize ({pcfg.get('crop_mode', 'center')}) to {size[-1]} / crop_pct "
             f"{pcfg.get('crop_pct')} "
             f"({pcfg.get('interpolation')}), center crop {size[-2]}x{size[-1]}, normalise with mean "
             f"{tuple(pcfg.get('mean', ()))} and std {tuple(pcfg.get('std', ()))} (pretrained_cfg in config.json)",
             f"- **Paper:** {PAPER_NAME} (Weihao Yu, Xinchao Wang; CVPR 2025, {PAPER_IDS})"]
    if config.get("model_args"):
        lines.append(f"- **Constructor arguments beyond the variant:** `{json.dumps(config['model_args'])}`")
    if record is not None:
        lines += _training_section(record, row, ema)
    lines += _usage_section(repo_id, arch, variant)
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _training_section(record: dict, row: Optional[dict], ema: bool) -> list:
    lines = ["", "## Results", ""]
    if row is not None:
        lines += ["| metric | value |", "|---|---|"]
        for key, label in (("top1", "top-1 (%)"), ("top5", "top-5 (%)"), ("val_loss", "validation loss")):
            if isinstance(row.get(key), (int, float)):
                lines.append(f"| {label} | {row[key]:.2f} |" if key != "val_loss" else f"| {label} | {row[key]:.4f} |")
        lines += ["", f"Measured by `mambaout train` on the validation split after epoch {row.get('epoch')} "
                      f"(the best of {len(record.get('history') or [])} epochs run)"
                      + (" on the EMA of the weights" if record.get("ema") is not None else "") + "."]
        if record.get("ema") is not None:
            lines[-1] += (" These are the EMA weights." if ema else
                          " These are the trained weights (what `mambaout validate --checkpoint` loads); "
                          "`--ema` exports the EMA.")
    recipe = record.get("recipe") or {}
    if recipe:
        command, notes = training_command(recipe, (record.get("data_source") or {}).get("data"))
        world = int(record.get("world_size") or 1)
        lines += ["", "## Training", "", "```bash", command, "```", "",
                  "The command is rebuilt from the recipe the checkpoint recorded (which weights the run "
                  "started from, --pretrained / --initial-checkpoint, is not recorded)"
                  + (f"; it ran on {world} processes (torchrun), global batch {record.get('global_batch')}"
                     if world > 1 else "") + "."]
        if notes:
            lines.append("Recipe values without a flag: " + ", ".join(notes) + ".")
    return lines


def _usage_section(repo_id: Optional[str], arch: str, variant: str) -> list:
    hub = f"hf-hub:{repo_id}" if repo_id else "hf-hub:ORG/NAME"
    timm_lines = ["import timm"] if arch == variant else ["import mambaout, timm",
                                                          "mambaout.register_timm()   # timm lacks " + variant]
    return ["", "## Usage", "", "With timm:", "", "```python", *timm_lines,
            f'model = timm.create_model("{hub}", pretrained=True).eval()',
            "# or, for this folder on disk: timm.create_model(\"local-dir:path/to/folder\", pretrained=True)",
            "cfg = timm.data.resolve_data_config(model=model)",
            "transform = timm.data.create_transform(**cfg)",
            "labels = model.pretrained_cfg.get(\"label_names\")", "```", "",
            "With mambaout:", "", "```bash",
            f"mambaout predict image.jpg --model {hub}",
            f"mambaout validate --model {hub} --data path/to/images",
            f"mambaout train --model {hub} --pretrained --data path/to/images   # fine-tune", "```"]


def training_command(recipe: dict, data: Optional[str]):
    """(`mambaout train ...` command, notes) that rebuilds `recipe` (a checkpoint's recipe dict):
    the flags of the fields that differ from the recipe the command starts from (the digits
    recipe without --data, the --recipe base with it; cli/classify.py recipe_from_args); notes
    name the differing fields that have no flag."""
    from ..models import get_variant
    from ..tasks.classification.recipe import RECIPES, Recipe, digits_recipe
    base = recipe.get("base") or ("table2" if data else "digits")
    if data and base in RECIPES and base != "digits":
        start = RECIPES[base]()
    else:
        start = digits_recipe()
    args = ["mambaout", "train"]
    if data:
        args += ["--data", f"path/to/{Path(str(data)).name}"]
        if base != "table2":
            args += ["--recipe", base]
    ref = start.to_dict()
    if data:     # with --data the model's own input size unless --img-size (recipe_from_args)
        try:
            ref["img_size"] = get_variant(recipe.get("model", start.model)).input_size
        except MambaOutError:
            pass
    types = {f.name: f for f in fields(Recipe)}
    notes = []
    for key, value in recipe.items():
        if key not in types or key == "base" or value == ref.get(key):
            continue
        if key in NO_FLAG:
            notes.append(f"{key}={value}")
            continue
        flag = "--" + FLAG_NAMES.get(key, key).replace("_", "-")
        if isinstance(value, bool):
            default = types[key].default
            if value != default:
                args.append(flag if not default else "--no-" + flag[2:])
        elif value is None:
            if key == "auto_augment":
                args += [flag, "none"]
            else:
                notes.append(f"{key}=None")
        elif isinstance(value, (list, tuple)):
            args += [flag, *(_num(v) for v in value)]
        else:
            args += [flag, _num(value)]
    import shlex
    return " ".join(shlex.quote(a) for a in args), notes


def _num(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


# ---- push_to_hub ------------------------------------------------------------------------------

def push_to_hub(source, repo_id: str, *, private: bool = False, token: Optional[str] = None,
                commit_message: Optional[str] = None, **save_kwargs) -> dict:
    """Upload a model folder (config.json + model.safetensors, e.g. save_pretrained's), or the
    folder save_pretrained makes of a checkpoint / model, to the hub repo `repo_id` (created if
    absent; private=True makes a new repo private) with huggingface_hub's create_repo +
    upload_folder. Offline (HF_HUB_OFFLINE), without a token (token=, HF_TOKEN or `hf auth
    login`), with the hub unreachable or the token rejected: one line (MambaOutError), after at
    most HUB_TIMEOUT_S seconds, never huggingface_hub's retries.
    Returns {"repo_id", "url", "files", "commit"}."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise MambaOutError(f"invalid hub repo id '{repo_id}': {first_line(e)}") from None
    folder = Path(source) if isinstance(source, (str, os.PathLike)) and not reader.is_hub_name(str(source)) else None
    if folder is not None and folder.is_dir():
        reader.read_config(f"local-dir:{folder}")          # one line for a folder that is not a model folder
        if not (folder / reader.WEIGHTS_FILE).is_file():
            raise CheckpointError(f"model folder {folder} has no {reader.WEIGHTS_FILE}")
        if save_kwargs:
            raise MambaOutError(f"{', '.join(save_kwargs)} apply to a checkpoint, not to a folder that is "
                                f"already saved")
        return _upload(folder, repo_id, private, token, commit_message)
    if folder is not None and not folder.exists():
        raise CheckpointError(f"not found: {folder} (give a model folder or a training checkpoint)")
    endpoint, token = _hub_session(token)                  # before converting: fail fast offline
    with tempfile.TemporaryDirectory(prefix="mambaout-hub-") as tmp:
        save_pretrained(source, Path(tmp) / "model", repo_id=repo_id, **save_kwargs)
        return _upload(Path(tmp) / "model", repo_id, private, token, commit_message, (endpoint, token))


def _hub_session(token: Optional[str]):
    """(endpoint, token) once the hub is known to take an upload: not offline, a token, the
    endpoint answering (HUB_TIMEOUT_S) and accepting the token. One line otherwise."""
    import urllib.error
    import urllib.request
    from huggingface_hub import constants, get_token
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true") or constants.HF_HUB_OFFLINE:
        raise MambaOutError("cannot upload: offline (HF_HUB_OFFLINE is set); unset it on a machine with network access")
    token = token or get_token()
    if not token:
        raise MambaOutError("cannot upload: no Hugging Face token; pass --token, set HF_TOKEN, or run `hf auth login`")
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    req = urllib.request.Request(f"{endpoint}/api/whoami-v2", headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=HUB_TIMEOUT_S):
            pass
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise MambaOutError(f"cannot upload: {endpoint} rejected the token (HTTP {e.code}); check --token / "
                                f"HF_TOKEN") from None
        raise MambaOutError(f"cannot upload: {endpoint} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
        raise MambaOutError(f"cannot upload: {endpoint} is unreachable ({text})") from None
    return endpoint, token


def _upload(folder: Path, repo_id: str, private: bool, token, message, session=None) -> dict:
    endpoint, token = session or _hub_session(token)
    from huggingface_hub import HfApi
    from huggingface_hub.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    api = HfApi(endpoint=endpoint, token=token, library_name="mambaout")
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=url.repo_id, folder_path=str(folder),
                                 commit_message=message or f"Add {folder.name} (mambaout)")
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises HTTP, auth and validation errors alike
        raise MambaOutError(f"upload to {repo_id} failed: {first_line(e, 200)}") from None
    return {"repo_id": url.repo_id, "url": str(url), "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
            "commit": getattr(info, "oid", None) or str(info)}
