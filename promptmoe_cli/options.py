"""Flags shared by several commands, built from the settings table of
:mod:`ls_backend.config` (one name, one environment variable, one default each)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ls_backend.config import OPTIONS, Settings, load_settings, make_engine
from promptmoe_plugin.sam import SamEngine

Subparsers = argparse._SubParsersAction


def add_settings_options(parser: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
    """Flags of the settings in ``sections`` (``"engine"``, ``"backend"``). A flag left out
    keeps the environment's value, then the setting's default."""
    titles = {"engine": "SAM engine", "backend": "Label Studio backend"}
    for section in sections:
        group = parser.add_argument_group(titles[section])
        for name, where, var, flag, text in OPTIONS:
            if where == section:
                group.add_argument(flag, dest=name, default=None, help=f"{text} (env {var})")


def settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    return load_settings(overrides={name: getattr(args, name, None) for name, *_ in OPTIONS})


def engine(args: argparse.Namespace) -> SamEngine:
    """The SAM engine of the engine flags (and their environment variables)."""
    return make_engine(settings(args).engine)


def names(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; an empty list is an error."""
    out = [n.strip() for n in text.split(",") if n.strip()]
    if not out:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return out


def parse_click(text: str) -> tuple[float, float, bool]:
    """``"x,y"`` or ``"x,y,neg"`` / ``"x,y,pos"`` -> (x, y, positive), image pixels."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"a click is x,y or x,y,neg; got {text!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"click coordinates must be numbers; got {text!r}"
        ) from None
    if len(parts) == 3 and parts[2].lower() not in ("pos", "neg"):
        raise argparse.ArgumentTypeError(f"the third field of a click is pos or neg; got {text!r}")
    return x, y, len(parts) == 2 or parts[2].lower() == "pos"


def parse_reference(text: str) -> tuple[str, str]:
    """``"IMAGE:MASK"`` -> (image path, mask path); the split is at the last colon."""
    image, sep, mask = text.rpartition(":")
    if not sep or not image or not mask:
        raise argparse.ArgumentTypeError(f"a reference is IMAGE:MASK; got {text!r}")
    return image, mask


def prepare_out(path: str | Path) -> Path:
    """``path`` as a Path whose parent folder exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def config_text(config: dict[str, Any]) -> str:
    """A benchmark's ``config`` block as ``key: value`` lines."""
    return "\n".join(f"{k}: {v}" for k, v in config.items())
