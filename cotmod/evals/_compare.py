"""Choosing operating points (``cotmod tune``) and comparing runs (``cotmod compare``)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .._exceptions import InputError
from ._harness import load_result
from ._metrics import (
    binary_metrics,
    confusion,
    metric_cis,
    paired_comparison,
    pr_curve,
    threshold_for_precision,
)
from ._results import (
    Comparison,
    EvalResult,
    Flip,
    LabelComparison,
    LabelOperatingPoint,
    PolicyThreshold,
    Regression,
    Thresholds,
    TuneMethod,
)

__all__ = ["compare", "compare_runs", "parse_fail_on", "tune", "write_thresholds"]


def _operating_point(
    y: list[int],
    s: list[float],
    *,
    target_precision: float | None,
    cost_fp: float | None,
    cost_fn: float | None,
    auto_precision: float,
    rounds: int,
    seed: int,
) -> LabelOperatingPoint:
    """The review and auto-action thresholds on one label's scores, with the review point's
    precision and recall and their bootstrap CIs over items."""
    if target_precision is not None:
        pt = threshold_for_precision(y, s, target_precision)
        if pt is None:
            return LabelOperatingPoint(reachable=False, note=f"no threshold reaches precision {target_precision}", n=len(y))
        review = pt["threshold"]
    else:
        assert cost_fp is not None and cost_fn is not None
        best: tuple[float, float] | None = None
        for cand in pr_curve(y, s):  # highest threshold first: on a tie in cost, the higher one
            c = confusion(y, [1 if v >= cand["threshold"] else 0 for v in s])
            cost = cost_fp * c["fp"] + cost_fn * c["fn"]
            if best is None or cost < best[0]:
                best = (cost, cand["threshold"])
        assert best is not None
        review = best[1]
    auto = threshold_for_precision(y, s, auto_precision)
    pred = [1 if v >= review else 0 for v in s]
    m = binary_metrics(y, pred)
    cis = metric_cis(y, pred, rounds=rounds, seed=seed)
    return LabelOperatingPoint(
        review=review,
        auto_action=max(auto["threshold"], review) if auto else None,
        precision=m["precision"],
        recall=m["recall"],
        precision_ci95=cis.precision,
        recall_ci95=cis.recall,
        n=len(y),
    )


def tune(
    result: EvalResult,
    *,
    target_precision: float | None = None,
    cost_fp: float | None = None,
    cost_fn: float | None = None,
    auto_precision: float = 0.99,
    bootstrap_rounds: int = 1000,
    seed: int = 0,
) -> Thresholds:
    """Per-policy thresholds on the verdict score, with bands: auto-action / human review / allow.

    ``review`` is the threshold for a target precision (the lowest one that reaches it, which
    maximises recall) or the one minimising ``cost_fp * FP + cost_fn * FN``; ``auto_action`` is
    the lowest threshold reaching ``auto_precision`` (None when no threshold does). Each label's
    operating point comes with its precision and recall and their bootstrap CIs (measured on
    the same items the threshold was chosen on, so optimistic). A policy deciding several
    labels takes the highest review threshold among them. Pure: write it with
    :func:`write_thresholds`.
    """
    if target_precision is None and (cost_fp is None or cost_fn is None):
        raise InputError("give --target-precision, or both --cost-fp and --cost-fn")
    out: dict[str, PolicyThreshold] = {}
    evidence: dict[str, LabelOperatingPoint] = {}
    versions = result.manifest.policies
    for label, preds in result.predictions.items():
        y = [r.y for r in preds]
        s = [r.score for r in preds]
        if not preds or sum(y) == 0:
            continue
        op = _operating_point(
            y, s, target_precision=target_precision, cost_fp=cost_fp, cost_fn=cost_fn,
            auto_precision=auto_precision, rounds=bootstrap_rounds, seed=seed,
        )
        evidence[label] = op
        if op.review is None:
            continue
        for pid in result.labels[label].policies:
            prev = out.get(pid)
            if prev is None or op.review > prev.review:
                out[pid] = PolicyThreshold(
                    review=op.review,
                    auto_action=op.auto_action,
                    policy_version=versions.get(pid),
                    label=label,
                    precision=op.precision,
                    recall=op.recall,
                    precision_ci95=op.precision_ci95,
                    recall_ci95=op.recall_ci95,
                )
    return Thresholds(
        thresholds=out,
        evidence=evidence,
        method=TuneMethod(target_precision=target_precision, cost_fp=cost_fp, cost_fn=cost_fn, auto_precision=auto_precision),
        run=result.run,
        policies=versions,
        prompt_fingerprint=result.manifest.prompt_fingerprint,
        model=result.manifest.model,
        created_at=datetime.now(timezone.utc).isoformat(),
    )


def write_thresholds(thresholds: Thresholds, path: str | Path) -> None:
    """Write a thresholds YAML file (what ``cotmod eval --thresholds`` and the ``thresholds``
    setting of ``cotmod.toml`` / :class:`~cotmod.Settings` read).

    ``thresholds: {POLICY: {review, auto_action, ...}}`` as before; a policy without an
    auto-action threshold has no ``auto_action`` key.
    """
    data = thresholds.model_dump(mode="json")
    for spec in data["thresholds"].values():
        if spec.get("auto_action") is None:
            spec.pop("auto_action", None)
    Path(path).write_text(
        "# Written by cotmod tune. Score >= auto_action: enforce automatically; >= review: human review;\n"
        "# below review: allow. Apply with: thresholds = \"THIS_FILE\" in cotmod.toml (or Settings(thresholds=...));\n"
        "# cotmod eval --thresholds THIS_FILE measures it on a golden set.\n"
        + yaml.safe_dump(data, sort_keys=False),
        encoding="utf-8",
    )


_FAIL = re.compile(r"^\s*(precision|recall|f1|fpr)\s+(drop|rise)\s*>\s*([0-9.]+)\s*$")


def parse_fail_on(rule: str) -> tuple[str, str, float]:
    """``"precision drop > 2"`` → (metric, direction, points)."""
    m = _FAIL.match(rule)
    if not m:
        raise InputError(f"--fail-on {rule!r}: expected e.g. 'precision drop > 2' (points) or 'fpr rise > 1'")
    return m.group(1), m.group(2), float(m.group(3))


def compare(a: EvalResult, b: EvalResult, *, fail_on: list[str] | None = None, rounds: int = 1000, seed: int = 0) -> Comparison:
    """Metric deltas B−A with paired-bootstrap CIs, McNemar tests and flipped items per label,
    on the items both runs decided; ``fail_on`` rules (e.g. ``"precision drop > 2"``, in
    percentage points) met by any label are listed in ``regressions``. Pure."""
    if a.manifest.golden.sha256 != b.manifest.golden.sha256:
        raise InputError(f"{a.run} and {b.run} were run on different golden sets; compare like with like")
    rules = [parse_fail_on(r) for r in (fail_on or [])]
    labels: dict[str, LabelComparison] = {}
    regressions: list[Regression] = []
    for label in sorted(set(a.predictions) & set(b.predictions)):
        pa = {r.id: r for r in a.predictions[label]}
        pb = {r.id: r for r in b.predictions[label]}
        ids = sorted(set(pa) & set(pb))
        y = [pa[i].y for i in ids]
        paired = paired_comparison(y, [pa[i].pred for i in ids], [pb[i].pred for i in ids], rounds=rounds, seed=seed)
        flips = [
            Flip(id=i, y=pa[i].y, a=pa[i].pred, b=pb[i].pred, score_a=pa[i].score, score_b=pb[i].score)
            for i in ids
            if pa[i].pred != pb[i].pred
        ]
        labels[label] = LabelComparison(n_paired=len(ids), metrics=paired.metrics, mcnemar=paired.mcnemar, flipped=flips)
        for metric, direction, limit in rules:
            d = paired.metrics[metric].delta * 100
            if (direction == "drop" and -d > limit) or (direction == "rise" and d > limit):
                regressions.append(Regression(label=label, metric=metric, direction=direction, points=abs(d), limit=limit))

    def head(r: EvalResult) -> dict[str, Any]:
        return {"policies": r.manifest.policies, "prompt_fingerprint": r.manifest.prompt_fingerprint, "model": r.manifest.model}

    return Comparison(a=a.run, b=b.run, a_manifest=head(a), b_manifest=head(b), labels=labels, regressions=regressions)


def compare_runs(run_a: str | Path, run_b: str | Path, *, fail_on: list[str] | None = None, rounds: int = 1000, seed: int = 0) -> Comparison:
    """:func:`compare` of two run directories' saved ``metrics.json``."""
    a, b = load_result(run_a), load_result(run_b)
    a.run, b.run = str(run_a), str(run_b)
    return compare(a, b, fail_on=fail_on, rounds=rounds, seed=seed)
