"""The click benchmark: simulated click sessions of click methods over datasets.

Each dataset's images are processed in a fixed order (sorted by name).  The result holds
``summary``, ``by_dataset``, ``per_image`` and ``config``; with ``out`` a ``report.md``
plus overlay PNGs of the best and worst first clicks of every method are written there.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..sam import SamEngine
from .clicker import MAX_CLICKS, MIOU_AT, THRESHOLDS, simulate, summarize_runs
from .coarse import sample_seed
from .datasets import sample_datasets
from .methods import Reference, click_methods, click_runners
from .options import click_options, recorded
from .report import LEGEND, Case, Extremes, click_tables, config_text, write_overlays, write_report

log = logging.getLogger(__name__)

PROTOCOL = (
    "first click at the deepest GT pixel, then the deepest pixel of the larger error; "
    "ignore band excluded; previous logits fed back; no pixel clicked twice; "
    f"stop at IoU >= {max(THRESHOLDS)} after {max(MIOU_AT)} clicks; "
    "sec_per_click1 timed with the embedding and reference features cached"
)


def run_click_bench(
    engine: SamEngine,
    folders: Sequence[str],
    methods: Sequence[str],
    *,
    limit: int | None = None,
    max_clicks: int = MAX_CLICKS,
    references: int = 5,
    seed: int = 0,
    options: Mapping[str, Mapping[str, str]] | None = None,
    out: str | Path | None = None,
    overlays: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Simulate click sessions of every method on every image.

    Methods that use references get the ground-truth masks of up to ``references`` earlier
    images of the same dataset (project simulation), never the image's own.  The
    embedding and the references' features are computed before the first click's timer
    starts (one untimed session start per method and image), as the backend has them
    cached when an annotator clicks (features are computed when an annotation is
    submitted), so ``sec_per_click1`` is session creation plus the first click.

    Args:
        engine: the SAM engine every method shares.
        folders: dataset folders (see :mod:`.datasets`), distinct directory names.
        methods: click method names (:data:`.methods.CLICK_METHODS`).
        limit: first ``limit`` images of each dataset (None or 0: all).
        max_clicks: click budget per image.
        references: reference masks from up to this many earlier images.
        seed: run seed; each image's session seed is :func:`.coarse.sample_seed`.
        options: ``--option`` strings per target (:func:`.options.parse_options`).
        out: folder for ``report.md`` and the overlays (None: no report).
        overlays: best and worst first clicks drawn per method when ``out`` is given.
        progress: show a progress bar per dataset.

    Returns:
        the JSON payload: ``summary`` and ``by_dataset`` figures per method, ``per_image``
        records and the run's ``config``.

    Raises:
        ValueError: an unknown method, bad options, or unusable dataset folders.
    """
    chosen = click_methods(methods)
    runners = click_runners(engine, chosen, click_options(options or {}, chosen))
    data = sample_datasets(folders, limit)
    config = {
        "benchmark": "click",
        "datasets": {n: len(s) for n, s in data},
        "methods": list(methods),
        "seed": seed,
        "max_clicks": max_clicks,
        "references": references,
        "options": recorded(options or {}),
        "model": engine.model_id,
        "protocol": PROTOCOL,
    }
    keep = overlays if out else 0
    per_image: list[dict[str, Any]] = []
    extremes = {r.name: Extremes(keep) for r in runners}
    for name, samples in data:
        earlier: deque[Reference] = deque(maxlen=references)
        for sample in tqdm(samples, desc=f"click {name}", unit="img", disable=not progress):
            image, gt, ignore = sample.load()
            if not (gt & ~ignore).any():
                log.warning("%s/%s: empty ground truth, skipped", name, sample.name)
                continue
            engine.embed(image)
            for runner in runners:
                refs = list(earlier) if runner.method.uses_references else []
                start = partial(
                    runner.start, image, references=refs, seed=sample_seed(seed, sample.name)
                )
                start()  # untimed: fills the engine's and the intent's caches
                run = simulate(start, gt, ignore, max_clicks=max_clicks, keep_masks=keep > 0)
                per_image.append(
                    {
                        "dataset": name,
                        "image": sample.name,
                        "method": runner.name,
                        "references": len(refs),
                        "ious": run.ious,
                        "clicks": [[c.x, c.y, int(c.positive)] for c in run.clicks],
                        "oracle_iou": run.oracle_iou,
                        "sec_per_click": run.seconds,
                    }
                )
                ext = extremes[runner.name]
                if ext.wants(run.ious[0]):
                    c = run.clicks[0]
                    title = f"{name}/{sample.name} click 1"
                    points, labels = np.array([[c.x, c.y]]), np.array([int(c.positive)])
                    ext.add(run.ious[0], Case(title, image, gt, run.masks[0], None, points, labels))
            earlier.append((image, gt))
    by_dataset = {
        name: {
            r.name: _click_summary(
                [x for x in per_image if x["dataset"] == name and x["method"] == r.name], max_clicks
            )
            for r in runners
        }
        for name, _ in data
    }
    summary = {
        r.name: _click_summary([x for x in per_image if x["method"] == r.name], max_clicks)
        for r in runners
    }
    result = {
        "summary": summary,
        "by_dataset": by_dataset,
        "per_image": per_image,
        "config": config,
    }
    if out:
        _write_click_report(Path(out), result, extremes)
    return result


def _click_summary(records: list[dict[str, Any]], max_clicks: int) -> dict[str, Any]:
    """Click figures of one method's records (:func:`.clicker.summarize_runs`), the oracle
    IoU at click 1 (%) and the seconds of click 1 (mean and median)."""
    if not records:
        return {"images": 0}
    out: dict[str, Any] = summarize_runs([r["ious"] for r in records], max_clicks)
    oracle = [r["oracle_iou"] for r in records if r["oracle_iou"] is not None]
    out["oracle@1"] = 100 * float(np.mean(oracle)) if oracle else None
    out["sec_per_click1"] = float(np.mean([r["sec_per_click"][0] for r in records]))
    out["sec_per_click1_median"] = float(np.median([r["sec_per_click"][0] for r in records]))
    return out


def _write_click_report(out: Path, result: dict[str, Any], extremes: dict[str, Extremes]) -> None:
    lines = write_overlays(out, extremes, "IoU@1")
    results = (
        "miou@k, oracle@1 (best candidate of click 1) and ratio@85 in %; noc in clicks; "
        "nof@90 in images; seconds exclude the image encoder.\n\n"
        + click_tables(result, markdown=True)
    )
    write_report(
        out,
        "Click benchmark",
        [
            ("Configuration", "```\n" + config_text(result["config"]) + "\n```"),
            ("Results", results),
            ("Best and worst cases (IoU after click 1)", LEGEND + "\n\n" + "\n".join(lines)),
        ],
    )
