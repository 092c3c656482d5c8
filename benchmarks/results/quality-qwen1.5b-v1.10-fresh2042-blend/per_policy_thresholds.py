"""After the run (no rule attached; a lead for a later sample): per-policy thresholds chosen as `cotmod tune --cost-fp 1
--cost-fn 1` would per policy (minimum FP + FN over (item, policy) pairs, positive when the policy is one of the item's
own), pooled over the three development runs, then read on dev 2042, for the policy call's own score and the blend.

    python per_policy_thresholds.py 2034=DIR 2036=DIR 2037=DIR 2042=DIR   (the last one is the sample read)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dev_candidates as dc  # (it also puts benchmarks/ on the path)

GRID = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.01]  # 1.01: never


def score(it: dict[str, Any], p: str, kind: str) -> float:
    own, t = it["own"].get(p, 0.0), it["tri"].get(p, 0.0)
    return own if kind == "own" else 0.5 * own + 0.5 * t


def choose(items: list[dict[str, Any]], policies: list[str], kind: str) -> dict[str, float]:
    out = {}
    for p in policies:
        costs = []
        for t in GRID:
            cost = 0
            for it in items:
                if it["gp"] is None:
                    continue
                y = bool(it["gold"]) and p in it["gp"]
                s = score(it, p, kind)
                cost += int((s > 0 and s >= t) != y)
            costs.append((cost, t))
        out[p] = min(costs)[1]  # ties: the lower threshold (GRID ascending)
    return out


def reading(items: list[dict[str, Any]], policies: list[str], kind: str, th: dict[str, float]) -> str:
    c = dc.tally(items, lambda it: [p for p in policies if score(it, p, kind) > 0 and score(it, p, kind) >= th[p]])
    return f"F1 {c['f1']:.3f}, benign flagged {c['bflag']}/{c['benign']}, attribution {c['good']}/{c['pairs']}"


def main() -> None:
    args = [a.split("=", 1) for a in sys.argv[1:]]
    runs = {k: dc.load(Path(d)) for k, d in args}
    *dev, (test, _) = args
    train = [it for k, _ in dev for it in runs[k]]
    policies = sorted(runs[test][0]["own"])
    print(f"read on dev {test}; policy score >= 0.10 for every policy (shipped): "
          + reading(runs[test], policies, "own", dict.fromkeys(policies, 0.10)))
    for kind in ("own", "blend"):
        th = choose(train, policies, kind)
        print(f"per-policy thresholds on the {kind} score, chosen on dev {'+'.join(k for k, _ in dev)}: "
              + reading(runs[test], policies, kind, th))
        print("    " + ", ".join(f"{p} {t:g}" for p, t in th.items()))


if __name__ == "__main__":
    main()
