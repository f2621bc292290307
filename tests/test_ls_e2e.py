"""End to end against a real Label Studio 1.23.2 on loopback, with the backend as a server.

The test setup creates Label Studio's own venv once (``tests/labelstudio/make_venv.sh``,
cached under ``~/.cache/promptmoe``), starts it on a free port with local-file serving,
then drives it through its REST API as a user would: project, storage, task import,
model connection, interactive calls (keypoint, box, brush draft), batch predictions,
an annotation sent to the backend by a webhook, training, and a backend restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import LS_CONFIG as CONFIG
from conftest import blocky_draft as _coarse
from ls_backend.references import ReferenceStore
from ls_backend.results import brush_masks, brush_result
from promptmoe_plugin.eval.metrics import iou

pytestmark = pytest.mark.labelstudio

REPO = Path(__file__).resolve().parents[1]
LS_VERSION = "1.23.2"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
IMAGE = "/data/local-files/?d=imgs/voc.png"
#: Label Studio's environment in tests: no error reporting, analytics or version check,
#: so it contacts no outside host (docker/docker-compose.yml sets the same).
NO_OUTSIDE_CONTACT = {
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "COLLECT_ANALYTICS": "false",
    "LATEST_VERSION_CHECK": "false",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not up after {seconds}s:\n{log.read_text()[-3000:]}")


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def files(voc, tmp_path_factory):
    """The document root for local files: the VOC photo and a label-map draft mask."""
    root = tmp_path_factory.mktemp("ls_files")
    (root / "imgs").mkdir()
    Image.fromarray(voc["rgb"]).save(root / "imgs" / "voc.png")
    Image.fromarray(np.where(voc["masks"][18], 2, 0).astype(np.uint8)).save(
        root / "imgs" / "labels.png"
    )
    gt = {
        "person_left": voc["masks"][15],
        "person_right": voc["masks"][17],
        "table": voc["masks"][18],
    }
    return root, gt


@pytest.fixture(scope="module")
def label_studio(files, tmp_path_factory):
    venv = subprocess.run(
        ["sh", str(REPO / "tests" / "labelstudio" / "make_venv.sh"), LS_VERSION],
        capture_output=True,
        text=True,
        timeout=2400,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if venv.returncode != 0:
        pytest.fail(f"cannot create the Label Studio venv:\n{venv.stderr[-3000:]}")
    data = tmp_path_factory.mktemp("ls_data")
    port = _free_port()
    env = {
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(files[0]),
        "OMP_WAIT_POLICY": "PASSIVE",
        **NO_OUTSIDE_CONTACT,
    }
    cmd = [
        str(Path(venv.stdout.strip()) / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--port",
        str(port),
        "--internal-host",
        "127.0.0.1",
        "--data-dir",
        str(data),
        "--username",
        "e2e@example.com",
        "--password",
        "e2e-pass-1234",
        "--user-token",
        TOKEN,
        "--enable-legacy-api-token",
    ]
    log = data / "label-studio.log"
    proc = _start(cmd, env, log)
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc, 300, log)
        session = requests.Session()
        session.headers["Authorization"] = f"Token {TOKEN}"
        yield f"http://127.0.0.1:{port}", session
    finally:
        _stop(proc)


class Backend:
    """The backend as a separate process: ``promptmoe serve`` or gunicorn, both configured
    by the environment (the one settings loader)."""

    def __init__(self, ls_url: str, model_dir: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_dir = model_dir
        self.env = {
            "LABEL_STUDIO_URL": ls_url,
            "LABEL_STUDIO_API_KEY": TOKEN,
            "MODEL_DIR": str(model_dir),
            "DEVICE": "cpu",
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        self.proc: subprocess.Popen | None = None

    def start(self, gunicorn: bool = False) -> None:
        if gunicorn:
            cmd = [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "--timeout",
                "300",
                "promptmoe_cli.wsgi:app_factory()",
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "promptmoe_cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ]
        log = self.model_dir.parent / f"backend-{'gunicorn' if gunicorn else 'serve'}.log"
        self.proc = _start(cmd, self.env, log)
        _wait(f"{self.url}/health", self.proc, 300, log)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    b = Backend(label_studio[0], tmp_path_factory.mktemp("backend") / "model_dir")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def project(label_studio, backend, files):
    """A project with the config of the README, local-file tasks, the backend connected."""
    url, s = label_studio
    root, gt = files
    r = s.post(f"{url}/api/projects", json={"title": "PromptMoE e2e", "label_config": CONFIG})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = s.post(
        f"{url}/api/storages/localfiles",
        json={"project": pid, "path": str(root / "imgs"), "use_blob_urls": True, "title": "images"},
    )
    assert r.status_code == 201, r.text
    draft = _coarse(gt["person_right"])
    tasks = [
        {"data": {"image": IMAGE}},
        {
            "data": {"image": IMAGE},
            "predictions": [{"model_version": "drafts", "result": [_brush(draft, "Person")]}],
        },
        {"data": {"image": IMAGE, "mask": "/data/local-files/?d=imgs/labels.png"}},
    ]
    r = s.post(f"{url}/api/projects/{pid}/import", json=tasks)
    assert r.status_code == 201, r.text
    ids = sorted(
        t["id"] for t in s.get(f"{url}/api/tasks", params={"project": pid}).json()["tasks"]
    )
    r = s.post(
        f"{url}/api/ml",
        json={"url": backend.url, "project": pid, "is_interactive": True, "title": "promptmoe"},
    )
    assert r.status_code == 201, r.text
    ml = r.json()["id"]
    # Connecting the model created its webhook for all actions: no other is needed (a
    # second one would deliver every event twice).
    hooks = s.get(f"{url}/api/webhooks", params={"project": pid}).json()
    assert [(h["url"], h["send_for_all_actions"]) for h in hooks] == [
        (f"{backend.url}/webhook", True)
    ]
    return {"id": pid, "ml": ml, "tasks": ids}


def _brush(mask: np.ndarray, label: str) -> dict:
    return brush_result(mask, label, from_name="brush", to_name="image")


def _decode(result: list[dict]) -> list[tuple[str, np.ndarray]]:
    assert all(r["type"] == "brushlabels" for r in result)
    return brush_masks(result)


def _interactive(label_studio, project, context: dict) -> list[tuple[str, np.ndarray]]:
    url, s = label_studio
    r = s.post(
        f"{url}/api/ml/{project['ml']}/interactive-annotating",
        json={"task": project["tasks"][0], "context": context},
        timeout=300,
    )
    assert r.status_code == 200 and "data" in r.json(), r.text
    return _decode(r.json()["data"]["result"])


def test_interactive_keypoint_box_and_brush(label_studio, project, files):
    _, gt = files
    kp = {
        "original_width": 500,
        "original_height": 375,
        "image_rotation": 0,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "is_positive": True,
        "value": {"x": 16.0, "y": 80.0, "width": 0.5, "keypointlabels": ["Person"]},
    }
    ((label, mask),) = _interactive(label_studio, project, {"result": [kp]})
    assert label == "Person" and iou(mask, gt["person_left"]) > 0.6

    box = {
        "original_width": 500,
        "original_height": 375,
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {
            "x": 75.4,
            "y": 17.07,
            "width": 24.6,
            "height": 46.67,
            "rectanglelabels": ["Person"],
        },
    }
    ((label, mask),) = _interactive(label_studio, project, {"result": [box]})
    assert label == "Person" and iou(mask, gt["person_right"]) > 0.7

    draft = _coarse(gt["table"])
    ((label, mask),) = _interactive(label_studio, project, {"result": [_brush(draft, "Table")]})
    assert label == "Table" and iou(mask, gt["table"]) > 0.6


def test_opening_a_task_is_fast_and_stores_no_prediction(label_studio, project, backend):
    """Opening a task sends a batch /predict for it: a task without drafts gets no
    prediction (no empty tab, and Retrieve Predictions still covers it), at once, and its
    image is embedded in the background."""
    url, s = label_studio
    task = project["tasks"][0]
    encodes = requests.get(f"{backend.url}/metrics", timeout=5).json()["engine"]["encodes"]
    start = time.perf_counter()
    r = s.get(f"{url}/api/tasks/{task}", timeout=60)
    seconds = time.perf_counter() - start
    assert r.status_code == 200 and r.json()["predictions"] == [] and seconds < 1.0, seconds
    assert s.get(f"{url}/api/predictions", params={"task": task}).json() == []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        metrics = requests.get(f"{backend.url}/metrics", timeout=5).json()
        if metrics["engine"]["encodes"] > encodes or metrics["engine"]["cache_entries"]:
            break
        time.sleep(0.5)
    assert metrics["engine"]["cache_entries"] >= 1


def test_batch_predictions_for_tasks_with_drafts(label_studio, project, files):
    url, s = label_studio
    _, gt = files
    _, with_prediction, with_mask = project["tasks"]
    r = s.post(
        f"{url}/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project["id"]},
        json={"selectedItems": {"all": False, "included": [with_prediction, with_mask]}},
        timeout=600,
    )
    assert r.status_code == 200, r.text

    def ours(task: int) -> dict:
        # What did not fit in the request's bound, the backend's job writes back soon after.
        deadline = time.monotonic() + 300
        while True:
            preds = s.get(f"{url}/api/predictions", params={"task": task}).json()
            mine = [p for p in preds if str(p["model_version"]).startswith("promptmoe-")]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(1)
        (pred,) = mine
        return pred

    pred = ours(with_prediction)
    ((label, mask),) = _decode(pred["result"])
    assert label == "Person" and iou(mask, gt["person_right"]) > 0.7 and 0 < pred["score"] <= 1
    ((label, mask),) = _decode(ours(with_mask)["result"])
    assert label == "Table" and iou(mask, gt["table"]) > 0.6


def test_annotation_reaches_the_store_and_survives_restart(label_studio, project, backend, files):
    url, s = label_studio
    _, gt = files
    task = project["tasks"][1]
    r = s.post(
        f"{url}/api/tasks/{task}/annotations",
        json={"result": [_brush(gt["person_right"], "Person")]},
    )
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        refs = requests.get(f"{backend.url}/metrics", timeout=5).json()["references"]
        if refs.get("Person"):
            break
        time.sleep(1)
    assert refs == {"Person": 1}
    # START_TRAINING from Label Studio refits the router on the (draft, final) pair.
    version = requests.get(f"{backend.url}/health").json()["model_version"]
    r = s.post(f"{url}/api/ml/{project['ml']}/train", json={}, timeout=600)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 300  # training may run on the backend's training worker
    while time.monotonic() < deadline:
        if requests.get(f"{backend.url}/health", timeout=5).json()["model_version"] != version:
            break
        time.sleep(1)
    assert requests.get(f"{backend.url}/health").json()["model_version"] != version

    backend.stop()
    backend.start(gunicorn=True)
    assert requests.get(f"{backend.url}/metrics", timeout=5).json()["references"] == {"Person": 1}
    (ref,) = ReferenceStore(backend.model_dir).references(str(project["id"]), "Person", 8)
    assert np.array_equal(ref.mask, gt["person_right"]) and ref.image_url == IMAGE
    assert requests.get(f"{backend.url}/health").json()["model_version"].endswith("-r1")
