"""Typed YAML configs on OmegaConf: files that compose through ``base:`` (paths relative to the including
file, mappings merged recursively, the file's own keys on top), ``key.path=value`` overrides, and the
keys and types of a dataclass schema checked with one-line ValueErrors naming the key
(``train.lr: expected float, got 'abc'.``).

OmegaConf loads, merges, parses overrides (``from_dotlist``) and checks types (``structured``); what is
written here is where a run config is stricter than OmegaConf (``_prepare``) and the errors' wording.
Nothing here knows the toolkit's schema (that is ``config.py``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """The raw mapping of a YAML file with its ``base`` files (relative to it) merged underneath."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ValueError(f"{path}: circular 'base' chain.")
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist.")
    try:
        conf = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(conf, DictConfig):
        raise ValueError(f"{path}: expected a mapping at the top level.")
    bases = conf.pop("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, (list, ListConfig)) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{path}: base must be a file name or a list of them, got {bases!r}.")
    layers = [read_yaml(path.parent / b, _seen + (path.resolve(),)) for b in bases]
    try:
        return OmegaConf.to_container(OmegaConf.merge(*layers, conf))
    except TypeError:  # OmegaConf merges a list onto a mapping (or the reverse) only in a typed field
        raise ValueError(f"{path}: a key holds a list in one file and a mapping in another.") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` strings (values parsed as YAML by OmegaConf.from_dotlist) to a raw
    mapping; a value replaces the key's whole value (``sde.params={...}`` drops the old params)."""
    conf = OmegaConf.create(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ValueError(f"override {item!r} must look like key.path=value.")
        for i in range(1, len(parts)):
            node = OmegaConf.select(conf, ".".join(parts[:i]), throw_on_resolution_failure=False)
            if node is not None and not isinstance(node, DictConfig):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:i])} is not a section.")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        except yaml.YAMLError:
            value = text
        else:
            for p in parts:
                value = value[p]
        OmegaConf.update(conf, key, value, merge=False)
    return OmegaConf.to_container(conf)


def _scalar(tp: Any) -> Any:
    """``T`` for ``Optional[T]``, else ``tp``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _prepare(raw: Any, cls: type, path: str = "") -> dict:
    """``raw`` under the rules OmegaConf does not share: an empty section means its defaults; an integral
    number (2.0, 1e4, which YAML 1.1 reads as text) is an int; a str or bool key takes only text or
    true/false (OmegaConf would turn 5 into "5" and 3 or "yes" into True), or a ``${key}`` reference."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path.rstrip('.') or 'config'}: expected a mapping, got {raw!r}.")
    hints, out = typing.get_type_hints(cls), dict(raw)
    for key, value in raw.items():
        tp = _scalar(hints.get(key))  # an unknown key is OmegaConf's to refuse
        if dataclasses.is_dataclass(tp):
            out[key] = _prepare(value, tp, f"{path}{key}.")
        elif tp is int and isinstance(value, (float, str)):
            try:
                number = float(value)
            except ValueError:
                continue
            out[key] = int(number) if number.is_integer() else number
        elif tp in (str, bool) and value is not None and not isinstance(value, tp) and "${" not in str(value):
            raise ValueError(f"{path}{key}: expected {tp.__name__}, got {value!r}.")
    return out


def _message(e: OmegaConfBaseException, schema: type, raw: dict) -> str:
    """OmegaConf's error as today's one line naming the key."""
    key, tp, value = e.full_key, schema, raw
    if isinstance(e, ConfigKeyError) and dataclasses.is_dataclass(e.object_type):
        return f"{key}: unknown key; allowed: {', '.join(f.name for f in dataclasses.fields(e.object_type))}."
    for part in key.split(".") if isinstance(e, ValidationError) and key else ():
        tp, value = _scalar(typing.get_type_hints(tp)[part]), value.get(part)
        if tp is dict:  # the params mappings; OmegaConf types nothing below them
            return f"{key}: expected a mapping of names to values, got {value!r}."
    if tp is not schema:
        return f"{key}: expected {tp.__name__}, got {value!r}."
    return f"{key + ': ' if key else ''}{str(e.msg or e).splitlines()[0]}."


def typed(schema: type[T], raw: dict) -> T:
    """An instance of dataclass ``schema`` from a plain mapping, every key and type checked."""
    raw = _prepare(raw, schema)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw))
    except OmegaConfBaseException as e:
        raise ValueError(_message(e, schema, raw)) from None
