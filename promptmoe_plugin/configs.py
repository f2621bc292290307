"""Typed parsing of strings into the fields of a settings dataclass.

:func:`parse_fields` turns ``{"k": "5", "box_gate": "none", "experts": "edge,color"}``
into ``{"k": 5, "box_gate": None, "experts": ("edge", "color")}`` following the field
types of a dataclass (``RefineConfig.from_strings``, ``SmartSamConfig.from_strings``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _parse(text: str, hint: Any) -> Any:
    """``text`` as a value of type ``hint``: bool, int, float, str, ``tuple[str, ...]``
    (comma-separated) or one of those ``| None`` (``"none"``)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() == "none":
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if hint is bool:
        lowered = text.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise ValueError(f"expected true or false, got {text!r}")
        return lowered in _TRUE
    if hint is str:
        return text
    if hint in (int, float):
        return hint(text.strip())
    if typing.get_origin(hint) is tuple and args[1:] == (Ellipsis,) and args[0] is str:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    raise TypeError(f"no string parser for fields of type {hint!r}")


def parse_fields(cls: type, values: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from ``values`` (field name -> string).

    Raises:
        ValueError: an unknown field (the message lists the known ones) or a string that
            does not parse as its field's type (the message names the field).
    """
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {', '.join(known)}")
    out = {}
    for name, text in values.items():
        try:
            out[name] = _parse(text, hints[name])
        except ValueError as exc:
            raise ValueError(f"{cls.__name__}.{name}: {exc}") from None
    return out
