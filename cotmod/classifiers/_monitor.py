"""Drift monitoring of classifier scores: chunks of a score log against a reference log.

Per label, over all rows and per stratum value (``strata``), the analysed log is cut into chunks,
by time window (``"1d"``, ``"6h"``, ``"30m"``, ``"1w"``; windows aligned on UTC epoch multiples,
so ``1d`` is a calendar day in UTC) or by count (``100000``: consecutive rows in file order). Each
chunk gets the statistics of :mod:`cotmod.classifiers._drift` against the reference.

Alerts (``alerts=``):

* ``"std"`` (default, data-driven): the reference is cut into chunks of the same size (up to
  ``max_reference_chunks`` of them, evenly spread), each compared with the rest of the reference;
  a chunk alerts on a statistic above the reference chunks' mean + ``sigma`` sd (PSI, JS, KS,
  Wasserstein), or on a flag rate outside mean ± ``sigma`` sd. Small chunks get wide limits and
  large chunks narrow ones, so neither cries wolf nor sleeps through a shift.
* ``"p99"``: the same, with the reference chunks' 99th percentile (1st..99th for the flag rate).
* ``"constant"``: fixed limits: PSI > 0.1, JS > 0.1, Wasserstein > 0.1, KS p < 0.05,
  flag-rate test p < 0.05 (Evidently's defaults; override with ``limits``). PSI 0.25 is the
  other common cut-off.

When time chunks differ in size, reference chunks are cut per distinct size (or, with more than
8 distinct sizes, per size rounded down to a power of sqrt(2): slightly wider limits). A reference
too short for ``min_reference_chunks`` chunks of a size is an error for a label's rows as a whole;
in a stratum, limits then come from the largest reference chunks it has enough of (wider limits),
and the chunk says so in ``note``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from .._exceptions import ConfigError, InputError
from ._drift import (
    Bins,
    DistanceStats,
    SortedReference,
    flag_rate_test,
    leave_out_stats,
    quantile_bins,
)
from ._scores import ScoreLog, SkippedRow

__all__ = ["ChunkDrift", "GroupDrift", "MonitorReport", "MonitorSettings", "monitor", "parse_chunk"]

DISTANCES = ("psi", "js", "ks", "wasserstein")
STATS = (*DISTANCES, "flag_rate")
#: Constant limits (Evidently's defaults): distances above, p-values below.
CONSTANT_LIMITS: dict[str, float] = {"psi": 0.1, "js": 0.1, "wasserstein": 0.1, "ks_p": 0.05, "flag_rate_p": 0.05}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_EXACT_SIZES = 8
_TOL = 1e-9  # relative tolerance of the data-driven limits


_MAX_WINDOW = 5200 * 7 * 86400  # 100 years: window bounds stay dates (a longer one overflowed)


def parse_chunk(spec: str | int) -> tuple[Literal["time", "count"], int]:
    """``"1d"`` → ("time", 86400); ``"100000"`` or 100000 → ("count", 100000)."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ConfigError(f"chunk {spec!r}: expected a row count of at least 1 or a time window (30m, 6h, 1d, 1w)")
        return "count", spec
    s = str(spec).strip().lower()
    if s.isdigit():
        return parse_chunk(int(s))
    m = re.fullmatch(r"(\d+)\s*([smhdw])", s)
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"chunk {spec!r}: expected a row count (100000) or a time window (30m, 6h, 1d, 1w)")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > _MAX_WINDOW:
        raise ConfigError(f"chunk {spec!r}: a time window can be at most 100 years (5200w)")
    return "time", seconds


@dataclass
class MonitorSettings:
    chunk: str | int
    alerts: Literal["std", "p99", "constant"] = "std"
    sigma: float = 3.0
    bins: int = 10
    eps: float = 1e-4
    limits: Mapping[str, float] = field(default_factory=dict)  # constant limits overriding CONSTANT_LIMITS
    thresholds: Mapping[str, float] = field(default_factory=dict)  # operating threshold per label
    default_threshold: float = 0.5
    labels: Sequence[str] | None = None
    strata: Sequence[str] = ()
    min_reference_chunks: int = 10
    max_reference_chunks: int = 200


class ChunkDrift(BaseModel):
    index: int
    start: str | None = None  # ISO 8601 (time chunks)
    end: str | None = None
    first_line: int
    last_line: int
    n: int
    psi: float
    js: float
    ks: float
    ks_p: float
    wasserstein: float
    flag_rate: float
    ref_flag_rate: float
    flag_rate_diff: float
    flag_rate_diff_ci95: tuple[float, float]
    flag_rate_p: float
    limits: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)  # stat -> (lower, upper)
    alerts: list[str] = Field(default_factory=list)
    note: str | None = None


class GroupDrift(BaseModel):
    label: str
    stratum: str | None = None  # "FIELD=VALUE", None for all rows
    threshold: float
    reference_n: int
    n: int
    ref_flag_rate: float | None = None
    chunks: list[ChunkDrift] = Field(default_factory=list)
    note: str | None = None

    @property
    def alerts(self) -> int:
        return sum(1 for c in self.chunks if c.alerts)


class MonitorReport(BaseModel):
    source: str
    reference: str
    chunk: str
    alert_method: str
    sigma: float | None = None
    limits: dict[str, float] | None = None  # constant limits
    groups: list[GroupDrift] = Field(default_factory=list)
    rows: int | None = None  # rows analysed (set by monitor_stream)
    rows_skipped: int = 0  # rows of the analysed log left out by a lenient read (skip_bad_rows)
    skipped_rows: list[SkippedRow] = Field(default_factory=list)  # the first few, with FILE:LINE and reason

    @property
    def alerts(self) -> int:
        return sum(g.alerts for g in self.groups)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _chunks(log: ScoreLog, kind: str, size: int) -> list[tuple[npt.NDArray[np.int64], str | None, str | None]]:
    n = len(log)
    if kind == "count":
        return [(np.arange(i, min(i + size, n), dtype=np.int64), None, None) for i in range(0, n, size)]
    if log.timestamps is None:
        raise InputError(f"{log.path}: chunking by time needs a timestamp on every row (or chunk by count)")
    win = np.floor(log.timestamps / size).astype(np.int64)
    out: list[tuple[npt.NDArray[np.int64], str | None, str | None]] = []
    for w in np.unique(win):
        out.append((np.flatnonzero(win == w).astype(np.int64), _iso(float(w) * size), _iso(float(w + 1) * size)))
    return out


def _size_key(n: int, exact: bool) -> int:
    if exact or n < 2:
        return n
    return max(1, int(2 ** (math.floor(2 * math.log2(n)) / 2)))


@dataclass
class _Spread:
    values: dict[str, npt.NDArray[np.float64]]


def _reference_spread(ref: npt.NDArray[np.float64], bins: Bins, size: int, threshold: float, settings: MonitorSettings) -> _Spread | None:
    count = len(ref) // size
    if count < settings.min_reference_chunks:
        return None
    starts = np.linspace(0, count - 1, min(count, settings.max_reference_chunks)).round().astype(int) * size
    ref_sorted = np.sort(ref)
    vals: dict[str, list[float]] = {s: [] for s in STATS}
    for st in starts:
        chunk = ref[st : st + size]
        d = leave_out_stats(ref_sorted, chunk, bins, settings.eps)
        for s in DISTANCES:
            vals[s].append(float(getattr(d, s)))
        vals["flag_rate"].append(float((chunk >= threshold).mean()))
    return _Spread({k: np.asarray(v) for k, v in vals.items()})


def _limits(spread: _Spread, settings: MonitorSettings) -> dict[str, tuple[float | None, float | None]]:
    out: dict[str, tuple[float | None, float | None]] = {}
    for s, v in spread.values.items():
        if settings.alerts == "p99":
            lo, hi = float(np.percentile(v, 1)), float(np.percentile(v, 99))
        else:
            mu, sd = float(v.mean()), float(v.std(ddof=1))
            lo, hi = mu - settings.sigma * sd, mu + settings.sigma * sd
        out[s] = (lo, hi) if s == "flag_rate" else (None, hi)
    return out


def _check(c: ChunkDrift, settings: MonitorSettings, constant: Mapping[str, float]) -> list[str]:
    alerts: list[str] = []
    if settings.alerts == "constant":
        for s in ("psi", "js", "wasserstein"):
            if getattr(c, s) > constant[s]:
                alerts.append(s)
        if c.ks_p < constant["ks_p"]:
            alerts.append("ks")
        if c.flag_rate_p < constant["flag_rate_p"]:
            alerts.append("flag_rate")
        return alerts
    for s, (lo, hi) in c.limits.items():
        v = float(getattr(c, s))
        # a tolerance for rounding: scipy's Wasserstein of two equal constant samples is ~1e-14,
        # and a constant series' reference spread is exactly 0 (limit 0)
        if (hi is not None and v > hi + _TOL * max(1.0, abs(hi))) or (lo is not None and v < lo - _TOL * max(1.0, abs(lo))):
            alerts.append(s)
    return alerts


def _chunk_drift(
    index: int,
    x: npt.NDArray[np.float64],
    lines: tuple[int, int],
    window: tuple[str | None, str | None],
    ref: SortedReference,
    bins: Bins,
    threshold: float,
    k0: int,
    settings: MonitorSettings,
) -> ChunkDrift:
    """One chunk's statistics against the reference (limits and alerts come in :func:`_finish_group`)."""
    d: DistanceStats = ref.stats(x, bins, settings.eps)
    k1 = int((x >= threshold).sum())
    fr = flag_rate_test(k1, len(x), k0, len(ref))
    return ChunkDrift(
        index=index, start=window[0], end=window[1], first_line=lines[0], last_line=lines[1],
        n=len(x), psi=d.psi, js=d.js, ks=d.ks, ks_p=d.ks_p if d.ks_p is not None else 1.0, wasserstein=d.wasserstein,
        flag_rate=fr.rate, ref_flag_rate=fr.ref_rate, flag_rate_diff=fr.diff, flag_rate_diff_ci95=fr.diff_ci95,
        flag_rate_p=fr.p_value,
    )


def _short_reference(n_ref: int, label: str, largest: int, settings: MonitorSettings) -> InputError:
    return InputError(
        f"reference has {n_ref} rows for label {label!r}: too few for {settings.min_reference_chunks} chunks of "
        f"{largest} rows (the largest chunk); use a larger reference, smaller chunks or constant alerts"
    )


def _finish_group(g: GroupDrift, ref: npt.NDArray[np.float64], bins: Bins, settings: MonitorSettings, constant: Mapping[str, float]) -> None:
    """Limits (from reference chunks of each chunk's size) and alerts for every chunk of ``g``."""
    exact = len({c.n for c in g.chunks}) <= _MAX_EXACT_SIZES
    spreads: dict[int, _Spread | None] = {}
    short: list[int] = []
    for c in g.chunks:
        if settings.alerts != "constant":
            key = _size_key(c.n, exact)
            if key not in spreads:
                spreads[key] = _reference_spread(ref, bins, key, g.threshold, settings)
            spread = spreads[key]
            if spread is None:
                short.append(c.n)
                # a stratum's reference may be too short for chunks this size: fall back on the
                # largest size it has enough chunks of (smaller: wider limits, fewer alarms)
                fallback = len(ref) // settings.min_reference_chunks
                if fallback >= 1 and g.stratum is not None:
                    if fallback not in spreads:
                        spreads[fallback] = _reference_spread(ref, bins, fallback, g.threshold, settings)
                    spread = spreads[fallback]
                    c.note = f"limits from reference chunks of {fallback} rows (the stratum's reference has {len(ref)} rows)"
                else:
                    c.note = (
                        f"reference has {len(ref)} rows: too few for {settings.min_reference_chunks} chunks of {key}; "
                        "no data-driven limits"
                    )
            if spread is not None:
                c.limits = _limits(spread, settings)
        c.alerts = _check(c, settings, constant)
    if short and g.stratum is None:
        raise _short_reference(len(ref), g.label, max(short), settings)


def _group(
    label: str,
    stratum: str | None,
    cur: ScoreLog,
    ref: npt.NDArray[np.float64],
    kind: str,
    size: int,
    settings: MonitorSettings,
    constant: Mapping[str, float],
) -> GroupDrift:
    threshold = float(settings.thresholds.get(label, settings.default_threshold))
    g = GroupDrift(label=label, stratum=stratum, threshold=threshold, reference_n=len(ref), n=len(cur))
    if len(ref) == 0:
        g.note = "no reference rows"
        return g
    scores = cur.scores[label]
    bins = quantile_bins(ref, settings.bins)
    sref = SortedReference(ref)
    k0 = int((ref >= threshold).sum())
    g.ref_flag_rate = k0 / len(ref)
    for i, (idx, start, end) in enumerate(_chunks(cur, kind, size)):
        lines = (int(cur.lines[idx].min()), int(cur.lines[idx].max()))
        g.chunks.append(_chunk_drift(i, scores[idx], lines, (start, end), sref, bins, threshold, k0, settings))
    _finish_group(g, ref, bins, settings, constant)
    return g


def _check_settings(settings: MonitorSettings) -> dict[str, float]:
    """Validate the alert settings; the constant limits in force."""
    if settings.alerts not in ("std", "p99", "constant"):
        raise ConfigError(f"unknown alert method {settings.alerts!r} (std, p99, constant)")
    unknown = [k for k in settings.limits if k not in CONSTANT_LIMITS]
    if unknown:
        raise ConfigError(f"unknown limit {unknown[0]!r} (known: {', '.join(CONSTANT_LIMITS)})")
    return {**CONSTANT_LIMITS, **settings.limits}


def _no_unknown_thresholds(thresholds: Mapping[str, float], log: ScoreLog) -> None:
    """A threshold for a label the log does not have is a mistake (a typo would otherwise leave
    the real label at the default threshold without a word)."""
    unknown = [lb for lb in thresholds if lb not in log.labels]
    if unknown:
        raise InputError(f"threshold for label {unknown[0]!r}, which {log.path} does not have (labels: {', '.join(log.labels)})")


def monitor(log: ScoreLog, reference: ScoreLog, settings: MonitorSettings) -> MonitorReport:
    """Drift of ``log``'s scores against ``reference``'s, per label and per stratum, chunk by chunk."""
    kind, size = parse_chunk(settings.chunk)
    constant = _check_settings(settings)
    labels = list(settings.labels) if settings.labels else list(log.labels)
    for lb in labels:
        if lb not in log.labels:
            raise InputError(f"{log.path}: no label {lb!r} (labels: {', '.join(log.labels)})")
        if lb not in reference.labels:
            raise InputError(f"{reference.path}: the reference has no label {lb!r} (labels: {', '.join(reference.labels)})")
    _no_unknown_thresholds(settings.thresholds, log)
    for s in settings.strata:
        for lg in (log, reference):
            if s not in lg.strata:
                raise InputError(f"{lg.path}: stratum field {s!r} was not read")
    report = MonitorReport(
        source=log.path,
        reference=reference.path,
        chunk=str(settings.chunk),
        alert_method=settings.alerts,
        sigma=None if settings.alerts != "std" else settings.sigma,
        limits=constant if settings.alerts == "constant" else None,
        rows_skipped=log.skipped,
        skipped_rows=list(log.skipped_rows),
    )
    for lb in labels:
        report.groups.append(_group(lb, None, log, reference.scores[lb], kind, size, settings, constant))
        for s in settings.strata:
            ref_vals = np.asarray(reference.strata[s], dtype=object)
            cur_vals = np.asarray(log.strata[s], dtype=object)
            for v in sorted(set(log.strata[s])):
                sub = log.select(cur_vals == v)
                ref_sub = reference.scores[lb][ref_vals == v]
                report.groups.append(_group(lb, f"{s}={v}", sub, ref_sub, kind, size, settings, constant))
    return report
