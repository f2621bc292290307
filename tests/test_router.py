"""Dynamic Expert Selector: context features, network shapes, gating, training, refit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptmoe_plugin.experts import CHEAP_EXPERTS, EXPERTS
from promptmoe_plugin.router import (
    CONTEXT_DIM,
    DEFAULT_WEIGHTS,
    Example,
    PairRouter,
    Router,
    context_features,
    evaluate,
    fit,
    load_examples,
    load_router,
    save_examples,
    save_router,
    shape_features,
    split_by_image,
)
from promptmoe_plugin.sam.frames import mask_to_working


def test_shape_features_known_answers():
    yy, xx = np.mgrid[:200, :200]
    disk = (yy - 100) ** 2 + (xx - 100) ** 2 <= 50**2
    area, fill, aspect, perimeter, compact, parts = shape_features(disk)
    assert area == pytest.approx(np.pi * 50**2 / 200**2, rel=0.01)
    assert fill == pytest.approx(np.pi * 50**2 / 101**2, rel=0.01)
    assert aspect == pytest.approx(1.0)
    assert 0.7 < compact < 1.3 and parts == 1
    two = np.zeros((50, 50), bool)
    two[5:10, 5:40] = two[20:30, 5:15] = True
    assert shape_features(two)[5] == 2
    assert shape_features(two)[2] == pytest.approx(35 / 25)


def test_context_is_518_finite_and_deterministic(engine, voc):
    emb = engine.embed(voc["rgb"])
    m = mask_to_working(emb, voc["masks"][0])
    c = context_features(emb, m)
    assert c.shape == (CONTEXT_DIM,) == (518,) and c.dtype == np.float32 and np.isfinite(c).all()
    assert np.linalg.norm(c[256:512]) == pytest.approx(
        1.0, abs=1e-4
    )  # masked pooling, L2-normalised
    np.testing.assert_array_equal(c, context_features(emb, m))
    other = context_features(emb, mask_to_working(emb, voc["masks"][1]))
    assert not np.allclose(c[256:], other[256:]) and np.allclose(c[:256], other[:256])


def _router(seed: int = 0) -> Router:
    torch.manual_seed(seed)
    return Router(PairRouter(), np.zeros(CONTEXT_DIM, np.float32), np.ones(CONTEXT_DIM, np.float32))


def test_pair_scores_are_symmetric_and_gating_picks_two_available_experts():
    router = _router()
    ctx = np.random.default_rng(0).normal(size=CONTEXT_DIM).astype(np.float32)
    s = router.pair_scores(ctx)
    assert s.shape == (len(EXPERTS), len(EXPERTS))
    np.testing.assert_allclose(s, s.T, atol=1e-5)
    picked = router.select(ctx, CHEAP_EXPERTS, budget=2)
    assert len(picked) == 2 and set(picked) <= set(CHEAP_EXPERTS)
    assert sum(picked.values()) == pytest.approx(1.0) and min(picked.values()) > 0
    assert picked == router.select(ctx, CHEAP_EXPERTS, budget=2)  # deterministic
    assert router.select(ctx, ("edge",)) == {"edge": 1.0}
    assert len(router.select(ctx, EXPERTS, budget=3)) == 3


def test_fit_learns_a_context_dependent_best_pair():
    rng = np.random.default_rng(0)
    examples = []
    n = len(EXPERTS)
    for i in range(80):
        kind = i % 2  # two kinds of context (e.g. two kinds of scene), each with its best pair
        ctx = (
            rng.normal(size=CONTEXT_DIM) * 0.5
            + np.where(np.arange(CONTEXT_DIM) < 64, 2 * kind - 1, 0)
        ).astype(np.float32)
        best = (0, 1) if kind else (3, 6)  # edge+color or texture+superpixel
        table = np.full((n, n), 0.80, np.float32) + rng.normal(0, 0.005, (n, n)).astype(np.float32)
        table = (table + table.T) / 2
        table[best] = table[best[::-1]] = 0.95
        table[5, :] = table[:, 5] = np.nan  # depth unavailable
        examples.append(Example(f"img{i}", "morph", ctx, table, 0.7))
    router = fit(examples[:60], epochs=200, seed=0)
    figures = evaluate(router, examples[60:], [e for e in EXPERTS if e != "depth"])
    assert figures["top1_accuracy"] >= 80
    assert figures["router_iou"] > figures["mean_pair_iou"] + 5


def test_shipped_weights_load_and_state_their_training_images(tmp_path):
    assert DEFAULT_WEIGHTS.name == "router.pt" and DEFAULT_WEIGHTS.parent.name == "weights"
    router = load_router()
    assert router.mean.shape == (CONTEXT_DIM,)
    assert router.meta["trained_on"] and set(router.meta["trained_on"]).isdisjoint(
        router.meta["held_out"]
    )
    again = load_router()
    assert again is not router  # read anew: no module-level cache
    ctx = np.random.default_rng(0).normal(size=CONTEXT_DIM).astype(np.float32)
    np.testing.assert_array_equal(again.pair_scores(ctx), router.pair_scores(ctx))
    path = tmp_path / "copy.pt"
    save_router(router, path)
    np.testing.assert_array_equal(load_router(path).pair_scores(ctx), router.pair_scores(ctx))
    with pytest.raises(FileNotFoundError):
        load_router("/nonexistent/router.pt")


def _examples(n_images: int) -> list[Example]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n_images):
        for kind in ("lowres", "morph"):
            iou = rng.uniform(0.5, 1, (len(EXPERTS), len(EXPERTS))).astype(np.float32)
            ctx = rng.normal(size=CONTEXT_DIM).astype(np.float32)
            u, a = rng.uniform(size=2)
            out.append(Example(f"ds/img{i}", kind, ctx, iou, float(u), float(a)))
    return out


def test_examples_round_trip_and_split_by_image(tmp_path):
    examples = _examples(9)
    path = tmp_path / "examples.npz"
    save_examples(examples, path)
    loaded = load_examples(path)
    assert [(e.name, e.kind, e.unrefined, e.agreement) for e in loaded] == [
        (e.name, e.kind, e.unrefined, e.agreement) for e in examples
    ]
    for a, b in zip(loaded, examples, strict=True):
        np.testing.assert_array_equal(a.context, b.context)
        np.testing.assert_array_equal(a.iou, b.iou)
    train, held = split_by_image(examples, 1 / 3, seed=0)
    assert len({e.name for e in held}) == 3 and len(train) + len(held) == len(examples)
    assert {e.name for e in train}.isdisjoint(
        {e.name for e in held}
    )  # both kinds of an image together
    again = split_by_image(examples, 1 / 3, seed=0)
    assert [e.name for e in again[1]] == [e.name for e in held]  # seeded
