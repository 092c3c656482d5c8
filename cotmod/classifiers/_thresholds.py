"""Per-label thresholds for a classifier: a target precision or a cost matrix, with score bands.

For each label, on the rows whose ground truth is known:

* ``review`` (the operating threshold, t_low): the lowest threshold whose precision reaches the
  target (so the highest recall among those that do), or the one minimising
  ``cost_fp * FP + cost_fn * FN`` (on a tie, the higher threshold);
* ``auto_action`` (t_high): the lowest threshold whose precision reaches ``auto_precision``,
  never below ``review`` (None when no threshold does).

Bands: ``score >= auto_action`` → auto-action; ``review <= score < auto_action`` → human review;
``score < review`` → allow. Each operating point carries its precision and recall with a seeded
bootstrap CI (resampling items is a multinomial draw of the four confusion counts, so it costs
the same for 1,000 or 100 million rows), and PR-curve points.

:func:`write_classifier_thresholds` records them in YAML with the label → policy map and the
policy versions they were tuned for; the ``thresholds`` section (per policy) is what the
enforcement manifest's ``classifier.thresholds`` reads, so ``cotmod sync check`` flags the file
when a policy moves. (Given as LLM thresholds, to the engine or ``cotmod eval --thresholds``, the
file is read the same way with a warning: its cut-offs are on the classifier's scores.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, Field

from .._exceptions import InputError
from .._yamlfile import read_yaml_mapping
from ._scores import ScoreLog

__all__ = [
    "ClassifierThresholds",
    "OperatingPoint",
    "PRPoint",
    "TuneSettings",
    "choose_threshold",
    "choose_thresholds",
    "load_classifier_thresholds",
    "write_classifier_thresholds",
]

_PR_POINTS = 100


class PRPoint(BaseModel):
    threshold: float
    precision: float
    recall: float


class OperatingPoint(BaseModel):
    """One label's chosen thresholds and what they achieve on the known-truth rows."""

    label: str
    policy: str | None = None
    policy_version: str | None = None
    reachable: bool = True
    note: str | None = None
    n: int = 0  # rows with known truth
    positives: int = 0
    unknown: int = 0  # rows without ground truth (not used)
    review: float | None = None
    auto_action: float | None = None
    precision: float | None = None
    recall: float | None = None
    flag_rate: float | None = None
    expected_cost: float | None = None
    precision_ci95: tuple[float, float] | None = None
    recall_ci95: tuple[float, float] | None = None
    bands: dict[str, int] = Field(default_factory=dict)  # rows per band (all rows, known truth or not)
    pr_curve: list[PRPoint] = Field(default_factory=list)


class TuneSettings(BaseModel):
    target_precision: float | None = None
    cost_fp: float | None = None
    cost_fn: float | None = None
    auto_precision: float = 0.99
    bootstrap_rounds: int = 1000
    seed: int = 0


class ClassifierThresholds(BaseModel):
    """Thresholds for every label of a score log, and what they were tuned for."""

    kind: str = "classifier"
    source: str
    created_at: str
    method: TuneSettings
    label_map: dict[str, str] = Field(default_factory=dict)
    policies: dict[str, str] = Field(default_factory=dict)  # policy -> version tuned for
    labels: dict[str, OperatingPoint] = Field(default_factory=dict)


def _curve(y: npt.NDArray[np.int8], s: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Distinct thresholds (descending) with TP and FP counts of ``score >= threshold``."""
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order].astype(np.int64)
    tp = np.cumsum(yy)
    fp = np.cumsum(1 - yy)
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]  # last index of each distinct score
    return ss[last], tp[last], fp[last]


def _lowest_reaching(thr: npt.NDArray[np.float64], prec: npt.NDArray[np.float64], target: float) -> int | None:
    ok = np.flatnonzero(prec >= target - 1e-12)
    return None if len(ok) == 0 else int(ok[-1])  # thresholds descend: the last is the lowest


def _bootstrap(counts: tuple[int, int, int, int], rounds: int, seed: int) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """95% percentile CIs of precision and recall: items resampled with replacement."""
    tp, fp, fn, tn = counts
    n = tp + fp + fn + tn
    if rounds <= 0 or n == 0:
        return None, None
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, np.array([tp, fp, fn, tn], dtype=np.float64) / n, size=rounds)
    btp, bfp, bfn = draws[:, 0], draws[:, 1], draws[:, 2]

    def ci(num: npt.NDArray[np.int64], den: npt.NDArray[np.int64]) -> tuple[float, float] | None:
        ok = den > 0
        if not ok.any():
            return None
        v = num[ok] / den[ok]
        return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))

    return ci(btp, btp + bfp), ci(btp, btp + bfn)


def choose_threshold(
    label: str,
    scores: npt.NDArray[np.float64],
    truth: npt.NDArray[np.int8],
    *,
    settings: TuneSettings,
) -> OperatingPoint:
    """One label's operating point (see the module docstring); rows with truth -1 are ignored."""
    known = truth >= 0
    y, s = truth[known], scores[known]
    pos = int(y.sum())
    base = OperatingPoint(label=label, n=len(y), positives=pos, unknown=int((~known).sum()))
    if settings.target_precision is None and (settings.cost_fp is None or settings.cost_fn is None):
        raise InputError("give a target precision, or both a false-positive and a false-negative cost")
    if pos == 0:
        return base.model_copy(update={"reachable": False, "note": f"no positive rows with known truth for {label!r}"})
    thr, tp, fp = _curve(y, s)
    prec = tp / (tp + fp)
    rec = tp / pos
    if settings.target_precision is not None:
        i = _lowest_reaching(thr, prec, settings.target_precision)
        if i is None:
            return base.model_copy(update={"reachable": False, "note": f"no threshold reaches precision {settings.target_precision}"})
    else:
        assert settings.cost_fp is not None and settings.cost_fn is not None
        cost = settings.cost_fp * fp + settings.cost_fn * (pos - tp)
        i = int(np.argmin(cost))  # the first minimum: the highest threshold on a tie
    review = float(thr[i])
    j = _lowest_reaching(thr, prec, settings.auto_precision)
    auto = None if j is None else max(float(thr[j]), review)
    c_tp, c_fp = int(tp[i]), int(fp[i])
    c_fn, c_tn = pos - c_tp, len(y) - pos - c_fp
    p_ci, r_ci = _bootstrap((c_tp, c_fp, c_fn, c_tn), settings.bootstrap_rounds, settings.seed)
    keep = np.unique(np.r_[np.linspace(0, len(thr) - 1, min(len(thr), _PR_POINTS)).round().astype(int), i])
    bands = {
        "auto_action": int((scores >= auto).sum()) if auto is not None else 0,
        "human_review": int(((scores >= review) & (scores < auto if auto is not None else True)).sum()),
        "allow": int((scores < review).sum()),
    }
    cost_value = None
    if settings.cost_fp is not None and settings.cost_fn is not None:
        cost_value = settings.cost_fp * c_fp + settings.cost_fn * c_fn
    return base.model_copy(
        update={
            "review": review,
            "auto_action": auto,
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "flag_rate": (c_tp + c_fp) / len(y),
            "expected_cost": cost_value,
            "precision_ci95": p_ci,
            "recall_ci95": r_ci,
            "bands": bands,
            "pr_curve": [PRPoint(threshold=float(thr[k]), precision=float(prec[k]), recall=float(rec[k])) for k in keep],
        }
    )


def choose_thresholds(
    log: ScoreLog,
    *,
    target_precision: float | None = None,
    cost_fp: float | None = None,
    cost_fn: float | None = None,
    auto_precision: float = 0.99,
    label_map: Mapping[str, str] | None = None,
    policy_versions: Mapping[str, str] | None = None,
    bootstrap_rounds: int = 1000,
    seed: int = 0,
) -> ClassifierThresholds:
    """Thresholds for every label of ``log`` (see the module docstring).

    ``label_map``: classifier label → policy id; ``policy_versions``: policy id → the version the
    thresholds are tuned for (recorded, so ``cotmod sync check`` can flag them when it moves).
    """
    settings = TuneSettings(
        target_precision=target_precision, cost_fp=cost_fp, cost_fn=cost_fn,
        auto_precision=auto_precision, bootstrap_rounds=bootstrap_rounds, seed=seed,
    )
    lmap = dict(label_map or {})
    for lb in lmap:
        if lb not in log.labels:
            raise InputError(f"label map names label {lb!r}, which {log.path} does not have (labels: {', '.join(log.labels)})")
    versions = dict(policy_versions or {})
    out: dict[str, OperatingPoint] = {}
    for lb in log.labels:
        op = choose_threshold(lb, log.scores[lb], log.truth[lb], settings=settings)
        pid = lmap.get(lb)
        out[lb] = op.model_copy(update={"policy": pid, "policy_version": versions.get(pid) if pid else None})
    return ClassifierThresholds(
        source=log.path,
        created_at=datetime.now(timezone.utc).isoformat(),
        method=settings,
        label_map=lmap,
        policies={pid: versions[pid] for pid in dict.fromkeys(lmap.values()) if pid in versions},
        labels=out,
    )


def write_classifier_thresholds(th: ClassifierThresholds, path: str | Path) -> None:
    """Write the thresholds YAML: ``labels`` (per label, with PR points left out), ``label_map``,
    ``policies`` (versions tuned for) and ``thresholds`` per policy (its strictest label: the
    highest review threshold), which ``cotmod sync check`` reads."""
    data = th.model_dump(mode="json")
    for spec in data["labels"].values():
        spec.pop("pr_curve", None)
    per_policy: dict[str, dict[str, Any]] = {}
    for lb, op in th.labels.items():
        if op.policy is None or op.review is None:
            continue
        prev = per_policy.get(op.policy)
        if prev is None or op.review > prev["review"]:
            entry: dict[str, Any] = {"review": op.review, "label": lb, "policy_version": op.policy_version}
            if op.auto_action is not None:
                entry["auto_action"] = op.auto_action
            per_policy[op.policy] = entry
    data["thresholds"] = per_policy
    Path(path).write_text(
        "# Written by cotmod classifier tune. Per label: score >= auto_action: enforce automatically;\n"
        "# >= review: human review; below review: allow. 'policies' records the policy versions these\n"
        "# thresholds were tuned for (cotmod sync check flags them when a policy moves).\n"
        + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )


def load_classifier_thresholds(path: str | Path) -> dict[str, float]:
    """The operating (review) threshold per label from a file written by
    :func:`write_classifier_thresholds`."""
    p = Path(path)
    data = read_yaml_mapping(p, "classifier thresholds file")
    labels = data.get("labels")
    if not isinstance(labels, dict):
        raise InputError(f"{p}: expected 'labels: {{LABEL: {{review: x, ...}}}}' (written by cotmod classifier tune)")
    out: dict[str, float] = {}
    for lb, spec in labels.items():
        raw = spec.get("review") if isinstance(spec, dict) else None
        if raw is None:
            continue  # a label no threshold was reachable for
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or not 0 <= raw <= 1:
            raise InputError(f"{p}: labels.{lb}.review: expected a number from 0 to 1, got {raw!r}")
        out[str(lb)] = float(raw)
    return out


def labels_without_threshold(path: str | Path) -> list[str]:
    """The labels of a file written by :func:`write_classifier_thresholds` that got no review
    threshold (no positive rows, or none reaching the target precision): left out by
    :func:`load_classifier_thresholds`."""
    data = read_yaml_mapping(Path(path), "classifier thresholds file")
    labels = data.get("labels")
    if not isinstance(labels, dict):
        return []
    return [str(lb) for lb, spec in labels.items() if not isinstance(spec, dict) or spec.get("review") is None]
