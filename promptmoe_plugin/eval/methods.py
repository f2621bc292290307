"""The methods the click and refinement benchmarks compare, and their typed options.

Click methods start a :class:`~promptmoe_plugin.clicks.ClickSession` on one image: plain
SAM (:class:`~promptmoe_plugin.clicks.SamClickSession`), SAM with guarded later clicks
(:mod:`~promptmoe_plugin.corrections`) or SmartSAM
(:class:`~promptmoe_plugin.smartsam.SmartSamSession`, guarded later clicks by default).
Refine methods are the variants of :func:`promptmoe_plugin.refine.refine`.

A benchmark resolves the names (:func:`click_methods`, :func:`refine_methods`), types the
options of each method (:mod:`.options`) and builds one runner per method for the whole
run (:func:`click_runners`, :func:`refine_runners`).  A runner holds what must outlive a
single image: a SmartSAM method's :class:`~promptmoe_plugin.smartsam.Intent` (its
reference features stay cached across images), the expert selector's weights and the
depth model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType

import numpy as np

from ..clicks import ClickSession, SamClickSession
from ..corrections import CorrectionConfig
from ..experts.depth import DepthEstimator
from ..refine import VARIANTS, RefineConfig, refine
from ..router import Router, load_router
from ..sam import SamEngine
from ..smartsam import Intent, SmartSamConfig, SmartSamSession, make_intent

#: An exemplar for methods that use references: ``(image (H, W, 3) uint8, mask (H, W) bool)``.
Reference = tuple[np.ndarray, np.ndarray]


def _optional(text: str | None) -> str | None:
    """An option string, None when absent or ``none``."""
    return None if text is None or text.lower() == "none" else text


# ------------------------------------------------------------------------------- clicks
@dataclass(frozen=True)
class ClickMethod:
    """A click method.

    Attributes:
        name: the name benchmarks and tables use.
        help: one line for the command line's help.
        intent: SmartSAM's intent (``"none"``, ``"sam"``, ``"dinov2"``); None for plain SAM.
        multimask_first: plain SAM: best of 3 masks at click 1 (else single-mask output).
        uses_references: takes the ground truth of earlier images (project simulation).
        corrected: plain SAM's first click with guarded later clicks
            (:mod:`~promptmoe_plugin.corrections`); SmartSAM methods always are, unless
            their options say ``corrections=none``.
        feed_logits: plain SAM feeds the previous logits back (False: ``sam-fresh``).
    """

    name: str
    help: str
    intent: str | None = None
    multimask_first: bool = True
    uses_references: bool = False
    corrected: bool = False
    feed_logits: bool = True

    @property
    def takes_options(self) -> bool:
        """SmartSAM and corrected methods take options (:class:`ClickOptions`); plain SAM
        takes none."""
        return self.intent is not None or self.corrected


CLICK_METHODS: Mapping[str, ClickMethod] = MappingProxyType(
    {
        m.name: m
        for m in (
            ClickMethod(
                "sam",
                "plain SAM: best of 3 masks at click 1, then single mask with previous logits",
            ),
            ClickMethod(
                "sam-single",
                "plain SAM with single-mask output from click 1",
                multimask_first=False,
            ),
            ClickMethod(
                "sam-fresh",
                "plain SAM without the previous logits: each click decodes all clicks so "
                "far (and the box) afresh, single mask after click 1",
                feed_logits=False,
            ),
            ClickMethod(
                "sam-guarded",
                "SAM's first click, then later clicks with a guard for small corrections, "
                "decoded on a crop around the object from click 4 on",
                corrected=True,
            ),
            ClickMethod(
                "smartsam-pure",
                "SmartSAM without references: candidate holding the click with the best "
                "predicted IoU",
                intent="none",
            ),
            ClickMethod(
                "smartsam-ref",
                "SmartSAM choosing by similarity to reference masks of earlier images "
                "(project simulation)",
                intent="sam",
                uses_references=True,
            ),
        )
    }
)


def click_methods(names: Sequence[str]) -> list[ClickMethod]:
    """Resolve click method names.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    for name in names:
        if name not in CLICK_METHODS:
            raise ValueError(
                f"unknown click method {name!r}: choose from {', '.join(CLICK_METHODS)}"
            )
    return [CLICK_METHODS[name] for name in names]


@dataclass(frozen=True)
class ClickOptions:
    """Options of a SmartSAM or corrected click method.

    Attributes:
        config: the agent's settings (SmartSAM).
        intent: replaces the method's intent (``"none"``, ``"sam"``, ``"dinov2"``); None
            keeps it.
        dinov2_model: DINOv2 folder or hub id for the ``dinov2`` intent (None: its default).
        corrections: the later clicks' settings; None (``corrections=none``) is plain SAM.
    """

    config: SmartSamConfig = field(default_factory=SmartSamConfig)
    intent: str | None = None
    dinov2_model: str | None = None
    corrections: CorrectionConfig | None = field(default_factory=CorrectionConfig)

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> ClickOptions:
        """From ``key -> value`` strings: ``intent``, ``dinov2_model``, ``corrections=none``
        and the fields of :class:`~promptmoe_plugin.smartsam.SmartSamConfig` and of
        :class:`~promptmoe_plugin.corrections.CorrectionConfig`.

        Raises:
            ValueError: an unknown key or a bad value.
        """
        rest = dict(values)
        intent, model = rest.pop("intent", None), _optional(rest.pop("dinov2_model", None))
        plain = rest.pop("corrections", "default").lower()
        if plain not in ("none", "default"):
            raise ValueError(f"corrections is none or default, got {plain!r}")
        names = {f.name for f in fields(CorrectionConfig)}
        later = {k: v for k, v in rest.items() if k in names}
        agent = SmartSamConfig.from_strings({k: v for k, v in rest.items() if k not in names})
        if plain == "none" and later:
            raise ValueError(f"corrections=none with correction settings {sorted(later)}")
        corrections = None if plain == "none" else CorrectionConfig.from_strings(later)
        return cls(agent, intent, model, corrections)


@dataclass(frozen=True)
class ClickRunner:
    """A click method ready for a run: the engine, the agent's settings, (SmartSAM) the
    intent shared by every session of the run and the later clicks' settings (None: plain
    SAM)."""

    method: ClickMethod
    engine: SamEngine
    config: SmartSamConfig = field(default_factory=SmartSamConfig)
    intent: Intent | None = None
    corrections: CorrectionConfig | None = None

    @property
    def name(self) -> str:
        return self.method.name

    def start(
        self, image: np.ndarray, *, references: Sequence[Reference] = (), seed: int = 0
    ) -> ClickSession:
        """A new session on ``image`` ``(H, W, 3) uint8`` RGB.  ``references`` reach only
        methods that use them; ``seed`` seeds SmartSAM's agent."""
        if self.intent is None:
            return SamClickSession(
                self.engine,
                image,
                multimask_first=self.method.multimask_first,
                corrections=self.corrections,
                feed_logits=self.method.feed_logits,
            )
        refs = list(references) if self.method.uses_references else []
        return SmartSamSession(
            self.engine,
            image,
            self.config,
            intent=self.intent,
            references=refs,
            seed=seed,
            corrections=self.corrections,
        )


def click_runners(
    engine: SamEngine, methods: Sequence[ClickMethod], options: Mapping[str, ClickOptions]
) -> list[ClickRunner]:
    """One runner per method; each SmartSAM method gets its own intent, made here once.

    ``options`` maps SmartSAM method names to their options (absent: defaults; plain SAM
    takes none, see :func:`.options.click_options`).

    Raises:
        ValueError: an unknown intent, or a DINOv2 model that cannot be loaded.
    """
    runners = []
    for method in methods:
        if not method.takes_options:
            runners.append(ClickRunner(method, engine))
            continue
        opts = options.get(method.name, ClickOptions())
        if method.intent is None:
            runners.append(ClickRunner(method, engine, corrections=opts.corrections))
            continue
        intent = make_intent(opts.intent or method.intent, engine, opts.dinov2_model)
        runners.append(ClickRunner(method, engine, opts.config, intent, opts.corrections))
    return runners


# ------------------------------------------------------------------------------- refinement
#: The refine variant computed here, without SAM: the coarse mask itself.
UNREFINED = "unrefined"
#: Variants whose experts the selector (:class:`~promptmoe_plugin.router.Router`) picks,
#: unless the options fix the experts.
ROUTED_VARIANTS = ("full", "lite")


@dataclass(frozen=True)
class RefineMethod:
    """A variant of :func:`promptmoe_plugin.refine.refine` (``unrefined`` runs here)."""

    name: str

    def uses_router(self, config: RefineConfig) -> bool:
        """Whether the variant asks the expert selector with ``config``."""
        return self.name in ROUTED_VARIANTS and config.experts is None


def refine_methods(names: Sequence[str]) -> list[RefineMethod]:
    """Resolve refine variant names.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    for name in names:
        if name not in VARIANTS:
            raise ValueError(f"unknown refine method {name!r}: choose from {', '.join(VARIANTS)}")
    return [RefineMethod(name) for name in names]


@dataclass(frozen=True)
class RefineOptions:
    """Options of a refine method.

    Attributes:
        config: the refinement settings (the baselines ignore most of them).
        router: expert selector weights file (None: the shipped weights).
        depth_model: depth model path or hub id (None: the run's depth model).
    """

    config: RefineConfig = field(default_factory=RefineConfig)
    router: str | None = None
    depth_model: str | None = None

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> RefineOptions:
        """From ``key -> value`` strings: ``router``, ``depth_model`` and the fields of
        :class:`~promptmoe_plugin.refine.RefineConfig`.

        Raises:
            ValueError: an unknown key or a bad value.
        """
        rest = dict(values)
        router = _optional(rest.pop("router", None))
        depth_model = _optional(rest.pop("depth_model", None))
        return cls(RefineConfig.from_strings(rest), router, depth_model)


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
class RefineRunner:
    """A refine method ready for a run: the engine, its settings, and the selector and
    depth model it shares with the run's other methods."""

    method: RefineMethod
    engine: SamEngine
    config: RefineConfig = field(default_factory=RefineConfig)
    router: Router | None = None
    depth: DepthEstimator | None = None

    @property
    def name(self) -> str:
        return self.method.name

    def run(self, image: np.ndarray, coarse: np.ndarray, *, seed: int = 0) -> RefineOutput:
        """Refine ``coarse`` ``(H, W) bool`` on ``image`` ``(H, W, 3) uint8`` RGB;
        ``unrefined`` returns a copy of ``coarse`` without timings."""
        if self.name == UNREFINED:
            return RefineOutput(coarse.copy(), {})
        result = refine(
            self.engine,
            image,
            coarse,
            self.name,
            self.config,
            router=self.router,
            depth=self.depth,
            seed=seed,
        )
        p = result.prompts
        return RefineOutput(
            np.asarray(result.mask, bool),
            dict(result.timings),
            p.points,
            p.labels,
            p.box,
            result.source,
        )


def refine_runners(
    engine: SamEngine,
    methods: Sequence[RefineMethod],
    options: Mapping[str, RefineOptions],
    depth_model: str | None = None,
) -> list[RefineRunner]:
    """One runner per method.  Each selector weights file and each depth model is loaded
    once for all methods that use it.

    Args:
        options: options by method name (absent: defaults).
        depth_model: depth model of the methods whose options name none (None: no depth
            expert).
    """
    routers: dict[str | None, Router] = {}
    depths: dict[str, DepthEstimator] = {}
    runners = []
    for method in methods:
        opts = options.get(method.name, RefineOptions())
        router = None
        if method.uses_router(opts.config):
            if opts.router not in routers:
                routers[opts.router] = load_router(opts.router)
            router = routers[opts.router]
        model = opts.depth_model or depth_model
        if model and model not in depths:
            depths[model] = DepthEstimator(model)
        depth = depths[model] if model else None
        runners.append(RefineRunner(method, engine, opts.config, router, depth))
    return runners
