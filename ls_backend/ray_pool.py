"""Pre-annotation on Ray: a pool of actors, each holding one :class:`PromptMoEModel`.

Every actor builds its own SAM engine and model from the same :class:`Settings` and runs
:meth:`PromptMoEModel.annotate` (the per-task work of the backend's job: one code path).
:meth:`AnnotatorPool.annotate` streams tasks to the actors, at most ``in_flight`` calls
queued per actor, and yields each :class:`Outcome` as soon as it finishes (``ray.wait``):
a prediction, None (nothing to predict from) or the task's error, never an exception.

:func:`connect` starts a local Ray (``address`` None) or joins a cluster; an address
nobody answers at is a :class:`RayUnavailable` with a one-line message, at once.
"""

from __future__ import annotations

import logging
import re
import resource
import socket
import threading
import time
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import ray
import torch
from ray.exceptions import RayError

from .config import Settings, make_engine
from .label_config import LabelConfig
from .model import PromptMoEModel
from .tasks import failure_reason

log = logging.getLogger(__name__)

#: Seconds :func:`connect` waits for a TCP answer at a cluster address before giving up.
CONNECT_TIMEOUT = 5.0
#: Seconds one ``ray.wait`` blocks, so :meth:`AnnotatorPool.stop` is seen promptly.
POLL_SECONDS = 0.5


class RayUnavailable(ConnectionError):
    """Ray cannot be started or reached; the message says where and why."""


@dataclass(frozen=True)
class Outcome:
    """What became of one task.

    Attributes:
        key: the caller's key of the task (its Label Studio id, a file name, ...).
        prediction: ``{"result", "score", "model_version"}``, or None when the task has
            nothing to predict from or failed.
        error: the reason the task failed (one line), else None.
        seconds: the actor's time on the task (fetch, drafts, SAM, refinement).
        rss_mb: the actor's peak resident set size so far, in MB.
        worker: index of the actor that did the task.
    """

    key: Hashable
    prediction: dict | None
    error: str | None
    seconds: float
    rss_mb: float
    worker: int


def _check_reachable(address: str) -> None:
    """Raise :class:`RayUnavailable` unless something accepts TCP at ``address``
    (``host:port`` or ``ray://host:port``); ``auto`` and other forms are left to Ray."""
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise RayUnavailable(f"Ray address {address!r} is not host:port ({exc})") from exc
    if not host or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise RayUnavailable(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head` or leave --ray-address / RAY_ADDRESS unset for a local Ray"
        ) from None


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start a local Ray with ``num_cpus`` CPUs (None: the machine's) when ``address`` is
    None, else join the cluster at ``address``; quiet logs, no dashboard.  Returns False
    when this process was connected already (nothing done), True when it connected now.

    Raises:
        RayUnavailable: no cluster answers at ``address``, or Ray fails to start.
    """
    remote = bool(address) and address != "local"
    if remote:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    if remote:
        kwargs: dict = {"address": address}
    else:
        kwargs = {"address": "local", "num_cpus": num_cpus, "include_dashboard": False}
    start = time.perf_counter()
    try:
        ray.init(**kwargs, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        where = f"at {address}" if remote else "locally"
        raise RayUnavailable(f"cannot start or join Ray {where}: {exc}") from exc
    log.info(
        "Ray %s in %.1fs: %s CPUs",
        "joined" if remote else "started",
        time.perf_counter() - start,
        cluster_cpus(),
    )
    return True


def cluster_cpus() -> float:
    """The CPUs of the Ray cluster this process is connected to."""
    return float(ray.cluster_resources().get("CPU", 1.0))


def shutdown() -> None:
    """Disconnect from Ray (and stop the local Ray this process started)."""
    ray.shutdown()


def _reason(exc: Exception) -> str:
    """The last line of a Ray error: the original exception of the worker, when it raised
    one (Ray's message holds its traceback), without terminal colours."""
    lines = [x.strip() for x in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()]
    return next((x for x in reversed(lines) if x), type(exc).__name__)


class Annotator:
    """The actor's state: one engine and model, built on the actor's own process."""

    def __init__(self, settings: Settings, threads: int, index: int):
        torch.set_num_threads(threads)
        self.index = index
        self.model = PromptMoEModel(make_engine(settings.engine), settings)

    def model_version(self) -> str:
        return self.model.model_version

    def annotate(self, key: Hashable, task: dict, config: LabelConfig, project: str) -> Outcome:
        return run_task(self.model, key, task, config, project, self.index)


def run_task(
    model: PromptMoEModel,
    key: Hashable,
    task: dict,
    config: LabelConfig,
    project: str,
    worker: int = 0,
) -> Outcome:
    """:meth:`PromptMoEModel.annotate` of one task, timed; its error is captured, not
    raised (what each actor runs, and the in-process baseline of the benchmark)."""
    start = time.perf_counter()
    prediction, error = None, None
    try:
        prediction = model.annotate(task, config, project)
    except Exception as exc:  # this task fails with its reason; the others go on
        error = failure_reason(exc, key)
    return Outcome(
        key,
        prediction,
        error,
        time.perf_counter() - start,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        worker,
    )


class AnnotatorPool:
    """``workers`` Ray actors of :class:`Annotator`, each given ``cpus`` CPUs (default: the
    cluster's CPUs shared out, at least one thread each), ``gpus`` GPUs (a share such as
    0.25 lets several actors use one GPU; the engine's ``DEVICE=auto`` then picks it) and
    at most ``in_flight`` queued calls.  :func:`connect` first.  Use as a context manager:
    leaving it cancels what is still queued and ends the actors."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        in_flight: int = 2,
        cpus: float | None = None,
        gpus: float = 0.0,
    ):
        if workers < 1 or in_flight < 1 or gpus < 0:
            raise ValueError(
                f"workers and in_flight must be >= 1 and gpus >= 0, got {workers}, "
                f"{in_flight}, {gpus}"
            )
        cpus = cpus or max(cluster_cpus() / workers, 0.001)
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=1)(Annotator)
        threads = max(1, int(cpus))
        self.actors = [remote.remote(settings, threads, i) for i in range(workers)]
        self.in_flight = in_flight
        self._stop = threading.Event()
        self._pending: dict = {}

    def __enter__(self) -> AnnotatorPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ready(self) -> str:
        """Wait until every actor has built its model; returns the model version they
        write (they share the settings and ``MODEL_DIR``)."""
        try:
            versions = set(ray.get([a.model_version.remote() for a in self.actors]))
        except RayError as exc:  # a worker could not build its model: bad settings
            raise ValueError(f"the Ray workers could not build the model: {_reason(exc)}") from exc
        if len(versions) != 1:
            raise ValueError(
                f"the Ray workers disagree on the model version ({', '.join(sorted(versions))}): "
                "give every node the same MODEL_DIR"
            )
        return versions.pop()

    def stop(self) -> None:
        """Submit no more tasks; :meth:`annotate` still yields those already running
        (safe to call from a signal handler)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def annotate(
        self, tasks: Iterable[tuple[Hashable, dict]], config: LabelConfig, project: str
    ) -> Iterator[Outcome]:
        """Annotate ``(key, task)`` pairs, pulled lazily from ``tasks``; yields each
        :class:`Outcome` as it finishes (not in order).  After :meth:`stop` it submits
        nothing more and ends once the running calls are in."""
        source = iter(tasks)
        load = [0] * len(self.actors)
        exhausted = False
        while True:
            while not exhausted and not self.stopped and min(load) < self.in_flight:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                worker = load.index(min(load))
                key, task = item
                ref = self.actors[worker].annotate.remote(key, task, config, project)
                self._pending[ref] = (key, worker)
                load[worker] += 1
            if not self._pending:
                return
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                key, worker = self._pending.pop(ref)
                load[worker] -= 1
                yield self._result(ref, key, worker)

    def _result(self, ref, key: Hashable, worker: int) -> Outcome:
        try:
            return ray.get(ref)
        except RayError as exc:  # the actor died (out of memory, killed): this task failed
            return Outcome(key, None, f"worker {worker} failed: {_reason(exc)}", 0.0, 0.0, worker)

    def close(self) -> None:
        """Cancel the queued calls and end the actors."""
        for ref in self._pending:
            ray.cancel(ref)
        self._pending.clear()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
