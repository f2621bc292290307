"""``promptmoe bench click`` and ``promptmoe bench refine``: run methods over datasets.

Both commands process each dataset's images in a fixed order (sorted by name), write
``--json`` with ``summary``, ``per_image`` and ``config``, and with ``--out DIR`` a
``report.md`` plus overlay PNGs of the best and worst cases of every method.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from tqdm import tqdm

from ..cli import add_engine_options, make_engine, write_json
from .clicker import MAX_CLICKS, MIOU_AT, THRESHOLDS, simulate, summarize_runs
from .coarse import KINDS, make_coarse, sample_seed
from .datasets import Sample, dataset_name, load_dataset
from .methods import UNREFINED, click_methods, refine_methods
from .metrics import boundary_iou, iou
from .report import LEGEND, Case, Extremes, table, write_overlays, write_report

if TYPE_CHECKING:
    from ..sam import SamEngine

log = logging.getLogger(__name__)

#: Initial-IoU bands (percent) for stratified refinement figures (PromptMoE Table 12).
BANDS = ((0, 20), (20, 40), (40, 60), (60, 80), (80, 100))
CLICK_COLUMNS = ("method", "images", "miou@1", "oracle@1", "ratio@85", "noc@85", "noc@90", "nof@90", "miou@5", "sec_per_click1")


def _datasets(folders: Sequence[str], limit: int | None) -> list[tuple[str, list[Sample]]]:
    out = []
    names = [dataset_name(f) for f in folders]
    if len(set(names)) != len(names):
        raise ValueError(f"datasets must have distinct folder names, got {names}")
    for name, folder in zip(names, folders):
        samples = load_dataset(folder)
        out.append((name, samples[:limit] if limit else samples))
    return out


def _options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``[METHOD:]KEY=VALUE`` strings as keyword options per method (``"*"``: every method).

    Values that parse as int, float, true/false or none are converted.
    """
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, _, assignment = pair.rpartition(":") if ":" in pair.partition("=")[0] else ("", "", pair)
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects [METHOD:]KEY=VALUE, got {pair!r}")
        parsed: Any = value
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                continue
        if value.lower() in ("true", "false"):
            parsed = value.lower() == "true"
        elif value.lower() == "none":
            parsed = None
        out.setdefault(target or "*", {})[key] = parsed
    return out


def _method_options(options: dict[str, dict[str, Any]] | None, method: str) -> dict[str, Any]:
    options = options or {}
    return {**options.get("*", {}), **options.get(method, {})}


# ---------------------------------------------------------------------- clicks
def run_click_bench(
    engine: SamEngine,
    folders: Sequence[str],
    method_names: Sequence[str],
    *,
    limit: int | None = None,
    seed: int = 0,
    max_clicks: int = MAX_CLICKS,
    references: int = 5,
    options: dict[str, dict[str, Any]] | None = None,
    overlays: int = 0,
) -> tuple[dict[str, Any], dict[str, Extremes]]:
    """Simulate click sessions of every method on every image.

    Methods that use references get the ground-truth masks of up to ``references`` earlier
    images of the same dataset (project simulation), never the image's own.  The
    embedding and the references' features are computed before the first click's timer
    starts (one untimed session start per method and image), as the backend has them
    cached when an annotator clicks (features are computed when an annotation is
    submitted), so ``sec_per_click1`` is session creation plus the first click.

    Returns:
        the JSON payload and, per method, the extreme cases by IoU after click 1.
    """
    methods = click_methods(method_names)
    data = _datasets(folders, limit)
    config = {
        "benchmark": "click",
        "datasets": {n: len(s) for n, s in data},
        "methods": list(method_names),
        "seed": seed,
        "max_clicks": max_clicks,
        "references": references,
        "options": options or {},
        "model": engine.model_id,
        "protocol": "first click at the deepest GT pixel, then the deepest pixel of the larger error; "
        "ignore band excluded; previous logits fed back; no pixel clicked twice; "
        f"stop at IoU >= {max(THRESHOLDS)} after {max(MIOU_AT)} clicks; "
        "sec_per_click1 timed with the embedding and reference features cached",
    }
    per_image: list[dict[str, Any]] = []
    extremes = {m.name: Extremes(overlays) for m in methods}
    for name, samples in data:
        earlier: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=references)
        for sample in tqdm(samples, desc=f"click {name}", unit="img"):
            image, gt, ignore = sample.load()
            if not (gt & ~ignore).any():
                log.warning("%s/%s: empty ground truth, skipped", name, sample.name)
                continue
            engine.embed(image)
            for method in methods:
                refs = list(earlier) if method.uses_references else []
                start = lambda m=method, r=refs: m.start(  # noqa: E731
                    engine, image, references=r, seed=sample_seed(seed, sample.name), options=_method_options(options, m.name)
                )
                start()  # untimed: fills the engine's and the selector's caches
                run = simulate(start, gt, ignore, max_clicks=max_clicks, keep_masks=overlays > 0)
                per_image.append(
                    {
                        "dataset": name,
                        "image": sample.name,
                        "method": method.name,
                        "references": len(refs),
                        "ious": run.ious,
                        "clicks": [[c.x, c.y, int(c.positive)] for c in run.clicks],
                        "oracle_iou": run.oracle_iou,
                        "sec_per_click": run.seconds,
                    }
                )
                ext = extremes[method.name]
                if ext.wants(run.ious[0]):
                    c = run.clicks[0]
                    ext.add(
                        run.ious[0],
                        Case(f"{name}/{sample.name} click 1", image, gt, run.masks[0], None, np.array([[c.x, c.y]]), np.array([int(c.positive)])),
                    )
            earlier.append((image, gt))
    summary, by_dataset = {}, {}
    for name, _ in data:
        by_dataset[name] = {m.name: _click_summary([r for r in per_image if r["dataset"] == name and r["method"] == m.name], max_clicks) for m in methods}
    for m in methods:
        summary[m.name] = _click_summary([r for r in per_image if r["method"] == m.name], max_clicks)
    return {"summary": summary, "by_dataset": by_dataset, "per_image": per_image, "config": config}, extremes


def _click_summary(records: list[dict[str, Any]], max_clicks: int) -> dict[str, float]:
    if not records:
        return {"images": 0}
    out = summarize_runs([r["ious"] for r in records], max_clicks)
    oracle = [r["oracle_iou"] for r in records if r["oracle_iou"] is not None]
    out["oracle@1"] = 100 * float(np.mean(oracle)) if oracle else None
    out["sec_per_click1"] = float(np.mean([r["sec_per_click"][0] for r in records]))
    out["sec_per_click1_median"] = float(np.median([r["sec_per_click"][0] for r in records]))
    return out


def click_tables(result: dict[str, Any], markdown: bool = False) -> str:
    parts = []
    for name, methods in result["by_dataset"].items():
        rows = [{"method": m, **fig} for m, fig in methods.items()]
        parts.append(f"{name}:\n" if not markdown else f"### {name}\n")
        parts.append(table(rows, CLICK_COLUMNS, markdown) + "\n")
    return "\n".join(parts)


def _run_click(args: argparse.Namespace) -> int:
    result, extremes = run_click_bench(
        make_engine(args),
        args.data,
        _names(args.methods),
        limit=args.limit,
        seed=args.seed,
        max_clicks=args.max_clicks,
        references=args.references,
        options=_options(args.option),
        overlays=args.overlays if args.out else 0,
    )
    text = click_tables(result)
    print(text)
    write_json(args.json, result)
    if args.out:
        out = Path(args.out)
        lines = write_overlays(out, extremes, "IoU@1")
        write_report(
            out,
            "Click benchmark",
            [
                ("Configuration", "```\n" + _config_text(result["config"]) + "\n```"),
                ("Results", "miou@k, oracle@1 (best candidate of click 1) and ratio@85 in %; noc in clicks; "
                 "nof@90 in images; seconds exclude the image encoder.\n\n" + click_tables(result, markdown=True)),
                ("Best and worst cases (IoU after click 1)", LEGEND + "\n\n" + "\n".join(lines)),
            ],
        )
    return 0


# ---------------------------------------------------------------------- refinement
class EncoderClock:
    """Encoder seconds per image, from real encodes on an engine without caches.

    SAM encodes a fixed 1024x1024 padded input, so its time does not depend on the image:
    with ``images`` set, only the first ``images`` images of a run are encoded and the rest
    get the median of those (saves an encode per image on a busy machine); ``images=None``
    encodes every image; ``images=0`` disables timing (0 s).
    """

    def __init__(self, engine: SamEngine, images: int | None = None):
        self.timer = type(engine)(engine.sam, cache_mb=0) if images != 0 else None
        self.images = images
        self.measured: list[float] = []

    def seconds(self, image: np.ndarray) -> float:
        """Encoder time for ``image`` ``(H, W, 3) uint8``: measured or the median so far."""
        if self.timer is None:
            return 0.0
        if self.images is None or len(self.measured) < self.images:
            self.measured.append(self.timer.embed(image).encode_seconds)
            return self.measured[-1]
        return float(np.median(self.measured))


def run_refine_bench(
    engine: SamEngine,
    folders: Sequence[str],
    method_names: Sequence[str],
    *,
    coarse: Sequence[str] = KINDS,
    baseline: str = "samrefiner",
    limit: int | None = None,
    seed: int = 0,
    options: dict[str, dict[str, Any]] | None = None,
    encoder_images: int | None = None,
    bootstrap: int = 2000,
    overlays: int = 0,
) -> tuple[dict[str, Any], dict[str, Extremes]]:
    """Refine generated coarse masks with every method on every image.

    ``sec_per_annotation`` = the image's encoder time + the method's wall time (``unrefined``
    uses no encoder).  The encoder time is measured by a real encode of the image, once, on
    an engine that shares the model but has no cache (the benchmark itself uses the cached
    embedding, so every method sees identical features); see :class:`EncoderClock` for
    ``encoder_images``.

    Returns:
        the JSON payload and, per method, the extreme cases by IoU gain.
    """
    for kind in coarse:
        if kind not in KINDS:
            raise ValueError(f"unknown coarse kind {kind!r}: use one of {', '.join(KINDS)}")
    names = list(dict.fromkeys([*method_names, baseline]))
    methods = refine_methods(names)
    data = _datasets(folders, limit)
    clock = EncoderClock(engine, encoder_images)
    config = {
        "benchmark": "refine",
        "datasets": {n: len(s) for n, s in data},
        "methods": names,
        "coarse": list(coarse),
        "baseline": baseline,
        "seed": seed,
        "options": options or {},
        "model": engine.model_id,
        "encoder_timed_images": "all" if encoder_images is None else encoder_images,
        "bootstrap": bootstrap,
    }
    per_image: list[dict[str, Any]] = []
    extremes = {m.name: Extremes(overlays) for m in methods}
    for name, samples in data:
        for sample in tqdm(samples, desc=f"refine {name}", unit="img"):
            image, gt, ignore = sample.load()
            if not (gt & ~ignore).any():
                log.warning("%s/%s: empty ground truth, skipped", name, sample.name)
                continue
            encode = clock.seconds(image)
            engine.embed(image)
            s = sample_seed(seed, sample.name)
            for kind in coarse:
                initial = make_coarse(gt, image, kind, s)
                before = (iou(initial, gt, ignore), boundary_iou(initial, gt, ignore), boundary_iou(initial, gt, ignore, kind="cheng"))
                for method in methods:
                    t0 = time.perf_counter()
                    out = method.run(engine, image, initial, seed=s, options=_method_options(options, method.name))
                    seconds = time.perf_counter() - t0
                    after = (iou(out.mask, gt, ignore), boundary_iou(out.mask, gt, ignore), boundary_iou(out.mask, gt, ignore, kind="cheng"))
                    record = {
                        "dataset": name,
                        "image": sample.name,
                        "coarse": kind,
                        "method": method.name,
                        "iou_before": before[0],
                        "iou": after[0],
                        "biou_before": before[1],
                        "biou": after[1],
                        "biou_cheng_before": before[2],
                        "biou_cheng": after[2],
                        "seconds": seconds,
                        "encode_seconds": 0.0 if method.name == UNREFINED else encode,
                        "timings": out.timings,
                        "source": out.source,
                    }
                    per_image.append(record)
                    gain = after[0] - before[0]
                    ext = extremes[method.name]
                    if ext.wants(gain):
                        title = f"{name}/{sample.name} {kind} IoU {100 * before[0]:.1f} to {100 * after[0]:.1f}"
                        ext.add(gain, Case(title, image, gt, out.mask, initial, out.points, out.labels, out.box))
    summary = summarize_refine(per_image, names, baseline, bootstrap=bootstrap, seed=seed)
    return {**summary, "per_image": per_image, "config": config}, extremes


def _groups(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["dataset"], r["coarse"]) for r in records))


def _gain_matrix(records: list[dict[str, Any]], method: str, key: str) -> dict[str, np.ndarray]:
    """Per dataset: ``(images, coarse kinds)`` array of ``key`` minus ``key_before`` (pp)."""
    out: dict[str, dict[tuple[str, str], float]] = {}
    for r in records:
        if r["method"] == method:
            out.setdefault(r["dataset"], {})[(r["image"], r["coarse"])] = 100 * (r[key] - r[f"{key}_before"])
    mats = {}
    for dataset, values in out.items():
        images = list(dict.fromkeys(i for i, _ in values))
        kinds = list(dict.fromkeys(k for _, k in values))
        mats[dataset] = np.array([[values[(i, k)] for k in kinds] for i in images], np.float64)
    return mats


def _group_mean(mats: dict[str, np.ndarray]) -> float:
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


def summarize_refine(
    records: list[dict[str, Any]], methods: Sequence[str], baseline: str, *, bootstrap: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Refinement figures: ``summary`` per method, ``by_group`` per (dataset, coarse),
    ``bands`` by initial IoU band, ``unrefined`` IoU distribution per coarse kind, and
    ``timings`` (mean seconds per stage).  IoU figures in percentage points."""
    summary: dict[str, dict[str, Any]] = {}
    base_iou = _gain_matrix(records, baseline, "iou")
    base_biou = _gain_matrix(records, baseline, "biou")
    base_sec = float(np.mean([r["seconds"] + r["encode_seconds"] for r in records if r["method"] == baseline]))
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        if not rows:
            continue
        g_iou, g_biou = _gain_matrix(records, method, "iou"), _gain_matrix(records, method, "biou")
        g_cheng = _gain_matrix(records, method, "biou_cheng")
        sec = np.array([r["seconds"] + r["encode_seconds"] for r in rows])
        fig: dict[str, Any] = {
            "annotations": len(rows),
            "delta_iou": _group_mean(g_iou),
            "delta_biou": _group_mean(g_biou),
            "delta_biou_cheng": _group_mean(g_cheng),
            "iou": 100 * float(np.mean([r["iou"] for r in rows])),
            "sec_per_annotation": float(sec.mean()),
            "sec_per_annotation_median": float(np.median(sec)),
            "time_vs_baseline": float(sec.mean() / base_sec) if base_sec > 0 else None,
        }
        for key, mine, base in (("iou", g_iou, base_iou), ("biou", g_biou, base_biou)):
            diff = {d: mine[d] - base[d] for d in mine}
            fig[f"diff_{key}_vs_{baseline}"] = _group_mean(diff)
            if method != baseline and bootstrap > 0:
                fig[f"ci95_{key}_vs_{baseline}"] = list(bootstrap_ci(diff, bootstrap, seed))
        summary[method] = fig
    by_group = {
        f"{d}/{k}": {
            m: 100 * float(np.mean([r["iou"] - r["iou_before"] for r in records if r["method"] == m and (r["dataset"], r["coarse"]) == (d, k)]))
            for m in summary
        }
        for d, k in _groups(records)
    }
    bands: dict[str, dict[str, Any]] = {}
    for lo, hi in BANDS:
        label = f"{lo}-{hi}"
        bands[label] = {}
        for m in summary:
            gains = [100 * (r["iou"] - r["iou_before"]) for r in records if r["method"] == m and _in_band(r["iou_before"], lo, hi)]
            bands[label][m] = {"n": len(gains), "delta_iou": float(np.mean(gains)) if gains else None}
    first = methods[0]
    unrefined = {}
    for kind in dict.fromkeys(r["coarse"] for r in records):
        values = 100 * np.array([r["iou_before"] for r in records if r["coarse"] == kind and r["method"] == first])
        q = np.percentile(values, [10, 25, 50, 75, 90])
        unrefined[kind] = {
            "n": len(values),
            "mean": float(values.mean()),
            **{f"p{p}": float(v) for p, v in zip((10, 25, 50, 75, 90), q)},
            **{f"{lo}-{hi}": int(sum(_in_band(v / 100, lo, hi) for v in values)) for lo, hi in BANDS},
        }
    timings: dict[str, dict[str, float]] = {}
    for m in summary:
        rows = [r for r in records if r["method"] == m]
        stages = dict.fromkeys(s for r in rows for s in r["timings"])
        timings[m] = {"image_encoder": float(np.mean([r["encode_seconds"] for r in rows]))}
        timings[m].update({s: float(np.mean([r["timings"].get(s, 0.0) for r in rows])) for s in stages})
        timings[m]["total_method"] = float(np.mean([r["seconds"] for r in rows]))
    return {"summary": summary, "by_group": by_group, "bands": bands, "unrefined": unrefined, "timings": timings}


def _in_band(value: float, lo: int, hi: int) -> bool:
    v = 100 * value
    return lo <= v < hi or (hi == 100 and v == 100)


def refine_tables(result: dict[str, Any], markdown: bool = False) -> str:
    baseline = result["config"]["baseline"]
    rows = []
    for m, fig in result["summary"].items():
        ci = fig.get(f"ci95_iou_vs_{baseline}")
        ci_b = fig.get(f"ci95_biou_vs_{baseline}")
        rows.append(
            {
                "method": m,
                **fig,
                f"vs {baseline} iou [95% CI]": f"{fig[f'diff_iou_vs_{baseline}']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-",
                "biou [95% CI]": f"{fig[f'diff_biou_vs_{baseline}']:+.2f} [{ci_b[0]:+.2f}, {ci_b[1]:+.2f}]" if ci_b else "-",
            }
        )
    cols = ("method", "delta_iou", "delta_biou", "delta_biou_cheng", "iou", f"vs {baseline} iou [95% CI]", "biou [95% CI]", "sec_per_annotation", "time_vs_baseline")
    out = ["Summary (pp; mean over dataset x coarse groups):", table(rows, cols, markdown), ""]
    methods = list(result["summary"])
    out += ["Delta IoU per dataset/coarse (pp):", table([{"group": g, **v} for g, v in result["by_group"].items()], ["group", *methods], markdown), ""]
    band_rows = [{"initial IoU": b, **{m: v[m]["delta_iou"] for m in methods}, "n": v[methods[0]]["n"]} for b, v in result["bands"].items()]
    out += ["Delta IoU by initial IoU band (pp):", table(band_rows, ["initial IoU", *methods, "n"], markdown), ""]
    kinds = result["unrefined"]
    cols_u = ["coarse", "n", "mean", "p10", "p25", "p50", "p75", "p90", *(f"{lo}-{hi}" for lo, hi in BANDS)]
    out += ["Unrefined IoU distribution (%, and images per band):", table([{"coarse": k, **v} for k, v in kinds.items()], cols_u, markdown), ""]
    stages = list(dict.fromkeys(s for t in result["timings"].values() for s in t))
    out += ["Mean seconds per stage:", table([{"method": m, **t} for m, t in result["timings"].items()], ["method", *stages], markdown)]
    return "\n".join(out)


def _run_refine(args: argparse.Namespace) -> int:
    result, extremes = run_refine_bench(
        make_engine(args),
        args.data,
        _names(args.methods),
        coarse=_names(args.coarse),
        baseline=args.baseline,
        limit=args.limit,
        seed=args.seed,
        options=_options(args.option),
        encoder_images=args.encoder_images,
        bootstrap=args.bootstrap,
        overlays=args.overlays if args.out else 0,
    )
    print(refine_tables(result))
    write_json(args.json, result)
    if args.out:
        out = Path(args.out)
        lines = write_overlays(out, extremes, "IoU gain")
        write_report(
            out,
            "Refinement benchmark",
            [
                ("Configuration", "```\n" + _config_text(result["config"]) + "\n```"),
                ("Results", refine_tables(result, markdown=True)),
                ("Best and worst cases (IoU gain)", LEGEND + "\n\n" + "\n".join(lines)),
            ],
        )
    return 0


# ---------------------------------------------------------------------- CLI
def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("expected a comma-separated list of names")
    return names


def _config_text(config: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in config.items())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="dataset folder (img/+gt/ or data_GT/+boundary_GT/); repeat for several")
    p.add_argument("--limit", type=int, help="first N images of each dataset")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="keyword option for every method, or for one with METHOD:KEY=VALUE (e.g. smartsam-ref:selector=dinov2)")
    p.add_argument("--json", help="write summary, per-image figures and config to this JSON file")
    p.add_argument("--out", help="folder for report.md and best/worst overlay PNGs")
    p.add_argument("--overlays", type=int, default=3, help="best and worst cases drawn per method with --out (default 3)")


def add_bench_click(sub, bench) -> None:
    """Register ``promptmoe bench click``."""
    from .methods import CLICK_METHODS

    p = bench.add_parser("click", help="simulated clicks (NoC, mIoU@1) for click methods")
    p.add_argument("--methods", default="sam,sam-single", help=f"comma-separated, from: {', '.join(CLICK_METHODS)} (default sam,sam-single)")
    p.add_argument("--max-clicks", type=int, default=MAX_CLICKS, help=f"click budget (default {MAX_CLICKS})")
    p.add_argument("--references", type=int, default=5, metavar="R", help="reference masks from up to R earlier images for methods that use them (default 5)")
    _common(p)
    add_engine_options(p)
    p.set_defaults(func=_run_click)


def add_bench_refine(sub, bench) -> None:
    """Register ``promptmoe bench refine``."""
    p = bench.add_parser("refine", help="refine generated coarse masks (delta IoU / BIoU, time)")
    p.add_argument("--methods", default="full,lite,samrefiner,unrefined", help="comma-separated refine variants (default full,lite,samrefiner,unrefined)")
    p.add_argument("--coarse", default=",".join(KINDS), help=f"coarse-mask kinds (default {','.join(KINDS)})")
    p.add_argument("--baseline", default="samrefiner", help="method the CI of differences is computed against (default samrefiner)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% CI (default 2000; 0 = off)")
    p.add_argument(
        "--encoder-images",
        type=int,
        metavar="K",
        help="time a real encode on the first K images only and use their median for the rest "
        "(default: every image; 0: no encoder time in sec_per_annotation)",
    )
    _common(p)
    add_engine_options(p)
    p.set_defaults(func=_run_refine)


def add_bench(sub, bench) -> None:
    """Register both evaluation benchmarks (listed in ``cli.commands()``)."""
    add_bench_click(sub, bench)
    add_bench_refine(sub, bench)
