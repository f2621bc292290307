"""The real Label Studio 1.23.2 editor in headless Chromium, driven as a user would.

Log in through the login page, open the project's first task in the labeling editor, turn
Auto-Annotation on, pick the smart keypoint tool and the keypoint "Person" label, click on
the left person, accept the suggestion, submit, and decode the saved annotation: its brush
mask must match the ground truth. Label Studio and the backend run on loopback (the fixtures
of test_ls_e2e, imported: this module starts its own). Screenshots of every step are kept in
a folder under pytest's tmp dir (printed), and copied to ``$PROMPTMOE_ARTIFACTS/ls-browser``
when that variable is set. Skipped when chromium, chromedriver or selenium is missing
(``make browser`` installs them on Debian).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import requests

from ls_backend.results import brush_masks
from promptmoe_plugin.eval.metrics import iou
import test_ls_e2e as e2e

# The fixtures of test_ls_e2e (module-scoped: this module gets its own Label Studio and backend).
label_studio, backend, files, project = e2e.label_studio, e2e.backend, e2e.files, e2e.project

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
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.labelstudio

USER, PASSWORD = "e2e@example.com", "e2e-pass-1234"
FLAGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-quic --no-first-run"
    " --disable-background-networking --disable-component-update --disable-sync"
    " --disable-dev-shm-usage --window-size=1400,1000"
).split()
#: Generous: the first call encodes the image on a shared CPU.
WAIT = 120
#: Where the user clicks on the left person (percent of the image, as in test_ls_e2e).
CLICK = (16.0, 80.0)


def _report(line: str) -> None:
    """A line for the person running the tests (shown with ``pytest -s``)."""
    sys.stdout.write(f"\n[ls-browser] {line}\n")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    d = webdriver.Chrome(service=service, options=options)
    d.set_page_load_timeout(WAIT)
    yield d
    d.quit()


class Shots:
    """Numbered screenshots of each step (and the page source on failure)."""

    def __init__(self, driver, folder: Path):
        self.driver, self.folder, self.n = driver, folder, 0
        artifacts = os.environ.get("PROMPTMOE_ARTIFACTS")
        self.copy = Path(artifacts) / "ls-browser" if artifacts else None
        if self.copy:
            self.copy.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        if self.copy:
            shutil.copy(path, self.copy / path.name)

    def page_source(self, name: str) -> None:
        path = self.folder / f"{name}.html"
        path.write_text(self.driver.page_source)
        if self.copy:
            shutil.copy(path, self.copy / path.name)


@pytest.fixture(scope="module")
def shots(driver, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ls_browser_screenshots")
    _report(f"screenshots: {folder}")
    return Shots(driver, folder)


def _until(driver, what, message: str, seconds: float = WAIT):
    """Wait until ``what(driver)`` is truthy; the React editor re-renders, so an element
    that went stale is looked up again on the next poll."""
    return WebDriverWait(
        driver, seconds, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    ).until(what, message)


def _visible(driver, css: str):
    return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]


def _click(driver, css: str, message: str) -> None:
    """Click the visible element ``css`` once it is there (looked up afresh if it went
    stale between the look-up and the click)."""

    def click(d):
        (el, *_) = _visible(d, css) or [None]
        if el is None or not el.is_enabled():
            return False
        el.click()
        return True

    _until(driver, click, message)


def _chip(driver, group: int, text: str):
    """The label chip ``text`` of the ``group``-th labels control (config order)."""
    groups = driver.find_elements(By.CSS_SELECTOR, ".lsf-labels")
    if len(groups) <= group:
        return None
    chips = groups[group].find_elements(
        By.XPATH, f".//span[contains(@class,'lsf-label__text') and text()='{text}']/.."
    )
    return chips[0] if len(chips) == 1 else None


def _regions(driver) -> list[tuple[str, str]]:
    """(region type, text) of each region listed in the Regions panel."""
    out = []
    for node in driver.find_elements(By.CSS_SELECTOR, ".lsf-outliner [role=treeitem]"):
        kinds = [
            c.removeprefix("lsf-tree__node_type_")
            for c in node.get_attribute("class").split()
            if c.startswith("lsf-tree__node_type_")
        ]
        out.append((kinds[0] if kinds else "?", " ".join(node.text.split())))
    return out


def _annotations(url: str, task: int) -> list[dict]:
    r = requests.get(
        f"{url}/api/tasks/{task}/annotations",
        headers={"Authorization": f"Token {e2e.TOKEN}"},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def test_smart_keypoint_in_the_real_editor(label_studio, project, files, driver, shots):
    url, _ = label_studio
    _, gt = files
    task = project["tasks"][0]
    d = driver
    try:
        # 1. The real login page.
        d.get(f"{url}/user/login/")
        _until(d, lambda d: _visible(d, "#email"), "no login form")
        shots("login-page")
        d.find_element(By.ID, "email").send_keys(USER)
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        _until(
            d,
            lambda d: (
                "/user/login" not in d.current_url
                and _visible(d, f".lsf-menu-header__user[title='{USER}']")
            ),
            "login did not lead to a page showing the user",
        )
        shots("logged-in")

        # 2. The first task in the labeling editor: the image and the label chips show.
        start = time.perf_counter()
        d.get(f"{url}/projects/{project['id']}/data?task={task}")
        _until(
            d,
            lambda d: (
                d.execute_script(
                    "const i = document.querySelector('.lsf-image img');"
                    "return !!i && i.complete && i.naturalWidth > 0 && i.offsetWidth > 0"
                )
                and len(d.find_elements(By.CSS_SELECTOR, ".lsf-labels")) == 3
                and _visible(d, "[data-testid=bottombar-submit-button]")
            ),
            "the task did not become visible in the editor",
        )
        opened = time.perf_counter() - start
        _report(f"task {task} visible in the editor {opened:.2f} s after navigation")
        shots("task-open")
        chips = [" ".join(g.text.split()) for g in d.find_elements(By.CSS_SELECTOR, ".lsf-labels")]
        # brush, keypoint, rectangle labels, with their hotkeys
        assert chips == ["Person 1 Table 2", "Person 3 Table 4", "Person 5 Table 6"], chips
        assert _regions(d) == [], "a fresh task shows regions (an empty prediction?)"

        # 3. Auto-Annotation on (when the toggle exists), the smart keypoint tool, the label.
        toggle = d.find_elements(By.CSS_SELECTOR, "[data-testid=bottombar-auto-annotation-toggle]")
        if toggle and not toggle[0].is_selected():
            d.execute_script("arguments[0].click()", toggle[0])  # the input itself is hidden
            _until(
                d,
                lambda d: d.find_element(
                    By.CSS_SELECTOR, "[data-testid=bottombar-auto-annotation-toggle]"
                ).is_selected(),
                "Auto-Annotation did not turn on",
            )
        # The smart tools sit behind the "Auto-Detect" button of the toolbar: hover, pick.
        smart = "button.lsf-tool_smart:not([aria-label])"
        _until(d, lambda d: _visible(d, smart), "no smart tools in the toolbar")
        shots("auto-annotation-on")

        def pick_tool(d):
            ActionChains(d).move_to_element(_visible(d, smart)[0]).perform()
            kp = _visible(d, ".lsf-toolbar__smart button[aria-label=key-point-tool]")
            if kp:
                kp[0].click()
            return "lsf-tool_active" in d.find_element(
                By.CSS_SELECTOR, ".lsf-toolbar__smart button[aria-label=key-point-tool]"
            ).get_attribute("class")

        _until(d, pick_tool, "cannot select the smart keypoint tool")

        def pick_label(d):
            chip = _chip(d, 1, "Person")
            if chip is None:
                return False
            if "lsf-label_selected" not in chip.get_attribute("class"):
                chip.click()
            chip = _chip(d, 1, "Person")
            return chip is not None and "lsf-label_selected" in chip.get_attribute("class")

        _until(d, pick_label, "cannot select the keypoint label Person")
        active = [
            b.get_attribute("aria-label")
            for b in d.find_elements(By.CSS_SELECTOR, "button.lsf-tool_active")
        ]
        assert "key-point-tool" in active, active
        shots("smart-keypoint-person-selected")

        # The click, where the user sees the left person on the displayed image.
        img = d.find_element(By.CSS_SELECTOR, ".lsf-image img").rect
        stage = d.find_element(By.CSS_SELECTOR, ".lsf-object .konvajs-content")
        s = stage.rect
        x = img["x"] + img["width"] * CLICK[0] / 100
        y = img["y"] + img["height"] * CLICK[1] / 100
        assert s["x"] < x < s["x"] + s["width"] and s["y"] < y < s["y"] + s["height"]
        clicked = time.perf_counter()
        ActionChains(d).move_to_element_with_offset(
            stage, round(x - s["x"] - s["width"] / 2), round(y - s["y"] - s["height"] / 2)
        ).click().perform()
        _until(
            d,
            lambda d: any(
                e.text.strip() == "1 suggestions" for e in _visible(d, ".lsf-auto-accept__info")
            ),
            "no suggestion reached the editor after the smart keypoint click",
        )
        _report(f"suggestion shown {time.perf_counter() - clicked:.2f} s after the click")
        shots("suggestion")

        # Accept: the suggestion becomes the one region of the panel, a Person brush.
        _click(d, "[data-testid=bottombar-accept-suggestions-button]", "no accept button")
        _until(
            d,
            lambda d: [k for k, _ in _regions(d)] == ["brushregion"],
            "the accepted suggestion is not a brush region in the Regions panel",
            seconds=30,
        )
        ((_, text),) = _regions(d)
        assert "Person" in text.split(), text
        shots("accepted")

        # Submit, then decode what Label Studio saved.
        _click(d, "[data-testid=bottombar-submit-button]", "no Submit button")
        _until(
            d,
            lambda d: _visible(d, "[data-testid=bottombar-update-button]"),
            "Submit did not turn into Update",
        )
        shots("submitted")
        (annotation,) = _annotations(url, task)
        ((label, mask),) = brush_masks(annotation["result"])
        score = iou(mask, gt["person_left"])
        _report(f"saved brush mask: label {label}, IoU {score:.3f} against person_left")
        assert label == "Person" and score > 0.6, (label, score)
    except Exception:  # keep what the page showed
        shots("failure")
        shots.page_source("failure-page")
        raise
