"""Choosing a cascade's score bands on a golden set: classifier → LLM → human.

Given, for the same items, a classifier's score and ground truth (a score log) and the LLM's
verdict for the policy (a cotmod verdict log: ``cotmod run`` or ``cotmod eval``), a cascade with
bounds ``allow_below`` ≤ ``action_at`` decides each item exactly as
:mod:`cotmod.engine._cascade` would: score < ``allow_below`` → allow, score ≥ ``action_at`` →
violates, otherwise the LLM's decision. So every candidate band is evaluated offline, without
another model call.

The items are split (seeded) into a *tune* part, where the bands are chosen, and a *test* part,
where the chosen cascade is reported against LLM-only and classifier-only with paired bootstrap
CIs: a figure measured on the items it was tuned on is not evidence. The target: the cascade
with the best F1 among those sending at most ``max_llm_share`` of the items to the LLM and losing
at most ``max_f1_loss`` F1 against LLM-only (on the tune part); if none meets both, the best F1
within the share, marked ``target_met = False``.

An LLM error verdict (no decision) counts as *not flagged* wherever the cascade sends the item to
the LLM, and is counted (``llm_errors``); items without ground truth or without a verdict are
counted and left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, Field

from .._exceptions import InputError
from ._scores import ScoreLog

__all__ = ["CascadePoint", "CascadeReport", "choose_cascade", "read_llm_decisions", "write_cascade"]

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


class CascadePoint(BaseModel):
    """One cascade (or a baseline) on one set of items."""

    allow_below: float | None = None
    action_at: float | None = None
    llm_share: float = Field(description="Share of the items sent to the LLM")
    precision: float | None = None
    recall: float | None = None
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int


class CascadeReport(BaseModel):
    policy: str
    label: str
    items: int = Field(description="Items with ground truth and a verdict")
    no_truth: int = Field(default=0, description="Score-log rows without ground truth (left out)")
    no_verdict: int = Field(default=0, description="Rows without a verdict for the policy (left out)")
    llm_errors: int = Field(default=0, description="Error verdicts among the items (count as not flagged when sent to the LLM)")
    tune_items: int
    test_items: int
    seed: int
    max_llm_share: float
    max_f1_loss: float
    target_met: bool
    classifier_threshold: float = Field(description="Classifier-only operating threshold (best F1 on the tune part)")
    chosen: CascadePoint = Field(description="The chosen cascade on the test part")
    chosen_tune: CascadePoint = Field(description="The chosen cascade on the tune part")
    llm_only: CascadePoint = Field(description="LLM verdicts alone, test part")
    classifier_only: CascadePoint = Field(description="Classifier alone at classifier_threshold, test part")
    delta_f1_vs_llm: float
    delta_f1_vs_llm_ci: tuple[float, float] | None = None
    delta_f1_vs_classifier: float
    delta_f1_vs_classifier_ci: tuple[float, float] | None = None
    llm_calls_saved: float = Field(description="1 - llm_share of the chosen cascade on the test part")
    policy_version: str | None = None


def read_llm_decisions(path: str | Path, policy: str) -> tuple[dict[str, bool | None], str | None]:
    """``{item_id: violates}`` of ``policy`` from a cotmod verdict log (None: an error verdict),
    and the policy version the verdicts were made under."""
    from .._verdict import Verdict
    from ..batch._reader import read_records

    out: dict[str, bool | None] = {}
    version: str | None = None
    p = Path(path)
    for line, rec in read_records(p, fmt="jsonl"):
        try:
            v = Verdict.model_validate(rec)
        except Exception as exc:  # pydantic's ValidationError: a line that is not a verdict
            raise InputError(f"{p}:{line}: not a cotmod verdict ({str(exc).splitlines()[0]})") from None
        if v.status != "ok":
            out[v.item_id] = None
            continue
        d = next((d for d in v.decisions if d.policy_id == policy), None)
        if d is None:
            continue
        out[v.item_id] = d.violates
        version = d.policy_version
    if not out:
        raise InputError(f"{p}: no verdict for policy {policy!r}")
    return out, version


def _point(truth: Bools, pred: Bools, share: float, lo: float | None = None, hi: float | None = None) -> CascadePoint:
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    tn = int(np.sum(~pred & ~truth))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return CascadePoint(
        allow_below=lo, action_at=hi, llm_share=round(share, 4),
        precision=None if precision is None else round(precision, 4),
        recall=None if recall is None else round(recall, 4),
        f1=round(f1, 4), tp=tp, fp=fp, fn=fn, tn=tn,
    )


def _cascade_pred(s: Floats, llm: Bools, lo: float, hi: float) -> tuple[Bools, Bools]:
    to_llm = (s >= lo) & (s < hi)
    pred = np.where(to_llm, llm, s >= hi)
    return pred.astype(bool), to_llm


def _f1(truth: Bools, pred: Bools) -> float:
    tp = int(np.sum(pred & truth))
    wrong = int(np.sum(pred != truth))
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def _best_classifier_threshold(s: Floats, truth: Bools) -> float:
    best, best_t = -1.0, 0.5
    for t in np.unique(s):
        f = _f1(truth, s >= t)
        if f > best:
            best, best_t = f, float(t)
    return best_t


def _candidates(s: Floats, steps: int) -> list[float]:
    qs = np.quantile(s, np.linspace(0.0, 1.0, steps + 1))
    return sorted({0.0, *(round(float(q), 6) for q in qs), 1.000001})


def _paired_ci(truth: Bools, a: Bools, b: Bools, rounds: int, seed: int) -> tuple[float, float] | None:
    n = len(truth)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    deltas = np.empty(rounds)
    for r in range(rounds):
        idx = rng.integers(0, n, n)
        deltas[r] = _f1(truth[idx], a[idx]) - _f1(truth[idx], b[idx])
    lo, hi = np.quantile(deltas, [0.025, 0.975])
    return (round(float(lo), 4), round(float(hi), 4))


def choose_cascade(
    log: ScoreLog,
    llm: dict[str, bool | None],
    *,
    policy: str,
    label: str,
    max_llm_share: float = 0.2,
    max_f1_loss: float = 0.01,
    tune_share: float = 0.5,
    seed: int = 2026,
    steps: int = 50,
    rounds: int = 2000,
    policy_version: str | None = None,
) -> CascadeReport:
    """Choose ``allow_below``/``action_at`` for ``label`` → ``policy`` on a seeded tune part of
    the items and report the cascade on the rest (see the module docstring)."""
    if label not in log.labels:
        raise InputError(f"{log.path}: no label {label!r} (labels: {', '.join(log.labels)})")
    if not 0 < tune_share < 1:
        raise InputError(f"tune share must be between 0 and 1, got {tune_share}")
    scores = log.scores[label]
    truth_raw = log.truth[label]
    keep: list[int] = []
    no_truth = no_verdict = 0
    verdicts: list[bool] = []
    errors = 0
    for i, item_id in enumerate(log.ids):
        if truth_raw[i] < 0:
            no_truth += 1
            continue
        if item_id not in llm:
            no_verdict += 1
            continue
        v = llm[item_id]
        if v is None:
            errors += 1
        keep.append(i)
        verdicts.append(bool(v))
    if len(keep) < 10:
        raise InputError(
            f"{log.path}: only {len(keep)} rows have both ground truth for {label!r} and a verdict for {policy!r} "
            "(need at least 10; are the ids the same in both files?)"
        )
    idx = np.asarray(keep)
    s = scores[idx].astype(np.float64)
    truth = truth_raw[idx] == 1
    llm_v = np.asarray(verdicts, dtype=bool)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(idx))
    n_tune = max(5, min(len(idx) - 5, round(len(idx) * tune_share)))
    tune, test = order[:n_tune], order[n_tune:]

    st, tt, lt = s[tune], truth[tune], llm_v[tune]
    llm_f1_tune = _f1(tt, lt)
    cands = _candidates(st, steps)
    best: tuple[float, float, float, float] | None = None  # (f1, -share, lo, hi) among those meeting the target
    best_share: tuple[float, float, float, float] | None = None  # within the share only
    for i, lo in enumerate(cands):
        for hi in cands[i:]:
            pred, to_llm = _cascade_pred(st, lt, lo, hi)
            share = float(to_llm.mean())
            if share > max_llm_share + 1e-12:
                continue
            f = _f1(tt, pred)
            key = (f, -share, lo, hi)
            if best_share is None or key[:2] > best_share[:2]:
                best_share = key
            if f >= llm_f1_tune - max_f1_loss - 1e-12 and (best is None or key[:2] > best[:2]):
                best = key
    target_met = best is not None
    chosen = best if best is not None else best_share
    assert chosen is not None  # allow_below == action_at sends nothing to the LLM
    lo, hi = chosen[2], chosen[3]
    thr = _best_classifier_threshold(st, tt)

    se, te, le = s[test], truth[test], llm_v[test]
    pred_t, to_llm_t = _cascade_pred(st, lt, lo, hi)
    pred_e, to_llm_e = _cascade_pred(se, le, lo, hi)
    clf_e = se >= thr
    chosen_test = _point(te, pred_e, float(to_llm_e.mean()), lo, hi if hi <= 1.0 else None)
    return CascadeReport(
        policy=policy,
        label=label,
        items=len(idx),
        no_truth=no_truth,
        no_verdict=no_verdict,
        llm_errors=errors,
        tune_items=len(tune),
        test_items=len(test),
        seed=seed,
        max_llm_share=max_llm_share,
        max_f1_loss=max_f1_loss,
        target_met=target_met,
        classifier_threshold=round(thr, 6),
        chosen=chosen_test,
        chosen_tune=_point(tt, pred_t, float(to_llm_t.mean()), lo, hi if hi <= 1.0 else None),
        llm_only=_point(te, le, 1.0),
        classifier_only=_point(te, clf_e, 0.0),
        delta_f1_vs_llm=round(_f1(te, pred_e) - _f1(te, le), 4),
        delta_f1_vs_llm_ci=_paired_ci(te, pred_e, le, rounds, seed),
        delta_f1_vs_classifier=round(_f1(te, pred_e) - _f1(te, clf_e), 4),
        delta_f1_vs_classifier_ci=_paired_ci(te, pred_e, clf_e, rounds, seed + 1),
        llm_calls_saved=round(1.0 - chosen_test.llm_share, 4),
        policy_version=policy_version,
    )


def write_cascade(reports: Sequence[CascadeReport], path: str | Path, action: str = "remove") -> None:
    """Write the cascade file :mod:`cotmod.engine._cascade` reads (``cotmod run --cascade``)."""
    body: dict[str, dict[str, object]] = {}
    for r in reports:
        assert r.chosen.allow_below is not None
        entry: dict[str, object] = {
            "label": r.label,
            "allow_below": r.chosen.allow_below,
            "action_at": r.chosen.action_at,
            "action": action,
        }
        if r.policy_version:
            entry["policy_version"] = r.policy_version
        body[r.policy] = entry
    head = (
        "# Written by cotmod classifier cascade. Per policy: a classifier score below allow_below allows and at or\n"
        "# above action_at enforces without an LLM call; the LLM verdict decides in between.\n"
        "# Chosen on a tune part of the golden set; the report: "
        + json.dumps({r.policy: {"f1_test": r.chosen.f1, "llm_share_test": r.chosen.llm_share} for r in reports})
        + "\n"
    )
    Path(path).write_text(head + yaml.safe_dump({"cascade": body}, sort_keys=False), encoding="utf-8")
