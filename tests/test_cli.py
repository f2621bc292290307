"""The ``promptmoe`` command line: each command end to end on small real inputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import blocky_draft, data_dir
from promptmoe_cli.main import main
from promptmoe_plugin.eval.datasets import load_dataset
from promptmoe_plugin.images import load_mask, save_mask
from promptmoe_plugin.masks import mask_iou


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A real GrabCut photo, its ground truth and a blocky draft, saved as files."""
    sample = load_dataset(data_dir("GrabCut"))[0]
    image, gt, _ = sample.load()
    folder = tmp_path_factory.mktemp("scene")
    Image.fromarray(image).save(folder / "img.png")
    save_mask(gt, folder / "gt.png")
    save_mask(blocky_draft(gt), folder / "draft.png")
    return folder, gt


def test_refine_writes_mask_overlay_and_a_summary_line(scene, tmp_path, capsys):
    folder, gt = scene
    argv = [
        "refine",
        "--image",
        str(folder / "img.png"),
        "--mask",
        str(folder / "draft.png"),
        "--variant",
        "lite",
        "-o",
        str(tmp_path / "out" / "mask.png"),
        "--overlay",
        str(tmp_path / "ov.png"),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    line = capsys.readouterr().out
    iou = r"predicted IoU \d\.\d{3}"
    answer = rf"(box|experts|plain) answer, {iou}|draft kept, SAM's answer \({iou}\) rejected"
    assert re.match(rf"lite: ({answer}); encode=", line)
    out = load_mask(tmp_path / "out" / "mask.png")
    assert out.shape == gt.shape and mask_iou(out, gt) > 0.5
    assert Image.open(tmp_path / "ov.png").size == (gt.shape[1], gt.shape[0])


def test_refine_reports_a_bad_input_in_one_line(scene, tmp_path, capsys):
    folder, _ = scene
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(empty)
    argv = [
        "refine",
        "--image",
        str(folder / "img.png"),
        "--mask",
        str(empty),
        "-o",
        str(tmp_path / "o.png"),
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("promptmoe refine: error: ")
    assert not (tmp_path / "o.png").exists()


def test_segment_with_a_reference_and_a_negative_click(scene, tmp_path, capsys):
    folder, gt = scene
    ys, xs = np.nonzero(gt)
    x, y = int(np.median(xs)), int(np.median(ys))
    out = tmp_path / "out" / "mask.png"
    argv = [
        "segment",
        "--image",
        str(folder / "img.png"),
        "--click",
        f"{x},{y}",
        "--click",
        "2,2,neg",
        "--reference",
        f"{folder / 'img.png'}:{folder / 'gt.png'}",
        "--device",
        "cpu",
        "-o",
        str(out),
        "--overlay",
        str(tmp_path / "ov.png"),
    ]
    assert main(argv) == 0
    assert "candidates" in capsys.readouterr().out
    assert mask_iou(load_mask(out), gt) > 0.8
    with pytest.raises(SystemExit):
        main(["segment", "--image", str(folder / "img.png"), "--click", "80;100", "-o", str(out)])


def test_bench_click_writes_json_and_report(tmp_path, capsys):
    folder = str(data_dir("GrabCut"))
    out, path = tmp_path / "report", tmp_path / "r.json"
    argv = [
        "bench",
        "click",
        "--data",
        folder,
        "--limit",
        "1",
        "--max-clicks",
        "5",
        "--methods",
        "sam",
        "--device",
        "cpu",
        "--json",
        str(path),
        "--out",
        str(out),
        "--overlays",
        "1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "GrabCut" in printed and "miou@1" in printed
    result = json.loads(path.read_text())
    assert (
        set(result) >= {"summary", "per_image", "config"}
        and result["summary"]["sam"]["images"] == 1
    )
    assert "![](overlays/" in (out / "report.md").read_text()
    assert main(["bench", "click", "--data", folder, "--methods", "nope"]) == 2
    assert "unknown click method" in capsys.readouterr().err


def test_bench_refine_stages_prints_both_sizes(tmp_path, capsys):
    folder = str(data_dir("GrabCut"))
    path = tmp_path / "stages.json"
    argv = [
        "bench",
        "refine-stages",
        "--data",
        folder,
        "--limit",
        "1",
        "--scale",
        "2",
        "--variant",
        "lite",
        "--device",
        "cpu",
        "--json",
        str(path),
    ]
    assert main(argv) == 0
    assert "non_sam_total" in capsys.readouterr().out
    stages = json.loads(path.read_text())["stages"]
    assert set(stages) == {"original", "x2"} and stages["x2"]["experts"] > 0


def test_serve_help_documents_every_setting(capsys):
    from ls_backend.config import OPTIONS

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for _, _, var, flag, _ in OPTIONS:
        assert f"env {var}" in text and flag in text


def test_a_flag_overrides_its_environment_variable(monkeypatch):
    from promptmoe_cli.main import build_parser
    from promptmoe_cli.options import settings

    monkeypatch.setenv("EMBEDDING_CACHE_MB", "64")
    monkeypatch.setenv("MAX_REFERENCES", "3")
    args = build_parser().parse_args(["serve", "--max-references", "5"])
    loaded = settings(args)
    assert loaded.max_references == 5 and loaded.engine.cache_mb == 64.0


def test_annotate_takes_the_ray_address_from_the_environment_or_the_flag(monkeypatch):
    from promptmoe_cli.main import build_parser
    from promptmoe_cli.options import settings

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    parser = build_parser()
    argv = ["annotate", "--images", "imgs", "--out", "import.json"]
    assert settings(parser.parse_args(argv)).ray_address == "10.0.0.5:6379"
    given = parser.parse_args([*argv, "--ray-address", "127.0.0.1:6380"])
    assert settings(given).ray_address == "127.0.0.1:6380"


def test_bench_annotate_refuses_a_worker_count_below_one(capsys):
    argv = ["bench", "annotate", "--data", "nowhere", "--workers", "1,0"]
    assert main(argv) == 2
    assert "--workers must be positive" in capsys.readouterr().err
