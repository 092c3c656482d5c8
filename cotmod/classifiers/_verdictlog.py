"""Accuracy monitoring of the LLM stream: cotmod's own verdict logs as series for :func:`monitor`.

A verdict log is a JSONL file of :class:`~cotmod.Verdict` lines (``cotmod run`` output,
``cotmod moderate --json`` lines). The ``cotmod run`` dead-letter file next to it
(``out.errors.jsonl`` for ``out.jsonl``) is read too, as failed items belong in the error rate.
Each record becomes a row of named series:

========================  ======  ==============================================================
series                    kind    value, on which rows
========================  ======  ==============================================================
``error``                 rate    1 for an error verdict or a dead letter of a model or transport
                                  failure, 0 for a decided verdict; every row (dead letters of
                                  input problems, ``BadRow``/``DuplicateId``/``InputError``, are
                                  not model errors: they are counted and reported, not in here)
``tokens``                value   ``usage.total_tokens``; every verdict (not dead letters)
``violates:<policy>``     rate    1 if the policy is violated; decided verdicts judging it
``rule:<rule id>``        rate    1 if the rule is among the decision's ``rule_ids``; the same
                                  rows as its policy's ``violates`` (a rule id used by two
                                  policies is named ``rule:<policy>/<rule id>``)
``score:<policy>``        value   the decision's score; decided verdicts judging the policy,
                                  triaged-out decisions excepted (they have no model judgement)
``confidence:<policy>``   value   the decision's stated confidence; the same rows as ``score``
========================  ======  ==============================================================

Each series is monitored like a classifier label, with the same drift statistics, alerts and
exit codes. A *rate* series holds 0/1: its flag rate (at threshold 0.5) is the rate itself (the
violation rate, the rule's firing rate, the error rate), with the two-proportion test and CI; on
0/1 values KS and Wasserstein both equal the rate difference, and PSI/JS see two bins only when
the reference rate is between 1/bins and 1 - 1/bins. A *value* series (tokens, score,
confidence) has no operating threshold: its flag-rate fields are NaN in Python and None in
``model_dump`` (and ``--json``), and its flag rate never alerts. With constant alerts, the
Wasserstein limit (on scores in [0, 1]) is not applied to ``tokens``.

Rows and chunks: a series has a row for each record it is defined on (see the table), so a
count chunk of N is N consecutive rows *of that series* (for ``violates:<policy>``: N decided
verdicts judging the policy; for ``error``: N verdicts and dead letters). Time chunks cut every
series at the same instants.

Time: ``created_at`` of each verdict by default (a dead letter's ``at``), or the field named by
``time_field`` (``metadata.<name>`` for a field of the item's metadata). When the time field is
present, rows are put in time order (ties keep file order) and dead letters are merged in; a
dead letter's ``first_line``/``last_line`` is the verdict-file line of the verdict just before it.
Without timestamps, rows stay in file order, only count chunks work, and dead letters cannot be
placed: the error rate then counts error verdicts of the verdict file only, and the report says so.

Strata: ``metadata.<name>`` or a plain name, looked up in the item's metadata first, then among
the verdict's own fields (``model``, ``prompt_fingerprint``, ``cotmod_version``...). Dead letters
carry no item metadata: they fall in the stratum ``(missing)`` (so per stratum, the error rate of
``eu`` counts the error verdicts of the verdict file only).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from .._exceptions import ConfigError, InputError
from .._verdict import Verdict
from ..batch._reader import read_records
from ..batch._store import errors_path
from ._monitor import MonitorReport, MonitorSettings, monitor, parse_chunk
from ._scores import MISSING_STRATUM, ScoreLog, parse_timestamp

__all__ = [
    "INPUT_PROBLEMS",
    "SERIES_KINDS",
    "VerdictLog",
    "VerdictMonitorReport",
    "VerdictSeries",
    "is_verdict_log",
    "monitor_verdicts",
    "read_verdict_log",
]

#: The kinds of series, in report order.
SERIES_KINDS = ("error", "tokens", "violates", "rule", "score", "confidence")
_VALUE_KINDS = ("tokens", "score", "confidence")
#: Dead-letter types that are input problems, not model or transport failures.
INPUT_PROBLEMS = frozenset({"BadRow", "DuplicateId", "InputError"})
_VERDICT_KEYS = ("item_id", "status", "policy_versions", "prompt_fingerprint")
_FLAG_FIELDS = ("flag_rate", "ref_flag_rate", "flag_rate_diff", "flag_rate_diff_ci95", "flag_rate_p")


@dataclass(slots=True)
class _Decision:
    violates: bool
    rules: tuple[str, ...]
    confidence: float
    score: float
    triaged_out: bool


@dataclass(slots=True)
class _Row:
    line: int  # verdict-file line (a dead letter: that of the verdict written just before it)
    id: str
    time: float | None
    strata: dict[str, str]
    error: bool
    tokens: float | None  # None for a dead letter
    decisions: dict[str, _Decision]


@dataclass
class VerdictLog:
    """A verdict log (and its dead letters) as rows, ready to be cut into series."""

    path: str
    rows: list[_Row]
    verdicts: int
    dead_letters: int  # dead letters of model or transport failures merged into the rows
    input_problems: int  # dead letters of input problems (not in the error rate)
    unplaced: int  # dead letters left out: the verdicts carry no time to place them by
    has_time: bool
    strata: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def rule_names(self) -> dict[tuple[str, str], str]:
        """(policy, rule id) → series name."""
        pairs = sorted({(p, r) for row in self.rows for p, d in row.decisions.items() for r in d.rules})
        return _rule_names(pairs)

    def policies(self) -> list[str]:
        return sorted({p for row in self.rows for p in row.decisions})


def _rule_names(pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    owners: dict[str, set[str]] = {}
    for p, r in pairs:
        owners.setdefault(r, set()).add(p)
    return {(p, r): f"rule:{r}" if len(owners[r]) == 1 else f"rule:{p}/{r}" for p, r in pairs}


def is_verdict_log(path: str | Path, fmt: str | None = None) -> bool:
    """True when the first record of ``path`` looks like a cotmod verdict (``item_id``,
    ``status``, ``policy_versions``, ``prompt_fingerprint``) and has no classifier scores."""
    for _, rec in read_records(path, fmt=fmt):
        has_scores = "scores" in rec or any(str(k).startswith("score_") for k in rec)
        return not has_scores and all(k in rec for k in _VERDICT_KEYS)
    return False


def _get(rec: Mapping[str, Any], name: str) -> Any:
    """``metadata.X``: the item's metadata field X; a plain name: metadata first, then the record."""
    meta = rec.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    if name.startswith("metadata."):
        return meta.get(name[len("metadata."):])
    if name in meta:
        return meta[name]
    return rec.get(name)


def _why(exc: ValidationError) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "record"
    return f"field {loc!r}: {e['msg']}"


def _torn_last_line(p: Path, line: int) -> bool:
    """Whether ``line`` is the file's last line and has no newline: a write in progress."""
    if p.suffix.lower() == ".gz":
        return False
    n, last = 0, b""
    with p.open("rb") as f:
        for raw in f:
            n, last = n + 1, raw
    return n == line and not last.endswith(b"\n")


def _records(p: Path, fmt: str | None, notes: list[str]) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        for line, rec in read_records(p, fmt=fmt):
            out.append((line, rec))
    except InputError as exc:
        line = len(out) and out[-1][0]
        nxt = _line_of(str(exc), p)
        if nxt is not None and nxt > line and _torn_last_line(p, nxt):
            notes.append(f"{p}:{nxt}: the last line is incomplete (a run still writing?); not read")
        else:
            raise
    return out


def _line_of(msg: str, p: Path) -> int | None:
    head = f"{p}:"
    if not msg.startswith(head):
        return None
    num = msg[len(head):].split(":", 1)[0]
    return int(num) if num.isdigit() else None


def _time(value: Any, where: str) -> float:
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None


def read_verdict_log(
    path: str | Path,
    *,
    strata: Sequence[str] = (),
    time_field: str = "created_at",
    require_timestamps: bool = False,
    dead_letters: bool = True,
    fmt: str | None = None,
) -> VerdictLog:
    """Read a verdict log (and, with ``dead_letters``, the dead-letter file next to it).

    Every line must be a :class:`~cotmod.Verdict`; the first that is not raises
    :class:`~cotmod.InputError` ``FILE:LINE: not a cotmod verdict (field ...: ...)``. Timestamps
    are read when the first verdict has ``time_field``; then every verdict needs one
    (``require_timestamps``: the first must have it too). An incomplete last line (a run still
    writing) is left out and noted.
    """
    p = Path(path)
    notes: list[str] = []
    rows: list[_Row] = []
    has_time: bool | None = None
    for line, rec in _records(p, fmt, notes):
        where = f"{p}:{line}"
        try:
            v = Verdict.model_validate(rec)
        except ValidationError as exc:
            raise InputError(f"{where}: not a cotmod verdict ({_why(exc)})") from None
        tv = _get(rec, time_field)
        present = tv is not None and tv != ""
        if has_time is None:
            has_time = present
            if require_timestamps and not present:
                raise InputError(
                    f"{where}: field {time_field!r} is missing: chunking by time needs a timestamp on every "
                    "verdict (chunk by count instead, e.g. --chunk 500, or name the time field with --time-field)"
                )
        elif has_time and not present:
            raise InputError(f"{where}: field {time_field!r} is missing (verdicts must all have a timestamp, or none)")
        st: dict[str, str] = {}
        for s in strata:
            sv = _get(rec, s)
            st[s] = MISSING_STRATUM if sv is None or sv == "" else str(sv)
        decisions = {
            d.policy_id: _Decision(d.violates, tuple(d.rule_ids), d.confidence, d.score, d.triaged_out)
            for d in v.decisions
        } if v.status == "ok" else {}
        rows.append(
            _Row(
                line=line, id=v.item_id, time=_time(tv, f"{where}: field {time_field!r}") if has_time else None,
                strata=st, error=v.status == "error", tokens=float(v.usage.total_tokens), decisions=decisions,
            )
        )
    n_verdicts = len(rows)
    if not rows:
        raise InputError(f"{p}: no verdicts")
    merged = input_problems = unplaced = 0
    epath = errors_path(p)
    if dead_letters and epath.is_file():
        placed: list[_Row] = []
        for line, rec in _records(epath, None, notes):
            etype = str(rec.get("error_type", ""))
            if etype in INPUT_PROBLEMS:
                input_problems += 1
                continue
            at = rec.get("at")
            if not has_time or time_field != "created_at" or at in (None, ""):
                unplaced += 1
                continue
            st = {s: MISSING_STRATUM if rec.get(s) in (None, "") else str(rec.get(s)) for s in strata}
            placed.append(
                _Row(line=0, id=str(rec.get("id", f"line-{line}")), time=_time(at, f"{epath}:{line}: field 'at'"),
                     strata=st, error=True, tokens=None, decisions={})
            )
        merged = len(placed)
        rows += placed
        if input_problems:
            notes.append(
                f"{epath}: {input_problems} dead letter(s) of input problems (bad rows, duplicate ids) are not in the error rate"
            )
        if unplaced:
            why = "the verdicts carry no timestamp" if not has_time else f"they carry no {time_field!r}"
            notes.append(
                f"{epath}: {unplaced} dead letter(s) of failed items could not be placed in time ({why}); "
                "the error rate counts the error verdicts of the verdict file only"
            )
    if has_time:
        rows.sort(key=lambda r: r.time or 0.0)  # stable: ties keep file order
        last = 0
        for r in rows:
            if r.tokens is None:  # a dead letter: the line of the verdict just before it
                r.line = last
            else:
                last = r.line
        first = next(r.line for r in rows if r.tokens is not None)
        for r in rows:
            if r.line == 0:
                r.line = first
    return VerdictLog(
        path=str(p), rows=rows, verdicts=n_verdicts, dead_letters=merged, input_problems=input_problems,
        unplaced=unplaced, has_time=bool(has_time), strata=tuple(strata), notes=notes,
    )


def _kind_of(name: str) -> str:
    return name.split(":", 1)[0]


def _series_names(log: VerdictLog, reference: VerdictLog) -> tuple[list[str], dict[str, tuple[str, str | None, str | None]]]:
    """Every series of ``log`` in report order, and name → (kind, policy, rule id)."""
    info: dict[str, tuple[str, str | None, str | None]] = {"error": ("error", None, None)}
    if any(r.tokens is not None for r in log.rows):
        info["tokens"] = ("tokens", None, None)
    pairs = sorted(
        {(p, r) for lg in (log, reference) for row in lg.rows for p, d in row.decisions.items() for r in d.rules}
    )
    rules = _rule_names(pairs)
    for pol in log.policies():
        info[f"violates:{pol}"] = ("violates", pol, None)
        for (p, r), name in rules.items():
            if p == pol:
                info[name] = ("rule", pol, r)
        info[f"score:{pol}"] = ("score", pol, None)
        info[f"confidence:{pol}"] = ("confidence", pol, None)
    return list(info), info  # error, tokens, then per policy: violates, its rules, score, confidence


def _series(log: VerdictLog, name: str, what: tuple[str, str | None, str | None]) -> ScoreLog:
    kind, pol, rule = what
    vals: list[float] = []
    keep: list[_Row] = []
    for r in log.rows:
        if kind == "error":
            vals.append(1.0 if r.error else 0.0)
        elif kind == "tokens":
            if r.tokens is None:
                continue
            vals.append(r.tokens)
        else:
            assert pol is not None
            d = r.decisions.get(pol)
            if d is None:
                continue
            if kind == "violates":
                vals.append(1.0 if d.violates else 0.0)
            elif kind == "rule":
                vals.append(1.0 if rule in d.rules else 0.0)
            else:
                if d.triaged_out:
                    continue
                vals.append(d.score if kind == "score" else d.confidence)
        keep.append(r)
    return ScoreLog(
        path=log.path,
        labels=(name,),
        ids=[r.id for r in keep],
        lines=np.asarray([r.line for r in keep], dtype=np.int64),
        scores={name: np.asarray(vals, dtype=np.float64)},
        truth={name: np.full(len(keep), -1, dtype=np.int8)},
        timestamps=np.asarray([r.time for r in keep], dtype=np.float64) if log.has_time else None,
        strata={s: [r.strata[s] for r in keep] for s in log.strata},
    )


class VerdictSeries(BaseModel):
    name: str
    kind: Literal["rate", "value"]
    description: str
    n: int
    reference_n: int


class VerdictMonitorReport(MonitorReport):
    """A :class:`MonitorReport` of verdict-log series, with what was read.

    A value series' groups have no operating threshold: their flag-rate fields are NaN here and
    None in ``model_dump``.
    """

    input: Literal["verdicts"] = "verdicts"
    series: list[VerdictSeries] = Field(default_factory=list)
    verdicts: int = 0
    reference_verdicts: int = 0
    dead_letters: int = 0
    reference_dead_letters: int = 0
    notes: list[str] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _value_series_without_flag_rate(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        values = {s.name for s in self.series if s.kind == "value"}
        for g in data.get("groups", []):
            if g.get("label") in values:
                g["threshold"] = None
                g["ref_flag_rate"] = None
                for c in g.get("chunks", []):
                    for k in _FLAG_FIELDS:
                        c[k] = None
        return data


_DESCRIBE = {
    "error": "error verdicts and dead letters of failed items, per verdict",
    "tokens": "total tokens per verdict",
    "violates": "violation rate of policy {p}",
    "rule": "firing rate of rule {r} ({p})",
    "score": "score of policy {p} (triaged-out decisions excepted)",
    "confidence": "stated confidence of policy {p} (triaged-out decisions excepted)",
}


def _select(names: list[str], info: Mapping[str, tuple[str, str | None, str | None]], want: Sequence[str], path: str) -> list[str]:
    out: list[str] = []
    for w in want:
        hit = [n for n in names if n == w or info[n][0] == w or info[n][1] == w]
        if not hit:
            raise InputError(
                f"{path}: no verdict series {w!r} (give a series such as {', '.join(names[:4])}, a kind "
                f"({', '.join(SERIES_KINDS)}) or a policy id)"
            )
        out += [n for n in hit if n not in out]
    return [n for n in names if n in out]


def monitor_verdicts(log: VerdictLog, reference: VerdictLog, settings: MonitorSettings) -> VerdictMonitorReport:
    """:func:`monitor` of every series of a verdict log against a reference verdict log.

    ``settings.labels`` selects series: names (``violates:hate_speech``), kinds (``rule``) or
    policy ids (every series of that policy). ``settings.thresholds`` must be empty (rate series
    are 0/1; value series have no threshold).
    """
    if settings.thresholds:
        raise ConfigError("verdict series have no operating threshold (rates are 0/1; tokens, score and confidence are monitored as distributions)")
    kind, _ = parse_chunk(settings.chunk)
    for lg in (log, reference):
        if kind == "time" and not lg.has_time:
            raise InputError(
                f"{lg.path}: chunking by time needs a timestamp on every verdict, and these carry none "
                "(chunk by count instead, e.g. --chunk 500)"
            )
    names, info = _series_names(log, reference)
    if settings.labels:
        names = _select(names, info, settings.labels, log.path)
    report = VerdictMonitorReport(
        source=log.path, reference=reference.path, chunk=str(settings.chunk), alert_method=settings.alerts,
        verdicts=log.verdicts, reference_verdicts=reference.verdicts, dead_letters=log.dead_letters,
        reference_dead_letters=reference.dead_letters, notes=[*log.notes, *reference.notes],
    )
    first = True
    for name in names:
        what = info[name]
        cur, ref = _series(log, name, what), _series(reference, name, what)
        if len(cur) == 0:
            continue
        value = what[0] in _VALUE_KINDS
        p, r = what[1] or "", what[2] or ""
        report.series.append(
            VerdictSeries(name=name, kind="value" if value else "rate", description=_DESCRIBE[what[0]].format(p=p, r=r),
                          n=len(cur), reference_n=len(ref))
        )
        sub = dataclasses.replace(settings, labels=[name], thresholds={name: 0.5}, default_threshold=0.5)
        part = monitor(cur, ref, sub)
        if first:
            report.sigma, report.limits = part.sigma, part.limits
            first = False
        for g in part.groups:
            if value:
                _drop_flag_rate(g, drop_wasserstein=what[0] == "tokens" and settings.alerts == "constant")
            report.groups.append(g)
    if settings.alerts == "constant" and "tokens" in names:
        report.notes.append("tokens: the constant Wasserstein limit (for scores in [0, 1]) is not applied to token counts")
    if first:
        report.sigma = settings.sigma if settings.alerts == "std" else None
    return report


def _drop_flag_rate(g: Any, *, drop_wasserstein: bool) -> None:
    nan = math.nan
    g.threshold = nan
    g.ref_flag_rate = None
    for c in g.chunks:
        c.flag_rate = c.ref_flag_rate = c.flag_rate_diff = c.flag_rate_p = nan
        c.flag_rate_diff_ci95 = (nan, nan)
        c.limits.pop("flag_rate", None)
        c.alerts = [a for a in c.alerts if a != "flag_rate" and not (drop_wasserstein and a == "wasserstein")]

