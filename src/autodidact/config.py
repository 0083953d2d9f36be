"""Typed settings: Hydra/OmegaConf nodes -> small dataclasses, validated once with every problem listed."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from autodidact.errors import ConfigError

T = TypeVar("T")


def check_dataclass(obj: Any, where: str) -> None:
    """Raise one ConfigError listing everything ``obj.problems()`` reports."""
    problems = obj.problems() if hasattr(obj, "problems") else []
    if problems:
        raise ConfigError(f"invalid {where} config:\n  - " + "\n  - ".join(problems))


def to_dataclass(cls: type[T], node: Any, where: str, ignore: tuple[str, ...] = ("_target_",)) -> T:
    """Build ``cls`` from a mapping (DictConfig or dict), refusing unknown keys and wrong types."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ignore:
            continue
        if key not in fields:
            problems.append(f"{where}.{key} is not a setting (known: {', '.join(sorted(fields))})")
            continue
        ok, value = _coerce(value, hints[key])
        if not ok:
            problems.append(f"{where}.{key}={value!r} should be {_type_name(hints[key])}")
            continue
        kwargs[key] = value
    if problems:
        raise ConfigError(f"invalid {where} config:\n  - " + "\n  - ".join(problems))
    obj = cls(**kwargs)
    check_dataclass(obj, where)
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            ok, v = _coerce(value, a)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is Any:
        return True, value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            return False, value
        return True, list(value)
    if origin is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        return isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    return True, value
