"""Benchmark reports: text tables, ``report.md``, overlay PNGs of extreme cases, JSON."""

from __future__ import annotations

import heapq
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..overlay import draw_overlay
from .stats import BANDS

log = logging.getLogger(__name__)

#: Columns of the click benchmark's table.
CLICK_COLUMNS = (
    "method",
    "images",
    "miou@1",
    "oracle@1",
    "ratio@85",
    "noc@85",
    "noc@90",
    "nof@90",
    "miou@5",
    "drops",
    "losses",
    "sec_per_click1",
    "sec_per_later_click",
)
#: Line colours of the per-click mIoU plot, one per method in run order (RGB).
CURVE_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))

LEGEND = (
    "Overlays: output filled in blue, ground-truth contour green, input (coarse) contour "
    "yellow, positive points green, negative red, box white."
)


def format_value(value: Any) -> str:
    """A table cell: ``-`` for None and non-finite numbers, 3 decimals below 1, else 2."""
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
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
        for i, c in enumerate(columns)
    ]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i else v.ljust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join(
        [line(list(columns)), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    )


def click_tables(result: dict[str, Any], markdown: bool = False) -> str:
    """One table per dataset of a click benchmark result (:func:`.click_bench.run_click_bench`)."""
    parts = []
    for name, methods in result["by_dataset"].items():
        rows = [{"method": m, **fig} for m, fig in methods.items()]
        parts.append(f"{name}:\n" if not markdown else f"### {name}\n")
        parts.append(table(rows, CLICK_COLUMNS, markdown) + "\n")
    return "\n".join(parts)


def refine_tables(result: dict[str, Any], markdown: bool = False) -> str:
    """The tables of a refinement benchmark result (:func:`.refine_bench.run_refine_bench`):
    summary with the CI against the baseline, delta IoU per group and per initial-IoU band,
    the unrefined IoU distribution and the mean seconds per stage."""
    baseline = result["config"]["baseline"]
    vs_iou = f"vs {baseline} iou [95% CI]"
    rows = []
    for m, fig in result["summary"].items():
        ci = fig.get(f"ci95_iou_vs_{baseline}")
        ci_b = fig.get(f"ci95_biou_vs_{baseline}")
        diff, diff_b = fig[f"diff_iou_vs_{baseline}"], fig[f"diff_biou_vs_{baseline}"]
        rows.append(
            {
                "method": m,
                **fig,
                vs_iou: f"{diff:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-",
                "biou [95% CI]": f"{diff_b:+.2f} [{ci_b[0]:+.2f}, {ci_b[1]:+.2f}]" if ci_b else "-",
            }
        )
    cols = (
        "method",
        "delta_iou",
        "delta_biou",
        "delta_biou_cheng",
        "iou",
        vs_iou,
        "biou [95% CI]",
        "sec_per_annotation",
        "time_vs_baseline",
    )
    out = ["Summary (pp; mean over dataset x coarse groups):", table(rows, cols, markdown), ""]
    methods = list(result["summary"])
    groups = [{"group": g, **v} for g, v in result["by_group"].items()]
    out += ["Delta IoU per dataset/coarse (pp):", table(groups, ["group", *methods], markdown), ""]
    band_rows = [
        {"initial IoU": b, **{m: v[m]["delta_iou"] for m in methods}, "n": v[methods[0]]["n"]}
        for b, v in result["bands"].items()
    ]
    out += [
        "Delta IoU by initial IoU band (pp):",
        table(band_rows, ["initial IoU", *methods, "n"], markdown),
        "",
    ]
    kinds = [{"coarse": k, **v} for k, v in result["unrefined"].items()]
    cols_u = ["coarse", "n", "mean", "p10", "p25", "p50", "p75", "p90"]
    cols_u += [f"{lo}-{hi}" for lo, hi in BANDS]
    out += [
        "Unrefined IoU distribution (%, and images per band):",
        table(kinds, cols_u, markdown),
        "",
    ]
    stages = list(dict.fromkeys(s for t in result["timings"].values() for s in t))
    timings = [{"method": m, **t} for m, t in result["timings"].items()]
    out += ["Mean seconds per stage:", table(timings, ["method", *stages], markdown)]
    skipped = result.get("skipped", [])
    if skipped:
        reasons = Counter(s["reason"] for s in skipped)
        out += ["", f"Skipped {len(skipped)} samples (image x coarse kind):"]
        out += [f"  {n} x {reason}" for reason, n in reasons.most_common()]
    return "\n".join(out)


def config_text(config: dict[str, Any]) -> str:
    """A benchmark's ``config`` block as ``key: value`` lines."""
    return "\n".join(f"{k}: {v}" for k, v in config.items())


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
        """Offer a case; it is kept when among the ``k`` lowest or highest so far."""
        self._count += 1
        for heap, key in ((self._low, -score), (self._high, score)):
            item = (key, -self._count, case)
            if len(heap) < self.k:
                heapq.heappush(heap, item)
            elif key > heap[0][0]:
                heapq.heapreplace(heap, item)

    def worst(self) -> list[tuple[float, Case]]:
        """The lowest-scoring cases, lowest first."""
        return [(-key, case) for key, _, case in sorted(self._low, reverse=True)]

    def best(self) -> list[tuple[float, Case]]:
        """The highest-scoring cases, highest first."""
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
                lines.append(
                    f"- {method} {kind} {rank}: {case.title}, {score_name} {score:.3f}: "
                    f"![](overlays/{name})"
                )
    return lines


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


def plot_curves(path: Path, curves: dict[str, Sequence[float]], title: str) -> Path:
    """Draw mIoU (%) after clicks 1..k, one line per method, as a PNG at ``path``."""
    width, height, left, bottom, top, right = 640, 400, 50, 40, 30, 150
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    k = max((len(c) for c in curves.values()), default=1)
    lo = min((min(c) for c in curves.values() if len(c)), default=0.0)
    lo = max(0.0, np.floor(lo / 10) * 10)

    def xy(click: int, value: float) -> tuple[float, float]:
        x = left + (click - 1) / max(k - 1, 1) * (width - left - right)
        y = top + (100 - value) / (100 - lo) * (height - top - bottom)
        return x, y

    draw.rectangle([xy(1, 100), xy(k, lo)], outline="black")
    for value in np.arange(lo, 100.1, 10):
        x, y = xy(1, value)
        draw.text((x - 30, y - 6), f"{value:.0f}", fill="black")
    for click in range(1, k + 1, max(1, k // 10)):
        x, y = xy(click, lo)
        draw.text((x - 3, y + 4), str(click), fill="black")
    draw.text((left, 8), title, fill="black")
    for i, (method, curve) in enumerate(curves.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        draw.line([xy(c, v) for c, v in enumerate(curve, start=1)], fill=colour, width=2)
        draw.text((width - right + 10, top + 16 * i), method, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    """Write benchmark figures to ``path`` (parents created) when a path is given."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    log.info("wrote %s", path)
