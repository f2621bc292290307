"""The persistent pre-annotation job: batch tasks that do not fit in a request.

Label Studio's *Retrieve Predictions* sends one batch ``/predict`` and gives up after
``ML_TIMEOUT_PREDICT`` (100 s).  The model (:meth:`~.model.PromptMoEModel.predict`) hands
the tasks to this job and waits at most ``BATCH_SECONDS``: the predictions ready by then
are answered in the request (Label Studio stores them), every other task is answered
``[]`` (Label Studio stores nothing for it) and its prediction is written back later with
:class:`~.writeback.LabelStudioWriter`, with the model version it was made by.

Rows live in SQLite (``<MODEL_DIR>/jobs.sqlite3``), one per (project, task id, model
version), with state ``queued`` / ``running`` / ``done`` / ``failed`` / ``skipped``, the
reason, timestamps, the task JSON and the labeling config to redo it.  Worker threads
predict; one writer thread writes to Label Studio meanwhile.  Each finished
prediction goes to exactly one place: the waiting request when it is still waiting (under
the job's lock), else Label Studio.  A restart puts the rows a crash left ``running``
back in the queue; since a worker first asks Label Studio whether the task already holds
a prediction of the version (and :meth:`~.writeback.LabelStudioWriter.write` asks again),
nothing is written twice.  One backend process owns a ``MODEL_DIR`` (gunicorn
``--workers 1``, threads for concurrency); a lock file held for the process's life
enforces it (:class:`JobBusyError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .label_config import LabelConfig, parse_label_config
from .tasks import MODEL_VERSION_PREFIX, failure_reason
from .writeback import LabelStudioError, LabelStudioWriter

log = logging.getLogger(__name__)

#: The states of a row, in the order ``GET /jobs`` lists their counts.
STATES = ("queued", "running", "done", "failed", "skipped")
#: Seconds a worker waits before retrying a task when Label Studio cannot be reached.
RETRY_SECONDS = 10.0
#: Recent finished tasks whose mean duration gives the ETA.
MEAN_OVER = 100
#: Failed rows listed by :meth:`PreAnnotationJob.status`, newest first.
FAILURES_SHOWN = 10

#: Why a task without drafts gets no prediction (a ``skipped`` row).
NO_DRAFT = "nothing to predict from: no brush, polygon or rectangle draft and no mask image"
#: Why a queued task was not predicted again (a ``done`` row).
ALREADY_PREDICTED = "Label Studio already holds a prediction of this model version"

#: Why a queued row is back in the queue after a restart (it may have been written).
RESUMED = "resumed after a restart"

#: ``annotate(task, config, project)``: the prediction of a task, None when it has nothing
#: to predict from (:meth:`~.model.PromptMoEModel.annotate`).
Annotate = Callable[[dict, LabelConfig, str], dict | None]
#: ``(project, task id, model version)``: one row.
Key = tuple[str, int, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS configs (digest TEXT PRIMARY KEY, xml TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    project TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    task TEXT NOT NULL,
    config TEXT NOT NULL,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    seconds REAL,
    PRIMARY KEY (project, task_id, model_version)
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, queued_at);
"""


class JobBusyError(RuntimeError):
    """Another process holds the job's queue (one backend process per ``MODEL_DIR``)."""


@dataclass
class _Waiter:
    """A request waiting for the predictions of some rows: ``answers`` fills in (task id ->
    prediction, None for none) as workers finish them."""

    keys: set[Key]
    answers: dict[int, dict | None] = field(default_factory=dict)


def _stored_task(task: dict) -> str:
    """The task JSON kept in a row: without this backend's own predictions (never drafts,
    and the bulk of a task that was predicted before)."""
    preds = [
        p
        for p in task.get("predictions") or []
        if not (
            isinstance(p, dict) and str(p.get("model_version", "")).startswith(MODEL_VERSION_PREFIX)
        )
    ]
    return json.dumps({**task, "predictions": preds}, separators=(",", ":"))


class PreAnnotationJob:
    """The queue in SQLite at ``path`` and ``workers`` threads that run ``annotate`` on
    queued rows and write the predictions with ``writer``."""

    def __init__(self, path: Path, annotate: Annotate, writer: LabelStudioWriter, workers: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        # Held for the life of the process (the OS drops it when the process dies): a
        # second process never resets, claims or writes this queue's rows.
        self._owner = path.with_suffix(".lock").open("a")
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._owner.close()
            raise JobBusyError(
                f"{path} belongs to another backend process (run one process per MODEL_DIR, "
                "e.g. gunicorn --workers 1 --threads 4)"
            ) from exc
        self.path = path
        self.annotate = annotate
        self.writer = writer
        self.workers = workers
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting: dict[Key, _Waiter] = {}
        self._threads: list[threading.Thread] = []
        #: Predictions waiting for the writer thread: (row, prediction, start, seconds).
        self._writes: queue.Queue[tuple[Key, dict, float, float]] = queue.Queue()
        self._worked = False  # since the queue was last empty: for the summary log line
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL with NORMAL sync: a killed process loses nothing committed, and a commit
        # costs no fsync (a batch of thousands of tasks is queued in well under a second).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        resumed = self._db.execute(
            "UPDATE tasks SET state = 'queued', reason = ?, started_at = NULL "
            "WHERE state = 'running'",
            (RESUMED,),
        ).rowcount
        queued = self._count("queued")
        if queued:
            log.info(
                "pre-annotation job %s: %d task(s) queued (%d were running when the backend "
                "stopped); resuming when the workers start",
                path,
                queued,
                resumed,
            )

    # ------------------------------------------------------------------ requests
    def start(self) -> None:
        """Start the worker threads and the writer thread (once; later calls do nothing)."""
        with self._lock:
            if not self._threads:
                writer = threading.Thread(
                    target=self._write_loop, name="promptmoe-job-writer", daemon=True
                )
                self._threads.append(writer)
                writer.start()
            while len(self._threads) < self.workers + 1:
                thread = threading.Thread(
                    target=self._work, name=f"promptmoe-job-{len(self._threads) - 1}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def submit(
        self, project: str, tasks: list[dict], config: str, version: str, wait: float
    ) -> dict[int, dict | None]:
        """Queue ``tasks`` (each with an integer ``id``) of ``project`` for ``version`` and
        wait up to ``wait`` seconds for them.

        Returns the answers ready by then, task id -> prediction (None: the task turned out
        to have nothing to predict from, or failed; its row says why).  Those are the
        caller's to answer and are never written back; every other task is written back
        by the job.  A task already queued or running stays so (its waiting request, if
        any, keeps it); one done, failed or skipped is queued again (a done one is not
        written twice: the worker first checks Label Studio).
        """
        now = time.time()
        digest = hashlib.sha256(config.encode()).hexdigest()
        waiter = _Waiter(set())
        with self._lock, self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR IGNORE INTO configs (digest, xml) VALUES (?, ?)", (digest, config)
            )
            for task in tasks:
                key = (project, int(task["id"]), version)
                self._db.execute(
                    "INSERT INTO tasks (project, task_id, model_version, state, task, config, "
                    "queued_at) VALUES (?, ?, ?, 'queued', ?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET state = 'queued', "
                    "reason = CASE WHEN state = 'done' THEN 'queued again' ELSE NULL END, "
                    "task = excluded.task, config = excluded.config, "
                    "queued_at = excluded.queued_at, started_at = NULL, finished_at = NULL, "
                    "seconds = NULL "
                    "WHERE state NOT IN ('queued', 'running')",
                    (*key, _stored_task(task), digest, now),
                )
                if wait > 0 and key not in self._waiting:
                    waiter.keys.add(key)
                    self._waiting[key] = waiter
            self._changed.notify_all()
        self.start()
        deadline = time.monotonic() + wait
        with self._lock:
            while len(waiter.answers) < len(waiter.keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            for key in waiter.keys:  # the rest is the job's to write back
                if self._waiting.get(key) is waiter:
                    del self._waiting[key]
        return waiter.answers

    def record(self, project: str, task: dict, version: str, state: str, reason: str) -> None:
        """Record a task the caller settled without the job (``skipped``: nothing to predict
        from; ``failed``: unusable) unless the job has it queued or running."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO tasks (project, task_id, model_version, state, reason, task, "
                "config, queued_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, '', ?, ?) "
                "ON CONFLICT DO UPDATE SET state = excluded.state, reason = excluded.reason, "
                "finished_at = excluded.finished_at WHERE state NOT IN ('queued', 'running')",
                (project, int(task["id"]), version, state, reason, _stored_task(task), now, now),
            )

    def status(self) -> dict:
        """Counts per state, the mean seconds of a task (recent ones), the ETA of the
        queued and running ones with the job's workers, and the latest failures."""
        with self._lock:
            counts = dict.fromkeys(STATES, 0)
            for state, n in self._db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"):
                counts[state] = n
            (mean,) = self._db.execute(
                "SELECT AVG(seconds) FROM (SELECT seconds FROM tasks WHERE state = 'done' "
                "AND seconds IS NOT NULL AND reason != ? ORDER BY finished_at DESC LIMIT ?)",
                (ALREADY_PREDICTED, MEAN_OVER),
            ).fetchone()
            failures = self._db.execute(
                "SELECT project, task_id, model_version, reason FROM tasks WHERE state = 'failed' "
                "ORDER BY finished_at DESC LIMIT ?",
                (FAILURES_SHOWN,),
            ).fetchall()
        left = counts["queued"] + counts["running"]
        return {
            "counts": counts,
            "workers": self.workers,
            "mean_task_seconds": mean,
            "eta_seconds": left * mean / self.workers if mean is not None else None,
            "writes_to": self.writer.url,
            "failures": [
                {"project": p, "task": t, "model_version": v, "reason": r}
                for p, t, v, r in failures
            ],
        }

    # ------------------------------------------------------------------ workers
    def _count(self, state: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM tasks WHERE state = ?", (state,)).fetchone()[
            0
        ]

    def _claim(self) -> tuple[Key, str, str, bool] | None:
        """Under the lock: the next queued row (those a request waits for first), marked
        running; its key, task JSON, labeling config, and whether Label Studio may already
        hold its prediction (a row resumed, retried or queued again after it was done:
        its reason says so)."""
        row = None
        for key in self._waiting:
            row = self._db.execute(
                "SELECT project, task_id, model_version, task, config, reason FROM tasks "
                "WHERE project = ? AND task_id = ? AND model_version = ? AND state = 'queued'",
                key,
            ).fetchone()
            if row:
                break
        if row is None:
            row = self._db.execute(
                "SELECT project, task_id, model_version, task, config, reason FROM tasks "
                "WHERE state = 'queued' ORDER BY queued_at, task_id LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        key = (row[0], row[1], row[2])
        self._db.execute(
            "UPDATE tasks SET state = 'running', started_at = ? WHERE project = ? AND "
            "task_id = ? AND model_version = ?",
            (time.time(), *key),
        )
        (xml,) = self._db.execute("SELECT xml FROM configs WHERE digest = ?", (row[4],)).fetchone()
        return key, row[3], xml, row[5] is not None

    def _finish(self, key: Key, state: str, reason: str | None) -> None:
        """Under the lock: the row's final state."""
        now = time.time()
        self._db.execute(
            "UPDATE tasks SET state = ?, reason = ?, finished_at = ?, seconds = ? - started_at "
            "WHERE project = ? AND task_id = ? AND model_version = ?",
            (state, reason, now, now, *key),
        )
        self._changed.notify_all()

    def _answer(self, key: Key, prediction: dict | None) -> bool:
        """Under the lock: hand ``prediction`` to the request waiting for ``key``, if one
        still is; whether one was."""
        waiter = self._waiting.pop(key, None)
        if waiter is not None:
            waiter.answers[key[1]] = prediction
            self._changed.notify_all()
        return waiter is not None

    def _work(self) -> None:
        while True:
            with self._lock:
                claimed = self._claim()
                while claimed is None:
                    if self._worked and not self._count("running"):
                        self._worked = False
                        counts = {s: self._count(s) for s in STATES}
                        log.info("pre-annotation job: queue empty; %s", counts)
                    self._changed.wait()
                    claimed = self._claim()
                self._worked = True
            self._run(*claimed)

    def _predict(
        self, key: Key, task_json: str, config: str, check: bool
    ) -> tuple[dict | None, str | None]:
        """The prediction of a claimed row, or None and why not; with ``check``, None when
        Label Studio already holds one of the version (a fresh row skips that call: the
        request just said it does not, and the write asks again anyway)."""
        project, task_id, version = key
        if check and version in self.writer.versions(task_id):
            return None, ALREADY_PREDICTED
        task = json.loads(task_json)
        prediction = self.annotate(task, parse_label_config(config), project)
        return (prediction, None) if prediction else (None, NO_DRAFT)

    def _run(self, key: Key, task_json: str, config: str, check: bool) -> None:
        """Predict one claimed row and deliver the prediction: to the waiting request, else
        to the writer thread (:meth:`_write_loop`), so the next task is predicted while
        this one is written to Label Studio."""
        project, task_id, _ = key
        start = time.perf_counter()
        with self._recording_errors(key):
            prediction, reason = self._predict(key, task_json, config, check)
            predicted = time.perf_counter() - start
            with self._lock:
                answered = self._answer(key, prediction)
                if prediction is not None and answered:
                    reason = "answered in the request"
                if reason is not None:
                    self._finish(key, "skipped" if reason == NO_DRAFT else "done", reason)
            if reason is None:
                assert prediction is not None
                self._writes.put((key, prediction, start, predicted))
                return
            log.info(
                "task %s (project %s): %s (%.1f s)",
                task_id,
                project,
                reason,
                time.perf_counter() - start,
            )

    def _write_loop(self) -> None:
        """The writer thread: predictions to Label Studio, one at a time; a row is ``done``
        once written (a crash before leaves it ``running``: resumed, asked, not doubled)."""
        while True:
            key, prediction, start, predicted = self._writes.get()
            project, task_id, _ = key
            with self._recording_errors(key):
                self.writer.write(task_id, prediction)
                with self._lock:
                    self._finish(key, "done", "written to Label Studio")
                log.info(
                    "task %s (project %s): %d region(s) written to Label Studio as %s "
                    "(%.2f s: %.2f s predicting)",
                    task_id,
                    project,
                    sum(r.get("type") == "brushlabels" for r in prediction["result"]),
                    prediction["model_version"],
                    time.perf_counter() - start,
                    predicted,
                )

    @contextlib.contextmanager
    def _recording_errors(self, key: Key) -> Iterator[None]:
        """Errors end the row as failed with the reason; Label Studio out of reach puts it
        back in the queue."""
        project, task_id, _ = key
        try:
            yield
        except LabelStudioError as exc:
            self._failed(key, str(exc), retry=exc.unreachable)
        except Exception as exc:  # this row fails with its reason; the others go on
            self._failed(key, failure_reason(exc, f"{task_id} (project {project})"), retry=False)

    def _failed(self, key: Key, reason: str, retry: bool) -> None:
        """End a row as failed with ``reason``, or (``retry``) queue it again after a pause."""
        project, task_id, _ = key
        with self._lock:
            self._answer(key, None)
            if not retry:
                self._finish(key, "failed", reason)
                log.warning("task %s (project %s) failed: %s", task_id, project, reason)
                return
            self._db.execute(
                "UPDATE tasks SET state = 'queued', reason = ?, started_at = NULL "
                "WHERE project = ? AND task_id = ? AND model_version = ?",
                (f"retrying: {reason}", *key),
            )
        log.warning(
            "task %s (project %s): %s; retrying in %.0f s", task_id, project, reason, RETRY_SECONDS
        )
        time.sleep(RETRY_SECONDS)
