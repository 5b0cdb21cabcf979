"""Dataclass tree <-> flags and YAML.

Values come from the dataclass defaults, then each ``--config file.yaml`` in order, then
dotted flags (``--data.max_len 1024``; bare ``--data.apply_chat_template`` sets a boolean).
Everything is checked here, at parse time: an unknown key names the closest valid one, a
wrong type names the flag and the expected type, a value outside the field's allowed range
(declared in its metadata, see ``repulse.config.sections._h``) names the flag and the range,
and no number is NaN.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from repulse.config.recorder import paused
from repulse.errors import UserError


@dataclass(frozen=True)
class Leaf:
    """One settable field: its dotted path, Python type, help text and allowed values."""

    path: str
    type: Any
    default: Any
    help: str
    checks: tuple[tuple[str, Any], ...] = ()


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaves(cls: type, prefix: str = "") -> dict[str, Leaf]:
    """All settable fields of a dataclass tree, keyed by dotted path."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Leaf] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if _is_dataclass_type(tp):
            out.update(leaves(tp, path + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        checks = tuple((k, v) for k, v in f.metadata.items() if k in _CHECK_KEYS)
        out[path] = Leaf(path, tp, default, f.metadata.get("help", ""), checks)
    return out


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    inner, optional = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if origin is list:
        (item,) = typing.get_args(inner)
        name = f"a list of {item.__name__}"
    else:
        name = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
            inner, str(inner)
        )
    return name + (" (or none)" if optional else "")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _scalar(value: Any, tp: Any, where: str) -> Any:
    def bad() -> UserError:
        return UserError(f"{where} expects {_type_name(tp)}, got {value!r}.")

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            try:
                as_float = float(str(value))
            except ValueError:
                raise bad() from None
            if as_float.is_integer():
                return int(as_float)
            raise bad() from None
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad() from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise bad()
        return str(value)
    raise bad()


def convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value or a list of flag tokens to ``tp``; ``where`` names the flag/key."""
    inner, optional = _unwrap_optional(tp)
    if isinstance(value, list) and len(value) == 1 and typing.get_origin(inner) is not list:
        value = value[0]
    if optional and (value is None or (isinstance(value, str) and value.lower() in {"none", "null"})):
        return None
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        items = value if isinstance(value, list) else [value]
        return [_scalar(v, item, where) for v in items]
    if isinstance(value, list):
        raise UserError(f"{where} expects {_type_name(tp)}, got several values {value!r}.")
    return _scalar(value, inner, where)


def suggest(name: str, valid: typing.Iterable[str]) -> str:
    """' Did you mean --x?' for the closest valid names, or ''."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.55)
    if not close:
        tail = name.rsplit(".", 1)[-1]
        close = [v for v in valid if v.rsplit(".", 1)[-1] == tail][:3]
    return f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""


def set_path(obj: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, last, value)


def get_path(obj: Any, path: str) -> Any:
    for p in path.split("."):
        obj = getattr(obj, p)
    return obj


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def split_flags(argv: list[str]) -> list[tuple[str, list[str]]]:
    """``['--a.b', '1', '--c', '--d=x']`` -> ``[('a.b', ['1']), ('c', []), ('d', ['x'])]``.

    A token is a flag when it starts with ``--``; anything else (including negative
    numbers such as ``-10``) is a value of the preceding flag.
    """
    out: list[tuple[str, list[str]]] = []
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, val = tok[2:].partition("=")
            out.append((name.replace("-", "_") if "." not in name else name, [val] if eq else []))
        elif not out:
            raise UserError(f"unexpected argument {tok!r}: options are written --section.key value.")
        else:
            out[-1][1].append(tok)
    return out


def load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(
            f"--config {path}:{line} is not valid YAML ({getattr(exc, 'problem', exc)})."
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"--config {path}: the top level must be a mapping of sections, got {type(data).__name__}."
        )
    return data


def build(root_cls: type, yaml_files: list[str], flags: list[tuple[str, list[str]]]) -> Any:
    """Defaults, then YAML files in order, then flags."""
    table = leaves(root_cls)
    cfg = root_cls()
    for path in yaml_files:
        for key, value in flatten(load_yaml(path)).items():
            if key not in table:
                raise UserError(f"--config {path}: unknown key '{key}'.{suggest(key, table)}")
            set_path(cfg, key, convert(value, table[key].type, f"'{key}' in {path}"))
    for name, values in flags:
        if name not in table:
            raise UserError(
                f"unknown option --{name}.{suggest(name, table)} Run with --help to list options."
            )
        leaf = table[name]
        inner, _ = _unwrap_optional(leaf.type)
        if inner is bool and not values:
            values = ["true"]
        if not values:
            raise UserError(f"--{name} needs a value ({_type_name(leaf.type)}).")
        set_path(cfg, name, convert(values, leaf.type, f"--{name}"))
    return cfg


def to_dict(cfg: Any) -> dict:
    """The config as nested dicts; serialising is not a use of the fields (see ``recorder``)."""
    with paused():
        return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def help_text(root_cls: type, command: str) -> str:
    lines = [f"usage: repulse {command} [--config FILE.yaml ...] [--section.key VALUE ...] [--dry-run]", ""]
    for leaf in leaves(root_cls).values():
        allowed = f" [{describe_checks(dict(leaf.checks))}]" if leaf.checks else ""
        lines.append(f"  --{leaf.path:<42} {leaf.help}{allowed} (default: {leaf.default!r})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- allowed values

_CHECK_KEYS = ("ge", "gt", "le", "lt", "also", "choices")  # model_path is checked by check_model_paths
_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}  # fmt: skip


def describe_checks(checks: dict[str, Any]) -> str:
    """``'> 0'``, ``'>= 0 and < 1'``, ``'>= 1, or -1'``, ``'one of: stop, skip'``."""
    if "choices" in checks:
        return "one of: " + ", ".join(str(c) for c in checks["choices"])
    text = " and ".join(f"{_BOUNDS[k][0]} {checks[k]:g}" for k in _BOUNDS if k in checks)
    also = checks.get("also", ())
    if also:
        text += ", or " + " or ".join(f"{a:g}" for a in also)
    return text


def _value_error(path: str, value: Any, checks: dict[str, Any]) -> str | None:
    """Why ``value`` is not allowed for ``--path`` (None when it is)."""
    if isinstance(value, float) and math.isnan(value):
        return f"--{path} is NaN: give a number."
    if not checks or value is None:
        return None
    if "choices" in checks:
        if value not in checks["choices"]:
            return f"--{path} {value!r} is not known: choose {describe_checks(checks)}.{suggest(str(value), checks['choices']).replace('--', '')}"
        return None
    if value in checks.get("also", ()):
        return None
    bounded = any(k in checks for k in _BOUNDS)
    if bounded and isinstance(value, float) and not math.isfinite(value):
        return f"--{path} must be a finite number {describe_checks(checks)}, got {value!r}."
    for key, (_sign, ok) in _BOUNDS.items():
        if key in checks and not ok(value, checks[key]):
            return f"--{path} must be {describe_checks(checks)}, got {value!r}."
    return None


def check_model_paths(cfg: Any, prefix: str = "") -> None:
    """Every field marked ``model_path`` that is set: a local-looking path must be a model directory
    (and hold a tokenizer where one is loaded from it); see ``repulse.config.paths``."""
    from repulse.config.paths import check_model_path

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_model_paths(value, path + ".")
            continue
        kind = f.metadata.get("model_path")
        if not kind or not value:
            continue
        items = [v.strip() for v in value.split(",")] if f.metadata.get("comma_list") else [value]
        for item in (i for i in items if i):
            check_model_path(item, f"--{path}", need_model=True, need_tokenizer="tokenizer" in kind)


def check_values(cfg: Any, prefix: str = "") -> None:
    """Every field's value against its declared allowed values (each item of a list), and no NaN
    anywhere; raises ``UserError`` naming the flag, the range and the value given."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_values(value, path + ".")
            continue
        checks = {k: v for k, v in f.metadata.items() if k in _CHECK_KEYS}
        for item in value if isinstance(value, list) else [value]:
            problem = _value_error(path, item, checks)
            if problem:
                raise UserError(problem)
