"""Typed settings: Hydra/OmegaConf nodes -> small dataclasses, validated once with every problem listed.

One path for every config section: ``to_dataclass(cls, node, "section")`` refuses unknown keys, checks
each value against the field's type hint (nested dataclasses included), then asks the object for its
``problems()`` (range and consistency checks, one line each, naming ``section.key``). ``check_sections``
does that for several sections and raises one ``ConfigError`` listing every problem of every section.

This module imports no torch/transformers/lightning, and neither may the dataclasses it checks: a
config typo must be reported in about a second, not after ~11 s of imports.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from autodidact.errors import ConfigError

T = TypeVar("T")
MISSING = "???"  # OmegaConf's mandatory value, as to_container leaves it
GROUPS = ("model", "lora", "trainer", "data", "teacher", "router", "logger", "server")
"""Sections that are Hydra config groups: their settings live in conf/<section>/*.yaml."""


def where_to_fix(sections: list[str], top_file: str = "conf/config.yaml") -> str:
    """The one line every config error ends with: how to change a setting, and which files hold them.

    ``top_file``: the script's own config file, where its top-level keys and plain sections live.
    """
    files = []
    for s in dict.fromkeys(sections):
        top = s.split(".")[0]
        f = f"conf/{top}/*.yaml" if top in GROUPS else top_file
        if f not in files:
            files.append(f)
    return f"Fix them on the command line (key=value) or in {', '.join(files or [top_file])}."


def config_error(problems: list[str], sections: list[str], error: type[ConfigError] = ConfigError,
                 top_file: str = "conf/config.yaml") -> ConfigError:
    """One error for every problem: ``invalid <section> config:`` (or ``invalid config:``), a line each."""
    head = f"invalid {sections[0]} config:" if len(set(sections)) == 1 else "invalid config:"
    return error(head + "\n  - " + "\n  - ".join(problems) + "\n" + where_to_fix(sections, top_file), problems)


def all_problems(obj: Any) -> list[str]:
    """``obj.problems()`` and those of every dataclass it holds (a nested section checks itself)."""
    out = list(obj.problems()) if hasattr(obj, "problems") else []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += all_problems(value)
    return out


def check_dataclass(obj: Any, where: str, error: type[ConfigError] = ConfigError) -> None:
    """Raise one ConfigError listing everything ``obj`` (and the sections nested in it) reports."""
    problems = all_problems(obj)
    if problems:
        raise config_error(problems, [where], error)


def plain(node: Any) -> dict:
    """A config node as a plain dict, interpolations resolved where they can be.

    Outside a Hydra run ``${hydra:...}`` cannot resolve (tests compose configs without one); such a
    value is kept as its text rather than failing the whole section.
    """
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return dict(node)
    try:
        out = OmegaConf.to_container(node, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here; per key below
        raw = OmegaConf.to_container(node, resolve=False)
        out = {}
        for key in node:
            try:
                value = node[key]
                out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
            except Exception:  # noqa: BLE001
                out[key] = raw[key]
    assert isinstance(out, dict)
    return out


def to_dataclass(cls: type[T], node: Any, where: str, ignore: tuple[str, ...] = ("_target_",)) -> T:
    """Build ``cls`` from a mapping (DictConfig or dict), refusing unknown keys and wrong types."""
    obj, problems = _build(cls, node, where, ignore)
    if problems:
        raise config_error(problems, [where])
    return obj  # type: ignore[return-value]


def check_sections(cfg: Any, sections: Mapping[str, type], top: type | None = None,
                   passthrough: tuple[str, ...] = (), top_file: str = "conf/config.yaml") -> dict[str, Any]:
    """Build every ``sections[name]`` from ``cfg[name]``; one ConfigError lists every problem of all.

    ``top``: the dataclass of ``cfg``'s own keys (returned under ``""``); then a key that is neither
    one of them, a section nor in ``passthrough`` (sections checked by their own code) is an error.
    """
    out: dict[str, Any] = {}
    problems: list[str] = []
    bad: list[str] = []
    if top is not None:
        out[""], p = _build(top, cfg, "", ignore=("_target_", *sections, *passthrough))
        problems += p
        bad += ["config"] * bool(p)
    for name, cls in sections.items():
        out[name], p = _build(cls, cfg.get(name), name)
        problems += p
        bad += [name] * bool(p)
    if problems:
        raise config_error(problems, bad, top_file=top_file)
    return out


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _build(cls: type, node: Any, where: str, ignore: tuple[str, ...] = ("_target_",),
           base: Any = None, nested: bool = False) -> tuple[Any, list[str]]:
    """(the object, or None when even the fitting values do not build one; every problem found).

    ``base``: defaults for the keys the node leaves out; a ``nested`` section's own ``problems()``
    are asked by its parent's (``all_problems``).
    """
    if node is None:
        node = {}
    if not isinstance(node, Mapping):
        return None, [f"{where}={node!r} should be a section of settings (key: value)"]
    data = plain(node)
    if hasattr(cls, "arrange"):  # a section that gathers some keys into one field (trainer: Lightning's own)
        data = cls.arrange(data)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ignore:
            continue
        name = _key(where, key)
        if key not in fields:
            known = sorted(fields) + sorted({k for k in ignore if not k.startswith("_")})
            problems.append(f"{name} is not a setting (known: {', '.join(known)})")
            continue
        if isinstance(value, str) and value == MISSING:
            problems.append(f"{name} must be set ({name}=...)")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            sub_base = getattr(base, key) if base is not None else _field_default(fields[key])
            sub, p = _build(tp, value, name, ignore, base=sub_base, nested=True)
            problems += p
            if sub is not None:
                kwargs[key] = sub
            continue
        ok, coerced = _coerce(value, tp)
        if not ok:
            problems.append(f"{name}={value!r} should be {_type_name(tp)}")
            continue
        kwargs[key] = coerced
    # Built from the values that fit (defaults for the rest), so its own range and consistency checks
    # report too: one run shows every problem, not the type errors first and the rest next time.
    try:
        obj = dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError as e:  # a frozen dataclass that checks itself in __post_init__
        return None, problems + e.problems
    return obj, problems + ([] if nested else all_problems(obj))


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) if not typing.get_args(tp) else str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether ``value`` fits ``tp``, the value in that type): an int for a float, a comma string or
    a list for a list; never a str for a number or a bool (``bool("abc")`` is True)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, v = _coerce(value, a)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is Any:
        return True, value
    if origin in (list, tuple):
        if isinstance(value, str) and origin is list:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            return False, value
        item = args[0] if args else Any
        items = [_coerce(v, item) for v in value]
        if not all(ok for ok, _ in items):
            return False, value
        return True, origin(v for _, v in items)
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    return True, value
