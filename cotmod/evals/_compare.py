"""Choosing operating points (``cotmod tune``) and comparing runs (``cotmod compare``)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .._exceptions import InputError
from ._metrics import binary_metrics, paired_comparison, pr_curve, threshold_for_precision

__all__ = ["compare_runs", "parse_fail_on", "tune"]


def _load_metrics(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / "metrics.json"
    if not p.exists():
        raise InputError(f"{run_dir}: no metrics.json; run cotmod eval (or cotmod report) first")
    data: dict[str, Any] = json.loads(p.read_text())
    return data


def tune(
    metrics: dict[str, Any],
    *,
    target_precision: float | None = None,
    cost_fp: float | None = None,
    cost_fn: float | None = None,
    auto_precision: float = 0.99,
) -> dict[str, Any]:
    """Per-policy thresholds on the verdict score, with bands: auto-action / human review / allow.

    ``review`` is the threshold for a target precision (the lowest one that reaches it, which
    maximises recall) or the one minimising ``cost_fp * FP + cost_fn * FN``; ``auto_action`` is
    the lowest threshold reaching ``auto_precision`` (None when no threshold does).
    """
    if target_precision is None and (cost_fp is None or cost_fn is None):
        raise InputError("give --target-precision, or both --cost-fp and --cost-fn")
    out: dict[str, Any] = {}
    evidence: dict[str, Any] = {}
    for label, preds in metrics["predictions"].items():
        y = [r["y"] for r in preds]
        s = [r["score"] for r in preds]
        if not preds or sum(y) == 0:
            continue
        if target_precision is not None:
            pt = threshold_for_precision(y, s, target_precision)
            if pt is None:
                evidence[label] = {"reachable": False, "note": f"no threshold reaches precision {target_precision}"}
                continue
            review = pt["threshold"]
        else:
            assert cost_fp is not None and cost_fn is not None
            best = None
            for cand in pr_curve(y, s):
                pred = [1 if v >= cand["threshold"] else 0 for v in s]
                c = binary_metrics(y, pred)["confusion"]
                cost = cost_fp * c["fp"] + cost_fn * c["fn"]
                if best is None or cost < best[0]:
                    best = (cost, cand["threshold"])
            assert best is not None
            review = best[1]
        auto = threshold_for_precision(y, s, auto_precision)
        auto_t = max(auto["threshold"], review) if auto else None
        pred = [1 if v >= review else 0 for v in s]
        m = binary_metrics(y, pred)
        evidence[label] = {"review": review, "auto_action": auto_t, "precision": m["precision"], "recall": m["recall"], "n": len(preds)}
        for pid in metrics["labels"][label]["policies"]:
            prev = out.get(pid)
            if prev is None or review > prev["review"]:
                out[pid] = {"review": review, **({"auto_action": auto_t} if auto_t is not None else {})}
    return {
        "thresholds": out,
        "evidence": evidence,
        "method": {"target_precision": target_precision, "cost_fp": cost_fp, "cost_fn": cost_fn, "auto_precision": auto_precision},
        "run": metrics["run"],
        "policies": metrics["manifest"].get("policies", {}),
        "prompt_fingerprint": metrics["manifest"].get("prompt_fingerprint"),
        "model": metrics["manifest"].get("model"),
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


def write_thresholds(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(
        "# Written by cotmod tune. Score >= auto_action: enforce automatically; >= review: human review;\n"
        "# below review: allow. Apply with: cotmod run ... --thresholds THIS_FILE\n"
        + yaml.safe_dump(data, sort_keys=False)
    )


_FAIL = re.compile(r"^\s*(precision|recall|f1|fpr)\s+(drop|rise)\s*>\s*([0-9.]+)\s*$")


def parse_fail_on(rule: str) -> tuple[str, str, float]:
    """``"precision drop > 2"`` → (metric, direction, points)."""
    m = _FAIL.match(rule)
    if not m:
        raise InputError(f"--fail-on {rule!r}: expected e.g. 'precision drop > 2' (points) or 'fpr rise > 1'")
    return m.group(1), m.group(2), float(m.group(3))


def compare_runs(run_a: str | Path, run_b: str | Path, *, fail_on: list[str] | None = None, rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metric deltas B−A with paired-bootstrap CIs, McNemar tests and flipped items per label."""
    a, b = _load_metrics(run_a), _load_metrics(run_b)
    if a["manifest"]["golden"]["sha256"] != b["manifest"]["golden"]["sha256"]:
        raise InputError(f"{run_a} and {run_b} were run on different golden sets; compare like with like")
    rules = [parse_fail_on(r) for r in (fail_on or [])]
    labels: dict[str, Any] = {}
    failures: list[str] = []
    for label in sorted(set(a["predictions"]) & set(b["predictions"])):
        pa = {r["id"]: r for r in a["predictions"][label]}
        pb = {r["id"]: r for r in b["predictions"][label]}
        ids = sorted(set(pa) & set(pb))
        y = [int(pa[i]["y"]) for i in ids]
        paired = paired_comparison(y, [int(pa[i]["pred"]) for i in ids], [int(pb[i]["pred"]) for i in ids], rounds=rounds, seed=seed)
        deltas = paired["metrics"]
        flips = [
            {"id": i, "y": int(pa[i]["y"]), "a": int(pa[i]["pred"]), "b": int(pb[i]["pred"]), "score_a": pa[i]["score"], "score_b": pb[i]["score"]}
            for i in ids
            if pa[i]["pred"] != pb[i]["pred"]
        ]
        labels[label] = {
            "n_paired": len(ids),
            "metrics": deltas,
            "mcnemar": paired["mcnemar"],
            "flipped": flips,
        }
        for metric, direction, points in rules:
            d = deltas[metric]["delta"] * 100
            if (direction == "drop" and -d > points) or (direction == "rise" and d > points):
                failures.append(f"{label}: {metric} {direction} {abs(d):.1f} points > {points}")
    return {
        "a": str(run_a),
        "b": str(run_b),
        "a_manifest": {k: a["manifest"].get(k) for k in ("policies", "prompt_fingerprint", "model")},
        "b_manifest": {k: b["manifest"].get(k) for k in ("policies", "prompt_fingerprint", "model")},
        "labels": labels,
        "failures": failures,
        "ok": not failures,
    }
