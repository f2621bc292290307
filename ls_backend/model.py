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
* a rectangle: SAM's box prompt (with the keypoints of its label that fall inside it);
* a brush draft: PromptMoE refinement of the draft.

Batch calls (``context`` None) refine every brush draft found in a task.  Parsing the
task JSON lives in :mod:`.tasks`, building the answer in :mod:`.results`, the webhooks'
active learning in :mod:`.learning`.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from promptmoe_plugin.experts.depth import DepthEstimator
from promptmoe_plugin.refine import VARIANTS, refine
from promptmoe_plugin.router import load_router
from promptmoe_plugin.sam import Prompt, SamEngine
from promptmoe_plugin.smartsam import SmartSamSession
from promptmoe_plugin.smartsam.intent import make_intent

from . import learning, rle
from .config import Settings
from .images import ImageFetcher, ImageFetchError
from .label_config import LabelConfig, parse_label_config
from .references import ReferenceStore
from .results import Region, prediction
from .tasks import (
    MODEL_VERSION_PREFIX,
    Click,
    Draft,
    TaskError,
    context_regions,
    mask_image_drafts,
    project_id,
    task_drafts,
    task_image_url,
)
from .tracks import ClickTracks

log = logging.getLogger(__name__)


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
        self.depth = DepthEstimator(settings.depth_model) if settings.depth_model else None
        self.references = learning.ReferenceFeatures(self.intent, self.store, self.fetcher)
        self.tracks = ClickTracks()
        self._router_lock = threading.Lock()
        current = self.store.current_router()
        self._router_version = current[0] if current else 0
        self.router = load_router(current[1] if current else None)

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
        SmartSamSession(self.engine, image, intent=self.intent).click(48, 32)
        self.engine.cache.clear()

    def setup(self, project: str, schema: str, **kwargs) -> str:
        """Validate the labeling config (raises ``LabelConfigError``); never loads models."""
        parse_label_config(schema)
        return self.model_version

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs) -> list[dict]:
        """One prediction per task: ``{"result": [...], "score": float, "model_version": str}``.

        Keyword args: ``project`` (Label Studio's project uid) and ``label_config``.
        A task that fails gets an empty result and an ``error`` message; the others proceed.
        """
        config = parse_label_config(kwargs["label_config"])
        project = project_id(kwargs.get("project"))
        out = []
        for task in tasks:
            try:
                if context and context.get("result"):
                    regions = self._interactive(task, context["result"], config, project)
                else:
                    regions = self._pre_annotate(task, config, project)
                out.append(prediction(regions, config, self.model_version))
            except (TaskError, ImageFetchError, rle.RLEError) as exc:
                log.warning("task %s: %s", task.get("id"), exc)
                out.append(self._failed(task, str(exc)))
            except Exception as exc:  # a bug or a resource error: report it, serve the others
                log.exception("task %s failed", task.get("id"))
                out.append(self._failed(task, f"internal error {type(exc).__name__}: {exc}"))
        return out

    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """Active learning from Label Studio webhooks; returns what changed."""
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            return learning.store_annotation(data, self.store, self.references)
        if event in ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED"):
            return learning.delete_annotations(event, data, self.store)
        if event == "START_TRAINING":
            return self._train()
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
        for label, box in context.boxes:
            inside = [
                c
                for c in clicks.get(label, [])
                if box[0] <= c.x <= box[2] and box[1] <= c.y <= box[3]
            ]
            clicks[label] = [c for c in clicks.get(label, []) if c not in inside]
            regions.append(self._box(image, box, inside, label))
        for label, label_clicks in clicks.items():
            if label_clicks:
                regions.extend(self._clicks(image, label, label_clicks, project))
        regions.extend(self._refine_drafts(image, url, context.drafts, task, project))
        return regions

    def _box(self, image: np.ndarray, box: np.ndarray, clicks: list[Click], label: str) -> Region:
        """SAM's single mask for ``box`` ``(4,)`` x0, y0, x1, y1 and ``clicks``, image pixels."""
        emb = self.engine.embed(image)
        points = np.array([[c.x, c.y] for c in clicks]) if clicks else None
        labels = np.array([int(c.positive) for c in clicks]) if clicks else None
        out = self.engine.decode(
            emb, [Prompt(points=points, labels=labels, box=box)], multimask=False
        )
        return Region(label, out.masks[0, 0], float(out.iou[0, 0]))

    def _clicks(
        self, image: np.ndarray, label: str, clicks: list[Click], project: str
    ) -> list[Region]:
        """The objects of one label's clicks, continuing a cached track when one matches."""

        def new_session() -> SmartSamSession:
            # A first click prefers objects like the label's references.
            features = self.references.of_label(project, label, self.settings.max_references)
            return SmartSamSession(
                self.engine, image, intent=self.intent, reference_features=features
            )

        sessions = self.tracks.apply(self.engine, image, project, label, tuple(clicks), new_session)
        return [Region(label, s.mask, float(s.score)) for s in sessions]

    # ------------------------------------------------------------------ drafts
    def _pre_annotate(self, task: dict, config: LabelConfig, project: str) -> list[Region]:
        """Refine the brush drafts of a task: its latest annotation with brush regions, else
        its latest prediction from another model, else a mask image in its data.  A task
        without drafts gets an empty result and its image embedded ahead of the clicks."""
        url, image = self._task_image(task, config)
        shape = image.shape[:2]
        drafts = task_drafts(task, config, *shape)
        mask_url = task["data"].get(self.settings.mask_data_key)
        if not drafts and mask_url:
            drafts = mask_image_drafts(
                self.fetcher.label_map(mask_url, shape), task["data"], config
            )
        if not drafts:
            # Nothing to refine: embed the image now, so the annotator's first click on this
            # task is fast (kept in memory, and on disk with EMBEDDING_DIR).
            self.engine.embed(image)
        return self._refine_drafts(image, url, drafts, task, project)

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
            regions.append(Region(label, out.mask, float(out.score)))
            unions[label] = unions.get(label, np.zeros_like(draft)) | draft
        if "id" in task:
            for label, union in unions.items():
                self.store.put_draft(project, int(task["id"]), label, url, union)
        return regions

    # ------------------------------------------------------------------ training
    def _train(self) -> dict:
        """Refit the router on the stored (draft, final) pairs and swap it in atomically."""
        refit = learning.refit(self.engine, self.store, self.fetcher, self.depth)
        if refit is None:
            return {
                "trained": False,
                "model_version": self.model_version,
                "reason": "no (draft, final) pairs yet: refine drafts, then submit annotations",
            }
        with self._router_lock:
            self.router, self._router_version = refit.router, refit.version
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
