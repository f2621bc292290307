"""Runtimes of SAM's image encoder and of its prompt encoder + mask decoder: PyTorch eager,
or an ONNX export of the loaded model run by OpenVINO or ONNX Runtime on the CPU.

An exported graph is built from the loaded checkpoint at first use and cached on disk under
``<cache>/<model id>/<runtime>-<version>-<precision>-torch<version>-opset<N>/``, never
downloaded.  Each cached graph has a manifest with its SHA-256, checked on every load, so a
corrupt file is rebuilt; a process lock plus a file lock, and an atomic rename, make
concurrent first uses build it once.  The build runs in a child process, so exporting
does not raise the server's peak memory.  A runtime that cannot be imported, exported or
loaded falls back to PyTorch with one warning line.

Every runtime takes the preprocessed ``(1, 3, 1024, 1024)`` float32 image and returns the
``(1, 256, 64, 64)`` float32 features tensor the mask decoder takes, so the decoder path is
the same for all of them.

``"auto"`` takes the first of :data:`AUTO_ORDER` that loads on this machine and whose masks
agree with fp32 PyTorch (mean IoU >= :data:`MIN_AGREEMENT` of the click masks of a
self-check photo, measured once when the graph is built); on CUDA it keeps PyTorch.

The decoder graph (:func:`load_decoder`) takes the image features and the prompts as SAM's
prompt encoder sees them (points padded as it pads them, box corners as points labelled 2
and 3, a mask input with a has-mask flag) and returns all four masks and IoU predictions
of the mask decoder in the low-res frame; the engine picks single or multimask output as
``MaskDecoder.forward`` does.  It is cached like the encoder's graph, in a ``decoder-``
folder, and ``"auto"`` takes the first of :data:`DECODER_AUTO_ORDER`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import replaced_atomically
from .build import LoadedSam, weights_id
from .frames import IMAGE_SIZE

log = logging.getLogger(__name__)

#: Values of ``runtime``: a name, optionally ``-f32`` / ``-bf16`` for the precision.
RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
#: What ``"auto"`` tries on a CPU, fastest first (``promptmoe bench engine``, 2 cores:
#: OpenVINO bf16 5.8x, OpenVINO f32 3.4x, ONNX Runtime 1.8x the speed of PyTorch eager).
AUTO_ORDER = ("openvino-bf16", "openvino-f32", "onnxruntime-f32")
#: Least mean IoU of click masks with fp32 PyTorch for ``"auto"`` to take a runtime.
MIN_AGREEMENT = 0.98
#: What ``"auto"`` tries for the prompt encoder + mask decoder on a CPU.  One decode on
#: 2 cores (``promptmoe bench engine --runtimes``, same run): ONNX Runtime f32 2.3-2.6x,
#: OpenVINO f32 1.1x (dynamic shapes), OpenVINO bf16 3.3x the speed of PyTorch; bf16
#: moves logits by up to ~1 and the predicted IoU by ~0.02, which re-ranks SmartSAM's
#: candidates, so auto keeps f32 (logits within 1e-4 of PyTorch's).
DECODER_AUTO_ORDER = ("onnxruntime-f32", "openvino-f32")
OPSET = 17
GRAPH = "encoder.onnx"
DECODER_GRAPH = "decoder.onnx"
#: Inputs of the decoder graph, in order.
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
MANIFEST = "manifest.json"
#: Clicks of the build-time self-check on the astronaut photo: a grid over the image.
CHECK_GRID = 4


def default_cache_dir() -> Path:
    """``~/.cache/promptmoe/runtimes``."""
    return Path.home() / ".cache" / "promptmoe" / "runtimes"


class RuntimeUnavailable(RuntimeError):
    """A runtime that cannot be used here (not installed, failed export or load)."""


@dataclass(frozen=True)
class RuntimeInfo:
    """What runs the image encoder.

    Attributes:
        name: ``"torch"``, ``"openvino"`` or ``"onnxruntime"``.
        version: the runtime package's version.
        precision: ``"f32"`` or ``"bf16"`` (the inference precision of the encoder).
        requested: the ``runtime`` the engine was created with.
        agreement: mean click-mask IoU with fp32 PyTorch on the self-check photo, measured
            when the graph was built (None for torch).
        fallback: why the requested runtime is not the one running, or None.
        graph: the cached graph file, or None for torch.
    """

    name: str
    version: str
    precision: str
    requested: str
    agreement: float | None = None
    fallback: str | None = None
    graph: str | None = None

    @property
    def tag(self) -> str:
        """``name-version-precision``, e.g. ``openvino-2026.4.1-bf16``."""
        return f"{self.name}-{self.version}-{self.precision}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EncoderRuntime:
    """Runs the image encoder: ``encode(x)`` maps ``(1, 3, 1024, 1024)`` preprocessed float32
    on the engine's device to the ``(1, 256, 64, 64)`` float32 features on that device."""

    info: RuntimeInfo

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchEncoder(EncoderRuntime):
    """The model's own image encoder, fp32 eager (the reference)."""

    def __init__(self, sam: LoadedSam, requested: str = "torch", fallback: str | None = None):
        self.module = sam.model.image_encoder
        self.info = RuntimeInfo("torch", torch.__version__, "f32", requested, fallback=fallback)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def parse_runtime(runtime: str) -> tuple[str, str | None]:
    """``"openvino-bf16"`` -> ``("openvino", "bf16")``; ``"onnxruntime"`` -> ``(.., None)``.

    Raises:
        ValueError: an unknown runtime or precision.
    """
    name, _, precision = runtime.partition("-")
    if name not in RUNTIMES or (name in ("auto", "torch") and precision):
        raise ValueError(
            f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}, "
            "optionally openvino-f32, openvino-bf16, onnxruntime-f32"
        )
    if precision and precision not in ("f32", "bf16"):
        raise ValueError(f"unknown precision {precision!r} in runtime {runtime!r}: f32 or bf16")
    if name == "onnxruntime" and precision == "bf16":
        raise ValueError("onnxruntime runs the encoder at f32 only (its CPU provider has no bf16)")
    return name, precision or None


def runtime_version(name: str) -> str:
    """Version of runtime ``name``'s package.

    Raises:
        RuntimeUnavailable: the package cannot be imported.
    """
    try:
        if name == "openvino":
            import openvino

            return openvino.__version__.split("-")[0]
        if name == "onnxruntime":
            import onnxruntime

            return onnxruntime.__version__
    except ImportError as exc:
        raise RuntimeUnavailable(f"{name} is not installed ({exc})") from exc
    if name == "torch":
        return torch.__version__
    raise RuntimeUnavailable(f"unknown runtime {name!r}")


def best_precision(name: str) -> str:
    """bf16 for OpenVINO on a CPU with native bf16 (AVX-512 BF16 / AMX), else f32."""
    if name != "openvino":
        return "f32"
    import openvino

    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in caps else "f32"


# ---------------------------------------------------------------------- graph cache
_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Held by one thread of one process at a time for ``folder``'s graph."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(folder, threading.Lock())
    with lock:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.with_name(folder.name + ".lock"), "a+b") as handle:
            try:
                import fcntl
            except ImportError:  # not POSIX: the process lock only
                yield
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_folder(
    cache_dir: Path,
    sam: LoadedSam,
    name: str,
    version: str,
    precision: str,
    part: str = "encoder",
) -> Path:
    """Cache folder of one exported graph: model, part (the decoder's folder name starts
    with ``decoder-``), runtime + version, precision, exporter."""
    key = f"{name}-{version}-{precision}-torch{torch.__version__}-opset{OPSET}"
    if part != "encoder":
        key = f"{part}-{key}"
    return cache_dir / sam.model_id / key.replace("+", "_")


def _graph_name(part: str) -> str:
    return GRAPH if part == "encoder" else DECODER_GRAPH


def _external_files(folder: Path, graph: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each file beside ``graph`` in ``folder`` but the manifest: the
    external data of a graph over 2 GB (SAM ViT-H's weights), none for smaller ones."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p != graph and p.name != MANIFEST
    }


def _read_manifest(folder: Path, part: str = "encoder") -> dict[str, Any] | None:
    """The manifest of a valid cached graph, or None when absent or corrupt (the graph or
    any of its external data files)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        graph = folder / _graph_name(part)
        if graph.stat().st_size != manifest["size"] or _sha256(graph) != manifest["sha256"]:
            raise ValueError("graph does not match its manifest")
        for name, want in manifest.get("external", {}).items():
            path = folder / name
            if not path.is_file():
                raise ValueError(f"external data file {name} is missing")
            if path.stat().st_size != want["size"] or _sha256(path) != want["sha256"]:
                raise ValueError(f"external data file {name} does not match its manifest")
        return manifest
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("rebuilding the corrupt cached %s graph in %s (%s)", part, folder, exc)
        return None


def export_onnx(sam: LoadedSam, path: Path) -> None:
    """Export ``sam``'s image encoder (on the CPU, fp32) to ONNX at ``path``."""
    encoder = sam.model.image_encoder
    device = next(encoder.parameters()).device
    if device.type != "cpu":
        raise RuntimeUnavailable(f"exported runtimes run on the CPU, this model is on {device}")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and constant-folding warnings only
        torch.onnx.export(
            encoder,
            (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),),
            str(path),
            opset_version=OPSET,
            dynamo=False,
            input_names=["image"],
            output_names=["features"],
        )
    # The exporter toggles train/eval; TinyViT refills its attention-bias cache on eval(),
    # from the loaded weights, so the model is left as it was.
    encoder.eval()


class DecoderGraph(torch.nn.Module):
    """SAM's prompt encoder + mask decoder as one traceable module (the exported graph).

    Inputs: ``image_embeddings`` ``(1, 256, 64, 64)``; ``point_coords`` ``(B, N, 2)`` in
    the padded 1024 input frame and ``point_labels`` ``(B, N)`` int64 (1 positive, 0
    negative, -1 padding, 2 and 3 a box's corners), ``N`` may be 0; ``mask_input`` ``(B,
    1, 256, 256)`` and ``has_mask_input`` ``(B,)`` (1 or 0).  Outputs: all ``(B, 4, 256,
    256)`` low-res logits and ``(B, 4)`` IoU predictions (``MaskDecoder.predict_masks``).

    Unlike ``segment_anything.utils.onnx.SamOnnxModel`` it neither upscales nor picks a
    mask, and it computes the sparse embedding exactly as ``PromptEncoder`` does for the
    same prompts (the caller pads and orders them the same way).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        with torch.no_grad():
            self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().clone())

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse = pe.pe_layer._pe_encoding((point_coords + 0.5) / IMAGE_SIZE)
        labels = point_labels.unsqueeze(-1)
        sparse = sparse * (labels != -1).to(sparse.dtype)
        sparse = sparse + pe.not_a_point_embed.weight * (labels == -1).to(sparse.dtype)
        for i in range(pe.num_point_embeddings):
            sparse = sparse + pe.point_embeddings[i].weight * (labels == i).to(sparse.dtype)
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has_mask * pe.mask_downscaling(mask_input) + (1 - has_mask) * (
            pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        )
        return self.mask_decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense)


def export_decoder_onnx(sam: LoadedSam, path: Path) -> None:
    """Export ``sam``'s prompt encoder + mask decoder (:class:`DecoderGraph`, CPU, fp32)
    to ONNX at ``path``, with dynamic prompt batch and point count."""
    device = next(sam.model.parameters()).device
    if device.type != "cpu":
        raise RuntimeUnavailable(f"exported runtimes run on the CPU, this model is on {device}")
    graph = DecoderGraph(sam.model).eval()
    example = (
        torch.zeros(1, 256, 64, 64),
        torch.full((1, 2, 2), 512.0),
        torch.tensor([[1, -1]], dtype=torch.int64),
        torch.zeros(1, 1, 256, 256),
        torch.zeros(1),
    )
    dynamic = {"point_coords": {0: "B", 1: "N"}, "point_labels": {0: "B", 1: "N"}}
    dynamic |= {"mask_input": {0: "B"}, "has_mask_input": {0: "B"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and constant-folding warnings only
        torch.onnx.export(
            graph,
            example,
            str(path),
            opset_version=OPSET,
            dynamo=False,
            input_names=list(DECODER_INPUTS),
            output_names=["low_res_logits", "iou"],
            dynamic_axes=dynamic,
        )


def _self_check_image() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


@torch.inference_mode()
def mask_agreement(
    sam: LoadedSam, encode: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray
) -> float:
    """Mean IoU of the best low-res click masks of ``encode``'s features against fp32
    PyTorch's, over a :data:`CHECK_GRID` x :data:`CHECK_GRID` grid of single clicks."""
    from segment_anything.utils.transforms import ResizeLongestSide

    model = sam.model
    transform = ResizeLongestSide(IMAGE_SIZE)
    resized = transform.apply_image(image)
    x = model.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())
    h, w = image.shape[:2]
    steps = (np.arange(CHECK_GRID) + 0.5) / CHECK_GRID
    points = np.array([[sx * w, sy * h] for sy in steps for sx in steps])
    coords = torch.as_tensor(transform.apply_coords(points, (h, w)), dtype=torch.float32)
    sparse, dense = model.prompt_encoder(
        points=(coords[:, None], torch.ones(len(points), 1, dtype=torch.int64)),
        boxes=None,
        masks=None,
    )

    def masks(features: torch.Tensor) -> np.ndarray:
        low, iou = model.mask_decoder(
            image_embeddings=features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        best = iou.argmax(dim=1)
        return (low[torch.arange(len(best)), best] > 0).numpy()

    ref, got = masks(model.image_encoder(x)), masks(encode(x))
    inter = (ref & got).sum(axis=(1, 2))
    union = (ref | got).sum(axis=(1, 2))
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


@torch.inference_mode()
def decoder_agreement(
    sam: LoadedSam, run: Callable[..., list[np.ndarray]], image: np.ndarray
) -> float:
    """Mean IoU of the best low-res click masks of the decoder graph ``run`` (inputs as
    :data:`DECODER_INPUTS`) against fp32 PyTorch's prompt encoder + mask decoder, on
    fp32 PyTorch features of ``image``, over a :data:`CHECK_GRID` squared grid of clicks
    (one point each, padded as ``PromptEncoder`` pads it)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    model = sam.model
    transform = ResizeLongestSide(IMAGE_SIZE)
    resized = transform.apply_image(image)
    x = model.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())
    features = model.image_encoder(x)
    h, w = image.shape[:2]
    steps = (np.arange(CHECK_GRID) + 0.5) / CHECK_GRID
    points = np.array([[sx * w, sy * h] for sy in steps for sx in steps])
    coords = transform.apply_coords(points, (h, w))
    ious = []
    for c in coords:
        sparse, dense = model.prompt_encoder(
            points=(
                torch.as_tensor(c[None, None], dtype=torch.float32),
                torch.ones(1, 1, dtype=torch.int64),
            ),
            boxes=None,
            masks=None,
        )
        low, iou = model.mask_decoder(
            image_embeddings=features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        ref = (low[0, int(iou[0].argmax())] > 0).numpy()
        g_low, g_iou = run(
            features.numpy(),
            np.array([[c, [0.0, 0.0]]], np.float32),
            np.array([[1, -1]], np.int64),
            np.zeros((1, 1, 256, 256), np.float32),
            np.zeros(1, np.float32),
        )
        got = g_low[0, 1 + int(np.argmax(g_iou[0, 1:]))] > 0
        union = (ref | got).sum()
        ious.append((ref & got).sum() / union if union else 1.0)
    return float(np.mean(ious))


class _ExportedEncoder(EncoderRuntime):
    """An exported graph run by OpenVINO or ONNX Runtime on the CPU."""

    def __init__(self, run: Callable[..., list[np.ndarray]], info: RuntimeInfo):
        self._run = run
        self._lock = threading.Lock()  # one inference at a time per compiled graph
        self.info = info

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:
            out = self._run(array)[0]
            return torch.from_numpy(np.array(out, dtype=np.float32, copy=True)).to(x.device)


class DecoderRuntime:
    """Runs SAM's prompt encoder + mask decoder; the engine calls the torch modules itself
    when :attr:`info` names ``torch`` (the reference path), else :meth:`run`."""

    info: RuntimeInfo

    def run(
        self,
        features: np.ndarray,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The graph's inputs (:class:`DecoderGraph`) -> ``(B, 4, 256, 256)`` logits and
        ``(B, 4)`` IoU predictions, float32 arrays the caller owns."""
        raise NotImplementedError


class TorchDecoder(DecoderRuntime):
    """The model's own prompt encoder and mask decoder, fp32 eager (the reference)."""

    def __init__(self, requested: str = "torch", fallback: str | None = None):
        self.info = RuntimeInfo("torch", torch.__version__, "f32", requested, fallback=fallback)


class _ExportedDecoder(DecoderRuntime):
    """The decoder graph run by OpenVINO or ONNX Runtime on the CPU."""

    def __init__(self, run: Callable[..., list[np.ndarray]], info: RuntimeInfo):
        self._run = run
        self._lock = threading.Lock()  # one inference at a time per compiled graph
        self.info = info

    def run(self, features, coords, labels, mask_input, has_mask):
        inputs = (
            np.ascontiguousarray(features, np.float32),
            np.ascontiguousarray(coords, np.float32),
            np.ascontiguousarray(labels, np.int64),
            np.ascontiguousarray(mask_input, np.float32),
            np.ascontiguousarray(has_mask, np.float32),
        )
        with self._lock:
            low, iou = self._run(*inputs)[:2]
            return np.array(low, np.float32, copy=True), np.array(iou, np.float32, copy=True)


def load_session(
    name: str, graph: Path, precision: str, threads: int
) -> Callable[..., list[np.ndarray]]:
    """Compile ``graph`` with runtime ``name``; returns ``run(*inputs) -> outputs`` (numpy
    arrays in the graph's order; OpenVINO's may be reused by the next call: copy them)."""
    if name == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(
            str(graph),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": precision,
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        request = compiled.create_infer_request()
        outputs = compiled.outputs

        def run_openvino(*inputs: np.ndarray) -> list[np.ndarray]:
            result = request.infer(list(inputs))
            return [result[o] for o in outputs]

        return run_openvino
    if name == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False
        # No busy-waiting between runs: a SmartSAM click does numpy / torch work between
        # its decodes, which spinning workers slowed 2-20x (and torch's spinning threads the
        # next decode by ~40%); decodes alone are not slower without it (docs/benchmarks.md,
        # first-click time).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(graph), options, providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in session.get_inputs()]
        return lambda *inputs: session.run(None, dict(zip(names, inputs, strict=True)))
    raise RuntimeUnavailable(f"unknown runtime {name!r}")


def _build(
    sam: LoadedSam,
    folder: Path,
    name: str,
    precision: str,
    threads: int,
    part: str = "encoder",
    isolate: bool = True,
) -> None:
    """Build the ``part`` graph into ``folder`` (lock held) and log it.

    With ``isolate`` the export runs in a fresh child process that loads the same
    checkpoint: exporting and compiling take about 0.9 GB more than serving (MobileSAM),
    which a long-lived server would otherwise keep as its peak RSS.  A model that is not
    the checkpoint file's weights (changed in memory: its ``model_id`` says so) is
    exported in this process.
    """
    start = time.perf_counter()
    checkpoint = Path(sam.checkpoint)
    if isolate and checkpoint.is_file() and sam.model_id == weights_id(checkpoint, sam.model_type):
        _build_in_child(sam, folder, name, precision, threads, part)
        agreement = json.loads((folder / MANIFEST).read_text())["agreement"]
    else:
        agreement = _export_into(sam, folder, name, precision, threads, part)
    log.info(
        "built the %s %s %s graph in %.1fs (mask agreement with torch %.4f): %s",
        name,
        precision,
        part,
        time.perf_counter() - start,
        agreement,
        folder,
    )


def _build_in_child(
    sam: LoadedSam, folder: Path, name: str, precision: str, threads: int, part: str
) -> None:
    """:func:`_export_into` in a fresh Python process that loads ``sam``'s checkpoint on the
    CPU (a new interpreter, not a fork or a spawn of the caller's main module)."""
    job = [str(sam.checkpoint), str(folder), name, precision, threads, part]
    code = "from promptmoe_plugin.sam.runtimes import _child_build; _child_build()"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(job)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise RuntimeUnavailable(f"building the {part} graph failed: {lines[-1]}")


def _child_build() -> None:
    """Entry point of :func:`_build_in_child`'s process: the job is ``sys.argv[1]``."""
    from .build import load_sam

    checkpoint, folder, name, precision, threads, part = json.loads(sys.argv[1])
    torch.set_num_threads(threads)
    sam = load_sam(checkpoint, device="cpu")
    _export_into(sam, Path(folder), name, precision, threads, part)


def _export_into(
    sam: LoadedSam, folder: Path, name: str, precision: str, threads: int, part: str
) -> float:
    """Export the ``part`` graph into a new folder and rename it to ``folder``, so a reader
    sees a whole graph or none (a graph over 2 GB keeps its external data beside it);
    returns the mask agreement with torch measured on the built graph."""
    with replaced_atomically(folder) as tmp:
        tmp.mkdir(parents=True)
        graph = tmp / _graph_name(part)
        if part == "encoder":
            export_onnx(sam, graph)
            run = load_session(name, graph, precision, threads)
            agreement = mask_agreement(
                sam, lambda x: torch.from_numpy(np.array(run(x.numpy())[0])), _self_check_image()
            )
        else:
            export_decoder_onnx(sam, graph)
            run = load_session(name, graph, precision, threads)
            agreement = decoder_agreement(sam, run, _self_check_image())
        manifest = {
            "size": graph.stat().st_size,
            "sha256": _sha256(graph),
            "external": _external_files(tmp, graph),
            "agreement": agreement,
            "model_id": sam.model_id,
            "checkpoint": str(sam.checkpoint),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return agreement


def _load_exported(
    sam: LoadedSam,
    name: str,
    precision: str | None,
    cache_dir: Path,
    requested: str,
    part: str = "encoder",
    isolate: bool = True,
) -> _ExportedEncoder | _ExportedDecoder:
    version = runtime_version(name)
    precision = precision or best_precision(name)
    if precision == "bf16" and best_precision(name) != "bf16":
        raise RuntimeUnavailable("this CPU has no native bf16")
    folder = graph_folder(cache_dir, sam, name, version, precision, part)
    threads = torch.get_num_threads()
    with _build_lock(folder):
        manifest = _read_manifest(folder, part)
        if manifest is None:
            _build(sam, folder, name, precision, threads, part, isolate)
            manifest = _read_manifest(folder, part)
            if manifest is None:
                raise RuntimeUnavailable(f"the graph built in {folder} does not read back")
    graph = folder / _graph_name(part)
    run = load_session(name, graph, precision, threads)
    info = RuntimeInfo(
        name,
        version,
        precision,
        requested,
        agreement=manifest["agreement"],
        graph=str(graph),
    )
    return _ExportedEncoder(run, info) if part == "encoder" else _ExportedDecoder(run, info)


def load_encoder(
    sam: LoadedSam,
    runtime: str = "auto",
    cache_dir: str | Path | None = None,
    isolate: bool = True,
) -> EncoderRuntime:
    """The image-encoder runtime for ``sam`` (see the module doc).

    Args:
        sam: the loaded model; exported graphs are built from it.
        runtime: ``"auto"``, ``"torch"``, ``"openvino"``, ``"onnxruntime"``, or a name
            with a precision (``"openvino-f32"``, ``"openvino-bf16"``).
        cache_dir: folder of the exported graphs (default :func:`default_cache_dir`).
        isolate: build a missing graph in a child process (the server's peak RSS stays
            that of serving); False builds it in this process.

    Raises:
        ValueError: an unknown ``runtime``.  A runtime that fails never raises: it falls
        back to torch with one warning line.
    """

    def torch_encoder(fallback: str | None = None) -> EncoderRuntime:
        return TorchEncoder(sam, runtime, fallback=fallback)

    return _load_part(sam, runtime, cache_dir, "encoder", AUTO_ORDER, None, torch_encoder, isolate)


def load_decoder(
    sam: LoadedSam,
    runtime: str = "auto",
    cache_dir: str | Path | None = None,
    isolate: bool = True,
) -> DecoderRuntime:
    """The prompt encoder + mask decoder runtime for ``sam``.

    Args:
        sam: the loaded model; the exported graph is built from it.
        runtime: ``"auto"`` (the first of :data:`DECODER_AUTO_ORDER` that loads and agrees
            with fp32 PyTorch; PyTorch on CUDA), ``"torch"``, ``"onnxruntime"``,
            ``"openvino"`` (f32 unless ``"openvino-bf16"`` is asked for).
        cache_dir: folder of the exported graphs (default :func:`default_cache_dir`).
        isolate: as for :func:`load_encoder`.

    Raises:
        ValueError: an unknown ``runtime``.  A runtime that fails never raises: it falls
        back to torch with one warning line.
    """

    def torch_decoder(fallback: str | None = None) -> DecoderRuntime:
        return TorchDecoder(runtime, fallback=fallback)

    return _load_part(
        sam, runtime, cache_dir, "decoder", DECODER_AUTO_ORDER, "f32", torch_decoder, isolate
    )


#: The words log lines use for each exported part.
_PART_NAMES = {"encoder": "image encoder", "decoder": "mask decoder"}


def _load_part(
    sam: LoadedSam,
    runtime: str,
    cache_dir: str | Path | None,
    part: str,
    auto_order: Sequence[str],
    default_precision: str | None,
    torch_part: Callable[..., Any],
    isolate: bool,
) -> Any:
    """One part (``"encoder"`` or ``"decoder"``) on ``runtime``: torch as asked, on a GPU
    under ``auto``, or as the fallback (``torch_part(fallback=reason)``) with one warning
    line; otherwise the exported graph, under ``auto`` the first of ``auto_order`` that
    loads and agrees with torch."""
    label = _PART_NAMES[part]
    name, precision = parse_runtime(runtime)
    if name == "torch":
        return torch_part()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if name == "auto":
        if next(sam.model.parameters()).device.type != "cpu":
            return torch_part()
        reasons = []
        for candidate in auto_order:
            cname, cprec = parse_runtime(candidate)
            try:
                loaded = _load_exported(sam, cname, cprec, folder, runtime, part, isolate)
            except Exception as exc:  # any failure of a runtime means: try the next one
                reasons.append(f"{candidate}: {_short(exc)}")
                continue
            if loaded.info.agreement is not None and loaded.info.agreement < MIN_AGREEMENT:
                reasons.append(f"{candidate}: mask IoU {loaded.info.agreement:.4f} with torch")
                continue
            if reasons:
                log.info("%s runtime %s (skipped %s)", label, candidate, "; ".join(reasons))
            return loaded
        reason = "; ".join(reasons)
        log.warning("%s runtime auto: no exported runtime usable, torch (%s)", label, reason)
        return torch_part(fallback=reason)
    try:
        precision = precision or default_precision
        loaded = _load_exported(sam, name, precision, folder, runtime, part, isolate)
    except Exception as exc:  # a failing runtime falls back, never breaks the engine
        reason = f"{runtime}: {_short(exc)}"
        log.warning("%s runtime %s failed, falling back to torch (%s)", label, runtime, reason)
        return torch_part(fallback=reason)
    if loaded.info.agreement is not None and loaded.info.agreement < MIN_AGREEMENT:
        log.warning(
            "%s runtime %s: masks agree with torch at IoU %.4f only",
            label,
            loaded.info.tag,
            loaded.info.agreement,
        )
    return loaded


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= 200 else text[:197] + "..."
