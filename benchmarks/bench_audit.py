"""Audit estimators: 95% CI width and coverage vs the audit sample size and vs the human-label
budget, with and without prediction-powered inference (PPI).

A simulated production (20,000 items, prevalence 8%, decision = score >= 0.5: known precision and
recall) is audited REPS times per setting: a stratified sample (decision x 2 score bands, equal
allocation, i.e. non-flagged oversampled), an auditor that errs (3% false positives, 15% false
negatives), the disagreement queue labelled by humans, and a stratified control sample of m
human labels. Per setting: the mean CI half-width and the coverage of the truth for the
stratified estimate with every audited item's true label (a perfect auditor), PPI and the
classical human-only estimate. Prints a table and one JSON line.

    python benchmarks/bench_audit.py [--reps 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cotmod.audit import Design, ppi_mean, ppi_ratio, stratified_mean, stratified_ratio


def one(n_total: int, m: int, reps: int, seed: int = 7, N: int = 20000) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    y = (rng.random(N) < 0.08).astype(float)
    s = np.where(y > 0, rng.beta(4, 2, N), rng.beta(1, 6, N))
    d = (s >= 0.5).astype(float)
    stratum = d.astype(int) * 2 + (np.abs(s - 0.5) < 0.25).astype(int)  # 0/1 not flagged, 2/3 flagged
    sizes = np.bincount(stratum, minlength=4).astype(float)
    per = n_total // 4
    cols, st = [], []
    for h in range(4):
        members = np.flatnonzero(stratum == h)
        k = min(per, len(members))
        cols.append(members[np.argpartition(rng.random((reps, len(members))), k - 1, axis=1)[:, :k]])
        st += [h] * k
    idx, st_a = np.concatenate(cols, axis=1), np.array(st)
    design = Design.of(st_a, sizes)
    Y, D = y[idx], d[idx]
    u = rng.random(Y.shape)
    aud = np.where(Y > 0, u > 0.15, u < 0.03).astype(float)
    best = np.where(aud != D, Y, aud)
    obs = np.ones_like(Y)
    lab = np.zeros_like(Y)
    for h in range(4):
        c = np.flatnonzero(st_a == h)
        k = max(2, min(len(c), round(m * len(c) / len(st_a))))
        np.put_along_axis(lab, c[np.argpartition(rng.random((reps, len(c))), k - 1, axis=1)[:, :k]], 1.0, axis=1)
    dom = np.array([0.0, 0.0, 1.0, 1.0])
    truth = {"precision": y[d > 0].mean(), "recall": y[d > 0].sum() / y.sum()}
    truth_aud = {"precision": truth["precision"], "recall": truth["recall"]}
    out: dict[str, dict[str, float]] = {}
    runs = {
        "stratified": (stratified_mean(Y, obs, design, dom), stratified_ratio(Y, obs, design, dom)),
        "ppi": (ppi_mean(best, Y, obs, lab, design, dom), ppi_ratio(best, Y, obs, lab, design, dom)),
        "human": (ppi_mean(None, Y, obs, lab, design, dom), ppi_ratio(None, Y, obs, lab, design, dom)),
    }
    for kind, (prec, rec) in runs.items():
        for stat, (_e, _v, lo, hi) in (("precision", prec), ("recall", rec)):
            t = truth_aud[stat] if kind == "stratified" else truth[stat]
            out[f"{kind}/{stat}"] = {"half_width": round(float(np.nanmean(hi - lo) / 2), 4), "coverage": round(float(np.mean((lo <= t) & (t <= hi))), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=1000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for n in (100, 200, 400, 800):
        rows.append({"n": n, "m": 50, **one(n, 50, args.reps)})
    for m in (20, 50, 100, 200):
        rows.append({"n": 400, "m": m, **one(400, m, args.reps)})
    print(f"{'n':>4} {'m':>4}  " + "  ".join(f"{k:<22}" for k in ("precision hw/cov strat", "ppi", "human", "recall strat", "ppi", "human")))
    for r in rows:
        cells = [f"{r[f'{k}/{s}']['half_width']:.3f} / {r[f'{k}/{s}']['coverage']:.3f}" for s in ("precision", "recall") for k in ("stratified", "ppi", "human")]
        print(f"{r['n']:>4} {r['m']:>4}  " + "  ".join(f"{c:<22}" for c in cells))
    print(json.dumps({"bench": "audit", "reps": args.reps, "elapsed_s": round(time.perf_counter() - t0, 1), "rows": rows}))


if __name__ == "__main__":
    main()
