"""Settings (the one loader), labeling config parsing and the reference store."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from ls_backend.config import OPTIONS, EngineSettings, Settings, load_settings
from ls_backend.label_config import LabelConfigError, parse_label_config
from ls_backend.references import ReferenceStore, pack_mask, unpack_mask

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="brush" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Cat" smart="true"/><Label value="Dog" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="Cat"/><Label value="Dog"/>
  </RectangleLabels>
</View>"""


def test_settings_from_env_parse_and_validate(tmp_path):
    s = load_settings(
        {
            "MODEL_DIR": str(tmp_path),
            "MAX_REFERENCES": "3",
            "ALLOWED_IMAGE_HOSTS": "a, B",
            "LABEL_STUDIO_URL": "http://h:8080/",
            "IMAGE_TIMEOUT": "2.5",
            "EMBEDDING_CACHE_MB": "64",
            "SMARTSAM_SELECTOR": "dinov2",
            "PROMPTMOE_DEPTH_MODEL": "depth-model",
            "MASK_DATA_KEY": "",
            "SMARTSAM_HOLD_AREA": "None",
            "SMARTSAM_HOLD_AREA_REFERENCES": "0.1",
            "SMARTSAM_SWITCH": "None",
        }
    )
    assert s.model_dir == tmp_path and s.max_references == 3 and s.allowed_hosts == ("a", "b")
    assert s.label_studio_url == "http://h:8080" and s.image_timeout == 2.5
    assert s.intent == "dinov2" and s.depth_model == "depth-model" and s.mask_data_key == "mask"
    assert s.engine == EngineSettings(cache_mb=64.0) and s.local_files_root is None
    assert s.hold_area is None and s.hold_area_references == 0.1
    assert Settings().hold_area == 0.08 and Settings().hold_area_references is None
    assert s.smartsam_switch is None and Settings().smartsam_switch == "default"
    with pytest.raises(ValueError, match="SMARTSAM_SWITCH: cannot read switch weights"):
        load_settings({"SMARTSAM_SWITCH": str(tmp_path / "missing.json")})
    with pytest.raises(ValueError, match="BASIC_AUTH_PASS"):
        load_settings({"BASIC_AUTH_USER": "u"})
    with pytest.raises(ValueError, match="MAX_REFERENCES must be >= 0"):
        load_settings({"MAX_REFERENCES": "-1"})
    with pytest.raises(ValueError, match=r"SMARTSAM_HOLD_AREA must be in 0\.\.1 or none, got 1.5"):
        load_settings({"SMARTSAM_HOLD_AREA": "1.5"})
    with pytest.raises(ValueError, match=r"SMARTSAM_HOLD_AREA_REFERENCES must be in 0\.\.1"):
        load_settings({"SMARTSAM_HOLD_AREA_REFERENCES": "-0.1"})


def test_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("MAX_REFERENCES", "7")
    assert load_settings().max_references == 7  # environ None: the process environment
    env = {
        "DEVICE": "cuda",
        "MAX_REFERENCES": "3",
        "SMARTSAM_SELECTOR": "none",
        "DINOV2_MODEL": "d",
    }
    s = load_settings(
        env, {"device": "cpu", "max_references": "5", "intent": None, "model_dir": ""}
    )
    assert s.engine.device == "cpu" and s.max_references == 5  # flags given: they win
    assert s.intent == "none" and s.dinov2_model == "d"  # a flag left out (None): the env's
    assert s.model_dir == Path(".")  # an empty flag is a value, an empty variable is not
    assert load_settings({}) == Settings()
    assert load_settings({"IMAGE_TIMEOUT": "x"}, {"image_timeout": "5"}).image_timeout == 5.0
    with pytest.raises(ValueError, match="unknown settings.*'selector'"):
        load_settings({}, {"selector": "sam"})


@pytest.mark.parametrize(
    "env, overrides, message",
    [
        ({"MAX_REFERENCES": "many"}, {}, "MAX_REFERENCES: cannot parse 'many'"),
        ({"EMBEDDING_CACHE_MB": "lots"}, {}, "EMBEDDING_CACHE_MB: cannot parse 'lots'"),
        ({"SMARTSAM_HOLD_AREA": "big"}, {}, "SMARTSAM_HOLD_AREA: cannot parse 'big'"),
        ({"MAX_IMAGE_MB": "8"}, {"max_image_mb": "8MB"}, "--max-image-mb: cannot parse '8MB'"),
    ],
)
def test_a_bad_number_names_its_variable(env, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_settings(env, overrides)


def test_every_setting_has_one_option():
    engine = {f.name for f in fields(EngineSettings)}
    backend = {f.name for f in fields(Settings)} - {"engine"}
    assert {o.field for o in OPTIONS if o.section == "engine"} == engine
    assert {o.field for o in OPTIONS if o.section == "backend"} == backend
    for column in ("field", "env", "flag"):
        values = [getattr(o, column) for o in OPTIONS]
        assert len(set(values)) == len(values), f"duplicate {column}"
    assert all(o.flag.startswith("--") and "(env" not in o.help for o in OPTIONS)


def test_label_config_finds_brush_and_smart_tools():
    cfg = parse_label_config(CONFIG)
    assert (cfg.brush_from, cfg.image_to, cfg.image_key) == ("brush", "image", "image")
    assert cfg.labels == ("Cat", "Dog")
    assert dict(cfg.smart_tools) == {"kp": "keypoints", "rect": "rectangle"}


@pytest.mark.parametrize(
    "config, message",
    [
        ("", "empty"),
        ("<View><Image name='i' value='$img'/>", "cannot parse"),
        (
            "<View><Image name='i' value='$img'/><RectangleLabels name='r' toName='i'>"
            "<Label value='A'/></RectangleLabels></View>",
            "no <BrushLabels>",
        ),
    ],
)
def test_label_config_errors_say_what_to_fix(config, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(config)


def test_mask_packing_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 61)) < 0.3
    assert np.array_equal(unpack_mask(pack_mask(mask), 37, 61), mask)


def _masks(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.random((20, 30)) < 0.5 for _ in range(n)]


def test_references_survive_reopen_and_delete(tmp_path):
    store = ReferenceStore(tmp_path)
    a, b, c = _masks(3)
    store.replace_annotation(
        "1", 10, 5, "/data/upload/1/a.png", [("0:x", "Cat", a), ("1:y", "Dog", b)]
    )
    store.replace_annotation("1", 11, 6, "/data/upload/1/b.png", [("0:z", "Cat", c)])
    store.replace_annotation("2", 12, 7, "/data/upload/2/c.png", [("0:w", "Cat", c)])
    reopened = ReferenceStore(tmp_path)
    cats = reopened.references("1", "Cat", limit=8)
    assert [r.annotation for r in cats] == [11, 10]  # newest first, one project only
    assert np.array_equal(cats[1].mask, a) and cats[1].image_url == "/data/upload/1/a.png"
    reopened.put_features(cats[0], "sam", np.arange(4, dtype=np.float32))
    assert reopened.features(cats[0], "sam").tolist() == [0, 1, 2, 3]
    assert reopened.features(cats[0], "dinov2") is None
    # An update replaces the annotation's regions; a delete removes them and their features.
    reopened.replace_annotation("1", 11, 6, "/data/upload/1/b.png", [])
    assert reopened.count("1") == {"Cat": 1, "Dog": 1}
    assert reopened.delete_annotation(None, 10) == 2
    assert reopened.count("1") == {} and reopened.count("2") == {"Cat": 1}


def test_drafts_pair_with_final_annotations(tmp_path):
    store = ReferenceStore(tmp_path)
    draft, final, other = _masks(3)
    store.put_draft("1", 5, "Cat", "/img.png", draft)
    assert store.pair_annotation("1", 10, 5, {"Cat": final, "Dog": other}) == 1  # no Dog draft
    (pair,) = store.pairs()
    assert (
        pair.label == "Cat"
        and np.array_equal(pair.draft, draft)
        and np.array_equal(pair.final, final)
    )
    assert store.pair_annotation("1", 10, 5, {"Cat": final[:10]}) == 0  # size mismatch -> no pair
    assert store.pairs() == []
    assert store.pairs_fingerprint()[0] == 0


def test_router_versions_are_kept_relative_to_the_model_dir(tmp_path):
    store = ReferenceStore(tmp_path)
    assert store.current_router() is None and store.next_router_version() == 1
    path = tmp_path / "routers" / "router-r1.pt"
    assert store.add_router(1, path, 3, {"gain": 0.1}) == 1 and store.current_router() == (1, path)
    assert store.next_router_version() == 2
    with pytest.raises(sqlite3.IntegrityError):  # a version is recorded once
        store.add_router(1, path, 3, {})
    store.add_router(2, tmp_path / "routers" / "router-r2.pt", 3, {})
    with store._tx() as db:
        assert db.execute("SELECT path FROM routers ORDER BY version").fetchall() == [
            ("routers/router-r1.pt",),
            ("routers/router-r2.pt",),
        ]
    assert [v for v, _ in store.routers()] == [2, 1]


def test_annotation_digests_go_with_the_annotation(tmp_path):
    store = ReferenceStore(tmp_path)
    assert store.annotation_digest("1", 10) is None
    store.mark_annotation("1", 10, 5, "abc")
    assert store.annotation_digest("1", 10) == "abc" and store.annotation_digest("2", 10) is None
    store.replace_annotation("1", 10, 5, "/a.png", [])  # a replace starts over
    assert store.annotation_digest("1", 10) is None
    store.mark_annotation("1", 10, 5, "abc")
    store.delete_annotation(None, 10)
    assert store.annotation_digest("1", 10) is None


def _write_then_die(path: str) -> None:
    store = ReferenceStore(path)
    store.replace_annotation("1", 1, 1, "/a.png", [("0", "Cat", np.ones((8, 8), bool))])
    with store._tx() as db:  # a write in progress when the process dies
        db.execute("DELETE FROM refs")
        os._exit(1)


def test_crash_mid_write_keeps_committed_data(tmp_path):
    proc = multiprocessing.get_context("fork").Process(
        target=_write_then_die, args=(str(tmp_path),)
    )
    proc.start()
    proc.join(30)
    assert proc.exitcode == 1
    refs = ReferenceStore(tmp_path).references("1", "Cat", 8)
    assert len(refs) == 1 and refs[0].mask.all()
