"""Issue 15, items 1-4 and 7, through the HTTP server and against real loopback servers:
the token reaches only Label Studio's host, no request decodes a mask it sized freely,
IMAGE_TIMEOUT is a deadline, any characters in basic auth, a 4xx for every bad payload."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
import tracemalloc
from http.server import ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from conftest import LS_CONFIG as CONFIG
from conftest import QuietHandler
from ls_backend import rle
from ls_backend.config import load_settings
from ls_backend.images import ImageFetcher, ImageFetchError, target_of
from ls_backend.model import PromptMoEModel
from ls_backend.results import brush_result
from ls_backend.server import MAX_JSON_DEPTH, create_app

TOKEN = "LEGACYTOKEN"
IMAGE = "/data/local-files/?d=img.png"


def _png(h: int = 48, w: int = 64) -> bytes:
    buf = io.BytesIO()
    image = np.zeros((h, w, 3), np.uint8)
    image[10:38, 16:48] = 200
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------- loopback servers
class _Recorder(QuietHandler):
    """Records ``(host:port, path, Authorization)`` of every request.  Label Studio (on
    127.0.0.1) serves ``/data/upload/*`` only with the token and redirects ``/go?to=URL``;
    the others serve any path as an image."""

    seen: list[tuple[str, str, str | None]] = []
    label_studio: str = ""

    def do_GET(self):
        me = "{}:{}".format(*self.server.server_address[:2])
        auth = self.headers.get("Authorization")
        _Recorder.seen.append((me, self.path, auth))
        if me != _Recorder.label_studio:
            return self._send(200, _png())
        if self.path.startswith("/go?to="):
            return self._send(302, headers={"Location": unquote(self.path[len("/go?to=") :])})
        if auth != f"Token {TOKEN}":
            return self._send(401)
        return self._send(200, _png())


def _serve(host: str) -> tuple[ThreadingHTTPServer, int]:
    server = ThreadingHTTPServer((host, 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_port


@pytest.fixture(scope="module")
def hosts():
    """Label Studio at 127.0.0.1:P, another host at 127.0.0.2:Q, another port 127.0.0.1:R."""
    servers = [_serve("127.0.0.1"), _serve("127.0.0.2"), _serve("127.0.0.1")]
    (_, ls), (_, other), (_, port) = servers
    _Recorder.label_studio = f"127.0.0.1:{ls}"
    yield f"http://127.0.0.1:{ls}", f"127.0.0.2:{other}", f"127.0.0.1:{port}"
    for server, _ in servers:
        server.shutdown()


def _probes(ls: str, other: str, port: str) -> list[str]:
    """Image URLs that name Label Studio somewhere but connect elsewhere (or redirect)."""
    ls_host = ls.removeprefix("http://")
    evil = [
        f"http://{other}\\@{ls_host}/data/upload/1/a.png",  # urllib.parse: Label Studio
        f"http://{other}\\\\@{ls_host}/data/upload/1/a.png",
        f"http://{ls_host}@{other}/data/upload/1/a.png",  # userinfo
        f"http://{ls_host}:@{other}/x.png",
        f"http://{port}/data/upload/1/a.png",  # same host, another port
        f"http://{port}\\@{ls_host}/data/upload/1/a.png",
        f"HTTP://{other}\\@{ls_host}/data/upload/1/a.png",
    ]
    redirects = [f"{ls}/go?to={url}" for url in evil[:3]]
    redirects += [f"/go?to=http://{other}/stolen.png", f"/go?to=//{other}/stolen.png"]
    return evil + redirects


def _leaks(ls_host: str) -> list:
    return [s for s in _Recorder.seen if s[0] != ls_host and s[2] is not None]


def test_url_policy_reads_the_host_as_requests_connects():
    assert target_of("http://127.0.0.2:81\\@127.0.0.1:80/a").host == "127.0.0.2"
    assert target_of("http://127.0.0.2:81\\@127.0.0.1:80/a").port == 81
    assert target_of("HTTP://LS.Example/x") == target_of("http://ls.example:80/y")
    assert target_of("http://[::1]:8/x").host == "::1"
    with pytest.raises(ImageFetchError, match="not a valid URL"):
        target_of("http://ls\t/x")


@pytest.mark.parametrize("allowed", [(), ("127.0.0.2", "127.0.0.1")])
def test_token_reaches_no_other_host(hosts, allowed):
    """Every probe, allowed to reach the other hosts or not: none of them sees the token,
    while Label Studio itself gets it (its uploads answer 401 without)."""
    ls, other, port = hosts
    settings = load_settings(
        {},
        {"label_studio_url": ls, "label_studio_api_key": TOKEN, "allowed_hosts": ",".join(allowed)},
    )
    fetcher = ImageFetcher(settings)
    _Recorder.seen.clear()
    assert fetcher.image("/data/upload/1/a.png").shape == (48, 64, 3)
    assert _Recorder.seen[-1][2] == f"Token {TOKEN}"
    outcomes = []
    for url in _probes(ls, other, port):
        fetcher.cache.clear()
        try:
            fetcher.image(url)
            outcomes.append("fetched")
        except ImageFetchError as exc:
            outcomes.append(str(exc))
    assert _leaks(ls.removeprefix("http://")) == []
    hosts_seen = {s[0] for s in _Recorder.seen}
    if allowed:  # the probes did reach the other hosts, without the token
        assert {other, port} <= hosts_seen and "fetched" in outcomes
    else:  # refused as private addresses, before connecting
        assert hosts_seen == {ls.removeprefix("http://")}
        assert all("private/loopback" in o for o in outcomes), outcomes


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    (root / "img.png").write_bytes(_png())
    return root


def _app(engine, tmp_path, **overrides: str):
    settings = load_settings({}, {"model_dir": str(tmp_path), "intent": "sam", **overrides})
    return create_app(PromptMoEModel(engine, settings)).test_client()


def _kp(x: float, y: float, label: str = "Person") -> dict:
    return {
        "original_width": 64,
        "original_height": 48,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "value": {"x": 100 * x / 64, "y": 100 * y / 48, "width": 1, "keypointlabels": [label]},
    }


def _predict_body(image: str, context: dict | None) -> dict:
    return {
        "tasks": [{"id": 1, "data": {"image": image}}],
        "project": "1.1700000000",
        "label_config": CONFIG,
        "params": {"context": context},
    }


def _brush(mask: np.ndarray, label: str = "Person") -> dict:
    return brush_result(mask, label, from_name="brush", to_name="image")


def _annotation(image: str, results: list, ann_id: int = 7) -> dict:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 1, "label_config": CONFIG},
        "task": {"id": 3, "data": {"image": image}},
        "annotation": {"id": ann_id, "result": results},
    }


def test_token_reaches_no_other_host_through_predict_and_webhook(engine, hosts, tmp_path):
    """/predict with a confusing image URL, and /webhook storing one as a reference URL
    (fetched again on later first clicks): the other host answers, never with the token."""
    ls, other, _ = hosts
    client = _app(
        engine,
        tmp_path,
        label_studio_url=ls,
        label_studio_api_key=TOKEN,
        allowed_hosts="127.0.0.2",
    )
    url = f"http://{other}\\@{ls.removeprefix('http://')}/data/upload/1/a.png"
    _Recorder.seen.clear()
    r = client.post("/predict", json=_predict_body(url, {"result": [_kp(30, 24)]}))
    assert r.status_code == 200 and r.json["results"][0]["result"]
    mask = np.zeros((48, 64), bool)
    mask[10:38, 16:48] = True
    redirect = f"{ls}/go?to={url}"
    for i, image in enumerate([url, redirect]):
        r = client.post("/webhook", json=_annotation(image, [_brush(mask)], ann_id=20 + i))
        assert r.status_code < 500, r.json
    # A later first click in the project uses the stored references (their image URLs).
    body = _predict_body(f"{ls}/data/upload/1/b.png", {"result": [_kp(20, 20)]})
    assert client.post("/predict", json=body).status_code < 500
    assert other in {s[0] for s in _Recorder.seen}
    assert _leaks(ls.removeprefix("http://")) == []


# ---------------------------------------------------------------------- mask sizes
def _header_only(h: int, w: int) -> list[int]:
    """An RLE whose header announces an h x w mask and whose body is one short run."""
    return [*(h * w * 4).to_bytes(4, "big"), *rle.encode(np.zeros((1, 1), bool))[4:]]


def test_huge_brush_sizes_get_413_without_allocating(engine, tmp_path, files):
    client = _app(engine, tmp_path, local_files_root=str(files))
    huge = dict(_brush(np.ones((4, 4), bool)), original_width=16384, original_height=16384)
    huge["value"]["rle"] = _header_only(16384, 16384)
    tracemalloc.start()
    try:
        r = client.post("/webhook", json=_annotation(IMAGE, [huge]))
        ctx = {"result": [huge]}
        r2 = client.post("/predict", json=_predict_body(IMAGE, ctx))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 413 and "16384x16384" in r.json["detail"], r.json
    assert "MAX_MASK_PIXELS" in r.json["detail"] and r2.status_code == 413
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MB"


def test_mask_size_limit_is_a_setting(engine, tmp_path, files):
    client = _app(engine, tmp_path, local_files_root=str(files), max_mask_pixels="3000")
    small = _brush(np.ones((48, 64), bool))  # 3072 px: above 3000
    r = client.post("/webhook", json=_annotation(IMAGE, [small]))
    assert r.status_code == 413 and "MAX_MASK_PIXELS=3000" in r.json["detail"]
    with pytest.raises(ValueError, match="MAX_MASK_PIXELS"):
        load_settings({"MAX_MASK_PIXELS": str(10**12)})


def test_rle_decode_checks_sizes_before_allocating():
    tracemalloc.start()
    try:
        with pytest.raises(rle.RLEError, match="above the limit"):
            rle.decode(_header_only(16384, 16384), 16384, 16384)
        with pytest.raises(rle.RLEError, match="above the limit of 0.001 MP"):
            rle.decode(_header_only(100, 100), 100, 100, max_pixels=1000)
        with pytest.raises(rle.RLEError, match="expected 40000"):
            rle.decode(_header_only(16384, 16384), 100, 100)
        with pytest.raises(rle.RLEError, match="above the limit"):
            rle.decode_words([255, 255, 255, 255, 0, 0, 0], max_words=1000)
        with pytest.raises(rle.RLEError, match="positive integers"):
            rle.decode(_header_only(1, 1), 0, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


# ---------------------------------------------------------------------- IMAGE_TIMEOUT
class _Trickle(QuietHandler):
    """Sends one byte every 0.1 s for 20 s: in the body (``/body``) or the headers."""

    def do_GET(self):
        try:
            if self.path == "/headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(200):
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    time.sleep(0.1)
                return
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(200):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass


@pytest.fixture(scope="module")
def trickle():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("path", ["/body", "/headers"])
def test_image_timeout_is_a_deadline(trickle, path):
    fetcher = ImageFetcher(load_settings({}, {"image_timeout": "1", "allowed_hosts": "127.0.0.1"}))
    start = time.perf_counter()
    with pytest.raises(ImageFetchError, match="IMAGE_TIMEOUT=1s"):
        fetcher.image(trickle + path)
    assert time.perf_counter() - start < 2.0


def test_image_timeout_through_predict(engine, tmp_path, trickle):
    client = _app(engine, tmp_path, image_timeout="1", allowed_hosts="127.0.0.1")
    results = []

    def call():
        start = time.perf_counter()
        r = client.post("/predict", json=_predict_body(trickle + "/body", {"result": [_kp(1, 1)]}))
        results.append((r.status_code, time.perf_counter() - start, r.json["detail"]))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for status, seconds, detail in results:
        assert status == 422 and "IMAGE_TIMEOUT" in detail and seconds < 2.0, results


# ---------------------------------------------------------------------- basic auth
def _basic(user: str, password: str, encoding: str = "utf-8") -> dict:
    raw = f"{user}:{password}".encode(encoding)
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def test_basic_auth_with_any_characters(engine, tmp_path):
    client = _app(engine, tmp_path, basic_auth_user="zoë", basic_auth_pass="pässwörd✓")
    assert client.get("/health", headers=_basic("zoë", "pässwörd✓")).status_code == 200
    for headers in (
        _basic("zoë", "wrong✗"),
        _basic("zoë", "pässwörd"),
        _basic("zoe", "pässwörd✓"),
        _basic("zoë", "pässwörd", "latin-1"),  # not UTF-8
        {"Authorization": "Basic ///"},
        {"Authorization": "Bearer x"},
        {},
    ):
        r = client.get("/health", headers=headers)
        assert r.status_code == 401 and r.json["status"] == 401, headers
    ascii_client = _app(engine, tmp_path / "b", basic_auth_user="u", basic_auth_pass="p")
    assert ascii_client.get("/health", headers=_basic("ü", "ñ✓")).status_code == 401
    assert ascii_client.get("/health", headers=_basic("u", "p")).status_code == 200


# ---------------------------------------------------------------------- bad payloads
def _webhook(**changes) -> dict:
    mask = np.zeros((48, 64), bool)
    mask[5:20, 5:20] = True
    body = _annotation(IMAGE, [_brush(mask)])
    body.update(changes)
    return body


_NO_WIDTH = {k: v for k, v in _brush(np.ones((48, 64), bool)).items() if k != "original_width"}
_GARBAGE_RLE = dict(
    _brush(np.ones((48, 64), bool)),
    value={"format": "rle", "rle": [1, 2, 3], "brushlabels": ["Person"]},
)
_BAD_BYTES_RLE = dict(_GARBAGE_RLE, value=dict(_GARBAGE_RLE["value"], rle=[999, -1]))


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/webhook", _webhook(project="1"), 422, "project must be an object"),
        ("/webhook", _webhook(project=1), 422, "project must be an object"),
        ("/webhook", _webhook(project={"id": 1, "label_config": ["x"]}), 422, "label_config"),
        ("/webhook", _webhook(annotation={"id": "abc", "result": []}), 422, "annotation.id must"),
        ("/webhook", _webhook(annotation={"id": 2**70, "result": []}), 422, "annotation.id must"),
        ("/webhook", _webhook(task={"id": [], "data": {}}), 422, "task.id must"),
        ("/webhook", _webhook(task={"id": 3, "data": "x"}), 422, "task.data"),
        (
            "/webhook",
            _webhook(annotation={"id": 1, "result": [_NO_WIDTH]}),
            422,
            "original_width must",
        ),
        ("/webhook", _webhook(annotation={"id": 1, "result": "x"}), 422, "result must be a list"),
        ("/webhook", _webhook(annotation={"id": 1, "result": [3]}), 422, "region object"),
        ("/webhook", _webhook(annotation={"id": 1, "result": [_GARBAGE_RLE]}), 422, "brush RLE"),
        (
            "/webhook",
            _webhook(annotation={"id": 1, "result": [_BAD_BYTES_RLE]}),
            422,
            "integers 0..255",
        ),
        (
            "/webhook",
            {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "x"}]},
            422,
            "id must",
        ),
        ("/webhook", {"action": "ANNOTATIONS_DELETED", "annotations": 5}, 422, "must be a list"),
        (
            "/webhook",
            {"action": "ANNOTATIONS_DELETED", "annotations": ["a"]},
            422,
            "must be an object",
        ),
        ("/webhook", {"action": "ANNOTATION_DELETED", "annotation": "a"}, 422, "must be an object"),
        ("/webhook", {"action": ["ANNOTATION_CREATED"]}, 200, "Unknown event"),
        (
            "/predict",
            _predict_body(IMAGE, {"result": [dict(_kp(1, 1), value={"x": 1e308, "y": 1})]}),
            400,
            "is not a percentage",
        ),
        ("/setup", {"schema": ["<View/>"]}, 400, "schema must be the labeling config"),
        ("/setup", {"schema": {"a": 1}}, 400, "schema must be the labeling config"),
        ("/predict", dict(_predict_body(IMAGE, None), params=3), 400, "params must be"),
        (
            "/predict",
            {**_predict_body(IMAGE, None), "tasks": [{"id": "x", "data": {}}]},
            400,
            "tasks[0].id",
        ),
        (
            "/predict",
            {**_predict_body(IMAGE, None), "tasks": [{"id": None, "data": {}}]},
            400,
            "tasks[0].id",
        ),
        (
            "/predict",
            {**_predict_body(IMAGE, None), "tasks": [{"annotations": "x"}]},
            400,
            "annotations must be a list",
        ),
        (
            "/predict",
            {**_predict_body(IMAGE, None), "tasks": [{"predictions": [1]}]},
            400,
            "must be an object",
        ),
        (
            "/predict",
            _predict_body(
                IMAGE, {"result": [dict(_brush(np.ones((48, 64), bool)), original_width="64")]}
            ),
            400,
            "original_width must",
        ),
    ],
)
def test_bad_payloads_get_a_clear_4xx(engine, tmp_path, files, path, body, status, message):
    client = _app(engine, tmp_path, local_files_root=str(files))
    r = client.post(path, json=body)
    assert r.status_code == status, r.json
    detail = r.json.get("detail", r.json.get("status"))
    assert message in str(detail) and "internal error" not in str(detail)
    assert client.get("/health").status_code == 200


def test_bodies_too_deep_too_large_or_not_json(engine, tmp_path):
    client = _app(engine, tmp_path, max_request_mb="1")
    deep = "[" * 100_000 + "]" * 100_000
    headers = {"Content-Type": "application/json"}
    for body in (f'{{"schema": {deep}}}', '{"a": ' + '{"a": ' * 70 + "1" + "}" * 71):
        r = client.post("/setup", data=body, headers=headers)
        assert r.status_code == 400 and "nested" in r.json["detail"], r.json
    # Brackets inside strings do not count.
    r = client.post("/setup", json={"schema": "[" * 1000, "project": "{" * 1000})
    assert r.status_code == 422 and "nested" not in r.json["detail"]
    r = client.post("/setup", data='{"schema": "' + "x" * 2**20 + '"}', headers=headers)
    assert r.status_code == 413 and r.json["status"] == 413
    for raw, message in (
        ('{"schema": NaN}', "NaN is not JSON"),
        ('{"schema": 1e999}', "out of range"),
        (b'{"schema": "\xff"}', "not valid JSON"),
        ('{"schema": ', "not valid JSON"),
    ):
        r = client.post("/setup", data=raw, headers=headers)
        assert r.status_code == 400 and message in r.json["detail"], r.json
    assert MAX_JSON_DEPTH == 64
    assert client.get("/health").status_code == 200


def test_deep_json_is_refused_before_parsing(engine, tmp_path):
    """A 60 MB body of brackets: refused quickly, with little memory."""
    client = _app(engine, tmp_path)
    body = b"[" * (30 * 2**20) + b"]" * (30 * 2**20)
    start = time.perf_counter()
    r = client.post("/predict", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested" in r.json["detail"]
    assert time.perf_counter() - start < 10


def test_connect_time_check_refuses_private_peers(monkeypatch, hosts):
    """A host name that passes the check but connects to a private address (DNS
    rebinding): refused when the socket opens."""
    ls, other, _ = hosts
    fetcher = ImageFetcher(load_settings({}, {"label_studio_url": "http://ls.example"}))
    real = socket.getaddrinfo
    calls = []

    def rebinding(host, *args, **kwargs):
        if host == "rebind.example":
            calls.append(host)
            ip = "93.184.216.34" if len(calls) == 1 else "127.0.0.2"
            return real(ip, *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    _Recorder.seen.clear()
    port = other.split(":")[1]
    with pytest.raises(ImageFetchError, match="connected to a private/loopback address"):
        fetcher.image(f"http://rebind.example:{port}/x.png")
    assert _Recorder.seen == [] and len(calls) >= 2


@pytest.mark.parametrize(
    "url",
    [
        "/data/local-files/?d=%00x",
        "/data/local-files/?d=\ud800",
        "http://\ud800/x",
        "http://[zz]/x",
        "http://a:99999/x",
        "http:///x",
        "http://%00/x",
        "file:///etc/passwd",
        "http://0/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://2130706433/x",
    ],
)
def test_odd_urls_are_clear_fetch_errors(files, url):
    fetcher = ImageFetcher(
        load_settings({}, {"local_files_root": str(files), "image_timeout": "1"})
    )
    with pytest.raises(ImageFetchError):
        fetcher.image(url)


def test_a_huge_labeling_config_is_refused_before_parsing(engine, tmp_path):
    from ls_backend import label_config
    from ls_backend.label_config import MAX_CONFIG_CHARS, LabelConfigError, parse_label_config

    labels = "".join(f'<Label value="L{i}"/>' for i in range(MAX_CONFIG_CHARS // 16))
    config = f'<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i">{labels}'
    config += "</BrushLabels></View>"
    assert len(config) > MAX_CONFIG_CHARS
    parsed = label_config._parse.cache_info().misses
    with pytest.raises(LabelConfigError, match="at most"):
        parse_label_config(config)
    assert label_config._parse.cache_info().misses == parsed  # refused on its length
    r = _app(engine, tmp_path).post("/setup", json={"project": "1.0", "schema": config})
    assert r.status_code == 422 and "at most" in r.json["detail"]
    assert label_config._parse.cache_info().misses == parsed
