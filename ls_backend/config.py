"""Backend settings: environment variables, overridable by ``promptmoe serve`` flags.

Every setting has one environment variable (the names upstream ML backends use where
one exists), so the Docker image, gunicorn and the development server read the same.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from promptmoe_plugin.cli import add_engine_options

#: (setting, environment variable, flag, help); defaults live on :class:`Settings`.
_BACKEND_OPTIONS = (
    ("label_studio_url", "LABEL_STUDIO_URL", "--label-studio-url",
     "Label Studio address, e.g. http://localhost:8080; task paths like /data/upload/... are fetched from it"),
    ("label_studio_api_key", "LABEL_STUDIO_API_KEY", "--label-studio-api-key",
     "Label Studio legacy token or personal access token (sent only to LABEL_STUDIO_URL)"),
    ("model_dir", "MODEL_DIR", "--model-dir",
     "folder for the reference store and refitted router weights (default ./model_dir)"),
    ("basic_auth_user", "BASIC_AUTH_USER", "--basic-auth-user",
     "require HTTP basic auth with this user (set BASIC_AUTH_PASS too)"),
    ("basic_auth_pass", "BASIC_AUTH_PASS", "--basic-auth-pass", "password for BASIC_AUTH_USER"),
    ("refine_variant", "REFINE_VARIANT", "--refine-variant",
     "PromptMoE refinement variant for brush drafts (default full)"),
    ("selector", "SMARTSAM_SELECTOR", "--selector",
     "SmartSAM candidate selector for first clicks: none, sam or dinov2 (default sam)"),
    ("dinov2_model", "DINOV2_MODEL", "--dinov2-model",
     "DINOv2 model for the dinov2 selector: a local folder or a hub id (default facebook/dinov2-base)"),
    ("max_references", "MAX_REFERENCES", "--max-references",
     "reference exemplars per label used by SmartSAM, newest first (default 8)"),
    ("local_files_root", "LOCAL_FILES_DOCUMENT_ROOT", "--local-files-root",
     "read /data/local-files/?d=... from this folder instead of over HTTP (same value as Label Studio's)"),
    ("allowed_hosts", "ALLOWED_IMAGE_HOSTS", "--allowed-image-hosts",
     "comma-separated private/loopback hosts that task image URLs may point to (default none)"),
    ("max_image_mb", "MAX_IMAGE_MB", "--max-image-mb", "largest image download in MB (default 64)"),
    ("image_timeout", "IMAGE_TIMEOUT", "--image-timeout", "seconds allowed for one image download (default 30)"),
    ("mask_data_key", "MASK_DATA_KEY", "--mask-data-key",
     "task data field holding a draft mask image URL for batch pre-annotation (default mask)"),
)


@dataclass(frozen=True)
class Settings:
    """Everything the backend needs besides the SAM engine options."""

    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    model_dir: Path = Path("model_dir")
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    refine_variant: str = "full"
    selector: str = "sam"
    dinov2_model: str | None = None
    max_references: int = 8
    local_files_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_image_mb: float = 64.0
    image_timeout: float = 30.0
    mask_data_key: str = "mask"

    def __post_init__(self) -> None:
        conv = {f.name: f.type for f in fields(self)}
        for name, raw in vars(self).items():
            if isinstance(raw, str) and conv[name] not in ("str", "str | None"):
                object.__setattr__(self, name, _convert(name, raw))
        if self.label_studio_url:
            object.__setattr__(self, "label_studio_url", self.label_studio_url.rstrip("/"))
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.max_references < 0 or self.max_image_mb <= 0 or self.image_timeout <= 0:
            raise ValueError("MAX_REFERENCES must be >= 0, MAX_IMAGE_MB and IMAGE_TIMEOUT > 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values = {name: env[var] for name, var, _, _ in _BACKEND_OPTIONS if env.get(var)}
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        return cls(**{name: getattr(args, name) for name, *_ in _BACKEND_OPTIONS if getattr(args, name) is not None})


def _convert(name: str, raw: str):
    """Parse the string form of setting ``name`` (from the environment or a flag)."""
    try:
        if name == "model_dir" or name == "local_files_root":
            return Path(raw).expanduser()
        if name == "allowed_hosts":
            return tuple(h.strip().lower() for h in raw.split(",") if h.strip())
        if name == "max_references":
            return int(raw)
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name}: cannot parse {raw!r} ({exc})") from exc


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """Flags of ``promptmoe serve`` (and the server benchmark); env vars give the defaults."""
    add_engine_options(parser)
    group = parser.add_argument_group("Label Studio backend")
    for name, var, flag, text in _BACKEND_OPTIONS:
        group.add_argument(flag, dest=name, default=os.environ.get(var) or None, help=f"{text} (env {var})")
