"""Auditor end to end with real models: a small "production" model audited by a stronger one,
the golden set's labels standing in for human adjudication.

1. Draw ``--n`` items of SMS Spam (seeded, the natural spam share) → ``items.jsonl``.
2. Production: ``cotmod run`` with ``--production`` (SmolLM2-135M) on every item, ``spam_scams``.
3. ``cotmod audit plan`` (stratified, oversampling the non-flagged side, ``--size``) and
   ``cotmod audit run`` with ``--auditor`` (Qwen2.5-Coder-1.5B) on the sample.
4. ``cotmod audit export``: the disagreement queue plus a control sample; the gold labels fill
   it in as the "humans" (``labels.jsonl``).
5. ``cotmod audit report``: estimates of production's precision and recall (auditor as truth,
   human labels only, and prediction-powered), against production's *true* precision and recall
   on all ``--n`` items computed from the gold labels; the auditor's agreement with gold.

Prints one JSON line (stdout); the run directory keeps every file. Model benchmarks run alone.

    python benchmarks/bench_audit_models.py --n 150 --size 60 --control 20 --out benchmarks/results/audit-smollm-vs-qwen
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cotmod_exe, emit, log, run_cmd

GOLD = Path(__file__).resolve().parent / "goldsets" / "sms_spam" / "sms_spam.normalized.jsonl.gz"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _lines(path: Path) -> int:
    """Dead letters: items that got no verdict at all."""
    return len(_jsonl(path)) if path.exists() else 0


def _pr(pairs: list[tuple[bool, bool]]) -> dict[str, float | None]:
    tp = sum(1 for p, t in pairs if p and t)
    fp = sum(1 for p, t in pairs if p and not t)
    fn = sum(1 for p, t in pairs if not p and t)
    return {
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "flag_rate": round(sum(1 for p, _ in pairs if p) / len(pairs), 4) if pairs else None,
        "prevalence": round(sum(1 for _, t in pairs if t) / len(pairs), 4) if pairs else None,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--size", type=int, default=80, help="audited items (the plan's sample size)")
    ap.add_argument("--control", type=int, default=20, help="random control items the 'humans' label, besides the disagreements")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--production", default="smollm2-135m")
    ap.add_argument("--auditor", default="qwen2.5-coder-1.5b")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-audit-models"))
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    exe = cotmod_exe()

    with gzip.open(GOLD, "rt", encoding="utf-8") as fg:
        rows = [json.loads(x) for x in fg if x.strip()]
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(rows), size=args.n, replace=False)
    gold: dict[str, bool] = {}
    items = out / "items.jsonl"
    with items.open("w", encoding="utf-8") as f:
        for j in pick:
            r = rows[int(j)]
            gold[str(r["id"])] = bool(r["labels"]["spam"])
            f.write(json.dumps({"id": str(r["id"]), "text": r["text"]}) + "\n")

    common = ["-c", str(args.concurrency), "--no-progress", "--json"]
    prod = out / "production.jsonl"
    run_cmd([exe, "run", str(items), "-o", str(prod), "-p", "spam_scams", "--local-model", args.production, *common], ok=(0, 1))
    plan = out / "plan.jsonl"
    if plan.exists():  # a rerun resumes the same audit (a new plan would have another hash)
        log(f"reusing {plan}")
    else:
        run_cmd([exe, "audit", "plan", str(prod), "--items", str(items), "-p", "spam_scams", "--size", str(args.size),
                 "--seed", str(args.seed), "-o", str(plan)])
    audit = out / "audit.jsonl"
    run_cmd([exe, "audit", "run", str(plan), "-o", str(audit), "--local-model", args.auditor, *common], ok=(0, 1))
    task = out / "task.jsonl"
    run_cmd([exe, "audit", "export", str(plan), str(audit), "-o", str(task), "--control", str(args.control), "--seed", str(args.seed),
             "--overwrite"], ok=(0, 1))  # 1: some sampled items have no auditor decision (the task is written)
    labels = out / "labels.jsonl"
    with labels.open("w", encoding="utf-8") as f:
        for row in _jsonl(task):
            row["label"] = "violates" if gold[str(row["id"])] else "safe"
            row["labeler"] = "gold (SMS Spam Collection)"
            f.write(json.dumps(row) + "\n")
    rep = json.loads(run_cmd([exe, "audit", "report", str(plan), str(audit), "--labels", str(labels), "--json",
                           "--control", str(args.control), "--control-seed", str(args.seed),
                           "--html", str(out / "report.html")], ok=(0, 1)).stdout)
    (out / "report.json").write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")

    # the truth: production against gold on every item; the auditor against gold on its sample
    pv = {v["item_id"]: v for v in _jsonl(prod)}
    truth_pairs = [(bool(v["violates"]), gold[i]) for i, v in pv.items() if v["status"] == "ok"]
    av = {v["item_id"]: v for v in _jsonl(audit)}
    aud_pairs = [(bool(v["violates"]), gold[i]) for i, v in av.items() if v["status"] == "ok"]
    agree = sum(1 for a, t in aud_pairs if a == t)
    figures: dict[str, Any] = {
        "bench": "audit_models",
        "n": args.n,
        "seed": args.seed,
        "production": args.production,
        "auditor": args.auditor,
        "production_errors": sum(1 for v in pv.values() if v["status"] != "ok") + _lines(out / "production.errors.jsonl"),
        "auditor_errors": sum(1 for v in av.values() if v["status"] != "ok") + _lines(out / "audit.errors.jsonl"),
        "audited": len(av),
        "human_labels": len(_jsonl(labels)),
        "production_true": _pr(truth_pairs),
        "auditor_vs_gold": {"agreement": round(agree / len(aud_pairs), 4) if aud_pairs else None, **_pr(aud_pairs)},
        "report": rep,
    }
    (out / "result.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    emit({k: v for k, v in figures.items() if k != "report"})


if __name__ == "__main__":
    main()
