"""Fetching task images: Label Studio paths, local files and http(s) URLs.

* ``/data/upload/...`` and other paths relative to Label Studio, and absolute URLs on the
  Label Studio host, are fetched from ``LABEL_STUDIO_URL`` with its token;
* ``/data/local-files/?d=<path>`` is read from ``LOCAL_FILES_DOCUMENT_ROOT`` when the
  backend has that folder, else fetched from Label Studio;
* other http(s) URLs are fetched without the token, and refused when their host resolves
  to a private, loopback or link-local address unless listed in ``ALLOWED_IMAGE_HOSTS``.

Downloads are bounded in size and time; every failure is an :class:`ImageFetchError`
whose message names the URL and what to change.  Decoded images are kept in a small LRU
cache, so the clicks of one task download its image once.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import numpy as np
import requests
from PIL import Image

from promptmoe_plugin.images import ImageError, load_image
from promptmoe_plugin.sam.cache import LRUCache

from .config import Settings

log = logging.getLogger(__name__)

#: Decoded images kept for repeated requests on the same task (clicks, refinements).
IMAGE_CACHE_MB = 256
_MAX_REDIRECTS = 3
#: A personal access token's access JWT lives 5 minutes; renew a little before.
_ACCESS_TTL = 240.0


class ImageFetchError(ValueError):
    """A task image or mask that cannot be fetched or decoded; the message says why."""


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class ImageFetcher:
    """Resolves and downloads task images with the backend's settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.session = requests.Session()
        self.cache: LRUCache[np.ndarray] = LRUCache(IMAGE_CACHE_MB)
        self._access: tuple[str, float] | None = None
        self._auth_lock = threading.Lock()

    # ------------------------------------------------------------------ public
    def image(self, url: str) -> np.ndarray:
        """The image at ``url`` as ``(H, W, 3) uint8`` RGB (EXIF-rotated)."""
        return self._load(url, "image")

    def label_map(self, url: str, shape: tuple[int, int]) -> np.ndarray:
        """A single-channel mask image at ``url`` as ``(H, W) uint8`` values (0 = none)."""
        data = self._bytes(url)
        try:
            with Image.open(io.BytesIO(data)) as img:
                arr = np.asarray(img.convert("L") if img.mode not in ("L", "P") else img)
        except Exception as exc:  # PIL raises many types for bad files
            raise ImageFetchError(f"mask {url}: not a readable image ({exc})") from exc
        if arr.shape != tuple(shape):
            raise ImageFetchError(
                f"mask {url} is {arr.shape[1]}x{arr.shape[0]} but the image is "
                f"{shape[1]}x{shape[0]}"
            )
        return arr

    # ------------------------------------------------------------------ internals
    def _load(self, url: str, what: str) -> np.ndarray:
        hit = self.cache.get(url)
        if hit is not None:
            return hit
        data = self._bytes(url)
        try:
            image = load_image(data)
        except ImageError as exc:
            raise ImageFetchError(f"{what} {url}: not an image ({exc})") from exc
        self.cache.put(url, image, image.nbytes)
        return image

    def _bytes(self, url: str) -> bytes:
        if not isinstance(url, str) or not url:
            raise ImageFetchError(f"image URL must be a non-empty string, got {url!r}")
        local = self._local_file(url)
        if local is not None:
            return local
        ls_url = self.settings.label_studio_url
        if url.startswith("/") or not urlsplit(url).scheme:
            if not ls_url:
                raise ImageFetchError(
                    f"{url} is a Label Studio path: set LABEL_STUDIO_URL (and "
                    "LABEL_STUDIO_API_KEY) so the backend can download it"
                )
            url = urljoin(ls_url + "/", url.lstrip("/"))
        if urlsplit(url).scheme not in ("http", "https"):
            raise ImageFetchError(f"{url}: only http(s) URLs and Label Studio paths are supported")
        return self._download(url)

    def _local_file(self, url: str) -> bytes | None:
        """Bytes of a ``/data/local-files/?d=...`` URL read from LOCAL_FILES_DOCUMENT_ROOT."""
        root = self.settings.local_files_root
        parts = urlsplit(url)
        if root is None or not parts.path.rstrip("/").endswith("/data/local-files"):
            return None
        if parts.netloc and not self._is_label_studio(url):
            return None
        rel = parse_qs(parts.query).get("d", [""])[0]
        path = (Path(root) / unquote(rel)).resolve()
        if not path.is_relative_to(Path(root).resolve()):
            raise ImageFetchError(f"{url}: path leaves LOCAL_FILES_DOCUMENT_ROOT")
        if not path.is_file():
            raise ImageFetchError(f"{url}: no file {path} under LOCAL_FILES_DOCUMENT_ROOT={root}")
        if path.stat().st_size > self.settings.max_image_mb * 2**20:
            raise ImageFetchError(
                f"{url}: file is larger than MAX_IMAGE_MB={self.settings.max_image_mb:g}"
            )
        return path.read_bytes()

    def _is_label_studio(self, url: str) -> bool:
        ls_url = self.settings.label_studio_url
        if not ls_url:
            return False
        a, b = urlsplit(url), urlsplit(ls_url)
        return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)

    def _check_host(self, url: str) -> None:
        host = (urlsplit(url).hostname or "").lower()
        if not host:
            raise ImageFetchError(f"{url}: no host in URL")
        if self._is_label_studio(url) or host in self.settings.allowed_hosts:
            return
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror as exc:
            raise ImageFetchError(f"{url}: cannot resolve host {host} ({exc})") from exc
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            if (
                ip.is_private
                or ip.is_loopback
                or ip.is_link_local
                or ip.is_reserved
                or ip.is_multicast
            ):
                raise ImageFetchError(
                    f"{url}: host {host} is a private/loopback address ({ip}); add it to "
                    "ALLOWED_IMAGE_HOSTS to allow it"
                )

    def _auth_header(self, refresh: bool = False) -> dict[str, str]:
        token = self.settings.label_studio_api_key
        if not token:
            return {}
        if not _is_jwt(token):
            return {"Authorization": f"Token {token}"}
        with self._auth_lock:
            if refresh or self._access is None or time.monotonic() > self._access[1]:
                self._access = (self._exchange(token), time.monotonic() + _ACCESS_TTL)
            return {"Authorization": f"Bearer {self._access[0]}"}

    def _exchange(self, refresh_token: str) -> str:
        """Trade a personal access token (a refresh JWT) for a short-lived access JWT."""
        url = f"{self.settings.label_studio_url}/api/token/refresh/"
        try:
            r = self.session.post(
                url, json={"refresh": refresh_token}, timeout=self.settings.image_timeout
            )
        except requests.RequestException as exc:
            raise ImageFetchError(
                f"{url}: cannot reach Label Studio to refresh the token ({exc})"
            ) from exc
        if r.status_code != 200 or "access" not in r.text:
            raise ImageFetchError(
                f"{url}: HTTP {r.status_code}: LABEL_STUDIO_API_KEY was taken for a personal "
                "access token but Label Studio refused it; check the token (or use the legacy "
                "token)"
            )
        return r.json()["access"]

    def _download(self, url: str) -> bytes:
        limit = int(self.settings.max_image_mb * 2**20)
        deadline = time.monotonic() + self.settings.image_timeout
        for _ in range(_MAX_REDIRECTS + 1):
            self._check_host(url)
            to_ls = self._is_label_studio(url)
            r = self._get(url, to_ls, deadline)
            if to_ls and r.status_code == 401 and self.settings.label_studio_api_key:
                r.close()
                r = self._get(url, to_ls, deadline, refresh=True)
            if r.is_redirect:
                location = urljoin(url, r.headers.get("Location", ""))
                r.close()
                url = location
                continue
            if r.status_code != 200:
                r.close()
                raise ImageFetchError(self._http_error(url, r.status_code, to_ls))
            size = int(r.headers.get("Content-Length") or 0)
            if size > limit:
                r.close()
                raise ImageFetchError(
                    f"{url}: {size / 2**20:.1f} MB is above MAX_IMAGE_MB={limit / 2**20:g}"
                )
            chunks, total = [], 0
            try:
                for chunk in r.iter_content(1 << 16):
                    total += len(chunk)
                    if total > limit:
                        raise ImageFetchError(
                            f"{url}: download exceeds MAX_IMAGE_MB={limit / 2**20:g}"
                        )
                    if time.monotonic() > deadline:
                        raise ImageFetchError(f"{url}: download took longer than IMAGE_TIMEOUT")
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise ImageFetchError(f"{url}: download failed ({exc})") from exc
            finally:
                r.close()
            return b"".join(chunks)
        raise ImageFetchError(f"{url}: more than {_MAX_REDIRECTS} redirects")

    def _get(
        self, url: str, to_ls: bool, deadline: float, refresh: bool = False
    ) -> requests.Response:
        headers = self._auth_header(refresh) if to_ls else {}
        timeout = max(0.1, deadline - time.monotonic())
        try:
            return self.session.get(
                url, headers=headers, timeout=timeout, stream=True, allow_redirects=False
            )
        except requests.Timeout as exc:
            raise ImageFetchError(f"{url}: no answer within IMAGE_TIMEOUT ({exc})") from exc
        except requests.RequestException as exc:
            raise ImageFetchError(f"{url}: cannot connect ({exc})") from exc

    def _http_error(self, url: str, status: int, to_ls: bool) -> str:
        if status in (401, 403) and to_ls:
            hint = (
                "Label Studio refused the token: check LABEL_STUDIO_API_KEY"
                if self.settings.label_studio_api_key
                else "set LABEL_STUDIO_API_KEY (Account & Settings -> Access token)"
            )
        elif status in (401, 403):
            hint = (
                "the image host needs credentials the backend does not send (the Label Studio "
                "token goes only to LABEL_STUDIO_URL)"
            )
        elif status == 404:
            hint = "no such file; was the task's file deleted or the storage moved?"
        else:
            hint = "the server failed"
        return f"{url}: HTTP {status}: {hint}"
