"""``promptmoe annotate``: pre-annotate a Label Studio project, or a folder of images with
draft masks, on a pool of Ray actors (:mod:`ls_backend.ray_pool`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO

from tqdm import tqdm

from ls_backend import ray_pool
from ls_backend.config import Settings
from ls_backend.folders import brush_config, files_root, folder_tasks, read_import, write_import
from ls_backend.label_config import LabelConfig, parse_label_config
from ls_backend.ray_pool import AnnotatorPool, Outcome, RayUnavailable
from ls_backend.tasks import prediction_versions
from ls_backend.writeback import LabelStudioError, LabelStudioWriter

from .options import Subparsers, add_settings_options, prepare_out, settings

log = logging.getLogger(__name__)

#: Exit codes: bad input (as every command), some tasks failed, interrupted (Ctrl-C).
BAD_INPUT, TASKS_FAILED, INTERRUPTED = 2, 1, 130


def quiet_ray() -> None:
    """No usage statistics from Ray (read by Ray from the environment at start)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def default_workers(cpus: float) -> int:
    """One actor per two CPUs of the cluster (each encoder runs two threads), at least one."""
    return max(1, int(cpus) // 2)


@dataclasses.dataclass
class Tally:
    """Counts of a run, and the report file the failures go to (one JSON line each)."""

    report: IO[str]
    predicted: int = 0
    skipped: int = 0
    empty: int = 0
    failed: int = 0

    def add(self, outcome: Outcome, image: str) -> None:
        if outcome.error is not None:
            self.failed += 1
            line = {"task": outcome.key, "image": image, "error": outcome.error}
            self.report.write(json.dumps(line) + "\n")
            self.report.flush()
        elif outcome.prediction is None:
            self.empty += 1
        else:
            self.predicted += 1

    @property
    def done(self) -> int:
        return self.predicted + self.empty + self.failed

    def summary(self, version: str, report: Path, wall: float) -> str:
        rate = self.done / wall if wall > 0 else 0.0
        return (
            f"{self.predicted} predicted, {self.skipped} already predicted by {version}, "
            f"{self.empty} without drafts, {self.failed} failed (report {report}) in "
            f"{wall:.1f}s ({rate:.2f} images/s)"
        )


class Interrupts:
    """Ctrl-C once: stop submitting and let the running tasks finish (their results are
    written); twice: abandon them (``KeyboardInterrupt``)."""

    def __init__(self, pool: AnnotatorPool):
        self.pool = pool
        self._old: Callable | int | None = None

    def __enter__(self) -> Interrupts:
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._old or signal.SIG_DFL)

    def _handle(self, signum, frame) -> None:
        if self.pool.stopped:
            raise KeyboardInterrupt
        self.pool.stop()
        print(
            "\npromptmoe annotate: stopping: finishing the tasks in flight "
            "(Ctrl-C again to abandon them); run the same command again to resume",
            file=sys.stderr,
        )


@dataclasses.dataclass
class _Folder:
    """A folder run's inputs, checked before Ray starts."""

    tasks: list[tuple[str, dict]]
    root: Path
    out: Path


def _run(args: argparse.Namespace) -> int:
    config = settings(args)
    report = Path(args.report) if args.report else _default_report(args)
    if (args.workers is not None and args.workers < 1) or min(args.batch, args.writers) < 1:
        raise ValueError("--workers, --batch and --writers must be >= 1")
    try:  # every input is checked before Ray starts
        if args.project is not None:
            writer = LabelStudioWriter(
                config.label_studio_url or "", config.label_studio_api_key or ""
            )
            source: LabelStudioWriter | _Folder = writer
            label_config = parse_label_config(writer.label_config(args.project))
        else:
            source = _folder_source(args, config)
            label_config = parse_label_config(brush_config([args.label]))
            config = dataclasses.replace(config, local_files_root=source.root)
        quiet_ray()
        started = ray_pool.connect(config.ray_address, args.ray_cpus)
    except (LabelStudioError, RayUnavailable) as exc:
        print(f"promptmoe annotate: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    try:
        with prepare_out(report).open("w") as out, _pool(args, config) as pool:
            if isinstance(source, _Folder):
                return _folder(args, source, label_config, pool, Tally(out), report)
            return _project(args, source, label_config, pool, Tally(out), report)
    except LabelStudioError as exc:
        print(f"promptmoe annotate: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    finally:
        if started:
            ray_pool.shutdown()


def _default_report(args: argparse.Namespace) -> Path:
    if args.project is not None:
        return Path(f"annotate-project-{args.project}.errors.jsonl")
    out = Path(args.out or "import.json")
    return out.with_name(f"{out.stem}.errors.jsonl")


def _folder_source(args: argparse.Namespace, config: Settings) -> _Folder:
    if not args.out:
        raise ValueError("--images needs --out, the Label Studio import file to write")
    images, drafts = Path(args.images), Path(args.drafts) if args.drafts else None
    for flag, folder in (("--images", images), ("--drafts", drafts)):
        if folder is not None and not folder.is_dir():
            raise ValueError(f"{flag} folder {folder} does not exist")
    root = config.local_files_root or files_root(*(f for f in (images, drafts) if f))
    tasks = folder_tasks(images, drafts, args.label, root, config.mask_data_key)
    return _Folder(tasks, root, prepare_out(args.out))


def _pool(args: argparse.Namespace, config: Settings) -> AnnotatorPool:
    """The actors (not yet ready: :meth:`AnnotatorPool.ready` waits for them)."""
    workers = args.workers or default_workers(ray_pool.cluster_cpus())
    log.info("starting %d Ray worker(s), %d task(s) queued each", workers, args.batch)
    return AnnotatorPool(config, workers, in_flight=args.batch, gpus=args.gpus_per_worker)


def _stream(
    pool: AnnotatorPool, tasks, config: LabelConfig, project: str, total: int | None
) -> Iterator[Outcome]:
    """The outcomes of ``tasks`` with a progress bar (images/s), Ctrl-C handled."""
    with Interrupts(pool), tqdm(total=total, unit="img", desc="annotate") as bar:
        for outcome in pool.annotate(tasks, config, project):
            bar.update()
            yield outcome


def _project(
    args: argparse.Namespace,
    writer: LabelStudioWriter,
    label_config: LabelConfig,
    pool: AnnotatorPool,
    tally: Tally,
    report: Path,
) -> int:
    version = pool.ready()
    start = time.perf_counter()
    images: dict[int, str] = {}

    def todo() -> Iterator[tuple[int, dict]]:
        for task in writer.project_tasks(args.project):
            if version in _versions(task, writer):
                tally.skipped += 1
                continue
            images[task["id"]] = str(task.get("data", {}).get(label_config.image_key))
            yield task["id"], task

    writes: set[Future[Outcome]] = set()

    def settle(limit: int) -> None:
        """Tally finished writes until at most ``limit`` are pending."""
        while len(writes) > limit:
            done, _ = wait(writes, return_when=FIRST_COMPLETED)
            for future in done:
                writes.discard(future)
                outcome = future.result()
                tally.add(outcome, images.pop(outcome.key, ""))

    # Writes go to Label Studio from a few threads, so its latency does not hold up the
    # actors; at most twice as many wait as there are writers.
    with ThreadPoolExecutor(args.writers, thread_name_prefix="promptmoe-write") as executor:
        try:
            for outcome in _stream(pool, todo(), label_config, str(args.project), None):
                if outcome.prediction is None:
                    tally.add(outcome, images.pop(outcome.key, ""))
                else:
                    writes.add(executor.submit(_write, writer, outcome))
                    settle(2 * args.writers)
            settle(0)
        except KeyboardInterrupt:
            settle(0)
            print(tally.summary(version, report, time.perf_counter() - start))
            print("promptmoe annotate: interrupted; run it again to resume", file=sys.stderr)
            return INTERRUPTED
    print(tally.summary(version, report, time.perf_counter() - start))
    return _exit_code(tally, pool)


def _write(writer: LabelStudioWriter, outcome: Outcome) -> Outcome:
    """Write the outcome's prediction (on a writer thread); a task deleted since it was
    listed becomes the outcome's error, any other refusal is raised."""
    try:
        writer.write(outcome.key, outcome.prediction)
    except LabelStudioError as exc:
        if exc.status != 404:  # token, network: nothing more can be written
            raise
        return dataclasses.replace(outcome, prediction=None, error=str(exc))
    return outcome


def _versions(task: dict, writer: LabelStudioWriter) -> list[str]:
    """Model versions of the task's predictions (from the task JSON, else asked)."""
    listed = prediction_versions(task)
    return listed if listed is not None else writer.versions(task["id"])


def _folder(
    args: argparse.Namespace,
    folder: _Folder,
    label_config: LabelConfig,
    pool: AnnotatorPool,
    tally: Tally,
    report: Path,
) -> int:
    previous = read_import(folder.out)
    version = pool.ready()
    start = time.perf_counter()
    by_key = dict(folder.tasks)
    todo = []
    for key, task in folder.tasks:
        before = previous.get(task["data"]["image"], {})
        if version in (prediction_versions(before) or []):
            task["predictions"] = before["predictions"]
            tally.skipped += 1
        else:
            todo.append((key, task))
    interrupted = False
    try:
        for outcome in _stream(pool, todo, label_config, "folder", len(todo)):
            task = by_key[outcome.key]
            if outcome.prediction is not None:
                task["predictions"] = [outcome.prediction]
            tally.add(outcome, task["data"]["image"])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        write_import(folder.out, (t for _, t in folder.tasks))
    print(tally.summary(version, report, time.perf_counter() - start))
    print(
        f"wrote {folder.out}: {len(folder.tasks)} tasks; import it into a project whose "
        f"labeling config has <BrushLabels> with the label {args.label!r}, with "
        f"LOCAL_FILES_DOCUMENT_ROOT={folder.root}"
    )
    if interrupted:
        print("promptmoe annotate: interrupted; run it again to resume", file=sys.stderr)
        return INTERRUPTED
    return _exit_code(tally, pool)


def _exit_code(tally: Tally, pool: AnnotatorPool) -> int:
    if pool.stopped:
        print("promptmoe annotate: stopped early; run it again to resume", file=sys.stderr)
        return INTERRUPTED
    return TASKS_FAILED if tally.failed else 0


def register(sub: Subparsers, bench: Subparsers) -> None:
    p = sub.add_parser(
        "annotate",
        help="pre-annotate a Label Studio project or a folder of images with drafts, on Ray",
        description="Refine every task's drafts (brush, polygons, rectangles, mask images) "
        "on a pool of Ray actors. With --project, write the predictions to Label Studio "
        "(tasks already predicted by the current model version are skipped, so a second "
        "run resumes); with --images, write a Label Studio import file. Exit codes: 0 all "
        "done, 1 some tasks failed (see --report), 2 bad input, 130 interrupted.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", type=int, help="Label Studio project id")
    source.add_argument("--images", metavar="DIR", help="folder of images")
    p.add_argument(
        "--drafts",
        metavar="DIR",
        help="with --images: folder of draft masks (0/255 or label-map images, same file "
        "stem as their image)",
    )
    p.add_argument(
        "--label", default="Object", help="with --images: the drafts' label (default Object)"
    )
    p.add_argument("--out", help="with --images: Label Studio import JSON to write")
    p.add_argument(
        "--workers",
        type=int,
        help="Ray actors, each holding one SAM engine (default: one per 2 CPUs of the cluster)",
    )
    p.add_argument(
        "--batch", type=int, default=2, help="tasks queued per actor at a time (default 2)"
    )
    p.add_argument(
        "--writers",
        type=int,
        default=4,
        help="with --project: threads writing predictions to Label Studio (default 4)",
    )
    p.add_argument(
        "--gpus-per-worker",
        dest="gpus_per_worker",
        type=float,
        default=0.0,
        help="GPUs each actor reserves, e.g. 1, or 0.25 for four actors per GPU (default 0)",
    )
    p.add_argument(
        "--ray-cpus",
        dest="ray_cpus",
        type=int,
        help="CPUs of the local Ray (default: all of this machine's)",
    )
    p.add_argument(
        "--report",
        help="per-task errors, one JSON line each (default: <out>.errors.jsonl beside --out, "
        "or annotate-project-<ID>.errors.jsonl)",
    )
    add_settings_options(p, ("engine", "backend"))
    p.set_defaults(func=_run)
