"""``promptmoe bench server``: latency of the backend over HTTP and in process, and memory.

The backend runs in this process behind a threaded HTTP server on loopback; the same
model also answers direct ``predict`` calls, alternating with the HTTP ones, so both see
the same caches and machine load.  Images are served from their dataset folder as
``/data/local-files/?d=...`` (read from disk, as with ``LOCAL_FILES_DOCUMENT_ROOT``).

Measured per request kind, over HTTP and in process:

* ``first_click``: one keypoint on an image the backend has not seen (encoder + SmartSAM);
* ``later_click``: one more click on a cached image (the session continues);
* ``draft``: the first PromptMoE refinement of a coarse brush draft on an image whose
  embedding is cached (after its clicks);
* ``draft_repeat``: the same draft again, over both transports in turn (per-image expert
  maps cached): the cleanest HTTP vs in-process comparison.

Transports alternate image by image (and click by click).  Then every remaining image
gets a box request; the process RSS is read every 25 images and the embedding cache at
the end: the cache must stay within its bound and RSS must level off once it is full.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm
from werkzeug.serving import make_server

from promptmoe_plugin.eval.clicker import Clicker
from promptmoe_plugin.eval.coarse import make_coarse
from promptmoe_plugin.eval.datasets import Sample, interleave, sample_datasets

from .model import PromptMoEModel
from .results import brush_masks, brush_result
from .server import create_app

log = logging.getLogger(__name__)

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="Object"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Object"/></RectangleLabels>
</View>"""
KINDS = ("first_click", "later_click", "draft", "draft_repeat")


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def keypoint_item(x: float, y: float, positive: bool, h: int, w: int) -> dict:
    """A smart keypoint at image pixel ``(x, y)`` of an ``h`` x ``w`` image."""
    return {
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": "image",
        "is_positive": positive,
        "original_width": w,
        "original_height": h,
        "value": {"x": 100 * x / w, "y": 100 * y / h, "width": 0.5, "keypointlabels": ["Object"]},
    }


def box_item(gt: np.ndarray) -> dict:
    """A smart rectangle: the bounding rectangle of ``gt`` ``(H, W) bool``."""
    h, w = gt.shape
    ys, xs = np.nonzero(gt)
    value = {
        "x": 100 * xs.min() / w,
        "y": 100 * ys.min() / h,
        "width": 100 * (xs.max() - xs.min() + 1) / w,
        "height": 100 * (ys.max() - ys.min() + 1) / h,
        "rectanglelabels": ["Object"],
    }
    return {
        "type": "rectanglelabels",
        "from_name": "rect",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "value": value,
    }


def brush_item(mask: np.ndarray) -> dict:
    """A brush draft of ``mask`` ``(H, W) bool``, image frame."""
    return brush_result(mask, "Object", from_name="brush", to_name="image")


class _Caller:
    """Sends one predict request over HTTP or in process and times it."""

    def __init__(self, model: PromptMoEModel, url: str):
        self.model, self.url = model, url
        self.http = requests.Session()

    def __call__(self, task: dict, items: list[dict], http: bool) -> tuple[float, dict]:
        context = {"result": items}
        start = time.perf_counter()
        if http:
            body = {
                "tasks": [task],
                "project": "1.0",
                "label_config": CONFIG,
                "params": {"context": context},
            }
            r = self.http.post(f"{self.url}/predict", json=body, timeout=600)
            r.raise_for_status()
            pred = r.json()["results"][0]
        else:
            pred = self.model.predict([task], context=context, project="1.0", label_config=CONFIG)[
                0
            ]
        seconds = time.perf_counter() - start
        if "error" in pred:
            raise RuntimeError(pred["error"])
        return seconds, pred


def _mask(pred: dict) -> np.ndarray:
    """Union of the brush results (a click may have started a second object of the label)."""
    return np.logical_or.reduce([mask for _, mask in brush_masks(pred["result"])])


def bench_samples(folders: Sequence[str | Path], images: int) -> list[Sample]:
    """The ``images`` samples of the benchmark, taken in turn from the dataset folders."""
    return interleave(sample_datasets(folders), images)


def files_root(samples: Sequence[Sample]) -> Path:
    """The folder the model must read local files from (``LOCAL_FILES_DOCUMENT_ROOT``): the
    parent of the samples' common folder."""
    return Path(os.path.commonpath([s.image_path.resolve() for s in samples])).parent


def bench_server(
    model: PromptMoEModel,
    folders: Sequence[str | Path],
    images: int = 100,
    latency_images: int = 20,
    later_clicks: int = 4,
) -> dict:
    """Run the benchmark on ``images`` images of the dataset ``folders``, the first
    ``latency_images`` of them for the latency figures (``later_clicks`` clicks after the
    first each).  The model must read local files from :func:`files_root` of
    :func:`bench_samples`.

    Returns:
        the figures: latency p50/p95 in seconds per request kind and transport, RSS in MB
        along the run, and the embedding and image caches at the end.
    """
    samples = bench_samples(folders, images)
    if len(samples) < images:
        log.warning("only %d images found", len(samples))
    root = files_root(samples)
    if model.settings.local_files_root != root:
        raise ValueError(
            f"the model must read local files from {root}, not {model.settings.local_files_root}"
        )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server("127.0.0.1", 0, create_app(model), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    call = _Caller(model, f"http://127.0.0.1:{server.server_port}")
    times: dict[str, dict[str, list[float]]] = {k: {"http": [], "inproc": []} for k in KINDS}
    rss: dict[str, float] = {"start": rss_mb()}
    turn = 0
    try:
        for i, sample in enumerate(tqdm(samples, desc="bench server", unit="image")):
            image, gt, ignore = sample.load()
            h, w = gt.shape
            path = sample.image_path.resolve().relative_to(root)
            task = {"id": i + 1, "data": {"image": f"/data/local-files/?d={path}"}}
            if i >= latency_images:
                call(task, [box_item(gt)], http=i % 2 == 0)
            else:
                clicker = Clicker(gt, ignore)
                first = clicker.next_click(np.zeros_like(gt))
                items = [keypoint_item(first.x, first.y, True, h, w)]
                seconds, pred = call(task, items, http=i % 2 == 0)
                times["first_click"]["http" if i % 2 == 0 else "inproc"].append(seconds)
                for _ in range(later_clicks):
                    nxt = clicker.next_click(_mask(pred))
                    if nxt is None:
                        break
                    items = items + [keypoint_item(nxt.x, nxt.y, nxt.positive, h, w)]
                    turn += 1
                    seconds, pred = call(task, items, http=turn % 2 == 0)
                    times["later_click"]["http" if turn % 2 == 0 else "inproc"].append(seconds)
                # The first refinement of a draft on this image (its embedding is cached), then
                # the same draft again over both transports (identical work, warm caches).
                items = [brush_item(make_coarse(gt, image, "morph", seed=i))]
                order = (i % 2 == 1, i % 2 == 0)
                runs = (("draft", order[0]), ("draft_repeat", order[0]), ("draft_repeat", order[1]))
                for kind, http in runs:
                    seconds, _ = call(task, items, http=http)
                    times[kind]["http" if http else "inproc"].append(seconds)
            if (i + 1) % 25 == 0 or i + 1 in (10, len(samples)):
                rss[f"after_{i + 1}_images"] = rss_mb()
    finally:
        server.shutdown()
    embeddings = model.engine.stats().cache
    decoded = model.fetcher.cache.stats()
    return {
        "images": len(samples),
        "latency_images": min(latency_images, len(samples)),
        "latency": {kind: _latency(by) for kind, by in times.items()},
        "rss_mb": rss,
        "embedding_cache": {
            "entries": embeddings.entries,
            "mb": embeddings.bytes / 2**20,
            "capacity_mb": embeddings.capacity_bytes / 2**20,
            "evictions": embeddings.evictions,
            "bound_holds": embeddings.bytes <= embeddings.capacity_bytes,
        },
        "image_cache": {
            "entries": decoded.entries,
            "mb": decoded.bytes / 2**20,
            "capacity_mb": decoded.capacity_bytes / 2**20,
        },
    }


def _latency(by: dict[str, list[float]]) -> dict:
    """p50 / p95 seconds per transport (``http``, ``inproc``) and their p50 ratio."""
    row: dict = {}
    for transport, values in by.items():
        if values:
            row[transport] = {
                "n": len(values),
                "p50": float(np.percentile(values, 50)),
                "p95": float(np.percentile(values, 95)),
            }
    if row.get("http") and row.get("inproc"):
        row["http_over_inproc_p50"] = row["http"]["p50"] / row["inproc"]["p50"]
    return row


def format_server_report(fig: dict) -> str:
    """The figures of :func:`bench_server` as a text table (seconds, MB)."""
    nan = float("nan")
    lines = [
        f"promptmoe bench server: {fig['images']} images, latency on {fig['latency_images']}",
        f"{'request':<12} {'HTTP p50':>9} {'HTTP p95':>9} {'in-proc p50':>12} "
        f"{'in-proc p95':>12} {'HTTP/in-proc':>13}",
    ]
    for kind, row in fig["latency"].items():
        h, p = row.get("http", {}), row.get("inproc", {})
        lines.append(
            f"{kind:<12} {h.get('p50', nan):9.3f} {h.get('p95', nan):9.3f} "
            f"{p.get('p50', nan):12.3f} {p.get('p95', nan):12.3f} "
            f"{row.get('http_over_inproc_p50', nan):13.3f}"
        )
    lines.append("RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in fig["rss_mb"].items()))
    c = fig["embedding_cache"]
    lines.append(
        f"embedding cache: {c['entries']} entries, {c['mb']:.0f} / "
        f"{c['capacity_mb']:.0f} MB, {c['evictions']} evictions, "
        f"bound holds: {c['bound_holds']}"
    )
    i = fig["image_cache"]
    lines.append(
        f"decoded image cache: {i['entries']} entries, {i['mb']:.0f} / {i['capacity_mb']:.0f} MB"
    )
    return "\n".join(lines)
