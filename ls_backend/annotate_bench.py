"""``promptmoe bench annotate``: pre-annotation throughput in process and on Ray actors.

The same tasks (dataset images as local files, each with a coarse draft mask image made
by :func:`~promptmoe_plugin.eval.coarse.make_coarse`) are annotated by
:meth:`PromptMoEModel.annotate` (:func:`~.ray_pool.run_task`), in one run:

* ``inproc``: a plain loop in this process (the baseline);
* ``ray-<N>``: an :class:`~.ray_pool.AnnotatorPool` of N actors on a local Ray.

Every arm is built cold: its own model (empty embedding cache), no disk embedding cache
(``EMBEDDING_DIR`` off) and its own fresh ``MODEL_DIR``, so no arm profits from another.
The machine is shared, so the arms take turns: the images are split into rounds and every
arm annotates each round's images, the order of the arms rotating.  Per arm: images/min
over its rounds (and its ratio to ``inproc``), startup (model or actors built), time to
the first prediction (startup + its first task), peak RSS per worker, the mean IoU of the
masks with the ground truth (the arms do the same work: it must agree), and the overhead
over the work itself: ``wall x workers / sum of per-task seconds - 1`` (with several
workers it includes the idle tail at the end of each round).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from promptmoe_plugin.eval.coarse import make_coarse
from promptmoe_plugin.eval.datasets import Sample, interleave, sample_datasets
from promptmoe_plugin.eval.metrics import iou

from . import ray_pool
from .config import Settings, make_engine
from .folders import brush_config, files_root, local_url
from .label_config import LabelConfig, parse_label_config
from .model import PromptMoEModel
from .ray_pool import AnnotatorPool, Outcome, run_task
from .results import brush_masks

log = logging.getLogger(__name__)

LABEL = "Object"


def _tasks(
    samples: Sequence[Sample], drafts: Path, coarse: str, seed: int
) -> tuple[list[tuple[str, dict]], Path]:
    """``(name, task)`` per sample with its coarse draft written under ``drafts``, and the
    local files root they lie under."""
    paths = []
    for i, s in enumerate(samples):
        image, gt, _ = s.load()
        path = drafts / f"{i:04d}_{s.name}.png"
        Image.fromarray(make_coarse(gt, image, coarse, seed=seed).astype(np.uint8) * 255).save(path)
        paths.append((s, path))
    root = files_root(drafts, *(s.image_path.parent for s in samples))
    tasks = [
        (
            f"{i:04d}_{s.name}",
            {
                "data": {
                    "image": local_url(s.image_path, root),
                    "mask": local_url(p, root),
                    "label": LABEL,
                }
            },
        )
        for i, (s, p) in enumerate(paths)
    ]
    return tasks, root


class _Arm:
    """One way of annotating (in process, or a pool of N actors), built once and timed
    over the rounds it is given."""

    def __init__(self, settings: Settings, workers: int, cpus: float, in_flight: int):
        self.workers = workers
        started = time.perf_counter()
        if workers:
            self.pool: AnnotatorPool | None = AnnotatorPool(settings, workers, in_flight, cpus)
            self.pool.ready()
        else:
            self.pool, self.model = None, PromptMoEModel(make_engine(settings.engine), settings)
        self.startup = time.perf_counter() - started
        self.first: float | None = None
        self.wall = 0.0
        self.outcomes: list[Outcome] = []

    def run(self, tasks: list[tuple[str, dict]], config: LabelConfig) -> None:
        start = time.perf_counter()
        if self.pool is None:
            stream = (run_task(self.model, key, task, config, "bench") for key, task in tasks)
        else:
            stream = self.pool.annotate(tasks, config, "bench")
        for outcome in stream:
            self.outcomes.append(outcome)
            if self.first is None:
                self.first = self.startup + time.perf_counter() - start
        self.wall += time.perf_counter() - start

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.model = None

    def figures(self, gts: dict) -> dict:
        n, work = len(self.outcomes), sum(o.seconds for o in self.outcomes)
        ious = [
            iou(
                np.logical_or.reduce([m for _, m in brush_masks(o.prediction["result"])]),
                *gts[o.key],
            )
            for o in self.outcomes
            if o.prediction is not None
        ]
        rss: dict[int, float] = {}
        for o in self.outcomes:
            rss[o.worker] = max(rss.get(o.worker, 0.0), o.rss_mb)
        nan = float("nan")
        return {
            "workers": self.workers,
            "images": n,
            "failed": sum(o.error is not None for o in self.outcomes),
            "startup_s": self.startup,
            "first_prediction_s": self.first if self.first is not None else nan,
            "wall_s": self.wall,
            "images_per_min": 60 * n / self.wall if self.wall > 0 else nan,
            "task_s_median": float(np.median([o.seconds for o in self.outcomes])) if n else nan,
            "task_s_sum": work,
            "task_s": [round(o.seconds, 3) for o in self.outcomes],
            "overhead": self.wall * max(self.workers, 1) / work - 1 if work > 0 else nan,
            "peak_rss_mb": [rss[k] for k in sorted(rss)],
            "miou": float(np.mean(ious)) if ious else nan,
        }


def bench_annotate(
    settings: Settings,
    folders: Sequence[str | Path],
    workers: Sequence[int] = (1, 2),
    limit: int | None = 12,
    coarse: str = "lowres",
    in_flight: int = 2,
    rounds: int = 3,
    seed: int = 0,
    cpus: int | None = None,
) -> dict:
    """Run the benchmark on the first ``limit`` images of each dataset folder (round
    robin), split into ``rounds`` chunks; every arm annotates each chunk in turn, the arms'
    order rotating from round to round, so a change of the machine's load touches them
    alike.  The arms are built first, one after the other: the in-process model, then a
    pool per entry of ``workers``, each actor with ``cpus / workers`` CPUs (default: this
    machine's).  Ray must not be connected yet: a local Ray is started (with room for every
    pool at once) and stopped here.

    Returns:
        ``{"config": ..., "ray_start_s": float, "arms": {"inproc": figures, "ray-N":
        figures, ...}}`` with the figures of the module doc, the ratio of images/min to
        ``inproc`` under ``ratio_to_inproc``.
    """
    samples = interleave(sample_datasets(folders, limit))
    if not samples or rounds < 1:
        raise ValueError("bench annotate needs images and rounds >= 1")
    cpus = cpus or os.cpu_count() or 1
    config = parse_label_config(brush_config([LABEL]))
    with tempfile.TemporaryDirectory(prefix="promptmoe-bench-annotate-") as tmp:
        drafts = Path(tmp) / "drafts"
        drafts.mkdir()
        tasks, root = _tasks(samples, drafts, coarse, seed)
        gts = {key: s.load()[1:] for (key, _), s in zip(tasks, samples, strict=True)}

        def arm(name: str, n: int) -> _Arm:
            # Its own MODEL_DIR, no disk embedding cache: no arm profits from another.
            arm_settings = dataclasses.replace(
                settings,
                local_files_root=root,
                model_dir=Path(tmp) / f"model_dir-{name}",
                engine=dataclasses.replace(settings.engine, embedding_dir=None),
            )
            built = _Arm(arm_settings, n, cpus / max(n, 1), in_flight)
            log.info("%s ready in %.1fs", name, built.startup)
            return built

        arms = {"inproc": arm("inproc", 0)}
        start = time.perf_counter()
        ray_pool.connect(None, cpus * len(workers))
        ray_start = time.perf_counter() - start
        try:
            arms.update({f"ray-{n}": arm(f"ray-{n}", n) for n in workers})
            size = -(-len(tasks) // rounds)
            chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
            names = list(arms)
            for r, chunk in enumerate(tqdm(chunks, desc="bench annotate", unit="round")):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    arms[name].run(chunk, config)
            figures = {name: a.figures(gts) for name, a in arms.items()}
        finally:
            for a in arms.values():
                a.close()
            ray_pool.shutdown()
    base = figures["inproc"]["images_per_min"]
    for fig in figures.values():
        fig["ratio_to_inproc"] = fig["images_per_min"] / base
    return {
        "config": {
            "data": [str(f) for f in folders],
            "images": len(tasks),
            "rounds": len(chunks),
            "coarse": coarse,
            "refine_variant": settings.refine_variant,
            "runtime": settings.engine.runtime,
            "cpus": cpus,
            "in_flight": in_flight,
            "seed": seed,
        },
        "ray_start_s": ray_start,
        "arms": figures,
    }


def format_annotate_report(fig: dict) -> str:
    """The figures of :func:`bench_annotate` as a text table."""
    c = fig["config"]
    lines = [
        f"promptmoe bench annotate: {c['images']} images, {c['coarse']} drafts, "
        f"{c['refine_variant']} refinement, runtime {c['runtime']}, {c['cpus']} CPUs; local "
        "Ray started in "
        f"{fig['ray_start_s']:.1f}s",
        f"{'arm':<8} {'img/min':>8} {'x inproc':>9} {'task s p50':>11} {'overhead':>9} "
        f"{'startup s':>10} {'1st pred s':>11} {'mIoU':>6} {'fail':>5}  peak RSS MB per worker",
    ]
    for name, a in fig["arms"].items():
        rss = ", ".join(f"{r:.0f}" for r in a["peak_rss_mb"])
        lines.append(
            f"{name:<8} {a['images_per_min']:8.1f} {a['ratio_to_inproc']:9.2f} "
            f"{a['task_s_median']:11.2f} {100 * a['overhead']:8.1f}% {a['startup_s']:10.1f} "
            f"{a['first_prediction_s']:11.1f} {a['miou']:6.3f} {a['failed']:5d}  {rss}"
        )
    lines.append(
        f"{c['rounds']} interleaved rounds; overhead = wall x workers / sum of per-task "
        "seconds - 1 (workers ready); 1st pred = startup + first task; inproc's RSS is the "
        "whole process's"
    )
    return "\n".join(lines)
