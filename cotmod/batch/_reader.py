"""Reading inputs: one reader for ``cotmod run``, ``cotmod moderate --file`` and golden sets.

Formats: JSONL (``.jsonl``, ``.ndjson``, ``.json``), CSV (``.csv``), Parquet (``.parquet``,
``.pq``) and plain text (``.txt``, one item per line); each of JSONL, CSV and text may be
gzip-compressed (``.jsonl.gz``, ``.csv.gz``, ``.txt.gz``). Files are streamed, never loaded whole.

Two levels:

* :func:`read_records` yields ``(line, record)`` for every non-blank line/row and raises
  :class:`~cotmod.InputError` (``FILE:LINE: what is wrong``) at the first unusable one: for strict
  readers such as golden sets.
* :func:`read_items` yields a :class:`Row` per item, lenient: an unusable row (invalid JSON, bytes
  that are not UTF-8, a lone surrogate such as ``"\\ud800"``, a missing or empty text) becomes a
  ``Row`` with ``problem`` set, so the batch runner can dead-letter it and go on.

CSV is read strictly: a malformed quote (``"abc"def``) is an unreadable row, and a quote never
closed is reported on the line it opens on (the lines after it are read as rows of their own,
never merged into it).

Id rule: a row without an id gets ``line-N`` (its 1-based line or row number).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._exceptions import ConfigError, InputError

__all__ = ["FORMATS", "Row", "count_rows", "detect_format", "open_binary", "read_items", "read_records"]

csv.field_size_limit(1 << 30)

FORMATS = ("jsonl", "csv", "parquet", "text")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
}


@dataclass
class Row:
    """One input row: an item, or the reason it cannot be one (``problem``)."""

    line: int
    id: str
    text: str | None
    problem: str | None = None
    policies: list[str] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _is_gz(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """The input format: ``fmt`` if given, else from the extension (a ``.gz`` suffix is looked through)."""
    if fmt:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown input format {fmt!r} ({', '.join(FORMATS)})")
        return fmt
    p = Path(path)
    suffix = Path(p.stem).suffix if _is_gz(p) else p.suffix
    kind = _EXTENSIONS.get(suffix.lower())
    if kind is None:
        raise ConfigError(f"{p}: cannot tell the format from the extension; pass --format jsonl|csv|parquet|text")
    if kind == "parquet" and _is_gz(p):
        raise ConfigError(f"{p}: gzip-compressed Parquet is not supported (Parquet compresses itself)")
    return kind


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing ``.gz`` transparently."""
    p = Path(path)
    if _is_gz(p):
        return gzip.open(p, "rb")  # type: ignore[return-value]
    return p.open("rb")


def _check_file(p: Path) -> None:
    if not p.is_file():
        raise ConfigError(f"input file not found: {p}")


def _bad_text(value: str) -> str | None:
    """Why ``value`` cannot be written as UTF-8 (a lone surrogate), or None if it can."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"lone surrogate {value[exc.start]!a} at character {exc.start + 1} (not valid Unicode text)"
    return None


_BOM = b"\xef\xbb\xbf"


def _lines(f: IO[bytes], p: Path) -> Iterator[tuple[int, bytes]]:
    """The file's lines as bytes, a UTF-8 byte-order mark at the start skipped (Notepad, Excel)."""
    n = 0
    try:
        for raw in f:
            n += 1
            yield n, raw[len(_BOM):] if n == 1 and raw.startswith(_BOM) else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{p}:{n + 1}: cannot read the file ({exc})") from None


# -- records: one dict per non-blank line/row ------------------------------------------------------


def _jsonl_records(p: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    with open_binary(p) as f:
        for n, raw in _lines(f, p):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield n, None, f"not valid UTF-8 (byte {exc.start + 1})"
                continue
            except json.JSONDecodeError as exc:
                yield n, None, f"invalid JSON: {exc.msg} at column {exc.colno}"
                continue
            except RecursionError:
                yield n, None, "invalid JSON: nested too deeply"
                continue
            if not isinstance(obj, dict):
                yield n, None, "expected a JSON object"
                continue
            yield n, obj, None


class _LineFeed:
    """The lines of a text file for ``csv.reader``, numbered, keeping the lines of the record being
    read so that they can be fed again (after an unterminated quote)."""

    def __init__(self, f: IO[str]) -> None:
        self._f = f
        self.n = 0  # the number of the last line handed out
        self.record: list[tuple[int, str]] = []
        self._again: list[tuple[int, str]] = []  # lines to hand out again, in reverse order

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        if self._again:
            self.n, line = self._again.pop()
        else:
            line = next(self._f)
            self.n += 1
        self.record.append((self.n, line))
        return line

    def feed_again(self, lines: list[tuple[int, str]]) -> None:
        self._again.extend(reversed(lines))


def _csv_records(p: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    # bytes that are not UTF-8 are decoded as lone surrogates (surrogateescape) and reported
    # per row, so one bad byte costs that row only. The reader is strict: a malformed quote is a
    # bad row, never guessed at; a quote left open runs to the end of the file, so that row is
    # reported (with the line it opens on) and the lines after it are read again as rows.
    with open_binary(p) as fb, io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        feed = _LineFeed(f)
        reader = csv.reader(feed, strict=True)
        try:
            header = next(reader, [])
        except csv.Error as exc:
            raise InputError(f"{p}:1: unreadable CSV header: {exc}") from None
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"{p}:1: cannot read the file ({exc})") from None
        if any(_bad_text(h) for h in header):
            raise InputError(f"{p}:1: the header is not valid UTF-8")
        while True:
            feed.record = []
            start = feed.n + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                lines = feed.record
                if str(exc) == "unexpected end of data" and lines and lines[0][0] == start:
                    # the quoted field opened on line `start` is never closed
                    first = next(csv.reader([lines[0][1]]), [])
                    yield start, dict(zip(header, first, strict=False)), (
                        'unterminated quote: the quoted field that opens on this line is never closed (close it; '
                        'a quote inside a quoted field is written "")'
                    )
                    feed.feed_again(lines[1:])
                    reader = csv.reader(feed, strict=True)
                    continue
                yield feed.n, None, f"unreadable CSV row: {exc}"
                continue
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise InputError(f"{p}:{feed.n + 1}: cannot read the file ({exc})") from None
            n = feed.n
            if not row:
                continue
            rec: dict[Any, Any] = dict(zip(header, row, strict=False))
            if len(row) > len(header):
                yield n, rec, "row has more fields than the header"
                continue
            for k in header[len(row):]:
                rec.setdefault(k, None)
            if all(v in (None, "") for v in rec.values()):
                continue
            bad = next((k for k, v in rec.items() if isinstance(v, str) and _bad_text(v)), None)
            if bad is not None:
                yield n, rec, f"column {bad!r} is not valid UTF-8"
                continue
            yield n, rec, None


def _text_records(p: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    with open_binary(p) as f:
        for n, raw in _lines(f, p):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield n, None, f"not valid UTF-8 (byte {exc.start + 1})"
                continue
            if line.strip():
                yield n, {"text": line}, None


def _parquet_records(p: Path, columns: list[str] | None) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet input needs pyarrow: pip install 'cotmod[parquet]'") from None
    try:
        pf = pq.ParquetFile(str(p))
    except Exception as exc:  # pyarrow raises its own error types for a file that is not Parquet
        raise InputError(f"{p}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    cols = [c for c in columns if c in names] if columns is not None else None
    row = 0
    for batch in pf.iter_batches(batch_size=2048, columns=cols):
        for rec in batch.to_pylist():
            row += 1
            yield row, rec, None


def _records(p: Path, kind: str, columns: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    if kind == "jsonl":
        return _jsonl_records(p)
    if kind == "csv":
        return _csv_records(p)
    if kind == "parquet":
        return _parquet_records(p, columns)
    return _text_records(p)


def read_records(path: str | Path, *, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Strictly read ``(line, record)`` pairs from JSONL, CSV, Parquet or text (``.gz`` too).

    Blank lines are skipped. A line that is not a JSON object, a row that is not valid UTF-8
    (including escaped lone surrogates in any string value) or an unreadable CSV row raises
    :class:`~cotmod.InputError` ``FILE:LINE: what is wrong``. CSV values are strings; a text
    file yields ``{"text": line}``.
    """
    p = Path(path)
    _check_file(p)
    for n, rec, problem in _records(p, detect_format(p, fmt)):
        if problem is None and rec is not None:
            problem = _record_problem(rec)
        if problem is not None or rec is None:
            raise InputError(f"{p}:{n}: {problem}")
        yield n, rec


def _record_problem(value: Any, where: str = "") -> str | None:
    """A lone surrogate anywhere in a record's keys or string values."""
    if isinstance(value, str):
        bad = _bad_text(value)
        return f"{where or 'value'}: {bad}" if bad else None
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and _bad_text(k):
                return f"a field name is not valid Unicode ({_bad_text(k)})"
            sub = _record_problem(v, f"{where}.{k}" if where else f"field {k!r}")
            if sub:
                return sub
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            sub = _record_problem(v, f"{where}[{i}]")
            if sub:
                return sub
    return None


# -- items: rows the runner can moderate or dead-letter --------------------------------------------


def row_from_record(
    line: int,
    rec: Mapping[str, Any],
    *,
    id_field: str = "id",
    text_field: str = "text",
    policies_field: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Row:
    """Turn one record into a :class:`Row` (``problem`` set when it cannot be moderated)."""
    raw_id = rec.get(id_field)
    rid = f"line-{line}" if raw_id in (None, "") else str(raw_id)
    bad_id = _bad_text(rid)
    if bad_id is not None:
        # the id itself cannot be written; the row is dead-lettered under its line number
        return Row(line, f"line-{line}", None, f"field {id_field!r} (the id {rid!a}): {bad_id}")
    text = rec.get(text_field)
    if text is None:
        return Row(line, rid, None, f"missing field {text_field!r}")
    if not isinstance(text, str):
        return Row(line, rid, None, f"field {text_field!r} must be a string, got {type(text).__name__}")
    bad = _bad_text(text)
    if bad is not None:
        return Row(line, rid, None, f"field {text_field!r}: {bad}")
    if not text.strip():
        return Row(line, rid, None, "empty text")
    row = Row(line, rid, text, metadata=metadata or {})
    if policies_field is not None:
        pol = rec.get(policies_field)
        if pol is not None:
            if not isinstance(pol, list) or not pol or not all(isinstance(x, str) for x in pol):
                return Row(line, rid, None, f"field {policies_field!r} must be a non-empty list of policy ids")
            row.policies = list(pol)
    if metadata is not None:
        bad_meta = _record_problem(dict(metadata))
        if bad_meta is not None:
            return Row(line, rid, None, f"metadata {bad_meta}")
    return row


def read_items(
    path: str | Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    fmt: str | None = None,
    policies_field: str | None = None,
    metadata_fields: Sequence[str] = (),
) -> Iterator[Row]:
    """Stream :class:`Row` s from JSONL, CSV, Parquet or plain text (``.gz`` too), leniently:
    a row that cannot be moderated comes with ``problem`` set (and its line number).

    ``metadata_fields``: fields copied into each row's metadata when present and not empty (e.g.
    the classifier scores a cascade routes by); other fields are not carried."""
    p = Path(path)
    _check_file(p)
    kind = detect_format(p, fmt)
    if kind == "text":
        id_field, text_field = "\0no id", "text"
    elif kind == "csv":
        header = _csv_header(p)
        if text_field not in header:
            raise ConfigError(f"{p}: no column {text_field!r} (columns: {', '.join(header) or 'none'}); use --text-field")
    elif kind == "parquet":
        names = _parquet_names(p)
        if text_field not in names:
            raise ConfigError(f"{p}: no column {text_field!r} (columns: {', '.join(names)}); use --text-field")
    columns = [c for c in (text_field, id_field, policies_field) if c]
    if kind == "parquet" and metadata_fields:
        present = set(_parquet_names(p))
        columns += [c for c in metadata_fields if c in present and c not in columns]
    for n, rec, problem in _records(p, kind, columns):
        if problem is not None or rec is None:
            raw_id = rec.get(id_field) if rec else None
            rid = str(raw_id) if raw_id not in (None, "") and not _bad_text(str(raw_id)) else f"line-{n}"
            yield Row(n, rid, None, problem)
            continue
        meta = {f: rec[f] for f in metadata_fields if rec.get(f) not in (None, "")} if metadata_fields else None
        yield row_from_record(n, rec, id_field=id_field, text_field=text_field, policies_field=policies_field, metadata=meta)


def _csv_header(p: Path) -> list[str]:
    with open_binary(p) as fb, io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        try:
            header = next(csv.reader(f, strict=True), [])
        except csv.Error as exc:
            raise InputError(f"{p}:1: unreadable CSV header: {exc}") from None
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"{p}: cannot read the file ({exc})") from None
    if any(_bad_text(h) for h in header):
        raise InputError(f"{p}:1: the header is not valid UTF-8")
    return header


def _parquet_names(p: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet input needs pyarrow: pip install 'cotmod[parquet]'") from None
    try:
        return list(pq.ParquetFile(str(p)).schema_arrow.names)
    except Exception as exc:  # pyarrow raises its own error types for a file that is not Parquet
        raise InputError(f"{p}: not a readable Parquet file ({exc})") from None


def count_rows(path: str | Path, fmt: str | None = None) -> int | None:
    """A cheap total for progress display (lines, or Parquet rows); None if unknown."""
    p = Path(path)
    try:
        kind = detect_format(p, fmt)
        if kind == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(str(p)).metadata.num_rows)
        with open_binary(p) as f:
            n = sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
        return max(n - 1, 0) if kind == "csv" else n
    except Exception:
        return None
