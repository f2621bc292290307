"""The engine benchmark: encoder, decoder (batched vs one by one), cache, memory; and the
comparison of image-encoder runtimes (speed and mask agreement with fp32 PyTorch)."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..images import resize_longest
from ..masks import mask_iou
from ..sam import LoadedSam, Prompt, SamEngine
from .clicker import Clicker
from .datasets import sample_datasets


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
        "runtime": engine.runtime_info.as_dict(),
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
        ("image encoder runtime", _runtime_text(r["runtime"])),
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


def _runtime_text(info: dict[str, Any]) -> str:
    text = f"{info['name']} {info['version']} {info['precision']}"
    if info.get("fallback"):
        text += f" (fallback: {info['fallback']})"
    return text


def bench_runtimes(
    sam: LoadedSam,
    runtimes: Sequence[str],
    folders: Sequence[str | Path],
    images: int = 10,
    runtime_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Compare image-encoder runtimes on the first ``images`` images of each folder.

    Per image, each runtime (in a rotating order, so load on a shared machine falls on all
    alike) encodes the image and decodes the click-1 prompt (the object's deepest pixel,
    best of 3 masks by predicted IoU); its mask is compared with fp32 PyTorch's (IoU, image
    frame).  Reports per runtime: what actually ran, the median encode and one-click
    decode times, the ratio of torch's median encode time to its, and the mean and least
    mask IoU with torch.  torch is always measured (it is the reference).
    """
    names = list(dict.fromkeys(["torch", *runtimes]))
    engines = {r: SamEngine(sam, cache_mb=0, runtime=r, runtime_cache=runtime_cache) for r in names}
    samples = [s for _, group in sample_datasets(folders, images) for s in group]
    encode: dict[str, list[float]] = {r: [] for r in names}
    decode: dict[str, list[float]] = {r: [] for r in names}
    ious: dict[str, list[float]] = {r: [] for r in names}
    for i, sample in enumerate(samples):
        image, gt, ignore = sample.load()
        click = Clicker(gt, ignore).next_click(np.zeros_like(gt))
        prompt = [Prompt(points=[[click.x, click.y]], labels=[1])]
        masks = {}
        for r in names[i % len(names) :] + names[: i % len(names)]:
            emb = engines[r].embed(image)
            start = time.perf_counter()
            out = engines[r].decode(emb, prompt)
            decode[r].append(time.perf_counter() - start)
            encode[r].append(emb.encode_seconds)
            masks[r] = out.masks[0, out.best()[0]]
        for r in names:
            ious[r].append(mask_iou(masks[r], masks["torch"], empty=1.0))
    torch_encode = statistics.median(encode["torch"])
    rows = {}
    for r in names:
        median = statistics.median(encode[r])
        rows[r] = {
            "runtime": engines[r].runtime_info.as_dict(),
            "encode_s": median,
            "speedup": torch_encode / median,
            "decode_s": statistics.median(decode[r]),
            "mask_iou_mean": float(np.mean(ious[r])),
            "mask_iou_min": float(np.min(ious[r])),
        }
    return {
        "model": sam.model_id,
        "datasets": [str(f) for f in folders],
        "images": len(samples),
        "runtimes": rows,
        "peak_rss_mb": _peak_rss_mb(),
    }


def format_runtime_report(r: dict[str, Any]) -> str:
    """A table of :func:`bench_runtimes` figures, one row per runtime."""
    head = (
        f"{'runtime':<16} {'ran as':<34} {'encode':>9} {'vs torch':>9} {'decode':>9} "
        f"{'mask IoU':>9} {'min IoU':>8}"
    )
    lines = [f"{r['model']}, {r['images']} images (click-1 masks vs fp32 torch)", head]
    for name, row in r["runtimes"].items():
        lines.append(
            f"{name:<16} {_runtime_text(row['runtime']):<34} {row['encode_s'] * 1000:>6.0f} ms "
            f"{row['speedup']:>8.2f}x {row['decode_s'] * 1000:>6.0f} ms "
            f"{row['mask_iou_mean']:>9.4f} {row['mask_iou_min']:>8.4f}"
        )
    lines.append(f"peak RSS {r['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
