"""SmartSAM click session: one click in, the object the annotator meant out.

The first click runs the agent (Sec. 3.2 of the SmartSAM paper):

1. prior initial sampler: the user's click plus sampled points and boxes around it, all
   decoded in one batched call with three masks each;
2. next chain clickers: from the best candidates, chains of agent clicks (Add / Cut in
   uncertain regions), every step of every chain decoded in one batched call;
3. choice: SAM's own answer (the best of the click's three masks by predicted IoU)
   stands outright when it already covers a sizeable share of the image and no
   references speak for a switch (``hold_area``); otherwise it stands unless another
   candidate that holds the click scores higher by a margin, the
   score being the predicted IoU (calibrated per candidate kind), less a penalty when the
   click lies less central in the candidate than in SAM's answer, plus (with
   references) the similarity to the reference instances of the click's label
   (:meth:`SmartSamSession._scores`).  With references and the ``sam`` intent, a learned
   switch (:mod:`.switch`) makes that decision instead.

All candidates live as low-res logits, compared on the
:func:`~promptmoe_plugin.sam.frames.lowres_shape` grid; only the chosen one is upscaled.
Later clicks continue from the chosen candidate (its low-res logits as mask prompt) with
the guarded corrections of :class:`~promptmoe_plugin.clicks.SamClickSession`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..clicks import SamClickSession
from ..configs import parse_fields
from ..corrections import Correction, CorrectionConfig
from ..experts.geometry import inner_distance
from ..sam import ImageEmbedding, Prompt, SamEngine
from ..sam.frames import crop_lowres, lowres_pixel, lowres_shape, lowres_to_image
from ..zoom import Box
from .chains import next_click
from .intent import Intent, NoIntent, matmul, similarity
from .sampler import sample_boxes, sample_points
from .switch import SHIPPED, SwitchWeights, load_switch, switch_choice, switch_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmartSamConfig:
    """Agent settings.

    The paper's setting (:data:`PAPER_AGENT`: 6 points, 3 boxes, chains from all 30 candidates,
    3 steps each, ~100 decoded prompts) suits a GPU.  The defaults fit a budget of 4x one
    plain SAM click on a CPU: no sampled prompts, one Add/Cut step from each of the 3 best
    candidates of the user's click (4 decoded prompts).  Measured on DAVIS / GrabCut
    subsets, the sampled prompts raise the pool's oracle IoU by a few points but cost 9
    decodes; the chain steps from the click's own candidates give most of the gain.

    Attributes:
        n_points, n_boxes, beta: the prior initial sampler: sampled points (paper: 6),
            boxes (paper: 3), and the Gamma(2, 1) distance scale as a fraction of the
            image's long side (the paper's peak at 100 px of 1024 is about 0.1).
        n_chains: chains started from the best candidates containing the click (by
            predicted IoU, after merging near-duplicates).
        chain_steps: agent clicks per chain.
        rho: uncertainty level of the chain clickers (:func:`.chains.uncertain_regions`).
        duplicate_iou: candidates overlapping more than this are merged.
        max_area: candidates covering more than this fraction of the image are taken for
            background: never chained, nor chosen unless nothing else holds the click.
            SAM's own answer is exempt from the choice's limit: a large object clicked
            (a bus or a bed seen close up) fills most of the image, and replacing SAM's
            answer by a part of it lost 30+ IoU on 8 of 601 COCO_MVal-dev instances.
        reduce: ``"max"`` or ``"mean"`` similarity over several references (max was
            better on DAVIS by 2-4 points, see docs/benchmarks.md).
        chain_bias: subtracted from the predicted IoU of chain candidates (a single-mask
            output of several points) to compare them with the click's own three masks;
            sampled points and boxes are scored like the click's own masks.  0 by
            default: on the tuning mix a chain mask outscoring SAM's own answer was
            better on DAVIS and worse on COCO, but the centrality guard below separates
            those cases, and any bias on top of it lowered the mix (docs/benchmarks.md).
        centre_weight: weight of the click's centrality (:func:`centrality`: distance to
            the candidate's boundary over the candidate's largest inner distance, in [0,
            1]): a candidate in which the click lies less central than in SAM's own
            answer loses ``centre_weight`` times the difference.  An annotator clicks
            inside the object they mean, not at its rim: a larger mask around a small
            object held by or lying on it (a glove, a cup) usually has the click
            off-centre.  One-sided, so it never promotes a candidate, only holds SAM's
            answer: a two-sided term gained more with the benchmark's centre clicks but
            lost 6-12 points on DAVIS / GrabCut with random clicks.
        switch_margin: a candidate replaces SAM's own answer only when its score beats
            that answer's by more than this.
        sim_weight: weight of the similarity to the references (cosine, reduced by
            ``reduce``) in the score, relative to the predicted IoU.
        sim_margin: with references, a candidate replaces SAM's own answer only when it
            is at least this much more similar to them.
        hold_area: without references (pure mode, or a label with no exemplars yet),
            SAM's own answer stands whatever the scores when it holds the click and
            covers more than this share of the image (None: off).  An answer that is
            already a sizeable object is rarely a part of the one meant: on
            COCO_MVal-dev the switches that lost 30+ points came from answers of median
            3.7% of the image, those that won from answers of 1.5%.  Without references
            only SAM's predicted IoU speaks for a switch, and the losing switches were
            to chain masks 1.5-21x the size of SAM's answer: 0.08 keeps COCO_MVal-dev's
            first-click losses within 2% (18 -> 11 of 601) for 0.1-0.3 mIoU@1 on DAVIS
            and GrabCut with centre clicks, 1.1 on GrabCut with random ones (docs/benchmarks.md,
            "First click").
        hold_area_references: the same hold with references (None: off, the default):
            the label's exemplars are the evidence a switch needs, and the hold raised
            GrabCut-50's NoC@90 from 1.40 to 1.48 there.
        switch: with references and an intent made of parts (``sam``), the learned
            switch (:mod:`.switch`) decides instead of the score rule above:
            ``"default"`` uses the shipped weights, a path the weights of ``promptmoe
            train-switch``, None the score rule.  On COCO_MVal-dev it cut the first-click
            losses from 29 to 15 of 601 and raised mIoU@1 by 3.2 (docs/benchmarks.md,
            "First click").
    """

    n_points: int = 0
    n_boxes: int = 0
    beta: float = 0.1
    n_chains: int = 3
    chain_steps: int = 1
    rho: float = 0.5
    duplicate_iou: float = 0.95
    max_area: float = 0.6
    reduce: str = "max"
    chain_bias: float = 0.0
    centre_weight: float = 0.2
    switch_margin: float = 0.0
    sim_weight: float = 0.5
    sim_margin: float = 0.0
    hold_area: float | None = 0.08
    hold_area_references: float | None = None
    switch: str | None = SHIPPED

    def __post_init__(self) -> None:
        for name in ("n_points", "n_boxes", "n_chains", "chain_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.max_area <= 1:
            raise ValueError(f"max_area must be in (0, 1], got {self.max_area}")
        for name in ("hold_area", "hold_area_references"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1] or None, got {value}")
        for name in ("centre_weight", "sim_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', got {self.reduce!r}")

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> SmartSamConfig:
        """A config from field name -> string, e.g. ``{"n_chains": "30", "reduce":
        "mean"}``; unset fields keep their defaults.

        Raises:
            ValueError: an unknown field (the message lists the known ones), a string
                that does not parse, or a value out of range.
        """
        return cls(**parse_fields(cls, values))


#: The paper's agent (Sec. 4.1): 9 sampled prompts, 3 chain steps from every candidate.
PAPER_AGENT = SmartSamConfig(n_points=6, n_boxes=3, n_chains=30, chain_steps=3)


@dataclass
class CandidatePool:
    """Candidate masks of one first click, all in the low-res frame.

    Attributes:
        logits: ``(N, 256, 256) float32`` low-res logits (mask prompts for later clicks).
        iou: ``(N,) float32`` SAM's predicted IoU.
        prompts: the prompt each candidate was decoded from.
        source: ``(N,)`` where it came from: ``"click"``, ``"point"``, ``"box"`` or
            ``"chain"``.
        chain: ``(N,) int`` chain index of chain candidates, -1 for the sampler's.
        step: ``(N,) int`` chain step (1, 2, ...), 0 for the sampler's.
    """

    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 256, 256), np.float32))
    iou: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    prompts: list[Prompt] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    chain: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(
        self,
        logits: np.ndarray,
        iou: np.ndarray,
        prompts: Sequence[Prompt],
        source: Sequence[str],
        chain: Sequence[int] | None = None,
        step: int = 0,
    ) -> None:
        """Append ``(K, 256, 256)`` logits with their ``(K,)`` IoU, prompts, sources and
        (for chain steps) chain indices and step number."""
        self.logits = np.concatenate([self.logits, logits])
        self.iou = np.concatenate([self.iou, iou.astype(np.float32)])
        self.prompts.extend(prompts)
        self.source.extend(source)
        self.chain = np.concatenate(
            [self.chain, np.full(len(iou), -1) if chain is None else np.asarray(chain)]
        )
        self.step = np.concatenate([self.step, np.full(len(iou), step)])

    def __len__(self) -> int:
        return len(self.iou)


def _duplicates(masks: np.ndarray, iou: np.ndarray, threshold: float) -> np.ndarray:
    """``(N,) bool`` candidates to drop: each one overlapping a better-scored kept one by
    IoU > ``threshold``.  ``masks`` ``(N, lh, lw) bool`` low-res, ``iou`` ``(N,)``."""
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    inter = matmul(flat, flat.T)
    area = np.diag(inter)
    overlap = inter / np.maximum(area[:, None] + area[None, :] - inter, 1)
    drop = np.zeros(len(masks), bool)
    for i in np.argsort(-iou, kind="stable"):
        if not drop[i]:
            later = overlap[i] > threshold
            later[i] = False
            drop |= later & (iou <= iou[i])
    return drop


class SmartSamSession:
    """SmartSAM on one image: ClickSession protocol (``mask``, ``score``, ``click``).

    Args:
        engine: the shared SAM engine (the image is embedded once, through its cache).
        image: ``(H, W, 3) uint8`` RGB.
        config: the agent's settings.
        intent: how candidates are compared with the references
            (:func:`~.intent.make_intent`); None is :class:`~.intent.NoIntent`, the pure
            mode.
        references: reference instances, each ``(image (H', W', 3) uint8, mask (H', W')
            bool)``; their features are computed (and cached) by ``intent``.
        reference_features: precomputed ``intent.reference_features`` vectors ``(D,)``,
            used before those of ``references``.
        seed: seed of the agent's random generator; same seed, same result.
        corrections: how later clicks choose their mask (:mod:`..corrections`); None is
            plain SAM.
    """

    def __init__(
        self,
        engine: SamEngine,
        image: np.ndarray,
        config: SmartSamConfig = SmartSamConfig(),
        *,
        intent: Intent | None = None,
        references: Sequence[tuple[np.ndarray, np.ndarray]] = (),
        reference_features: Sequence[np.ndarray] = (),
        seed: int = 0,
        corrections: CorrectionConfig | None = CorrectionConfig(),
    ):
        if not isinstance(config, SmartSamConfig):
            raise TypeError(f"config must be a SmartSamConfig, got {type(config).__name__}")
        self.engine = engine
        self.config = config
        self.seed = seed
        self.intent: Intent = intent if intent is not None else NoIntent()
        self._sam = SamClickSession(engine, image, multimask_first=True, corrections=corrections)
        self.emb: ImageEmbedding = self._sam.emb
        feats = [np.asarray(f, np.float32) for f in reference_features]
        feats += [self.intent.reference_features(img, m) for img, m in references]
        self.references = (
            np.stack(feats) if feats and feats[0].size else np.zeros((0, 0), np.float32)
        )
        self._switch = self._load_switch()
        self.pool = CandidatePool()
        self.chosen: int | None = None
        self._cell: tuple[int, int] | None = None  # low-res pixel of the first click
        #: Seconds per stage of the first click: sampler, chains, intent, total.
        self.timings: dict[str, float] = {}

    # ClickSession protocol ------------------------------------------------------------
    @property
    def mask(self) -> np.ndarray:
        """``(H, W) bool`` current mask, image frame."""
        return self._sam.mask

    @property
    def score(self) -> float:
        return self._sam.score

    @property
    def candidates(self) -> np.ndarray | None:
        """``(M, H, W) bool`` image-frame candidate pool of the first click (upscaled on
        access; for oracle figures)."""
        if not len(self.pool):
            return None
        return self.engine.upscale_masks(self.emb, self.pool.logits, "image")

    @property
    def last(self) -> Correction | None:
        """How the latest later click's mask was chosen (None after the first click)."""
        return self._sam.last

    def next_crop(self) -> Box | None:
        """The crop (image pixels) the next click will start zooming on, or None
        (:meth:`~promptmoe_plugin.clicks.SamClickSession.next_crop`)."""
        return self._sam.next_crop()

    def click(self, x: float, y: float, positive: bool = True) -> np.ndarray:
        """Add a click at image pixel ``(x, y)``; returns the new ``(H, W) bool`` mask."""
        if self._sam.logits is not None or not positive:
            return self._sam.click(x, y, positive)
        H, W = self.emb.original_size
        if not (0 <= x < W and 0 <= y < H):
            raise ValueError(f"click ({x}, {y}) is outside the {W}x{H} image")
        index = self._first_click(float(x), float(y))
        self._sam.points.append((float(x), float(y)))
        self._sam.labels.append(1)
        logits = self.pool.logits[index : index + 1]
        masks = self.engine.upscale_masks(self.emb, logits, "image")
        self._sam.set_state(masks, self.pool.iou[index : index + 1], logits, 0)
        return self.mask

    # The agent ----------------------------------------------------------------------
    def _first_click(self, x: float, y: float) -> int:
        cfg = self.config
        start = time.perf_counter()
        streams = np.random.SeedSequence(self.seed).spawn(2 + cfg.n_chains)
        rng = np.random.default_rng(streams[0])
        size = self.emb.original_size
        click = np.array([[x, y]])
        prompts = [Prompt(points=click, labels=np.ones(1))]
        points = sample_points((x, y), size, cfg.n_points, cfg.beta, rng)
        prompts += [Prompt(points=p[None], labels=np.ones(1)) for p in points]
        prompts += [
            Prompt(box=b)
            for b in sample_boxes((x, y), size, cfg.n_boxes, np.random.default_rng(streams[1]))
        ]
        out = self.engine.decode(self.emb, prompts, multimask=True, frame="none")
        kinds = ["click"] + ["point"] * cfg.n_points + ["box"] * cfg.n_boxes
        for m in range(3):
            self.pool.add(out.low_res_logits[:, m], out.iou[:, m], prompts, kinds)
        t_sampler = time.perf_counter()

        row, col = lowres_pixel(self.emb, x, y)
        self._cell = (row, col)
        self._run_chains(click, row, col, [np.random.default_rng(s) for s in streams[2:]])
        t_chains = time.perf_counter()

        index = self._select(row, col)
        end = time.perf_counter()
        self.chosen = index
        self.timings = {
            "sampler": t_sampler - start,
            "chains": t_chains - t_sampler,
            "intent": end - t_chains,
            "total": end - start,
        }
        log.debug(
            "SmartSAM: %d candidates, chose %d (%s), %s",
            len(self.pool),
            index,
            self.pool.source[index],
            self.timings,
        )
        return index

    def _eligible(
        self, masks: np.ndarray, row: int, col: int, exempt: int | None = None
    ) -> np.ndarray:
        """``(N,) bool`` candidates that hold low-res pixel (row, col) and are neither
        empty nor larger than ``max_area`` of the image; candidate ``exempt`` (SAM's own
        answer, at the choice) is held to the first two only.  ``masks`` ``(N, lh, lw)
        bool``."""
        area = masks.mean(axis=(1, 2))
        holds = (self.pool.logits[:, row, col] > 0) & (area > 0)
        ok = holds & (area <= self.config.max_area)
        if exempt is not None:
            ok[exempt] = holds[exempt]
        return ok

    def _starts(self, row: int, col: int) -> list[int]:
        """Chain starts: the best distinct candidates that contain the click, ranked by
        SAM's predicted IoU (so the pool is the same with or without references)."""
        masks = crop_lowres(self.pool.logits, lowres_shape(self.emb)) > 0
        keep = self._eligible(masks, row, col) & ~_duplicates(
            masks, self.pool.iou, self.config.duplicate_iou
        )
        order = [int(i) for i in np.argsort(-self.pool.iou, kind="stable") if keep[i]]
        return order[: self.config.n_chains]

    def _run_chains(
        self, click: np.ndarray, row: int, col: int, rngs: list[np.random.Generator]
    ) -> None:
        cfg = self.config
        # Each chain: (prompt points, labels, box, current logits, current iou, rng)
        chains = []
        for rng, i in zip(rngs, self._starts(row, col), strict=False):
            p = self.pool.prompts[i]
            pts, lab = (click, np.ones(1, np.int64)) if p.points is None else (p.points, p.labels)
            if not (pts == click).all(axis=1).any():
                pts, lab = np.concatenate([click, pts]), np.concatenate([[1], lab])
            chains.append(
                [pts, lab, p.box, self.pool.logits[i], float(self.pool.iou[i]), rng, len(chains)]
            )
        for step in range(1, cfg.chain_steps + 1):
            prompts, active = [], []
            for chain in chains:
                pts, lab, box, logits, iou, rng, _ = chain
                move = next_click(crop_lowres(logits, lowres_shape(self.emb)), iou, rng, cfg.rho)
                if move is None:
                    continue
                (r, c), action = move
                xy = lowres_to_image(self.emb, np.array([[c, r]]))
                chain[0] = np.concatenate([pts, xy])
                chain[1] = np.concatenate([lab, [1 if action == "add" else 0]])
                prompts.append(
                    Prompt(points=chain[0], labels=chain[1], box=box, mask_logits=logits)
                )
                active.append(chain)
            if not prompts:
                break
            out = self.engine.decode(self.emb, prompts, multimask=False, frame="none")
            ids = [chain[6] for chain in active]
            self.pool.add(
                out.low_res_logits[:, 0],
                out.iou[:, 0],
                prompts,
                ["chain"] * len(prompts),
                ids,
                step,
            )
            for chain, logits, iou in zip(
                active, out.low_res_logits[:, 0], out.iou[:, 0], strict=True
            ):
                chain[3], chain[4] = logits, float(iou)
            chains = active

    @property
    def has_references(self) -> bool:
        """Whether the choice uses references (some given, and an intent with features)."""
        return bool(len(self.references)) and self.intent.name != "none"

    @property
    def _switchable(self) -> bool:
        """Whether the learned switch can read this session: references, and an intent
        with parts (:meth:`~.intent.SamIntent.parts`)."""
        return self.has_references and hasattr(self.intent, "parts")

    def _load_switch(self) -> SwitchWeights | None:
        """The learned switch's weights when the choice will use them: a ``switch``
        setting and :attr:`_switchable`."""
        name = self.config.switch
        if name is None or not self._switchable:
            return None
        return load_switch(name)

    def _switch_inputs(
        self, masks: np.ndarray, ok: np.ndarray, row: int, col: int, sam: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """What the learned switch sees: the candidates it compares (the eligible ones
        and SAM's answer, ``(M,)`` pool indices), their :func:`~.switch.switch_features`
        ``(M, F)``, eligibility ``(M,) bool`` and SAM's answer's position among them.
        ``masks`` ``(N, lh, lw) bool``, ``ok`` ``(N,) bool``."""
        idx = np.union1d(np.flatnonzero(ok), [sam])
        cand = masks[idx]
        refs = self.references
        feats = self.intent.candidate_features(self.emb, cand.astype(np.float32))
        parts = np.stack(
            [matmul(feats[:, sl], refs[:, sl].T) for sl in self.intent.parts(refs.shape[1])],
            axis=2,
        )
        added = cand & ~masks[sam]
        adds = added.any(axis=(1, 2))
        added_sim = np.full(len(idx), np.nan)
        if adds.any():
            fa = self.intent.candidate_features(self.emb, added[adds].astype(np.float32))
            added_sim[adds] = similarity(fa, refs, "max")
        s = int(np.searchsorted(idx, sam))
        features = switch_features(
            self.pool.iou[idx].astype(np.float64),
            centrality(cand, row, col),
            cand.mean(axis=(1, 2)),
            np.array([self.pool.source[i] == "chain" for i in idx]),
            parts,
            added_sim,
            s,
        )
        return idx, features, ok[idx], s

    def switch_pool(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """After the first click, with references and an intent made of parts:
        :meth:`_switch_inputs` of its pool (the training data of ``promptmoe
        train-switch``), whatever ``switch`` chose.

        Raises:
            RuntimeError: no first click yet, no references, or an intent without parts.
        """
        if self._cell is None or not self._switchable:
            raise RuntimeError(
                "switch_pool needs a first click with references and the 'sam' intent"
            )
        masks, ok, sam = self._choice_inputs(*self._cell)
        return self._switch_inputs(masks, _or_any(masks, ok), *self._cell, sam)

    def _choice_inputs(self, row: int, col: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The pool's low-res masks ``(N, lh, lw) bool``, the eligible ones ``(N,) bool``
        (SAM's answer exempt from ``max_area``) and SAM's own answer's index."""
        masks = crop_lowres(self.pool.logits, lowres_shape(self.emb)) > 0
        own = np.flatnonzero(np.array(self.pool.source) == "click")
        sam = int(own[np.argmax(self.pool.iou[own])])
        return masks, self._eligible(masks, row, col, exempt=sam), sam

    def _similarity(self, masks: np.ndarray, idx: np.ndarray) -> np.ndarray | None:
        """``(N,) float64`` similarity of candidates ``idx`` to the references (0
        elsewhere), None without references.  ``masks`` ``(N, lh, lw) bool``."""
        if not (len(idx) and self.has_references):
            return None
        feats = self.intent.candidate_features(self.emb, masks[idx].astype(np.float32))
        if feats.shape[1] != self.references.shape[1]:
            raise ValueError(
                f"reference features have {self.references.shape[1]} dimensions but intent "
                f"{self.intent.name!r} gives {feats.shape[1]}: were they made by another "
                "intent?"
            )
        sim = np.zeros(len(self.pool))
        sim[idx] = similarity(feats, self.references, self.config.reduce)
        return sim

    def _scores(
        self, masks: np.ndarray, ok: np.ndarray, row: int, col: int, sam: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Selection score ``(N,) float64`` of the candidates flagged by ``ok`` ``(N,)
        bool`` (-inf elsewhere): SAM's predicted IoU, less ``chain_bias`` for chain
        candidates, less ``centre_weight`` times how much less central low-res pixel (row,
        col) lies in the candidate than in candidate ``sam`` (SAM's own answer;
        :func:`centrality`), plus ``sim_weight`` times the similarity to the references;
        and that similarity (:meth:`_similarity`).  ``masks`` ``(N, lh, lw) bool``."""
        cfg = self.config
        score = np.full(len(self.pool), -np.inf)
        idx = np.flatnonzero(ok)
        chain = np.array([self.pool.source[i] == "chain" for i in idx], bool)
        score[idx] = self.pool.iou[idx] - cfg.chain_bias * chain
        sim = self._similarity(masks, np.union1d(idx, [sam]))
        if sim is not None:
            score[idx] += cfg.sim_weight * sim[idx]
        if cfg.centre_weight and len(idx):
            # The penalty only lowers a score: while SAM's answer is eligible, only the
            # candidates that beat it without the penalty need their centrality.
            if ok[sam]:
                idx = idx[score[idx] > score[sam] + cfg.switch_margin]
            cen = centrality(masks[np.append(idx, sam)], row, col)
            score[idx] += cfg.centre_weight * np.minimum(cen[:-1] - cen[-1], 0)
        return score, sim

    def _select(self, row: int, col: int) -> int:
        """Index of the chosen candidate: SAM's own answer (the click's mask with the best
        predicted IoU; eligible whatever its area when it holds the click, and chosen
        outright when it holds it and covers more than ``hold_area``, or
        ``hold_area_references`` with references) unless an
        eligible (:meth:`_eligible`) candidate's :meth:`_scores` beats it by more than
        ``switch_margin`` (with references, only a candidate at
        least ``sim_margin`` more similar to them); the best eligible one when SAM's own
        answer is not eligible.  With the learned switch on (``switch``), it decides
        among the eligible candidates instead of the scores."""
        cfg = self.config
        masks, ok, sam = self._choice_inputs(row, col)
        hold = cfg.hold_area_references if self.has_references else cfg.hold_area
        if ok[sam] and hold is not None and masks[sam].mean() > hold:
            return sam
        ok = _or_any(masks, ok)
        if self._switch is not None:
            idx, features, eligible, s = self._switch_inputs(masks, ok, row, col, sam)
            return int(idx[switch_choice(features, eligible, s, self._switch.weights)])
        score, sim = self._scores(masks, ok, row, col, sam)
        if not ok[sam]:
            return int(np.argmax(score))
        rivals = score.copy()
        if sim is not None:
            rivals[sim < sim[sam] + cfg.sim_margin] = -np.inf
        rivals[sam] = -np.inf
        best = int(np.argmax(rivals))
        return best if rivals[best] > score[sam] + cfg.switch_margin else sam


def _or_any(masks: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``ok`` ``(N,) bool``, or when nothing plausible holds the click, the non-empty
    candidates of ``masks`` ``(N, lh, lw) bool`` (all of them when every one is empty)."""
    if ok.any():
        return ok
    return masks.any(axis=(1, 2)) if masks.any() else np.ones(len(masks), bool)


def centrality(masks: np.ndarray, row: int, col: int) -> np.ndarray:
    """``(N,) float64`` how central pixel (row, col) lies in each of ``masks`` ``(N, lh,
    lw) bool``: its distance to the mask's boundary (the image border counts as
    boundary) over the mask's largest such distance; 0 outside a mask, 1 at its deepest
    pixel."""
    out = np.zeros(len(masks))
    for i, mask in enumerate(masks):
        depth = inner_distance(np.pad(mask, 1))[1:-1, 1:-1]
        out[i] = depth[row, col] / max(float(depth.max()), 1e-6)
    return out
