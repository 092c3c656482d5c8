"""Drift detection of cotmod monitor: false alarms without drift, detection of a small known shift.

    python benchmarks/bench_drift.py                        # chunk sizes 100, 1k, 10k, 100k, 1M
    python benchmarks/bench_drift.py --sizes 1000 10000     # fewer
    python benchmarks/bench_drift.py --quick                # smoke test

Scores are the real demo classifier's (TF-IDF + logistic regression on SMS Spam, held-out split)
drawn with replacement, seeded. Per chunk size: a reference of max(10 chunks, 200,000) rows; T
chunks with no drift (the held-out spam share) and T chunks with a small known shift (spam share
+ --shift, absolute: a changed mix), each judged by the default settings (alerts from the spread of
reference chunks, mean + 3 sd, on PSI, JS, KS, Wasserstein and the flag rate at 0.5) and by the
PSI rule of thumb (alert above 0.1, or above 0.25) as the baseline. Prints a table of false-alarm
and detection rates (share of chunks alerting) with Wilson 95% intervals; the last stdout line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from cotmod.classifiers import MonitorSettings, ScoreLog, monitor
from cotmod.classifiers._demo import train_demo_classifier


def _wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z = 1.959963984540054
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def _draw(rng: np.random.Generator, pos: np.ndarray, neg: np.ndarray, n: int, share: float) -> np.ndarray:
    k = int(rng.binomial(n, share))
    out = np.concatenate([rng.choice(pos, size=k), rng.choice(neg, size=n - k)])
    rng.shuffle(out)
    return out


def _log(scores: np.ndarray, name: str) -> ScoreLog:
    n = len(scores)
    return ScoreLog(
        path=name, labels=("spam",), ids=[""] * n, lines=np.arange(1, n + 1, dtype=np.int64),
        scores={"spam": scores}, truth={"spam": np.full(n, -1, dtype=np.int8)},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--trials", type=int, default=200, help="chunks per scenario (fewer for large chunks: at most 2e7 rows)")
    ap.add_argument("--shift", type=float, default=0.02, help="absolute change of the spam share in the shifted chunks")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--quick", action="store_true", help="a small, fast run (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.trials = [500, 2000], 20
    demo = train_demo_classifier(seed=0)
    scores = demo.scores
    pos, neg = scores[demo.truth == 1], scores[demo.truth == 0]
    base = demo.positive_share
    rows = []
    print(f"demo classifier: {len(scores)} held-out scores, spam share {base:.3f}; shift: spam share {base:.3f} -> {base + args.shift:.3f}",
          file=sys.stderr, flush=True)
    for size in args.sizes:
        t0 = time.perf_counter()
        rng = np.random.default_rng([args.seed, size])
        trials = max(10, min(args.trials, 20_000_000 // size))
        ref = _log(_draw(rng, pos, neg, max(10 * size, 200_000), base), "reference")
        st = MonitorSettings(chunk=size, thresholds={"spam": 0.5})
        res: dict[str, dict[str, int]] = {}
        for scenario, share in (("none", base), ("shift", base + args.shift)):
            rep = monitor(_log(_draw(rng, pos, neg, trials * size, share), scenario), ref, st)
            chunks = rep.groups[0].chunks
            res[scenario] = {
                "n": len(chunks),
                "cotmod": sum(1 for c in chunks if c.alerts),
                "psi_0.1": sum(1 for c in chunks if c.psi > 0.1),
                "psi_0.25": sum(1 for c in chunks if c.psi > 0.25),
                "flag_rate": sum(1 for c in chunks if "flag_rate" in c.alerts),
            }
        rows.append({"size": size, "trials": trials, "reference": len(ref), **{f"{s}_{k}": v for s, r in res.items() for k, v in r.items()},
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  chunk size {size:,}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    def cell(k: int, n: int) -> str:
        lo, hi = _wilson(k, n)
        return f"{k / n:6.1%} [{lo:.0%}-{hi:.0%}]"

    print(f"False alarms (no drift) and detection (spam share +{args.shift:g}) per chunk; default: reference-spread limits, 3 sd")
    print(f"{'chunk':>9} {'chunks':>6} | {'false alarm: cotmod':>22} {'PSI>0.1':>20} {'PSI>0.25':>20} | {'detection: cotmod':>20} {'PSI>0.1':>20} {'PSI>0.25':>20}")
    for r in rows:
        n0, n1 = r["none_n"], r["shift_n"]
        print(
            f"{r['size']:>9,} {n0:>6} | {cell(r['none_cotmod'], n0):>22} {cell(r['none_psi_0.1'], n0):>20} {cell(r['none_psi_0.25'], n0):>20} | "
            f"{cell(r['shift_cotmod'], n1):>20} {cell(r['shift_psi_0.1'], n1):>20} {cell(r['shift_psi_0.25'], n1):>20}"
        )
    print(json.dumps({"bench": "drift", "shift": args.shift, "seed": args.seed, "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
