"""Result cache: a decision is reused when nothing that shaped it changed.

The key of one model decision is a hash of the item text, the prompt fingerprint of its policy
group (policy content + versions, templates, prompt settings), the model and the sampling
settings. In per-policy mode each policy is its own group, so editing one policy recomputes only
that policy's decisions. Only valid decisions are cached, never errors.

Stored in SQLite (WAL, ``synchronous=NORMAL``). Every write is committed at once (its own short
transaction), so no transaction is held open while a process is idle: several processes (a
``cotmod serve --cache C`` and a ``cotmod run --cache C``) share one file, each sees the others'
entries as soon as they are written, and closing (or not closing) a cache loses nothing already
put. A crash can lose at most the last writes that had not reached the disk (WAL with
``synchronous=NORMAL``), never a verdict (the run's output file is the record).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, NoReturn, Protocol

from .._exceptions import ConfigError, CotmodError

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
    on its cache thread.

    Every :meth:`put` is committed at once (autocommit: no transaction stays open between calls),
    so other processes see the entry immediately and can write between this process's writes.
    A write that finds another process writing waits for it (SQLite's busy timeout, ``timeout``
    seconds); if the lock still cannot be taken, or the file is unusable, the call raises a
    :class:`~cotmod.CotmodError` naming the file (a :class:`~cotmod.ConfigError` when the file is
    not a SQLite database), never a ``sqlite3`` exception.

    ``commit_every`` and ``commit_seconds`` are accepted for compatibility and ignored (writes
    used to be committed in batches, which held the write lock while a process was idle).
    """

    blocking = True

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float = 30.0,
        commit_every: int | None = None,
        commit_seconds: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"result cache {self.path}: cannot create its directory ({exc.strerror or exc})") from None
        try:
            # isolation_level=None: autocommit, each statement is its own transaction
            db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            self._fail(exc, "open")
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS decisions (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            db.close()
            self._fail(exc, "open")
        self._db = db

    def _fail(self, exc: sqlite3.Error, what: str) -> NoReturn:
        """Raise the cotmod error for a failed SQLite call (the sqlite3 exception is not chained:
        the message says everything and the CLI prints it as one line)."""
        msg = str(exc)
        low = msg.lower()
        if "locked" in low or "busy" in low:
            raise CotmodError(
                f"result cache {self.path}: another process kept it locked for more than {self.timeout:g} s "
                f"(cannot {what}); try again, use another cache file, or run without the cache"
            ) from None
        if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in low or "malformed" in low):
            raise ConfigError(
                f"result cache {self.path}: {msg}; it is not a usable cotmod cache: delete it (it only costs model "
                "calls) or give another cache file"
            ) from None
        raise CotmodError(f"result cache {self.path}: cannot {what} ({msg})") from None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise CotmodError(f"result cache {self.path}: used after close()")
        return self._db

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            try:
                row = self._conn().execute("SELECT value FROM decisions WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                self._fail(exc, "read")
        if row is None:
            return None
        value: dict[str, Any] = json.loads(row[0])
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, ensure_ascii=False)
        with self._lock:
            try:
                self._conn().execute(
                    "INSERT OR REPLACE INTO decisions (key, value, created) VALUES (?, ?, ?)",
                    (key, text, time.time()),
                )
            except sqlite3.Error as exc:
                self._fail(exc, "write")

    def __len__(self) -> int:
        with self._lock:
            try:
                return int(self._conn().execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
            except sqlite3.Error as exc:
                self._fail(exc, "read")

    def close(self) -> None:
        """Close the connection (idempotent). Every entry put is already committed."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
