"""Refinement benchmark: figures, bootstrap CI, bands, and an end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import data_dir
from promptmoe_plugin.eval.methods import UNREFINED, RefineMethod, RefineOptions, refine_runners
from promptmoe_plugin.eval.refine_bench import EncoderClock, run_refine_bench
from promptmoe_plugin.eval.report import refine_tables
from promptmoe_plugin.eval.stages import NON_SAM_STAGES, format_stage_table, stage_timings
from promptmoe_plugin.eval.stats import bootstrap_ci, group_mean, summarize_refine
from promptmoe_plugin.refine import RefineConfig


def record(dataset, image, coarse, method, before, after, seconds=1.0):
    return {
        "dataset": dataset,
        "image": image,
        "coarse": coarse,
        "method": method,
        "iou_before": before,
        "iou": after,
        "biou_before": before / 2,
        "biou": after / 2,
        "biou_cheng_before": before,
        "biou_cheng": after,
        "seconds": seconds,
        "encode_seconds": 0.5 if method != UNREFINED else 0.0,
        "timings": {"decode": seconds / 2} if method != UNREFINED else {},
    }


def test_summary_is_mean_over_groups_with_bands_and_timings():
    recs = []
    # Dataset A: 2 images x 1 coarse kind; dataset B: 1 image.  "m" gains 10 pp on A and
    # 40 pp on B: the group mean is (10 + 40) / 2 = 25, not the pooled mean 20.
    for img, before in (("a1", 0.5), ("a2", 0.7)):
        recs += [
            record("A", img, "morph", "m", before, before + 0.1, 2.0),
            record("A", img, "morph", "base", before, before),
        ]
    recs += [
        record("B", "b1", "morph", "m", 0.1, 0.5, 2.0),
        record("B", "b1", "morph", "base", 0.1, 0.2),
    ]
    s = summarize_refine(recs, ["m", "base"], "base", bootstrap=200, seed=0)
    m = s["summary"]["m"]
    assert m["delta_iou"] == pytest.approx(25.0) and m["delta_biou"] == pytest.approx(12.5)
    assert m["diff_iou_vs_base"] == pytest.approx((10 + 30) / 2)
    assert m["sec_per_annotation"] == pytest.approx(2.5) and m["time_vs_baseline"] == pytest.approx(
        2.5 / 1.5
    )
    # Dataset A's differences are constant (10 pp), B has one image: the CI collapses.
    assert m["ci95_iou_vs_base"] == pytest.approx([20.0, 20.0])
    assert "ci95_iou_vs_base" not in s["summary"]["base"]
    assert s["bands"]["0-20"]["m"] == {"n": 1, "delta_iou": pytest.approx(40.0)}
    assert s["bands"]["40-60"]["m"]["n"] == 1 and s["bands"]["80-100"]["m"]["delta_iou"] is None
    assert s["unrefined"]["morph"]["n"] == 3 and s["unrefined"]["morph"]["mean"] == pytest.approx(
        100 * 1.3 / 3
    )
    assert s["timings"]["m"] == {"image_encoder": 0.5, "decode": 1.0, "total_method": 2.0}


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    diffs = {"A": rng.normal(1.0, 1.0, (200, 3)), "B": rng.normal(3.0, 1.0, (100, 2))}
    lo, hi = bootstrap_ci(diffs, 1000, seed=0)
    mean = group_mean(diffs)  # mean over the 5 (dataset, kind) groups
    assert mean == pytest.approx((1.0 * 3 + 3.0 * 2) / 5, abs=0.2)
    assert lo < mean < hi and hi - lo < 0.6
    assert (lo, hi) == bootstrap_ci(diffs, 1000, seed=0)


def test_one_router_per_run_for_the_routed_variants(engine):
    methods = [RefineMethod(n) for n in ("full", "lite", "dense", "samrefiner", UNREFINED)]
    runners = refine_runners(engine, methods, {})
    routers = [r.router for r in runners]
    assert routers[0] is not None and routers[0] is routers[1]
    assert routers[2:] == [None, None, None] and all(r.depth is None for r in runners)
    fixed = {"full": RefineOptions(RefineConfig(experts=("edge", "color")))}
    assert refine_runners(engine, methods[:1], fixed)[0].router is None


def test_refine_bench_end_to_end(engine, tmp_path):
    folder = str(data_dir("GrabCut"))
    kwargs = dict(baseline=UNREFINED, limit=1, bootstrap=100, progress=False)
    result = run_refine_bench(
        engine, [folder], ["sam-box"], ["lowres", "morph"], out=tmp_path, overlays=1, **kwargs
    )
    recs = result["per_image"]
    assert len(recs) == 4 and {r["method"] for r in recs} == {"sam-box", UNREFINED}
    un = [r for r in recs if r["method"] == UNREFINED]
    assert all(r["iou"] == r["iou_before"] and r["encode_seconds"] == 0 for r in un)
    box = [r for r in recs if r["method"] == "sam-box"]
    assert all(r["encode_seconds"] > 0 and 0 <= r["iou"] <= 1 and r["source"] == "box" for r in box)
    assert all(r["source"] == "coarse" for r in un)
    assert result["summary"][UNREFINED]["delta_iou"] == 0.0
    assert set(result["by_group"]) == {"GrabCut/lowres", "GrabCut/morph"}
    assert result["config"]["coarse"] == ["lowres", "morph"] and result["config"]["options"] == {}
    assert len(list((tmp_path / "overlays").glob("sam-box_best1_*.png"))) == 1
    assert "Mean seconds per stage" in (tmp_path / "report.md").read_text()
    assert "vs unrefined iou [95% CI]" in refine_tables(result)
    again = run_refine_bench(engine, [folder], ["sam-box"], ["lowres", "morph"], **kwargs)
    assert [r["iou"] for r in again["per_image"]] == [r["iou"] for r in recs]
    with pytest.raises(ValueError, match="unknown coarse kind"):
        run_refine_bench(engine, [folder], ["sam-box"], ["blur"])


def test_a_sample_without_a_coarse_mask_is_skipped_and_counted(engine, tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    rng = np.random.default_rng(0)
    for name, (y0, y1, x0, x1) in {"big": (20, 100, 30, 130), "tiny": (60, 66, 70, 76)}.items():
        image = rng.integers(0, 80, (128, 160, 3), dtype=np.uint8)
        gt = np.zeros((128, 160), np.uint8)
        gt[y0:y1, x0:x1] = 255
        image[gt > 0] = (220, 180, 40)
        Image.fromarray(image).save(tmp_path / "img" / f"{name}.png")
        Image.fromarray(gt).save(tmp_path / "gt" / f"{name}.png")
    result = run_refine_bench(
        engine,
        [str(tmp_path)],
        ["sam-box"],
        ["lowres"],
        baseline=UNREFINED,
        bootstrap=0,
        progress=False,
    )
    assert {r["image"] for r in result["per_image"]} == {"big"}
    assert result["skipped"] == [
        {
            "dataset": tmp_path.name,
            "image": "tiny",
            "coarse": "lowres",
            "reason": "the lowres coarse mask is empty",
        }
    ]
    assert "Skipped 1 samples" in refine_tables(result)


def test_encoder_clock_times_real_encodes(engine, voc):
    engine.embed(voc["rgb"])  # cached in the benchmark engine: the clock still encodes for real
    clock = EncoderClock(engine, images=1)
    first = clock.seconds(voc["rgb"])
    assert first > 0 and clock.seconds(voc["rgb"][::-1].copy()) == first
    assert clock.timer.stats().encodes == 1
    assert EncoderClock(engine, images=0).seconds(voc["rgb"]) == 0.0


def test_stage_table():
    result = {
        "original": {"prepare": 0.5, "decode": 1.0, "non_sam_total": 0.5},
        "x4": {"prepare": 1.0, "decode": 1.0, "non_sam_total": 1.0},
    }
    lines = format_stage_table(result, "lite").splitlines()
    assert lines[0] == "lite: mean seconds per annotation and stage"
    assert lines[1].split() == ["stage", "original", "x4", "ratio"]
    assert lines[2].split() == ["prepare", "0.5000", "1.0000", "2.00"]
    assert [line.split()[0] for line in lines[2:]] == ["prepare", "non_sam_total", "decode"]


def test_stage_timings_at_both_sizes(engine):
    folder = str(data_dir("GrabCut"))
    result = stage_timings(engine, [folder], "sam-box", limit=1, scale=2, progress=False)
    assert list(result) == ["original", "x2"]
    for stages in result.values():
        assert stages["decode"] > 0 and stages["prepare"] >= 0
        assert stages["non_sam_total"] == sum(stages.get(s, 0.0) for s in NON_SAM_STAGES)
    assert "sam-box: mean seconds" in format_stage_table(result, "sam-box")


def test_the_summary_leaves_out_images_with_a_skipped_coarse_kind():
    """An image whose ``lowres`` mask was skipped must not break the summary's pairing of
    kinds per image: its records are left out of the summary only."""
    from promptmoe_plugin.eval.refine_bench import _complete

    records = [
        {"dataset": "d", "image": "a", "coarse": "lowres"},
        {"dataset": "d", "image": "a", "coarse": "morph"},
        {"dataset": "d", "image": "b", "coarse": "morph"},
    ]
    assert _complete(records, ("lowres", "morph")) == records[:2]
    assert _complete(records, ("morph",)) == records
