"""Recipe flags, generated from a recipe dataclass's fields.

A field `batch_size` is the flag `--batch-size` (and `-b`, see SHORT); its type gives the
argparse type and nargs (int, float, str, Optional[X] as X, Tuple[X, X] as two values,
Tuple[X, ...] as one or more); a bool field is a switch away from its default (`--model-ema`
for a False one, `--no-photometric` for a True one). The help is the field's
metadata["help"] followed by the default of each recipe the command starts from, and
metadata may also give "none" (what a None default means), "metavar" and "choices".

Value flags default to None and switches to False, so `RecipeFlags.given` tells exactly what
the command line sets: a new run applies it to the task's default recipe, a resumed run checks
it against its checkpoint's (engine/resume.py)."""
from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any, Callable, Dict, Sequence, Tuple, Union

SHORT = {"batch_size": "-b"}   # the short forms, the same in every command


def _fmt(value, field) -> str:
    """A default as the help shows it: as typed on the command line."""
    if value is None:
        return field.metadata.get("none", "none")
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        text = f"{value:.6g}"
        return text if any(c in text for c in ".en") else text + ".0"   # 1.0, 0.0001, 1e-06, inf
    if isinstance(value, tuple):
        return " ".join(_fmt(v, field) for v in value)
    return str(value)


def _value_type(tp) -> Tuple[Any, Any]:
    """(argparse type, nargs) of a field type: Optional[X] as X, Tuple[X, X] as two values,
    Tuple[X, ...] as one or more; str is argparse's default (no type)."""
    args = typing.get_args(tp)
    optional = typing.get_origin(tp) is Union and type(None) in args
    if optional:
        (tp,) = [a for a in args if a is not type(None)]
        args = typing.get_args(tp)
    nargs = None
    if typing.get_origin(tp) is tuple:
        nargs = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
        tp = args[0]
    if tp not in (int, float, str):
        raise TypeError(f"no flag for a field of type {tp!r}")
    if optional and tp is not str and nargs is None:
        return _or_none(tp), nargs
    return (None if tp is str else tp), nargs


def _or_none(tp):
    """An argparse type for an optional number: the number, or "none" (the field set to None)."""
    def parse(text: str):
        return NONE if text.strip().lower() == "none" else tp(text)
    parse.__name__ = tp.__name__      # argparse's "invalid float value" names the type
    return parse


NONE = "none"    # what an optional number's flag holds for "none"; given() turns it into None


class RecipeFlags:
    """The recipe flags of one command: `names` are the fields with a flag, in --help order; a
    pair (flag, field) names a flag that is not the field's own (("aa", "auto_augment")).
    `defaults`: (label, recipe factory) of each recipe the command starts from, whose values
    the help shows ("Table 2: 300; digits: 20")."""

    def __init__(self, recipe_cls, names: Sequence[Union[str, Tuple[str, str]]],
                 defaults: Sequence[Tuple[str, Callable[[], Any]]]):
        self.recipe_cls = recipe_cls
        self.fields = {f.name: f for f in fields(recipe_cls)}
        self.hints = typing.get_type_hints(recipe_cls)
        self.defaults = defaults
        self.flag_names: Dict[str, str] = {}   # field -> flag name (underscores)
        for entry in names:
            flag, name = entry if isinstance(entry, tuple) else (entry, entry)
            if name not in self.fields:
                raise AttributeError(f"{recipe_cls.__name__} has no field {name!r}")
            if self.hints[name] is bool:
                flag = flag if not self.fields[name].default else "no_" + flag
            self.flag_names[name] = flag
        # the argparse dest of each flag -> the recipe field it sets
        self.flags: Dict[str, str] = {flag: name for name, flag in self.flag_names.items()}

    def _recipes(self):
        if not hasattr(self, "_made"):
            self._made = [(label, make()) for label, make in self.defaults]
        return self._made

    def _help(self, name: str) -> str:
        f = self.fields[name]
        shown = [(label, _fmt(getattr(recipe, name), f)) for label, recipe in self._recipes()]
        if len(shown) > 1 and len({v for _, v in shown}) == 1:
            default = f"default: {shown[0][1]}"
        else:
            default = "; ".join(f"{label}: {v}" for label, v in shown)
        text = f.metadata.get("help", name.replace("_", " "))
        if self.hints[name] is bool and f.default:
            text = "no " + text
        return f"{text} ({default})".replace("%", "%%")

    def add(self, parser, first: str, last: str = None) -> None:
        """Add the flags of the fields from `first` to `last` (default: `first` only), in order,
        to `parser` (a parser or an argument group)."""
        names = list(self.flag_names)
        for name in names[names.index(first):names.index(last or first) + 1]:
            f, flag = self.fields[name], self.flag_names[name]
            opts = ([SHORT[name]] if name in SHORT else []) + ["--" + flag.replace("_", "-")]
            kw = dict(help=self._help(name))
            if self.hints[name] is bool:
                kw["action"] = "store_true"
            else:
                kw["type"], kw["nargs"] = _value_type(self.hints[name])
                if "choices" in f.metadata:
                    kw["choices"] = list(f.metadata["choices"])
                if "metavar" in f.metadata:
                    kw["metavar"] = f.metadata["metavar"]
            parser.add_argument(*opts, **{k: v for k, v in kw.items() if v is not None})

    def given(self, args) -> dict:
        """The recipe fields the command line sets: each value flag not left at None (lists as
        tuples), then each switch given (the field's default turned around)."""
        values = {name: tuple(v) if isinstance(v, list) else None if v is NONE else v
                  for flag, name in self.flags.items()
                  if self.hints[name] is not bool and (v := getattr(args, flag, None)) is not None}
        switches = {name: not self.fields[name].default for flag, name in self.flags.items()
                    if self.hints[name] is bool and getattr(args, flag, False)}
        return {**values, **switches}
