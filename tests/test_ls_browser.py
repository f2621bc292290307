"""The real Label Studio 1.23.2 web app in headless Chromium, driven as a user would.

One Label Studio, one backend and one browser session for the whole module (the fixtures of
test_ls_e2e, imported: this module starts its own; the backend has ``LABEL_STUDIO_URL`` and
``LABEL_STUDIO_API_KEY`` of that Label Studio, for its write-back of queued predictions).
Logged in once through the login page, the tests then, in this order:

1. a click on the right man, then an Alt-click on the bowl in front of him: the saved mask
   leaves the bowl out (removes it when the first suggestion held it) and is no worse;
2. smart keypoint click on the left person, accept, submit: the saved mask matches it;
3. a smart rectangle, and 4. a tilted smart rectangle (3-point tool): the saved masks;
5. Retrieve Predictions (Data Manager -> Actions) on tasks opened before, one of them
   annotated since: each gets a prediction of the model (polled through the API: a task
   that does not fit in the batch request may be written back later by the backend);
6. a labeling config the model refuses, connected on the Model settings page: the reason
   the backend gave at ``/setup`` is on the page;
7. the time from a click on a task in the Data Manager to the editor being ready, with the
   backend connected and without (another project), in the same run: printed and saved
   (``task-open-times.json``), no timed assert.

Masks are decoded from the annotations Label Studio saved (its API) and compared with the
ground truth. Screenshots of every step (numbered) are kept in a folder under pytest's tmp
dir (printed), and copied to ``$PROMPTMOE_ARTIFACTS/ls-browser`` when that variable is set.
Skipped when chromium, chromedriver or selenium is missing (``make browser`` installs them
on Debian).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import time

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import LS_CONFIG
from conftest import blocky_draft as _coarse
from ls_backend.results import brush_masks
from promptmoe_plugin.eval.metrics import iou
import test_ls_e2e as e2e

# The fixtures of test_ls_e2e (module-scoped: this module gets its own Label Studio and backend).
label_studio, backend, files = e2e.label_studio, e2e.backend, e2e.files

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        f"no browser for the editor test (chromium: {CHROMIUM}, chromedriver: {CHROMEDRIVER});"
        " `make browser` installs Debian's chromium and chromium-driver",
        allow_module_level=True,
    )
pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
import browser_editor as ui  # noqa: E402  (imports selenium)

pytestmark = pytest.mark.labelstudio

USER, PASSWORD = "e2e@example.com", "e2e-pass-1234"
#: The VOC photo is 500 x 375; points are image pixels (x, y).
H, W = 375, 500
#: The left person (as in test_ls_e2e, 16 % / 80 %).
LEFT_PERSON = (80.0, 300.0)
#: The right man, and the bowl in front of him (that a first click there may take too).
RIGHT_MAN, BOWL = (440.0, 170.0), (437.0, 247.0)
#: A smart rectangle around the man in the middle: press, release.
MIDDLE_MAN_BOX = ((176.0, 63.0), (319.0, 234.0))
#: Tasks for the task-open timing, per project (the first one warms the page up).
OPENS = 8


def _tilted_box(cx: float, cy: float, half_w: float, half_h: float, degrees: float):
    """The three clicks of the 3-point rectangle tool for a rectangle centred on (cx, cy),
    turned by ``degrees``: a corner, the end of its first side, a point on the opposite side."""
    a = math.radians(degrees)
    ux, uy, vx, vy = math.cos(a), math.sin(a), -math.sin(a), math.cos(a)
    p1 = (cx - half_w * ux - half_h * vx, cy - half_w * uy - half_h * vy)
    p2 = (p1[0] + 2 * half_w * ux, p1[1] + 2 * half_w * uy)
    return p1, p2, (p2[0] + 2 * half_h * vx, p2[1] + 2 * half_h * vy)


#: A tilted rectangle (12 degrees) around the man in the middle.
MIDDLE_MAN_TILTED = _tilted_box(247, 148, 88, 98, 12)


def _api(url: str, path: str, **params):
    r = requests.get(
        f"{url}{path}",
        params=params,
        headers={"Authorization": f"Token {e2e.TOKEN}"},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def _saved_mask(url: str, task: int) -> tuple[str, np.ndarray]:
    """The one brush region of the task's one annotation, as Label Studio saved it."""
    (annotation,) = _api(url, f"/api/tasks/{task}/annotations")
    ((label, mask),) = brush_masks(annotation["result"])
    return label, mask


def _our_predictions(url: str, task: int) -> list[dict]:
    preds = _api(url, "/api/predictions", task=task)
    return [p for p in preds if str(p["model_version"]).startswith("promptmoe-")]


def _new_project(
    label_studio, files, title: str, tasks: list[dict], config: str = LS_CONFIG, ml_url=None
) -> dict:
    """A project with local-file tasks; the model connected through the API if ``ml_url``."""
    url, s = label_studio
    r = s.post(f"{url}/api/projects", json={"title": title, "label_config": config})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = s.post(
        f"{url}/api/storages/localfiles",
        json={"project": pid, "path": str(files[0] / "imgs"), "use_blob_urls": True},
    )
    assert r.status_code == 201, r.text
    if tasks:
        r = s.post(f"{url}/api/projects/{pid}/import", json=tasks)
        assert r.status_code == 201, r.text
    ids = sorted(
        t["id"] for t in s.get(f"{url}/api/tasks", params={"project": pid}).json()["tasks"]
    )
    if ml_url:
        r = s.post(
            f"{url}/api/ml",
            json={"url": ml_url, "project": pid, "is_interactive": True, "title": "promptmoe"},
        )
        assert r.status_code == 201, r.text
    return {"id": pid, "tasks": ids}


@pytest.fixture(scope="module")
def project(label_studio, backend, files):
    """The README's config (as in test_ls_e2e) with the model connected; tasks by use."""
    _, gt = files
    plain = {"data": {"image": e2e.IMAGE}}
    draft = e2e._brush(_coarse(gt["table"]), "Table")
    tasks = [
        plain,  # keypoint
        plain,  # Alt-click
        plain,  # rectangle
        plain,  # tilted rectangle
        {"data": {"image": e2e.IMAGE}, "annotations": [{"result": [draft]}]},  # brush draft
        {"data": {"image": e2e.IMAGE, "mask": "/data/local-files/?d=imgs/labels.png"}},
    ]
    p = _new_project(label_studio, files, "PromptMoE editor", tasks, ml_url=backend.url)
    names = ("keypoint", "alt", "rectangle", "tilted", "draft", "mask")
    return {"id": p["id"], **dict(zip(names, p["tasks"], strict=True))}


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = ui.chrome(CHROMIUM, CHROMEDRIVER, tmp_path_factory.mktemp("chromium_profile"))
    yield d
    d.quit()


@pytest.fixture(scope="module")
def shots(driver, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ls_browser_screenshots")
    ui.report(f"screenshots: {folder}")
    return ui.Shots(driver, folder)


@pytest.fixture(scope="module")
def editor(label_studio, driver, shots):
    """The editor driver of a browser logged in through the real login page."""
    with shots.on_failure("login"):
        ui.login(driver, label_studio[0], USER, PASSWORD, shots)
    return ui.Editor(driver)


def test_alt_click_removes_a_part(label_studio, project, files, editor, shots):
    """The user wants the right man without the bowl in front of him: a click on the man,
    then an Alt-click (a negative point) on the bowl. The saved mask leaves the bowl out and
    is no worse; when the first mask held the bowl (it does on most runs: SAM's candidates
    nearly tie), the Alt-click removed it and the mask is closer to the man. Runs first:
    submitted masks become references that change what a first click picks."""
    url, _ = label_studio
    _, gt = files
    task = project["alt"]
    bowl = (int(BOWL[1]), int(BOWL[0]))  # (row, column)
    with shots.on_failure("alt-click"):
        editor.open(url, project["id"], task)
        editor.auto_annotation_on()
        editor.tool("key-point-tool")
        editor.label(1, "Person")
        editor.click(*RIGHT_MAN)
        (first,) = editor.wait_suggestion()
        shots("alt-first-click")
        before = ui.suggestion_mask(first, H, W)

        # The keypoint label is released once a point is placed: pick it again, Alt-click.
        editor.label(1, "Person")
        editor.click(*BOWL, alt=True)
        (second,) = editor.wait_suggestion([first])
        shots("alt-click-suggestion")
        shown = ui.suggestion_mask(second, H, W)
        assert editor.region_kinds() == ["keypointregion", "keypointregion"], editor.regions()
        editor.accept()
        shots("alt-click-accepted")
        editor.submit()
        shots("alt-click-submitted")

    label, after = _saved_mask(url, task)
    assert label == "Person" and iou(after, shown) > 0.99, (label, iou(after, shown))
    was, now = iou(before, gt["person_right"]), iou(after, gt["person_right"])
    ui.report(
        f"Alt-click on the bowl (first mask {'with' if before[bowl] else 'without'} it):"
        f" mask {int(before.sum())} -> {int(after.sum())} px,"
        f" IoU with the right man {was:.3f} -> {now:.3f}"
    )
    assert not after[bowl], "the Alt-clicked bowl is in the saved mask"
    if before[bowl]:
        assert after.sum() < before.sum() and now > was, f"IoU {was:.3f} -> {now:.3f}"
    assert now >= was - 0.02, f"the Alt-click spoiled the mask: IoU {was:.3f} -> {now:.3f}"


def test_smart_keypoint_in_the_real_editor(label_studio, project, files, editor, shots):
    url, _ = label_studio
    _, gt = files
    task = project["keypoint"]
    with shots.on_failure("keypoint"):
        start = time.perf_counter()
        editor.open(url, project["id"], task)
        ui.report(
            f"task {task} ready in the editor {time.perf_counter() - start:.2f} s after navigation"
        )
        shots("task-open")
        # brush, keypoint, rectangle labels, with their hotkeys
        assert editor.chips() == ["Person 1 Table 2", "Person 3 Table 4", "Person 5 Table 6"]
        assert editor.regions() == [], "a fresh task shows regions (an empty prediction?)"

        editor.auto_annotation_on()
        shots("auto-annotation-on")
        editor.tool("key-point-tool")
        editor.label(1, "Person")
        shots("smart-keypoint-person-selected")

        clicked = time.perf_counter()
        editor.click(*LEFT_PERSON)
        editor.wait_suggestion()
        ui.report(f"suggestion shown {time.perf_counter() - clicked:.2f} s after the click")
        shots("keypoint-suggestion")

        editor.accept()
        ((_, text),) = editor.regions()
        assert "Person" in text.split(), text
        shots("keypoint-accepted")
        editor.submit()
        shots("keypoint-submitted")
        label, mask = _saved_mask(url, task)
        score = iou(mask, gt["person_left"])
        ui.report(f"smart keypoint: saved mask {label}, IoU {score:.3f} against the left person")
        assert label == "Person" and score > 0.6, (label, score)


def _smart_rectangle(editor, url: str, project: dict, task: int, draw, shots, name: str):
    """Open ``task``, pick the Person rectangle chip then the smart ``name`` tool, ``draw``,
    accept, submit; the saved mask."""
    editor.open(url, project["id"], task)
    editor.auto_annotation_on()
    # The label first: picking a rectangle chip after the smart tool selects the plain one.
    editor.label(2, "Person")
    editor.tool(name)
    shots(f"{name}-selected")
    drawn = time.perf_counter()
    draw()
    editor.wait_suggestion()
    ui.report(f"{name}: suggestion shown {time.perf_counter() - drawn:.2f} s after drawing")
    assert editor.region_kinds() == ["rectangleregion"], editor.regions()
    shots(f"{name}-suggestion")
    editor.accept()
    shots(f"{name}-accepted")
    editor.submit()
    shots(f"{name}-submitted")
    label, mask = _saved_mask(url, task)
    assert label == "Person", label
    return mask


def test_smart_rectangle(label_studio, project, voc, editor, shots):
    url, _ = label_studio
    with shots.on_failure("rectangle"):
        mask = _smart_rectangle(
            editor,
            url,
            project,
            project["rectangle"],
            lambda: editor.drag(*MIDDLE_MAN_BOX),
            shots,
            "rectangle-tool",
        )
    score = iou(mask, voc["masks"][16])
    ui.report(f"smart rectangle: IoU {score:.3f} against the middle man")
    assert score > 0.7, score


def test_tilted_smart_rectangle(label_studio, project, voc, editor, shots):
    url, _ = label_studio

    def draw():
        for point in MIDDLE_MAN_TILTED:
            editor.click(*point)

    with shots.on_failure("tilted-rectangle"):
        mask = _smart_rectangle(
            editor, url, project, project["tilted"], draw, shots, "rectangle-3-point-tool"
        )
    score = iou(mask, voc["masks"][16])
    ui.report(f"tilted smart rectangle (3-point): IoU {score:.3f} against the middle man")
    assert score > 0.7, score


def test_retrieve_predictions_for_tasks_opened_before(label_studio, project, files, editor, shots):
    """Tasks opened in the editor before, one of them annotated since (the Alt-click task),
    the others with a brush draft in an annotation or a mask image in their data: Retrieve
    Predictions gives each a prediction of the model. Polled: the backend may queue a task
    that does not fit in the batch request and write its prediction back later."""
    url, _ = label_studio
    _, gt = files
    driver = editor.d
    expected = {
        project["alt"]: ("Person", gt["person_right"], 0.7),
        project["draft"]: ("Table", gt["table"], 0.6),
        project["mask"]: ("Table", gt["table"], 0.6),
    }
    with shots.on_failure("retrieve"):
        for name in ("draft", "mask"):
            editor.open(url, project["id"], project[name])
            shots(f"opened-{name}-task")
        had = [t for t in expected if _our_predictions(url, t)]
        ui.report(f"before Retrieve Predictions, tasks {had} of {list(expected)} have one")

        ui.run_action(driver, url, project["id"], list(expected), "Retrieve Predictions")
        shots("retrieve-predictions-sent")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            preds = {t: _our_predictions(url, t) for t in expected}
            if all(p and p[-1]["result"] for p in preds.values()):
                break
            time.sleep(1)
        missing = [t for t, p in preds.items() if not (p and p[-1]["result"])]
        assert not missing, f"no prediction of the model after 120 s for tasks {missing}"

        ui.data_manager(driver, url, project["id"])
        counter = ui.until(
            driver,
            lambda d: re.search(r"Predictions: (\d+)", ui.page_text(d)),
            "no predictions counter in the Data Manager",
        )
        shots("retrieve-predictions-done")
        assert int(counter.group(1)) >= len(expected), counter.group(0)
    for task, (want, truth, floor) in expected.items():
        pred = preds[task][-1]
        ((label, mask),) = brush_masks(pred["result"])
        score = iou(mask, truth)
        ui.report(
            f"Retrieve Predictions: task {task} {label}, IoU {score:.3f}, score {pred['score']:.2f}"
        )
        assert label == want and score > floor and 0 < pred["score"] <= 1, (task, label, score)


def _visible_part(message: str) -> str:
    """What a browser shows of ``message`` when a page renders it as HTML: ``<...>`` are
    tags, not text."""
    return " ".join(re.sub(r"<[^>]*>", " ", message).split())


@pytest.fixture(scope="module")
def config_error(label_studio, backend, files, editor, shots):
    """A project whose smart keypoint label is not a brush label, connected to the model on
    Settings -> Model: the reason the backend gives at /setup, and the page's text."""
    url, _ = label_studio
    config = LS_CONFIG.replace(
        '<KeyPointLabels name="kp" toName="image" smart="true">\n    <Label value="Person"/>',
        '<KeyPointLabels name="kp" toName="image" smart="true">\n    <Label value="Thing"/>',
    )
    assert "Thing" in config
    p = _new_project(label_studio, files, "PromptMoE wrong config", [], config=config)
    r = requests.post(
        f"{backend.url}/setup",
        json={"project": f"{p['id']}.0", "schema": config, "hostname": url, "access_token": ""},
        timeout=10,
    )
    assert r.status_code == 422, r.text
    reason = r.json()["detail"]
    with shots.on_failure("model-settings"):
        ui.connect_model(editor.d, url, p["id"], backend.url, "promptmoe")
        ui.until(
            editor.d,
            lambda d: "valid ML backend" in ui.page_text(d),
            "connecting a model that refuses the config showed no error",
            seconds=30,
        )
        shots("model-settings-config-error")
    return reason, ui.page_text(editor.d)


def test_config_error_is_shown_on_the_model_page(config_error):
    reason, text = config_error
    ui.report(f"Model settings page: ... {text[text.find('Successfully connected') :][:400]}")
    assert "422" in text and _visible_part(reason) in text, (reason, text)


def test_config_error_names_the_tool_on_the_model_page(config_error):
    reason, text = config_error
    assert " ".join(reason.split()) in text, (reason, text)


@pytest.fixture(scope="module")
def open_projects(label_studio, backend, files):
    """Two projects with the same config, one with the model connected and one without;
    each task has an image of its own (no browser cache, and each first open embeds)."""
    root, _ = files
    voc = np.asarray(Image.open(root / "imgs" / "voc.png"))
    out = {}
    for k, connected in enumerate((True, False)):
        tasks = []
        for i in range(OPENS):
            name = f"open-{k}-{i}.png"
            Image.fromarray(np.roll(voc, 41 * (k * OPENS + i + 1), axis=1)).save(
                root / "imgs" / name
            )
            tasks.append({"data": {"image": f"/data/local-files/?d=imgs/{name}"}})
        title = "Open time, model connected" if connected else "Open time, no model"
        ml = backend.url if connected else None
        out[connected] = _new_project(label_studio, files, title, tasks, ml_url=ml)
    return out


def test_task_open_time_with_and_without_the_backend(label_studio, open_projects, editor, shots):
    """Seconds from a click on a task in the Data Manager to the editor being ready (image
    shown, no grey overlay), measured in the browser; alternating between the project with
    the model and the one without, after one warm-up open in each."""
    url, _ = label_studio
    driver = editor.d
    times: dict[bool, list[float]] = {True: [], False: []}
    warm = {}
    with shots.on_failure("task-open"):
        for connected, p in open_projects.items():
            warm[connected] = ui.time_open(driver, url, p["id"], p["tasks"][0])
        for i in range(1, OPENS):
            for connected, p in open_projects.items():
                times[connected].append(ui.time_open(driver, url, p["id"], p["tasks"][i]))
                if i == 1:
                    shots(f"task-open-{'with' if connected else 'without'}-backend")
    with_, without = statistics.median(times[True]), statistics.median(times[False])
    result = {
        "what": "seconds from a click on a task row in the Data Manager to the editor ready"
        " (image loaded and shown, no .lsf-label-view_loading), measured in Chromium",
        "with_backend_s": times[True],
        "without_backend_s": times[False],
        "first_open_s": {"with_backend": warm[True], "without_backend": warm[False]},
        "median_with_backend_s": with_,
        "median_without_backend_s": without,
        "ratio_with_to_without": with_ / without,
        "target_with_backend_s": 0.5,
    }
    path = shots.write("task-open-times.json", json.dumps(result, indent=2))
    ui.report(
        f"task open: {with_:.2f} s with the backend, {without:.2f} s without"
        f" (median of {OPENS - 1}; ratio {with_ / without:.2f}; target <= 0.5 s) -> {path}"
    )
