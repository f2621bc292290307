"""The Docker files are consistent with each other and with the backend's settings."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ls_backend.config import load_settings
from promptmoe_cli.main import main as cli_main

DOCKER = Path(__file__).resolve().parents[1] / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def _env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items()}


def test_backend_env_vars_are_documented_settings(compose, capsys):
    env = _env(compose["services"]["backend"])
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    help_text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for var in env:
        assert f"env {var}" in help_text, f"{var} is not a documented setting of promptmoe serve"
    literal = {k: v for k, v in env.items() if "${" not in v}
    load_settings(literal)  # parses


def test_services_are_wired_together(compose, dockerfile):
    ls, backend = compose["services"]["label-studio"], compose["services"]["backend"]
    assert ls["image"].endswith(":1.23.2")
    ls_env, be_env = _env(ls), _env(backend)
    # The backend reaches Label Studio by service name and container port, with the same token.
    assert be_env["LABEL_STUDIO_URL"] == "http://label-studio:8080" and "8080:8080" in ls["ports"]
    assert (
        "LABEL_STUDIO_API_KEY" in ls_env["LABEL_STUDIO_USER_TOKEN"]
        and "LABEL_STUDIO_API_KEY" in be_env["LABEL_STUDIO_API_KEY"]
    )
    assert "label-studio" in be_env["ALLOWED_IMAGE_HOSTS"].split(",")
    # Label Studio accepts a backend on a private address.
    assert ls_env["ML_BLOCK_LOCAL_IP"] == "false" and ls_env["SSRF_PROTECTION_ENABLED"] == "false"
    # Both see the same local-files folder at the same document root.
    root = ls_env["LOCAL_FILES_DOCUMENT_ROOT"]
    assert be_env["LOCAL_FILES_DOCUMENT_ROOT"] == root
    assert any(v.split(":")[:2] == ["./files", root] for v in ls["volumes"])
    assert any(v.split(":")[:2] == ["./files", root] for v in backend["volumes"])
    # The backend image: built from the repository root with this Dockerfile, on its port.
    assert (
        DOCKER / backend["build"]["context"] / backend["build"]["dockerfile"]
    ).resolve() == DOCKER / "Dockerfile"
    port = re.search(r"PORT=(\d+)", dockerfile).group(1)
    assert f"EXPOSE {port}" in dockerfile and f"{port}:{port}" in backend["ports"]
    assert be_env["MODEL_DIR"].startswith("/data") and any(
        v.endswith(":/data") for v in backend["volumes"]
    )


def test_dockerfile_copies_existing_paths_and_serves_the_app_factory(dockerfile):
    repo = DOCKER.parent
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (repo / src).exists(), f"COPY source {src} missing"
    module, func = re.search(r"'([\w.]+):(\w+)\(\)'", dockerfile).groups()
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint():
    out = subprocess.run(["hadolint", str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
