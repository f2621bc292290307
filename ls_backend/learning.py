"""Active learning from Label Studio's webhooks.

* A submitted annotation: its brush regions become reference exemplars of their labels
  (SmartSAM prefers objects like them on first clicks), and each label's final mask is
  paired with the draft the backend refined for that task, if any.
* A deleted annotation: its references and pairs go.
* ``START_TRAINING``: the PromptMoE router is refitted on every stored (draft, final)
  pair; the new weights become the next model version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from promptmoe_plugin.experts.depth import DepthEstimator
from promptmoe_plugin.router import Router, load_router, refit_router
from promptmoe_plugin.sam import SamEngine
from promptmoe_plugin.smartsam.intent import Intent

from .images import ImageFetcher, ImageFetchError
from .label_config import parse_label_config
from .references import Reference, ReferenceStore
from .tasks import TaskError, annotation_regions, project_id

log = logging.getLogger(__name__)


class ReferenceFeatures:
    """The intent's features of stored references, computed once and kept in the store
    (under the intent's name)."""

    def __init__(self, intent: Intent, store: ReferenceStore, fetcher: ImageFetcher):
        self.intent = intent
        self.store = store
        self.fetcher = fetcher
        self._shape: tuple[int, ...] | None = None

    def of_label(self, project: str, label: str, limit: int) -> list[np.ndarray]:
        """Features of the newest ``limit`` references of ``label`` (unusable ones left out)."""
        refs = self.store.references(project, label, limit)
        return [f for f in map(self, refs) if f is not None]

    def __call__(self, ref: Reference) -> np.ndarray | None:
        """The ``(D,) float32`` feature of ``ref``, or None (intent ``none``, or its image
        cannot be fetched or changed size)."""
        name = self.intent.name
        if name == "none":
            return None
        cached = self.store.features(ref, name)
        if cached is not None and cached.shape == self.shape():
            return cached  # (features of another shape come from an older intent: redo)
        try:
            image = self.fetcher.image(ref.image_url)
        except ImageFetchError as exc:
            log.warning("reference %s/%s skipped: %s", ref.annotation, ref.region, exc)
            return None
        if image.shape[:2] != ref.mask.shape:
            log.warning("reference %s/%s skipped: image size changed", ref.annotation, ref.region)
            return None
        features = self.intent.reference_features(image, ref.mask)
        self.store.put_features(ref, name, features)
        return features

    def shape(self) -> tuple[int, ...]:
        """Shape of the intent's reference features, measured once on a tiny image."""
        if self._shape is None:
            image = np.zeros((32, 32, 3), np.uint8)
            mask = np.zeros((32, 32), bool)
            mask[8:24, 8:24] = True
            self._shape = self.intent.reference_features(image, mask).shape
        return self._shape


def store_annotation(data: dict, store: ReferenceStore, features: ReferenceFeatures) -> dict:
    """``ANNOTATION_CREATED`` / ``_UPDATED``: make the annotation's brush regions the
    references of its id, pair each label's union with the label's stored draft, and
    compute the references' features.  Returns the counts."""
    project = project_id(data.get("project"))
    config = parse_label_config((data.get("project") or {}).get("label_config", ""))
    ann, task = data.get("annotation") or {}, data.get("task") or {}
    if "id" not in ann or "id" not in task:
        raise TaskError("the webhook payload needs annotation.id and task.id")
    url = (task.get("data") or {}).get(config.image_key)
    if not url:
        raise TaskError(f"task {task['id']} has no image in data.{config.image_key}")
    annotation, task_id = int(ann["id"]), int(task["id"])
    regions = annotation_regions(ann, config)
    store.replace_annotation(project, annotation, task_id, url, regions)
    finals: dict[str, np.ndarray] = {}
    for _, label, mask in regions:
        finals[label] = finals.get(label, np.zeros_like(mask)) | mask
    pairs = store.pair_annotation(project, annotation, task_id, finals)
    computed = sum(
        features(Reference(project, annotation, region, label, url, mask)) is not None
        for region, label, mask in regions
    )
    return {"references": len(regions), "pairs": pairs, "features": computed}


def delete_annotations(event: str, data: dict, store: ReferenceStore) -> dict:
    """``ANNOTATION_DELETED`` / ``ANNOTATIONS_DELETED``: drop the references and pairs of
    the annotations named (in the payload's project, or any project when it names none)."""
    anns = data.get("annotations") or [data.get("annotation") or {}]
    ids = [int(a["id"]) for a in anns if isinstance(a, dict) and "id" in a]
    if not ids:
        raise TaskError(f"{event} without annotation ids")
    project = project_id(data.get("project")) if data.get("project") else None
    return {"deleted_references": sum(store.delete_annotation(project, i) for i in ids)}


@dataclass(frozen=True)
class Refit:
    """A refitted router, its store version, the pairs it saw and its figures."""

    router: Router
    version: int
    pairs: int
    figures: dict


def refit(
    engine: SamEngine,
    store: ReferenceStore,
    fetcher: ImageFetcher,
    depth: DepthEstimator | None = None,
) -> Refit | None:
    """``START_TRAINING``: refit the router on every stored (draft, final) pair whose image
    still loads at its size, starting from the current weights (``depth``: the depth
    expert's model, if any); the weights go to ``<model_dir>/routers/router-<version>.pt``.
    None when there is no usable pair."""
    triples = []
    for pair in store.pairs():
        try:
            image = fetcher.image(pair.image_url)
        except ImageFetchError as exc:
            log.warning("training pair skipped: %s", exc)
            continue
        if image.shape[:2] == pair.draft.shape:
            triples.append((image, pair.draft, pair.final))
    if not triples:
        return None
    out_dir = store.dir / "routers"
    out_dir.mkdir(parents=True, exist_ok=True)
    current = store.current_router()
    path = out_dir / f"router-{(current[0] if current else 0) + 1}.pt"
    base = current[1] if current else None
    figures = refit_router(engine, triples, path, base_weights=base, depth=depth)
    router = load_router(path)
    version = store.add_router(path, len(triples), figures)
    return Refit(router, version, len(triples), figures)
