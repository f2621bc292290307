"""Concurrency: batch refinements are bounded, interactive calls never wait for them, and
the load benchmark runs clients against the real server."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import LS_CONFIG as CONFIG
from conftest import data_dir
from ls_backend.bench import bench_samples, files_root
from ls_backend.config import load_settings
from ls_backend.load import LOAD_KINDS, format_load_report, load_test
from ls_backend.model import PromptMoEModel
from ls_backend.results import brush_result


def _model(engine, tmp_path, root, **overrides: str) -> PromptMoEModel:
    settings = load_settings(
        {}, {"model_dir": str(tmp_path / "m"), "local_files_root": str(root), **overrides}
    )
    return PromptMoEModel(engine, settings)


def test_batch_tasks_take_turns_and_clicks_do_not_wait(engine, voc, tmp_path, monkeypatch):
    Image.fromarray(voc["rgb"]).save(tmp_path / "voc.png")
    model = _model(engine, tmp_path, tmp_path, max_concurrent="1")
    running, overlap, release = [0], [0], threading.Event()
    lock = threading.Lock()

    def slow_pre_annotate(task, config, project):
        with lock:
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
        release.wait(30)
        with lock:
            running[0] -= 1
        return []

    monkeypatch.setattr(model, "_pre_annotate", slow_pre_annotate)
    draft = brush_result(voc["masks"][15], "Person", from_name="brush", to_name="image")
    task = {
        "data": {"image": "/data/local-files/?d=voc.png"},
        "predictions": [{"model_version": "drafts", "result": [draft]}],
    }
    kwargs = {"project": "1.0", "label_config": CONFIG}
    batches = [
        threading.Thread(target=model.predict, args=([{**task, "id": i}],), kwargs=kwargs)
        for i in (1, 2)
    ]
    for t in batches:
        t.start()
    time.sleep(0.5)
    # Both batch calls are in, one holds the only slot: a click still gets its answer.
    kp = {
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": "image",
        "original_width": 500,
        "original_height": 375,
        "value": {"x": 16.0, "y": 80.0, "width": 0.5, "keypointlabels": ["Person"]},
    }
    (answer,) = model.predict([{**task, "id": 3}], context={"result": [kp]}, **kwargs)
    assert running[0] == 1 and answer["result"]
    release.set()
    for t in batches:
        t.join(30)
    assert overlap[0] == 1


def test_max_concurrent_setting():
    assert load_settings({}).max_concurrent == 0  # one per CPU core
    assert load_settings({"MAX_CONCURRENT": "3"}).max_concurrent == 3
    with pytest.raises(ValueError, match="MAX_CONCURRENT"):
        load_settings({"MAX_CONCURRENT": "-1"})


def test_load_benchmark_runs_every_kind_without_errors(engine, tmp_path):
    folders = [str(data_dir("GrabCut"))]
    root = files_root(bench_samples(folders, 2))
    model = _model(engine, tmp_path, root)
    fig = load_test(model, folders, clients=2, seconds=3, images=2, sample_every=0.5)
    assert fig["errors"]["count"] == 0, fig["errors"]["first"]
    assert set(fig["requests"]) == set(LOAD_KINDS)
    assert sum(r["n"] for r in fig["requests"].values()) >= 2
    rss = fig["rss_mb"]
    assert rss["peak"] >= rss["after_warmup"] > 0 and rss["series"]
    assert np.isfinite(rss["ratio"]) and "errors: 0" in format_load_report(fig)
