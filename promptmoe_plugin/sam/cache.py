"""A thread-safe LRU cache bounded in megabytes (image embeddings and per-image results)."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)

V = TypeVar("V")


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (shape, dtype and pixels): the cache key."""
    arr = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{arr.shape}{arr.dtype}".encode())
    digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    capacity_bytes: int = 0


class LRUCache(Generic[V]):
    """Least-recently-used cache whose total size stays at or below ``capacity_mb``.

    Each entry's size in bytes is given by the caller.  An entry larger than the whole
    capacity is not stored.  All methods are safe to call from several threads.
    """

    def __init__(self, capacity_mb: float):
        if capacity_mb < 0:
            raise ValueError(f"cache capacity must be >= 0 MB, got {capacity_mb}")
        self.capacity_mb = capacity_mb
        self._capacity = int(capacity_mb * 1024 * 1024)
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, key: Hashable) -> V | None:
        """The value of ``key`` (now the most recently used), or None when absent."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return item[0]

    def put(self, key: Hashable, value: V, nbytes: int) -> None:
        """Store ``value`` of ``nbytes`` under ``key``, evicting the least recently used
        entries beyond the capacity."""
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if nbytes > self._capacity:
                log.debug("cache entry of %d bytes exceeds capacity; not stored", nbytes)
                return
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self._capacity:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1

    def pop(self, key: Hashable) -> V | None:
        """Remove the entry ``key`` and return its value; None when absent."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._bytes -= item[1]
            return item[0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                entries=len(self._items),
                bytes=self._bytes,
                capacity_bytes=self._capacity,
            )
