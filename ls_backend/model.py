"""The ML model behind the backend, shaped like ``label_studio_ml``'s ``LabelStudioMLBase``.

``setup`` answers Label Studio's ``/setup``, ``predict(tasks, context)`` its ``/predict``
and ``fit(event, data)`` its ``/webhook``.  One instance serves every project; it holds
the SAM engine, the image fetcher, the reference store and the current router.

Interactive calls (``context`` given) turn the smart tools into brush masks:

* keypoints of one label: the first click is a SmartSAM click seeded with the project's
  reference exemplars of that label, later clicks refine that object; a positive click
  whose own object does not touch the current mask starts a second object of the label;
  labels are never merged;
* a rectangle: SAM's box prompt (with the keypoints of its label that fall inside it);
* a brush draft: PromptMoE refinement of the draft.

Batch calls (``context`` None) refine every brush draft found in a task.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from promptmoe_plugin.refine import VARIANTS, refine
from promptmoe_plugin.router import load_router, refit_router
from promptmoe_plugin.sam import Prompt, SamEngine
from promptmoe_plugin.sam.cache import image_key
from promptmoe_plugin.smartsam import SmartSamSession, make_selector

from . import rle
from .config import Settings
from .images import ImageFetcher, ImageFetchError
from .label_config import LabelConfig, parse_label_config
from .polygons import mask_to_polygons
from .references import Reference, ReferenceStore

log = logging.getLogger(__name__)

#: Memory for click sessions kept for later clicks (one per (image, label, clicks so far)).
SESSION_CACHE_MB = 256
#: Estimated bytes one click session holds beyond the shared embedding: a copy of the
#: image, its masks (1 byte per pixel each), and its candidate logits.
_SESSION_FIXED_BYTES = 2 * 2**20


class TaskError(ValueError):
    """A task or context the model cannot use; reported for that task only."""


@dataclass
class Click:
    x: float  # image pixels
    y: float
    positive: bool


@dataclass
class Region:
    """One output object: ``mask`` ``(H, W) bool`` in the image frame."""

    label: str
    mask: np.ndarray
    score: float


@dataclass
class _Track:
    """The click sessions (one per object) of one label on one image, and its clicks."""

    sessions: list[Any] = field(default_factory=list)
    clicks: tuple[tuple[float, float, bool], ...] = ()


class _Tracks:
    """Click tracks by (image, project, label, clicks), bounded in bytes, least recently
    used dropped first.

    ``pop`` takes a track out while a request advances it, so a track never sits under a
    key whose clicks it no longer has.
    """

    def __init__(self, capacity_mb: float):
        self.capacity = int(capacity_mb * 2**20)
        self._items: OrderedDict[tuple, tuple[_Track, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def pop(self, key: tuple) -> _Track | None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._bytes -= item[1]
            return item[0]

    def put(self, key: tuple, track: _Track, nbytes: int) -> None:
        with self._lock:
            self._items[key] = (track, nbytes)
            self._bytes += nbytes
            while self._bytes > self.capacity and self._items:
                self._bytes -= self._items.popitem(last=False)[1][1]


def project_id(project: Any) -> str:
    """Label Studio's ``"<id>.<timestamp>"`` (or a bare id / project dict) -> ``"<id>"``."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None or str(project).strip() == "":
        return "0"
    return str(project).split(".")[0]


class PromptMoEModel:
    """PromptMoE refinement and SmartSAM clicks for Label Studio brush labels."""

    #: Webhook actions :meth:`fit` handles.
    EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED", "START_TRAINING")

    def __init__(self, engine: SamEngine, settings: Settings):
        if settings.refine_variant not in VARIANTS:
            raise ValueError(f"REFINE_VARIANT {settings.refine_variant!r} is not one of {', '.join(VARIANTS)}")
        self.engine = engine
        self.settings = settings
        self.fetcher = ImageFetcher(settings)
        self.store = ReferenceStore(settings.model_dir)
        self.selector = make_selector(settings.selector, engine, settings.dinov2_model)
        self._shape: tuple[int, ...] | None = None
        self._tracks = _Tracks(SESSION_CACHE_MB)
        self._router_lock = threading.Lock()
        current = self.store.current_router()
        self._router_version = current[0] if current else 0
        self.router = load_router(current[1] if current else None)

    # ------------------------------------------------------------------ protocol
    @property
    def model_version(self) -> str:
        return f"promptmoe-{self.settings.refine_variant}-r{self._router_version}"

    def warm_up(self) -> None:
        """Run SAM and the refinement once so the first real request is not the slow one."""
        image = np.zeros((64, 96, 3), np.uint8)
        image[16:48, 24:72] = 200
        draft = np.zeros(image.shape[:2], bool)
        draft[20:44, 30:66] = True
        refine(self.engine, image, draft, self.settings.refine_variant, router=self.router)
        SmartSamSession(self.engine, image, selector=self.settings.selector).click(48, 32)
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
                out.append(self._prediction(regions, config))
            except (TaskError, ImageFetchError, rle.RLEError) as exc:
                log.warning("task %s: %s", task.get("id"), exc)
                out.append(self._failed(task, str(exc)))
            except Exception as exc:  # a bug or a resource error: report it, serve the others
                log.exception("task %s failed", task.get("id"))
                out.append(self._failed(task, f"internal error {type(exc).__name__}: {exc}"))
        return out

    def _failed(self, task: dict, message: str) -> dict:
        return {"result": [], "score": 0.0, "model_version": self.model_version, "error": f"task {task.get('id')}: {message}"}

    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """Active learning from Label Studio webhooks; returns what changed."""
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            return self._store_annotation(data)
        if event in ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED"):
            anns = data.get("annotations") or [data.get("annotation") or {}]
            ids = [int(a["id"]) for a in anns if isinstance(a, dict) and "id" in a]
            if not ids:
                raise TaskError(f"{event} without annotation ids")
            project = project_id(data.get("project")) if data.get("project") else None
            return {"deleted_references": sum(self.store.delete_annotation(project, i) for i in ids)}
        if event == "START_TRAINING":
            return self._train()
        raise TaskError(f"unknown event {event!r}; known: {', '.join(self.EVENTS)}")

    # ------------------------------------------------------------------ interactive
    def _interactive(self, task: dict, items: list, config: LabelConfig, project: str) -> list[Region]:
        url, image = self._task_image(task, config)
        h, w = image.shape[:2]
        clicks: dict[str, list[Click]] = {}
        boxes: list[tuple[str, np.ndarray]] = []
        drafts: list[tuple[str, np.ndarray]] = []
        for item in items:
            kind = str(item.get("type", "")).lower() if isinstance(item, dict) else ""
            value = item.get("value") if isinstance(item, dict) else None
            if not isinstance(value, dict) or kind not in ("keypointlabels", "rectanglelabels", "brushlabels"):
                continue
            label = self._label(value.get(kind), config, kind)
            if kind == "keypointlabels":
                x = min(max(_percent(value, "x") * w / 100, 0.0), w - 1e-3)
                y = min(max(_percent(value, "y") * h / 100, 0.0), h - 1e-3)
                clicks.setdefault(label, []).append(Click(x, y, item.get("is_positive", True) is not False))
            elif kind == "rectanglelabels":
                x0, y0 = _percent(value, "x") * w / 100, _percent(value, "y") * h / 100
                x1, y1 = x0 + _percent(value, "width") * w / 100, y0 + _percent(value, "height") * h / 100
                boxes.append((label, np.array([x0, y0, x1, y1])))
            else:
                drafts.append((label, self._brush_mask(item, value, h, w)))
        if not (clicks or boxes or drafts):
            raise TaskError(
                "the context has no keypoint, rectangle or brush region; use a smart KeyPointLabels or "
                "RectangleLabels tool (smart=\"true\") or a brush draft with one of the brush labels"
            )
        regions: list[Region] = []
        for label, box in boxes:
            inside = [c for c in clicks.get(label, []) if box[0] <= c.x <= box[2] and box[1] <= c.y <= box[3]]
            clicks[label] = [c for c in clicks.get(label, []) if c not in inside]
            regions.append(self._box(image, box, inside, label))
        for label, label_clicks in clicks.items():
            if label_clicks:
                regions.extend(self._clicks(image, label, label_clicks, project))
        regions.extend(self._refine_drafts(image, url, drafts, task, project))
        return regions

    def _box(self, image: np.ndarray, box: np.ndarray, clicks: list[Click], label: str) -> Region:
        emb = self.engine.embed(image)
        points = np.array([[c.x, c.y] for c in clicks]) if clicks else None
        labels = np.array([int(c.positive) for c in clicks]) if clicks else None
        out = self.engine.decode(emb, [Prompt(points=points, labels=labels, box=box)], multimask=False)
        return Region(label, out.masks[0, 0], float(out.iou[0, 0]))

    def _clicks(self, image: np.ndarray, label: str, clicks: list[Click], project: str) -> list[Region]:
        """Masks of the clicks of one label, continuing a cached session when one matches."""
        key_base = (image_key(image), project, label)
        done = tuple((c.x, c.y, c.positive) for c in clicks)
        track = None
        for n in range(len(done), 0, -1):
            track = self._tracks.pop((*key_base, done[:n]))
            if track is not None:
                break
        track = track or _Track()
        for x, y, positive in done[len(track.clicks):]:
            self._add_click(track, image, label, project, Click(x, y, positive))
        track.clicks = done
        per_session = image.nbytes + 2 * image[..., 0].nbytes + _SESSION_FIXED_BYTES
        self._tracks.put((*key_base, done), track, len(track.sessions) * per_session)
        return [Region(label, s.mask, float(s.score)) for s in track.sessions]

    def _add_click(self, track: _Track, image: np.ndarray, label: str, project: str, click: Click) -> None:
        """Apply one click to the object under it; else a negative click goes to the latest
        object and a positive one to the object its own SAM mask touches, or starts a new
        object of the label."""
        h, w = image.shape[:2]
        row, col = min(max(int(click.y), 0), h - 1), min(max(int(click.x), 0), w - 1)
        target = next((s for s in track.sessions if s.mask[row, col]), None)
        if target is None and track.sessions:
            target = self._touched(image, click, track) if click.positive else track.sessions[-1]
        if target is None:
            if not click.positive:
                return  # a negative click before any object: nothing to remove
            target = self._new_session(image, label, project)
            track.sessions.append(target)
        target.click(click.x, click.y, click.positive)

    def _touched(self, image: np.ndarray, click: Click, track: _Track):
        """The session whose mask overlaps most the object SAM finds under a positive click
        (dilated by 2 px), or None when it touches none."""
        emb = self.engine.embed(image)
        out = self.engine.decode(emb, [Prompt(points=np.array([[click.x, click.y]]), labels=np.array([1]))])
        own = ndimage.binary_dilation(out.masks[0, out.best()[0]], iterations=2)
        overlaps = [int((own & s.mask).sum()) for s in track.sessions]
        return track.sessions[int(np.argmax(overlaps))] if max(overlaps) > 0 else None

    def _new_session(self, image: np.ndarray, label: str, project: str) -> SmartSamSession:
        """A SmartSAM session whose first click prefers objects like the label's references."""
        refs = self.store.references(project, label, self.settings.max_references)
        features = [f for f in map(self._reference_features, refs) if f is not None]
        return SmartSamSession(self.engine, image, selector=self.settings.selector, reference_features=features)

    def _reference_features(self, ref: Reference) -> np.ndarray | None:
        """The selector's features of a reference, computed once and kept in the store."""
        if self.settings.selector == "none":
            return None
        cached = self.store.features(ref, self.settings.selector)
        if cached is not None and cached.shape == self._feature_shape():
            return cached  # (features of another shape come from an older selector: redo)
        try:
            image = self.fetcher.image(ref.image_url)
        except ImageFetchError as exc:
            log.warning("reference %s/%s skipped: %s", ref.annotation, ref.region, exc)
            return None
        if image.shape[:2] != ref.mask.shape:
            log.warning("reference %s/%s skipped: image size changed", ref.annotation, ref.region)
            return None
        features = self.selector.reference_features(image, ref.mask)
        self.store.put_features(ref, self.settings.selector, features)
        return features

    def _feature_shape(self) -> tuple[int, ...]:
        """Shape of the selector's reference features, measured once on a tiny image."""
        if self._shape is None:
            image = np.zeros((32, 32, 3), np.uint8)
            mask = np.zeros((32, 32), bool)
            mask[8:24, 8:24] = True
            self._shape = self.selector.reference_features(image, mask).shape
        return self._shape

    # ------------------------------------------------------------------ drafts
    def _pre_annotate(self, task: dict, config: LabelConfig, project: str) -> list[Region]:
        """Refine the brush drafts of a task: its latest annotation with brush regions, else
        its latest prediction from another model, else a mask image in its data.  A task
        without drafts gets an empty result and its image embedded ahead of the clicks."""
        url, image = self._task_image(task, config)
        h, w = image.shape[:2]
        sources = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        sources += [p for p in task.get("predictions") or [] if not str(p.get("model_version", "")).startswith("promptmoe-")]
        drafts: list[tuple[str, np.ndarray]] = []
        for source in sorted(sources, key=lambda s: str(s.get("updated_at") or s.get("created_at") or ""), reverse=True):
            for item in source.get("result") or []:
                if isinstance(item, dict) and str(item.get("type", "")).lower() == "brushlabels":
                    value = item.get("value") or {}
                    drafts.append((self._label(value.get("brushlabels"), config, "brushlabels"), self._brush_mask(item, value, h, w)))
            if drafts:
                break
        if not drafts and task.get("data", {}).get(self.settings.mask_data_key):
            drafts = self._mask_image_drafts(task["data"], config, (h, w))
        if not drafts:
            # Nothing to refine: embed the image now, so the annotator's first click on this
            # task is fast (kept in memory, and on disk with EMBEDDING_DIR).
            self.engine.embed(image)
        return self._refine_drafts(image, url, drafts, task, project)

    def _mask_image_drafts(self, data: dict, config: LabelConfig, shape: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
        """Drafts from a mask image in the task data: pixel value k in 1..len(labels) is the
        k-th brush label; a 0/255 mask is one draft of ``data["label"]`` (or the only label)."""
        values = self.fetcher.label_map(data[self.settings.mask_data_key], shape)
        present = [int(v) for v in np.unique(values) if v]
        if present == [255]:
            label = data.get("label") or (config.labels[0] if len(config.labels) == 1 else None)
            if label is None:
                raise TaskError(f"a 0/255 mask needs the task data field \"label\" (one of {list(config.labels)})")
            return [(self._label([label], config, "mask"), values > 0)]
        bad = [v for v in present if v > len(config.labels)]
        if bad:
            raise TaskError(f"mask values {bad} name no brush label (1..{len(config.labels)} = {list(config.labels)})")
        return [(config.labels[v - 1], values == v) for v in present]

    def _refine_drafts(
        self, image: np.ndarray, url: str, drafts: list[tuple[str, np.ndarray]], task: dict, project: str
    ) -> list[Region]:
        """PromptMoE refinement of each ``(label, draft (H, W) bool)``; the union of a label's
        drafts is remembered for pairing with the submitted annotation."""
        regions = []
        unions: dict[str, np.ndarray] = {}
        for label, draft in drafts:
            if not draft.any():
                continue
            with self._router_lock:
                router = self.router
            out = refine(self.engine, image, draft, self.settings.refine_variant, router=router)
            regions.append(Region(label, out.mask, float(out.score)))
            unions[label] = unions.get(label, np.zeros_like(draft)) | draft
        if "id" in task:
            for label, union in unions.items():
                self.store.put_draft(project, int(task["id"]), label, url, union)
        return regions

    # ------------------------------------------------------------------ active learning
    def _store_annotation(self, data: dict) -> dict:
        project = project_id(data.get("project"))
        config = parse_label_config((data.get("project") or {}).get("label_config", ""))
        ann, task = data.get("annotation") or {}, data.get("task") or {}
        if "id" not in ann or "id" not in task:
            raise TaskError("the webhook payload needs annotation.id and task.id")
        url = (task.get("data") or {}).get(config.image_key)
        if not url:
            raise TaskError(f"task {task['id']} has no image in data.{config.image_key}")
        regions = []
        if not ann.get("was_cancelled"):
            for i, item in enumerate(ann.get("result") or []):
                if str(item.get("type", "")).lower() != "brushlabels" or item.get("from_name") != config.brush_from:
                    continue
                value = item.get("value") or {}
                h, w = int(item.get("original_height", 0)), int(item.get("original_width", 0))
                mask = self._brush_mask(item, value, h, w)
                if mask.any():
                    regions.append((f"{i}:{item.get('id', '')}", self._label(value.get("brushlabels"), config, "brushlabels"), mask))
        self.store.replace_annotation(project, int(ann["id"]), int(task["id"]), url, regions)
        finals: dict[str, np.ndarray] = {}
        for _, label, mask in regions:
            finals[label] = finals.get(label, np.zeros_like(mask)) | mask
        pairs = self.store.pair_annotation(project, int(ann["id"]), int(task["id"]), finals)
        features = sum(
            self._reference_features(Reference(project, int(ann["id"]), r, label, url, m)) is not None
            for r, label, m in regions
        )
        return {"references": len(regions), "pairs": pairs, "features": features}

    def _train(self) -> dict:
        """Refit the router on every stored (draft, final) pair and swap it in atomically."""
        pairs = self.store.pairs()
        triples = []
        for pair in pairs:
            try:
                image = self.fetcher.image(pair.image_url)
            except ImageFetchError as exc:
                log.warning("training pair skipped: %s", exc)
                continue
            if image.shape[:2] == pair.draft.shape:
                triples.append((image, pair.draft, pair.final))
        if not triples:
            return {"trained": False, "reason": "no (draft, final) pairs yet: refine drafts, then submit annotations",
                    "model_version": self.model_version}
        out_dir = Path(self.settings.model_dir) / "routers"
        out_dir.mkdir(parents=True, exist_ok=True)
        current = self.store.current_router()
        path = out_dir / f"router-{(current[0] if current else 0) + 1}.pt"
        figures = refit_router(self.engine, triples, path, base_weights=current[1] if current else None)
        router = load_router(path)
        version = self.store.add_router(path, len(triples), figures)
        with self._router_lock:
            self.router, self._router_version = router, version
        return {"trained": True, "pairs": len(triples), "figures": figures, "model_version": self.model_version}

    # ------------------------------------------------------------------ helpers
    def _task_image(self, task: dict, config: LabelConfig) -> tuple[str, np.ndarray]:
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise TaskError("a task must be an object with a data object")
        url = task["data"].get(config.image_key)
        if not url:
            raise TaskError(f"no image URL in data.{config.image_key} (the <Image> tag's value ${config.image_key})")
        return url, self.fetcher.image(url)

    @staticmethod
    def _label(labels: Any, config: LabelConfig, kind: str) -> str:
        if not isinstance(labels, list) or not labels:
            raise TaskError(f"a {kind} region has no label")
        if labels[0] not in config.labels:
            raise TaskError(
                f"{kind} label {labels[0]!r} is not a BrushLabels label ({list(config.labels)}); give the "
                "smart tools the same <Label> values as the BrushLabels tag"
            )
        return labels[0]

    @staticmethod
    def _brush_mask(item: dict, value: dict, h: int, w: int) -> np.ndarray:
        if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
            raise TaskError("a brush region must carry value.format 'rle' and value.rle, a list of ints")
        ih, iw = int(item.get("original_height", h)), int(item.get("original_width", w))
        if (ih, iw) != (h, w):
            raise TaskError(f"brush region is for a {iw}x{ih} image but the image is {w}x{h}")
        return rle.decode(value["rle"], h, w)

    def _prediction(self, regions: list[Region], config: LabelConfig) -> dict:
        """Label Studio's prediction: brush results at the image's size; scores are SAM's
        predicted IoU clipped to [0, 1], the task score their mean."""
        result = []
        for region in regions:
            region.score = min(max(region.score, 0.0), 1.0)
            h, w = region.mask.shape
            common = {"to_name": config.image_to, "original_width": w, "original_height": h, "image_rotation": 0,
                      "readonly": False, "score": region.score}
            result.append({**common, "from_name": config.brush_from, "type": "brushlabels",
                           "value": {"format": "rle", "rle": rle.encode(region.mask), "brushlabels": [region.label]}})
            if config.polygon_from:
                for poly in mask_to_polygons(region.mask):
                    points = (poly * [100.0 / w, 100.0 / h]).round(3).tolist()
                    result.append({**common, "from_name": config.polygon_from, "type": "polygonlabels",
                                   "value": {"points": points, "closed": True, "polygonlabels": [region.label]}})
        score = float(np.mean([r.score for r in regions])) if regions else 0.0
        return {"result": result, "score": score, "model_version": self.model_version}


def _percent(value: dict, key: str) -> float:
    v = value.get(key)
    if not isinstance(v, (int, float)) or not np.isfinite(v):
        raise TaskError(f"value.{key} must be a number (percent of the image), got {v!r}")
    return float(v)
