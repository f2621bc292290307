"""Image-encoder runtimes on the embedded MobileSAM: export, on-disk cache, reload, rebuild
of a corrupt graph, fallback to torch, and mask agreement with fp32 PyTorch."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from promptmoe_plugin.masks import mask_iou
from promptmoe_plugin.sam import Prompt, SamEngine, load_encoder, runtimes
from promptmoe_plugin.sam.runtimes import GRAPH, MANIFEST, RuntimeUnavailable, parse_runtime

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_ONNXRUNTIME = importlib.util.find_spec("onnxruntime") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
needs_onnxruntime = pytest.mark.skipif(not HAS_ONNXRUNTIME, reason="onnxruntime is not installed")


@pytest.fixture(scope="module")
def built(engine, tmp_path_factory):
    """A runtime cache where two threads asked for the OpenVINO encoder at once (on a fresh
    cache): ``(cache dir, encoders, number of exports)``."""
    if not HAS_OPENVINO:
        pytest.skip("openvino is not installed")
    cache = tmp_path_factory.mktemp("runtimes")
    calls = []
    real_export = runtimes.export_onnx

    def counting_export(sam, path):
        calls.append(path)
        real_export(sam, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtimes, "export_onnx", counting_export)
        encoders = [None, None]

        def load(i):
            encoders[i] = load_encoder(engine.sam, "openvino", cache, isolate=False)

        threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return cache, encoders, len(calls)


@pytest.fixture(scope="module")
def torch_engine(engine):
    return SamEngine(engine.sam, cache_mb=64, runtime="torch")


def _graph_dir(encoder):
    from pathlib import Path

    return Path(encoder.info.graph).parent


@needs_openvino
def test_concurrent_first_uses_export_once(built):
    cache, encoders, exports = built
    assert exports == 1
    infos = [e.info for e in encoders]
    assert all(i.name == "openvino" and i.fallback is None for i in infos)
    assert infos[0].graph == infos[1].graph
    folder = _graph_dir(encoders[0])
    # keyed by the weights id, the runtime name + version and the precision
    assert folder.parent.parent == cache
    assert folder.name.startswith(f"openvino-{infos[0].version}-{infos[0].precision}-")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["size"] == (folder / GRAPH).stat().st_size
    assert infos[0].agreement >= runtimes.MIN_AGREEMENT
    assert not list(cache.rglob("*.tmp"))


@needs_openvino
def test_cached_graph_reloads_without_export(engine, built, monkeypatch):
    cache, encoders, _ = built

    def no_export(sam, path):
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr(runtimes, "export_onnx", no_export)
    reloaded = SamEngine(engine.sam, cache_mb=16, runtime="openvino", runtime_cache=cache)
    assert reloaded.runtime_info == encoders[0].info
    assert reloaded.runtime_info.name == "openvino"


@needs_openvino
def test_corrupt_cached_graph_is_rebuilt(engine, built, tmp_path, monkeypatch, caplog):
    cache, encoders, _ = built
    good = _graph_dir(encoders[0]) / GRAPH
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    graph = copy / good.relative_to(cache)
    data = bytearray(graph.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # a damaged weight block
    graph.write_bytes(bytes(data))
    rebuilt = []

    def export_by_copy(sam, path):  # the real exporter is covered above; this is faster
        rebuilt.append(path)
        shutil.copyfile(good, path)

    monkeypatch.setattr(runtimes, "export_onnx", export_by_copy)
    monkeypatch.setattr(runtimes, "mask_agreement", lambda *args: 1.0)  # checked elsewhere
    with caplog.at_level(logging.WARNING, logger="promptmoe_plugin.sam.runtimes"):
        encoder = load_encoder(engine.sam, "openvino", copy, isolate=False)
    assert len(rebuilt) == 1
    assert "corrupt" in caplog.text
    assert encoder.info.name == "openvino" and encoder.info.fallback is None
    assert graph.read_bytes() == good.read_bytes()


@needs_openvino
@needs_openvino
def test_corrupt_external_data_is_rebuilt(engine, built, tmp_path, monkeypatch, caplog):
    """A graph over 2 GB (SAM ViT-H) keeps its weights in files beside it: the manifest
    holds each one's size and digest, and a damaged one is rebuilt like the graph."""
    _, encoders, _ = built
    good = _graph_dir(encoders[0]) / GRAPH
    rebuilt = []

    def export_with_external_data(sam, path):  # the graph, and a weights file beside it
        rebuilt.append(path)
        shutil.copyfile(good, path)
        (path.parent / "blocks.0.attn.qkv.weight").write_bytes(b"\x01" * 4096)

    monkeypatch.setattr(runtimes, "export_onnx", export_with_external_data)
    monkeypatch.setattr(runtimes, "mask_agreement", lambda *args: 1.0)  # checked elsewhere
    cache = tmp_path / "cache"
    load_encoder(engine.sam, "openvino", cache, isolate=False)
    folder = _graph_dir(load_encoder(engine.sam, "openvino", cache, isolate=False))
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["external"]) == {"blocks.0.attn.qkv.weight"} and len(rebuilt) == 1
    (folder / "blocks.0.attn.qkv.weight").write_bytes(b"\x01" * 4095 + b"\x02")
    with caplog.at_level(logging.WARNING, logger="promptmoe_plugin.sam.runtimes"):
        encoder = load_encoder(engine.sam, "openvino", cache, isolate=False)
    assert len(rebuilt) == 2 and "external data file" in caplog.text
    assert encoder.info.name == "openvino" and encoder.info.fallback is None


def test_runtime_that_fails_to_load_falls_back_to_torch(
    engine, built, torch_engine, monkeypatch, caplog
):
    cache, _, _ = built

    def broken(*args, **kwargs):
        raise RuntimeError("simulated compile failure")

    monkeypatch.setattr(runtimes, "load_session", broken)
    with caplog.at_level(logging.WARNING, logger="promptmoe_plugin.sam.runtimes"):
        fallen = SamEngine(engine.sam, cache_mb=16, runtime="openvino", runtime_cache=cache)
    info = fallen.runtime_info
    assert (info.name, info.precision, info.requested) == ("torch", "f32", "openvino")
    assert "simulated compile failure" in info.fallback
    # one line per part: the encoder, and the decoder (auto: no exported runtime loads)
    assert fallen.decoder_info.name == "torch"
    assert "simulated compile failure" in fallen.decoder_info.fallback
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2
    assert "image encoder runtime openvino failed, falling back to torch" in warnings[0]
    assert "mask decoder runtime auto: no exported runtime usable, torch" in warnings[1]
    # the engine still works, and exactly as the torch runtime does
    x = torch.zeros(1, 3, 1024, 1024)
    assert torch.equal(fallen.encoder.encode(x), torch_engine.encoder.encode(x))


def test_missing_runtime_falls_back_to_torch(engine, tmp_path, monkeypatch, caplog):
    def missing(name):
        raise RuntimeUnavailable(f"{name} is not installed (simulated)")

    monkeypatch.setattr(runtimes, "runtime_version", missing)
    with caplog.at_level(logging.WARNING, logger="promptmoe_plugin.sam.runtimes"):
        explicit = load_encoder(engine.sam, "onnxruntime", tmp_path)
        auto = load_encoder(engine.sam, "auto", tmp_path)
    assert explicit.info.name == auto.info.name == "torch"
    assert "not installed" in explicit.info.fallback
    assert all(c in auto.info.fallback for c in runtimes.AUTO_ORDER)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2
    assert not list(tmp_path.iterdir())  # nothing exported


def _deepest_point(mask: np.ndarray) -> list[float]:
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), mask.shape)
    return [float(x), float(y)]


def _click_masks(engine: SamEngine, voc) -> list[np.ndarray]:
    emb = engine.embed(voc["rgb"])
    prompts = [Prompt(points=[_deepest_point(m)], labels=[1]) for m in voc["masks"]]
    out = engine.decode(emb, prompts)
    return [out.masks[i, b] for i, b in enumerate(out.best())]


def _mean_iou(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([mask_iou(x, y, empty=1.0) for x, y in zip(a, b, strict=True)]))


@needs_openvino
def test_openvino_masks_agree_with_torch_on_a_photo(engine, built, torch_engine, voc):
    cache, _, _ = built
    fast = SamEngine(engine.sam, cache_mb=16, runtime="openvino", runtime_cache=cache)
    # click-1 masks of all 19 instances of the VOC photo
    assert _mean_iou(_click_masks(fast, voc), _click_masks(torch_engine, voc)) >= 0.98


@needs_onnxruntime
@needs_openvino
def test_onnxruntime_runs_the_same_graph_at_f32(engine, built, torch_engine, voc, monkeypatch):
    cache, encoders, _ = built
    good = _graph_dir(encoders[0]) / GRAPH
    # the same exporter and opset as OpenVINO's graph: copied instead of exported again
    monkeypatch.setattr(runtimes, "export_onnx", lambda sam, path: shutil.copyfile(good, path))
    ort = SamEngine(engine.sam, cache_mb=16, runtime="onnxruntime", runtime_cache=cache)
    assert (ort.runtime_info.name, ort.runtime_info.precision) == ("onnxruntime", "f32")
    assert ort.runtime_info.agreement >= 0.999
    assert _mean_iou(_click_masks(ort, voc), _click_masks(torch_engine, voc)) >= 0.99


def test_torch_runtime_is_the_model_itself(torch_engine, tmp_path):
    info = torch_engine.runtime_info
    assert (info.name, info.version, info.precision) == ("torch", torch.__version__, "f32")
    assert info.fallback is None and info.graph is None
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = torch_engine.model.image_encoder(x)
    assert torch.equal(torch_engine.encoder.encode(x), expected)
    # the torch runtime keeps the embedding disk cache folder it always had
    on_disk = SamEngine(torch_engine.sam, cache_mb=1, disk_cache=tmp_path, runtime="torch")
    assert on_disk.disk_cache == tmp_path / torch_engine.model_id


def test_default_runtime_is_auto():
    import inspect

    from ls_backend.config import EngineSettings, load_settings

    assert inspect.signature(SamEngine.create).parameters["runtime"].default == "auto"
    assert EngineSettings().runtime == "auto"
    assert load_settings({"SAM_RUNTIME": "torch"}).engine.runtime == "torch"


@pytest.mark.parametrize(
    "runtime, message",
    [
        ("tensorrt", "unknown runtime"),
        ("torch-bf16", "unknown runtime"),
        ("openvino-int4", "unknown precision"),
        ("onnxruntime-bf16", "f32 only"),
    ],
)
def test_bad_runtime_names(runtime, message):
    with pytest.raises(ValueError, match=message):
        parse_runtime(runtime)


# ---------------------------------------------------------------------- the decoder graph
@pytest.fixture(scope="module")
def decoder_built(engine, tmp_path_factory):
    """A runtime cache where two threads asked for the ONNX Runtime decoder at once:
    ``(cache dir, decoders, number of exports)``."""
    if not HAS_ONNXRUNTIME:
        pytest.skip("onnxruntime is not installed")
    cache = tmp_path_factory.mktemp("decoders")
    calls = []
    real_export = runtimes.export_decoder_onnx

    def counting_export(sam, path):
        calls.append(path)
        real_export(sam, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtimes, "export_decoder_onnx", counting_export)
        decoders = [None, None]

        def load(i):
            decoders[i] = runtimes.load_decoder(engine.sam, "onnxruntime", cache, isolate=False)

        threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return cache, decoders, len(calls)


@pytest.fixture(scope="module")
def ort_decoder_engine(engine, decoder_built):
    """fp32 PyTorch features, the decoder graph in ONNX Runtime."""
    cache, _, _ = decoder_built
    return SamEngine(
        engine.sam, cache_mb=64, runtime="torch", runtime_cache=cache, decoder_runtime="onnxruntime"
    )


@needs_onnxruntime
def test_decoder_graph_is_exported_once_and_cached(decoder_built):
    cache, decoders, exports = decoder_built
    assert exports == 1
    infos = [d.info for d in decoders]
    assert infos[0] == infos[1]
    assert (infos[0].name, infos[0].precision, infos[0].fallback) == ("onnxruntime", "f32", None)
    folder = _graph_dir(decoders[0])
    assert folder.parent.parent == cache
    assert folder.name.startswith(f"decoder-onnxruntime-{infos[0].version}-f32-")
    assert (folder / runtimes.DECODER_GRAPH).is_file()
    assert infos[0].agreement >= 0.999


@needs_onnxruntime
def test_decoder_graph_matches_torch_for_every_prompt_kind(torch_engine, ort_decoder_engine):
    import skimage.data

    image = skimage.data.astronaut()
    ref_emb, emb = torch_engine.embed(image), ort_decoder_engine.embed(image)
    assert torch.equal(ref_emb.features, emb.features)
    first = torch_engine.decode(ref_emb, [Prompt(points=[[256, 179]], labels=[1])], frame="none")
    mask = first.low_res_logits[0, 1]
    box = [100, 50, 400, 400]
    prompts = [
        Prompt(points=[[256, 179]], labels=[1]),
        Prompt(points=[[256, 179], [300, 300]], labels=[1, 0]),
        Prompt(box=box),
        Prompt(points=[[256, 179]], labels=[1], box=box),
        Prompt(mask_logits=mask),
        Prompt(points=[[256, 179]], labels=[1], mask_logits=mask),
        Prompt(points=[[256, 179]], labels=[1], box=box, mask_logits=mask),
    ]
    for multimask in (True, False):
        ref = torch_engine.decode(ref_emb, prompts, multimask=multimask)
        got = ort_decoder_engine.decode(emb, prompts, multimask=multimask)
        assert got.low_res_logits.shape == ref.low_res_logits.shape
        np.testing.assert_allclose(got.low_res_logits, ref.low_res_logits, atol=1e-3)
        np.testing.assert_allclose(got.iou, ref.iou, atol=1e-4)
        assert (got.masks != ref.masks).mean() < 1e-4


@needs_onnxruntime
def test_decoder_graph_masks_agree_with_torch_on_a_photo(torch_engine, ort_decoder_engine, voc):
    assert _mean_iou(_click_masks(ort_decoder_engine, voc), _click_masks(torch_engine, voc)) >= 0.99


@needs_onnxruntime
def test_exported_decoder_upscales_within_tolerance(torch_engine, ort_decoder_engine, voc):
    emb = torch_engine.embed(voc["rgb"])
    prompts = [Prompt(points=[_deepest_point(m)], labels=[1]) for m in voc["masks"][:4]]
    logits = torch_engine.decode(emb, prompts, frame="none").low_res_logits.reshape(-1, 256, 256)
    for frame in ("image", "working"):
        ref = torch_engine.upscale(emb, logits, frame)
        got = ort_decoder_engine.upscale(emb, logits, frame)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() < 1e-3
        assert ((got > 0) != (ref > 0)).mean() < 1e-4


@needs_onnxruntime
def test_large_masks_thresholded_in_bands_match_torch(
    torch_engine, ort_decoder_engine, voc, monkeypatch
):
    from promptmoe_plugin.sam import engine as engine_module

    emb = torch_engine.embed(voc["rgb"])
    prompts = [Prompt(points=[_deepest_point(m)], labels=[1]) for m in voc["masks"][:4]]
    logits = torch_engine.decode(emb, prompts, frame="none").low_res_logits.reshape(-1, 256, 256)
    ref = torch_engine.upscale_masks(emb, logits, "image")
    monkeypatch.setattr(engine_module, "BANDED_UPSCALE_BYTES", 0)  # every image is "large"
    got = ort_decoder_engine.upscale_masks(emb, logits, "image")
    assert got.shape == ref.shape == (len(logits), 375, 500) and got.dtype == bool
    assert (got != ref).mean() < 1e-4


def test_decoder_runtime_follows_the_encoder_runtime(torch_engine, engine, tmp_path, monkeypatch):
    assert torch_engine.decoder_info.name == "torch"  # runtime="torch": the reference path
    seen = []
    from promptmoe_plugin.sam import engine as engine_module

    monkeypatch.setattr(
        engine_module, "load_decoder", lambda sam, runtime, cache: seen.append(runtime)
    )
    monkeypatch.setattr(engine_module, "load_encoder", lambda *args: torch_engine.encoder)
    for runtime, decoder_runtime in [("torch", None), ("auto", None), ("openvino-bf16", None)]:
        SamEngine(engine.sam, cache_mb=1, runtime=runtime, decoder_runtime=decoder_runtime)
    SamEngine(engine.sam, cache_mb=1, runtime="torch", decoder_runtime="onnxruntime")
    assert seen == ["torch", "auto", "auto", "onnxruntime"]


@needs_onnxruntime
def test_decoder_that_fails_to_load_falls_back_to_torch(
    engine, decoder_built, torch_engine, monkeypatch, caplog
):
    cache, _, _ = decoder_built

    def broken(*args, **kwargs):
        raise RuntimeError("simulated compile failure")

    monkeypatch.setattr(runtimes, "load_session", broken)
    with caplog.at_level(logging.WARNING, logger="promptmoe_plugin.sam.runtimes"):
        fallen = SamEngine(
            engine.sam, runtime="torch", runtime_cache=cache, decoder_runtime="onnxruntime"
        )
    info = fallen.decoder_info
    assert (info.name, info.requested) == ("torch", "onnxruntime")
    assert "simulated compile failure" in info.fallback
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "mask decoder runtime onnxruntime failed" in warnings[0]
    # the fallen-back engine decodes exactly as the reference does
    import skimage.data

    emb = fallen.embed(skimage.data.astronaut())
    prompt = [Prompt(points=[[256, 179]], labels=[1])]
    ref = torch_engine.decode(torch_engine.embed(skimage.data.astronaut()), prompt)
    got = fallen.decode(emb, prompt)
    assert np.array_equal(got.low_res_logits, ref.low_res_logits)
    assert np.array_equal(got.masks, ref.masks)


@needs_onnxruntime
def test_corrupt_cached_decoder_graph_is_rebuilt(
    engine, decoder_built, tmp_path, monkeypatch, caplog
):
    cache, decoders, _ = decoder_built
    good = _graph_dir(decoders[0]) / runtimes.DECODER_GRAPH
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    graph = copy / good.relative_to(cache)
    data = bytearray(graph.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    graph.write_bytes(bytes(data))
    rebuilt = []

    def export_by_copy(sam, path):
        rebuilt.append(path)
        shutil.copyfile(good, path)

    monkeypatch.setattr(runtimes, "export_decoder_onnx", export_by_copy)
    with caplog.at_level(logging.WARNING, logger="promptmoe_plugin.sam.runtimes"):
        decoder = runtimes.load_decoder(engine.sam, "onnxruntime", copy, isolate=False)
    assert len(rebuilt) == 1 and "corrupt cached decoder graph" in caplog.text
    assert decoder.info.name == "onnxruntime" and decoder.info.fallback is None
    assert graph.read_bytes() == good.read_bytes()


# ---------------------------------------------------------------------- two processes
_BUILD_IN_A_PROCESS = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from promptmoe_plugin.sam import runtimes
from promptmoe_plugin.sam.build import load_sam
decoder = runtimes.load_decoder(load_sam(device="cpu"), "onnxruntime", sys.argv[1])
print(decoder.info.graph)
"""


@needs_onnxruntime
def test_two_processes_build_a_graph_once(tmp_path):
    """Two server processes started at once on a fresh cache: one exports the graph, the
    other waits on the file lock and loads it (no half-written graph, no second export)."""
    import subprocess
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD_IN_A_PROCESS, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    builds = sum(err.count("built the onnxruntime f32 decoder graph") for _, err in outs)
    assert builds == 1, [err[-2000:] for _, err in outs]
    graphs = {out.strip() for out, _ in outs}
    assert len(graphs) == 1 and graphs.pop().startswith(str(tmp_path))
    assert not list(tmp_path.rglob("*.tmp"))
