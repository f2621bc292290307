"""Benchmark reports: text tables, ``report.md`` and overlay PNGs of extreme cases."""

from __future__ import annotations

import heapq
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..overlay import draw_overlay

log = logging.getLogger(__name__)


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], markdown: bool = False) -> str:
    """Rows of figures as an aligned text table (or a Markdown table)."""
    cells = [[format_value(r.get(c)) for c in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    fmt = lambda row: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(list(columns)), fmt(["-" * w for w in widths]), *(fmt(r) for r in cells)])


@dataclass
class Case:
    """One drawable result: everything in the image frame.

    ``image`` ``(H, W, 3) uint8``; ``gt``, ``output`` and optional ``input`` ``(H, W)
    bool``; ``points`` ``(k, 2)`` (x, y) with ``labels`` ``(k,)`` and ``box`` ``(4,)``.
    """

    title: str
    image: np.ndarray
    gt: np.ndarray
    output: np.ndarray
    input: np.ndarray | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    def render(self) -> np.ndarray:
        """``(H, W, 3) uint8`` overlay: output filled, GT and input contours, prompts."""
        return draw_overlay(
            self.image,
            self.output,
            gt=self.gt,
            coarse=self.input,
            points=self.points,
            labels=self.labels,
            box=self.box,
        )


@dataclass
class Extremes:
    """Keeps the ``k`` lowest- and ``k`` highest-scoring cases of a stream (ties: first seen)."""

    k: int = 3
    _low: list = field(default_factory=list)
    _high: list = field(default_factory=list)
    _count: int = 0

    def wants(self, score: float) -> bool:
        """Whether a case with ``score`` would be kept (build it only then)."""
        if self.k <= 0:
            return False
        if len(self._low) < self.k or len(self._high) < self.k:
            return True
        return score < -self._low[0][0] or score > self._high[0][0]

    def add(self, score: float, case: Case) -> None:
        self._count += 1
        for heap, key in ((self._low, -score), (self._high, score)):
            item = (key, -self._count, case)
            if len(heap) < self.k:
                heapq.heappush(heap, item)
            elif key > heap[0][0]:
                heapq.heapreplace(heap, item)

    def worst(self) -> list[tuple[float, Case]]:
        return [(-key, case) for key, _, case in sorted(self._low, reverse=True)]

    def best(self) -> list[tuple[float, Case]]:
        return [(key, case) for key, _, case in sorted(self._high, reverse=True)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def write_overlays(out: Path, extremes: dict[str, Extremes], score_name: str) -> list[str]:
    """Save best / worst overlays per method under ``out/overlays``; Markdown lines."""
    folder = out / "overlays"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for method, ext in extremes.items():
        for kind, cases in (("best", ext.best()), ("worst", ext.worst())):
            for rank, (score, case) in enumerate(cases, start=1):
                name = f"{_slug(method)}_{kind}{rank}_{_slug(case.title)}.png"
                Image.fromarray(case.render()).save(folder / name)
                lines.append(f"- {method} {kind} {rank}: {case.title}, {score_name} {score:.3f}: ![](overlays/{name})")
    return lines


LEGEND = (
    "Overlays: output filled in blue, ground-truth contour green, input (coarse) contour "
    "yellow, positive points green, negative red, box white."
)


def write_report(out: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Write ``out/report.md`` from ``(heading, markdown body)`` sections."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body, ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    log.info("wrote %s", path)
    return path
