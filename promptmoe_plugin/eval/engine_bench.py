"""The engine benchmark: encoder, decoder (batched vs one by one), cache, memory."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..images import resize_longest
from ..sam import Prompt, SamEngine


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports ``ru_maxrss`` in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_engine(
    engine: SamEngine, repeats: int = 5, batch: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Time the engine's steps on the astronaut photo; returns figures in seconds and MB.

    Every encode uses a copy of the photo with one pixel changed, so it is a real cache
    miss; the hit path embeds an already-cached image.  Decoding times ``batch``
    single-click prompt sets in one ``decode()`` call with decoder batches of 1, 4 and
    ``batch``, against the same sets decoded one ``decode()`` call each.
    """
    import skimage.data

    image = skimage.data.astronaut()
    rng = np.random.default_rng(seed)

    def variant(i: int) -> np.ndarray:
        out = image.copy()
        out[0, 0, 0] = (int(out[0, 0, 0]) + 1 + i) % 256
        return out

    counter = iter(range(10**6))
    encode = _median_seconds(lambda: engine.embed(variant(next(counter))), repeats)
    emb = engine.embed(image)
    hit = _median_seconds(lambda: engine.embed(image), repeats)

    h, w = image.shape[:2]
    prompts = [Prompt(points=rng.uniform((0, 0), (w, h), (1, 2)), labels=[1]) for _ in range(batch)]
    default_chunk = engine.decode_chunk
    per_prompt = {}
    for chunk in sorted({1, 4, batch}):
        engine.decode_chunk = chunk
        per_prompt[chunk] = (
            _median_seconds(lambda: engine.decode(emb, prompts, frame="none"), repeats) / batch
        )
    engine.decode_chunk = default_chunk
    single = (
        _median_seconds(lambda: [engine.decode(emb, [p], frame="none") for p in prompts], repeats)
        / batch
    )
    one_click = _median_seconds(lambda: engine.decode(emb, prompts[:1], frame="image"), repeats)

    large = np.ascontiguousarray(resize_longest(image, 8000)[:6000])  # 8000x6000, 48 MP
    start = time.perf_counter()
    large_emb = engine.embed(large)
    engine.decode(large_emb, prompts[:1], frame="image")
    large_seconds = time.perf_counter() - start

    stats = engine.stats()
    return {
        "model": engine.model_id,
        "device": str(engine.device),
        "repeats": repeats,
        "batch": batch,
        "decode_chunk": default_chunk,
        "encode_s": encode,
        "cache_hit_s": hit,
        "encode_over_hit": encode / hit if hit > 0 else float("inf"),
        "decode_per_prompt_s_by_chunk": per_prompt,
        "decode_single_calls_per_prompt_s": single,
        "batched_speedup": single / per_prompt[batch],
        "one_click_with_upscale_s": one_click,
        "large_image": list(large.shape[:2]),
        "large_image_encode_and_click_s": large_seconds,
        "cache": vars(stats.cache),
        "encodes": stats.encodes,
        "peak_rss_mb": _peak_rss_mb(),
    }


def format_engine_report(r: dict[str, Any]) -> str:
    """A readable table of :func:`bench_engine` figures."""
    rows = [
        ("model / device", f"{r['model']} / {r['device']}"),
        ("image encoder (cache miss)", f"{r['encode_s'] * 1000:.0f} ms"),
        (
            "embed, cache hit",
            f"{r['cache_hit_s'] * 1000:.2f} ms  ({r['encode_over_hit']:.0f}x faster)",
        ),
        *(
            (f"decode per prompt, {r['batch']} sets, decoder batch {c}", f"{t * 1000:.1f} ms")
            for c, t in r["decode_per_prompt_s_by_chunk"].items()
        ),
        (
            "decode per prompt, one decode() call each",
            f"{r['decode_single_calls_per_prompt_s'] * 1000:.1f} ms",
        ),
        (f"speed-up of batch {r['batch']} over one call each", f"{r['batched_speedup']:.2f}x"),
        ("engine's decoder batch on this device", str(r["decode_chunk"])),
        ("one click incl. upscale to image", f"{r['one_click_with_upscale_s'] * 1000:.1f} ms"),
        (
            f"{r['large_image'][1]}x{r['large_image'][0]} image: encode + click",
            f"{r['large_image_encode_and_click_s']:.2f} s",
        ),
        (
            "encodes / cache hits / misses",
            f"{r['encodes']} / {r['cache']['hits']} / {r['cache']['misses']}",
        ),
        ("peak RSS", f"{r['peak_rss_mb']:.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
