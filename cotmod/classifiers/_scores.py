"""Score logs: the output of an ML classifier, one row per item, read into columns.

A row (JSONL object, CSV row or Parquet row; ``.gz`` works for JSONL and CSV) holds:

* ``id`` (optional; ``line-N`` when missing),
* ``timestamp``: ISO 8601 (``2026-11-25T10:00:00Z``; no zone means UTC) or epoch seconds (a
  number, or a numeric string; values above 1e11 are taken as epoch milliseconds),
* a score in [0, 1] per label: wide columns ``score_<label>`` or a map ``"scores": {label: x}``,
* optional ground truth per label: ``label_<label>`` columns or a map ``"labels": {label: v}``
  with v = 1/0 (``true``/``false``); empty or null means unknown,
* optional strata fields (named by the caller: language, surface, region...) and text.

The labels are those of the first row (or the ``labels`` asked for); every row must carry a score
for each of them. The first unusable row raises :class:`~cotmod.InputError` naming
``FILE:LINE`` and the field; with ``skip_bad_rows=True`` such rows (and lines that cannot be
read at all) are left out, counted and the first few reported with ``FILE:LINE`` and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from .._exceptions import InputError
from ..batch._reader import read_records

__all__ = ["MISSING_STRATUM", "ScoreLog", "SkippedRow", "parse_timestamp", "read_scores"]

#: The stratum value of a row that lacks the stratum field.
MISSING_STRATUM = "(missing)"

_MS_EPOCH = 1e11  # an epoch above this is in milliseconds (1e11 s is the year 5138)


@dataclass
class ScoreLog:
    """A classifier's score log in columns (row order = file order).

    ``truth[label]`` is 1, 0 or -1 (unknown); ``timestamps`` are UTC epoch seconds, or None when
    the rows carry none.
    """

    path: str
    labels: tuple[str, ...]
    ids: list[str]
    lines: npt.NDArray[np.int64]
    scores: dict[str, npt.NDArray[np.float64]]
    truth: dict[str, npt.NDArray[np.int8]]
    timestamps: npt.NDArray[np.float64] | None = None
    strata: dict[str, list[str]] = field(default_factory=dict)
    texts: list[str | None] | None = None
    skipped: int = 0  # rows left out by a lenient read (skip_bad_rows)
    skipped_rows: list[SkippedRow] = field(default_factory=list)  # the first few, with their reason

    def __len__(self) -> int:
        return len(self.ids)

    def has_truth(self, label: str) -> bool:
        return bool((self.truth[label] >= 0).any())

    def select(self, mask: npt.NDArray[np.bool_]) -> ScoreLog:
        """The rows where ``mask`` is true."""
        idx = np.flatnonzero(mask)
        return ScoreLog(
            path=self.path,
            labels=self.labels,
            ids=[self.ids[i] for i in idx],
            lines=self.lines[idx],
            scores={k: v[idx] for k, v in self.scores.items()},
            truth={k: v[idx] for k, v in self.truth.items()},
            timestamps=None if self.timestamps is None else self.timestamps[idx],
            strata={k: [v[i] for i in idx] for k, v in self.strata.items()},
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            skipped=self.skipped,
            skipped_rows=list(self.skipped_rows),
        )


def parse_timestamp(value: Any) -> float:
    """UTC epoch seconds from ISO 8601 or an epoch number (ms when above 1e11); ValueError if neither."""
    if isinstance(value, bool):
        raise ValueError(f"expected ISO 8601 or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    elif isinstance(value, str):
        s = value.strip()
        try:
            x = float(s)
        except ValueError:
            iso = s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s
            try:
                dt = datetime.fromisoformat(iso)
            except ValueError:
                raise ValueError(f"expected ISO 8601 (2026-11-25T10:00:00Z) or epoch seconds, got {value!r}") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return dt.timestamp()
    else:
        raise ValueError(f"expected ISO 8601 or epoch seconds, got {type(value).__name__}")
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"epoch must be a finite non-negative number, got {value!r}")
    return x / 1000.0 if x > _MS_EPOCH else x


def _score(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("is empty (every row needs a score for every label)")
        try:
            x = float(value)
        except ValueError:
            raise ValueError(f"expected a number from 0 to 1, got {value!r}") from None
    elif isinstance(value, (int, float)):
        x = float(value)
    elif value is None:
        raise ValueError("is null (every row needs a score for every label)")
    else:
        raise ValueError(f"expected a number from 0 to 1, got {type(value).__name__}")
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return x


_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def _truth(value: Any) -> int:
    if value is None:
        return -1
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("", "null", "unknown"):
            return -1
        if s in _TRUE:
            return 1
        if s in _FALSE:
            return 0
    raise ValueError(f"expected 1, 0 or empty (unknown), got {value!r}")


def _row_scores(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The raw per-label scores of a record: the ``scores`` map, else ``score_<label>`` columns."""
    m = rec.get("scores")
    if m is not None:
        if not isinstance(m, Mapping):
            raise ValueError(f"field 'scores': expected a map {{label: score}}, got {type(m).__name__}")
        return dict(m)
    return {k[len("score_"):]: v for k, v in rec.items() if k.startswith("score_") and len(k) > len("score_")}


def _row_truth(rec: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    m = rec.get("labels")
    if m is not None:
        if not isinstance(m, Mapping):
            raise ValueError(f"field 'labels': expected a map {{label: 1|0|null}}, got {type(m).__name__}")
        return dict(m), "labels.{}"
    return {k[len("label_"):]: v for k, v in rec.items() if k.startswith("label_") and len(k) > len("label_")}, "label_{}"


class SkippedRow(BaseModel):
    """A row left out by a lenient read (``skip_bad_rows``): its line and why."""

    line: int
    reason: str  # "FILE:LINE: field ...: what is wrong"


#: How many skipped rows a lenient read keeps with their reason (all are counted).
MAX_SKIPPED_REPORTED = 20


@dataclass
class ParsedRow:
    line: int
    id: str
    scores: list[float]
    truth: list[int]
    timestamp: float | None
    strata: list[str]
    text: str | None


class RowParser:
    """Turns one record into a :class:`ParsedRow` with ``read_scores``'s rules, or raises
    :class:`~cotmod.InputError` ``FILE:LINE: field ...: what is wrong``.

    The labels (and whether rows carry timestamps) are fixed by the first record that has scores.
    """

    def __init__(
        self,
        path: Path,
        *,
        labels: Sequence[str] | None = None,
        strata: Sequence[str] = (),
        id_field: str = "id",
        time_field: str = "timestamp",
        text_field: str | None = None,
        require_timestamps: bool = False,
    ) -> None:
        self.path = path
        self.want = list(labels) if labels else None
        self.names: list[str] | None = None
        self.has_times = False
        self.strata = list(strata)
        self.id_field = id_field
        self.time_field = time_field
        self.text_field = text_field
        self.require_timestamps = require_timestamps

    def start(self, rec: Mapping[str, Any]) -> None:
        """Fix the labels from ``rec`` (the first row); ValueError if it has none of them."""
        raw = _row_scores(rec)
        if not raw:
            raise ValueError("no scores: expected 'score_<label>' columns or a 'scores' map")
        if self.want is not None:
            missing = [lb for lb in self.want if lb not in raw]
            if missing:
                raise ValueError(f"no score for label(s) {', '.join(map(repr, missing))} (labels here: {', '.join(raw)})")
        self.names = self.want if self.want is not None else list(raw)
        self.has_times = self.time_field in rec or self.require_timestamps

    def parse(self, line: int, rec: Mapping[str, Any]) -> ParsedRow:
        where = "scores"
        try:
            raw = _row_scores(rec)
            if self.names is None:
                self.start(rec)
            names = self.names
            assert names is not None
            if self.want is None:
                extra = [lb for lb in raw if lb not in names]
                if extra:
                    where = f"score_{extra[0]}"
                    raise ValueError(f"unknown label {extra[0]!r} (labels from the first row: {', '.join(names)})")
            scores: list[float] = []
            for lb in names:
                where = f"score_{lb}" if "scores" not in rec else f"scores.{lb}"
                if lb not in raw:
                    raise ValueError("is missing (every row needs a score for every label)")
                scores.append(_score(raw[lb]))
            where = "labels"
            gt, pattern = _row_truth(rec)
            truth: list[int] = []
            for lb in names:
                where = pattern.format(lb)
                truth.append(_truth(gt.get(lb)))
            ts: float | None = None
            if self.has_times:
                where = self.time_field
                tv = rec.get(self.time_field)
                if tv is None or tv == "":
                    raise ValueError("is missing (rows must all have a timestamp, or none)")
                ts = parse_timestamp(tv)
            strata = []
            for s in self.strata:
                v = rec.get(s)
                strata.append(MISSING_STRATUM if v is None or v == "" else str(v))
            text: str | None = None
            if self.text_field is not None:
                tv = rec.get(self.text_field)
                text = None if tv is None else str(tv)
        except ValueError as exc:
            msg = str(exc) if str(exc).startswith("field") else f"field {where!r}: {exc}"
            raise InputError(f"{self.path}:{line}: {msg}") from None
        raw_id = rec.get(self.id_field)
        rid = f"line-{line}" if raw_id in (None, "") else str(raw_id)
        return ParsedRow(line, rid, scores, truth, ts, strata, text)


def iter_records(path: Path, fmt: str | None, skip_bad_rows: bool) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, record, problem)``: strict (``read_records``: the first unreadable line raises) or
    lenient (an unreadable line comes with ``problem`` set: invalid JSON, not UTF-8, a bad CSV row)."""
    if not skip_bad_rows:
        for line, rec in read_records(path, fmt=fmt):
            yield line, rec, None
        return
    from ..batch._reader import _check_file, _record_problem, _records, detect_format

    _check_file(path)
    for line, record, problem in _records(path, detect_format(path, fmt)):
        if problem is None and record is not None:
            problem = _record_problem(record)
        yield line, record, problem


class SkipCounter:
    """Counts the rows a lenient read leaves out, keeping the first few with their reason."""

    def __init__(self) -> None:
        self.count = 0
        self.rows: list[SkippedRow] = []

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.rows) < MAX_SKIPPED_REPORTED:
            self.rows.append(SkippedRow(line=line, reason=reason))


def read_scores(
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    strata: Sequence[str] = (),
    id_field: str = "id",
    time_field: str = "timestamp",
    text_field: str | None = None,
    require_timestamps: bool = False,
    fmt: str | None = None,
    skip_bad_rows: bool = False,
) -> ScoreLog:
    """Read a score log (JSONL, CSV or Parquet; ``.gz`` too) into a :class:`ScoreLog`.

    ``labels``: the labels to keep (default: every label of the first row). ``strata``: fields to
    group by (a row without one gets :data:`MISSING_STRATUM`). Timestamps are read when the first
    row has ``time_field``; then every row needs one (``require_timestamps`` makes them
    mandatory). Raises :class:`~cotmod.InputError` ``FILE:LINE: field ...: what is wrong`` at the
    first unusable row, and for an empty file. With ``skip_bad_rows`` an unusable or unreadable
    row is left out instead, and counted in ``ScoreLog.skipped`` (the first
    :data:`MAX_SKIPPED_REPORTED` with their reason in ``skipped_rows``).
    """
    p = Path(path)
    parser = RowParser(
        p, labels=labels, strata=strata, id_field=id_field, time_field=time_field, text_field=text_field,
        require_timestamps=require_timestamps,
    )
    skips = SkipCounter()
    rows: list[ParsedRow] = []
    for line, rec, problem in iter_records(p, fmt, skip_bad_rows):
        if problem is not None or rec is None:
            skips.add(line, f"{p}:{line}: {problem}")
            continue
        try:
            rows.append(parser.parse(line, rec))
        except InputError as exc:
            if not skip_bad_rows:
                raise
            skips.add(line, str(exc))
    names = parser.names
    if names is None or not rows:
        raise InputError(f"{p}: no rows" if not skips.count else f"{p}: no usable rows ({skips.count} skipped)")
    return ScoreLog(
        path=str(p),
        labels=tuple(names),
        ids=[r.id for r in rows],
        lines=np.asarray([r.line for r in rows], dtype=np.int64),
        scores={lb: np.asarray([r.scores[i] for r in rows], dtype=np.float64) for i, lb in enumerate(names)},
        truth={lb: np.asarray([r.truth[i] for r in rows], dtype=np.int8) for i, lb in enumerate(names)},
        timestamps=np.asarray([r.timestamp for r in rows], dtype=np.float64) if parser.has_times else None,
        strata={s: [r.strata[j] for r in rows] for j, s in enumerate(strata)},
        texts=[r.text for r in rows] if text_field else None,
        skipped=skips.count,
        skipped_rows=skips.rows,
    )
