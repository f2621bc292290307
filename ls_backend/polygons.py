"""Brush masks as polygons, for projects that also want ``<PolygonLabels>`` (COCO/YOLO export)."""

from __future__ import annotations

import cv2
import numpy as np


def mask_to_polygons(
    mask: np.ndarray, tolerance: float = 1.0, min_area: float = 16.0
) -> list[np.ndarray]:
    """Outer contours of ``mask`` ``(H, W) bool`` (image frame) as ``(K, 2) float64`` x, y
    pixel polygons with ``K >= 3``, simplified to ``tolerance`` pixels (Douglas-Peucker).

    Each connected part with at least ``min_area`` pixels gives one polygon, largest first;
    holes are not represented (Label Studio polygons have none).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = []
    for contour in sorted(contours, key=cv2.contourArea, reverse=True):
        if cv2.contourArea(contour) < min_area:
            continue
        poly = cv2.approxPolyDP(contour, tolerance, closed=True)[:, 0, :].astype(np.float64)
        if len(poly) >= 3:
            out.append(poly)
    return out
