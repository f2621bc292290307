"""Active learning: the training queue, router versions on disk, checked references and
idempotent webhook events, through ``model.fit`` and the HTTP server."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import LS_CONFIG as CONFIG
from conftest import REPO
from ls_backend import learning
from ls_backend.config import load_settings
from ls_backend.model import PromptMoEModel
from ls_backend.references import ReferenceStore
from ls_backend.results import brush_result
from ls_backend.server import create_app
from promptmoe_plugin.router import load_router, save_router

H, W = 96, 128
IMAGE = "/data/local-files/?d=scene.png"


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small image with one bright object, its mask and a coarse draft of it."""
    image = np.full((H, W, 3), 40, np.uint8)
    final = np.zeros((H, W), bool)
    final[20:72, 30:96] = True
    image[final] = (220, 180, 60)
    draft = np.zeros_like(final)
    draft[24:64, 36:84] = True
    return image, draft, final


@pytest.fixture()
def files(tmp_path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    Image.fromarray(_scene()[0]).save(root / "scene.png")
    return root


def _model(engine, model_dir: Path, files: Path, intent: str = "none") -> PromptMoEModel:
    settings = load_settings(
        {}, {"model_dir": str(model_dir), "local_files_root": str(files), "intent": intent}
    )
    model = PromptMoEModel(engine, settings)
    model.train_epochs = 3
    return model


def _event(action: str, ann_id: int, results: list, url: str = IMAGE, task: int = 3) -> dict:
    return {
        "action": action,
        "project": {"id": 1, "label_config": CONFIG},
        "task": {"id": task, "data": {"image": url}},
        "annotation": {"id": ann_id, "result": results},
    }


def _brush(mask: np.ndarray, label: str = "Person") -> dict:
    return brush_result(mask, label, from_name="brush", to_name="image")


# ---------------------------------------------------------------------- training queue
def test_queue_coalesces_requests_and_never_overlaps_runs():
    gate, running, seen = threading.Event(), [], []
    fingerprint = [1]

    def train() -> dict:
        running.append(1)
        seen.append(len(running))
        gate.wait(10)
        running.pop()
        return {"trained": True}

    queue = learning.TrainingQueue(train, lambda: fingerprint[0])
    first = queue.request()
    assert first["queued"] and not first["coalesced"]
    for _ in range(50):  # the worker picks the run up
        if queue.status()["state"] == "running":
            break
        time.sleep(0.02)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(queue.request())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One follow-up run is queued behind the running one; the other five join it.
    assert sorted(a["coalesced"] for a in answers) == [False] + [True] * 5
    assert queue.status()["state"] == "running" and queue.status()["queued_after"]
    gate.set()
    assert queue.wait(10)
    status = queue.status()
    assert seen == [1] and status["state"] == "idle" and status["runs"] == 2
    # The follow-up saw the same training data as the run before it: skipped, not retrained.
    assert status["last_result"]["trained"] is False and "no new" in status["last_result"]["reason"]

    # A request while idle always trains; a failing run is reported and the worker goes on.
    def boom() -> dict:
        raise RuntimeError("disk full")

    queue._train = boom
    queue.request()
    assert queue.wait(10) and queue.status()["last_error"] == "RuntimeError: disk full"
    queue._train = train
    queue.request()
    assert queue.wait(10) and queue.status()["last_error"] is None and seen == [1, 1]


def test_start_training_returns_at_once_then_trains_one_version(engine, tmp_path, files):
    model = _model(engine, tmp_path / "m", files)
    client = create_app(model).test_client()
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert r.status_code == 201 and r.json["result"]["queued"] is False
    assert "no (draft, final) pairs" in r.json["result"]["reason"]

    _, draft, final = _scene()
    model.store.put_draft("1", 3, "Person", IMAGE, draft)
    r = client.post("/webhook", json=_event("ANNOTATION_CREATED", 100, [_brush(final)]))
    assert r.status_code == 201 and r.json["result"]["pairs"] == 1

    start = time.perf_counter()
    answers = [
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        for _ in range(2)
    ]
    assert time.perf_counter() - start < 2.0  # the webhook never waits for the training
    first, second = (a.json["result"] for a in answers)
    assert all(a.status_code == 201 for a in answers)
    assert first["queued"] and not first["coalesced"] and first["model_version"].endswith("-r0")
    assert second["coalesced"] or second["queued_after"]  # joined, or one follow-up queued
    assert model.training_status()["state"] in ("queued", "running")

    assert model.training.wait(240)
    status = model.training_status()
    assert status["state"] == "idle" and status["last_error"] is None
    assert model.model_version.endswith("-r1") and status["model_version"] == model.model_version
    # Two concurrent requests on the same data made one version, in one file, no leftovers.
    routers = tmp_path / "m" / "routers"
    assert sorted(p.name for p in routers.iterdir() if not p.name.startswith(".training")) == [
        "router-r1.pt"
    ]
    with sqlite3.connect(tmp_path / "m" / "references.sqlite3") as db:
        assert db.execute("SELECT version, path FROM routers").fetchall() == [
            (1, "routers/router-r1.pt")
        ]
    load_router(routers / "router-r1.pt")
    # A restart picks the trained version up.
    assert _model(engine, tmp_path / "m", files).model_version.endswith("-r1")


def _fake_versions(model_dir: Path, n: int) -> ReferenceStore:
    """``n`` router versions recorded as training writes them (shipped weights copied)."""
    store = ReferenceStore(model_dir)
    weights = load_router(None)
    for version in range(1, n + 1):
        path = model_dir / "routers" / f"router-r{version}.pt"
        save_router(weights, path)
        assert store.add_router(version, path, 1, {}) == version
    return store


def test_moved_model_dir_and_damaged_router_fall_back(engine, tmp_path, files, caplog):
    _fake_versions(tmp_path / "a", 3)
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)  # paths are relative to MODEL_DIR: it still starts
    assert _model(engine, moved, files).model_version.endswith("-r3")

    (moved / "routers" / "router-r3.pt").write_bytes(b"PK\x03\x04 truncated")
    os.truncate(moved / "routers" / "router-r2.pt", 100)
    caplog.set_level(logging.WARNING, logger="ls_backend.learning")
    model = _model(engine, moved, files)
    assert model.model_version.endswith("-r1")
    (line,) = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert "using r1 instead" in line and "r3 (" in line and "r2 (" in line

    (moved / "routers" / "router-r1.pt").unlink()
    caplog.clear()
    assert _model(engine, moved, files).model_version.endswith("-r0")  # the shipped weights
    assert "using the shipped ones" in caplog.records[-1].getMessage()


def test_absolute_paths_of_an_older_store_survive_a_move(tmp_path):
    store = _fake_versions(tmp_path / "old", 1)
    with sqlite3.connect(store.path) as db:  # an older store kept absolute paths
        db.execute("UPDATE routers SET path=?", (str(tmp_path / "old/routers/router-r1.pt"),))
    (tmp_path / "old").rename(tmp_path / "new")
    version, _, path = learning.load_current_router(ReferenceStore(tmp_path / "new"))
    assert version == 1 and path == tmp_path / "new" / "routers" / "router-r1.pt"


# ---------------------------------------------------------------------- references
def test_references_are_checked_before_they_are_stored(engine, tmp_path, files):
    model = _model(engine, tmp_path / "m", files, intent="sam")
    client = create_app(model).test_client()
    _, _, final = _scene()
    wrong_size = dict(_brush(final[:, :100]), original_width=100)
    cases = [
        (
            _event("ANNOTATION_CREATED", 1, [_brush(final), wrong_size]),
            "mask is 100x96 but the image is 128x96",
            1,
        ),
        (
            _event("ANNOTATION_CREATED", 2, [_brush(final)], "/data/local-files/?d=gone.png"),
            "image not usable",
            0,
        ),
        (
            _event("ANNOTATION_CREATED", 3, [_brush(final)], "http://127.0.0.1:9/x.png"),
            "image not usable",
            0,
        ),
    ]
    for event, reason, stored in cases:
        r = client.post("/webhook", json=event)
        assert r.status_code == 201, r.json
        result = r.json["result"]
        assert result["references"] == stored and result["features"] == stored
        (skipped,) = result["skipped"]
        assert reason in skipped["reason"] and reason in result["detail"]
    assert model.store.count("1") == {"Person": 1}


def test_a_bad_reference_is_not_fetched_on_every_first_click(engine, tmp_path, files):
    model = _model(engine, tmp_path / "m", files, intent="sam")
    _, _, final = _scene()
    # A reference whose image went away after it was stored.
    model.store.replace_annotation("1", 7, 3, "/data/local-files/?d=gone.png", [("0", "P", final)])
    calls = []
    fetch = model.fetcher.image
    model.fetcher.image = lambda url: calls.append(url) or fetch(url)
    for _ in range(3):  # three first clicks
        assert model.references.of_label("1", "P", 8) == []
    assert len(calls) == 1


# ---------------------------------------------------------------------- idempotency
def test_the_same_event_twice_stores_nothing_new(engine, tmp_path, files):
    model = _model(engine, tmp_path / "m", files, intent="sam")
    client = create_app(model).test_client()
    _, draft, final = _scene()
    model.store.put_draft("1", 3, "Person", IMAGE, draft)
    event = _event("ANNOTATION_CREATED", 5, [_brush(final)])

    def rows():
        with sqlite3.connect(model.store.path) as db:
            return [
                db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall()
                for t in ("refs", "ref_features", "pairs")
            ]

    first = client.post("/webhook", json=event).json["result"]
    assert (first["references"], first["pairs"], first["features"]) == (1, 1, 1)
    before = rows()
    again = client.post("/webhook", json=event).json["result"]
    assert again["unchanged"] is True and rows() == before  # same rows, same times
    updated = _event("ANNOTATION_UPDATED", 5, [_brush(final), _brush(draft, "Table")])
    assert client.post("/webhook", json=updated).json["result"]["references"] == 2
    assert model.store.count("1") == {"Person": 1, "Table": 1}  # replaced, not added
    assert client.post("/webhook", json=updated).json["result"]["unchanged"] is True

    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 5}]}
    r1, r2 = (client.post("/webhook", json=deleted) for _ in range(2))
    assert r1.status_code == r2.status_code == 201
    assert r1.json["result"]["deleted_references"] == 2 and r2.json["result"] == {
        "deleted_references": 0
    }
    assert model.store.count("1") == {} and model.store.pairs() == []
    # Created again after the delete: stored again (the digest went with the annotation).
    assert client.post("/webhook", json=event).json["result"]["references"] == 1
    bad = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "x"}]}
    r = client.post("/webhook", json=bad)
    assert r.status_code == 422 and "must be an integer" in r.json["detail"]


# ---------------------------------------------------------------------- kill -9
_TRAINER = """
import sys
sys.path.insert(0, {tests!r})
from test_ls_learning import IMAGE, _brush, _event, _model, _scene
from promptmoe_plugin.sam import SamEngine

model_dir, files = sys.argv[1], sys.argv[2]
model = _model(SamEngine.create(device="cpu", cache_mb=64), model_dir, files)
_, draft, final = _scene()
model.store.put_draft("1", 3, "Person", IMAGE, draft)
model.fit("ANNOTATION_CREATED", _event("ANNOTATION_CREATED", 1, [_brush(final)]))
for n in range(20):
    model.fit("START_TRAINING", {{}})
    model.training.wait()
    print("done", model.model_version, flush=True)
"""


def test_kill_9_while_training_loses_no_version_reported_done(engine, tmp_path, files):
    script = tmp_path / "trainer.py"
    script.write_text(_TRAINER.format(tests=str(REPO / "tests")))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "m"), str(files)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    done = []
    try:
        line = proc.stdout.readline()  # the first version is done
        assert line.startswith("done"), f"trainer failed: {line!r}"
        done.append(line.split()[1])
        time.sleep(np.random.default_rng().uniform(0.5, 4.0))  # somewhere inside the next
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        done += [x.split()[1] for x in proc.stdout.read().splitlines() if x.startswith("done")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reported = int(done[-1].rsplit("-r", 1)[1])
    store = ReferenceStore(tmp_path / "m")
    versions = store.routers()
    assert versions and versions[0][0] >= reported
    for _, path in versions:  # every recorded version has its complete file
        load_router(path)
    model = _model(engine, tmp_path / "m", files)
    assert model.model_version.endswith(f"-r{versions[0][0]}")
