"""The Label Studio 1.23.2 web app in headless Chromium, driven with selenium as a user would.

Helpers of ``tests/test_ls_browser.py`` (which skips before importing this module when no
browser is installed): the login page, the Data Manager (open a task, select tasks, run an
action), the labeling editor (Auto-Annotation, smart tools, label chips, clicks on the image,
suggestions, accept, submit, the Regions panel), the Model settings page, and numbered
screenshots. The selectors and habits were checked against Label Studio 1.23.2:

* a label chip is released after each keypoint is placed: pick it again before the next click;
* pick the rectangle label chip *before* a smart rectangle tool (picking it after switches to
  the plain rectangle tool);
* the editor is ready when its image is loaded and shown and ``.lsf-label-view_loading`` (the
  grey overlay) is gone.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from ls_backend import rle

FLAGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-quic --no-first-run"
    " --disable-background-networking --disable-component-update --disable-sync"
    " --disable-dev-shm-usage --window-size=1400,1000"
).split()
#: Seconds to wait for a page or an answer: generous, the first call encodes the image on a
#: shared CPU.
WAIT = 120
#: The "Auto-Detect" button of the tool bar: hovering it shows the smart tools.
SMART_TOOLS = "button.lsf-tool_smart:not([aria-label])"
#: Submit, or Update for a task already annotated, in the editor's bottom bar.
SAVE_BUTTON = "[data-testid=bottombar-submit-button], [data-testid=bottombar-update-button]"
#: Whether the editor is ready: its image loaded and shown, no loading overlay.
READY_JS = """
const i = document.querySelector('.lsf-image img');
return !!i && i.complete && i.naturalWidth > 0 && i.offsetWidth > 0
    && !document.querySelector('.lsf-label-view_loading');
"""
#: Click ``arguments[0]`` and answer the milliseconds until the editor is ready (measured in
#: the page, checked on every animation frame; -1 after 100 s).
TIME_OPEN_JS = f"""
const [target, done] = [arguments[0], arguments[arguments.length - 1]];
const ready = () => {{ {READY_JS} }};
const start = performance.now();
target.click();
(function poll() {{
  const ms = performance.now() - start;
  if (ready()) done(ms);
  else if (ms > 100000) done(-1);
  else requestAnimationFrame(poll);
}})();
"""
#: The suggestions on screen (the selected annotation's): ``[id, region type, rle or null]``.
SUGGESTIONS_JS = """
const store = window.Htx && window.Htx.annotationStore;
const a = store && store.selected;
if (!a || !a.suggestions) return [];
const out = [];
a.suggestions.forEach((s, id) => out.push([id, s.type, s.rle ? Array.from(s.rle) : null]));
return out;
"""


def report(line: str) -> None:
    """A line for the person running the tests (shown with ``pytest -s``)."""
    sys.stdout.write(f"\n[ls-browser] {line}\n")


def chrome(binary: str, chromedriver: str, profile: Path) -> webdriver.Chrome:
    """Headless Chromium with its own profile folder."""
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    d = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=chromedriver), options=options
    )
    d.set_page_load_timeout(WAIT)
    d.set_script_timeout(WAIT)
    return d


class Shots:
    """Numbered screenshots of each step (and page sources, measurements) in ``folder``,
    copied to ``$PROMPTMOE_ARTIFACTS/ls-browser`` when that variable is set."""

    def __init__(self, driver, folder: Path):
        self.driver, self.folder, self.n = driver, folder, 0
        artifacts = os.environ.get("PROMPTMOE_ARTIFACTS")
        self.copy = Path(artifacts) / "ls-browser" if artifacts else None
        if self.copy:
            self.copy.mkdir(parents=True, exist_ok=True)

    def _keep(self, path: Path) -> Path:
        if self.copy:
            shutil.copy(path, self.copy / path.name)
        return path

    def __call__(self, name: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return self._keep(path)

    def write(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.write_text(text)
        return self._keep(path)

    def page_source(self, name: str) -> Path:
        return self.write(f"{name}.html", self.driver.page_source)

    @contextmanager
    def on_failure(self, step: str):
        """Keep a screenshot and the page source of what the page showed when ``step``
        failed."""
        try:
            yield
        except Exception:
            self(f"{step}-failure")
            self.page_source(f"{step}-failure-page")
            raise


def until(driver, what, message: str, seconds: float = WAIT):
    """Wait until ``what(driver)`` is truthy; the React app re-renders, so an element that
    went stale is looked up again on the next poll."""
    return WebDriverWait(
        driver, seconds, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    ).until(what, message)


def visible(driver, css: str) -> list:
    return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]


def visible_xpath(driver, xpath: str) -> list:
    return [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()]


def click(driver, css: str, message: str, xpath: bool = False) -> None:
    """Click the visible, enabled element ``css`` (or ``xpath``) once it is there (looked up
    afresh if it went stale between the look-up and the click)."""

    def attempt(d):
        (el, *_) = (visible_xpath(d, css) if xpath else visible(d, css)) or [None]
        if el is None or not el.is_enabled():
            return False
        el.click()
        return True

    until(driver, attempt, message)


def page_text(driver) -> str:
    """The text the page shows, whitespace collapsed."""
    return " ".join(driver.find_element(By.TAG_NAME, "body").text.split())


def login(driver, url: str, user: str, password: str, shots: Shots) -> None:
    """Log in through the real login page."""
    driver.get(f"{url}/user/login/")
    until(driver, lambda d: visible(d, "#email"), "no login form")
    shots("login-page")
    driver.find_element(By.ID, "email").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(
        driver,
        lambda d: (
            "/user/login" not in d.current_url
            and visible(d, f".lsf-menu-header__user[title='{user}']")
        ),
        "login did not lead to a page showing the user",
    )
    shots("logged-in")


# ---------------------------------------------------------------------- Data Manager
def data_manager(driver, url: str, project: int) -> list:
    """Open the project's Data Manager; its task rows once shown."""
    driver.get(f"{url}/projects/{project}/data")
    return until(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".lsf-table__row-wrapper"),
        "the Data Manager shows no task rows",
    )


def task_row(driver, task: int):
    """The Data Manager row of ``task`` once listed (its first cell after the checkbox is
    the ID)."""

    def row(d):
        for r in d.find_elements(By.CSS_SELECTOR, ".lsf-table__row-wrapper"):
            if r.text.split()[:1] == [str(task)]:
                return r
        return None

    return until(driver, row, f"task {task} is not listed in the Data Manager")


def time_open(driver, url: str, project: int, task: int) -> float:
    """Seconds from a click on ``task``'s row in the Data Manager to the editor being ready
    (measured in the browser)."""
    data_manager(driver, url, project)
    ms = driver.execute_async_script(TIME_OPEN_JS, task_row(driver, task))
    assert ms >= 0, f"task {task} of project {project} never became ready in the editor"
    return ms / 1000


def run_action(driver, url: str, project: int, tasks: list[int], action: str) -> None:
    """Select ``tasks`` in the Data Manager, pick ``action`` in the Actions menu (the
    "N Tasks" button) and confirm."""
    data_manager(driver, url, project)
    for task in tasks:
        box = task_row(driver, task).find_element(By.CSS_SELECTOR, "input[type=checkbox]")
        driver.execute_script("arguments[0].click()", box)  # the input itself is hidden
    click(
        driver, f"//button[normalize-space()='{len(tasks)} Tasks']", "no Actions menu", xpath=True
    )
    click(
        driver,
        f"//div[contains(@class,'lsf-actionButton')][normalize-space()='{action}']",
        f"no {action!r} in the Actions menu",
        xpath=True,
    )
    click(driver, "//button[normalize-space()='OK']", f"no confirmation of {action!r}", xpath=True)


# ---------------------------------------------------------------------- labeling editor
class Editor:
    """The labeling editor of one task, as the user sees and drives it."""

    def __init__(self, driver):
        self.d = driver

    def open(self, url: str, project: int, task: int) -> None:
        """Navigate to the task (``?task=ID`` in the Data Manager) and wait until ready (and
        its Submit button, or Update for a task already annotated, is shown)."""
        self.d.get(f"{url}/projects/{project}/data?task={task}")
        until(
            self.d,
            lambda d: d.execute_script(READY_JS) and visible(d, SAVE_BUTTON),
            f"task {task} did not become ready in the editor",
        )

    def chips(self) -> list[str]:
        """The label chips, one string per labels control (config order)."""
        return [
            " ".join(g.text.split()) for g in self.d.find_elements(By.CSS_SELECTOR, ".lsf-labels")
        ]

    def regions(self) -> list[tuple[str, str]]:
        """(region type, text) of each region listed in the Regions panel."""
        out = []
        for node in self.d.find_elements(By.CSS_SELECTOR, ".lsf-outliner [role=treeitem]"):
            kinds = [
                c.removeprefix("lsf-tree__node_type_")
                for c in node.get_attribute("class").split()
                if c.startswith("lsf-tree__node_type_")
            ]
            out.append((kinds[0] if kinds else "?", " ".join(node.text.split())))
        return out

    def region_kinds(self) -> list[str]:
        return [kind for kind, _ in self.regions()]

    def auto_annotation_on(self) -> None:
        """Turn Auto-Annotation on (it stays on for later tasks)."""
        css = "[data-testid=bottombar-auto-annotation-toggle]"
        toggle = self.d.find_elements(By.CSS_SELECTOR, css)
        if toggle and not toggle[0].is_selected():
            self.d.execute_script("arguments[0].click()", toggle[0])  # the input is hidden
            until(
                self.d,
                lambda d: d.find_element(By.CSS_SELECTOR, css).is_selected(),
                "Auto-Annotation did not turn on",
            )
        until(self.d, lambda d: visible(d, SMART_TOOLS), "no smart tools in the toolbar")

    def _chip(self, group: int, text: str):
        groups = self.d.find_elements(By.CSS_SELECTOR, ".lsf-labels")
        if len(groups) <= group:
            return None
        chips = groups[group].find_elements(
            By.XPATH, f".//span[contains(@class,'lsf-label__text') and text()='{text}']/.."
        )
        return chips[0] if len(chips) == 1 else None

    def label(self, group: int, text: str) -> None:
        """Select the chip ``text`` of the ``group``-th labels control (config order)."""

        def pick(d):
            chip = self._chip(group, text)
            if chip is None:
                return False
            if "lsf-label_selected" not in chip.get_attribute("class"):
                chip.click()
            chip = self._chip(group, text)
            return chip is not None and "lsf-label_selected" in chip.get_attribute("class")

        until(self.d, pick, f"cannot select the label chip {text} of labels control {group}")

    def tool(self, name: str) -> None:
        """Pick the smart tool ``name`` (key-point-tool, rectangle-tool,
        rectangle-3-point-tool) behind the Auto-Detect button."""
        css = f".lsf-toolbar__smart button[aria-label={name}]"

        def pick(d):
            ActionChains(d).move_to_element(visible(d, SMART_TOOLS)[0]).perform()
            button = visible(d, css)
            if button and "lsf-tool_active" not in button[0].get_attribute("class"):
                button[0].click()
            return "lsf-tool_active" in d.find_element(By.CSS_SELECTOR, css).get_attribute("class")

        until(self.d, pick, f"cannot select the smart tool {name}")
        active = [
            b.get_attribute("aria-label")
            for b in self.d.find_elements(By.CSS_SELECTOR, "button.lsf-tool_active")
        ]
        assert name in active, active

    def _at(self, x: float, y: float):
        """The stage and the offset from its centre of image pixel ``(x, y)`` as displayed.

        The editor measures points on the ``img`` element's box; the canvas stage that takes
        the mouse is a little smaller (about 2.6 % is cut on each side at this window
        size): a point outside it cannot be clicked."""
        img = self.d.find_element(By.CSS_SELECTOR, ".lsf-image img")
        width = int(img.get_attribute("naturalWidth"))
        height = int(img.get_attribute("naturalHeight"))
        r = img.rect
        stage = self.d.find_element(By.CSS_SELECTOR, ".lsf-object .konvajs-content")
        s = stage.rect
        sx, sy = r["x"] + r["width"] * x / width, r["y"] + r["height"] * y / height
        inside = s["x"] < sx < s["x"] + s["width"] and s["y"] < sy < s["y"] + s["height"]
        assert inside, f"image pixel {(x, y)} is outside the stage {s}"
        return stage, round(sx - s["x"] - s["width"] / 2), round(sy - s["y"] - s["height"] / 2)

    def click(self, x: float, y: float, alt: bool = False) -> None:
        """Click image pixel ``(x, y)``; with Alt held down when ``alt`` (a negative point)."""
        stage, dx, dy = self._at(x, y)
        chain = ActionChains(self.d).move_to_element_with_offset(stage, dx, dy)
        if alt:
            chain = chain.key_down(Keys.ALT).click().key_up(Keys.ALT)
        else:
            chain = chain.click()
        chain.perform()

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 5) -> None:
        """Press at image pixel ``start``, move to ``end`` in ``steps``, release."""
        stage, x0, y0 = self._at(*start)
        _, x1, y1 = self._at(*end)
        chain = ActionChains(self.d).move_to_element_with_offset(stage, x0, y0).click_and_hold()
        for k in range(1, steps + 1):
            chain = chain.move_to_element_with_offset(
                stage, x0 + (x1 - x0) * k // steps, y0 + (y1 - y0) * k // steps
            )
        chain.release().perform()

    def suggestions(self) -> list[list]:
        """``[id, region type, rle or None]`` of each suggestion on screen."""
        return self.d.execute_script(SUGGESTIONS_JS)

    def wait_suggestion(self, before: list[list] = ()) -> list[list]:
        """Wait for one suggestion ("1 suggestions" in the bottom bar) other than those of
        ``before`` (a later click replaces the suggestion); return it."""
        old = {s[0] for s in before}

        def new(d):
            shown = [e.text.strip() for e in visible(d, ".lsf-auto-accept__info")]
            now = self.suggestions()
            return now if shown == ["1 suggestions"] and {s[0] for s in now} - old else None

        return until(self.d, new, "no (new) suggestion reached the editor")

    def accept(self) -> None:
        """Accept the suggestion: it becomes one brush region of the Regions panel."""
        click(self.d, "[data-testid=bottombar-accept-suggestions-button]", "no accept button")
        until(
            self.d,
            lambda d: self.region_kinds() == ["brushregion"],
            "the accepted suggestion is not the one brush region of the Regions panel",
            seconds=30,
        )

    def submit(self) -> None:
        click(self.d, "[data-testid=bottombar-submit-button]", "no Submit button")
        until(
            self.d,
            lambda d: visible(d, "[data-testid=bottombar-update-button]"),
            "Submit did not turn into Update",
        )


def suggestion_mask(suggestion: list, height: int, width: int) -> np.ndarray:
    """The ``(height, width) bool`` mask of a brush suggestion from :meth:`Editor.suggestions`."""
    _, kind, rle_words = suggestion
    assert kind == "brushregion" and rle_words, suggestion[:2]
    return rle.decode(rle_words, height, width)


# ---------------------------------------------------------------------- settings
def connect_model(driver, url: str, project: int, backend_url: str, title: str) -> None:
    """Settings -> Model -> Connect Model: name, URL, Interactive preannotations on,
    Validate and Save."""
    driver.get(f"{url}/projects/{project}/settings/ml")
    click(driver, "//button[normalize-space()='Connect Model']", "no Connect Model", xpath=True)
    until(driver, lambda d: visible(d, "input[name=url]"), "no Connect Model form")
    driver.find_element(By.CSS_SELECTOR, "input[name=title]").send_keys(title)
    driver.find_element(By.CSS_SELECTOR, "input[name=url]").send_keys(backend_url)
    interactive = driver.find_element(By.CSS_SELECTOR, "input[name=is_interactive]")
    if not interactive.is_selected():
        driver.execute_script("arguments[0].click()", interactive)  # the input is hidden
    click(driver, "//button[normalize-space()='Validate and Save']", "no Validate", xpath=True)
