"""SmartSAM's learned switch: features, choice, fitting, weights files, the session and
``promptmoe train-switch``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from promptmoe_plugin.eval.switch_data import load_pools, save_pools, train_switch
from promptmoe_plugin.smartsam import SmartSamConfig, SmartSamSession, make_intent
from promptmoe_plugin.smartsam.switch import (
    FEATURES,
    SwitchPool,
    SwitchWeights,
    fit_switch,
    load_switch,
    pool_figures,
    switch_choice,
    switch_features,
)

F = len(FEATURES)


def _parts(sims: list[float]) -> np.ndarray:
    """``(N, 1, 3)`` part cosines whose sum is ``sims`` (all in the SAM part)."""
    out = np.zeros((len(sims), 1, 3))
    out[:, 0, 0] = sims
    return out


def test_features_are_differences_to_sams_answer():
    f = switch_features(
        iou=np.array([0.9, 0.95, 0.8]),
        centrality=np.array([0.5, 0.7, 0.2]),
        area=np.array([0.01, 0.04, 0.0]),
        chain=np.array([False, True, False]),
        part_similarity=_parts([0.6, 0.8, 0.5]),
        added_similarity=np.array([np.nan, 0.9, np.nan]),
        sam=0,
    )
    assert f.shape == (3, F)
    np.testing.assert_array_equal(f[0], 0.0)
    col = {name: i for i, name in enumerate(FEATURES)}
    assert f[1, col["iou"]] == pytest.approx(0.05)
    assert f[1, col["centrality"]] == pytest.approx(0.2) and f[1, col["centrality_shortfall"]] == 0
    assert f[2, col["centrality_shortfall"]] == pytest.approx(-0.3)
    assert f[1, col["log_area"]] == pytest.approx(np.log(4))
    assert np.isfinite(f[2, col["log_area"]])  # an empty candidate: floored, not -inf
    assert f[1, col["similarity"]] == pytest.approx(0.2)
    assert f[1, col["similarity_sam"]] == pytest.approx(0.2)
    assert f[1, col["added_similarity"]] == pytest.approx(0.3)  # 0.9 - SAM's answer's 0.6
    assert f[2, col["added_similarity"]] == 0.0 and f[1, col["chain"]] == 1.0


def test_choice_switches_only_on_a_positive_score():
    features = np.zeros((3, F))
    features[1, 0], features[2, 0] = 0.1, 0.3  # predicted IoU above SAM's answer
    w = np.zeros(F)
    w[0] = 1.0
    eligible = np.array([True, True, True])
    assert switch_choice(features, eligible, 0, w) == 2
    assert switch_choice(features, np.array([True, True, False]), 0, w) == 1
    assert switch_choice(features, eligible, 0, -w) == 0  # every rival scores below 0
    # SAM's answer not eligible: the best eligible one, whatever its sign
    assert switch_choice(features, np.array([False, True, False]), 0, -w) == 1


def _planted(n: int, seed: int) -> list[SwitchPool]:
    """Pools where a more similar rival is right unless it is a chain candidate, which
    is then 40 points worse than SAM's answer (a loss)."""
    rng = np.random.default_rng(seed)
    col = {name: i for i, name in enumerate(FEATURES)}
    pools = []
    for k in range(n):
        features = np.zeros((3, F))
        features[1:, col["similarity"]] = rng.uniform(0.02, 0.2, 2)
        features[1:, col["iou"]] = rng.normal(0, 0.02, 2)
        chain = rng.random(2) < 0.3
        features[1:, col["chain"]] = chain
        sam_iou = rng.uniform(0.3, 0.6)
        gt = np.concatenate([[sam_iou], np.where(chain, sam_iou - 0.4, sam_iou + 0.3)])
        pools.append(SwitchPool(features, np.ones(3, bool), np.clip(gt, 0, 1), 0, f"d/{k}/c"))
    return pools


def test_fit_learns_a_planted_rule_and_the_loss_term_avoids_losses():
    train, test = _planted(120, 1), _planted(120, 2)
    w = fit_switch(train, loss_weight=1.0)
    got, keep = pool_figures(test, w), pool_figures(test, None)
    assert got["miou"] > keep["miou"] + 20 and keep["losses"] == 0
    assert got["losses"] <= 2  # chain candidates are learned to be losers
    assert w[FEATURES.index("chain")] < 0 < w[FEATURES.index("similarity")]
    np.testing.assert_array_equal(w, fit_switch(train, loss_weight=1.0))  # deterministic
    with pytest.raises(ValueError, match="no first-click pools"):
        fit_switch([])


def test_weights_files_round_trip_and_bad_files_are_refused(tmp_path):
    path = tmp_path / "w.json"
    SwitchWeights(np.arange(F, dtype=float), {"note": "test"}).save(path)
    loaded = load_switch(path)
    np.testing.assert_array_equal(loaded.weights, np.arange(F))
    assert loaded.meta == {"note": "test"}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"features": ["iou"], "weights": [1.0]}))
    with pytest.raises(ValueError, match="expected"):
        load_switch(other)
    with pytest.raises(ValueError, match="cannot read"):
        load_switch(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="finite"):
        SwitchWeights(np.full(F, np.nan))
    pools = _planted(4, 3)
    save_pools(pools, tmp_path / "p.npz")
    back = load_pools(tmp_path / "p.npz")
    assert [p.name for p in back] == [p.name for p in pools]
    np.testing.assert_array_equal(back[2].features, pools[2].features)
    assert back[1].sam == 0 and back[1].eligible.dtype == bool


def test_the_shipped_weights_load_and_name_their_training():
    shipped = load_switch()
    assert shipped.weights.shape == (F,)
    assert shipped.meta["trained_on"] and shipped.meta["loss_weight"] > 0


def _figure_scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A light background with a blue body and an orange head on it: image, head, whole."""
    rng = np.random.default_rng(seed)
    img = (200 + rng.integers(0, 10, (256, 256, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:256, :256]
    head = (xx - 128) ** 2 + (yy - 70) ** 2 < 30**2
    body = (abs(xx - 128) < 45) & (yy > 95) & (yy < 220)
    img[body] = (40, 60, 160)
    img[head] = (200, 120, 90)
    return img, head, head | body


def test_session_uses_the_switch_with_references_only(engine, tmp_path):
    img, head, whole = _figure_scene(0)
    ref_img, _, ref_whole = _figure_scene(1)
    intent = make_intent("sam", engine)
    refs = [(ref_img, ref_whole)]
    s = SmartSamSession(engine, img, intent=intent, references=refs)
    s.click(128, 70)
    idx, features, eligible, sam = s.switch_pool()
    assert features.shape == (len(idx), F) and eligible.dtype == bool
    assert s.chosen == idx[switch_choice(features, eligible, sam, load_switch().weights)]
    # same seed, same answer; the hand rule and pure mode do not need the weights
    again = SmartSamSession(engine, img, intent=intent, references=refs)
    np.testing.assert_array_equal(again.click(128, 70), s.mask)
    hand = SmartSamSession(engine, img, SmartSamConfig(switch=None), intent=intent, references=refs)
    hand.click(128, 70)
    pure = SmartSamSession(engine, img, SmartSamConfig(switch=str(tmp_path / "missing.json")))
    pure.click(128, 70)
    with pytest.raises(RuntimeError, match="references"):
        pure.switch_pool()
    with pytest.raises(ValueError, match="cannot read switch weights"):
        SmartSamSession(
            engine,
            img,
            SmartSamConfig(switch=str(tmp_path / "missing.json")),
            intent=intent,
            references=refs,
        )


def test_train_switch_on_a_small_folder(engine, tmp_path, monkeypatch):
    """``promptmoe train-switch``'s work on three synthetic photos of a class: pools with
    references of the same class, weights written and loadable, figures per group; a
    packaged weights file that does not load is left out of the figures, not fatal."""
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    (folder / "gt").mkdir()
    for k in range(3):
        img, _, whole = _figure_scene(k)
        Image.fromarray(img).save(folder / "img" / f"figure0{k + 1}_{k}.png")
        Image.fromarray(whole.astype(np.uint8) * 255).save(
            folder / "gt" / f"figure0{k + 1}_{k}.png"
        )
    out = tmp_path / "switch.json"
    result = train_switch(
        engine, [folder], [], out, pools_cache=str(tmp_path / "pools"), class_references=2
    )
    assert load_switch(out).meta["pools"] == 6  # 3 images x (centre, random)
    assert (tmp_path / "pools.train.npz").exists()
    figures = result["figures"]["train"]
    assert set(figures["fitted"]) == {"data/center", "data/random", "all"}
    assert figures["sam"]["all"]["pools"] == 6
    assert figures["shipped"]["all"]["pools"] == 6  # the package's weights, to compare
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    monkeypatch.setattr("promptmoe_plugin.eval.switch_data.DEFAULT_SWITCH", broken)
    again = train_switch(engine, [folder], [], out, pools_cache=str(tmp_path / "pools"))
    assert "shipped" not in again["figures"]["train"]
