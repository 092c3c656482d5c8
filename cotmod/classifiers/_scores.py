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
``FILE:LINE`` and the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._exceptions import InputError
from ..batch._reader import read_records

__all__ = ["MISSING_STRATUM", "ScoreLog", "parse_timestamp", "read_scores"]

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
) -> ScoreLog:
    """Read a score log (JSONL, CSV or Parquet; ``.gz`` too) into a :class:`ScoreLog`.

    ``labels``: the labels to keep (default: every label of the first row). ``strata``: fields to
    group by (a row without one gets :data:`MISSING_STRATUM`). Timestamps are read when the first
    row has ``time_field``; then every row needs one (``require_timestamps`` makes them
    mandatory). Raises :class:`~cotmod.InputError` ``FILE:LINE: field ...: what is wrong`` at the
    first unusable row, and for an empty file.
    """
    p = Path(path)
    want = list(labels) if labels else None
    names: list[str] | None = None
    ids: list[str] = []
    lines: list[int] = []
    score_cols: dict[str, list[float]] = {}
    truth_cols: dict[str, list[int]] = {}
    times: list[float] | None = None
    strata_cols: dict[str, list[str]] = {s: [] for s in strata}
    texts: list[str | None] | None = [] if text_field else None
    where = ""
    for line, rec in read_records(p, fmt=fmt):
        try:
            where = "scores"
            raw = _row_scores(rec)
            if names is None:
                if not raw:
                    raise ValueError("no scores: expected 'score_<label>' columns or a 'scores' map")
                if want is not None:
                    missing = [lb for lb in want if lb not in raw]
                    if missing:
                        raise ValueError(f"no score for label(s) {', '.join(map(repr, missing))} (labels here: {', '.join(raw)})")
                names = want if want is not None else list(raw)
                score_cols = {lb: [] for lb in names}
                truth_cols = {lb: [] for lb in names}
                if time_field in rec or require_timestamps:
                    times = []
            if want is None:
                extra = [lb for lb in raw if lb not in score_cols]
                if extra:
                    where = f"score_{extra[0]}"
                    raise ValueError(f"unknown label {extra[0]!r} (labels from the first row: {', '.join(names)})")
            for lb in names:
                where = f"score_{lb}" if "scores" not in rec else f"scores.{lb}"
                if lb not in raw:
                    raise ValueError("is missing (every row needs a score for every label)")
                score_cols[lb].append(_score(raw[lb]))
            where = "labels"
            gt, pattern = _row_truth(rec)
            for lb in names:
                where = pattern.format(lb)
                truth_cols[lb].append(_truth(gt.get(lb)))
            if times is not None:
                where = time_field
                tv = rec.get(time_field)
                if tv is None or tv == "":
                    raise ValueError("is missing (rows must all have a timestamp, or none)")
                times.append(parse_timestamp(tv))
            for s in strata:
                v = rec.get(s)
                strata_cols[s].append(MISSING_STRATUM if v is None or v == "" else str(v))
            if texts is not None:
                tv = rec.get(text_field or "")
                texts.append(None if tv is None else str(tv))
        except ValueError as exc:
            msg = str(exc) if str(exc).startswith("field") else f"field {where!r}: {exc}"
            raise InputError(f"{p}:{line}: {msg}") from None
        raw_id = rec.get(id_field)
        ids.append(f"line-{line}" if raw_id in (None, "") else str(raw_id))
        lines.append(line)
    if names is None:
        raise InputError(f"{p}: no rows")
    return ScoreLog(
        path=str(p),
        labels=tuple(names),
        ids=ids,
        lines=np.asarray(lines, dtype=np.int64),
        scores={lb: np.asarray(v, dtype=np.float64) for lb, v in score_cols.items()},
        truth={lb: np.asarray(v, dtype=np.int8) for lb, v in truth_cols.items()},
        timestamps=None if times is None else np.asarray(times, dtype=np.float64),
        strata=strata_cols,
        texts=texts,
    )
