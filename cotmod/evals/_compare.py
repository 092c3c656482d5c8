"""Choosing operating points (``cotmod tune``) and comparing runs (``cotmod compare``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .._exceptions import InputError
from ..batch._store import errors_path
from ._harness import _read_jsonl, load_result
from ._metrics import (
    binary_metrics,
    confusion,
    metric_cis,
    paired_comparison,
    paired_ratio_delta,
    pr_curve,
    threshold_for_precision,
)
from ._results import (
    AttributionComparison,
    Comparison,
    EvalResult,
    Flip,
    ItemFlags,
    LabelComparison,
    LabelOperatingPoint,
    MetricDelta,
    PolicyThreshold,
    Regression,
    RunCoverage,
    Thresholds,
    TriageComparison,
    TuneMethod,
)

__all__ = ["compare", "compare_attribution", "compare_runs", "compare_triage", "parse_fail_on", "tune", "write_thresholds"]


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


def _one_class(y: list[int]) -> str:
    """Why no threshold can be chosen on a label's decided items (empty when it can): none, or
    all of one class (all positive: every threshold has precision 1, and would enforce on
    everything; all negative: nothing to find)."""
    if not y:
        return "no decided items"
    if sum(y) == 0:
        return f"no positive items among the {len(y)} decided: nothing to tune a threshold for"
    if sum(y) == len(y):
        return (f"no negative items among the {len(y)} decided: precision is 1 at every threshold, "
                "so no threshold is meaningful")
    return ""


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
    the same items the threshold was chosen on, so optimistic). A label whose decided items
    are all of one class (or that has none) gets no threshold: its evidence is
    ``reachable=False`` with the reason in ``note``, as for a target precision no threshold
    reaches. A policy deciding several
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
        one_class = _one_class(y)
        if one_class:
            if y and result.manifest.limit is not None:
                one_class += (f" (the run took the first {result.manifest.limit} items of the golden set in file order, "
                              "--limit: a file sorted by label gives one class; draw a seeded --sample instead)")
            evidence[label] = LabelOperatingPoint(reachable=False, note=one_class, n=len(y))
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
        triage_blend=(result.manifest.model_extra or {}).get("triage_blend") or None,
        created_at=datetime.now(timezone.utc).isoformat(),
    )


def write_thresholds(thresholds: Thresholds, path: str | Path) -> None:
    """Write a thresholds YAML file (what ``cotmod eval --thresholds`` and the ``thresholds``
    setting of ``cotmod.toml`` / :class:`~cotmod.Settings` read).

    ``thresholds: {POLICY: {review, auto_action, ...}}`` as before; a policy without an
    auto-action threshold has no ``auto_action`` key.
    """
    data = thresholds.model_dump(mode="json")
    if data.get("triage_blend") is None:  # tuned on unblended scores: the file stays as it was
        data.pop("triage_blend", None)
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


_LABEL_METRICS = ("precision", "recall", "f1", "fpr")
#: attribution shares a --fail-on rule may name (without the ``_share`` suffix)
ATTRIBUTION_FAIL = ("benign_no_flag", "harmful_flagged", "own_policy")
#: triage-reach shares a --fail-on rule may name (``triage_`` + the share without ``_share``)
TRIAGE_FAIL = ("triage_own_policy_reached", "triage_benign_none")
_FAIL = re.compile(
    r"^\s*(" + "|".join(_LABEL_METRICS + TRIAGE_FAIL + ATTRIBUTION_FAIL) + r")(?:_share)?\s+(drop|rise)\s*>\s*([0-9.]+)\s*$"
)


def parse_fail_on(rule: str) -> tuple[str, str, float]:
    """``"precision drop > 2"`` → (metric, direction, points). A label metric (precision,
    recall, f1, fpr) applies to every label; an attribution share (``benign_no_flag``,
    ``harmful_flagged``, ``own_policy``) to the run's attribution figures; a triage share
    (``triage_own_policy_reached``, ``triage_benign_none``) to triage's reach."""
    m = _FAIL.match(rule)
    if not m:
        raise InputError(
            f"--fail-on {rule!r}: expected e.g. 'precision drop > 2' (points), 'fpr rise > 1' or "
            "'benign_no_flag drop > 2' (metric: precision, recall, f1, fpr, " + ", ".join(ATTRIBUTION_FAIL + TRIAGE_FAIL) + ")"
        )
    return m.group(1), m.group(2), float(m.group(3))


def _pair_items(
    a: list[ItemFlags], b: list[ItemFlags]
) -> tuple[list[ItemFlags], list[ItemFlags], list[float], list[float]] | None:
    """A's and B's records of the items both have, in id order, with 1/0 harmful and benign
    indicators (A's gold); ``None`` when they share no item."""
    fa = {r.id: r for r in a}
    fb = {r.id: r for r in b}
    ids = sorted(set(fa) & set(fb))
    if not ids:
        return None
    ra, rb = [fa[i] for i in ids], [fb[i] for i in ids]
    harm = [1.0 if r.kind == "harmful" else 0.0 for r in ra]
    return ra, rb, harm, [1.0 - h for h in harm]


def _paired_item_ratio(
    ra: list[ItemFlags], rb: list[ItemFlags], num: Callable[[ItemFlags], float], den: list[float], *, rounds: int, seed: int
) -> MetricDelta | None:
    """``sum(num * den) / sum(den)`` over the same items in A and B (``den`` 1 for the items a
    share is taken on, 0 for the others), paired: :func:`paired_ratio_delta`."""
    return paired_ratio_delta(
        [num(r) * d for r, d in zip(ra, den, strict=True)], den,
        [num(r) * d for r, d in zip(rb, den, strict=True)], den,
        rounds=rounds, seed=seed,
    )


def compare_attribution(
    a: list[ItemFlags], b: list[ItemFlags], policies: list[str], *, rounds: int = 1000, seed: int = 0
) -> AttributionComparison | None:
    """Attribution figures of B against A on the items both decided, with paired-bootstrap CIs:
    the share of benign items with no flag, of harmful items flagged at all and flagged by one
    of their own labels' policies, the policies blamed per harmful item, and each policy's
    attribution precision. ``None`` when the runs share no decided item."""
    paired = _pair_items(a, b)
    if paired is None:
        return None
    ra, rb, harm, ben = paired

    def delta(num: Callable[[ItemFlags], float], den: list[float], salt: int) -> MetricDelta | None:
        return _paired_item_ratio(ra, rb, num, den, rounds=rounds, seed=seed + salt)

    figures: dict[str, MetricDelta | None] = {
        "benign_no_flag_share": delta(lambda r: 0.0 if r.flagged else 1.0, ben, 0),
        "harmful_flagged_share": delta(lambda r: 1.0 if r.flagged else 0.0, harm, 1),
        "own_policy_share": delta(lambda r: 1.0 if set(r.flagged) & set(r.own) else 0.0, harm, 2),
        "blamed_per_harmful": delta(lambda r: float(len(r.flagged)), harm, 3),
    }
    per_policy: dict[str, MetricDelta] = {}
    for k, pid in enumerate(policies):
        d = paired_ratio_delta(
            [1.0 if pid in r.flagged and pid in r.own else 0.0 for r in ra],
            [1.0 if pid in r.flagged else 0.0 for r in ra],
            [1.0 if pid in r.flagged and pid in r.own else 0.0 for r in rb],
            [1.0 if pid in r.flagged else 0.0 for r in rb],
            rounds=rounds, seed=seed + 10 + k,
        )
        if d is not None:
            per_policy[pid] = d
    return AttributionComparison(
        n_paired=len(ra),
        harmful=int(sum(harm)),
        benign=int(sum(ben)),
        metrics={k: v for k, v in figures.items() if v is not None},
        per_policy_precision=per_policy,
    )


def compare_triage(a: list[ItemFlags], b: list[ItemFlags], *, rounds: int = 1000, seed: int = 0) -> TriageComparison | None:
    """Triage's reach in B against A, paired on the items both decided with a working triage
    call (``ItemFlags.triaged``): the share of harmful items sent to one of their own policies,
    of benign items sent to no policy call, and the policies selected per item, with
    paired-bootstrap CIs. ``None`` when no item was triaged in both."""
    paired = _pair_items([r for r in a if r.triaged is not None], [r for r in b if r.triaged is not None])
    if paired is None:
        return None
    ra, rb, harm, ben = paired
    ones = [1.0] * len(ra)

    def reached(r: ItemFlags) -> bool:
        return bool(set(r.triaged or []) & set(r.own))

    def delta(num: Callable[[ItemFlags], float], den: list[float], salt: int) -> MetricDelta | None:
        return _paired_item_ratio(ra, rb, num, den, rounds=rounds, seed=seed + salt)

    figures: dict[str, MetricDelta | None] = {
        "own_policy_reached_share": delta(lambda r: 1.0 if reached(r) else 0.0, harm, 20),
        "benign_none_share": delta(lambda r: 0.0 if r.triaged else 1.0, ben, 21),
        "selected_per_item": delta(lambda r: float(len(r.triaged or [])), ones, 22),
    }
    return TriageComparison(
        n_paired=len(ra),
        harmful=int(sum(harm)),
        benign=int(sum(ben)),
        metrics={k: v for k, v in figures.items() if v is not None},
        reached_a_only=[x.id for x, y in zip(ra, rb, strict=True) if x.kind == "harmful" and reached(x) and not reached(y)],
        reached_b_only=[x.id for x, y in zip(ra, rb, strict=True) if x.kind == "harmful" and reached(y) and not reached(x)],
    )


def compare(a: EvalResult, b: EvalResult, *, fail_on: list[str] | None = None, rounds: int = 1000, seed: int = 0) -> Comparison:
    """Metric deltas B−A with paired-bootstrap CIs, McNemar tests and flipped items per label,
    on the items both runs decided, the attribution figures' deltas (when both results have
    them) and triage's reach (:func:`compare_triage`, when both runs triaged); ``fail_on`` rules (e.g. ``"precision drop > 2"`` for any label, or
    ``"benign_no_flag drop > 2"``, in percentage points) met are listed in ``regressions``. Items
    either run left undecided (error verdicts, not judged yet) are counted per run in
    ``a_coverage`` / ``b_coverage`` and make ``ok`` false. Pure."""
    if a.manifest.golden.sha256 != b.manifest.golden.sha256:
        raise InputError(f"{a.run} and {b.run} were run on different golden sets; compare like with like")
    rules = [parse_fail_on(r) for r in (fail_on or [])]
    labels: dict[str, LabelComparison] = {}
    regressions: list[Regression] = []
    label_rules = [r for r in rules if r[0] in _LABEL_METRICS]
    unmeasured: list[str] = []
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
        for metric, direction, limit in label_rules:
            d = paired.metrics[metric].delta * 100
            if (direction == "drop" and -d > limit) or (direction == "rise" and d > limit):
                regressions.append(Regression(label=label, metric=metric, direction=direction, points=abs(d), limit=limit))
    if label_rules and not any(lc.n_paired for lc in labels.values()):
        unmeasured += [f"{m} {d} > {lim:g}: the runs decided no item of a shared label" for m, d, lim in label_rules]
    attribution = None
    if a.attribution is not None and b.attribution is not None:
        in_play = [p for p in a.attribution.policies if p in b.attribution.policies]
        attribution = compare_attribution(a.item_flags, b.item_flags, in_play, rounds=rounds, seed=seed)
    triage = compare_triage(a.item_flags, b.item_flags, rounds=rounds, seed=seed)
    for metric, direction, limit in rules:
        if metric in _LABEL_METRICS:
            continue
        source, name = (triage, metric.removeprefix("triage_")) if metric in TRIAGE_FAIL else (attribution, metric)
        got = source.metrics.get(f"{name}_share") if source is not None else None
        if got is None:  # not measurable on these runs (no attribution or triage records, or no such items)
            what = "triage records in both runs" if metric in TRIAGE_FAIL else "attribution figures in both runs"
            unmeasured.append(f"{metric} {direction} > {limit:g}: needs {what}, with items of that kind")
            continue
        d = got.delta * 100
        if (direction == "drop" and -d > limit) or (direction == "rise" and d > limit):
            label = "triage" if metric in TRIAGE_FAIL else "attribution"
            regressions.append(Regression(label=label, metric=f"{metric}_share", direction=direction, points=abs(d), limit=limit))

    def head(r: EvalResult) -> dict[str, Any]:
        return {"policies": r.manifest.policies, "prompt_fingerprint": r.manifest.prompt_fingerprint, "model": r.manifest.model}

    def coverage(r: EvalResult) -> RunCoverage:
        return RunCoverage(items=r.items, errors=r.errors, missing=r.missing, complete=r.manifest.complete)

    def decided(r: EvalResult) -> set[str]:
        return {p.id for preds in r.predictions.values() for p in preds}

    return Comparison(
        a=a.run, b=b.run, a_manifest=head(a), b_manifest=head(b), labels=labels, attribution=attribution, triage=triage,
        regressions=regressions, unmeasured=unmeasured, n_paired=len(decided(a) & decided(b)),
        a_coverage=coverage(a), b_coverage=coverage(b),
    )


def compare_runs(run_a: str | Path, run_b: str | Path, *, fail_on: list[str] | None = None, rounds: int = 1000, seed: int = 0) -> Comparison:
    """:func:`compare` of two run directories' saved ``metrics.json``. A ``metrics.json`` written
    before it counted the undecided items has them counted from the run directory's files."""
    a, b = load_result(run_a), load_result(run_b)
    a.run, b.run = str(run_a), str(run_b)
    for result, rd in ((a, run_a), (b, run_b)):
        _count_undecided(result, Path(rd))
    return compare(a, b, fail_on=fail_on, rounds=rounds, seed=seed)


def _count_undecided(result: EvalResult, run_dir: Path) -> None:
    """Fill ``items``, ``errors`` and ``missing`` of a result loaded from a ``metrics.json``
    without them (written by an earlier version: they read 0) from the run directory: the
    items sent (``items.jsonl``), those with a verdict, and the dead-lettered ones."""
    if "items" in result.model_fields_set or result.items:
        return
    sent_path = run_dir / "items.jsonl"
    if not sent_path.exists():
        return
    sent = [str(r["id"]) for r in _read_jsonl(sent_path) if isinstance(r, dict) and "id" in r]
    vpath = run_dir / "verdicts.jsonl"
    decided = {str(v.get("item_id")) for v in _read_jsonl(vpath) if isinstance(v, dict)}
    failed = {str(e.get("id")) for e in _read_jsonl(errors_path(vpath)) if isinstance(e, dict)}
    undecided = [i for i in dict.fromkeys(sent) if i not in decided]
    result.items = len(dict.fromkeys(sent))
    result.errors = sum(1 for i in undecided if i in failed)
    result.missing = len(undecided) - result.errors
