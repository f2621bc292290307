"""Refinement statistics: gain matrices, group means, bootstrap CI, initial-IoU bands.

Records are the ``per_image`` dicts of :func:`.refine_bench.run_refine_bench`: one per
(dataset, image, coarse kind, method) with IoUs in [0, 1] and seconds.  Figures are in
percentage points (pp).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Initial-IoU bands (percent) for stratified refinement figures (PromptMoE Table 12).
BANDS = ((0, 20), (20, 40), (40, 60), (60, 80), (80, 100))
#: Percentiles of the unrefined IoU distribution.
PERCENTILES = (10, 25, 50, 75, 90)

Record = dict[str, Any]


def in_band(value: float, lo: int, hi: int) -> bool:
    """Whether IoU ``value`` in [0, 1] falls in the band ``[lo, hi)`` percent (100 in the last)."""
    v = 100 * value
    return lo <= v < hi or (hi == 100 and v == 100)


def gain_matrix(records: Sequence[Record], method: str, key: str) -> dict[str, np.ndarray]:
    """Per dataset: ``(images, coarse kinds)`` float64 array of ``key`` minus ``key_before``
    (pp) of ``method``, rows and columns in order of first appearance."""
    out: dict[str, dict[tuple[str, str], float]] = {}
    for r in records:
        if r["method"] == method:
            gain = 100 * (r[key] - r[f"{key}_before"])
            out.setdefault(r["dataset"], {})[(r["image"], r["coarse"])] = gain
    mats = {}
    for dataset, values in out.items():
        images = list(dict.fromkeys(i for i, _ in values))
        kinds = list(dict.fromkeys(k for _, k in values))
        mats[dataset] = np.array([[values[(i, k)] for k in kinds] for i in images], np.float64)
    return mats


def group_mean(mats: dict[str, np.ndarray]) -> float:
    """Mean over (dataset, coarse) groups of the per-group mean."""
    return float(np.concatenate([m.mean(axis=0) for m in mats.values()]).mean())


def bootstrap_ci(diffs: dict[str, np.ndarray], resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile CI of the group-mean of paired differences.

    Images are resampled with replacement within each dataset (all coarse kinds of an
    image move together); ``diffs`` maps dataset -> ``(images, kinds)`` pp.
    """
    rng = np.random.default_rng(seed)
    stats = np.zeros((resamples, 0))
    for mat in diffs.values():
        idx = rng.integers(0, len(mat), (resamples, len(mat)))
        stats = np.concatenate([stats, mat[idx].mean(axis=1)], axis=1)
    values = stats.mean(axis=1)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _method_summary(
    records: Sequence[Record],
    method: str,
    baseline: str,
    base_sec: float,
    bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Figures of one method: deltas (pp), mean IoU, time, differences to ``baseline``
    with their bootstrap CI (``bootstrap`` resamples; none for the baseline or 0)."""
    rows = [r for r in records if r["method"] == method]
    g_iou, g_biou = gain_matrix(records, method, "iou"), gain_matrix(records, method, "biou")
    g_cheng = gain_matrix(records, method, "biou_cheng")
    sec = np.array([r["seconds"] + r["encode_seconds"] for r in rows])
    fig: dict[str, Any] = {
        "annotations": len(rows),
        "delta_iou": group_mean(g_iou),
        "delta_biou": group_mean(g_biou),
        "delta_biou_cheng": group_mean(g_cheng),
        "iou": 100 * float(np.mean([r["iou"] for r in rows])),
        "sec_per_annotation": float(sec.mean()),
        "sec_per_annotation_median": float(np.median(sec)),
        "time_vs_baseline": float(sec.mean() / base_sec) if base_sec > 0 else None,
    }
    for key, mine in (("iou", g_iou), ("biou", g_biou)):
        base = gain_matrix(records, baseline, key)
        diff = {d: mine[d] - base[d] for d in mine}
        fig[f"diff_{key}_vs_{baseline}"] = group_mean(diff)
        if method != baseline and bootstrap > 0:
            fig[f"ci95_{key}_vs_{baseline}"] = list(bootstrap_ci(diff, bootstrap, seed))
    return fig


def _unrefined(records: Sequence[Record], first: str) -> dict[str, dict[str, Any]]:
    """Per coarse kind: the unrefined IoU (%) distribution (from ``first``'s records, one per
    annotation) and the annotations per initial-IoU band."""
    out = {}
    for kind in dict.fromkeys(r["coarse"] for r in records):
        values = 100 * np.array(
            [r["iou_before"] for r in records if r["coarse"] == kind and r["method"] == first]
        )
        q = np.percentile(values, PERCENTILES)
        out[kind] = {
            "n": len(values),
            "mean": float(values.mean()),
            **{f"p{p}": float(v) for p, v in zip(PERCENTILES, q, strict=True)},
            **{
                f"{lo}-{hi}": int(sum(in_band(v / 100, lo, hi) for v in values)) for lo, hi in BANDS
            },
        }
    return out


def _timings(records: Sequence[Record], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per method: mean seconds of the image encoder, of each stage (0 where a record lacks
    it) and of the whole method."""
    out: dict[str, dict[str, float]] = {}
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        stages = dict.fromkeys(s for r in rows for s in r["timings"])
        out[m] = {"image_encoder": float(np.mean([r["encode_seconds"] for r in rows]))}
        out[m].update({s: float(np.mean([r["timings"].get(s, 0.0) for r in rows])) for s in stages})
        out[m]["total_method"] = float(np.mean([r["seconds"] for r in rows]))
    return out


def summarize_refine(
    records: Sequence[Record],
    methods: Sequence[str],
    baseline: str,
    *,
    bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Refinement figures: ``summary`` per method, ``by_group`` per (dataset, coarse),
    ``bands`` by initial IoU band, ``unrefined`` IoU distribution per coarse kind, and
    ``timings`` (mean seconds per stage).  IoU figures in percentage points."""
    base_sec = float(
        np.mean([r["seconds"] + r["encode_seconds"] for r in records if r["method"] == baseline])
    )
    summary = {
        m: _method_summary(records, m, baseline, base_sec, bootstrap, seed)
        for m in methods
        if any(r["method"] == m for r in records)
    }
    groups = dict.fromkeys((r["dataset"], r["coarse"]) for r in records)
    by_group = {
        f"{d}/{k}": {
            m: 100
            * float(
                np.mean(
                    [
                        r["iou"] - r["iou_before"]
                        for r in records
                        if r["method"] == m and (r["dataset"], r["coarse"]) == (d, k)
                    ]
                )
            )
            for m in summary
        }
        for d, k in groups
    }
    bands: dict[str, dict[str, Any]] = {}
    for lo, hi in BANDS:
        label = f"{lo}-{hi}"
        bands[label] = {}
        for m in summary:
            gains = [
                100 * (r["iou"] - r["iou_before"])
                for r in records
                if r["method"] == m and in_band(r["iou_before"], lo, hi)
            ]
            bands[label][m] = {
                "n": len(gains),
                "delta_iou": float(np.mean(gains)) if gains else None,
            }
    return {
        "summary": summary,
        "by_group": by_group,
        "bands": bands,
        "unrefined": _unrefined(records, methods[0]),
        "timings": _timings(records, list(summary)),
    }
