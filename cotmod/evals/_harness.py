"""The golden-set harness: run a golden set through the batch runner, then measure.

A run directory holds everything needed to reproduce and compare::

    runs/NAME/
      manifest.json      policy versions, prompt fingerprint, model, sampling, cotmod version,
                         date, golden set path + sha256, label mapping
      items.jsonl        the items sent (id, text, the policies that decide its known labels)
      verdicts.jsonl     one verdict per item (the runner's output: cached, resumable)
      verdicts.errors.jsonl
      metrics.json       every figure (what the terminal table and the HTML report show)

Scores for curves and thresholds: per label, the highest ``score`` among its policies' decisions
(``score`` is the verdict's probability-like score: stated confidence by default, token
log-probabilities when the server returns them).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import ConfigError, InputError
from .._version import __version__
from ..batch._runner import Runner, RunSummary
from ..engine._moderator import AsyncModerator
from ._golden import GoldenSet, LabelMapping, load_golden, load_mapping
from ._metrics import (
    average_precision,
    binary_metrics,
    bootstrap_ci,
    calibration,
    from_confusion,
    pr_curve,
    roc_auc,
)

__all__ = ["compute_metrics", "run_eval"]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    tmp.replace(path)


def run_eval(
    moderator: AsyncModerator,
    golden_path: str | Path,
    mapping_path: str | Path,
    run_dir: str | Path,
    *,
    concurrency: int | None = None,
    limit: int | None = None,
    on_progress: Any = None,
) -> tuple[dict[str, Any], RunSummary]:
    """Run (or resume) an evaluation; returns (manifest, runner summary)."""
    mapping = load_mapping(mapping_path)
    mapping.validate(moderator.policies, str(mapping_path))
    golden = load_golden(golden_path, mapping)
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old.get("golden", {}).get("sha256") != golden.sha256:
            raise ConfigError(
                f"{out} holds a run of another golden set ({old.get('golden', {}).get('path')}); "
                "use another run directory"
            )
    items = out / "items.jsonl"
    with items.open("w", encoding="utf-8") as f:
        n = 0
        for it in golden.items:
            pols = list(dict.fromkeys(p for lab, v in it.labels.items() if v is not None for p in mapping.labels[lab]))
            if not pols:
                continue
            f.write(json.dumps({"id": it.id, "text": it.text, "policies": pols}, ensure_ascii=False) + "\n")
            n += 1
            if limit is not None and n >= limit:
                break
    runner = Runner(moderator, concurrency=concurrency)
    manifest = {
        **runner.manifest(mapping.policies),
        "cotmod_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "golden": {"path": str(golden_path), "sha256": golden.sha256, "rows": len(golden)},
        "mapping": {"path": str(mapping_path), "name": mapping.name, "labels": mapping.labels, "strata": mapping.strata},
        "limit": limit,
    }
    # written first, so an interrupted run can still be reported on (cotmod report) and resumed
    _write_json(mpath, {**manifest, "complete": False})
    summary = Runner.run_sync(
        runner, items, out / "verdicts.jsonl", policies=mapping.policies, policies_field="policies", on_progress=on_progress
    )
    manifest["complete"] = True
    _write_json(mpath, manifest)
    return manifest, summary


def _load_run(run_dir: Path) -> tuple[dict[str, Any], GoldenSet, LabelMapping, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    mpath = run_dir / "manifest.json"
    if not mpath.exists():
        raise InputError(f"{run_dir}: not a run directory (no manifest.json); create one with cotmod eval")
    manifest = json.loads(mpath.read_text())
    mapping = LabelMapping(
        name=manifest["mapping"]["name"],
        labels=manifest["mapping"]["labels"],
        strata=manifest["mapping"].get("strata", []),
    )
    golden = load_golden(manifest["golden"]["path"], mapping)
    if golden.sha256 != manifest["golden"]["sha256"]:
        raise InputError(f"{manifest['golden']['path']} changed since the run {run_dir} was made")
    verdicts: dict[str, dict[str, Any]] = {}
    vpath = run_dir / "verdicts.jsonl"
    if vpath.exists():
        with vpath.open() as f:
            for line in f:
                v = json.loads(line)
                verdicts[str(v["item_id"])] = v
    errors: dict[str, dict[str, Any]] = {}
    epath = Runner.errors_path(vpath)
    if epath.exists():
        with epath.open() as f:
            for line in f:
                e = json.loads(line)
                errors[str(e["id"])] = e
    return manifest, golden, mapping, verdicts, errors


def _label_view(v: dict[str, Any], policies: list[str], thresholds: dict[str, dict[str, float]]) -> tuple[int, float, list[str], list[dict[str, Any]]]:
    """(prediction, score, cited rules, decisions) for one label from one verdict."""
    decs = [d for d in v["decisions"] if d["policy_id"] in policies]
    score = max((float(d["score"]) for d in decs), default=0.0)
    pred = 0
    for d in decs:
        th = thresholds.get(d["policy_id"])
        if (th is not None and float(d["score"]) >= th["review"]) or (th is None and d["violates"]):
            pred = 1
    rules = [r for d in decs for r in d["rule_ids"]]
    return pred, score, rules, decs


def compute_metrics(
    run_dir: str | Path,
    *,
    thresholds: dict[str, dict[str, float]] | None = None,
    bootstrap_rounds: int = 1000,
    seed: int = 0,
    max_examples: int = 50,
) -> dict[str, Any]:
    """Every figure of a run: per label and per rule, averages, curves, calibration, RCA."""
    rd = Path(run_dir)
    manifest, golden, mapping, verdicts, errors = _load_run(rd)
    thresholds = thresholds or {}
    labels_out: dict[str, Any] = {}
    pooled = Counter[str]()
    rows_by_label: dict[str, list[dict[str, Any]]] = {}
    for label, pols in mapping.labels.items():
        rows: list[dict[str, Any]] = []
        n_known = n_error = n_missing = 0
        for it in golden.items:
            gold = it.labels.get(label)
            if gold is None:
                continue
            n_known += 1
            v = verdicts.get(it.id)
            if v is None:
                if it.id in errors:
                    n_error += 1
                else:
                    n_missing += 1
                continue
            pred, score, rules, decs = _label_view(v, pols, thresholds)
            rows.append(
                {
                    "id": it.id,
                    "text": it.text,
                    "y": int(gold),
                    "pred": pred,
                    "score": score,
                    "rules": rules,
                    "expected_rules": it.expected_rules.get(label, []),
                    "rationale": " | ".join(d["rationale"] for d in decs if d["violates"]) or (decs[0]["rationale"] if decs else ""),
                    "reasoning": v.get("reasoning", []),
                    "strata": {s: it.meta.get(s) for s in mapping.strata},
                }
            )
        rows_by_label[label] = rows
        y: Any = np.array([r["y"] for r in rows], dtype=int)
        p: Any = np.array([r["pred"] for r in rows], dtype=int)
        s: Any = np.array([r["score"] for r in rows], dtype=float)
        m = binary_metrics(y.tolist(), p.tolist())
        for k, val in m["confusion"].items():
            pooled[k] += val

        def ci(metric: str, y: Any = y, p: Any = p) -> list[float] | None:
            r = bootstrap_ci(
                lambda idx: binary_metrics(y[idx].tolist(), p[idx].tolist())[metric],
                len(y),
                rounds=bootstrap_rounds,
                seed=seed,
            )
            return list(r) if r else None

        entry: dict[str, Any] = {
            "policies": pols,
            **{k: m[k] for k in ("precision", "recall", "f1", "fpr", "support", "n", "confusion")},
            "known": n_known,
            "errors": n_error,
            "missing": n_missing,
            "error_rate": (n_error + n_missing) / n_known if n_known else 0.0,
            "auprc": average_precision(y.tolist(), s.tolist()) if len(rows) else None,
            "roc_auc": roc_auc(y.tolist(), s.tolist()) if len(rows) else None,
            "ci95": {k: ci(k) for k in ("precision", "recall", "f1", "fpr")},
            "calibration": calibration(y.tolist(), s.tolist()) if len(rows) else None,
            "pr_curve": pr_curve(y.tolist(), s.tolist()) if len(rows) else [],
            "per_rule": _per_rule(rows),
            "rca": _rca(rows, mapping.strata, max_examples),
        }
        labels_out[label] = entry
    macro = {k: float(np.mean([e[k] for e in labels_out.values()])) if labels_out else 0.0 for k in ("precision", "recall", "f1", "fpr")}
    micro = {**from_confusion(dict(pooled)), "confusion": dict(pooled)}
    result = {
        "run": str(rd),
        "manifest": manifest,
        "thresholds": thresholds,
        "labels": labels_out,
        "micro": micro,
        "macro": macro,
        "predictions": {lab: [{k: r[k] for k in ("id", "y", "pred", "score")} for r in rows] for lab, rows in rows_by_label.items()},
    }
    _write_json(rd / "metrics.json", result)
    return result


def _per_rule(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For each cited rule: how often cited, precision of its citations, recall where expected."""
    cited: dict[str, list[int]] = defaultdict(list)
    expected: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        for rule in set(r["rules"]):
            cited[rule].append(r["y"])
        for rule in set(r["expected_rules"]):
            expected[rule].append(1 if rule in r["rules"] else 0)
    out: dict[str, Any] = {}
    for rule in sorted(set(cited) | set(expected)):
        ys = cited.get(rule, [])
        ex = expected.get(rule, [])
        out[rule] = {
            "cited": len(ys),
            "true_positive": int(sum(ys)),
            "false_positive": len(ys) - int(sum(ys)),
            "precision": (sum(ys) / len(ys)) if ys else None,
            "expected": len(ex),
            "recall": (sum(ex) / len(ex)) if ex else None,
        }
    return out


def _rca(rows: list[dict[str, Any]], strata: list[str], max_examples: int) -> dict[str, Any]:
    """False positives and negatives with their reasoning, grouped by cited rule and by stratum."""
    fps = [r for r in rows if r["y"] == 0 and r["pred"] == 1]
    fns = [r for r in rows if r["y"] == 1 and r["pred"] == 0]
    by_rule: Counter[str] = Counter(rule for r in fps for rule in set(r["rules"]))
    by_stratum: dict[str, dict[str, dict[str, int]]] = {}
    for s in strata:
        table: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "fp": 0, "fn": 0, "errors": 0})
        for r in rows:
            if r["strata"].get(s) in (None, ""):
                continue  # this row has no value for the stratum (e.g. another set's field)
            key = str(r["strata"].get(s))
            table[key]["n"] += 1
            if r["y"] == 0 and r["pred"] == 1:
                table[key]["fp"] += 1
            if r["y"] == 1 and r["pred"] == 0:
                table[key]["fn"] += 1
        for v in table.values():
            v["errors"] = v["fp"] + v["fn"]
        if table:
            by_stratum[s] = dict(sorted(table.items(), key=lambda kv: -kv[1]["errors"]))

    def ex(r: dict[str, Any]) -> dict[str, Any]:
        return {k: r[k] for k in ("id", "text", "score", "rules", "rationale", "reasoning", "strata")}

    return {
        "false_positives": len(fps),
        "false_negatives": len(fns),
        "fp_by_rule": dict(by_rule.most_common()),
        "by_stratum": by_stratum,
        "fp_examples": [ex(r) for r in sorted(fps, key=lambda r: -r["score"])[:max_examples]],
        "fn_examples": [ex(r) for r in sorted(fns, key=lambda r: r["score"])[:max_examples]],
    }
