"""The registry of method names used by ``promptmoe bench click`` and ``bench refine``.

Click methods start a :class:`~promptmoe_plugin.clicks.ClickSession` on one image; refine
methods are the variants of :func:`promptmoe_plugin.refine.refine`.  Methods implemented
in other modules are imported only when asked for, so a missing module gives a clear error
naming it instead of breaking the whole harness.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..clicks import ClickSession
    from ..sam import SamEngine

#: An exemplar for methods that use references: ``(image (H, W, 3) uint8, mask (H, W) bool)``.
Reference = tuple[np.ndarray, np.ndarray]


class MethodUnavailable(ValueError):
    """A known method whose implementation cannot be imported (yet)."""


def _load(module: str, attr: str, method: str, owner: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise MethodUnavailable(f"method {method!r} needs {module}.{attr} ({owner}), which is not importable: {exc}") from exc


@dataclass(frozen=True)
class ClickMethod:
    """A click method: ``session_class(engine, image, **kwargs)`` from ``module``."""

    name: str
    help: str
    module: str
    attr: str
    owner: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: Takes ``references`` (project simulation) and ``seed``.
    uses_references: bool = False
    seeded: bool = False

    def load(self) -> type:
        """The session class; raises :class:`MethodUnavailable` when not importable."""
        return _load(self.module, self.attr, self.name, self.owner)

    def start(
        self,
        engine: SamEngine,
        image: np.ndarray,
        *,
        references: Sequence[Reference] = (),
        seed: int = 0,
        options: Mapping[str, Any] | None = None,
    ) -> ClickSession:
        """A new session on ``image`` ``(H, W, 3) uint8`` RGB (references are ignored by
        methods that do not use them)."""
        kwargs = {**self.kwargs, **(options or {})}
        if self.uses_references:
            kwargs["references"] = list(references)
        if self.seeded:
            kwargs["seed"] = seed
        return self.load()(engine, image, **kwargs)


_SMARTSAM = ("promptmoe_plugin.smartsam", "SmartSamSession", "SmartSAM, issue 5")

CLICK_METHODS: dict[str, ClickMethod] = {
    m.name: m
    for m in (
        ClickMethod(
            "sam",
            "plain SAM: best of 3 masks at click 1, then single mask with previous logits",
            "promptmoe_plugin.clicks",
            "SamClickSession",
            "plain SAM clicks",
            {"multimask_first": True},
        ),
        ClickMethod(
            "sam-single",
            "plain SAM with single-mask output from click 1",
            "promptmoe_plugin.clicks",
            "SamClickSession",
            "plain SAM clicks",
            {"multimask_first": False},
        ),
        ClickMethod(
            "smartsam-pure",
            "SmartSAM without references: candidate holding the click with the best predicted IoU",
            *_SMARTSAM,
            {"selector": "none"},
            seeded=True,
        ),
        ClickMethod(
            "smartsam-ref",
            "SmartSAM choosing by similarity to reference masks of earlier images (project simulation)",
            *_SMARTSAM,
            {"selector": "sam"},
            uses_references=True,
            seeded=True,
        ),
    )
}


def click_methods(names: Sequence[str]) -> list[ClickMethod]:
    """Resolve click method names, importing each implementation now.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        MethodUnavailable: a known method whose module is not importable.
    """
    methods = []
    for name in names:
        if name not in CLICK_METHODS:
            raise ValueError(f"unknown click method {name!r}: choose from {', '.join(CLICK_METHODS)}")
        method = CLICK_METHODS[name]
        method.load()
        methods.append(method)
    return methods


#: The refine variant computed here, without SAM: the coarse mask itself.
UNREFINED = "unrefined"


@dataclass(frozen=True)
class RefineOutput:
    """What the refine benchmark keeps of one refinement (image frame).

    Attributes:
        mask: ``(H, W) bool`` result.
        timings: seconds per stage.
        points: ``(k, 2)`` (x, y) image px and ``labels`` ``(k,)`` of the final prompts,
            ``box`` ``(4,)`` or None, for overlays.
        source: where the mask came from (``Refinement.source``; ``coarse`` for unrefined).
    """

    mask: np.ndarray
    timings: dict[str, float]
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    source: str = "coarse"


@dataclass(frozen=True)
class RefineMethod:
    """A variant of :func:`promptmoe_plugin.refine.refine` (``unrefined`` runs here)."""

    name: str

    def run(
        self,
        engine: SamEngine,
        image: np.ndarray,
        coarse: np.ndarray,
        *,
        seed: int = 0,
        options: Mapping[str, Any] | None = None,
    ) -> RefineOutput:
        """Refine ``coarse`` ``(H, W) bool`` on ``image`` ``(H, W, 3) uint8`` RGB."""
        if self.name == UNREFINED:
            return RefineOutput(coarse.copy(), {})
        refine = _load("promptmoe_plugin.refine", "refine", self.name, "PromptMoE refinement, issue 4")
        result = refine(engine, image, coarse, self.name, seed=seed, **(options or {}))
        prompts = result.prompts
        drawn = {k: (prompts.get(k) if isinstance(prompts, Mapping) else getattr(prompts, k, None)) for k in ("points", "labels", "box")}
        return RefineOutput(np.asarray(result.mask, bool), dict(result.timings), **drawn, source=result.source)


def refine_methods(names: Sequence[str]) -> list[RefineMethod]:
    """Resolve refine variant names (``unrefined`` needs no import).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        MethodUnavailable: a variant asked for while ``promptmoe_plugin.refine`` is not importable.
    """
    methods = []
    for name in names:
        if name != UNREFINED:
            variants = _load("promptmoe_plugin.refine", "VARIANTS", name, "PromptMoE refinement, issue 4")
            if name not in variants:
                raise ValueError(f"unknown refine method {name!r}: choose from {', '.join(variants)}")
        methods.append(RefineMethod(name))
    return methods
