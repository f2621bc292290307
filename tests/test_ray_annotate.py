"""``promptmoe annotate`` on a real Ray: a local Ray in this process, a head started with
``ray start --head`` and joined by address, and a real Label Studio project."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import LS_CONFIG, blocky_draft
from ls_backend import ray_pool
from ls_backend.results import brush_masks
from promptmoe_cli.main import main
from promptmoe_plugin.eval.metrics import iou
from test_ls_e2e import IMAGE, TOKEN, _brush, _free_port, files, label_studio  # noqa: F401 (fixtures)

RAY = Path(sys.executable).with_name("ray")
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module: the command joins it instead of starting
    its own (~10 s each)."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    try:
        started = ray_pool.connect(None, num_cpus=2)
    except ray_pool.RayUnavailable as exc:
        pytest.skip(f"Ray cannot start on this machine: {exc}")
    yield
    if started:
        ray_pool.shutdown()


@pytest.fixture(scope="module")
def folder(voc, tmp_path_factory):
    """Images and drafts: two drafted objects, one image without a draft, one draft of the
    wrong size; and the ground truth by image file name."""
    root = tmp_path_factory.mktemp("folder")
    images, drafts = root / "images", root / "drafts"
    images.mkdir()
    drafts.mkdir()
    gt = {"person.png": voc["masks"][17], "table.png": voc["masks"][18]}
    for name in ("person.png", "table.png", "nodraft.png", "bad.png"):
        Image.fromarray(voc["rgb"]).save(images / name)
    for name, mask in gt.items():
        Image.fromarray(blocky_draft(mask).astype(np.uint8) * 255).save(drafts / name)
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(drafts / "bad.png")
    return images, drafts, gt


def _import_masks(path: Path) -> dict[str, list]:
    out = {}
    for task in json.loads(path.read_text()):
        name = task["data"]["image"].rsplit("/", 1)[-1]
        out[name] = [brush_masks(p["result"]) for p in task.get("predictions", [])]
    return out


def test_folder_to_import_json_then_resume(local_ray, folder, tmp_path, capsys):
    images, drafts, gt = folder
    out, report = tmp_path / "out" / "import.json", tmp_path / "errors.jsonl"
    argv = ["annotate", "--images", str(images), "--drafts", str(drafts), "--out", str(out)]
    argv += ["--report", str(report), "--device", "cpu", "--model-dir", str(tmp_path / "md")]
    assert main(argv) == 1  # one task failed: the others are done all the same
    summary = capsys.readouterr().out
    assert "2 predicted, 0 already predicted by promptmoe-" in summary
    assert "1 without drafts, 1 failed" in summary
    masks = _import_masks(out)
    assert masks["nodraft.png"] == [] and masks["bad.png"] == []
    for name, truth in gt.items():
        ((pred,),) = masks[name]
        assert pred[0] == "Object" and iou(pred[1], truth) > 0.7, name
    (line,) = [json.loads(x) for x in report.read_text().splitlines()]
    assert line["task"] == "bad.png" and "10x10" in line["error"]

    # A second run resumes: what the current version predicted is kept, not redone.
    assert main(argv) == 1
    assert "0 predicted, 2 already predicted by promptmoe-" in capsys.readouterr().out
    assert _import_masks(out).keys() == masks.keys()
    assert all(len(_import_masks(out)[name]) == 1 for name in gt)


def test_ctrl_c_keeps_what_is_done_and_a_second_run_finishes(local_ray, voc, tmp_path, capsys):
    images, drafts = tmp_path / "images", tmp_path / "drafts"
    images.mkdir()
    drafts.mkdir()
    for i in range(6):
        Image.fromarray(voc["rgb"]).save(images / f"{i}.png")
        Image.fromarray(blocky_draft(voc["masks"][18]).astype(np.uint8) * 255).save(
            drafts / f"{i}.png"
        )
    out, log = tmp_path / "import.json", tmp_path / "run.log"
    argv = ["annotate", "--images", str(images), "--drafts", str(drafts), "--out", str(out)]
    argv += ["--device", "cpu", "--model-dir", str(tmp_path / "md"), "--batch", "1"]
    run = subprocess.Popen(
        [sys.executable, "-m", "promptmoe_cli", *argv, "--workers", "1", "--ray-cpus", "1"],
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    deadline = time.monotonic() + 300
    while "1/6" not in log.read_text() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    stdout, _ = run.communicate(timeout=300)
    assert run.returncode == 130, log.read_text()[-3000:]
    assert "stopping: finishing the tasks in flight" in log.read_text()
    done = sum(bool(m) for m in _import_masks(out).values())
    assert 1 <= done < 6 and f"{done} predicted" in stdout

    assert main(argv) == 0
    assert f"{6 - done} predicted, {done} already predicted" in capsys.readouterr().out
    assert all(len(m) == 1 for m in _import_masks(out).values())


def test_joins_a_ray_head_by_address(folder, tmp_path):
    images, drafts, gt = folder
    port = _free_port()
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--port", str(port)]
        + ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"],
        env={**os.environ, **ENV},
        stdout=(tmp_path / "head.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"ray start --head failed: {(tmp_path / 'head.log').read_text()}")
            time.sleep(0.5)
        out = tmp_path / "import.json"
        run = subprocess.run(
            [sys.executable, "-m", "promptmoe_cli", "annotate", "--images", str(images)]
            + ["--drafts", str(drafts), "--out", str(out), "--device", "cpu"]
            + ["--model-dir", str(tmp_path / "md"), "--ray-address", f"127.0.0.1:{port}"],
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 1, run.stderr[-3000:]
        assert "2 predicted" in run.stdout and "joined" in run.stderr
        ((pred,),) = _import_masks(out)["table.png"]
        assert iou(pred[1], gt["table.png"]) > 0.6
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(60)


def test_bad_inputs_are_one_line_errors(folder, tmp_path, capsys):
    images, drafts, _ = folder
    out = ["--out", str(tmp_path / "import.json")]
    port = _free_port()  # nobody listens there
    argv = ["annotate", "--images", str(images), *out, "--ray-address", f"127.0.0.1:{port}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err and "\n" not in err
    assert main(["annotate", "--images", str(tmp_path / "gone"), *out]) == 2
    assert "--images folder" in capsys.readouterr().err
    assert main(["annotate", "--images", str(images), "--drafts", str(tmp_path / "no"), *out]) == 2
    assert "--drafts folder" in capsys.readouterr().err
    assert main(["annotate", "--images", str(images)]) == 2
    assert "needs --out" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ls_project(label_studio, files):  # noqa: F811 (the imported fixtures)
    """A project: a task with a brush draft (a prediction of another model), one with a
    label-map mask image, one with nothing to predict from."""
    url, s = label_studio
    root, gt = files
    r = s.post(f"{url}/api/projects", json={"title": "annotate", "label_config": LS_CONFIG})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = s.post(
        f"{url}/api/storages/localfiles",
        json={"project": pid, "path": str(root / "imgs"), "use_blob_urls": True, "title": "im"},
    )
    assert r.status_code == 201, r.text
    draft = blocky_draft(gt["person_right"])
    tasks = [
        {
            "data": {"image": IMAGE},
            "predictions": [{"model_version": "drafts", "result": [_brush(draft, "Person")]}],
        },
        {"data": {"image": IMAGE, "mask": "/data/local-files/?d=imgs/labels.png"}},
        {"data": {"image": IMAGE}},
    ]
    r = s.post(f"{url}/api/projects/{pid}/import", json=tasks)
    assert r.status_code == 201, r.text
    listed = s.get(f"{url}/api/tasks", params={"project": pid}).json()["tasks"]
    return pid, sorted(t["id"] for t in listed)


def _ours(session: requests.Session, url: str, task: int) -> list[dict]:
    preds = session.get(f"{url}/api/predictions", params={"task": task}).json()
    return [p for p in preds if str(p["model_version"]).startswith("promptmoe-")]


@pytest.mark.labelstudio
def test_project_gets_one_prediction_per_task_and_a_rerun_writes_none(
    local_ray,
    label_studio,  # noqa: F811 (the imported fixture)
    ls_project,
    files,  # noqa: F811
    tmp_path,
    capsys,
):
    url, s = label_studio
    pid, (drafted, with_mask, bare) = ls_project
    _, gt = files
    argv = ["annotate", "--project", str(pid), "--label-studio-url", url]
    argv += ["--label-studio-api-key", TOKEN, "--device", "cpu"]
    argv += ["--model-dir", str(tmp_path / "md"), "--report", str(tmp_path / "r.jsonl")]
    assert main(argv) == 0
    assert "2 predicted, 0 already predicted" in capsys.readouterr().out
    (pred,) = _ours(s, url, drafted)
    ((label, mask),) = brush_masks(pred["result"])
    assert label == "Person" and iou(mask, gt["person_right"]) > 0.7
    (pred,) = _ours(s, url, with_mask)
    ((label, mask),) = brush_masks(pred["result"])
    assert label == "Table" and iou(mask, gt["table"]) > 0.6
    assert _ours(s, url, bare) == []

    assert main(argv) == 0
    assert "0 predicted, 2 already predicted" in capsys.readouterr().out
    assert [len(_ours(s, url, t)) for t in (drafted, with_mask, bare)] == [1, 1, 0]


@pytest.mark.labelstudio
def test_project_bad_inputs_fail_before_ray_starts(label_studio, ls_project, capsys):  # noqa: F811
    url, _ = label_studio
    pid, _ = ls_project
    base = ["annotate", "--label-studio-url", url, "--device", "cpu"]
    assert main([*base, "--project", "999999", "--label-studio-api-key", TOKEN]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([*base, "--project", str(pid), "--label-studio-api-key", "f" * 40]) == 2
    assert "refused the token" in capsys.readouterr().err
