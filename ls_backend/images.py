"""Fetching task images: Label Studio paths, local files and http(s) URLs.

* ``/data/upload/...`` and other paths relative to Label Studio, and absolute URLs on the
  Label Studio host, are fetched from ``LABEL_STUDIO_URL`` with its token;
* ``/data/local-files/?d=<path>`` is read from ``LOCAL_FILES_DOCUMENT_ROOT`` when the
  backend has that folder, else fetched from Label Studio;
* other http(s) URLs are fetched without the token, and refused when their host resolves
  to a private, loopback or link-local address unless listed in ``ALLOWED_IMAGE_HOSTS``.

The URL policy (:meth:`ImageFetcher._prepare`) decides with the parser that connects:
each request is prepared by ``requests`` first and the scheme, host and port it will
connect to are read from the prepared URL with ``urllib3.util.parse_url``; the token is
attached only when they are ``LABEL_STUDIO_URL``'s.  Redirects are followed by hand, each
hop through the same policy, and the address actually connected is checked again when the
socket opens (no DNS rebinding past the check).  ``IMAGE_TIMEOUT`` is one deadline for the
whole download (token exchange, connect, headers, every chunk, redirects): a watchdog
shuts the socket down when it passes, so a server that trickles bytes cannot hold a
request.  Downloads are bounded in size; every failure is an :class:`ImageFetchError`
whose message names the URL and what to change.  Decoded images are kept in a small LRU
cache, so the clicks of one task download its image once.
"""

from __future__ import annotations

import http.cookiejar
import io
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import numpy as np
import requests
import urllib3
from PIL import Image
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import parse_url

from promptmoe_plugin.images import ImageError, load_image
from promptmoe_plugin.sam.cache import LRUCache

from .config import Settings

log = logging.getLogger(__name__)

#: Decoded images kept for repeated requests on the same task (clicks, refinements).
IMAGE_CACHE_MB = 256
_MAX_REDIRECTS = 3
#: A personal access token's access JWT lives 5 minutes; renew a little before.
_ACCESS_TTL = 240.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ImageFetchError(ValueError):
    """A task image or mask that cannot be fetched or decoded; the message says why."""


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


@dataclass(frozen=True)
class Target:
    """Where a request connects: scheme, host (lower case, IPv6 without brackets), port."""

    scheme: str
    host: str
    port: int


def target_of(url: str) -> Target:
    """The scheme, host and port a request to ``url`` connects to, read the way
    ``requests`` and ``urllib3`` read it when they connect (not ``urllib.parse``, which
    disagrees on URLs such as ``http://a\\@b/``).

    Raises:
        ImageFetchError: a URL that ``requests`` refuses, or one without a host.
    """
    try:
        prepared = requests.Request("GET", url).prepare().url or ""
        parts = parse_url(prepared)
    except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as exc:
        raise ImageFetchError(f"{url}: not a valid URL ({exc})") from exc
    scheme = (parts.scheme or "").lower()
    host = (parts.host or "").lower().strip("[]")
    if not host:
        raise ImageFetchError(f"{url}: no host in URL")
    return Target(scheme, host, parts.port or _DEFAULT_PORTS.get(scheme, 0))


def _is_private(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_reserved
        or addr.is_multicast
        or addr.is_unspecified
    )


class _Download:
    """One download's deadline and guards, seen by the connections it opens (through a
    thread-local): at the deadline a watchdog shuts down every socket the download used,
    which ends any blocked read at once; ``private_ok`` False refuses a connection whose
    peer address is private."""

    _local = threading.local()

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self.refused: str | None = None
        self.private_ok = True
        self._conns: list[HTTPConnection] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    @classmethod
    def current(cls) -> _Download | None:
        return getattr(cls._local, "download", None)

    def __enter__(self) -> _Download:
        self._local.download = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self._local.download = None

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.expired = True
        return max(0.01, left)

    def attach(self, conn: HTTPConnection) -> None:
        """Watch ``conn`` and its current socket (kept: a response that closes its
        connection takes the socket over, and ``conn.sock`` becomes None)."""
        with self._lock:
            self._conns.append(conn)
            if conn.sock is not None:
                self._socks.append(conn.sock)
            expired = self.expired
        if expired:
            self._expire()

    def check_peer(self, conn: HTTPConnection) -> None:
        """Refuse a connection to a private address unless the request may go there."""
        if self.private_ok or conn.sock is None or getattr(conn, "proxy", None):
            return
        ip = conn.sock.getpeername()[0]
        if _is_private(ip):
            self.refused = (
                f"host {conn.host} connected to a private/loopback address ({ip}); add it to "
                "ALLOWED_IMAGE_HOSTS to allow it"
            )
            conn.close()
            raise OSError(self.refused)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = self._socks + [c.sock for c in self._conns if c.sock is not None]
        for sock in socks:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class _GuardedConnection:
    """Mixin for urllib3 connections: registers with the current download (for its
    watchdog) and checks the peer address when the socket opens."""

    def connect(self) -> None:
        download = _Download.current()
        if download is not None:
            download.attach(self)  # type: ignore[arg-type]
        super().connect()  # type: ignore[misc]
        if download is not None:
            download.attach(self)  # type: ignore[arg-type]
            download.check_peer(self)  # type: ignore[arg-type]

    def request(self, *args, **kwargs):
        download = _Download.current()
        if download is not None:
            download.attach(self)  # type: ignore[arg-type]
        out = super().request(*args, **kwargs)  # type: ignore[misc]
        if download is not None:
            download.attach(self)  # type: ignore[arg-type]
        return out


class _HTTPConnection(_GuardedConnection, HTTPConnection):
    pass


class _HTTPSConnection(_GuardedConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _GuardedAdapter(HTTPAdapter):
    """``requests`` adapter whose connections are :class:`_GuardedConnection` s."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def _session() -> requests.Session:
    session = requests.Session()
    session.mount("http://", _GuardedAdapter())
    session.mount("https://", _GuardedAdapter())
    # No cookies: a cookie Label Studio sets must never travel anywhere else.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session


class ImageFetcher:
    """Resolves and downloads task images with the backend's settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.session = _session()
        self.cache: LRUCache[np.ndarray] = LRUCache(IMAGE_CACHE_MB)
        self._access: tuple[str, float] | None = None
        self._auth_lock = threading.Lock()
        ls_url = settings.label_studio_url
        self._ls = target_of(ls_url) if ls_url else None

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
        try:
            urlsplit(url)
        except ValueError as exc:
            raise ImageFetchError(f"{url}: not a valid URL ({exc})") from exc
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
        try:
            path = (Path(root) / unquote(rel)).resolve()
            if not path.is_relative_to(Path(root).resolve()):
                raise ImageFetchError(f"{url}: path leaves LOCAL_FILES_DOCUMENT_ROOT")
            if not path.is_file():
                raise ImageFetchError(
                    f"{url}: no file {path} under LOCAL_FILES_DOCUMENT_ROOT={root}"
                )
            if path.stat().st_size > self.settings.max_image_mb * 2**20:
                raise ImageFetchError(
                    f"{url}: file is larger than MAX_IMAGE_MB={self.settings.max_image_mb:g}"
                )
            return path.read_bytes()
        except (OSError, ValueError) as exc:  # NUL bytes, unencodable names, permissions
            if isinstance(exc, ImageFetchError):
                raise
            raise ImageFetchError(
                f"{url}: cannot read it under LOCAL_FILES_DOCUMENT_ROOT ({exc})"
            ) from exc

    def _is_label_studio(self, url: str) -> bool:
        """Whether a request to ``url`` connects to ``LABEL_STUDIO_URL``'s scheme, host and
        port (as the connecting parser reads both)."""
        return self._ls is not None and target_of(url) == self._ls

    def _check_host(self, url: str, target: Target) -> bool:
        """Refuse a ``target`` on a private address unless it is Label Studio's or allowed;
        returns whether it may be private (the connection's peer is checked otherwise)."""
        if target == self._ls or target.host in self.settings.allowed_hosts:
            return True
        try:
            infos = socket.getaddrinfo(target.host, None)
        except (socket.gaierror, UnicodeError) as exc:
            raise ImageFetchError(f"{url}: cannot resolve host {target.host} ({exc})") from exc
        for info in infos:
            if _is_private(info[4][0]):
                raise ImageFetchError(
                    f"{url}: host {target.host} is a private/loopback address ({info[4][0]}); "
                    "add it to ALLOWED_IMAGE_HOSTS to allow it"
                )
        return False

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
        download = _Download.current()
        timeout = download.remaining() if download else self.settings.image_timeout
        try:
            r = self.session.post(
                url, json={"refresh": refresh_token}, timeout=timeout, allow_redirects=False
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
        """The body at ``url``, following redirects through the URL policy, within one
        ``IMAGE_TIMEOUT`` deadline and ``MAX_IMAGE_MB``."""
        timeout = self.settings.image_timeout
        with _Download(timeout) as download:
            try:
                return self._follow(url, download)
            except ImageFetchError:
                raise
            except ValueError as exc:  # a redirect to a URL urllib.parse cannot split
                raise ImageFetchError(f"{url}: redirected to an invalid URL ({exc})") from exc
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                if download.refused:
                    raise ImageFetchError(f"{url}: {download.refused}") from exc
                if download.expired or isinstance(exc, requests.Timeout):
                    raise ImageFetchError(
                        f"{url}: no complete answer within IMAGE_TIMEOUT={timeout:g}s"
                    ) from exc
                raise ImageFetchError(f"{url}: cannot connect ({exc})") from exc

    def _follow(self, url: str, download: _Download) -> bytes:
        limit = int(self.settings.max_image_mb * 2**20)
        for _ in range(_MAX_REDIRECTS + 1):
            prepared, to_ls = self._prepare(url, download)
            r = self._send(prepared, download)
            if to_ls and r.status_code == 401 and self.settings.label_studio_api_key:
                r.close()
                prepared, to_ls = self._prepare(url, download, refresh=True)
                r = self._send(prepared, download)
            if r.is_redirect:
                location = urljoin(url, r.headers.get("Location", ""))
                r.close()
                url = location
                continue
            if r.status_code != 200:
                r.close()
                raise ImageFetchError(self._http_error(url, r.status_code, to_ls))
            try:
                size = int(r.headers.get("Content-Length") or 0)
            except ValueError:
                size = 0
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
                    chunks.append(chunk)
            finally:
                r.close()
            download.remaining()  # marks it expired when the deadline has passed
            if download.expired:  # the watchdog cut the body short
                raise requests.Timeout("deadline passed while reading the body")
            return b"".join(chunks)
        raise ImageFetchError(f"{url}: more than {_MAX_REDIRECTS} redirects")

    def _prepare(
        self, url: str, download: _Download, refresh: bool = False
    ) -> tuple[requests.PreparedRequest, bool]:
        """The request for one hop and whether it goes to Label Studio: the URL policy.

        The target is read from the prepared request, as the adapter will connect; the
        token is attached only when it is Label Studio's, any other credential is dropped,
        and a private target is refused unless allowed (see :meth:`_check_host`)."""
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ImageFetchError(f"{url}: only http(s) URLs and Label Studio paths are supported")
        try:
            prepared = self.session.prepare_request(requests.Request("GET", url))
        except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as exc:
            raise ImageFetchError(f"{url}: not a valid URL ({exc})") from exc
        target = target_of(prepared.url or "")
        if target.scheme not in ("http", "https"):
            raise ImageFetchError(f"{url}: only http(s) URLs and Label Studio paths are supported")
        to_ls = target == self._ls
        download.private_ok = self._check_host(url, target)
        prepared.headers.pop("Authorization", None)
        prepared.headers.pop("Cookie", None)
        if to_ls:
            prepared.headers.update(self._auth_header(refresh))
        return prepared, to_ls

    def _send(self, prepared: requests.PreparedRequest, download: _Download) -> requests.Response:
        env = self.session.merge_environment_settings(prepared.url, {}, True, None, None)
        env.pop("stream", None)
        left = download.remaining()
        return self.session.send(
            prepared, stream=True, timeout=(left, left), allow_redirects=False, **env
        )

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
