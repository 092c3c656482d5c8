"""Result cache: a decision is reused when nothing that shaped it changed.

The key of one model decision is a hash of the item text, the prompt fingerprint of its policy
group (policy content + versions, templates, prompt settings), the model and the sampling
settings. In per-policy mode each policy is its own group, so editing one policy recomputes only
that policy's decisions. Only valid decisions are cached, never errors.

Stored in SQLite (WAL). Writes are committed in small batches; a crash loses at most the last
uncommitted entries of the cache, never a verdict (the run's output file is the record).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Cache", "MemoryCache", "SqliteCache", "cache_key"]


def cache_key(text: str, fingerprint: str, model: str, sampling: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([fingerprint, model, sampling], sort_keys=True).encode())
    h.update(b"\0")
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class Cache(Protocol):
    """What a result cache provides. The moderator calls ``get``/``put`` on its own cache thread
    (off the event loop), one call at a time; a cache whose calls never block may set a class
    attribute ``blocking = False`` to be called on the loop directly."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MemoryCache:
    """A dict-backed cache (tests, short-lived processes)."""

    blocking = False  # in-memory: called directly on the event loop

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.data[key] = value

    def close(self) -> None:
        pass


class SqliteCache:
    """A persistent cache in one SQLite file, safe to share between processes and threads
    (calls are serialised by a lock). Its calls block on disk I/O, so the moderator runs them
    on its cache thread."""

    blocking = True

    def __init__(self, path: str | Path, *, commit_every: int = 64, commit_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS decisions (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._db.commit()
        self._lock = threading.Lock()
        self._pending = 0
        self._last_commit = time.monotonic()
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM decisions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value: dict[str, Any] = json.loads(row[0])
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO decisions (key, value, created) VALUES (?, ?, ?)",
                (key, json.dumps(value, ensure_ascii=False), time.time()),
            )
            self._pending += 1
            now = time.monotonic()
            if self._pending >= self.commit_every or now - self._last_commit >= self.commit_seconds:
                self._db.commit()
                self._pending = 0
                self._last_commit = now

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.commit()
            self._db.close()
