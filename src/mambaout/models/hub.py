"""Model folders and hub repositories in timm's format, read: `local-dir:/path` and
`hf-hub:org/name` model names.

A folder (or a Hugging Face hub repo) holds `config.json` and `model.safetensors`, as timm's
`save_for_hf` / `push_to_hf_hub` write them and `timm.create_model("local-dir:...")` /
`("hf-hub:...")` read them (timm 1.0.31, timm/models/_hub.py, `save_config_for_hf` and
`_parse_model_cfg`; the model name sources in timm/models/_factory.py `parse_model_name`):

    {"architecture": "mambaout_femto", "num_classes": 10, "num_features": 288,
     "global_pool": "avg", "label_names": [...], "model_args": {...},
     "pretrained_cfg": {"input_size": [3, 32, 32], "crop_pct": 1.0, "interpolation": "bicubic",
                        "mean": [...], "std": [...], ...}}

Top-level `num_classes`, `label_names` and `label_descriptions` win over the ones inside
`pretrained_cfg` (as in timm); a legacy single-dict config (no `pretrained_cfg`, `labels`
for `label_names`) is read as timm reads it. `model_args` are constructor arguments of the
architecture (timm versions that read `model_args`, 1.0.31 among them, apply them; older ones ignore them).

The architecture is timm's name: one of the MambaOut rows timm has itself (`mambaout_femto`:
the same model and state-dict layout), or, for a variant timm lacks, the name
`mambaout.register_timm()` gives it in timm's registry, "mo_" + the variant (`mo_vmamba_tiny`;
models/timm_compat.py TIMM_PREFIX, which tests/deploy/test_hub.py keeps equal to PREFIX here);
both read back to our variant (`variant_of`), and so does a bare variant name. The writing side
(save_pretrained, the model card, push_to_hub) is mambaout/deploy/hub.py.

This module reads names and files only; factory.create_model builds the model
(`_create_from_hub`) and registry.get_variant / pretrained_cfg answer for these names.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Tuple

from ..errors import CheckpointError, MambaOutError, UnknownModelError, first_line
from .variants import VARIANTS
from .weights import HUB_FILE, hub_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = HUB_FILE                       # model.safetensors
PREFIX = "mo_"                                # what mambaout.register_timm() puts before our names in timm
# timm's model-name sources (parse_model_name; 'hf_hub' is its deprecated alias)
SOURCES = {"local-dir": "local-dir", "hf-hub": "hf-hub", "hf_hub": "hf-hub"}
# Keys of config.json's model_args that are not constructor options of a variant (create_model
# takes them as its own arguments, or they are fixed by the architecture).
FACTORY_ARGS = ("num_classes", "in_chans", "img_size", "global_pool", "drop_rate", "drop_path_rate")


def parse_source(name) -> Optional[Tuple[str, str]]:
    """('local-dir', path) or ('hf-hub', repo id) for a model folder or hub repo name; None for
    a name of our tables. 'hf-hub:timm/<variant>.<tag>' (and without the tag) names the released
    weights of one of our variants and stays ours (None): create_model(..., pretrained=True)
    fetches them as before."""
    if not isinstance(name, str):
        return None
    source, sep, ident = name.partition(":")
    if not sep or source.lower() not in SOURCES:
        return None
    source = SOURCES[source.lower()]
    if not ident:
        raise MambaOutError(f"model name '{name}' has nothing after '{source}:' (give "
                            f"{'a folder' if source == 'local-dir' else 'a hub repo id, org/name'})")
    if source == "hf-hub":
        org, _, rest = ident.partition("/")
        if org == "timm" and rest.partition(".")[0] in VARIANTS:
            return None
    return source, ident


def is_hub_name(name) -> bool:
    """True for 'local-dir:/path' and 'hf-hub:org/name' (a folder or repo holding config.json)."""
    return parse_source(name) is not None


def variant_of(architecture: str) -> Optional[str]:
    """Our variant for a config.json architecture: the variant itself or its timm name
    ('mo_vmamba_tiny' -> 'vmamba_tiny'); None if we have no such model."""
    if architecture in VARIANTS:
        return architecture
    if architecture.startswith(PREFIX) and architecture[len(PREFIX):] in VARIANTS:
        return architecture[len(PREFIX):]
    return None


def timm_architecture(variant: str) -> str:
    """The architecture name a folder of `variant` records: the variant where timm itself has
    the same model (the MambaOut rows timm registers in timm/models/mambaout.py), else the name
    mambaout.register_timm() registers it under ("mo_" + variant)."""
    v = VARIANTS[variant]
    if v.arch == "mambaout" and _timm_has(variant):
        return variant
    return PREFIX + variant


def _timm_has(name: str) -> bool:
    """timm's own MambaOut has `name` (not a name mambaout registered into timm's registry)."""
    import timm
    return timm.is_model(name) and timm.models.model_entrypoint(name).__module__ == "timm.models.mambaout"


@dataclasses.dataclass
class HubModel:
    """What config.json of a folder / hub repo says about its model."""
    name: str                  # the model name as given ('local-dir:/path', 'hf-hub:org/name')
    source: str                # 'local-dir' | 'hf-hub'
    location: str              # the folder or the repo id
    architecture: str          # as config.json names it
    variant: str               # our variant of it
    num_classes: int
    pretrained_cfg: dict       # config.json's pretrained_cfg, label names included
    model_args: dict           # constructor arguments recorded beside the architecture
    cache_dir: Optional[str] = None

    def weights_file(self) -> Path:
        """model.safetensors of the folder, or of the hub repo (huggingface_hub's cache, downloaded
        there if absent)."""
        if self.source == "local-dir":
            path = Path(self.location) / WEIGHTS_FILE
            if not path.is_file():
                raise CheckpointError(f"model folder {self.location} has no {WEIGHTS_FILE}")
            return path
        return hub_file(self.location, WEIGHTS_FILE, self.cache_dir)

    def constructor_args(self) -> dict:
        """model_args that are options of the variant's constructor (depths, kernel_size, ...)."""
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.model_args.items()
                if k not in FACTORY_ARGS}

    def img_size(self) -> Optional[int]:
        """The input size the model was built for (models with a position embedding), if recorded."""
        size = self.model_args.get("img_size")
        if size is None and self.pretrained_cfg.get("fixed_input_size"):
            size = self.pretrained_cfg.get("input_size", (3, None, None))[-1]
        if isinstance(size, (list, tuple)):
            if len(set(size)) != 1:
                raise MambaOutError(f"{self.name}: non-square input size {tuple(size)} is not supported")
            size = size[0]
        return size

    def in_chans(self) -> int:
        return int(self.model_args.get("in_chans") or self.pretrained_cfg.get("input_size", (3,))[0])

    def model_cfg(self, base: dict) -> dict:
        """The loaded model's pretrained_cfg: the variant's `base` cfg (first conv, classifier,
        license...) without its weight source (those weights are not these), under config.json's
        pretrained_cfg; the weight source is this folder / repo."""
        cfg = {k: v for k, v in base.items() if k not in ("tag", "hf_hub_id", "hf_hub_filename", "url", "file",
                                                          "state_dict", "source", "origin_url", "test_input_size")}
        cfg.update({k: v for k, v in self.pretrained_cfg.items() if k in CFG_FIELDS})
        cfg["architecture"] = VARIANTS[self.variant].name
        cfg["num_classes"] = self.num_classes
        if self.source == "local-dir":
            cfg["file"] = str(Path(self.location) / WEIGHTS_FILE)
        else:
            cfg["hf_hub_id"] = self.location
        for key in ("input_size", "test_input_size", "min_input_size", "pool_size", "test_pool_size", "mean",
                    "std", "label_names"):
            if isinstance(cfg.get(key), list):
                cfg[key] = tuple(cfg[key])
        return cfg


def _cfg_fields() -> Tuple[str, ...]:
    from timm.models import PretrainedCfg
    return tuple(f.name for f in dataclasses.fields(PretrainedCfg))


CFG_FIELDS = _cfg_fields()


def read_config(name: str, cache_dir=None) -> HubModel:
    """config.json of a 'local-dir:' / 'hf-hub:' name, checked: a missing folder, a folder
    without config.json, a corrupt one, one without an architecture, an architecture we do not
    have: each one line (MambaOutError / CheckpointError / UnknownModelError)."""
    parsed = parse_source(name)
    if parsed is None:
        raise MambaOutError(f"'{name}' is not a model folder or hub name (local-dir:/path or hf-hub:org/name)")
    source, location = parsed
    if source == "local-dir":
        folder = Path(location).expanduser()
        if not folder.exists():
            raise CheckpointError(f"model folder not found: {location}")
        if not folder.is_dir():
            raise CheckpointError(f"local-dir:{location} is not a folder (give the folder holding "
                                  f"{CONFIG_FILE} and {WEIGHTS_FILE})")
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(f"model folder {location} has no {CONFIG_FILE} (a folder written by "
                                  f"`mambaout export --format hub`, mambaout.save_pretrained or timm's save_for_hf)")
        location = str(folder)
    else:
        if "@" in location:
            raise MambaOutError(f"hf-hub:{location}: revisions (@...) are not supported; give org/name")
        path = hub_file(location, CONFIG_FILE, cache_dir)
    where = f"{location}/{CONFIG_FILE}" if source == "hf-hub" else str(path)
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {where}: {first_line(e)}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where} holds a JSON {type(cfg).__name__}, not an object")
    return _parse(cfg, name, source, location, where, cache_dir)


def _parse(cfg: dict, name: str, source: str, location: str, where: str, cache_dir) -> HubModel:
    """timm's reading of a config (_hub._parse_model_cfg), checked."""
    cfg = dict(cfg)
    if "pretrained_cfg" not in cfg:                  # timm's legacy single-dict form
        inner = dict(cfg)
        cfg = {"architecture": inner.pop("architecture", None), "pretrained_cfg": inner}
        if "labels" in inner:
            inner["label_names"] = inner.pop("labels")
    pcfg = cfg.get("pretrained_cfg")
    if not isinstance(pcfg, dict):
        raise CheckpointError(f"{where}: pretrained_cfg must be an object")
    pcfg = dict(pcfg)
    for key in ("num_classes", "label_names", "label_descriptions"):
        if key in cfg:
            pcfg[key] = cfg[key]
    arch = cfg.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{where} names no architecture")
    variant = variant_of(arch)
    if variant is None:
        hint = ""
        try:
            import timm
            if timm.is_model(arch):
                hint = f"; it is a timm model: timm.create_model('{name}', pretrained=True) loads it"
        except Exception:  # noqa: BLE001 - a hint only
            pass
        raise UnknownModelError(f"{where} names architecture '{arch}', which mambaout does not have"
                                f"{hint} (see `mambaout models`)")
    num_classes = pcfg.get("num_classes", VARIANTS[variant].num_classes)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise CheckpointError(f"{where}: num_classes must be a non-negative integer, got {num_classes!r}")
    labels = pcfg.get("label_names")
    if labels is not None:
        if isinstance(labels, dict):              # timm allows {index: name} where indices have gaps
            try:
                labels = [str(labels.get(str(i), labels.get(i, i))) for i in range(num_classes)]
            except Exception:  # noqa: BLE001
                raise CheckpointError(f"{where}: label_names must be a list or an index -> name object") from None
        if not isinstance(labels, (list, tuple)) or len(labels) != num_classes:
            count = len(labels) if isinstance(labels, (list, tuple)) else "?"
            raise CheckpointError(f"{where}: label_names has {count} entries for {num_classes} classes")
        pcfg["label_names"] = [str(n) for n in labels]
    model_args = cfg.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise CheckpointError(f"{where}: model_args must be an object")
    size = pcfg.get("input_size")
    if size is not None and (not isinstance(size, (list, tuple)) or len(size) != 3):
        raise CheckpointError(f"{where}: pretrained_cfg.input_size must be [C, H, W], got {size!r}")
    return HubModel(name=name, source=source, location=location, architecture=arch, variant=variant,
                    num_classes=num_classes, pretrained_cfg=pcfg, model_args=dict(model_args),
                    cache_dir=None if cache_dir is None else str(cache_dir))
