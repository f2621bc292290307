"""``promptmoe bench server --load``: concurrent clients against the backend over HTTP.

The backend runs in this process behind a threaded HTTP server on loopback (as in
:mod:`.bench`).  After a warm-up that sends every kind of request once on every image,
one at a time (so the caches hold what the load uses), ``clients`` threads each send
requests for ``seconds``: a request kind drawn in turn from ``click`` (one to three
positive keypoints), ``box``, ``draft`` (a brush draft to refine) and ``batch`` (a batch
``/predict`` of two tasks with drafts), on an image drawn at random.  A sampler reads the
process RSS every ``sample_every`` seconds.

Reported: p50 / p95 seconds and the count per kind, errors (any non-2xx answer, an answer
that is not JSON, or a prediction with an ``error``), and RSS after the warm-up, at its
peak and over time, with the peak's ratio to the after-warm-up value.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import requests
from werkzeug.serving import make_server

from promptmoe_plugin.eval.clicker import Clicker
from promptmoe_plugin.eval.coarse import make_coarse

from .bench import CONFIG, bench_samples, box_item, brush_item, files_root, keypoint_item, rss_mb
from .model import PromptMoEModel
from .server import create_app

log = logging.getLogger(__name__)

#: Request kinds, sent in turn by every client.
LOAD_KINDS = ("click", "box", "draft", "batch")


class _Image:
    """One benchmark image as the requests need it: its task, clicks, box and draft."""

    def __init__(self, index: int, path: str, image: np.ndarray, gt: np.ndarray, ignore):
        h, w = gt.shape
        self.task = {"id": index + 1, "data": {"image": f"/data/local-files/?d={path}"}}
        # Up to three positive clicks inside the object, the deepest unclicked pixels first.
        clicker, empty, self.clicks = Clicker(gt, ignore), np.zeros_like(gt), []
        for _ in range(3):
            click = clicker.next_click(empty)
            if click is None:
                break
            self.clicks.append(keypoint_item(click.x, click.y, click.positive, h, w))
        self.box = box_item(gt)
        self.draft = brush_item(make_coarse(gt, image, "morph", seed=index))


def _body(kind: str, images: list[_Image], rng: np.random.Generator) -> dict:
    """The ``/predict`` body of one request of ``kind`` on images drawn with ``rng``."""
    one = images[int(rng.integers(len(images)))]
    if kind == "batch":
        picks = [images[int(i)] for i in rng.integers(len(images), size=2)]
        tasks = [
            {**p.task, "predictions": [{"model_version": "drafts", "result": [p.draft]}]}
            for p in picks
        ]
        return {"tasks": tasks, "project": "1.0", "label_config": CONFIG, "params": {}}
    items = {
        "click": one.clicks[: int(rng.integers(1, len(one.clicks) + 1))],
        "box": [one.box],
        "draft": [one.draft],
    }[kind]
    params = {"context": {"result": items}}
    return {"tasks": [one.task], "project": "1.0", "label_config": CONFIG, "params": params}


def _error(response: requests.Response) -> str | None:
    """Why an answer counts as an error, or None for a good one."""
    if not 200 <= response.status_code < 300:
        return f"HTTP {response.status_code}"
    try:
        payload = json.loads(response.text, parse_constant=_reject)
    except ValueError as exc:
        return f"not JSON: {exc}"
    failed = [r for r in payload.get("results", []) if isinstance(r, dict) and "error" in r]
    return f"prediction error: {failed[0]['error']}" if failed else None


def _reject(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def load_test(
    model: PromptMoEModel,
    folders: Sequence[str | Path],
    *,
    clients: int = 8,
    seconds: float = 60.0,
    images: int = 20,
    sample_every: float = 1.0,
    seed: int = 0,
) -> dict:
    """Send mixed requests from ``clients`` threads for ``seconds`` (see the module doc).

    The model must read local files from :func:`.bench.files_root` of
    :func:`.bench.bench_samples` ``(folders, images)``.

    Returns:
        the figures: per kind ``n``, ``p50``, ``p95`` (seconds), ``errors`` with their
        first reasons, and ``rss_mb`` (``after_warmup``, ``peak``, ``ratio``, ``series`` of
        ``[seconds, MB]``).
    """
    if clients < 1 or seconds <= 0:
        raise ValueError(f"need clients >= 1 and seconds > 0, got {clients} and {seconds}")
    samples = bench_samples(folders, images)
    root = files_root(samples)
    if model.settings.local_files_root != root:
        raise ValueError(
            f"the model must read local files from {root}, not {model.settings.local_files_root}"
        )
    prepared = [
        _Image(i, str(s.image_path.resolve().relative_to(root)), *s.load())
        for i, s in enumerate(samples)
    ]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, create_app(model), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/predict"
    times: dict[str, list[float]] = {k: [] for k in LOAD_KINDS}
    errors: list[str] = []
    lock = threading.Lock()
    try:
        with requests.Session() as http:
            # Warm-up: every kind of request once on every image, one at a time, so the
            # image, embedding, expert and click caches hold what the load will use.
            for p, kind in itertools.product(prepared, LOAD_KINDS):
                http.post(url, json=_body(kind, [p], np.random.default_rng(0)), timeout=600)
        after_warmup = rss_mb()
        stop = time.monotonic() + seconds
        series: list[list[float]] = []

        def client(number: int) -> None:
            rng = np.random.default_rng([seed, number])
            kinds = itertools.cycle(LOAD_KINDS[number % len(LOAD_KINDS) :] + LOAD_KINDS)
            with requests.Session() as http:
                while time.monotonic() < stop:
                    kind = next(kinds)
                    start = time.perf_counter()
                    try:
                        response = http.post(url, json=_body(kind, prepared, rng), timeout=600)
                        reason = _error(response)
                    except requests.RequestException as exc:
                        reason = f"{type(exc).__name__}: {exc}"
                    with lock:
                        times[kind].append(time.perf_counter() - start)
                        if reason:
                            errors.append(f"{kind}: {reason}")

        def sampler() -> None:
            t0 = time.monotonic()
            while time.monotonic() < stop:
                series.append([round(time.monotonic() - t0, 1), rss_mb()])
                time.sleep(sample_every)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        threads.append(threading.Thread(target=sampler))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.shutdown()
    peak = max([after_warmup, *(mb for _, mb in series)])
    return {
        "clients": clients,
        "seconds": seconds,
        "images": len(prepared),
        "requests": {
            kind: {
                "n": len(v),
                "p50": float(np.percentile(v, 50)) if v else None,
                "p95": float(np.percentile(v, 95)) if v else None,
            }
            for kind, v in times.items()
        },
        "errors": {"count": len(errors), "first": errors[:10]},
        "rss_mb": {
            "after_warmup": after_warmup,
            "peak": peak,
            "ratio": peak / after_warmup,
            "series": series,
        },
    }


def format_load_report(fig: dict) -> str:
    """The figures of :func:`load_test` as text (seconds, MB)."""
    lines = [
        f"promptmoe bench server --load: {fig['clients']} clients, {fig['seconds']:.0f} s, "
        f"{fig['images']} images",
        f"{'request':<8} {'n':>6} {'p50 s':>8} {'p95 s':>8}",
    ]
    for kind, row in fig["requests"].items():
        p50 = f"{row['p50']:8.3f}" if row["p50"] is not None else f"{'-':>8}"
        p95 = f"{row['p95']:8.3f}" if row["p95"] is not None else f"{'-':>8}"
        lines.append(f"{kind:<8} {row['n']:6d} {p50} {p95}")
    lines.append(f"errors: {fig['errors']['count']}")
    lines += [f"  {e}" for e in fig["errors"]["first"]]
    rss = fig["rss_mb"]
    lines.append(
        f"RSS MB: after warm-up {rss['after_warmup']:.0f}, peak {rss['peak']:.0f} "
        f"({rss['ratio']:.2f}x)"
    )
    step = max(1, len(rss["series"]) // 10)
    lines.append(
        "RSS over time: " + ", ".join(f"{t:.0f}s {mb:.0f}" for t, mb in rss["series"][::step])
    )
    return "\n".join(lines)
