"""The run store: an append-only verdict file, its dead-letter file and its manifest.

* ``<output>`` holds one verdict (JSON) per line, each written with one ``write`` call.
* ``<output>.errors.jsonl`` (``out.errors.jsonl`` for ``out.jsonl``) holds the dead letters: items
  that got no verdict, with their line, error type, message, raw output and attempts.
* ``<output>.manifest.json`` records the configuration (policies, prompt fingerprint, model,
  sampling) that wrote them.
* ``<output>.lock`` exists while a run writes the output: an OS advisory lock (``flock``) on it
  makes a second run on the same output refuse to start; the OS releases it when the process
  ends, however it ends.

Nothing written is ever deleted by a resume: only a torn *final* line (no trailing newline, from a
kill during a write) is repaired. Any other unreadable line, or a second verdict for an id, stops
with ``FILE:LINE: ...``.
Everything written is valid UTF-8.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError, CotmodError, InputError

__all__ = [
    "Appender",
    "DeadLetter",
    "IdSet",
    "OutputLock",
    "errors_path",
    "manifest_path",
    "read_dead_letters",
    "read_manifest",
    "repair_jsonl",
    "scan_jsonl",
    "write_json_atomic",
]

# errors that mean "this path cannot be used" (the user's to fix) rather than a runtime failure
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.EEXIST}


def errors_path(output: Path) -> Path:
    """``out.jsonl`` → ``out.errors.jsonl``; any other name gets ``.errors.jsonl`` appended."""
    return output.with_suffix(".errors.jsonl") if output.suffix == ".jsonl" else output.with_name(output.name + ".errors.jsonl")


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def os_error(path: Path, exc: OSError, what: str = "write") -> CotmodError:
    """One clear error for an OS failure on ``path``: a path problem is a ConfigError (exit 2),
    anything else (disk full, I/O error) a runtime failure."""
    reason = exc.strerror or str(exc)
    if exc.errno in _PATH_ERRNOS:
        return ConfigError(f"cannot {what} {path}: {reason}; choose another --output (or fix its directory's permissions)")
    return CotmodError(f"cannot {what} {path}: {reason}")


class IdSet:
    """A set of 64-bit id digests in a numpy open-addressing table: ~16 bytes per id instead of
    ~80 for a Python set of ints, so memory stays flat-ish for millions of ids."""

    def __init__(self, capacity: int = 1024) -> None:
        import numpy as np

        self._np = np
        cap = 1 << max(10, (capacity * 2 - 1).bit_length())
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def _slot(self, key: int) -> int:
        keys = self._keys
        mask = len(keys) - 1
        i = (key * 0x9E3779B97F4A7C15 >> 17) & mask
        while True:
            k = int(keys[i])
            if k == 0 or k == key:
                return int(i)
            i = (i + 1) & mask

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        key = key or 1
        return int(self._keys[self._slot(key)]) == key

    def add(self, key: int) -> None:
        key = key or 1
        i = self._slot(key)
        if int(self._keys[i]) == key:
            return
        self._keys[i] = key
        self._n += 1
        if self._n * 2 > len(self._keys):
            old = self._keys[self._keys != 0]
            self._keys = self._np.zeros(len(self._keys) * 2, dtype=self._np.uint64)
            self._n = 0
            for k in old.tolist():
                self.add(int(k))

    def __ior__(self, other: IdSet) -> IdSet:
        for k in other._keys[other._keys != 0].tolist():
            self.add(int(k))
        return self

    def __or__(self, other: IdSet) -> IdSet:
        out = IdSet(len(self) + len(other))
        out |= self
        out |= other
        return out


def digest(value: str) -> int:
    """The 64-bit digest ids are remembered by."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class Appender:
    """Append whole lines with one ``write()`` each, as valid UTF-8; refuse nothing silently
    (disk full → a clear error; what was written before stays)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise os_error(path, exc, "open") from None

    def write(self, obj: dict[str, Any] | str) -> None:
        line = (obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)) + "\n"
        try:
            data = line.encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate slipped through: escape it rather than write invalid UTF-8
            data = (json.dumps(json.loads(line), ensure_ascii=True) + "\n").encode("ascii")
        try:
            n = os.write(self.fd, data)
            if n != len(data):
                raise OSError(errno.EIO, f"short write ({n} of {len(data)} bytes)")
        except OSError as exc:
            raise CotmodError(
                f"cannot write to {self.path}: {exc.strerror or exc}; verdicts already written are kept, "
                "free space and rerun the same command to resume"
            ) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)


_DAMAGED_HINT = ("the file was edited or damaged. Nothing was deleted: fix or remove that line and rerun, or pass "
                 "--overwrite to start over")


def scan_jsonl(path: Path, id_keys: tuple[str, ...], *, hint: str = _DAMAGED_HINT) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    """Every record of an append-only JSONL file (a run store, an audit history, a golden set
    cotmod appends to), after repairing a torn final line.

    A final line without a newline is a write cut short by a kill: if it still parses it is kept
    (the newline is added), otherwise it is cut off. Any other unreadable line, or an object with
    none of ``id_keys``, raises InputError ``FILE:LINE: why; hint``.
    """
    if not path.exists():
        return
    good_end = 0
    torn_complete = False
    try:
        f = path.open("rb")
    except OSError as exc:
        raise os_error(path, exc, "read") from None
    with f:
        for n, raw in enumerate(f, start=1):
            final = not raw.endswith(b"\n")
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    raise ValueError("blank line")
                obj = json.loads(text)
                if not isinstance(obj, dict) or all(obj.get(k) is None for k in id_keys):
                    raise ValueError(f"not an object with {' or '.join(map(repr, id_keys))}")
            except (ValueError, RecursionError) as exc:
                if final:
                    break  # torn: cut below
                why = (
                    "blank line"
                    if isinstance(exc, ValueError) and str(exc) == "blank line"
                    else "not valid UTF-8"
                    if isinstance(exc, UnicodeDecodeError)
                    else f"invalid JSON ({exc.msg})"
                    if isinstance(exc, json.JSONDecodeError)
                    else str(exc)
                )
                raise InputError(f"{path}:{n}: {why}; {hint}") from None
            good_end += len(raw)
            torn_complete = final
            yield n, obj, raw.rstrip(b"\n")
    size = path.stat().st_size
    try:
        if good_end != size:
            with path.open("r+b") as w:
                w.truncate(good_end)
        elif torn_complete:
            with path.open("ab") as w:
                w.write(b"\n")
    except OSError as exc:
        raise os_error(path, exc, "repair") from None


def repair_jsonl(path: Path, *, unique: bool = False) -> IdSet:
    """Repair a torn final line and return digests of the ids present (``item_id`` of a verdict,
    or ``id`` of a dead letter). Raises InputError ``FILE:LINE: ...`` on any other bad line, and,
    with ``unique`` (a verdict file), on a second line for an id: nothing is deleted."""
    ids = IdSet()
    dup: tuple[int, str] | None = None
    n_dups = 0
    for n, obj, _ in scan_jsonl(path, ("item_id", "id")):
        rid = str(obj.get("item_id", obj.get("id")))
        d = digest(rid)
        if unique and d in ids:
            n_dups += 1
            dup = dup or (n, rid)
        ids.add(d)
    if dup is not None:
        line, rid = dup
        first = next(n for n, obj, _ in scan_jsonl(path, ("item_id", "id")) if str(obj.get("item_id", obj.get("id"))) == rid)
        raise InputError(
            f"{path}:{line}: a second verdict for id {rid!r} (the first is on line {first}; {n_dups} such line(s) in all), "
            "e.g. written by two runs at once or by an older cotmod; nothing was deleted. Remove the later line for each "
            "repeated id (keep the first) and rerun, or pass --overwrite to start over"
        )
    return ids


class OutputLock:
    """An exclusive OS advisory lock (``flock``) on ``<output>.lock`` for as long as a run writes
    ``output``: a second run on the same output refuses to start (ConfigError naming the pid that
    holds it). The OS releases it when the process ends (also on ``kill -9``); a clean release
    removes the lock file. Where ``fcntl`` is missing (Windows) it does nothing."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output.with_name(output.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise os_error(self.path, exc, "create") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = ""
                with contextlib.suppress(OSError, ValueError):
                    pid = int(os.pread(fd, 32, 0).decode("ascii").strip() or "x")
                    holder = f" (pid {pid})"
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ConfigError(
                        f"another cotmod run{holder} is writing {self.output}; wait for it to end, or write to another --output"
                    ) from None
                raise os_error(self.path, exc, "lock") from None
            # the holder before us may have removed the file between our open and our lock: lock
            # the file that is at the path now
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked, so no one locks a file about to vanish
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class DeadLetter:
    """One line of the errors file (enough to decide whether to retry it)."""

    line: int
    id: str
    retryable: bool
    raw: str
    error_type: str = ""

    @property
    def input_error(self) -> bool:
        """The input row itself was unusable (a bad row, a text the model cannot take): retrying
        the same row cannot help, but once the user fixes the row in the input a retry decides it."""
        return self.error_type in INPUT_ERROR_TYPES


#: dead-letter error types that name a problem of the input row (re-read by ``--retry-errors``)
INPUT_ERROR_TYPES = frozenset({"BadRow", "InputError"})


def read_dead_letters(path: Path) -> list[DeadLetter]:
    """The dead letters of an errors file (a torn final line repaired, as for verdicts)."""
    return [
        DeadLetter(n, str(obj["id"]), bool(obj.get("retryable", True)), raw.decode("utf-8"), str(obj.get("error_type") or ""))
        for n, obj, raw in scan_jsonl(path, ("id",))
    ]


def read_manifest(path: Path, output: Path) -> dict[str, Any] | None:
    """The manifest of ``output`` (None if there is none); a corrupt one is one clear error."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise os_error(path, exc, "read") from None
    except UnicodeDecodeError:
        data, why = None, "not valid UTF-8"
    except json.JSONDecodeError as exc:
        data, why = None, f"invalid JSON at line {exc.lineno}: {exc.msg}"
    else:
        why = "not a JSON object"
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: corrupt manifest ({why}); it records which policies, prompts and model wrote "
            f"{output}, so cotmod cannot tell whether appending is safe. Restore it, or pass --overwrite "
            f"to start over (discards {output} and its errors file)"
        )
    return data


def write_json_atomic(path: Path, body: dict[str, Any]) -> None:
    """Write ``body`` as JSON to ``path`` via a temporary file and a rename; on failure (disk
    full, no permission) nothing is changed, no temporary file is left, and the error is one line."""
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        err = os_error(path, exc)
        raise type(err)(f"{err}; nothing was changed" + ("" if isinstance(err, ConfigError) else ", free space and rerun")) from None
