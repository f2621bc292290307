"""A folder of images with draft masks as Label Studio tasks, and the import file they make.

Each image becomes a task whose ``data`` holds the image as a Label Studio local file
(``/data/local-files/?d=<path under root>``), the draft mask of the same file stem from
the drafts folder (under ``MASK_DATA_KEY``) and the draft's ``label``.  The backend reads
these paths from ``LOCAL_FILES_DOCUMENT_ROOT`` = ``root``, and so does Label Studio once
the import file is imported with the same document root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from promptmoe_plugin.atomic import replaced_atomically
from promptmoe_plugin.eval.datasets import IMAGE_SUFFIXES

LOCAL_FILES = "/data/local-files/?d="


def brush_config(labels: Sequence[str]) -> str:
    """The labeling config of a folder's import: an image and its brush ``labels``."""
    items = "".join(f"<Label value={quoteattr(label)}/>" for label in labels)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<BrushLabels name="brush" toName="image">{items}</BrushLabels></View>'
    )


def _images(folder: Path, what: str) -> dict[str, Path]:
    """Image files of ``folder`` by stem (the first of a name in sorted order)."""
    if not folder.is_dir():
        raise ValueError(f"{what} folder {folder} does not exist")
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            out.setdefault(path.stem, path)
    return out


def files_root(*folders: Path) -> Path:
    """The folder every one of ``folders`` lies under (their common path)."""
    return Path(os.path.commonpath([f.resolve() for f in folders]))


def local_url(path: Path, root: Path) -> str:
    """``path`` as a Label Studio local-file URL under ``root``."""
    return LOCAL_FILES + quote(str(path.resolve().relative_to(root.resolve())))


def folder_tasks(
    images: Path, drafts: Path | None, label: str, root: Path, mask_key: str = "mask"
) -> list[tuple[str, dict]]:
    """``(image file name, task)`` for every image of ``images`` in name order; a task
    has a draft (``data[mask_key]`` and ``data["label"]``) when ``drafts`` holds a mask
    image of the same stem.  Files must lie under ``root``.

    Raises:
        ValueError: a folder is missing, holds no images, or lies outside ``root``.
    """
    found = _images(images, "image")
    if not found:
        raise ValueError(f"image folder {images} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    masks = _images(drafts, "drafts") if drafts is not None else {}
    for folder in (images, drafts):
        if folder is not None and not folder.resolve().is_relative_to(root.resolve()):
            raise ValueError(f"{folder} is not under the local files root {root}")
    tasks = []
    for stem, path in found.items():
        data = {"image": local_url(path, root)}
        if stem in masks:
            data.update({mask_key: local_url(masks[stem], root), "label": label})
        tasks.append((path.name, {"data": data}))
    return tasks


def read_import(path: Path) -> dict[str, dict]:
    """The tasks of an import file written by :func:`write_import`, by image URL (none
    when the file does not exist)."""
    if not path.is_file():
        return {}
    try:
        tasks = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not an import file of promptmoe annotate ({exc})") from exc
    return {t["data"]["image"]: t for t in tasks if isinstance(t, dict) and "data" in t}


def write_import(path: Path, tasks: Iterable[dict]) -> None:
    """Write a Label Studio import file (a JSON list of tasks with ``predictions``)
    atomically: a reader sees the old file or the new one."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(list(tasks), indent=1))
