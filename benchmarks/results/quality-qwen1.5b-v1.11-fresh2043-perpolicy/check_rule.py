"""The PLAN.txt rule on dev 2043: per-policy thresholds on the blended score against policy score >= 0.10."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quality-qwen1.5b-v1.10-fresh2042-blend"))
import dev_candidates as dc

from cotmod.evals import paired_comparison

CAND = {"adult_sexual_content": 0.05, "dangerous_activities": 0.05, "harassment_bullying": 0.25, "hate_speech": 0.5,
        "minor_safety": 0.2, "regulated_goods": 1.01, "self_harm": 0.05, "spam_scams": 0.05, "violent_extremism": 0.35,
        "violent_threats": 0.7}
items = dc.load(Path(sys.argv[1]))
pols = sorted(CAND)

def flags(it, kind):
    out = []
    for p in pols:
        o, t = it["own"].get(p, 0.0), it["tri"].get(p, 0.0)
        s = o if kind == "base" else 0.5 * o + 0.5 * t
        th = 0.09999999999999998 if kind == "base" else CAND[p]  # the operating point file's 0.1
        if s > 0 and s >= th:
            out.append(p)
    return out

res = {}
for kind in ("base", "cand"):
    c = dc.tally(items, lambda it, kind=kind: flags(it, kind))
    res[kind] = dict(c, attr=c["good"] / c["pairs"] if c["pairs"] else 0.0)
    print(f"{kind}: F1 {c['f1']:.3f} (TP {c['tp']} FP {c['fp']} FN {c['fn']}), attribution {c['good']}/{c['pairs']} = "
          f"{res[kind]['attr']:.3f}, benign flagged {c['bflag']}/{c['benign']}")
ys = [int(it["gold"]) for it in items]
pc = paired_comparison(ys, res["base"]["preds"], res["cand"]["preds"], metrics=("f1",), rounds=2000).model_dump(mode="json")
print("F1 cand - base:", round(pc["metrics"]["f1"]["delta"], 3), [round(x, 3) for x in pc["metrics"]["f1"]["ci95"]], "McNemar", pc["mcnemar"])
a = res["cand"]["f1"] >= res["base"]["f1"] + 0.02
b = res["cand"]["attr"] >= res["base"]["attr"]
c = res["cand"]["bflag"] <= res["base"]["bflag"] + 1
print(f"rule: (a) {'holds' if a else 'FAILS'}, (b) {'holds' if b else 'FAILS'}, (c) {'holds' if c else 'FAILS'} -> {'ADOPT' if a and b and c else 'no change'}")
