"""Benchmark method options: ``[METHOD:]KEY=VALUE`` strings to typed options per method.

:func:`parse_options` splits the strings by target (a method name, or ``"*"`` for every
method of the run); :func:`click_options` and :func:`refine_options` turn them into each
method's typed options through their ``from_strings``, so a bad key or value is a
``ValueError`` naming the method before any image is processed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from .methods import ClickMethod, ClickOptions, RefineMethod, RefineOptions

log = logging.getLogger(__name__)

#: The target of an option given without ``METHOD:``: every method of the run.
ALL = "*"

#: Option strings by target: ``{"*" or method: {key: value}}``.
OptionStrings = Mapping[str, Mapping[str, str]]

T = TypeVar("T", ClickOptions, RefineOptions)


def parse_options(pairs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``[METHOD:]KEY=VALUE`` strings by target (``"*"`` when no method is named).

    The method is split off at the last ``:`` before the first ``=`` (values may hold
    ``:``); a later string for the same target and key wins.

    Raises:
        ValueError: a string without ``=`` or without a key.
    """
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        head, sep, value = pair.partition("=")
        target, _, key = head.rpartition(":")
        if not sep or not key:
            raise ValueError(f"an option is [METHOD:]KEY=VALUE, got {pair!r}")
        out.setdefault(target or ALL, {})[key] = value
    return out


def method_strings(options: OptionStrings, method: str) -> dict[str, str]:
    """The option strings of ``method``: those for every method, then its own."""
    return {**options.get(ALL, {}), **options.get(method, {})}


def _typed(options: OptionStrings, methods: Sequence[str], parse: type[T]) -> dict[str, T]:
    """``parse.from_strings`` of each method's strings; a ``ValueError`` names the method."""
    unused = set(options) - {ALL, *methods}
    if unused:
        log.warning("options for %s ignored: not among the methods run", ", ".join(sorted(unused)))
    out = {}
    for method in methods:
        try:
            out[method] = parse.from_strings(method_strings(options, method))
        except ValueError as exc:
            raise ValueError(f"options of method {method!r}: {exc}") from exc
    return out


def click_options(
    options: OptionStrings, methods: Sequence[ClickMethod]
) -> dict[str, ClickOptions]:
    """Typed options of each click method (:class:`.methods.ClickOptions`).

    Raises:
        ValueError: options for a plain SAM method (it takes none), an unknown key or a bad
            value (the message names the method).
    """
    for method in methods:
        given = method_strings(options, method.name)
        if given and not method.takes_options:
            raise ValueError(f"click method {method.name!r} takes no options, got {sorted(given)}")
    return _typed(options, [m.name for m in methods if m.takes_options], ClickOptions)


def refine_options(
    options: OptionStrings, methods: Sequence[RefineMethod]
) -> dict[str, RefineOptions]:
    """Typed options of each refine method (:class:`.methods.RefineOptions`).

    Raises:
        ValueError: an unknown key or a bad value (the message names the method).
    """
    return _typed(options, [m.name for m in methods], RefineOptions)


def _json_value(text: str) -> Any:
    """``text`` as an int, float, bool or None when it reads as one, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def recorded(options: OptionStrings) -> dict[str, dict[str, Any]]:
    """Option strings as a benchmark's ``config`` records them: by target, with numbers,
    ``true`` / ``false`` and ``none`` converted."""
    return {
        target: {k: _json_value(v) for k, v in values.items()} for target, values in options.items()
    }
