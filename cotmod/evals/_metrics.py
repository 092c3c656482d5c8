"""Classification metrics, written to match scikit-learn / scipy exactly (tests check this).

Binary labels ``y`` in {0, 1}, predictions ``p`` in {0, 1}, scores ``s`` in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._results import McNemar, MetricCIs, MetricDelta, PairedComparison

__all__ = [
    "average_precision",
    "binary_metrics",
    "bootstrap_ci",
    "calibration",
    "confusion",
    "mcnemar_exact",
    "metric_cis",
    "paired_comparison",
    "paired_ratio_delta",
    "pr_curve",
    "roc_auc",
    "threshold_for_precision",
]

Arr = Any


def confusion(y: Sequence[int], p: Sequence[int]) -> dict[str, int]:
    ya, pa = np.asarray(y, dtype=int), np.asarray(p, dtype=int)
    return {
        "tp": int(((ya == 1) & (pa == 1)).sum()),
        "fp": int(((ya == 0) & (pa == 1)).sum()),
        "fn": int(((ya == 1) & (pa == 0)).sum()),
        "tn": int(((ya == 0) & (pa == 0)).sum()),
    }


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def from_confusion(c: dict[str, int]) -> dict[str, float]:
    precision = _div(c["tp"], c["tp"] + c["fp"])
    recall = _div(c["tp"], c["tp"] + c["fn"])
    f1 = _div(2 * precision * recall, precision + recall)
    fpr = _div(c["fp"], c["fp"] + c["tn"])
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fpr}


def binary_metrics(y: Sequence[int], p: Sequence[int]) -> dict[str, Any]:
    """precision, recall, F1 (zero_division=0 like sklearn), false-positive rate, support, confusion."""
    c = confusion(y, p)
    return {**from_confusion(c), "support": c["tp"] + c["fn"], "n": len(y), "confusion": c}


def average_precision(y: Sequence[int], s: Sequence[float]) -> float | None:
    """Area under the PR curve as sklearn's ``average_precision_score`` (step-wise, no interpolation)."""
    ya, sa = np.asarray(y, dtype=int), np.asarray(s, dtype=float)
    if ya.sum() == 0:
        return None
    order = np.argsort(-sa, kind="mergesort")
    ys, ss = ya[order], sa[order]
    distinct = np.where(np.diff(ss))[0]
    idx = np.r_[distinct, ys.size - 1]
    tps = np.cumsum(ys)[idx]
    fps = 1 + idx - tps
    precision = tps / (tps + fps)
    recall = tps / ya.sum()
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def roc_auc(y: Sequence[int], s: Sequence[float]) -> float | None:
    """ROC-AUC (Mann-Whitney U with average ranks for ties), as sklearn's ``roc_auc_score``."""
    ya, sa = np.asarray(y, dtype=int), np.asarray(s, dtype=float)
    n_pos, n_neg = int(ya.sum()), int((ya == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(sa, kind="mergesort")
    ranks = np.empty(len(sa), dtype=float)
    ss = sa[order]
    i = 0
    while i < len(ss):
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[ya == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pr_curve(y: Sequence[int], s: Sequence[float]) -> list[dict[str, float]]:
    """Points (threshold, precision, recall, fpr) for each distinct score, highest first."""
    ya, sa = np.asarray(y, dtype=int), np.asarray(s, dtype=float)
    out = []
    pos, neg = max(int(ya.sum()), 1), max(int((ya == 0).sum()), 1)
    for t in sorted(set(sa.tolist()), reverse=True):
        pred = sa >= t
        tp = int((pred & (ya == 1)).sum())
        fp = int((pred & (ya == 0)).sum())
        out.append({"threshold": float(t), "precision": _div(tp, tp + fp), "recall": tp / pos, "fpr": fp / neg})
    return out


def threshold_for_precision(y: Sequence[int], s: Sequence[float], target: float) -> dict[str, float] | None:
    """The lowest threshold whose precision is >= target (maximising recall), or None."""
    best = None
    for pt in pr_curve(y, s):
        if pt["precision"] >= target and (best is None or pt["recall"] > best["recall"]):
            best = pt
    return best


def calibration(y: Sequence[int], s: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """Expected calibration error over equal-width bins, and the reliability table."""
    ya, sa = np.asarray(y, dtype=float), np.asarray(s, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    table = []
    ece = 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        mask = (sa >= lo) & ((sa < hi) if b < bins - 1 else (sa <= hi))
        n = int(mask.sum())
        if n == 0:
            continue
        conf, acc = float(sa[mask].mean()), float(ya[mask].mean())
        ece += n / len(sa) * abs(acc - conf)
        table.append({"bin": [float(lo), float(hi)], "n": n, "mean_score": conf, "fraction_positive": acc})
    return {"ece": float(ece), "bins": table}


def bootstrap_ci(
    stat: Callable[[Arr], float | None],
    n: int,
    *,
    rounds: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of ``stat(indices)`` over ``n`` resampled rows."""
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(rounds):
        v = stat(rng.integers(0, n, n))
        if v is not None and not math.isnan(v):
            vals.append(v)
    if not vals:
        return None
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (binomial test on the discordant pairs b, c)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))


def metric_cis(y: Sequence[int], p: Sequence[int], *, rounds: int = 1000, seed: int = 0, level: float = 0.95) -> MetricCIs:
    """Percentile-bootstrap CIs of precision, recall, F1 and FPR of predictions ``p``.

    One pass: each resample of items gives all four metrics. The resamples are the ones
    :func:`bootstrap_ci` draws with the same seed, so each CI equals
    ``bootstrap_ci(lambda idx: binary_metrics(y[idx], p[idx])[metric], len(y), ...)``.
    """
    names = ("precision", "recall", "f1", "fpr")
    n = len(y)
    if n == 0 or rounds <= 0:
        return MetricCIs()
    ya: Arr = np.asarray(y, dtype=int)
    pa: Arr = np.asarray(p, dtype=int)
    rng = np.random.default_rng(seed)
    vals: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        m = from_confusion(confusion(ya[idx], pa[idx]))
        for k in names:
            vals[k].append(m[k])
    a = (1 - level) / 2
    return MetricCIs(**{k: (float(np.quantile(v, a)), float(np.quantile(v, 1 - a))) for k, v in vals.items()})


def paired_comparison(
    y: Sequence[int],
    a: Sequence[int],
    b: Sequence[int],
    *,
    metrics: Sequence[str] = ("precision", "recall", "f1", "fpr"),
    rounds: int = 1000,
    seed: int = 0,
) -> PairedComparison:
    """Predictions ``b`` against ``a`` on the same items: per metric (any of binary_metrics', or
    ``accuracy``) a, b, the delta b − a and its paired-bootstrap 95% CI (items are resampled
    together, which keeps the pairing), and an exact McNemar test on which side got each item right."""
    ya, xa, xb = np.asarray(y, dtype=int), np.asarray(a, dtype=int), np.asarray(b, dtype=int)

    def value(idx: Arr, x: Arr, metric: str) -> float:
        if metric == "accuracy":
            return float((x[idx] == ya[idx]).mean())
        return float(binary_metrics(ya[idx].tolist(), x[idx].tolist())[metric])

    every = np.arange(len(ya))
    out: dict[str, MetricDelta] = {}
    for metric in metrics:
        def stat(idx: Arr, metric: str = metric) -> float:
            return value(idx, xb, metric) - value(idx, xa, metric)

        va, vb = value(every, xa, metric), value(every, xb, metric)
        out[metric] = MetricDelta(a=va, b=vb, delta=vb - va, ci95=bootstrap_ci(stat, len(ya), rounds=rounds, seed=seed))
    correct_a, correct_b = xa == ya, xb == ya
    a_only, b_only = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    return PairedComparison(
        metrics=out,
        mcnemar=McNemar(a_correct_only=a_only, b_correct_only=b_only, p_value=mcnemar_exact(a_only, b_only)),
    )


def paired_ratio_delta(
    num_a: Sequence[float],
    den_a: Sequence[float],
    num_b: Sequence[float],
    den_b: Sequence[float],
    *,
    rounds: int = 1000,
    seed: int = 0,
) -> MetricDelta | None:
    """A ratio of per-item sums, ``sum(num) / sum(den)``, of A and of B on the same items, the
    delta B − A and its paired-bootstrap 95% CI (items resampled together, as in
    :func:`paired_comparison`). A share is ``num`` 0/1 over ``den`` 1 for the items it is taken
    on (0 for the others); a mean is ``num`` the value. ``None`` when either side has no items
    (``sum(den) == 0``); resamples where a side has none are skipped."""
    na, da = np.asarray(num_a, dtype=float), np.asarray(den_a, dtype=float)
    nb, db = np.asarray(num_b, dtype=float), np.asarray(den_b, dtype=float)
    if not (len(na) == len(da) == len(nb) == len(db)):
        raise ValueError("paired_ratio_delta: every sequence must have one value per item")
    if da.sum() == 0 or db.sum() == 0:
        return None

    def stat(idx: Arr) -> float | None:
        sa, sb = da[idx].sum(), db[idx].sum()
        if sa == 0 or sb == 0:
            return None
        return float(nb[idx].sum() / sb - na[idx].sum() / sa)

    va, vb = float(na.sum() / da.sum()), float(nb.sum() / db.sum())
    ci = bootstrap_ci(stat, len(na), rounds=rounds, seed=seed) if rounds > 0 else None
    return MetricDelta(a=va, b=vb, delta=vb - va, ci95=ci)
