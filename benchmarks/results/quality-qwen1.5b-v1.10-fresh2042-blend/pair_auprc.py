"""After the run (no rule attached): does the blend also rank which policy to blame? AUPRC over (item, policy)
pairs, positive when the policy is one of the item's own (gold) policies, for the policy call's own score and the
blend (w = 0.5), on the development runs and on dev 2042.

    python pair_auprc.py 2034=DIR 2036=DIR 2037=DIR 2042=DIR   (bench_quality --out directories; verdicts not committed)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dev_candidates as dc  # (it also puts benchmarks/ on the path)
from bench_quality import auprc


def main() -> None:
    print("AUPRC over (item, policy) pairs (positive: one of the item's own policies; items of unmapped harm left out)")
    for k, d in (a.split("=", 1) for a in sys.argv[1:]):
        ys: list[int] = []
        own: list[float] = []
        blend: list[float] = []
        for it in dc.load(Path(d)):
            if it["gp"] is None:
                continue
            for p in sorted(set(it["own"]) | set(it["tri"])):
                o, t = it["own"].get(p, 0.0), it["tri"].get(p, 0.0)
                ys.append(int(bool(it["gold"]) and p in it["gp"]))
                own.append(o)
                blend.append(0.5 * o + 0.5 * t)
        print(f"  dev {k}: {len(ys)} pairs, {sum(ys)} positive: own score {auprc(ys, own):.3f}, blend {auprc(ys, blend):.3f}")


if __name__ == "__main__":
    main()
