"""Streaming drift monitoring: one pass over a score log of any length, in flat memory.

:func:`monitor_stream` reads the analysed log in batches (Parquet record batches read column-wise
by pyarrow; JSONL and CSV rows parsed with :func:`~cotmod.classifiers.read_scores`'s rules),
adds each batch's rows to the open chunk of every group (label x stratum), and when a chunk
closes computes its statistics and drops its rows. Memory is the reference, the open chunks and
one batch: it does not grow with the length of the log. The result is the same
:class:`~cotmod.classifiers.MonitorReport` as :func:`~cotmod.classifiers.monitor` on the same
data (limits and alerts are set at the end, from the sizes of all chunks, by the same code).

Chunks by count close every N rows of a group, in file order. Chunks by time close when a row
two windows later arrives, so rows may be out of time order by up to one window (late rows
around midnight for ``1d``); a row that falls in a window already closed is an error naming
``FILE:LINE`` (sort the log by time), or, with ``skip_bad_rows``, a skipped row. Each time
window therefore holds its rows in memory until it closes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._exceptions import InputError
from ..batch._reader import detect_format
from ._drift import Bins, SortedReference, quantile_bins
from ._monitor import (
    GroupDrift,
    MonitorReport,
    MonitorSettings,
    _check_settings,
    _chunk_drift,
    _finish_group,
    _iso,
    _no_unknown_thresholds,
    _short_reference,
    parse_chunk,
)
from ._scores import (
    MAX_SKIPPED_REPORTED,
    MISSING_STRATUM,
    ParsedRow,
    RowParser,
    ScoreLog,
    SkipCounter,
    iter_records,
)

__all__ = ["ScoreBatch", "iter_score_batches", "monitor_stream"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
_MS_EPOCH = 1e11
_TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


@dataclass
class ScoreBatch:
    """Consecutive usable rows of a score log, in columns."""

    lines: Ints
    scores: dict[str, Floats]
    timestamps: Floats | None
    strata: dict[str, npt.NDArray[np.object_]]

    def __len__(self) -> int:
        return len(self.lines)


class _Batches:
    """Iterates :class:`ScoreBatch` es; ``labels`` is known once the first batch is out."""

    def __init__(
        self,
        path: Path,
        *,
        labels: Sequence[str] | None,
        strata: Sequence[str],
        id_field: str,
        time_field: str,
        require_timestamps: bool,
        fmt: str | None,
        skip_bad_rows: bool,
        skips: SkipCounter,
        batch_rows: int,
    ) -> None:
        self.path = path
        self.strata = list(strata)
        self.time_field = time_field
        self.fmt = fmt
        self.skip = skip_bad_rows
        self.skips = skips
        self.batch_rows = batch_rows
        self.parser = RowParser(path, labels=labels, strata=strata, id_field=id_field, time_field=time_field, require_timestamps=require_timestamps)

    @property
    def labels(self) -> list[str]:
        return list(self.parser.names or [])

    def __iter__(self) -> Iterator[ScoreBatch]:
        if detect_format(self.path, self.fmt) == "parquet":
            pf = self._columnar_file()
            if pf is not None:
                yield from self._columnar(pf)
                return
        yield from self._rows()

    # -- any format: row by row, with read_scores's parser ------------------------------------------
    def _rows(self) -> Iterator[ScoreBatch]:
        rows: list[ParsedRow] = []
        for line, rec, problem in iter_records(self.path, self.fmt, self.skip):
            if problem is not None or rec is None:
                self.skips.add(line, f"{self.path}:{line}: {problem}")
                continue
            try:
                rows.append(self.parser.parse(line, rec))
            except InputError as exc:
                if not self.skip:
                    raise
                self.skips.add(line, str(exc))
                continue
            if len(rows) >= self.batch_rows:
                yield self._from_rows(rows)
                rows = []
        if rows:
            yield self._from_rows(rows)

    def _from_rows(self, rows: list[ParsedRow]) -> ScoreBatch:
        names = self.labels
        return ScoreBatch(
            lines=np.fromiter((r.line for r in rows), dtype=np.int64, count=len(rows)),
            scores={lb: np.fromiter((r.scores[i] for r in rows), dtype=np.float64, count=len(rows)) for i, lb in enumerate(names)},
            timestamps=np.asarray([r.timestamp for r in rows], dtype=np.float64) if self.parser.has_times else None,
            strata={s: np.asarray([r.strata[j] for r in rows], dtype=object) for j, s in enumerate(self.strata)},
        )

    # -- Parquet with wide numeric columns: column-wise ----------------------------------------------
    def _columnar_file(self) -> Any:
        """The ParquetFile when its columns can be checked column-wise, else None (read row by row)."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return None
        try:
            pf = pq.ParquetFile(str(self.path))
        except Exception:  # let the row reader report it
            return None
        schema = pf.schema_arrow
        names = schema.names
        if "scores" in names or "labels" in names:
            return None
        have = [n[len("score_"):] for n in names if n.startswith("score_") and len(n) > len("score_")]
        want = self.parser.want if self.parser.want is not None else have
        if not want or any(lb not in have for lb in want):
            return None
        for lb in want:
            t = schema.field(f"score_{lb}").type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                return None
            if f"label_{lb}" in names:
                t = schema.field(f"label_{lb}").type
                if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                    return None
        if self.time_field in names:
            t = schema.field(self.time_field).type
            if not (pa.types.is_timestamp(t) or pa.types.is_integer(t) or pa.types.is_floating(t)):
                return None
        return pf

    def _columnar(self, pf: Any) -> Iterator[ScoreBatch]:
        import pyarrow as pa
        import pyarrow.compute as pc

        schema = pf.schema_arrow
        names = schema.names
        want = self.parser.want or [n[len("score_"):] for n in names if n.startswith("score_") and len(n) > len("score_")]
        wanted = {self.time_field, *self.strata, *(f"score_{lb}" for lb in want), *(f"label_{lb}" for lb in want)}
        columns = [c for c in names if c in wanted]
        row = 0
        for b in self._parquet_batches(pf, columns):
            n = b.num_rows
            if n == 0:
                continue
            if self.parser.names is None:
                try:
                    self.parser.start(b.slice(0, 1).to_pylist()[0])
                except ValueError as exc:  # cannot happen with score_ columns; kept for a clear message
                    raise InputError(f"{self.path}:{row + 1}: field 'scores': {exc}") from None
            labels = self.labels
            lines = np.arange(row + 1, row + n + 1, dtype=np.int64)
            row += n
            bad = np.zeros(n, dtype=bool)
            scores: dict[str, Floats] = {}
            for lb in labels:
                col = b.column(f"score_{lb}")
                x = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
                with np.errstate(invalid="ignore"):
                    bad |= ~((x >= 0.0) & (x <= 1.0))  # NaN and nulls (NaN here) fail
                scores[lb] = x
                if f"label_{lb}" in names:
                    t = b.column(f"label_{lb}")
                    v = np.asarray(t.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
                    known = ~np.asarray(t.is_null().to_numpy(zero_copy_only=False), dtype=bool)
                    bad |= known & ~((v == 0.0) | (v == 1.0))
            times: Floats | None = None
            if self.parser.has_times:
                if self.time_field not in names:
                    bad[:] = True
                    times = np.zeros(n)
                else:
                    col = b.column(self.time_field)
                    null = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
                    if pa.types.is_timestamp(col.type):
                        ints = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
                        times = np.asarray(ints, dtype=np.float64) / _TIME_UNITS[col.type.unit]
                        bad |= null
                    else:
                        x = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
                        with np.errstate(invalid="ignore"):
                            bad |= null | ~np.isfinite(x) | (x < 0)
                            times = np.where(x > _MS_EPOCH, x / 1000.0, x)
            strata: dict[str, npt.NDArray[np.object_]] = {}
            for s in self.strata:
                if s not in names:
                    strata[s] = np.full(n, MISSING_STRATUM, dtype=object)
                    continue
                enc = pc.dictionary_encode(b.column(s))
                values = np.asarray(
                    [MISSING_STRATUM if v is None or v == "" else str(v) for v in enc.dictionary.to_pylist()] + [MISSING_STRATUM],
                    dtype=object,
                )
                idx = np.asarray(pc.fill_null(enc.indices, len(values) - 1).to_numpy(zero_copy_only=False), dtype=np.int64)
                strata[s] = values[idx]
            if bad.any():
                self._bad(b, np.flatnonzero(bad), lines)
                keep = ~bad
                lines = lines[keep]
                scores = {k: v[keep] for k, v in scores.items()}
                times = None if times is None else times[keep]
                strata = {k: v[keep] for k, v in strata.items()}
            if len(lines):
                yield ScoreBatch(lines=lines, scores=scores, timestamps=times, strata=strata)

    def _parquet_batches(self, pf: Any, columns: list[str]) -> Iterator[Any]:
        # one row group at a time: ParquetFile.iter_batches keeps memory that grows with the file
        # (about 420 MB after 10M rows x 5 columns, 134 MB after 1M; row groups: 100 MB both)
        for i in range(pf.num_row_groups):
            yield from pf.read_row_group(i, columns=columns).to_batches(max_chunksize=self.batch_rows)

    def _bad(self, b: Any, rows: npt.NDArray[np.intp], lines: Ints) -> None:
        """Report rows that failed the column checks, with the row parser's message."""
        for i in rows:
            line = int(lines[i])
            if self.skip and len(self.skips.rows) >= MAX_SKIPPED_REPORTED:
                self.skips.count += 1  # counted; only the first few keep a reason
                continue
            rec = b.slice(int(i), 1).to_pylist()[0]
            try:
                self.parser.parse(line, rec)
                msg = f"{self.path}:{line}: unusable row"
            except InputError as exc:
                msg = str(exc)
            if not self.skip:
                raise InputError(msg)
            self.skips.add(line, msg)


def iter_score_batches(
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    strata: Sequence[str] = (),
    id_field: str = "id",
    time_field: str = "timestamp",
    require_timestamps: bool = False,
    fmt: str | None = None,
    skip_bad_rows: bool = False,
    skips: SkipCounter | None = None,
    batch_rows: int = 65536,
) -> Iterator[ScoreBatch]:
    """Stream a score log as :class:`ScoreBatch` es of at most ``batch_rows`` usable rows, with
    :func:`~cotmod.classifiers.read_scores`'s rules and errors (rows left out by
    ``skip_bad_rows`` are counted in ``skips``)."""
    yield from _Batches(
        Path(path), labels=labels, strata=strata, id_field=id_field, time_field=time_field,
        require_timestamps=require_timestamps, fmt=fmt, skip_bad_rows=skip_bad_rows,
        skips=skips if skips is not None else SkipCounter(), batch_rows=batch_rows,
    )


# -- the chunker ----------------------------------------------------------------------------------


@dataclass
class _Group:
    g: GroupDrift
    ref: Floats
    sref: SortedReference | None = None
    bins: Bins | None = None
    k0: int = 0
    # count chunks: buffered rows; time chunks: window -> buffered rows
    buf: list[tuple[Floats, Ints]] = field(default_factory=list)
    buffered: int = 0
    windows: dict[int, list[tuple[Floats, Ints]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.ref) == 0:
            self.g.note = "no reference rows"
            return
        self.sref = SortedReference(self.ref)
        self.k0 = int((self.ref >= self.g.threshold).sum())
        self.g.ref_flag_rate = self.k0 / len(self.ref)


class _Chunker:
    def __init__(
        self, path: Path, reference: ScoreLog, settings: MonitorSettings, kind: str, size: int, skip: bool, skips: SkipCounter, time_field: str
    ) -> None:
        self.path = path
        self.time_field = time_field
        self.reference = reference
        self.settings = settings
        self.kind = kind
        self.size = size
        self.skip = skip
        self.skips = skips
        self.groups: dict[tuple[str, str | None, str | None], _Group] = {}
        self.max_window: int | None = None
        self.bins_cache: dict[tuple[str, str | None, str | None], Bins] = {}

    def group(self, label: str, field_: str | None, value: str | None) -> _Group:
        key = (label, field_, value)
        st = self.groups.get(key)
        if st is None:
            ref = self.reference.scores[label]
            if field_ is not None:
                ref = ref[np.asarray(self.reference.strata[field_], dtype=object) == value]
            threshold = float(self.settings.thresholds.get(label, self.settings.default_threshold))
            g = GroupDrift(label=label, stratum=None if field_ is None else f"{field_}={value}", threshold=threshold, reference_n=len(ref), n=0)
            st = _Group(g=g, ref=ref)
            if st.sref is not None:
                st.bins = quantile_bins(ref, self.settings.bins)
            self.groups[key] = st
        return st

    def _close(self, st: _Group, x: Floats, lines: Ints, window: tuple[str | None, str | None]) -> None:
        assert st.sref is not None and st.bins is not None
        s = self.settings
        if (
            self.kind == "count" and st.g.stratum is None and s.alerts != "constant" and len(x) == self.size
            and len(st.ref) // self.size < s.min_reference_chunks
        ):
            raise _short_reference(len(st.ref), st.g.label, self.size, s)  # fail early, not after the whole log
        c = _chunk_drift(len(st.g.chunks), x, (int(lines.min()), int(lines.max())), window, st.sref, st.bins, st.g.threshold, st.k0, s)
        st.g.chunks.append(c)

    def _add(self, st: _Group, x: Floats, lines: Ints, win: Ints | None) -> None:
        st.g.n += len(x)
        if st.sref is None or len(x) == 0:
            return
        if win is None:
            st.buf.append((x, lines))
            st.buffered += len(x)
            if st.buffered >= self.size:
                xs = np.concatenate([a for a, _ in st.buf])
                ls = np.concatenate([b for _, b in st.buf])
                full = (len(xs) // self.size) * self.size
                for i in range(0, full, self.size):
                    self._close(st, xs[i : i + self.size], ls[i : i + self.size], (None, None))
                st.buf = [(xs[full:], ls[full:])] if full < len(xs) else []
                st.buffered = len(xs) - full
            return
        for w in np.unique(win):
            m = win == w
            st.windows.setdefault(int(w), []).append((x[m], lines[m]))

    def _close_windows(self, st: _Group, before: int | None) -> None:
        for w in sorted(st.windows):
            if before is not None and w >= before:
                break
            parts = st.windows.pop(w)
            xs = np.concatenate([a for a, _ in parts])
            ls = np.concatenate([b for _, b in parts])
            self._close(st, xs, ls, (_iso(float(w) * self.size), _iso(float(w + 1) * self.size)))

    def feed(self, batch: ScoreBatch, labels: list[str]) -> int:
        win: Ints | None = None
        if self.kind == "time":
            assert batch.timestamps is not None
            win = np.floor(batch.timestamps / self.size).astype(np.int64)
            prev = self.max_window if self.max_window is not None else int(win[0])
            running = np.maximum.accumulate(np.r_[prev, win])[1:]
            late = win < running - 1
            if late.any():
                i = int(np.flatnonzero(late)[0])
                where = f"{self.path}:{int(batch.lines[i])}"
                msg = (
                    f"{where}: field {self.time_field!r}: {_iso(float(batch.timestamps[i]))} falls in a chunk already closed "
                    f"(rows may be out of time order by at most one chunk of {self.settings.chunk}); sort the log by time"
                )
                if not self.skip:
                    raise InputError(msg)
                for j in np.flatnonzero(late):
                    self.skips.add(int(batch.lines[j]), msg if j == i else f"{self.path}:{int(batch.lines[j])}: {msg.split(': ', 1)[1]}")
                keep = ~late
                batch = ScoreBatch(
                    lines=batch.lines[keep], scores={k: v[keep] for k, v in batch.scores.items()},
                    timestamps=batch.timestamps[keep], strata={k: v[keep] for k, v in batch.strata.items()},
                )
                win = win[keep]
            self.max_window = int(running[-1])
        for lb in labels:
            self._add(self.group(lb, None, None), batch.scores[lb], batch.lines, win)
            for s in self.settings.strata:
                col = batch.strata[s]
                for v in np.unique(col):
                    m = col == v
                    self._add(self.group(lb, s, str(v)), batch.scores[lb][m], batch.lines[m], None if win is None else win[m])
        if win is not None and self.max_window is not None:
            for st in self.groups.values():
                self._close_windows(st, self.max_window - 1)
        return len(batch)

    def finish(self, labels: list[str], constant: dict[str, float]) -> list[GroupDrift]:
        out: list[GroupDrift] = []
        for lb in labels:
            order = list(self.settings.strata)
            strata_keys = sorted((k for k in self.groups if k[0] == lb and k[1] is not None), key=lambda k: (order.index(k[1] or ""), k[2] or ""))
            keys = [(lb, None, None), *strata_keys]
            for key in keys:
                st = self.group(*key)
                if st.sref is not None:
                    if self.kind == "count":
                        if st.buffered:
                            xs = np.concatenate([a for a, _ in st.buf])
                            ls = np.concatenate([b for _, b in st.buf])
                            st.buf, st.buffered = [], 0
                            self._close(st, xs, ls, (None, None))
                    else:
                        self._close_windows(st, None)
                    assert st.bins is not None
                    _finish_group(st.g, st.ref, st.bins, self.settings, constant)
                out.append(st.g)
        return out


def monitor_stream(
    path: str | Path,
    reference: ScoreLog,
    settings: MonitorSettings,
    *,
    id_field: str = "id",
    time_field: str = "timestamp",
    fmt: str | None = None,
    skip_bad_rows: bool = False,
    batch_rows: int = 65536,
) -> MonitorReport:
    """:func:`~cotmod.classifiers.monitor` of the score log at ``path`` in one streaming pass.

    Reads ``settings.labels`` (default: every label of the first row) and ``settings.strata``.
    Bad rows raise :class:`~cotmod.InputError` ``FILE:LINE: field ...`` as in ``read_scores``;
    with ``skip_bad_rows`` they are left out and counted in ``rows_skipped`` (the first few with
    their reason in ``skipped_rows``).
    """
    p = Path(path)
    kind, size = parse_chunk(settings.chunk)
    constant = _check_settings(settings)
    for s in settings.strata:
        if s not in reference.strata:
            raise InputError(f"{reference.path}: stratum field {s!r} was not read")
    skips = SkipCounter()
    batches = _Batches(
        p, labels=settings.labels, strata=settings.strata, id_field=id_field, time_field=time_field,
        require_timestamps=kind == "time", fmt=fmt, skip_bad_rows=skip_bad_rows, skips=skips, batch_rows=batch_rows,
    )
    _no_unknown_thresholds(settings.thresholds, reference)
    chunker = _Chunker(p, reference, settings, kind, size, skip_bad_rows, skips, time_field)
    labels: list[str] = []
    rows = 0
    for batch in batches:
        if not labels:
            labels = list(settings.labels) if settings.labels else batches.labels
            for lb in labels:
                if lb not in batches.labels:
                    raise InputError(f"{p}: no label {lb!r} (labels: {', '.join(batches.labels)})")
                if lb not in reference.labels:
                    raise InputError(f"{reference.path}: the reference has no label {lb!r} (labels: {', '.join(reference.labels)})")
        rows += chunker.feed(batch, labels)
    if not labels:
        raise InputError(f"{p}: no rows" if not skips.count else f"{p}: no usable rows ({skips.count} skipped)")
    report = MonitorReport(
        source=str(p),
        reference=reference.path,
        chunk=str(settings.chunk),
        alert_method=settings.alerts,
        sigma=None if settings.alerts != "std" else settings.sigma,
        limits=constant if settings.alerts == "constant" else None,
        rows=rows,
        rows_skipped=skips.count,
        skipped_rows=skips.rows,
    )
    report.groups = chunker.finish(labels, constant)
    return report
