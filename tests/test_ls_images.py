"""Task image fetching: Label Studio paths, token scope, private hosts, limits, errors."""

from __future__ import annotations

import io
import threading
from http.server import ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from conftest import QuietHandler
from ls_backend.config import Settings
from ls_backend.images import ImageFetcher, ImageFetchError

PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2ln"


def _png(h: int = 6, w: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 77, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class _Handler(QuietHandler):
    seen: list[tuple[str, str | None]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = self.path == "/api/token/refresh/" and PAT.encode() in body
        self._send(200 if ok else 401, b'{"access": "ACCESS"}' if ok else b"{}")

    def do_GET(self):
        _Handler.seen.append((self.path, self.headers.get("Authorization")))
        auth = self.headers.get("Authorization")
        if self.path.startswith("/data/upload/"):
            if auth not in ("Token LEGACY", "Bearer ACCESS"):
                return self._send(401)
            return self._send(200, _png())
        if self.path == "/public.png":
            return self._send(200, _png())
        if self.path == "/text.png":
            return self._send(200, b"<html>login</html>")
        if self.path == "/big.png":
            return self._send(200, b"\0" * (2 * 2**20))
        if self.path == "/redirect":
            return self._send(302, headers={"Location": "/public.png"})
        self._send(404)


@pytest.fixture(scope="module")
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", server.server_port
    server.shutdown()


def _fetcher(url: str, **kw) -> ImageFetcher:
    return ImageFetcher(Settings(label_studio_url=url, **kw))


def test_label_studio_paths_use_the_token(http_server):
    url, _ = http_server
    for key in ("LEGACY", PAT):
        image = _fetcher(url, label_studio_api_key=key).image("/data/upload/1/a.png")
        assert image.shape == (6, 8, 3) and image.dtype == np.uint8 and (image == 77).all()
    with pytest.raises(ImageFetchError, match="HTTP 401.*set LABEL_STUDIO_API_KEY"):
        _fetcher(url).image("/data/upload/1/b.png")
    with pytest.raises(ImageFetchError, match="HTTP 401.*check LABEL_STUDIO_API_KEY"):
        _fetcher(url, label_studio_api_key="WRONG").image("/data/upload/1/b.png")
    with pytest.raises(ImageFetchError, match="set LABEL_STUDIO_URL"):
        ImageFetcher(Settings()).image("/data/upload/1/a.png")


def test_token_goes_only_to_label_studio(http_server):
    url, port = http_server
    fetcher = _fetcher(url, label_studio_api_key="LEGACY", allowed_hosts=("localhost",))
    _Handler.seen.clear()
    fetcher.image(f"http://localhost:{port}/public.png")
    assert _Handler.seen == [("/public.png", None)]
    with pytest.raises(ImageFetchError, match="HTTP 401.*token goes only"):
        fetcher.image(f"http://localhost:{port}/data/upload/1/a.png")


def test_private_hosts_refused_unless_allowed(http_server):
    url, port = http_server
    with pytest.raises(ImageFetchError, match="private/loopback.*ALLOWED_IMAGE_HOSTS"):
        _fetcher("http://ls.example:8080").image(f"{url}/public.png")
    assert _fetcher("http://ls.example:8080", allowed_hosts=("127.0.0.1",)).image(
        f"{url}/redirect"
    ).shape == (6, 8, 3)


def test_errors_name_the_problem(http_server, tmp_path):
    url, _ = http_server
    fetcher = _fetcher(url, max_image_mb=1)
    with pytest.raises(ImageFetchError, match="HTTP 404: no such file"):
        fetcher.image(f"{url}/missing.png")
    with pytest.raises(ImageFetchError, match="not an image"):
        fetcher.image(f"{url}/text.png")
    with pytest.raises(ImageFetchError, match="MAX_IMAGE_MB"):
        fetcher.image(f"{url}/big.png")
    with pytest.raises(ImageFetchError, match="only http"):
        fetcher.image("s3://bucket/a.png")
    with pytest.raises(ImageFetchError, match="cannot connect"):
        _fetcher("http://127.0.0.1:9").image("/data/upload/x.png")


def test_local_files_read_from_document_root(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a b.png").write_bytes(_png(3, 4))
    fetcher = ImageFetcher(Settings(local_files_root=tmp_path))
    assert fetcher.image("/data/local-files/?d=sub/a%20b.png").shape == (3, 4, 3)
    with pytest.raises(ImageFetchError, match="leaves LOCAL_FILES_DOCUMENT_ROOT"):
        fetcher.image("/data/local-files/?d=../etc/passwd")
    with pytest.raises(ImageFetchError, match="no file"):
        fetcher.image("/data/local-files/?d=sub/none.png")
    values = fetcher.label_map("/data/local-files/?d=sub/a%20b.png", (3, 4))
    assert values.shape == (3, 4) and values.dtype == np.uint8
    with pytest.raises(ImageFetchError, match="is 4x3 but the image is 5x3"):
        fetcher.label_map("/data/local-files/?d=sub/a%20b.png", (3, 5))
