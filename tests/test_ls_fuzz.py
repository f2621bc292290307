"""Property-based fuzzing of ``/predict``, ``/setup`` and ``/webhook`` payload shapes
through Flask's test client with the real model: every answer is a 2xx or a 4xx with a
strict JSON body (no NaN), never a 5xx, and ``/health`` still answers.

The default run is short (``PROMPTMOE_FUZZ_EXAMPLES``, default 200, split over the three
endpoints); raise it for a long run, e.g. ``PROMPTMOE_FUZZ_EXAMPLES=10000``.
``START_TRAINING`` is left out (a refit takes seconds to minutes); the other webhook
actions are in.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import LS_CONFIG as CONFIG
from ls_backend import rle
from ls_backend.config import load_settings
from ls_backend.model import PromptMoEModel
from ls_backend.server import create_app

EXAMPLES = int(os.environ.get("PROMPTMOE_FUZZ_EXAMPLES", "200"))
H, W = 48, 64
IMAGE = "/data/local-files/?d=img.png"
FUZZ = settings(
    max_examples=max(1, EXAMPLES // 3),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("PROMPTMOE_FUZZ_RANDOM") is None,
)


#: (path, status) of every fuzzed request, reported by the last test.
STATUSES: Counter = Counter()


def _strict(raw: bytes):
    def no_constant(name):
        raise ValueError(f"{name} in a response")

    return json.loads(raw, parse_constant=no_constant)


@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_files")
    image = np.zeros((H, W, 3), np.uint8)
    image[10:38, 16:48] = 200
    Image.fromarray(image).save(root / "img.png")
    buf = io.BytesIO()
    Image.fromarray(np.where(image[:, :, 0] > 0, 1, 0).astype(np.uint8)).save(buf, "PNG")
    (root / "labels.png").write_bytes(buf.getvalue())
    overrides = {
        "model_dir": str(tmp_path_factory.mktemp("fuzz_model")),
        "local_files_root": str(root),
        "intent": "sam",
        "image_timeout": "2",
    }
    return create_app(PromptMoEModel(engine, load_settings({}, overrides))).test_client()


# ---------------------------------------------------------------------- strategies
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def mostly(good, bad=junk, one_in: int = 8):
    """``good``, and ``bad`` about once in ``one_in`` draws: most payloads reach the model."""
    return st.integers(0, one_in - 1).flatmap(lambda k: bad if k == 0 else good)


bad_ids = st.sampled_from(["abc", None, 2**70, 1.5, True, "", -1]) | junk
ids = mostly(st.integers(1, 50) | st.just("7"), bad_ids)
sizes = mostly(st.just(None), st.sampled_from([0, -3, 10**6, 16384, "64", 1.0, True]) | junk)
percent = mostly(
    st.floats(-20, 120, allow_nan=False), st.sampled_from([1e308, -1e308, 1e6, -0.0]) | junk
)
labels = mostly(st.lists(st.sampled_from(["Person", "Table", "Cat"]), min_size=1, max_size=2))


@st.composite
def rles(draw):
    kind = draw(st.sampled_from(["valid"] * 6 + ["other_size", "bytes", "junk"]))
    if kind == "valid":
        mask = np.zeros((H, W), bool)
        y, x = draw(st.integers(0, H - 1)), draw(st.integers(0, W - 1))
        mask[y : y + draw(st.integers(1, H)), x : x + draw(st.integers(1, W))] = True
        return rle.encode(mask)
    if kind == "other_size":
        return rle.encode(np.ones((draw(st.integers(1, 40)), draw(st.integers(1, 40))), bool))
    if kind == "bytes":
        return draw(st.lists(st.integers(-2, 300), max_size=40))
    return draw(junk)


@st.composite
def regions(draw):
    kind = draw(st.sampled_from(["keypointlabels", "rectanglelabels", "brushlabels", "choices"]))
    name = {"keypointlabels": "kp", "rectanglelabels": "rect"}.get(kind, "brush")
    item = {
        "type": draw(mostly(st.sampled_from([kind, kind.upper()]))),
        "from_name": draw(mostly(st.just(name))),
        "to_name": "image",
    }
    value: dict = {}
    if kind == "brushlabels":
        value = {"format": draw(mostly(st.just("rle"))), "rle": draw(rles())}
    elif kind in ("keypointlabels", "rectanglelabels"):
        value = {k: draw(percent) for k in ("x", "y", "width", "height")}
        if draw(st.integers(0, 3)) == 0:
            value["rotation"] = draw(percent)
    value[kind] = draw(labels)
    item["value"] = draw(mostly(st.just(value), one_in=20))
    for key, size in (("original_width", W), ("original_height", H)):
        bad = draw(sizes)
        if bad is not None:
            item[key] = bad
        elif draw(st.integers(0, 9)):
            item[key] = size
    if draw(st.booleans()):
        item["is_positive"] = draw(mostly(st.booleans()))
    return item


result_lists = mostly(st.lists(regions(), max_size=3), one_in=15)
odd_urls = st.sampled_from(
    ["/data/local-files/?d=missing.png", "s3://b/x", "", "http://[zz]/x", "http://%00/x"]
    + ["/data/local-files/?d=%00", "http://0/x", "http://a:99999/x", "/data/upload/1/x.png"]
)
images = mostly(mostly(st.just(IMAGE), odd_urls, one_in=3), one_in=15)


@st.composite
def tasks(draw):
    task: dict = {}
    if draw(st.integers(0, 9)):
        task["id"] = draw(ids)
    data = {"image": draw(images)}
    if draw(st.integers(0, 5)) == 0:
        data["mask"] = draw(mostly(st.sampled_from(["/data/local-files/?d=labels.png", IMAGE])))
    task["data"] = draw(mostly(st.just(data), one_in=20))
    for key in ("annotations", "predictions"):
        if draw(st.integers(0, 2)) == 0:
            source = st.fixed_dictionaries({"result": result_lists})
            task[key] = draw(mostly(st.lists(mostly(source, one_in=15), max_size=2), one_in=15))
    return task


@st.composite
def predict_bodies(draw):
    body = {
        "tasks": draw(mostly(st.lists(tasks(), min_size=1, max_size=3), one_in=20)),
        "project": draw(mostly(st.sampled_from(["1.1700000000", "2", ""]))),
        "label_config": draw(mostly(st.just(CONFIG), junk | st.text(max_size=30), one_in=15)),
    }
    context = None
    if draw(st.integers(0, 3)):
        context = {"result": draw(st.lists(regions(), min_size=1, max_size=3))}
    elif draw(st.booleans()):
        context = draw(junk)
    body["params"] = draw(
        mostly(st.just({"login": None, "password": None, "context": context}), one_in=20)
    )
    return body


@st.composite
def webhook_bodies(draw):
    actions = [
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATION_DELETED",
        "ANNOTATIONS_DELETED",
    ]
    project = {"id": draw(st.integers(1, 3)), "label_config": CONFIG}
    body = {
        "action": draw(mostly(st.sampled_from(actions), one_in=15)),
        "project": draw(mostly(st.just(project), one_in=10)),
        "task": {"id": draw(ids), "data": {"image": draw(images)}},
        "annotation": {"id": draw(ids), "result": draw(result_lists)},
    }
    if draw(st.booleans()):
        entry = mostly(st.fixed_dictionaries({"id": ids}), one_in=10)
        body["annotations"] = draw(mostly(st.lists(entry, max_size=3), one_in=10))
    if draw(st.integers(0, 14)) == 0:
        body[draw(st.sampled_from(["task", "annotation"]))] = draw(junk)
    return body


setup_bodies = st.fixed_dictionaries(
    {"schema": mostly(st.just(CONFIG), st.text(max_size=40) | junk, one_in=3)},
    optional={"project": junk, "hostname": junk, "access_token": junk, "extra_params": junk},
)


def _check(client, path: str, body) -> None:
    r = client.post(path, data=json.dumps(body), headers={"Content-Type": "application/json"})
    STATUSES[path, r.status_code] += 1
    assert r.status_code < 500, (path, r.status_code, r.data[:500], body)
    payload = _strict(r.data)  # a JSON body, strictly (no NaN or Infinity)
    assert isinstance(payload, dict)
    if r.status_code >= 400:
        assert payload["status"] == r.status_code and "internal error" not in str(payload)
    else:
        assert "internal error" not in json.dumps(payload), payload
    assert client.get("/health").status_code == 200


@FUZZ
@given(body=predict_bodies())
def test_fuzz_predict(client, body):
    _check(client, "/predict", body)


@FUZZ
@given(body=setup_bodies)
def test_fuzz_setup(client, body):
    _check(client, "/setup", body)


@FUZZ
@given(body=webhook_bodies())
def test_fuzz_webhook(client, body):
    _check(client, "/webhook", body)


def test_rss_stays_bounded_after_fuzzing(client):
    """Runs after the fuzz tests (same module): the process did not balloon, and every
    endpoint answered some fuzzed requests with a 2xx (the fuzzing reached the model)."""
    sys.stdout.write(f"fuzzed statuses: {dict(sorted(STATUSES.items()))}\n")
    if STATUSES:
        for path in ("/predict", "/setup", "/webhook"):
            assert any(p == path and s < 300 for p, s in STATUSES), (path, STATUSES)
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("no /proc")
    rss_mb = int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert rss_mb < 4096, f"RSS {rss_mb:.0f} MB"
