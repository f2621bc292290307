"""Brush masks as polygons for projects with <PolygonLabels>."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ls_backend.label_config import parse_label_config
from ls_backend.polygons import mask_to_polygons


def test_each_part_becomes_one_polygon_that_redraws_the_mask():
    mask = np.zeros((60, 80), bool)
    mask[5:25, 10:40] = True  # 600 px
    yy, xx = np.mgrid[:60, :80]
    mask |= (yy - 42) ** 2 + (xx - 60) ** 2 < 12**2  # ~450 px
    mask[55, 2] = True  # a speck below min_area
    polys = mask_to_polygons(mask)
    assert len(polys) == 2 and all(p.shape[1] == 2 and len(p) >= 3 for p in polys)
    redrawn = np.zeros((60, 80), np.uint8)
    cv2.fillPoly(redrawn, [np.round(p).astype(np.int32) for p in polys], 1)
    inter, union = (redrawn.astype(bool) & mask).sum(), (redrawn.astype(bool) | mask).sum()
    assert inter / union > 0.9
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    with pytest.raises(ValueError, match="shape"):
        mask_to_polygons(np.zeros((2, 2, 2), bool))


def test_label_config_finds_polygon_tag():
    cfg = parse_label_config("""<View><Image name="img" value="$url"/>
      <BrushLabels name="b" toName="img"><Label value="A"/></BrushLabels>
      <PolygonLabels name="poly" toName="img"><Label value="A"/></PolygonLabels></View>""")
    assert cfg.polygon_from == "poly" and cfg.image_key == "url"
