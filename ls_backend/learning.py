"""Active learning from Label Studio's webhooks.

* A submitted annotation: its brush regions are checked against their image (it must load,
  and each mask must have its size) and become reference exemplars of their labels
  (SmartSAM prefers objects like them on first clicks); each label's final mask is paired
  with the draft the backend refined for that task, if any.  The same event delivered
  twice stores nothing new (the annotation's content digest is recorded last).
* A deleted annotation: its references and pairs go.
* ``START_TRAINING``: queued for :class:`TrainingQueue`'s one background worker, which
  refits the PromptMoE router on every stored (draft, final) pair; the new weights are
  written atomically to ``<MODEL_DIR>/routers/router-r<N>.pt`` and recorded as version
  ``N`` only once complete, so a crash at any moment loses no version reported as done.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptmoe_plugin.atomic import replaced_atomically
from promptmoe_plugin.experts.depth import DepthEstimator
from promptmoe_plugin.router import Router, load_router
from promptmoe_plugin.selector_data import refit_router
from promptmoe_plugin.sam import SamEngine
from promptmoe_plugin.smartsam.intent import Intent

from .images import ImageFetcher, ImageFetchError
from .label_config import parse_label_config
from .references import Reference, ReferenceStore, pack_mask
from .tasks import TaskError, annotation_regions, project_id

try:  # a lock between processes sharing one MODEL_DIR (POSIX); threads use TrainingQueue's
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

#: How long a reference whose image failed (fetch error, size changed) is left out of
#: first clicks before its image is tried again.
BAD_REFERENCE_RETRY_SECONDS = 600.0


class ReferenceFeatures:
    """The intent's features of stored references, computed once and kept in the store
    (under the intent's name)."""

    def __init__(self, intent: Intent, store: ReferenceStore, fetcher: ImageFetcher):
        self.intent = intent
        self.store = store
        self.fetcher = fetcher
        self._shape: tuple[int, ...] | None = None
        self._bad: dict[tuple, float] = {}  # reference -> time its image failed
        self._bad_lock = threading.Lock()

    def of_label(self, project: str, label: str, limit: int) -> list[np.ndarray]:
        """Features of the newest ``limit`` references of ``label`` (unusable ones left out)."""
        refs = self.store.references(project, label, limit)
        return [f for f in map(self, refs) if f is not None]

    def __call__(self, ref: Reference, image: np.ndarray | None = None) -> np.ndarray | None:
        """The ``(D,) float32`` feature of ``ref``, or None (intent ``none``, or its image
        cannot be fetched or changed size: then it is not fetched again for
        :data:`BAD_REFERENCE_RETRY_SECONDS`).  ``image``: its image, already fetched."""
        name = self.intent.name
        if name == "none":
            return None
        cached = self.store.features(ref, name)
        if cached is not None and cached.shape == self.shape():
            return cached  # (features of another shape come from an older intent: redo)
        key = (ref.project, ref.annotation, ref.region, ref.image_url)
        with self._bad_lock:
            failed = self._bad.get(key)
        if failed is not None and time.monotonic() - failed < BAD_REFERENCE_RETRY_SECONDS:
            return None
        if image is None:
            try:
                image = self.fetcher.image(ref.image_url)
            except ImageFetchError as exc:
                self._failed(key, f"{exc}")
                return None
        if image.shape[:2] != ref.mask.shape:
            self._failed(key, "image size changed")
            return None
        features = self.intent.reference_features(image, ref.mask)
        self.store.put_features(ref, name, features)
        return features

    def _failed(self, key: tuple, reason: str) -> None:
        log.warning(
            "reference %s/%s left out of first clicks for %.0f s: %s",
            key[1],
            key[2],
            BAD_REFERENCE_RETRY_SECONDS,
            reason,
        )
        with self._bad_lock:
            if len(self._bad) > 10_000:
                self._bad.clear()
            self._bad[key] = time.monotonic()

    def shape(self) -> tuple[int, ...]:
        """Shape of the intent's reference features, measured once on a tiny image."""
        if self._shape is None:
            image = np.zeros((32, 32, 3), np.uint8)
            mask = np.zeros((32, 32), bool)
            mask[8:24, 8:24] = True
            self._shape = self.intent.reference_features(image, mask).shape
        return self._shape


def _int_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TaskError(f"{what} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise TaskError(f"{what} must be an integer, got {value!r}") from None


def _digest(task: int, url: str, regions: list[tuple[str, str, np.ndarray]]) -> str:
    """A digest of what an annotation event would store."""
    h = hashlib.sha256(f"{task}\0{url}".encode())
    for region, label, mask in regions:
        h.update(f"\0{region}\0{label}\0{mask.shape}\0".encode())
        h.update(pack_mask(mask))
    return h.hexdigest()


def store_annotation(data: dict, store: ReferenceStore, features: ReferenceFeatures) -> dict:
    """``ANNOTATION_CREATED`` / ``_UPDATED``: make the annotation's brush regions that fit
    their image the references of its id, pair each label's union with the label's stored
    draft, and compute the references' features.

    Returns the counts and ``skipped``: the regions not stored and why (the image does not
    load, or the mask's size is not the image's).  The same content for the same annotation
    id again (a webhook delivered twice) stores nothing and answers ``unchanged``."""
    project = project_id(data.get("project"))
    project_data = data.get("project") if isinstance(data.get("project"), dict) else {}
    config = parse_label_config(project_data.get("label_config", ""))
    ann, task = data.get("annotation"), data.get("task")
    if not (isinstance(ann, dict) and isinstance(task, dict) and "id" in ann and "id" in task):
        raise TaskError("the webhook payload needs annotation.id and task.id")
    annotation = _int_id(ann["id"], "annotation.id")
    task_id = _int_id(task["id"], "task.id")
    url = (task.get("data") if isinstance(task.get("data"), dict) else {}).get(config.image_key)
    if not url or not isinstance(url, str):
        raise TaskError(f"task {task_id} has no image in data.{config.image_key}")
    regions = annotation_regions(ann, config)
    digest = _digest(task_id, url, regions)
    if store.annotation_digest(project, annotation) == digest:
        return {
            "unchanged": True,
            "detail": f"annotation {annotation} is already stored with this content",
        }
    good, skipped, image = _check_regions(regions, url, features.fetcher)
    store.replace_annotation(project, annotation, task_id, url, good)
    finals: dict[str, np.ndarray] = {}
    for _, label, mask in good:
        finals[label] = finals.get(label, np.zeros_like(mask)) | mask
    pairs = store.pair_annotation(project, annotation, task_id, finals)
    computed = sum(
        features(Reference(project, annotation, region, label, url, mask), image) is not None
        for region, label, mask in good
    )
    if image is not None or not regions:
        # Done: a second delivery of this content changes nothing.  (Not when the image
        # failed to load: a later delivery tries again.)
        store.mark_annotation(project, annotation, task_id, digest)
    out: dict = {"references": len(good), "pairs": pairs, "features": computed}
    if skipped:
        out["skipped"] = skipped
        reasons = sorted({s["reason"] for s in skipped})
        out["detail"] = f"{len(skipped)} region(s) not stored: " + "; ".join(reasons)
        log.warning("annotation %s: %s", annotation, out["detail"])
    return out


def _check_regions(
    regions: list[tuple[str, str, np.ndarray]], url: str, fetcher: ImageFetcher
) -> tuple[list[tuple[str, str, np.ndarray]], list[dict], np.ndarray | None]:
    """(regions to store, ``[{"region", "label", "reason"}]`` skipped, the image or None):
    a region is stored only if its image loads and its mask has the image's size."""
    if not regions:
        return [], [], None
    try:
        image = fetcher.image(url)
    except ImageFetchError as exc:
        reason = f"image not usable: {exc}"
        return [], [{"region": r, "label": lab, "reason": reason} for r, lab, _ in regions], None
    h, w = image.shape[:2]
    good, skipped = [], []
    for region, label, mask in regions:
        if mask.shape == (h, w):
            good.append((region, label, mask))
        else:
            reason = f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}"
            skipped.append({"region": region, "label": label, "reason": reason})
    return good, skipped, image


def delete_annotations(event: str, data: dict, store: ReferenceStore) -> dict:
    """``ANNOTATION_DELETED`` / ``ANNOTATIONS_DELETED``: drop the references and pairs of
    the annotations named (in the payload's project, or any project when it names none).
    Deleting what is gone already (the event delivered twice) is fine: it deletes 0."""
    anns = data.get("annotations") or [data.get("annotation") or {}]
    if not isinstance(anns, list):
        raise TaskError(f"{event}: annotations must be a list of {{'id': ...}} objects")
    ids = [_int_id(a["id"], "annotation id") for a in anns if isinstance(a, dict) and "id" in a]
    if not ids:
        raise TaskError(f"{event} without annotation ids")
    project = project_id(data.get("project")) if data.get("project") else None
    return {"deleted_references": sum(store.delete_annotation(project, i) for i in ids)}


# ---------------------------------------------------------------------- router versions
@dataclass(frozen=True)
class Refit:
    """A refitted router, its store version and weights file, the pairs it saw, its figures."""

    router: Router
    version: int
    path: Path
    pairs: int
    figures: dict


def load_current_router(store: ReferenceStore) -> tuple[int, Router, Path | None]:
    """(version, router, weights path) of the newest recorded router whose file loads; an
    unreadable newer one (truncated, missing) is passed over with one log line.  Version 0
    and the shipped weights (path None) when no recorded version loads."""
    broken = []
    for version, path in store.routers():
        try:
            router = load_router(path)
        except Exception as exc:  # torch raises many types for a damaged file
            broken.append(f"r{version} ({path}: {type(exc).__name__}: {exc})")
            continue
        if broken:
            log.warning(
                "router weights unreadable, using r%d instead: %s", version, "; ".join(broken)
            )
        return version, router, path
    if broken:
        log.warning("router weights unreadable, using the shipped ones: %s", "; ".join(broken))
    return 0, load_router(None), None


@contextlib.contextmanager
def _model_dir_lock(folder: Path) -> Iterator[None]:
    """Exclusive between processes sharing ``folder`` (a no-op where flock is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".training.lock", "a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield  # the lock goes with the file's closing


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refit(
    engine: SamEngine,
    store: ReferenceStore,
    fetcher: ImageFetcher,
    depth: DepthEstimator | None = None,
    base: Path | None = None,
    epochs: int = 100,
) -> Refit | None:
    """``START_TRAINING``: refit the router on every stored (draft, final) pair whose image
    still loads at its size, starting from the weights at ``base`` (None: the shipped
    ones; ``depth``: the depth expert's model, if any).  The weights are written to a
    temporary file beside their final place, flushed to disk and renamed to
    ``<model_dir>/routers/router-r<N>.pt``; only then is version ``N`` recorded.  None
    when there is no usable pair.  Call it from one thread at a time (the file lock only
    keeps other processes out)."""
    triples = []
    for pair in store.pairs():
        try:
            image = fetcher.image(pair.image_url)
        except ImageFetchError as exc:
            log.warning("training pair skipped: %s", exc)
            continue
        if image.shape[:2] == pair.draft.shape and pair.draft.any():
            triples.append((image, pair.draft, pair.final))
    if not triples:
        return None
    out_dir = store.dir / "routers"
    with _model_dir_lock(out_dir):
        for stale in out_dir.glob(".router-r*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        version = store.next_router_version()
        path = out_dir / f"router-r{version}.pt"
        with replaced_atomically(path) as tmp:
            figures = refit_router(
                engine, triples, tmp, base_weights=base, epochs=epochs, depth=depth
            )
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            router = load_router(tmp)  # it reads back before it becomes a version
        _fsync_dir(out_dir)
        figures = {k: v for k, v in figures.items() if k != "out"}
        store.add_router(version, path, len(triples), figures)
    return Refit(router, version, path, len(triples), figures)


# ---------------------------------------------------------------------- training queue
class TrainingQueue:
    """One background worker that runs ``train()`` (a dict result) outside the request.

    :meth:`request` returns at once: a run is queued, or the request is coalesced with the
    one already queued.  A request while a run is going queues one follow-up run, which is
    skipped if ``fingerprint()`` (the training data's) did not change since that run began.
    Runs never overlap."""

    def __init__(self, train: Callable[[], dict], fingerprint: Callable[[], object]):
        self._train = train
        self._fingerprint = fingerprint
        self._cond = threading.Condition()
        self._running = False
        self._pending = False
        self._pending_during_run = False
        self._thread: threading.Thread | None = None
        self._last: dict | None = None
        self._error: str | None = None
        self._runs = 0
        self._last_fingerprint: object = None

    def request(self) -> dict:
        """Queue a run (or join the queued one); ``{"queued", "coalesced", "state", ...}``."""
        with self._cond:
            coalesced = self._pending
            if not self._pending:
                self._pending = True
                self._pending_during_run = self._running
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="promptmoe-training")
                self._thread.start()
            self._cond.notify_all()
            if coalesced:
                detail = "a training run is queued already: this request joins it"
            elif self._running:
                detail = "a training run is going: another one is queued after it"
            else:
                detail = "training queued"
            return {"queued": True, "coalesced": coalesced, **self._status(), "detail": detail}

    def status(self) -> dict:
        """``{"state": "idle" | "queued" | "running", "queued_after": bool, "runs",
        "last_result", "last_error"}``."""
        with self._cond:
            return self._status()

    def _status(self) -> dict:
        state = "running" if self._running else "queued" if self._pending else "idle"
        return {
            "state": state,
            "queued_after": self._running and self._pending,
            "runs": self._runs,
            "last_result": self._last,
            "last_error": self._error,
        }

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no run is queued or going; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._pending or self._running), timeout)

    def _work(self) -> None:
        # Not a daemon: a process that exits lets the run in progress finish (a daemon
        # thread killed inside torch aborts the interpreter), and the worker ends once idle
        # for a second, or at once when the main thread is gone (a queued run is dropped).
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending, timeout=1.0)
                exiting = not threading.main_thread().is_alive()
                if not self._pending or exiting:
                    if self._pending:
                        log.warning("queued training dropped: the process is exiting")
                    self._pending = self._pending_during_run = False
                    self._thread = None
                    self._cond.notify_all()
                    return
                follow_up = self._pending_during_run
                self._pending = self._pending_during_run = False
                self._running = True
            started = time.time()
            try:
                fingerprint = self._fingerprint()
                if follow_up and fingerprint == self._last_fingerprint:
                    result = {
                        "trained": False,
                        "reason": "no new (draft, final) pairs since the run just finished",
                    }
                else:
                    self._last_fingerprint = fingerprint
                    result = self._train()
                error = None
            except Exception as exc:  # a bug or a resource error: report it, keep serving
                log.exception("training failed")
                result, error = None, f"{type(exc).__name__}: {exc}"
            with self._cond:
                self._running = False
                self._runs += 1
                if result is not None:
                    self._last = {**result, "started": started, "finished": time.time()}
                self._error = error
                self._cond.notify_all()
