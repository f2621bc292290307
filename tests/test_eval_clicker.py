"""Click simulator and click benchmark: known-answer cases, protocol rules, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import data_dir
from promptmoe_plugin.clicks import SamClickSession
from promptmoe_plugin.corrections import CorrectionConfig
from promptmoe_plugin.sam import Prompt
from promptmoe_plugin.eval import methods
from promptmoe_plugin.eval.click_bench import run_click_bench, same_class_references
from promptmoe_plugin.eval.clicker import (
    Click,
    Clicker,
    Frame,
    drops,
    iou_at,
    noc,
    simulate,
    summarize_runs,
)
from promptmoe_plugin.eval.datasets import instance_class, load_dataset
from promptmoe_plugin.eval.report import click_tables, write_json


def rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_first_click_deepest_pixel_row_major_tie():
    gt = rect((40, 50), 10, 20, 10, 40)  # depth 5 along rows 14-15, cols 14-35
    assert Clicker(gt).next_click(np.zeros_like(gt)) == Click(14, 14, True)


def test_image_border_counts_as_boundary():
    gt = np.ones((11, 11), bool)
    assert Clicker(gt).next_click(np.zeros_like(gt)) == Click(5, 5, True)
    # An object touching the left border: deepest pixel is away from the border too.
    gt = rect((20, 40), 0, 20, 0, 9)
    assert Clicker(gt).next_click(np.zeros_like(gt)) == Click(4, 4, True)


def test_larger_error_decides_sign_and_ties_go_negative():
    gt = rect((60, 60), 10, 50, 10, 50)
    missing = gt & ~rect((60, 60), 10, 50, 10, 30)  # a 40x20 false-negative strip
    click = Clicker(gt).next_click(gt & ~missing)
    assert click.positive and missing[click.y, click.x]
    extra = gt | rect((60, 60), 0, 60, 52, 60)  # an 8-px wide false positive only
    click = Clicker(gt).next_click(extra)
    assert not click.positive and not gt[click.y, click.x]
    # Same-sized errors on both sides: max depths tie -> negative click (fn > fp is strict).
    gt = rect((30, 60), 5, 25, 0, 30)
    pred = rect((30, 60), 5, 25, 30, 60)
    assert not Clicker(gt).next_click(pred).positive
    assert Clicker(gt).next_click(gt) is None


def test_ignore_pixels_are_never_errors_nor_clicked():
    gt = rect((40, 40), 5, 35, 5, 35)
    ignore = rect((40, 40), 0, 40, 0, 20)
    click = Clicker(gt & ~ignore, ignore).next_click(np.zeros_like(gt))
    assert not ignore[click.y, click.x] and click.x >= 20
    # An error inside the ignore band only: nothing left to click.
    assert Clicker(gt & ~ignore, ignore).next_click(gt) is None


def test_a_pixel_is_never_clicked_twice():
    gt = rect((30, 30), 10, 20, 10, 20)
    clicker = Clicker(gt)
    pred = np.zeros_like(gt)
    clicks = [clicker.next_click(pred) for _ in range(5)]
    assert len({(c.x, c.y) for c in clicks}) == 5
    assert all(gt[c.y, c.x] and c.positive for c in clicks)


class PaintSession:
    """A simple non-SAM click method: each click paints (or erases) a disk of radius 4."""

    def __init__(self, shape, radius=4):
        self.mask = np.zeros(shape, bool)
        self.score = 1.0
        self.yy, self.xx = np.mgrid[: shape[0], : shape[1]]
        self.radius = radius

    def click(self, x, y, positive=True):
        disk = (self.yy - y) ** 2 + (self.xx - x) ** 2 <= self.radius**2
        self.mask = self.mask | disk if positive else self.mask & ~disk
        return self.mask


def test_simulate_known_run():
    gt = (np.mgrid[:21, :21] - 10) ** 2
    gt = gt[0] + gt[1] <= 16  # exactly the disk the first click paints
    run = simulate(lambda: PaintSession(gt.shape), gt, max_clicks=20)
    assert run.clicks[0] == Click(10, 10, True) and run.ious == [1.0]
    gt2 = rect((30, 30), 5, 25, 5, 25)
    run = simulate(lambda: PaintSession(gt2.shape), gt2, max_clicks=3, stop_iou=0.99)
    assert len(run.ious) == 3 and run.ious == sorted(run.ious)
    assert run.oracle_iou is None and len(run.seconds) == 3


def test_click_metrics_known_answers():
    curves = [[0.5, 0.86, 0.91], [0.95], [0.1] * 20]
    assert noc(curves[0], 0.85) == 2 and noc(curves[0], 0.90) == 3 and noc(curves[2], 0.85) == 20
    assert iou_at(curves[1], 5) == 0.95
    s = summarize_runs(curves)
    assert s["miou@1"] == pytest.approx(100 * (0.5 + 0.95 + 0.1) / 3)
    assert s["miou@2"] == pytest.approx(100 * (0.86 + 0.95 + 0.1) / 3)
    assert s["noc@85"] == pytest.approx((2 + 1 + 20) / 3) and s["noc@90"] == pytest.approx(
        (3 + 1 + 20) / 3
    )
    assert (
        s["nof@90"] == 1
        and s["ratio@85"] == pytest.approx(100 / 3)
        and s["ratio@75"] == pytest.approx(100 / 3)
    )


def test_sam_session_reproducible_bit_for_bit(engine, voc):
    image, gt = voc["rgb"], voc["masks"][0]
    runs = [
        simulate(lambda: SamClickSession(engine, image), gt, max_clicks=6, keep_masks=True)
        for _ in range(2)
    ]
    assert runs[0].ious == runs[1].ious and runs[0].clicks == runs[1].clicks
    assert all(np.array_equal(a, b) for a, b in zip(runs[0].masks, runs[1].masks, strict=True))
    assert runs[0].oracle_iou >= runs[0].ious[0] > 0.3


def test_simulate_records_how_each_later_click_was_chosen(engine, voc):
    image, gt = voc["rgb"], voc["masks"][15].astype(bool)
    guarded = simulate(
        lambda: SamClickSession(engine, image, corrections=CorrectionConfig()), gt, max_clicks=4
    )
    first, *later = guarded.corrections
    assert first is None and len(later) == len(guarded.ious) - 1 >= 1
    for record in later:
        assert set(record) == {"source", "iou", "previous_iou", "small", "passed", "decodes"}
        assert record["source"].startswith("single") and 0 <= record["iou"] <= 1.2
        assert record["passed"] or record["small"]  # the guard fails only small corrections
    plain = simulate(lambda: SamClickSession(engine, image), gt, max_clicks=4)
    assert plain.corrections == [None] * len(plain.ious)


class RecordingSession(SamClickSession):
    """Plain SAM in SmartSAM's place: records the references, seed and intent it gets."""

    seen: list[tuple[int, list[int], int, object]] = []

    def __init__(self, engine, image, config, *, intent, references=(), seed=0, corrections=None):
        super().__init__(engine, image, corrections=corrections)
        refs = [int(r[1].sum()) for r in references]
        RecordingSession.seen.append((int(image.sum()), refs, seed, intent))


def test_click_bench_project_simulation_and_reproducible(engine, monkeypatch):
    folder = data_dir("GrabCut")
    monkeypatch.setattr(methods, "SmartSamSession", RecordingSession)
    RecordingSession.seen = []
    kwargs = dict(limit=3, references=2, max_clicks=3, progress=False)
    first = run_click_bench(engine, [str(folder)], ["sam", "smartsam-ref"], **kwargs)
    assert len(first["per_image"]) == 6
    # Every session is started twice per image: an untimed warm-up, then the timed run.
    assert RecordingSession.seen[0::2] == RecordingSession.seen[1::2]
    # Each image sees the GT masks of up to 2 earlier images, never its own.
    refs = [seen[1] for seen in RecordingSession.seen[0::2]]
    assert [len(r) for r in refs] == [0, 1, 2]
    areas = [int(s.load()[1].sum()) for s in load_dataset(folder)[:3]]
    assert refs[1] == areas[:1] and refs[2] == areas[:2]
    # One intent for the whole run (its reference features stay cached across images).
    intents = {id(seen[3]) for seen in RecordingSession.seen}
    assert len(intents) == 1
    second = run_click_bench(engine, [str(folder)], ["sam", "smartsam-ref"], **kwargs)
    assert id(RecordingSession.seen[-1][3]) not in intents

    def strip(records):
        return [{k: v for k, v in r.items() if k != "sec_per_click"} for r in records]

    assert strip(first["per_image"]) == strip(second["per_image"])
    sam = [r for r in first["per_image"] if r["method"] == "sam"]
    rec = [r for r in first["per_image"] if r["method"] == "smartsam-ref"]
    # The stand-in's first click is plain SAM's; its later clicks are guarded (the bench
    # sets corrections on every SmartSAM method's session).
    assert [r["ious"][0] for r in sam] == [r["ious"][0] for r in rec]
    assert first["summary"]["sam"]["images"] == 3 and first["config"]["references"] == 2


def test_click_bench_writes_report_and_json(engine, tmp_path):
    import json

    folder = str(data_dir("GrabCut"))
    out, path = tmp_path / "report", tmp_path / "r.json"
    options = {"smartsam-pure": {"n_chains": "2"}}
    result = run_click_bench(
        engine,
        [folder],
        ["sam", "smartsam-pure"],
        limit=1,
        max_clicks=5,
        options=options,
        out=out,
        overlays=1,
        progress=False,
    )
    text = click_tables(result)
    assert "GrabCut" in text and "miou@1" in text and "smartsam-pure" in text
    write_json(path, result)
    saved = json.loads(path.read_text())
    assert set(saved) == {"summary", "by_dataset", "per_image", "config"}
    assert saved["summary"]["sam"]["images"] == 1
    by_method = {r["method"]: r["corrections"] for r in saved["per_image"]}
    clicks = {r["method"]: len(r["ious"]) for r in saved["per_image"]}
    assert by_method["sam"] == [None] * clicks["sam"]
    assert by_method["smartsam-pure"][0] is None and clicks["smartsam-pure"] > 1
    assert all(c["source"].startswith("single") for c in by_method["smartsam-pure"][1:])
    assert saved["config"]["options"] == {"smartsam-pure": {"n_chains": 2}}
    assert "![](overlays/" in (out / "report.md").read_text()
    assert len(list((out / "overlays").glob("*.png"))) == 4  # best and worst of 2 methods
    with pytest.raises(ValueError, match="unknown click method"):
        run_click_bench(engine, [folder], ["nope"])


def test_random_first_click_is_seeded_and_away_from_the_boundary():
    gt = rect((60, 80), 10, 50, 10, 70)
    clicks = [
        Clicker(gt, first="random", rng=np.random.default_rng(s)).next_click(gt & False)
        for s in (3, 3, 4)
    ]
    assert clicks[0] == clicks[1] != clicks[2]
    assert all(c.positive and 15 <= c.y < 45 and 15 <= c.x < 65 for c in clicks)
    thin = rect((60, 80), 10, 14, 10, 70)  # nowhere 5 px deep: the deepest row instead
    click = Clicker(thin, first="random", rng=np.random.default_rng(0)).next_click(thin & False)
    assert click.y in (11, 12)
    with pytest.raises(ValueError, match="random generator"):
        Clicker(gt, first="random")
    with pytest.raises(ValueError, match="first click"):
        Clicker(gt, first="corner")


def test_box_first_interaction_is_the_objects_bounding_box():
    gt = rect((60, 80), 10, 50, 12, 70)
    clicker = Clicker(gt, first="box")
    assert clicker.next_click(gt & False) == Frame(12, 10, 70, 50)
    # Then the protocol: the deepest pixel of the larger error region (15 px deep from
    # row 24 to 35 in column 54: the first in row-major order).
    pred = rect((60, 80), 10, 50, 12, 40)
    assert clicker.next_click(pred) == Click(54, 24, True)


def test_box_started_session_keeps_the_box_in_every_prompt(engine, voc):
    """``frame`` is SAM's single mask for the box; a later click decodes the clicks with
    the box (and, plain SAM, the previous logits; ``sam-fresh``, without them)."""
    image, gt = voc["rgb"], voc["masks"][0]
    ys, xs = np.nonzero(gt)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    emb = engine.embed(image)
    alone = engine.decode(emb, [Prompt(box=box)], multimask=False)
    y, x = ys[len(ys) // 2], xs[len(xs) // 2]
    for feed in (True, False):
        session = SamClickSession(engine, image, feed_logits=feed)
        assert np.array_equal(session.frame(*box), alone.masks[0, 0])
        logits = alone.low_res_logits[0, 0] if feed else None
        want = engine.decode(
            emb,
            [Prompt(np.array([[x, y]]), np.array([0]), box=box, mask_logits=logits)],
            multimask=False,
        )
        assert np.array_equal(session.click(x, y, positive=False), want.masks[0, 0])
        with pytest.raises(ValueError, match="only start an object"):
            session.frame(*box)
    guarded = SamClickSession(engine, image, corrections=CorrectionConfig())
    guarded.frame(*box)
    guarded.click(x, y, positive=False)
    assert np.array_equal(guarded.box, box)


def test_click_bench_box_start_refuses_smartsam(engine):
    with pytest.raises(ValueError, match="drop smartsam-pure"):
        run_click_bench(engine, ["nowhere"], ["sam", "smartsam-pure"], first_click="box")


def test_drops_and_the_per_click_curve():
    assert drops([0.9, 0.7, 0.75, 0.5, 0.45]) == 2  # 0.9->0.7 and 0.75->0.5; 0.5->0.45 is 5 points
    out = summarize_runs([[0.9, 0.7, 0.95], [0.5, 0.6]], max_clicks=4)
    assert out["drops"] == 1
    assert out["miou_curve"] == pytest.approx([70.0, 65.0, 77.5, 77.5])


def test_instance_class_of_coco_style_names():
    assert instance_class("baseball bat03_000000123") == ("baseball bat", "000000123")
    assert instance_class("cup10_42") == ("cup", "42")
    assert instance_class("124080") is None and instance_class("llama") is None


def test_same_class_references_skip_the_same_photo_and_other_classes(engine, tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    areas = {"cup01_1": 100, "cup02_1": 200, "cup03_2": 300, "cup04_3": 400, "dog01_5": 500}
    for name, area in areas.items():
        gt = np.zeros((40, 50), np.uint8)
        gt.reshape(-1)[:area] = 255
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "img" / f"{name}.png")
        Image.fromarray(gt).save(tmp_path / "gt" / f"{name}.png")
    samples = load_dataset(tmp_path)
    by_name = {s.name: s for s in samples}
    refs = same_class_references(samples, by_name["cup02_1"], 5)
    assert [int(g.sum()) for _, g in refs] == [400, 300]  # not cup01_1 (same photo), not the dog
    refs = same_class_references(samples, by_name["cup04_3"], 2)
    assert [int(g.sum()) for _, g in refs] == [300, 200]
    assert same_class_references(samples, by_name["dog01_5"], 3) == []


def test_click_bench_losses_curve_plot_and_pools(engine, tmp_path):
    folder = str(data_dir("GrabCut"))
    result = run_click_bench(
        engine,
        [folder],
        ["sam", "sam-single"],
        limit=2,
        max_clicks=3,
        first_click="random",
        out=tmp_path,
        overlays=1,
        progress=False,
    )
    sam, single = result["summary"]["sam"], result["summary"]["sam-single"]
    assert sam["losses"] == 0 and single["losses"] is not None
    assert len(sam["miou_curve"]) == 3 and "drops" in sam
    assert result["config"]["first_click"] == "random"
    assert result["config"]["reference_pool"] == {"GrabCut": "earlier"}  # names carry no class
    first = [r["clicks"][0] for r in result["per_image"]]
    assert first[0] == first[1]  # every method gets the same random first click
    assert (tmp_path / "miou_curve_GrabCut.png").is_file()
    assert "miou_curve_GrabCut.png" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="same-class references need"):
        run_click_bench(engine, [folder], ["sam"], limit=1, reference_pool="same-class")
