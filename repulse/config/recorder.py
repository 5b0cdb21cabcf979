"""Record which config fields a run reads: the evidence behind the field-usage table.

``recording(cfg)`` tags every section of a parsed config with its dotted path and, while the
``with`` block runs, routes attribute access on those section classes through a hook that notes
``section.path.field`` for each dataclass field read. Outside the block the classes are left
untouched, so a normal run pays nothing. Serialising a config (``schema.to_dict``) happens
inside ``paused()``: writing the resolved ``config.yaml`` touches every field and is not a use.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_TAG = "_repulse_config_path"
_lock = threading.Lock()
_active: _Recorder | None = None


class _Recorder:
    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.paused = 0
        self.fields: dict[type, frozenset[str]] = {}


def _hook(self: Any, name: str) -> Any:
    value = object.__getattribute__(self, name)
    rec = _active
    if rec is not None and not rec.paused and name in rec.fields.get(type(self), ()):
        prefix = object.__getattribute__(self, "__dict__").get(_TAG)
        if prefix is not None and not dataclasses.is_dataclass(value):
            rec.reads.add(prefix + name)
    return value


def _tag(node: Any, prefix: str, rec: _Recorder) -> None:
    node.__dict__[_TAG] = prefix
    rec.fields[type(node)] = frozenset(f.name for f in dataclasses.fields(node))
    for f in dataclasses.fields(node):
        value = node.__dict__[f.name]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _tag(value, f"{prefix}{f.name}.", rec)


@contextmanager
def recording(cfg: Any) -> Iterator[set[str]]:
    """Within the block, collect the dotted paths of ``cfg``'s fields that are read (the set yielded).

    Sections copied during the run (``copy.deepcopy``) keep their tag and are recorded under the
    path they were copied from. One recording at a time.
    """
    global _active
    rec = _Recorder()
    _tag(cfg, "", rec)
    with _lock:
        if _active is not None:
            raise RuntimeError("a config recording is already running")
        _active = rec
    patched = []
    for cls in rec.fields:
        if "__getattribute__" not in cls.__dict__:
            cls.__getattribute__ = _hook  # type: ignore[method-assign]
            patched.append(cls)
    try:
        yield rec.reads
    finally:
        for cls in patched:
            del cls.__getattribute__
        _active = None
        _untag(cfg)


def _untag(node: Any) -> None:
    node.__dict__.pop(_TAG, None)
    for f in dataclasses.fields(node):
        value = node.__dict__[f.name]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _untag(value)


@contextmanager
def paused() -> Iterator[None]:
    """Reads inside this block are not recorded (serialisation, dumps)."""
    rec = _active
    if rec is None:
        yield
        return
    rec.paused += 1
    try:
        yield
    finally:
        rec.paused -= 1
