"""How the blend was chosen, before the dev 2042 run: item-level AUPRC of score combinations and the
blended score's readings at several thresholds, from the recorded verdicts of three development runs.

    python dev_candidates.py 2034=DIR 2036=DIR 2037=DIR   (each DIR a bench_quality --out directory)

The verdicts of those runs are not committed (their results are: benchmarks/results/da-qwen1.5b-dev2034-full-pipeline,
quality-qwen1.5b-v1.8-fresh2036, quality-qwen1.5b-v1.9-fresh2037); dev_candidates.txt is this script's output on them.
Per policy: own = the policy call's score (0 when triaged out), t = triage's P(yes) for it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
import bench_quality as bq  # noqa: E402
import bench_triage as bt  # noqa: E402
import yaml  # noqa: E402

SETS = ("jigsaw_toxic", "sms_spam", "ailuminate_demo", "xstest")
COMBOS = {
    "policy score (shipped)": lambda own, t: own,
    "triage P(yes) alone": lambda own, t: t,
    "blend w=0.3": lambda own, t: 0.7 * own + 0.3 * t,
    "blend w=0.5 (candidate)": lambda own, t: 0.5 * own + 0.5 * t,
    "blend w=0.7": lambda own, t: 0.3 * own + 0.7 * t,
    "blend w=0.5, judged policies only": lambda own, t: 0.5 * own + 0.5 * t if own > 0 else 0.0,
    "geometric mean": lambda own, t: (own * t) ** 0.5,
}


def load(out: Path) -> list[dict[str, Any]]:
    items = []
    for s in SETS:
        mapping = yaml.safe_load((out / s / "mapping.yaml").read_text())
        labels = {k: v for k, v in mapping["labels"].items() if k != bq.ANY}
        sample = {r["id"]: r for r in map(json.loads, (out / s / "sample.jsonl").read_text().splitlines())}
        for line in (out / s / "new" / "run" / "verdicts.jsonl").read_text().splitlines():
            v = json.loads(line)
            row = sample[v["item_id"]]
            gold = row["labels"].get(bq.ANY)
            if gold is None or v["status"] != "ok":
                continue
            gp = bt.gold_policies(row, {"labels": labels}) if gold else []
            own = {d["policy_id"]: float(d["score"] or 0.0) for d in v["decisions"]}
            tri = (v.get("triage") or {}).get("scores") or {}
            items.append({"gold": gold, "gp": gp, "own": own, "tri": tri})
    return items


def scores(it: dict[str, Any], f: Any) -> dict[str, float]:
    return {p: f(it["own"].get(p, 0.0), it["tri"].get(p, 0.0)) for p in set(it["own"]) | set(it["tri"])}


def tally(items: list[dict[str, Any]], flagged: Any) -> dict[str, Any]:
    """Item-level counts when ``flagged(item)`` lists the policies flagging each item: TP/FP/FN and F1
    of "anything violated", flags on an own policy (``good``) of all flags on harmful items
    (``pairs``), benign items flagged, and each item's 0/1 prediction."""
    tp = fp = fn = good = pairs = benign = bflag = 0
    preds = []
    for it in items:
        fl = flagged(it)
        preds.append(int(bool(fl)))
        if it["gold"]:
            tp += bool(fl)
            fn += not fl
            if it["gp"]:
                pairs += len(fl)
                good += sum(p in it["gp"] for p in fl)
        else:
            benign += 1
            fp += bool(fl)
            bflag += bool(fl)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"f1": f1, "tp": tp, "fp": fp, "fn": fn, "good": good, "pairs": pairs, "benign": benign, "bflag": bflag, "preds": preds}


def reading(items: list[dict[str, Any]], t: float, combo: str = "blend w=0.5 (candidate)") -> str:
    c = tally(items, lambda it: [p for p, s in scores(it, COMBOS[combo]).items() if s > 0 and s >= t])
    return f"F1 {c['f1']:.3f}, benign flagged {c['bflag']}/{c['benign']}, attribution {c['good']}/{c['pairs']}"


def main() -> None:
    runs = {k: load(Path(v)) for k, v in (a.split("=", 1) for a in sys.argv[1:])}
    print("item-level AUPRC (anything violated; item score = max over policies):")
    for name, f in COMBOS.items():
        per = {k: bq.auprc([i["gold"] for i in its], [max(scores(i, f).values()) for i in its]) for k, its in runs.items()}
        pooled = [i for its in runs.values() for i in its]
        allv = bq.auprc([i["gold"] for i in pooled], [max(scores(i, f).values()) for i in pooled])
        print(f"  {name:<36}" + "  ".join(f"{k} {v:.3f}" for k, v in per.items() if v is not None) + f"  pooled {allv:.3f}")
    print("\nblend w=0.5 flagged at score >= t (policy score >= 0.10 for comparison):")
    for k, its in runs.items():
        print(f"  dev {k}: policy score >= 0.1: " + reading(its, 0.10, "policy score (shipped)"))
        for t in (0.1, 0.2, 0.3, 0.4, 0.5):
            print(f"    blend >= {t}: {reading(its, t)}")


if __name__ == "__main__":
    main()
