"""Write a file so that a reader sees the old one or the new one, never a part (a folder:
never a part of one).

Every writer of a shared cache or an output file (the embedding disk cache, the exported
ONNX graphs, an import file, a refitted selector) writes under a temporary name beside the
target, private to its process and thread, and renames it over the target when done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path


def private_name(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden name beside ``path`` that no other process or thread uses:
    ``.<name>.<pid>.<thread id><suffix>``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{suffix}")


def _remove(path: Path) -> None:
    """Remove a file or a folder tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def replaced_atomically(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a :func:`private_name` for ``path``; when the block ends without an error,
    rename what the block wrote there to ``path``.  A folder replaces an existing folder of
    that name, which is removed first: a reader may find neither for an instant, so
    readers of a folder take the writer's lock.  Whatever is left under the temporary name
    is removed in every case, so an error inside the block leaves ``path`` as it was.

    ``suffix`` ends the temporary name (``".tmp.npy"`` for :func:`numpy.save`, which
    appends ``.npy`` otherwise).
    """
    tmp = private_name(path, suffix)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)
