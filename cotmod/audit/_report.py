"""The audit report: per policy, agreement (raw and Cohen's kappa) of production with the
auditor, design-weighted estimates of production's precision, recall, flag rate and prevalence
with 95% CIs (overall and per stratum field), the disagreements with both rationales, and, with
human labels, the prediction-powered (PPI) and human-only estimates and the auditor's agreement
with the humans. Auditor errors (error verdicts, failed requests) and items not yet audited are
counted, never dropped: they are missing from their stratum (assumed missing at random within
it), and a human label covers an item the auditor failed on.

Which labels are truth: ``auditor`` estimates take the auditor's decisions as truth; with human
labels, ``ppi`` takes the human label where present (the disagreement queue and the control
sample) and corrects the auditor elsewhere by the control sample, and ``human`` uses the control
sample's labels alone. The headline is ``ppi`` when there are control labels, else ``auditor``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._verdict import Verdict
from ._adjudicate import HumanLabel
from ._estimate import (
    Design,
    Interval,
    interval,
    kappa_ci,
    ppi_mean,
    ppi_ratio,
    stratified_mean,
    stratified_ratio,
)
from ._plan import AuditPlan

__all__ = ["AuditReport", "Disagreement", "PolicyAudit", "append_history", "build_report", "read_history"]


@dataclass
class Disagreement:
    id: str
    stratum: str
    text: str
    production_flagged: bool
    production_score: float | None
    production_rationale: str
    production_rules: list[str]
    auditor_violates: bool
    auditor_score: float
    auditor_rationale: str
    auditor_rules: list[str]
    human: bool | None = None


@dataclass
class Estimates:
    precision: Interval
    recall: Interval
    prevalence: Interval


@dataclass
class PolicyAudit:
    policy: str
    version: str
    population: int
    flagged: int
    flag_rate: float
    planned: int
    audited: int
    auditor_errors: int
    not_audited: int
    agreement: Interval
    kappa: Interval
    estimates: dict[str, Estimates]  # "auditor", and with labels "ppi", "human"
    headline: str
    by_field: dict[str, dict[str, dict[str, Estimates]]] = field(default_factory=dict)  # field -> value -> kind -> estimates
    strata: list[dict[str, Any]] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)
    human_labels: int = 0
    control_labels: int = 0
    auditor_vs_human: Interval | None = None
    auditor_vs_human_control: Interval | None = None
    auditor_error_ids: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    plan: str | None
    plan_sha256: str | None
    decisions_file: str
    decisions_sha256: str
    auditor_model: str
    seed: int
    policies: list[PolicyAudit]
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def undecided(self) -> int:
        """Sampled item-policy pairs without an auditor decision nor a human label."""
        return sum(p.auditor_errors + p.not_audited for p in self.policies)

    def to_dict(self) -> dict[str, Any]:
        def conv(x: Any) -> Any:
            if isinstance(x, Interval):
                return x.to_dict()
            if isinstance(x, Estimates):
                return {k: conv(v) for k, v in vars(x).items()}
            if isinstance(x, dict):
                return {k: conv(v) for k, v in x.items()}
            if isinstance(x, list):
                return [conv(v) for v in x]
            if hasattr(x, "__dataclass_fields__"):
                return {k: conv(getattr(x, k)) for k in x.__dataclass_fields__}
            return x

        d: dict[str, Any] = conv(self)
        d["undecided"] = self.undecided
        return d


def _estimates(yh: np.ndarray, y: np.ndarray | None, obs: np.ndarray, lab: np.ndarray | None, design: Design, dom: np.ndarray, ppi: bool) -> Estimates:
    n = int(obs.sum())
    if y is None or lab is None:
        prec = interval(*stratified_mean(yh, obs, design, dom), n=int((obs * dom[design.strata]).sum()))
        rec = interval(*stratified_ratio(yh, obs, design, dom), n=n)
        prev = interval(*stratified_mean(yh, obs, design), n=n)
    else:
        pred = yh if ppi else None
        m = int(lab.sum())
        prec = interval(*ppi_mean(pred, y, obs, lab, design, dom), n=m if not ppi else int((obs * dom[design.strata]).sum()))
        rec = interval(*ppi_ratio(pred, y, obs, lab, design, dom), n=m if not ppi else n)
        prev = interval(*ppi_mean(pred, y, obs, lab, design), n=m if not ppi else n)
    return Estimates(prec, rec, prev)


def _policy(
    plan: AuditPlan, pid: str, verdicts: Mapping[str, Verdict], failures: Mapping[str, str], labels: Sequence[HumanLabel], seed: int
) -> PolicyAudit:
    strata = plan.strata[pid]
    index = {s.key: i for i, s in enumerate(strata)}
    sizes = np.array([s.N for s in strata], dtype=float)
    flagged_h = np.array([1.0 if s.flagged else 0.0 for s in strata])
    items = [it for it in plan.items if pid in it.design]
    st = np.array([index[it.design[pid]["stratum"]] for it in items], dtype=np.int64)
    d = np.array([1.0 if it.production[pid]["flagged"] else 0.0 for it in items])
    human = {lab.id: lab for lab in labels if lab.policy == pid}
    yh = np.zeros(len(items))
    has_auditor = np.zeros(len(items))
    errors: list[str] = []
    not_audited = 0
    disagreements: list[Disagreement] = []
    for i, it in enumerate(items):
        v = verdicts.get(it.id)
        dec = None
        if v is not None and v.status == "ok":
            try:
                dec = v.decision(pid)
            except KeyError:
                dec = None
        if dec is None:
            if v is not None or it.id in failures:
                errors.append(it.id)
            else:
                not_audited += 1
            continue
        has_auditor[i] = 1.0
        yh[i] = 1.0 if dec.violates else 0.0
        prod = it.production[pid]
        if dec.violates != bool(prod["flagged"]):
            h = human.get(it.id)
            disagreements.append(
                Disagreement(
                    it.id, it.design[pid]["stratum"], it.text, bool(prod["flagged"]), prod.get("score"), prod.get("rationale") or "",
                    list(prod.get("rule_ids") or []), dec.violates, dec.score, dec.rationale, list(dec.rule_ids),
                    None if h is None else h.violates,
                )
            )
    design = Design.of(st, sizes)
    agree = (yh == d).astype(float)
    agreement = interval(*stratified_mean(agree, has_auditor, design), n=int(has_auditor.sum()))
    w = np.where(has_auditor > 0, sizes[st] / np.maximum(np.bincount(st, weights=has_auditor, minlength=len(strata))[st], 1), 0.0)
    sel = has_auditor > 0
    kappa = kappa_ci(d[sel], yh[sel], strata=st[sel], weights=w[sel], seed=seed)
    ests = {"auditor": _estimates(yh, None, has_auditor, None, design, flagged_h, False)}
    headline = "auditor"
    hl = np.array([1.0 if it.id in human else 0.0 for it in items])
    hy = np.array([1.0 if it.id in human and human[it.id].violates else 0.0 for it in items])
    ctl = np.array([1.0 if it.id in human and human[it.id].control else 0.0 for it in items])
    avh = avh_c = None
    if hl.sum() > 0:
        queue = (has_auditor > 0) & (yh != d)
        # the best prediction: the human label where it is not a control-only label; the
        # auditor elsewhere (a control item keeps the auditor's label, so the control sample
        # measures the auditor's errors)
        best = np.where((hl > 0) & ((ctl == 0) | queue | (has_auditor == 0)), hy, yh)
        obs = np.maximum(has_auditor, hl)
        lab = ctl * obs
        both = (hl > 0) & (has_auditor > 0)
        if both.sum():
            avh = kappa_ci(yh[both], hy[both], seed=seed)
        bc = both & (ctl > 0)
        if bc.sum():
            avh_c = kappa_ci(yh[bc], hy[bc], seed=seed)
        if lab.sum() > 0:
            ests["ppi"] = _estimates(best, hy, obs, lab, design, flagged_h, True)
            ests["human"] = _estimates(best, hy, obs, lab, design, flagged_h, False)
            headline = "ppi"
    by_field: dict[str, dict[str, dict[str, Estimates]]] = {}
    for f in plan.header.get("strata_fields") or []:
        vals = sorted({s.fields.get(f, "(missing)") for s in strata})
        for val in vals:
            keep = np.array([1.0 if s.fields.get(f) == val else 0.0 for s in strata])
            sub = Design.of(st, sizes * keep)
            m = has_auditor * keep[st]
            by_field.setdefault(f, {})[val] = {"auditor": _estimates(yh, None, m, None, sub, flagged_h * keep, False)}
    rows = []
    for i, s in enumerate(strata):
        inside = st == i
        rows.append(
            {
                "stratum": s.key, "flagged": s.flagged, "N_h": s.N, "n_h": s.n, "inclusion": round(s.inclusion, 6),
                "audited": int(has_auditor[inside].sum()), "auditor_violates": int((yh * has_auditor)[inside].sum()),
                "agree": int((agree * has_auditor)[inside].sum()),
            }
        )
    N = int(sizes.sum())
    nf = int(sizes[flagged_h > 0].sum())
    return PolicyAudit(
        policy=pid, version=plan.policies[pid], population=N, flagged=nf, flag_rate=nf / N if N else 0.0, planned=len(items),
        audited=int(has_auditor.sum()), auditor_errors=len(errors), not_audited=not_audited, agreement=agreement, kappa=kappa,
        estimates=ests, headline=headline, by_field=by_field, strata=rows, disagreements=disagreements,
        human_labels=int(hl.sum()), control_labels=int(ctl.sum()), auditor_vs_human=avh, auditor_vs_human_control=avh_c,
        auditor_error_ids=errors,
    )


def build_report(
    plan: AuditPlan,
    verdicts: Mapping[str, Verdict],
    failures: Mapping[str, str],
    *,
    labels: Sequence[HumanLabel] = (),
    auditor_model: str = "",
) -> AuditReport:
    """The audit report of ``plan`` from the auditor's ``verdicts`` (by id), its ``failures``
    (id -> message) and optional human ``labels``."""
    return AuditReport(
        plan=plan.path, plan_sha256=plan.sha256, decisions_file=str(plan.header.get("decisions_file")),
        decisions_sha256=str(plan.header.get("decisions_sha256")), auditor_model=auditor_model, seed=plan.seed,
        policies=[_policy(plan, pid, verdicts, failures, labels, plan.seed) for pid in plan.policies],
    )


def _iv(x: Interval | None) -> dict[str, Any] | None:
    return None if x is None else {"value": x.value, "low": x.low, "high": x.high}


def append_history(path: str | Path, report: AuditReport) -> None:
    """Append one line (the headline numbers per policy) to an audit history file (JSONL)."""
    line = {
        "at": report.created_at, "plan": report.plan, "plan_sha256": report.plan_sha256,
        "decisions_file": report.decisions_file, "decisions_sha256": report.decisions_sha256, "auditor_model": report.auditor_model,
        "policies": {
            p.policy: {
                "version": p.version, "truth": p.headline, "audited": p.audited, "human_labels": p.human_labels,
                "flag_rate": p.flag_rate, "agreement": _iv(p.agreement), "kappa": _iv(p.kappa),
                **{k: _iv(getattr(p.estimates[p.headline], k)) for k in ("precision", "recall", "prevalence")},
            }
            for p in report.policies
        },
    }
    p = Path(path)
    check_history_target(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def check_history_target(path: str | Path) -> None:
    """Refuse a non-empty ``path`` that is not an audit history; repair a torn final line."""
    check_append_target(
        Path(path), "an audit history", ("policies",),
        lambda rec: _history_problem(rec) if isinstance(rec.get("policies"), dict) else "field 'policies': expected an object",
    )


def check_append_target(
    path: Path, what: str, keys: tuple[str, ...], problem: Callable[[dict[str, Any]], str | None]
) -> None:
    """Before appending to ``path`` (``what``: "an audit history", "a golden set"): refuse a
    non-empty file whose lines are not of that kind (InputError ``FILE:LINE: ...``), and repair a
    torn final line (no newline, from a kill) as the run store does, so the new line is not glued
    onto it. A missing or empty file is fine."""
    from .._exceptions import InputError
    from ..batch._store import scan_jsonl

    if not path.exists() or path.stat().st_size == 0:
        return
    refuse = f"it is not {what}: choose another file (nothing was appended)"
    for n, rec, _raw in scan_jsonl(path, keys, hint=refuse):
        why = problem(rec)
        if why:
            raise InputError(f"{path}:{n}: {why}; {refuse}")


def read_history(path: str | Path) -> list[dict[str, Any]]:
    from .._exceptions import InputError
    from ..batch._reader import read_records

    out = []
    for n, rec in read_records(path, fmt="jsonl"):
        if not isinstance(rec.get("policies"), dict):
            raise InputError(f"{path}:{n}: not an audit history line (field 'policies')")
        problem = _history_problem(rec)
        if problem:
            raise InputError(f"{path}:{n}: {problem}")
        out.append(rec)
    return out


def _history_problem(rec: dict[str, Any]) -> str | None:
    """What is wrong with a history line's shape (as :func:`append_history` writes it), if anything."""
    if not isinstance(rec.get("at"), str):
        return "field 'at': expected the audit's time as a string"
    for pid, entry in rec["policies"].items():
        where = f"field 'policies.{pid}"
        if not isinstance(entry, dict):
            return f"{where}': expected an object"
        for key in ("version", "truth"):
            if not isinstance(entry.get(key), str):
                return f"{where}.{key}': expected a string"
        if not isinstance(entry.get("audited"), int) or isinstance(entry.get("audited"), bool):
            return f"{where}.audited': expected a whole number"
        for key in ("agreement", "kappa", "precision", "recall", "prevalence"):
            iv = entry.get(key)
            if iv is None:
                continue
            if not isinstance(iv, dict):
                return f"{where}.{key}': expected an object like {{value, low, high}}"
            for part in ("value", "low", "high"):
                v = iv.get(part)
                if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                    return f"{where}.{key}.{part}': expected a number, got {v!r}"
    return None


