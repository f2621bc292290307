"""Training the expert selector from dataset folders: examples, hold-out, cache, weights."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import data_dir
from promptmoe_plugin.eval.router_data import train_router
from promptmoe_plugin.experts import EXPERTS
from promptmoe_plugin.router import CONTEXT_DIM, load_examples, load_router


def test_train_router_from_folders_and_example_cache(engine, tmp_path):
    folder = str(data_dir("GrabCut"))
    cache, out = tmp_path / "examples", tmp_path / "router.pt"
    kwargs = dict(images=2, kinds=("lowres",), holdout=0.5, epochs=3, seed=0, progress=False)
    with pytest.raises(ValueError, match="box gate"):  # both near-correct drafts: gate opens
        train_router(engine, [folder], [], out, examples=cache, **kwargs)
    kwargs["include_gated"] = True
    meta = train_router(engine, [folder], [], out, examples=cache, **kwargs)
    # Two seeded-random images (as drawn before: 69020 and book), one held out.
    assert sorted(meta["trained_on"] + meta["held_out"]) == ["GrabCut/69020", "GrabCut/book"]
    assert len(meta["trained_on"]) == 1 and meta["kinds"] == ["lowres"]
    assert set(meta["figures"]) == {"train", "held_out", "held_out_lite", "held_out_by_dataset"}
    assert list(meta["figures"]["held_out_by_dataset"]) == ["GrabCut"]
    assert load_router(out).meta["trained_on"] == meta["trained_on"]
    assert len(load_examples(cache.with_suffix(".train.npz"))) == 2
    encodes = engine.stats().encodes
    again = train_router(engine, [folder], [], tmp_path / "again.pt", examples=cache, **kwargs)
    assert engine.stats().encodes == encodes  # the measured examples were read back
    assert again["figures"] == meta["figures"]


def test_a_cache_from_the_earlier_measurement_is_refused(engine, tmp_path):
    # A cache as the one-PPE-step measurement wrote it: no "agreement" column.
    n = len(EXPERTS)
    np.savez_compressed(
        tmp_path / "old.train.npz",
        names=np.array(["GrabCut/book"]),
        kinds=np.array(["morph"]),
        contexts=np.zeros((1, CONTEXT_DIM), np.float32),
        ious=np.full((1, n, n), 0.5, np.float32),
        unrefined=np.array([0.4]),
    )
    encodes = engine.stats().encodes
    with pytest.raises(ValueError, match="earlier version"):
        train_router(engine, ["unused"], [], tmp_path / "r.pt", examples=tmp_path / "old")
    assert engine.stats().encodes == encodes and not (tmp_path / "r.pt").exists()
