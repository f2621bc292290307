"""Benchmark datasets: folders of images and ground-truth masks matched by file stem.

:func:`sample_datasets` is the one way the benchmarks, the stage timings, the router
training and the server benchmark pick their images.

Two layouts are recognised: ``img/`` + ``gt/`` (DAVIS-345) and ``data_GT/`` +
``boundary_GT/`` (GrabCut-50).  Mask values:

* ``gt > 0`` is the object; palette PNGs with several object ids are merged into one
  object (the DAVIS-345 protocol);
* in a single-channel mask whose values are a subset of ``{0, 128, 255}`` and that holds
  128, the value 128 is an *ignore* band (GrabCut) excluded from every metric.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..images import ImageError, _open, load_image

log = logging.getLogger(__name__)

#: (image folder, mask folder) pairs, tried in order.
LAYOUTS = (("img", "gt"), ("data_GT", "boundary_GT"))
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
#: Mask value marking the ignore band in 0/128/255 masks.
IGNORE_VALUE = 128


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message says why."""


@dataclass(frozen=True)
class Sample:
    """One image and its ground-truth mask file."""

    name: str
    image_path: Path
    mask_path: Path

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read the pair.

        Returns:
            image ``(H, W, 3) uint8`` RGB, gt ``(H, W) bool`` object, ignore ``(H, W) bool``
            pixels excluded from metrics (never overlapping ``gt``); all in the image frame.

        Raises:
            DatasetError: the mask size differs from the image size.
            ImageError: a file is not a readable image.
        """
        image = load_image(self.image_path)
        gt, ignore = read_gt(self.mask_path)
        if gt.shape != image.shape[:2]:
            raise DatasetError(
                f"{self.name}: mask {self.mask_path} is {gt.shape[1]}x{gt.shape[0]} but image "
                f"{self.image_path} is {image.shape[1]}x{image.shape[0]} (width x height)"
            )
        return image, gt, ignore


def read_gt(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a ground-truth mask file as ``(gt, ignore)``, both ``(H, W) bool``.

    Palette images are read as their indices (all ids > 0 merged); colour masks count a
    pixel as object when any channel is non-zero; see the module doc for the ignore band.
    """
    img = _open(path)
    if img.mode in ("RGBA", "LA", "PA"):
        values = np.asarray(img.getchannel("A"))
    elif img.mode in ("P", "L", "1", "I", "I;16", "F"):
        values = np.asarray(img)
    else:
        values = np.asarray(img.convert("RGB")).max(axis=2)
    if values.ndim != 2:
        raise ImageError(f"{path}: expected a single-channel mask, got shape {values.shape}")
    ignore = np.zeros(values.shape, bool)
    if img.mode != "P":
        present = np.unique(values)
        if IGNORE_VALUE in present and np.isin(present, (0, IGNORE_VALUE, 255)).all():
            ignore = values == IGNORE_VALUE
    gt = (values > 0) & ~ignore
    return gt, ignore


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by file stem (a stem held by two files is an error)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            first = found[path.stem].name
            raise DatasetError(
                f"{folder}: two files share the stem {path.stem!r}: {first}, {path.name}"
            )
        found[path.stem] = path
    return found


def _layout(folder: Path) -> tuple[Path, Path]:
    """The (image folder, mask folder) of ``folder``'s layout (:data:`LAYOUTS`)."""
    for images, masks in LAYOUTS:
        if (folder / images).is_dir() and (folder / masks).is_dir():
            return folder / images, folder / masks
    names = ", ".join(f"{i}/ + {m}/" for i, m in LAYOUTS)
    raise DatasetError(f"{folder}: expected sub-folders {names}")


def load_dataset(folder: str | Path) -> list[Sample]:
    """List the image/mask pairs of ``folder``, sorted by name (the fixed project order).

    Raises:
        DatasetError: no such folder, unknown layout, no pairs, or an image without a mask.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such dataset folder")
    image_dir, mask_dir = _layout(folder)
    images, masks = _files_by_stem(image_dir), _files_by_stem(mask_dir)
    if not images:
        raise DatasetError(f"{image_dir}: no images")
    missing = sorted(set(images) - set(masks))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{folder}: {len(missing)} image(s) without a mask in {mask_dir}: {shown}"
        )
    extra = sorted(set(masks) - set(images))
    if extra:
        log.warning(
            "%s: %d mask(s) without an image ignored: %s", folder, len(extra), ", ".join(extra[:5])
        )
    return [Sample(stem, images[stem], masks[stem]) for stem in sorted(images)]


#: ``<class><NN>_<photo id>`` (COCO_MVal's file stems): the class is the label of a project.
_INSTANCE = re.compile(r"^(?P<label>\D.*?)\d{2}_(?P<photo>\d+)$")


def instance_class(name: str) -> tuple[str, str] | None:
    """``(class, photo id)`` of a sample named ``<class><NN>_<photo id>``, else None."""
    match = _INSTANCE.match(name)
    return (match["label"], match["photo"]) if match else None


def dataset_name(folder: str | Path) -> str:
    """Short name of a dataset folder for tables (its directory name)."""
    return Path(folder).resolve().name


def sample_datasets(
    folders: Sequence[str | Path],
    limit: int | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> list[tuple[str, list[Sample]]]:
    """The samples of each dataset folder, named by :func:`dataset_name`.

    Args:
        folders: dataset folders; their directory names must differ.
        limit: samples taken per folder; None or 0 takes every sample.
        rng: None takes the first ``limit`` samples in name order; a generator takes
            ``limit`` samples at random, drawing one ``rng.permutation`` per folder (also
            when every sample is taken) and keeping them in name order.

    Returns:
        ``(name, samples)`` per folder, in the order of ``folders``.

    Raises:
        ValueError: two folders share a directory name.
        DatasetError: a folder cannot be read (see :func:`load_dataset`).
    """
    names = [dataset_name(f) for f in folders]
    if len(set(names)) != len(names):
        raise ValueError(f"datasets must have distinct folder names, got {names}")
    out = []
    for name, folder in zip(names, folders, strict=True):
        samples = load_dataset(folder)
        if rng is not None:
            order = rng.permutation(len(samples))[: limit or len(samples)]
            samples = [samples[i] for i in sorted(order)]
        elif limit:
            samples = samples[:limit]
        out.append((name, samples))
    return out


def interleave(
    datasets: Sequence[tuple[str, Sequence[Sample]]], n: int | None = None
) -> list[Sample]:
    """The first ``n`` (None: all) samples taken in turn from each dataset (round robin)."""
    out: list[Sample] = []
    for i in range(max((len(s) for _, s in datasets), default=0)):
        out += [s[i] for _, s in datasets if i < len(s)]
    return out[:n]
