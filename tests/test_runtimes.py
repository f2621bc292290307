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
            encoders[i] = load_encoder(engine.sam, "openvino", cache)

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
        encoder = load_encoder(engine.sam, "openvino", copy)
    assert len(rebuilt) == 1
    assert "corrupt" in caplog.text
    assert encoder.info.name == "openvino" and encoder.info.fallback is None
    assert graph.read_bytes() == good.read_bytes()


@needs_openvino
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
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "falling back to torch" in warnings[0].getMessage()
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
