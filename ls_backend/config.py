"""The backend's one settings loader: environment variables, overridable by flags.

Every setting has one environment variable (the names upstream ML backends use where one
exists), so the Docker image, gunicorn and ``promptmoe serve`` read the same.  The table
:data:`OPTIONS` names each setting's variable, flag and help; the command line builds its
flags from it and hands their values, as strings, to :func:`load_settings`, which converts
and validates everything once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_type_hints

from promptmoe_plugin.smartsam import SmartSamConfig
from promptmoe_plugin.smartsam.switch import SHIPPED, load_switch

from .rle import MAX_PIXELS

if TYPE_CHECKING:
    from promptmoe_plugin.sam import SamEngine


class Option(NamedTuple):
    """One setting: its field, where it lives, its environment variable, its flag and the
    flag's help (without the variable: the command line appends ``(env VAR)``)."""

    field: str
    section: Literal["engine", "backend"]
    env: str
    flag: str
    help: str


#: Every setting, engine first.  The command line turns each into a string flag whose
#: value (None when not given) goes to :func:`load_settings` under ``Option.field``;
#: defaults live on :class:`EngineSettings` and :class:`Settings`.
OPTIONS: tuple[Option, ...] = (
    Option(
        "sam_checkpoint",
        "engine",
        "SAM_CHECKPOINT",
        "--sam-checkpoint",
        "SAM ViT-B/L/H or MobileSAM checkpoint (default: embedded MobileSAM)",
    ),
    Option(
        "device",
        "engine",
        "DEVICE",
        "--device",
        "auto, cpu, cuda or cuda:N (default auto: CUDA when available)",
    ),
    Option(
        "cache_mb",
        "engine",
        "EMBEDDING_CACHE_MB",
        "--cache-mb",
        "in-memory image embedding cache bound in MB (default 512)",
    ),
    Option(
        "embedding_dir",
        "engine",
        "EMBEDDING_DIR",
        "--embedding-dir",
        "also keep embeddings on disk in this folder (default off)",
    ),
    Option(
        "runtime",
        "engine",
        "SAM_RUNTIME",
        "--runtime",
        "image encoder runtime: auto (on a CPU the fastest whose masks agree with PyTorch's, "
        "built once and cached), torch, openvino, openvino-f32, openvino-bf16, onnxruntime "
        "(default auto; CUDA always uses torch)",
    ),
    Option(
        "label_studio_url",
        "backend",
        "LABEL_STUDIO_URL",
        "--label-studio-url",
        "Label Studio address, e.g. http://localhost:8080; task paths like /data/upload/... "
        "are fetched from it",
    ),
    Option(
        "label_studio_api_key",
        "backend",
        "LABEL_STUDIO_API_KEY",
        "--label-studio-api-key",
        "Label Studio legacy token or personal access token (sent only to LABEL_STUDIO_URL)",
    ),
    Option(
        "model_dir",
        "backend",
        "MODEL_DIR",
        "--model-dir",
        "folder for the reference store and refitted router weights (default ./model_dir)",
    ),
    Option(
        "basic_auth_user",
        "backend",
        "BASIC_AUTH_USER",
        "--basic-auth-user",
        "require HTTP basic auth with this user (set BASIC_AUTH_PASS too)",
    ),
    Option(
        "basic_auth_pass",
        "backend",
        "BASIC_AUTH_PASS",
        "--basic-auth-pass",
        "password for BASIC_AUTH_USER",
    ),
    Option(
        "refine_variant",
        "backend",
        "REFINE_VARIANT",
        "--refine-variant",
        "PromptMoE refinement variant for brush drafts (default full)",
    ),
    Option(
        "intent",
        "backend",
        "SMARTSAM_SELECTOR",
        "--selector",
        "SmartSAM candidate selector for first clicks: none, sam or dinov2 (default sam)",
    ),
    Option(
        "hold_area",
        "backend",
        "SMARTSAM_HOLD_AREA",
        "--hold-area",
        "for a label without exemplars (or with selector none), SmartSAM keeps SAM's own "
        "first-click answer when it holds the click and covers more than this share of the "
        f"image, 0..1 or none (off) (default {SmartSamConfig.hold_area})",
    ),
    Option(
        "hold_area_references",
        "backend",
        "SMARTSAM_HOLD_AREA_REFERENCES",
        "--hold-area-references",
        "the same hold for a label with exemplars, 0..1 or none (default none: off)",
    ),
    Option(
        "smartsam_switch",
        "backend",
        "SMARTSAM_SWITCH",
        "--smartsam-switch",
        "SmartSAM's learned first-click switch for a label with exemplars (selector sam): "
        "default (the shipped weights), a weights file of promptmoe train-switch, or none "
        "(the score rule)",
    ),
    Option(
        "dinov2_model",
        "backend",
        "DINOV2_MODEL",
        "--dinov2-model",
        "DINOv2 model for the dinov2 selector: a local folder or a hub id "
        "(default facebook/dinov2-base)",
    ),
    Option(
        "depth_model",
        "backend",
        "PROMPTMOE_DEPTH_MODEL",
        "--depth-model",
        "depth-estimation model of PromptMoE's depth expert: a local folder or a hub id "
        "(default none: no depth expert)",
    ),
    Option(
        "max_references",
        "backend",
        "MAX_REFERENCES",
        "--max-references",
        "reference exemplars per label used by SmartSAM, newest first (default 8)",
    ),
    Option(
        "local_files_root",
        "backend",
        "LOCAL_FILES_DOCUMENT_ROOT",
        "--local-files-root",
        "read /data/local-files/?d=... from this folder instead of over HTTP (same value as "
        "Label Studio's)",
    ),
    Option(
        "allowed_hosts",
        "backend",
        "ALLOWED_IMAGE_HOSTS",
        "--allowed-image-hosts",
        "comma-separated private/loopback hosts that task image URLs may point to (default none)",
    ),
    Option(
        "max_image_mb",
        "backend",
        "MAX_IMAGE_MB",
        "--max-image-mb",
        "largest image download in MB (default 64)",
    ),
    Option(
        "image_timeout",
        "backend",
        "IMAGE_TIMEOUT",
        "--image-timeout",
        "seconds allowed for one image download (default 30)",
    ),
    Option(
        "max_mask_pixels",
        "backend",
        "MAX_MASK_PIXELS",
        "--max-mask-pixels",
        "largest brush mask a request may declare or decode, in pixels (default 100000000; "
        "at most 250000000)",
    ),
    Option(
        "max_request_mb",
        "backend",
        "MAX_REQUEST_MB",
        "--max-request-mb",
        "largest request body in MB (default 64)",
    ),
    Option(
        "mask_data_key",
        "backend",
        "MASK_DATA_KEY",
        "--mask-data-key",
        "task data field holding a draft mask image URL for batch pre-annotation (default mask)",
    ),
    Option(
        "train_epochs",
        "backend",
        "TRAIN_EPOCHS",
        "--train-epochs",
        "epochs of a START_TRAINING refit of the expert selector (default 100)",
    ),
    Option(
        "max_concurrent",
        "backend",
        "MAX_CONCURRENT",
        "--max-concurrent",
        "batch (pre-annotation) tasks refined at once, over all requests (default 0: one "
        "per CPU core); the others wait their turn, interactive calls never do",
    ),
    Option(
        "batch_seconds",
        "backend",
        "BATCH_SECONDS",
        "--batch-seconds",
        "longest a batch /predict (Retrieve Predictions) works before answering, in seconds; "
        "tasks not done by then are finished by the pre-annotation job and written back to "
        "Label Studio (default 3; needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)",
    ),
    Option(
        "job_workers",
        "backend",
        "JOB_WORKERS",
        "--job-workers",
        "tasks the pre-annotation job works on at once (default 1: one SAM encode already "
        "uses every CPU core; raise it on a GPU or a many-core machine)",
    ),
    Option(
        "embed_delay",
        "backend",
        "EMBED_DELAY",
        "--embed-delay",
        "seconds a task opened in the editor waits before its image is embedded in the "
        "background, so the editor shows it first when Label Studio, the browser and the "
        "backend share cores (default 0.5; 0 on a separate GPU server)",
    ),
    Option(
        "ray_address",
        "backend",
        "RAY_ADDRESS",
        "--ray-address",
        "Ray cluster of promptmoe annotate, e.g. 127.0.0.1:6379 (default: a local Ray)",
    ),
)


@dataclass(frozen=True)
class EngineSettings:
    """How to build the SAM engine (see :func:`make_engine`)."""

    sam_checkpoint: str | None = None
    device: str = "auto"
    cache_mb: float = 512.0
    embedding_dir: Path | None = None
    runtime: str = "auto"

    def __post_init__(self) -> None:
        if not self.cache_mb >= 0:
            raise ValueError(f"EMBEDDING_CACHE_MB must be >= 0, got {self.cache_mb}")


#: Values that turn an optional setting off (any case).
_OFF = ("none", "off")


@dataclass(frozen=True)
class Settings:
    """Everything the backend needs; ``engine`` holds the SAM engine options.

    ``intent`` is SmartSAM's intent for first clicks (``none``, ``sam`` or ``dinov2``; set
    by ``SMARTSAM_SELECTOR`` / ``--selector``); ``hold_area`` and
    ``hold_area_references`` are the fields of the same names of
    :class:`~promptmoe_plugin.smartsam.SmartSamConfig` (same defaults), ``smartsam_switch``
    its ``switch`` (``none`` or ``off`` turn it off); ``depth_model`` enables
    PromptMoE's depth expert.  Construct it with typed values, or from strings with
    :func:`load_settings`.
    """

    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    model_dir: Path = Path("model_dir")
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    refine_variant: str = "full"
    intent: str = "sam"
    hold_area: float | None = SmartSamConfig.hold_area
    hold_area_references: float | None = SmartSamConfig.hold_area_references
    smartsam_switch: str | None = SmartSamConfig.switch
    dinov2_model: str | None = None
    depth_model: str | None = None
    max_references: int = 8
    local_files_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_image_mb: float = 64.0
    image_timeout: float = 30.0
    max_mask_pixels: int = 100_000_000
    max_request_mb: float = 64.0
    mask_data_key: str = "mask"
    train_epochs: int = 100
    max_concurrent: int = 0
    batch_seconds: float = 3.0
    job_workers: int = 1
    embed_delay: float = 0.5
    ray_address: str | None = None
    engine: EngineSettings = field(default_factory=EngineSettings)

    def __post_init__(self) -> None:
        if self.label_studio_url:
            object.__setattr__(self, "label_studio_url", self.label_studio_url.rstrip("/"))
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.max_concurrent < 0:
            raise ValueError(f"MAX_CONCURRENT must be >= 0, got {self.max_concurrent}")
        if not 0 <= self.batch_seconds <= 60:
            raise ValueError(
                f"BATCH_SECONDS must be in 0..60 (Label Studio gives /predict 100 s), got "
                f"{self.batch_seconds}"
            )
        if not 0 <= self.embed_delay <= 60:
            raise ValueError(f"EMBED_DELAY must be in 0..60 seconds, got {self.embed_delay}")
        for name, value in (
            ("SMARTSAM_HOLD_AREA", self.hold_area),
            ("SMARTSAM_HOLD_AREA_REFERENCES", self.hold_area_references),
        ):
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be in 0..1 or none, got {value}")
        if self.smartsam_switch is not None and self.smartsam_switch.lower() in _OFF:
            object.__setattr__(self, "smartsam_switch", None)
        if self.smartsam_switch not in (None, SHIPPED):
            try:
                load_switch(self.smartsam_switch)
            except ValueError as exc:
                raise ValueError(f"SMARTSAM_SWITCH: {exc}") from None
        if self.job_workers < 1:
            raise ValueError(f"JOB_WORKERS must be >= 1, got {self.job_workers}")
        if self.train_epochs < 1:
            raise ValueError(f"TRAIN_EPOCHS must be >= 1, got {self.train_epochs}")
        if self.max_references < 0 or self.max_image_mb <= 0 or self.image_timeout <= 0:
            raise ValueError("MAX_REFERENCES must be >= 0, MAX_IMAGE_MB and IMAGE_TIMEOUT > 0")
        if not 0 < self.max_mask_pixels <= MAX_PIXELS or not self.max_request_mb > 0:
            raise ValueError(
                f"MAX_MASK_PIXELS must be in 1..{MAX_PIXELS} (the largest image the backend "
                f"loads) and MAX_REQUEST_MB > 0, got {self.max_mask_pixels} and "
                f"{self.max_request_mb}"
            )


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _optional_float(raw: str) -> float | None:
    """A number, or None for ``none`` / ``off`` (any case)."""
    return None if raw.strip().lower() in _OFF else float(raw)


def _hosts(raw: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in raw.split(",") if h.strip())


#: String parser per field type; fields of other types (``str``, ``str | None``) keep
#: the string.
_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    float | None: _optional_float,
    Path: _path,
    Path | None: _path,
    tuple[str, ...]: _hosts,
}
_NO_OVERRIDES: Mapping[str, str | None] = MappingProxyType({})


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, str | None] = _NO_OVERRIDES
) -> Settings:
    """The settings from ``environ`` (default ``os.environ``; empty values count as unset),
    then every ``overrides`` value that is not None (flag values by ``Option.field``).

    Raises:
        ValueError: an unknown override, a value that does not parse (the message names
            the variable or flag) or settings that do not validate.
    """
    env = os.environ if environ is None else environ
    unknown = set(overrides) - {o.field for o in OPTIONS}
    if unknown:
        known = ", ".join(o.field for o in OPTIONS)
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {known}")
    types = {"engine": get_type_hints(EngineSettings), "backend": get_type_hints(Settings)}
    values: dict[str, dict[str, Any]] = {"engine": {}, "backend": {}}
    for option in OPTIONS:
        raw, source = overrides.get(option.field), option.flag
        if raw is None:
            raw, source = env.get(option.env) or None, option.env
        if raw is None:
            continue
        parse = _PARSERS.get(types[option.section][option.field], str)
        try:
            values[option.section][option.field] = parse(raw)
        except ValueError as exc:
            raise ValueError(f"{source}: cannot parse {raw!r} ({exc})") from exc
    return Settings(**values["backend"], engine=EngineSettings(**values["engine"]))


def make_engine(engine: EngineSettings) -> SamEngine:
    """The SAM engine these settings describe (loads the checkpoint)."""
    from promptmoe_plugin.sam import SamEngine

    return SamEngine.create(
        checkpoint=engine.sam_checkpoint,
        device=engine.device,
        cache_mb=engine.cache_mb,
        disk_cache=engine.embedding_dir,
        runtime=engine.runtime,
    )
