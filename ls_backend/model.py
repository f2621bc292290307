"""The ML model behind the backend, shaped like ``label_studio_ml``'s ``LabelStudioMLBase``.

``setup`` answers Label Studio's ``/setup``, ``predict(tasks, context)`` its ``/predict``
and ``fit(event, data)`` its ``/webhook``.  One instance serves every project; it holds
the SAM engine, the image fetcher, the reference store, SmartSAM's intent, the depth
model (when configured) and the current router.

Interactive calls (``context`` given) turn the smart tools into brush masks:

* keypoints of one label: the first click is a SmartSAM click seeded with the project's
  reference exemplars of that label, later clicks refine that object; a positive click
  whose own object does not touch the current mask starts a second object of the label;
  labels are never merged (see :mod:`.tracks`);
* a rectangle: the newest one only (the editor sends all rectangles of the label, the
  older ones already answered): SAM's box prompt (with the keypoints of its label that
  fall inside it); a rotated rectangle prompts with its bounding box;
* a brush draft: PromptMoE refinement of the draft.

Batch calls (``context`` None) pre-annotate each task from its drafts (:meth:`annotate`:
brush regions and polygons refined, rectangles segmented, or a mask image); through the
persistent job of :mod:`.jobs` when Label Studio can be written to, so the request never
outlasts ``BATCH_SECONDS``.  A task without drafts gets no prediction, its image is
embedded in the background.  Parsing the task JSON lives in :mod:`.tasks`, building the
answer in :mod:`.results`, the webhooks' active learning in :mod:`.learning`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

import numpy as np
from scipy import ndimage

from promptmoe_plugin.clicks import SamClickSession
from promptmoe_plugin.corrections import CorrectionConfig
from promptmoe_plugin.experts.depth import DepthEstimator
from promptmoe_plugin.refine import VARIANTS, refine
from promptmoe_plugin.sam import SamEngine
from promptmoe_plugin.smartsam import SmartSamConfig, SmartSamSession
from promptmoe_plugin.smartsam.intent import make_intent
from promptmoe_plugin.zoom import Box as Crop
from promptmoe_plugin.zoom import crop_image

from . import jobs, learning, rle
from .config import Settings
from .images import ImageFetcher, ImageFetchError
from .label_config import LabelConfig, parse_label_config
from .references import ReferenceStore
from .results import Region, calibrated_score, prediction
from .tasks import (
    MODEL_VERSION_PREFIX,
    Box,
    Click,
    Draft,
    Prompts,
    TaskError,
    context_regions,
    failure_reason,
    has_drafts,
    mask_image_drafts,
    prediction_versions,
    project_id,
    task_image_url,
    task_prompts,
)
from .tracks import ClickTracks
from .writeback import LabelStudioError, LabelStudioWriter

log = logging.getLogger(__name__)

#: Images waiting for a background embedding at most (one Label Studio batch); beyond it
#: a request is dropped (its first click then encodes).
MAX_PENDING_EMBEDS = 100


class BackgroundEmbedder:
    """Fetches and embeds task images on one daemon thread, so a batch call returns at once
    and the first click on the task finds the embedding in the engine's cache (and on disk
    with ``EMBEDDING_DIR``).  An image already waiting is not queued again; one already in
    the cache costs a content hash.

    Each image waits ``delay`` seconds from its submission before it is fetched: the
    editor's call when a task is opened comes while the browser loads the same image,
    and an encode at that moment takes the cores Label Studio and the browser need when
    they share the machine (``EMBED_DELAY``).  A crop of an image (the zoom of an object's
    next click, :meth:`~promptmoe_plugin.clicks.SamClickSession.next_crop`) waits for
    nothing: the annotator is looking at the mask.
    """

    def __init__(self, engine: SamEngine, fetcher: ImageFetcher, delay: float):
        self.engine = engine
        self.fetcher = fetcher
        self.delay = delay
        self._queue: queue.Queue[tuple[str, Crop | None, float]] = queue.Queue()
        self._pending: set[tuple[str, Crop | None]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, url: str, crop: Crop | None = None) -> bool:
        """Queue ``url`` (or its ``crop``, x0, y0, x1, y1 image pixels) for embedding; False
        when it is already waiting or the queue is full."""
        with self._lock:
            if (url, crop) in self._pending or len(self._pending) >= MAX_PENDING_EMBEDS:
                return False
            self._pending.add((url, crop))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="promptmoe-embedder", daemon=True
                )
                self._thread.start()
        self._queue.put((url, crop, time.monotonic() + (0 if crop else self.delay)))
        return True

    def wait(self) -> None:
        """Block until every queued image is done (tests, benchmarks)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            url, crop, due = self._queue.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                image = self.fetcher.image(url)
                self.engine.embed(image if crop is None else crop_image(image, crop))
            except Exception as exc:  # reported again, to the annotator, on the next click
                log.warning("background embedding of %s %s failed: %s", url, crop or "", exc)
            finally:
                with self._lock:
                    self._pending.discard((url, crop))
                self._queue.task_done()


class PromptMoEModel:
    """PromptMoE refinement and SmartSAM clicks for Label Studio brush labels."""

    #: Webhook actions :meth:`fit` handles.
    EVENTS = (
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATION_DELETED",
        "ANNOTATIONS_DELETED",
        "START_TRAINING",
    )

    def __init__(self, engine: SamEngine, settings: Settings):
        if settings.refine_variant not in VARIANTS:
            raise ValueError(
                f"REFINE_VARIANT {settings.refine_variant!r} is not one of {', '.join(VARIANTS)}"
            )
        self.engine = engine
        self.settings = settings
        self.fetcher = ImageFetcher(settings)
        self.store = ReferenceStore(settings.model_dir)
        self.intent = make_intent(settings.intent, engine, settings.dinov2_model)
        self.smartsam_config = SmartSamConfig(
            hold_area=settings.hold_area,
            hold_area_references=settings.hold_area_references,
            switch=settings.smartsam_switch,
        )
        self.depth = DepthEstimator(settings.depth_model) if settings.depth_model else None
        self.references = learning.ReferenceFeatures(self.intent, self.store, self.fetcher)
        self.tracks = ClickTracks()
        # Batch tasks refined at once (interactive calls never wait for them): more than
        # the CPU's cores only adds working memory.
        self._slots = threading.BoundedSemaphore(settings.max_concurrent or os.cpu_count() or 2)
        self.embedder = BackgroundEmbedder(self.engine, self.fetcher, settings.embed_delay)
        self._router_lock = threading.Lock()
        # The newest router version whose file loads (an unreadable one is passed over).
        version, self.router, self._router_path = learning.load_current_router(self.store)
        self._router_version = version
        #: Epochs of a START_TRAINING refit (a TRAIN_EPOCHS setting, when config.py has one).
        self.train_epochs = settings.train_epochs
        self.training = learning.TrainingQueue(self._train, self.store.pairs_fingerprint)
        #: The pre-annotation job: only a serving backend has one (:meth:`start_jobs`).
        self.jobs: jobs.PreAnnotationJob | None = None
        #: Why there is no job (for ``GET /jobs``) while :attr:`jobs` is None.
        self.no_jobs_reason = "the pre-annotation job starts with the server"

    def start_jobs(self) -> None:
        """Open the pre-annotation job (``MODEL_DIR/jobs.sqlite3``) and start its workers,
        resuming what a restart left queued; from then on batch calls go through it.  Only
        the serving backend calls this (a model built for ``promptmoe annotate`` or a
        benchmark never touches the job).  Without ``LABEL_STUDIO_URL`` and
        ``LABEL_STUDIO_API_KEY`` the backend cannot write predictions back: there is no
        job, and the log says so once."""
        s = self.settings
        if self.jobs is not None:
            return
        if not (s.label_studio_url and s.label_studio_api_key):
            self.no_jobs_reason = (
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both set: the backend cannot "
                "write predictions back, so a batch /predict pre-annotates every task inside "
                "the request (Label Studio gives it ML_TIMEOUT_PREDICT, 100 s)"
            )
            log.info("%s", self.no_jobs_reason)
            return
        try:
            writer = LabelStudioWriter(s.label_studio_url, s.label_studio_api_key)
            job = jobs.PreAnnotationJob(
                s.model_dir / "jobs.sqlite3", self.annotate, writer, s.job_workers
            )
        except (LabelStudioError, jobs.JobBusyError) as exc:
            self.no_jobs_reason = (
                f"no pre-annotation job ({exc}): batch calls work inside the request"
            )
            log.warning("%s", self.no_jobs_reason)
            return
        job.start()
        self.jobs = job

    # ------------------------------------------------------------------ protocol
    @property
    def model_version(self) -> str:
        return f"{MODEL_VERSION_PREFIX}{self.settings.refine_variant}-r{self._router_version}"

    def warm_up(self) -> None:
        """Run SAM and the refinement once so the first real request is not the slow one."""
        image = np.zeros((64, 96, 3), np.uint8)
        image[16:48, 24:72] = 200
        draft = np.zeros(image.shape[:2], bool)
        draft[20:44, 30:66] = True
        refine(
            self.engine,
            image,
            draft,
            self.settings.refine_variant,
            router=self.router,
            depth=self.depth,
        )
        SmartSamSession(self.engine, image, self.smartsam_config, intent=self.intent).click(48, 32)
        # The reference features' shape is measured on an image of its own: do it now, not
        # on the first click that has references (an extra SAM encode, ~2 s on a CPU).
        self.references.shape()
        self.engine.cache.clear()

    def setup(self, project: str, schema: str, **kwargs) -> str:
        """Validate the labeling config (raises ``LabelConfigError``), including that every
        smart tool's labels are brush labels; never loads models."""
        parse_label_config(schema).check_smart_tools()
        return self.model_version

    def predict(
        self, tasks: list[dict], context: dict | None = None, **kwargs
    ) -> list[dict | list]:
        """One answer per task: a prediction ``{"result": [...], "score": float,
        "model_version": str}``, or ``[]`` (no prediction: Label Studio stores nothing).

        Interactive calls (``context`` with regions) answer every task.  Batch calls (no
        context: *Retrieve Predictions*, and the editor's call when a task is opened) go
        through the pre-annotation job when the backend can write to Label Studio
        (:meth:`_batch`); without ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` every
        task is pre-annotated inside the request, however long that takes.  A task
        without drafts gets ``[]`` at once, while its image is fetched and embedded in the
        background so the annotator's first click finds the embedding.

        Keyword args: ``project`` (Label Studio's project uid) and ``label_config``.
        A task that fails gets an empty result and an ``error`` message (a batch call
        through the job: ``[]``, the reason in ``GET /jobs``); the others proceed.
        """
        config = parse_label_config(kwargs["label_config"])
        project = project_id(kwargs.get("project"))
        interactive = bool(context and context.get("result"))
        if not interactive and self.jobs is not None:
            return self._batch(tasks, config, kwargs["label_config"], project)
        out: list[dict | list] = []
        for task in tasks:
            try:
                if interactive:
                    regions = self._interactive(task, context["result"], config, project)
                    out.append(prediction(regions, config, self.model_version))
                    continue
                answer = self.annotate(task, config, project)
                if answer is None:
                    self.embedder.submit(task_image_url(task, config))
                out.append(answer or [])
            except Exception as exc:  # this task fails with its reason; the others are served
                reason = failure_reason(exc, task.get("id"))
                log.warning("task %s: %s", task.get("id"), reason)
                out.append(self._failed(task, reason))
        return out

    def _batch(
        self, tasks: list[dict], config: LabelConfig, xml: str, project: str
    ) -> list[dict | list]:
        """A batch call through the pre-annotation job, answered within ``BATCH_SECONDS``
        (at once for a call of one task: the editor's call when a task is opened).

        Tasks with drafts go to the job; the predictions it finishes in time are answered
        here, the others ``[]``, and the job writes them back to Label Studio (never
        both).  ``[]`` at once, no job: a task already holding a prediction of the current
        version, one without drafts (recorded ``skipped``; its image embedded in the
        background) and one that cannot be used (recorded ``failed``).
        """
        version = self.model_version
        out: list[dict | list] = [[] for _ in tasks]
        queued: dict[int, int] = {}  # index in tasks -> task id
        for i, task in enumerate(tasks):
            task_id = _task_id(task)
            try:
                url = task_image_url(task, config)
                if version in (prediction_versions(task) or []):
                    continue
                if task_id is None:  # cannot be written back: answered here, unbounded
                    out[i] = self.annotate(task, config, project) or []
                elif has_drafts(task, self.settings.mask_data_key):
                    queued[i] = task_id
                else:
                    self.embedder.submit(url)
                    self.jobs.record(project, task, version, "skipped", jobs.NO_DRAFT)
            except (TaskError, ImageFetchError, rle.RLEError) as exc:
                log.warning("task %s: %s", task.get("id"), exc)
                if task_id is not None:
                    self.jobs.record(project, task, version, "failed", str(exc))
        if queued:
            wait = self.settings.batch_seconds if len(tasks) > 1 else 0.0
            answers = self.jobs.submit(project, [tasks[i] for i in queued], xml, version, wait)
            for i, task_id in queued.items():
                out[i] = answers.get(task_id) or []
            log.info(
                "batch of %d task(s): %d queued, %d answered in the request",
                len(tasks),
                len(queued),
                sum(a is not None for a in answers.values()),
            )
        return out

    def annotate(self, task: dict, config: LabelConfig, project: str) -> dict | None:
        """Pre-annotate one task: the per-task work of a batch call, of the backend's job
        (:mod:`.jobs`) and of ``promptmoe annotate`` (one code path).

        Fetches the task's image, finds its drafts (:func:`~.tasks.task_prompts`, else a
        mask image in ``data[MASK_DATA_KEY]``), refines / segments them and returns the
        prediction ``{"result": [...], "score": float, "model_version": str}``; None when
        the task has nothing to predict from (no draft of any kind, or only empty ones).
        At most ``MAX_CONCURRENT`` tasks run this at once, over all callers.

        Raises:
            TaskError, ImageFetchError, rle.RLEError: a task the model cannot use.
        """
        if not has_drafts(task, self.settings.mask_data_key):
            return None
        with self._slots:
            regions = self._pre_annotate(task, config, project)
        return prediction(regions, config, self.model_version) if regions else None

    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """Active learning from Label Studio webhooks; returns what changed."""
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            return learning.store_annotation(data, self.store, self.references)
        if event in ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED"):
            return learning.delete_annotations(event, data, self.store)
        if event == "START_TRAINING":
            # Training takes minutes: it runs on the training worker, never in the request.
            if not self.store.pairs_fingerprint()[0]:
                return {
                    "queued": False,
                    "trained": False,
                    "model_version": self.model_version,
                    "reason": "no (draft, final) pairs yet: refine drafts, then submit annotations",
                }
            return {**self.training.request(), "model_version": self.model_version}
        raise TaskError(f"unknown event {event!r}; known: {', '.join(self.EVENTS)}")

    # ------------------------------------------------------------------ interactive
    def _interactive(
        self, task: dict, items: list, config: LabelConfig, project: str
    ) -> list[Region]:
        """Boxes first (each takes the clicks of its label inside it), then the clicks of
        each label, then the brush drafts."""
        url, image = self._task_image(task, config)
        context = context_regions(items, config, *image.shape[:2])
        clicks = context.clicks
        regions = []
        for box in context.boxes:
            own = clicks.get(box.label, [])
            inside = [c for c in own if box.contains(np.float64(c.x), np.float64(c.y))]
            clicks[box.label] = [c for c in own if c not in inside]
            regions.append(self._box(url, image, box, inside))
        for label, label_clicks in clicks.items():
            if label_clicks:
                regions.extend(self._clicks(url, image, label, label_clicks, project))
        regions.extend(self._refine_drafts(image, url, context.drafts, task, project))
        return regions

    def _box(self, url: str, image: np.ndarray, box: Box, clicks: list[Click]) -> Region:
        """SAM's single mask for ``box``, then each of the ``clicks`` inside it in order, as
        later clicks of the object (image pixels; the box stays in every prompt, later
        clicks are guarded as a clicked object's are).

        SAM takes only axis-aligned boxes: a rotated rectangle prompts with its bounding box
        (clipped to the image), and of the mask only the parts that overlap the rotated
        rectangle itself are kept (the bounding box holds more than the user framed)."""
        h, w = image.shape[:2]
        session = SamClickSession(self.engine, image, corrections=CorrectionConfig())
        mask = session.frame(*np.clip(box.bounds, 0, [w, h, w, h]))
        for c in clicks:
            mask = session.click(c.x, c.y, c.positive)
        self._warm_crop(url, session)
        if box.rotation % 90:
            mask = _parts_touching(mask, box)
        return Region(box.label, mask, calibrated_score(session.score, "box"))

    def _clicks(
        self, url: str, image: np.ndarray, label: str, clicks: list[Click], project: str
    ) -> list[Region]:
        """The objects of one label's clicks, continuing a cached track when one matches."""

        def new_session() -> SmartSamSession:
            # A first click prefers objects like the label's references.
            features = self.references.of_label(project, label, self.settings.max_references)
            return SmartSamSession(
                self.engine,
                image,
                self.smartsam_config,
                intent=self.intent,
                reference_features=features,
            )

        sessions = self.tracks.apply(self.engine, image, project, label, tuple(clicks), new_session)
        for session in sessions:
            self._warm_crop(url, session)
        return [Region(label, s.mask, calibrated_score(float(s.score), "click")) for s in sessions]

    def _warm_crop(self, url: str, session: SamClickSession | SmartSamSession) -> None:
        """Encode the crop the object's next click will zoom on in the background, so that
        click costs a decode (:meth:`~promptmoe_plugin.clicks.SamClickSession.next_crop`)."""
        crop = session.next_crop()
        if crop is not None:
            self.embedder.submit(url, crop)

    # ------------------------------------------------------------------ drafts
    def _pre_annotate(self, task: dict, config: LabelConfig, project: str) -> list[Region]:
        """The regions of a task's drafts (:func:`~.tasks.task_prompts` for the sources
        and their precedence): brush regions and polygons refined, rectangles segmented
        with SAM's box prompt; a mask image in its data when it has no region at all."""
        url, image = self._task_image(task, config)
        shape = image.shape[:2]
        prompts = task_prompts(task, config, *shape)
        mask_url = task["data"].get(self.settings.mask_data_key)
        if not prompts and mask_url:
            labels = self.fetcher.label_map(mask_url, shape)
            prompts = Prompts(drafts=mask_image_drafts(labels, task["data"], config))
        regions = self._refine_drafts(image, url, prompts.drafts, task, project)
        return regions + [self._box(url, image, box, []) for box in prompts.boxes]

    def _refine_drafts(
        self, image: np.ndarray, url: str, drafts: list[Draft], task: dict, project: str
    ) -> list[Region]:
        """PromptMoE refinement of each non-empty draft; the union of a label's drafts is
        remembered for pairing with the submitted annotation."""
        regions = []
        unions: dict[str, np.ndarray] = {}
        for label, draft in drafts:
            if not draft.any():
                continue
            with self._router_lock:
                router = self.router
            out = refine(
                self.engine,
                image,
                draft,
                self.settings.refine_variant,
                router=router,
                depth=self.depth,
            )
            source = "kept" if out.source == "draft" else "draft"  # the draft check kept it
            regions.append(Region(label, out.mask, calibrated_score(float(out.score), source)))
            unions[label] = unions.get(label, np.zeros_like(draft)) | draft
        if "id" in task:
            for label, union in unions.items():
                self.store.put_draft(project, int(task["id"]), label, url, union)
        return regions

    # ------------------------------------------------------------------ training
    def training_status(self) -> dict:
        """The training worker's state (``idle`` / ``queued`` / ``running``), its last result
        or error, and the current model version: for ``/health`` and ``/metrics``."""
        return {**self.training.status(), "model_version": self.model_version}

    def _train(self) -> dict:
        """On the training worker: refit the router on the stored (draft, final) pairs from
        the current weights, then swap it in atomically."""
        with self._router_lock:
            base = self._router_path
        refit = learning.refit(
            self.engine, self.store, self.fetcher, self.depth, base=base, epochs=self.train_epochs
        )
        if refit is None:
            return {
                "trained": False,
                "model_version": self.model_version,
                "reason": "no usable (draft, final) pair: their images no longer load",
            }
        with self._router_lock:
            self.router, self._router_version = refit.router, refit.version
            self._router_path = refit.path
        return {
            "trained": True,
            "pairs": refit.pairs,
            "figures": refit.figures,
            "model_version": self.model_version,
        }

    # ------------------------------------------------------------------ helpers
    def _task_image(self, task: dict, config: LabelConfig) -> tuple[str, np.ndarray]:
        """The task's image URL and its pixels ``(H, W, 3) uint8`` RGB."""
        url = task_image_url(task, config)
        return url, self.fetcher.image(url)

    def _failed(self, task: dict, message: str) -> dict:
        return {
            "result": [],
            "score": 0.0,
            "model_version": self.model_version,
            "error": f"task {task.get('id')}: {message}",
        }


def _task_id(task: dict) -> int | None:
    """A task's integer ``id`` (Label Studio's), None when it has none."""
    try:
        return int(task["id"])
    except (KeyError, TypeError, ValueError):
        return None


def _parts_touching(mask: np.ndarray, box: Box) -> np.ndarray:
    """The connected parts of ``mask`` ``(H, W) bool`` that overlap the (rotated) ``box``;
    the whole mask when none does."""
    rows, cols = np.indices(mask.shape)
    inside = box.contains(cols + 0.5, rows + 0.5)
    parts, n = ndimage.label(mask)
    keep = np.unique(parts[inside & mask])
    return np.isin(parts, keep[keep > 0]) if keep.any() else mask
