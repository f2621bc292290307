"""The engine benchmark: encoder, decoder (batched vs one by one), cache, memory; and the
comparison of runtimes of the image encoder and of the decoder (speed and mask agreement
with fp32 PyTorch)."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..masks import mask_iou
from ..sam import LoadedSam, Prompt, SamEngine
from ..smartsam import SmartSamSession
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

    # 8000x6000 (48 MP), stretched in one allocation: the benchmark's own copies must not
    # set the peak RSS it reports
    large = cv2.resize(image, (8000, 6000), interpolation=cv2.INTER_LINEAR)
    start = time.perf_counter()
    large_emb = engine.embed(large)
    engine.decode(large_emb, prompts[:1], frame="image")
    large_seconds = time.perf_counter() - start

    stats = engine.stats()
    return {
        "model": engine.model_id,
        "device": str(engine.device),
        "runtime": engine.runtime_info.as_dict(),
        "decoder": engine.decoder_info.as_dict(),
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
        ("decoder runtime", _runtime_text(r["decoder"]) if "decoder" in r else "-"),
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
    """Compare runtimes on the first ``images`` images of each folder.

    A runtime is an engine ``runtime`` (its decoder follows it, see :class:`SamEngine`) or
    ``"<encoder>/<decoder>"`` for both, e.g. ``"torch/onnxruntime"`` (fp32 PyTorch
    features, the decoder graph in ONNX Runtime: the decoder's own agreement).

    Per image, each runtime (in a rotating order, so load on a shared machine falls on all
    alike) encodes the image; then, with the embedding cached, decodes the click-1 prompt
    (the object's deepest pixel, best of 3 masks by predicted IoU, upscaled to the image),
    and runs a SmartSAM first click there (default agent: 4 decodes).  Its masks are
    compared with fp32 PyTorch's (IoU, image frame).  Reports per runtime: what actually
    ran (encoder and decoder), the median encode, one-click decode and SmartSAM
    first-click times and their ratios to torch's, and the mean and least IoU with torch
    of the click-1 masks (and the mean of the SmartSAM masks).  torch is always measured
    (it is the reference).  Every runtime is timed 3 times per image (median kept).
    """
    names = list(dict.fromkeys(["torch", *runtimes]))
    engines = {}
    for r in names:
        enc, _, dec = r.partition("/")
        engines[r] = SamEngine(
            sam, cache_mb=32, runtime=enc, runtime_cache=runtime_cache, decoder_runtime=dec or None
        )
    samples = [s for _, group in sample_datasets(folders, images) for s in group]
    encode: dict[str, list[float]] = {r: [] for r in names}
    decode: dict[str, list[float]] = {r: [] for r in names}
    smart: dict[str, list[float]] = {r: [] for r in names}
    ious: dict[str, list[float]] = {r: [] for r in names}
    smart_ious: dict[str, list[float]] = {r: [] for r in names}
    for i, sample in enumerate(samples):
        image, gt, ignore = sample.load()
        click = Clicker(gt, ignore).next_click(np.zeros_like(gt))
        prompt = [Prompt(points=[[click.x, click.y]], labels=[1])]
        masks, smart_masks = {}, {}
        order = names[i % len(names) :] + names[: i % len(names)]
        for r in order:
            encode[r].append(engines[r].embed(image).encode_seconds)
        for _ in range(3):
            for r in order:
                emb = engines[r].embed(image)  # cached
                start = time.perf_counter()
                out = engines[r].decode(emb, prompt)
                decode[r].append(time.perf_counter() - start)
                masks[r] = out.masks[0, out.best()[0]]
                session = SmartSamSession(engines[r], image)  # embedding cached
                start = time.perf_counter()
                smart_masks[r] = session.click(click.x, click.y)
                smart[r].append(time.perf_counter() - start)
        for r in names:
            ious[r].append(mask_iou(masks[r], masks["torch"], empty=1.0))
            smart_ious[r].append(mask_iou(smart_masks[r], smart_masks["torch"], empty=1.0))
    torch_encode = statistics.median(encode["torch"])
    torch_decode = statistics.median(decode["torch"])
    torch_smart = statistics.median(smart["torch"])
    rows = {}
    for r in names:
        median = statistics.median(encode[r])
        rows[r] = {
            "runtime": engines[r].runtime_info.as_dict(),
            "decoder": engines[r].decoder_info.as_dict(),
            "encode_s": median,
            "speedup": torch_encode / median,
            "decode_s": statistics.median(decode[r]),
            "decode_speedup": torch_decode / statistics.median(decode[r]),
            "smartsam_first_click_s": statistics.median(smart[r]),
            "smartsam_over_torch": statistics.median(smart[r]) / torch_smart,
            "mask_iou_mean": float(np.mean(ious[r])),
            "mask_iou_min": float(np.min(ious[r])),
            "smartsam_iou_mean": float(np.mean(smart_ious[r])),
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
        f"{'runtime':<22} {'encoder ran as':<28} {'decoder ran as':<26} {'encode':>9} "
        f"{'vs torch':>8} {'decode':>8} {'vs torch':>8} {'SmartSAM':>9} {'/ torch':>7} "
        f"{'mask IoU':>8} {'min IoU':>8} {'Smart IoU':>9}"
    )
    lines = [
        f"{r['model']}, {r['images']} images (click-1 decode incl. upscale and SmartSAM first "
        "click with the embedding cached; masks vs fp32 torch)",
        head,
    ]
    for name, row in r["runtimes"].items():
        decoder = _runtime_text(row["decoder"]) if "decoder" in row else "-"
        lines.append(
            f"{name:<22} {_runtime_text(row['runtime']):<28} {decoder:<26} "
            f"{row['encode_s'] * 1000:>6.0f} ms {row['speedup']:>7.2f}x "
            f"{row['decode_s'] * 1000:>5.1f} ms {row.get('decode_speedup', 1.0):>7.2f}x "
            f"{row.get('smartsam_first_click_s', 0.0) * 1000:>6.0f} ms "
            f"{row.get('smartsam_over_torch', 1.0):>7.2f} "
            f"{row['mask_iou_mean']:>8.4f} {row['mask_iou_min']:>8.4f} "
            f"{row.get('smartsam_iou_mean', 1.0):>9.4f}"
        )
    lines.append(f"peak RSS {r['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
