"""Resuming a run: `--resume F` alone continues the run that wrote F.

A checkpoint holds the run's recipe, its data source and its run options, so nothing else is
needed to continue it. What is given together with `--resume` must either equal what the
checkpoint holds, or be something a run may change midway: the recipe fields its class lists
in `resume_may_change` (an `--epochs` / `--iters` extension, how often to validate) and the
run options (device, workers, AMP, channels-last, compile, ...). Those changes are logged;
anything else (model, data, batch, lr, schedule, augmentation, seed) would make it another
run and is one line naming the field and both values.
"""
from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import Any, Dict, List, Tuple

from ..errors import CheckpointError, MambaOutError

# Run options a checkpoint keeps and a resumed run takes back when the command line does not
# give them; device and workers belong to the machine and are only reported when they change.
STORED_OPTIONS = ("amp", "channels_last", "compile", "grad_checkpointing", "val_batch_size",
                  "checkpoint_every", "tensorboard")
REPORTED_OPTIONS = STORED_OPTIONS + ("device", "workers")


def run_options_record(opts) -> dict:
    """The run options a checkpoint stores (see STORED_OPTIONS / REPORTED_OPTIONS)."""
    return {name: getattr(opts, name) for name in REPORTED_OPTIONS}


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def recipe_on_resume(stored, given: Dict[str, Any], path) -> Tuple[Any, List[str]]:
    """The stored recipe with the given fields applied: (recipe, notes). A field that differs
    from the stored one and is not in the recipe class's `resume_may_change` is one line."""
    may_change = tuple(getattr(type(stored), "resume_may_change", ()))
    names = {f.name for f in fields(stored)}
    changes, notes = {}, []
    for name, value in given.items():
        if name not in names:
            continue
        old = getattr(stored, name)
        if _norm(value) == _norm(old):
            continue
        if name not in may_change:
            allowed = f"only {', '.join(_flag(n) for n in may_change)} may change" if may_change else "nothing may change"
            raise MambaOutError(
                f"cannot resume {path} with {name} = {value!r}: the run has {name} = {old!r} ({allowed} on resume; "
                f"start a new run with another --output to change it)")
        changes[name] = tuple(value) if isinstance(value, list) else value
        notes.append(f"{name} {old!r} -> {value!r}")
    return replace(stored, **changes), notes


def _same_path(a, b) -> bool:
    """Paths name the same file; other values (a list of class names) are equal."""
    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        return os.path.realpath(a) == os.path.realpath(b)
    return _norm(a) == _norm(b)


def source_on_resume(stored: Dict[str, Any], given: Dict[str, Any], path) -> Dict[str, Any]:
    """The stored data source with what was given checked against it: a path that is not the
    run's own (or data given for a run on the embedded default) is one line."""
    out = dict(stored)
    for name, value in given.items():
        if value is None:
            continue
        old = stored.get(name)
        if old is None or not _same_path(value, old):
            was = old if old is not None else "the embedded default"
            raise MambaOutError(f"cannot resume {path} with {_flag(name)} {value}: the run trained on {was} "
                                f"(start a new run with another --output to train on other data)")
        out[name] = old
    return out


def options_on_resume(stored: Dict[str, Any], opts) -> Tuple[Any, List[str]]:
    """The run options of a resumed run: each stored option the command line leaves at its
    default comes back from the checkpoint; (options, notes on what changed)."""
    defaults = type(opts)()
    changes, notes = {}, []
    for name in REPORTED_OPTIONS:
        if name not in stored:
            continue
        value = getattr(opts, name)
        if name in STORED_OPTIONS and value == getattr(defaults, name):
            changes[name] = stored[name]
        elif value != stored[name]:
            notes.append(f"{name} {stored[name]!r} -> {value!r}")
    return replace(opts, **changes), notes


def check_same_model(obj: dict, recipe, path) -> None:
    """A run resumes only the model it was training."""
    if obj["model_name"] != recipe.model:
        raise CheckpointError(f"cannot resume: {path} trains {obj['model_name']}, this run trains {recipe.model}")


def check_resume(obj: dict, recipe, source: Dict[str, Any], opts, path) -> List[str]:
    """Raise MambaOutError if `recipe` or `source` would make the run of checkpoint `obj`
    another run; the notes on what changes (for the log) otherwise. Checkpoints written before
    the data source and run options were stored are checked on their recipe only."""
    stored = type(recipe).from_dict(obj.get("recipe", {}))
    _, notes = recipe_on_resume(stored, {f.name: getattr(recipe, f.name) for f in fields(recipe)}, path)
    if "data_source" in obj:
        stored_source = obj["data_source"]
        for name in set(stored_source) | set(source):
            old, new = stored_source.get(name), source.get(name)
            if (old is None) != (new is None) or (old is not None and not _same_path(old, new)):
                was = old if old is not None else "the embedded default"
                raise MambaOutError(f"cannot resume {path} on {name} = {new or 'the embedded default'}: "
                                    f"the run trained on {was}")
    return notes + options_on_resume(obj.get("run_options", {}), opts)[1]


def plan_resume(path, recipe_cls, recipe_given: Dict[str, Any], source_given: Dict[str, Any], opts):
    """What `--resume path` plus the given flags runs: (recipe, data source, run options), all
    from the checkpoint except what was given (checked as above). The engine checks the same
    again (check_resume), so a library caller passing its own recipe gets the same errors."""
    from .checkpoint import read_training_checkpoint
    obj = read_training_checkpoint(path)
    recipe, _ = recipe_on_resume(recipe_cls.from_dict(obj.get("recipe", {})), recipe_given, path)
    source = (source_on_resume(obj["data_source"], source_given, path) if "data_source" in obj
              else dict(source_given))   # written before data sources were stored: as given
    opts, _ = options_on_resume(obj.get("run_options") or {}, opts)
    if "data" in source:
        opts = replace(opts, data=source["data"])
    return recipe, source, opts
