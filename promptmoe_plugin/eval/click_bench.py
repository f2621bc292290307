"""The click benchmark: simulated click sessions of click methods over datasets.

Each dataset's images are processed in a fixed order (sorted by name).  The result holds
``summary``, ``by_dataset``, ``per_image`` and ``config``; with ``out`` a ``report.md``
plus overlay PNGs of the best and worst first clicks of every method are written there.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..clicks import ClickSession
from ..sam import SamEngine
from ..zoom import crop_image
from .clicker import (
    MAX_CLICKS,
    MIOU_AT,
    THRESHOLDS,
    Click,
    Clicker,
    ClickRun,
    Frame,
    simulate,
    summarize_runs,
)
from .coarse import sample_seed
from .datasets import Sample, instance_class, sample_datasets
from .methods import Reference, click_methods, click_runners
from .options import click_options, recorded
from .report import (
    LEGEND,
    Case,
    Extremes,
    click_tables,
    config_text,
    plot_curves,
    write_overlays,
    write_report,
)

log = logging.getLogger(__name__)

PROTOCOL = (
    "first click at the deepest GT pixel (or random inside, see first_click), then the "
    "deepest pixel of the larger error; "
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
    first_click: str = "center",
    reference_pool: str = "auto",
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
    submitted), so ``sec_per_click1`` is session creation plus the first click.  The crop
    a later click will zoom on is encoded between clicks, outside the timer, as the
    backend does while the annotator looks at the mask.

    Args:
        engine: the SAM engine every method shares.
        folders: dataset folders (see :mod:`.datasets`), distinct directory names.
        methods: click method names (:data:`.methods.CLICK_METHODS`).
        limit: first ``limit`` images of each dataset (None or 0: all).
        max_clicks: click budget per image.
        references: reference masks from up to this many earlier images.
        seed: run seed; each image's session seed is :func:`.coarse.sample_seed`.
        options: ``--option`` strings per target (:func:`.options.parse_options`).
        first_click: ``"center"`` (the protocol's deepest pixel), ``"random"`` (uniform
            inside the object, 5 px or more from its boundary, seeded per image; every
            method gets the same click) or ``"box"`` (the object's bounding box first, as
            an annotator's smart rectangle; plain SAM methods only).
        reference_pool: where references come from: ``"earlier"`` (the previous images of
            the dataset, whatever their object), ``"same-class"`` (other instances of the
            image's class, from other photos: a Label Studio label's exemplars), or
            ``"auto"`` (same-class where every sample name carries a class).
        out: folder for ``report.md`` and the overlays (None: no report).
        overlays: best and worst first clicks drawn per method when ``out`` is given.
        progress: show a progress bar per dataset.

    Returns:
        the JSON payload: ``summary`` and ``by_dataset`` figures per method, ``per_image``
        records and the run's ``config``.

    Raises:
        ValueError: an unknown method, bad options, or unusable dataset folders.
    """
    if reference_pool not in REFERENCE_POOLS:
        raise ValueError(
            f"reference pool must be one of {', '.join(REFERENCE_POOLS)}, got {reference_pool!r}"
        )
    chosen = click_methods(methods)
    if first_click == "box" and (framed := [m.name for m in chosen if m.intent is not None]):
        raise ValueError(
            f"--first-click box starts objects with a box, which SmartSAM does not take: "
            f"drop {', '.join(framed)} (the plain SAM methods take a box)"
        )
    runners = click_runners(engine, chosen, click_options(options or {}, chosen))
    data = sample_datasets(folders, limit)
    config = {
        "benchmark": "click",
        "datasets": {n: len(s) for n, s in data},
        "methods": list(methods),
        "seed": seed,
        "max_clicks": max_clicks,
        "references": references,
        "reference_pool": {n: pool_mode(reference_pool, samples) for n, samples in data},
        "first_click": first_click,
        "options": recorded(options or {}),
        "model": engine.model_id,
        "protocol": PROTOCOL,
    }
    keep = overlays if out else 0
    per_image: list[dict[str, Any]] = []
    extremes = {r.name: Extremes(keep) for r in runners}
    wants = any(r.method.uses_references for r in runners)
    for name, samples in data:
        pool = config["reference_pool"][name]
        project = project_samples(name, samples, pool, references, wants, f"click {name}", progress)
        for sample, image, gt, ignore, pooled in project:
            engine.embed(image)
            s = sample_seed(seed, sample.name)
            for runner in runners:
                refs = pooled if runner.method.uses_references else []
                start = partial(runner.start, image, references=refs, seed=s)
                start()  # untimed: fills the engine's and the intent's caches
                rng = np.random.default_rng(s) if first_click == "random" else None
                clicker = Clicker(gt, ignore, first_click, rng)
                run = simulate(
                    start,
                    gt,
                    ignore,
                    max_clicks=max_clicks,
                    keep_masks=keep > 0,
                    clicker=clicker,
                    between=partial(_encode_next_crop, engine, image),
                )
                per_image.append(
                    {
                        "dataset": name,
                        "image": sample.name,
                        "method": runner.name,
                        "references": len(refs),
                        "ious": run.ious,
                        "clicks": [_interaction(c) for c in run.clicks],
                        "oracle_iou": run.oracle_iou,
                        "sec_per_click": run.seconds,
                        "corrections": run.corrections,
                    }
                )
                ext = extremes[runner.name]
                if ext.wants(run.ious[0]):
                    title = f"{name}/{sample.name} click 1"
                    ext.add(run.ious[0], _first_case(title, image, gt, run))
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
    _add_losses(per_image, summary, by_dataset)
    result = {
        "summary": summary,
        "by_dataset": by_dataset,
        "per_image": per_image,
        "config": config,
    }
    if out:
        _write_click_report(Path(out), result, extremes)
    return result


def _encode_next_crop(engine: SamEngine, image: np.ndarray, session: ClickSession) -> None:
    """Encode the crop ``session``'s next click will start zooming on (if any), as the
    backend does between clicks (:meth:`~promptmoe_plugin.clicks.SamClickSession.next_crop`)."""
    box = session.next_crop()
    if box is not None:
        engine.embed(crop_image(image, box))


#: Where the references of a project simulation come from (see :func:`run_click_bench`).
REFERENCE_POOLS = ("auto", "earlier", "same-class")
#: A method's click 1 loses on an image when its IoU is this far below plain SAM's.
LOSS = 0.30


def _interaction(c: Click | Frame) -> list[int]:
    """A click as ``[x, y, 1|0]``, a box as ``[x0, y0, x1, y1]`` (the JSON record)."""
    if isinstance(c, Frame):
        return [c.x0, c.y0, c.x1, c.y1]
    return [c.x, c.y, int(c.positive)]


def _first_case(title: str, image: np.ndarray, gt: np.ndarray, run: ClickRun) -> Case:
    """The drawable first interaction of ``run`` (a click, or the box it started with)."""
    c = run.clicks[0]
    if isinstance(c, Frame):
        return Case(title, image, gt, run.masks[0], box=np.array([c.x0, c.y0, c.x1, c.y1]))
    points, labels = np.array([[c.x, c.y]]), np.array([int(c.positive)])
    return Case(title, image, gt, run.masks[0], points=points, labels=labels)


def pool_mode(choice: str, samples: Sequence[Sample]) -> str:
    """The reference pool used for a dataset: ``auto`` becomes ``same-class`` when every
    sample name carries a class (:func:`.datasets.instance_class`), else ``earlier``."""
    if choice != "auto":
        if choice == "same-class" and any(instance_class(s.name) is None for s in samples):
            raise ValueError("same-class references need sample names <class><NN>_<photo id>")
        return choice
    return "same-class" if all(instance_class(s.name) for s in samples) else "earlier"


def project_samples(
    name: str,
    samples: Sequence[Sample],
    mode: str,
    limit: int,
    wants: bool = True,
    desc: str = "",
    progress: bool = True,
) -> Iterator[tuple[Sample, np.ndarray, np.ndarray, np.ndarray, list[Reference]]]:
    """Each sample of dataset ``name`` with a non-empty ground truth, loaded (image, gt,
    ignore), with the references a Label Studio project would have for it: up to
    ``limit`` earlier images' ground truth (``mode`` ``earlier``) or other instances of
    its class (``same-class``, :func:`same_class_references`; only when ``wants``)."""
    earlier: deque[Reference] = deque(maxlen=limit)
    for sample in tqdm(samples, desc=desc, unit="img", disable=not progress):
        image, gt, ignore = sample.load()
        if not (gt & ~ignore).any():
            log.warning("%s/%s: empty ground truth, skipped", name, sample.name)
            continue
        if mode == "earlier":
            refs = list(earlier)
            earlier.append((image, gt))
        else:
            refs = same_class_references(samples, sample, limit) if wants else []
        yield sample, image, gt, ignore, refs


def same_class_references(samples: Sequence[Sample], sample: Sample, limit: int) -> list[Reference]:
    """Up to ``limit`` other instances of ``sample``'s class from other photos, the ones
    before it in name order first, then from the end (every image gets as many as its class
    allows); each ``(image (H, W, 3) uint8, gt (H, W) bool)``."""
    label, photo = instance_class(sample.name)
    i = samples.index(sample)
    refs: list[Reference] = []
    for other in [*samples[:i][::-1], *samples[i + 1 :][::-1]]:
        if len(refs) == limit:
            break
        other_label, other_photo = instance_class(other.name)
        if other_label == label and other_photo != photo:
            image, gt, _ = other.load()
            if gt.any():
                refs.append((image, gt))
    return refs


def _add_losses(
    per_image: list[dict[str, Any]],
    summary: dict[str, dict[str, Any]],
    by_dataset: dict[str, dict[str, dict[str, Any]]],
) -> None:
    """``losses``: images where a method's click-1 IoU is :data:`LOSS` or more below plain
    SAM's (None when ``sam`` is not in the run)."""
    sam = {(r["dataset"], r["image"]): r["ious"][0] for r in per_image if r["method"] == "sam"}
    for method in summary:
        lost = [
            r["dataset"]
            for r in per_image
            if r["method"] == method and sam and r["ious"][0] < sam[r["dataset"], r["image"]] - LOSS
        ]
        summary[method]["losses"] = len(lost) if sam else None
        for name, figures in by_dataset.items():
            figures[method]["losses"] = lost.count(name) if sam else None


def _click_summary(records: list[dict[str, Any]], max_clicks: int) -> dict[str, Any]:
    """Click figures of one method's records (:func:`.clicker.summarize_runs`), the oracle
    IoU at click 1 (%), the seconds of click 1 (mean and median) and of a later click
    (mean over all later clicks; None when there were none)."""
    if not records:
        return {"images": 0}
    out: dict[str, Any] = summarize_runs([r["ious"] for r in records], max_clicks)
    oracle = [r["oracle_iou"] for r in records if r["oracle_iou"] is not None]
    out["oracle@1"] = 100 * float(np.mean(oracle)) if oracle else None
    out["sec_per_click1"] = float(np.mean([r["sec_per_click"][0] for r in records]))
    out["sec_per_click1_median"] = float(np.median([r["sec_per_click"][0] for r in records]))
    later = [t for r in records for t in r["sec_per_click"][1:]]
    out["sec_per_later_click"] = float(np.mean(later)) if later else None
    return out


def _write_click_report(out: Path, result: dict[str, Any], extremes: dict[str, Extremes]) -> None:
    lines = write_overlays(out, extremes, "IoU@1")
    plots = []
    for name, methods in result["by_dataset"].items():
        curves = {m: f["miou_curve"] for m, f in methods.items() if f.get("images")}
        path = plot_curves(out / f"miou_curve_{name}.png", curves, f"{name}: mIoU (%) per click")
        plots.append(f"![]({path.name})")
    results = (
        "miou@k, oracle@1 (best candidate of click 1) and ratio@85 in %; noc in clicks; "
        "nof@90 in images; drops: clicks after which the IoU fell more than 10 points; "
        "losses: images whose click-1 IoU is 30+ points below plain SAM's; "
        "seconds exclude the image encoder.\n\n" + click_tables(result, markdown=True)
    )
    write_report(
        out,
        "Click benchmark",
        [
            ("Configuration", "```\n" + config_text(result["config"]) + "\n```"),
            ("Results", results),
            ("mIoU after each click", "\n\n".join(plots)),
            ("Best and worst cases (IoU after click 1)", LEGEND + "\n\n" + "\n".join(lines)),
        ],
    )
