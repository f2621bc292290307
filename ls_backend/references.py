"""The active-learning store under ``MODEL_DIR``: references, drafts, pairs, router versions.

One SQLite file (WAL journal, ``synchronous=FULL``): every write is one transaction, so
a crash mid-write loses nothing already committed and never leaves half a write.

* **references**: each brush region of a submitted annotation, a labelled exemplar of its
  label for SmartSAM, with SmartSAM's intent features of it cached per intent (the
  ``selector`` column keeps its name, so existing stores stay readable);
* **drafts**: the latest brush draft the backend refined for (project, task, label);
* **pairs**: (draft, final) masks of a task once it is annotated, to refit the router;
* **annotations**: a digest of each stored annotation's content, written last, so a
  webhook event delivered twice stores nothing new;
* **routers**: refitted router versions, each a weights file recorded by its path relative
  to ``MODEL_DIR`` (``routers/router-r<N>.pt``), only once the file is complete; the
  newest readable one is the current model version.

Masks are stored bit-packed and zlib-compressed with their height and width.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    project TEXT NOT NULL, annotation INTEGER NOT NULL, region TEXT NOT NULL,
    task INTEGER, label TEXT NOT NULL, image_url TEXT NOT NULL,
    height INTEGER NOT NULL, width INTEGER NOT NULL, mask BLOB NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (project, annotation, region));
CREATE INDEX IF NOT EXISTS refs_label ON refs (project, label, created);
CREATE TABLE IF NOT EXISTS ref_features (
    project TEXT NOT NULL, annotation INTEGER NOT NULL, region TEXT NOT NULL,
    selector TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (project, annotation, region, selector));
CREATE TABLE IF NOT EXISTS drafts (
    project TEXT NOT NULL, task INTEGER NOT NULL, label TEXT NOT NULL, image_url TEXT NOT NULL,
    height INTEGER NOT NULL, width INTEGER NOT NULL, mask BLOB NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (project, task, label));
CREATE TABLE IF NOT EXISTS pairs (
    project TEXT NOT NULL, annotation INTEGER NOT NULL, label TEXT NOT NULL,
    task INTEGER NOT NULL, image_url TEXT NOT NULL,
    height INTEGER NOT NULL, width INTEGER NOT NULL, draft BLOB NOT NULL, final BLOB NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (project, annotation, label));
CREATE TABLE IF NOT EXISTS annotations (
    project TEXT NOT NULL, annotation INTEGER NOT NULL, task INTEGER NOT NULL,
    digest TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (project, annotation));
CREATE TABLE IF NOT EXISTS routers (
    version INTEGER PRIMARY KEY, path TEXT NOT NULL, pairs INTEGER NOT NULL,
    figures TEXT NOT NULL, created REAL NOT NULL);
"""


def pack_mask(mask: np.ndarray) -> bytes:
    """``(H, W) bool`` -> compressed bytes (shape stored separately)."""
    return zlib.compress(np.packbits(np.asarray(mask, bool).reshape(-1)).tobytes(), 6)


def unpack_mask(blob: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_mask`: ``(height, width) bool``."""
    bits = np.unpackbits(np.frombuffer(zlib.decompress(blob), np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)


@dataclass
class Reference:
    """One stored exemplar: ``mask`` ``(H, W) bool`` in its image's frame."""

    project: str
    annotation: int
    region: str
    label: str
    image_url: str
    mask: np.ndarray


@dataclass
class Pair:
    """A refined draft and the mask the annotator submitted, ``(H, W) bool`` each."""

    label: str
    image_url: str
    draft: np.ndarray
    final: np.ndarray


class ReferenceStore:
    """The SQLite store at ``<model_dir>/references.sqlite3``; safe to share between threads."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "references.sqlite3"
        self._lock = threading.Lock()
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)  # CREATE ... IF NOT EXISTS, committed as one script
        finally:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction on a fresh connection, committed on success, rolled back on error."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            with self._lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        finally:
            db.close()

    # ------------------------------------------------------------------ references
    def replace_annotation(
        self,
        project: str,
        annotation: int,
        task: int,
        image_url: str,
        regions: list[tuple[str, str, np.ndarray]],
    ) -> None:
        """Make ``regions`` ``[(region_id, label, mask (H, W) bool), ...]`` the references of
        ``annotation`` (earlier ones of that annotation are dropped), in one transaction."""
        now = time.time()
        with self._tx() as db:
            self._delete_annotation(db, project, annotation, pairs=False)
            for i, (region, label, mask) in enumerate(regions):
                db.execute(
                    "INSERT INTO refs VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        project,
                        annotation,
                        region,
                        task,
                        label,
                        image_url,
                        *mask.shape,
                        pack_mask(mask),
                        now + i * 1e-6,
                    ),
                )

    def delete_annotation(self, project: str | None, annotation: int) -> int:
        """Remove the references and pairs of an annotation; returns the references removed.

        ``project`` None matches any project (Label Studio's bulk delete names only ids).
        """
        with self._tx() as db:
            return self._delete_annotation(db, project, annotation, pairs=True)

    @staticmethod
    def _delete_annotation(
        db: sqlite3.Connection, project: str | None, annotation: int, pairs: bool
    ) -> int:
        where, args = (
            ("project=? AND annotation=?", (project, annotation))
            if project
            else ("annotation=?", (annotation,))
        )
        n = db.execute(f"DELETE FROM refs WHERE {where}", args).rowcount
        db.execute(f"DELETE FROM ref_features WHERE {where}", args)
        db.execute(f"DELETE FROM annotations WHERE {where}", args)
        if pairs:
            db.execute(f"DELETE FROM pairs WHERE {where}", args)
        return n

    def annotation_digest(self, project: str, annotation: int) -> str | None:
        """The content digest recorded by :meth:`mark_annotation` for ``annotation``, or None
        (never stored, deleted, or replaced since)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT digest FROM annotations WHERE project=? AND annotation=?",
                (project, annotation),
            ).fetchone()
        return None if row is None else row[0]

    def mark_annotation(self, project: str, annotation: int, task: int, digest: str) -> None:
        """Record that ``annotation``'s content ``digest`` is fully stored (references,
        pairs, features): the same event delivered again then changes nothing."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO annotations VALUES (?,?,?,?,?)",
                (project, annotation, task, digest, time.time()),
            )

    def references(self, project: str, label: str, limit: int) -> list[Reference]:
        """The newest ``limit`` references of ``label`` in ``project``, newest first."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT annotation, region, image_url, height, width, mask FROM refs "
                "WHERE project=? AND label=? ORDER BY created DESC LIMIT ?",
                (project, label, limit),
            ).fetchall()
        return [
            Reference(project, a, r, label, url, unpack_mask(m, h, w))
            for a, r, url, h, w, m in rows
        ]

    def count(self, project: str | None = None) -> dict[str, int]:
        """Number of references per label (of one project, or all)."""
        q = (
            "SELECT label, COUNT(*) FROM refs"
            + (" WHERE project=?" if project else "")
            + " GROUP BY label"
        )
        with self._tx() as db:
            return dict(db.execute(q, (project,) if project else ()).fetchall())

    def features(self, ref: Reference, intent: str) -> np.ndarray | None:
        """The stored features of ``ref`` for the intent named ``intent``, or None."""
        with self._tx() as db:
            row = db.execute(
                "SELECT data FROM ref_features "
                "WHERE project=? AND annotation=? AND region=? AND selector=?",
                (ref.project, ref.annotation, ref.region, intent),
            ).fetchone()
        return None if row is None else np.load(io.BytesIO(row[0]), allow_pickle=False)

    def put_features(self, ref: Reference, intent: str, features: np.ndarray) -> None:
        """Keep ``features`` of ``ref`` for the intent named ``intent`` (unless ``ref`` was
        deleted meanwhile)."""
        buf = io.BytesIO()
        np.save(buf, np.asarray(features), allow_pickle=False)
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM refs WHERE project=? AND annotation=? AND region=?",
                (ref.project, ref.annotation, ref.region),
            ).fetchone():
                db.execute(
                    "INSERT OR REPLACE INTO ref_features VALUES (?,?,?,?,?)",
                    (ref.project, ref.annotation, ref.region, intent, buf.getvalue()),
                )

    # ------------------------------------------------------------------ drafts and pairs
    def put_draft(
        self, project: str, task: int, label: str, image_url: str, mask: np.ndarray
    ) -> None:
        """Remember the draft ``(H, W) bool`` (union of the label's draft regions) that the
        backend refined for (task, label)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO drafts VALUES (?,?,?,?,?,?,?,?)",
                (project, task, label, image_url, *mask.shape, pack_mask(mask), time.time()),
            )

    def pair_annotation(
        self, project: str, annotation: int, task: int, finals: dict[str, np.ndarray]
    ) -> int:
        """Store a (draft, final) pair for each label of ``finals`` ``{label: (H, W) bool}``
        (the union of the annotation's regions of that label) whose (task, label) had a
        draft; returns how many pairs were stored."""
        n = 0
        with self._tx() as db:
            db.execute("DELETE FROM pairs WHERE project=? AND annotation=?", (project, annotation))
            for label, final in finals.items():
                row = db.execute(
                    "SELECT image_url, height, width, mask FROM drafts "
                    "WHERE project=? AND task=? AND label=?",
                    (project, task, label),
                ).fetchone()
                if row is None or (row[1], row[2]) != final.shape:
                    continue
                db.execute(
                    "INSERT INTO pairs VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        project,
                        annotation,
                        label,
                        task,
                        row[0],
                        row[1],
                        row[2],
                        row[3],
                        pack_mask(final),
                        time.time(),
                    ),
                )
                n += 1
        return n

    def pairs(self, project: str | None = None) -> list[Pair]:
        q = "SELECT label, image_url, height, width, draft, final FROM pairs" + (
            " WHERE project=?" if project else ""
        )
        with self._tx() as db:
            rows = db.execute(q + " ORDER BY created", (project,) if project else ()).fetchall()
        return [
            Pair(lab, url, unpack_mask(d, h, w), unpack_mask(f, h, w))
            for lab, url, h, w, d, f in rows
        ]

    def pairs_fingerprint(self) -> tuple[int, float]:
        """Changes whenever a pair is added, replaced or deleted (count, sum of times)."""
        with self._tx() as db:
            return tuple(db.execute("SELECT COUNT(*), TOTAL(created) FROM pairs").fetchone())

    # ------------------------------------------------------------------ router versions
    def next_router_version(self) -> int:
        """The version number the next :meth:`add_router` records."""
        with self._tx() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM routers").fetchone()
        return last + 1

    def add_router(self, version: int, path: Path, pairs: int, figures: dict) -> int:
        """Record router ``version`` whose complete weights file is at ``path`` (kept relative
        to ``MODEL_DIR`` when it lies inside it); returns ``version``.  Raises
        ``sqlite3.IntegrityError`` if that version exists already."""
        path = Path(path)
        try:
            stored = path.resolve().relative_to(self.dir.resolve()).as_posix()
        except ValueError:
            stored = str(path)
        with self._tx() as db:
            db.execute(
                "INSERT INTO routers VALUES (?,?,?,?,?)",
                (version, stored, pairs, json.dumps(figures, default=float), time.time()),
            )
        return version

    def routers(self) -> list[tuple[int, Path]]:
        """Every recorded router version as (version, weights path), newest first.  Paths are
        resolved against ``MODEL_DIR``; an absolute path of an older store that no longer
        exists (``MODEL_DIR`` was moved) is looked up under ``<MODEL_DIR>/routers/``."""
        with self._tx() as db:
            rows = db.execute("SELECT version, path FROM routers ORDER BY version DESC").fetchall()
        return [(version, self._router_path(path)) for version, path in rows]

    def _router_path(self, stored: str) -> Path:
        path = Path(stored)
        if not path.is_absolute():
            return self.dir / path
        if path.exists():
            return path
        return self.dir / "routers" / path.name

    def current_router(self) -> tuple[int, Path] | None:
        """(version, weights path) of the newest recorded router, or None."""
        versions = self.routers()
        return versions[0] if versions else None
