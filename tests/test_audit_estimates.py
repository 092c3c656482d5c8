"""Audit estimators against known truth: simulated productions with known precision, recall and
prevalence, audited many times over seeds (numpy-vectorised: every replicate at once). The 95%
CIs must cover the truth in at least 93% of the audits, for the stratified estimates (auditor as
truth), the prediction-powered estimates and the classical human-only ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cotmod.audit import (
    Design,
    cohen_kappa,
    kappa_ci,
    ppi_mean,
    ppi_ratio,
    sample_size,
    stratified_mean,
    stratified_ratio,
)

REPS = 1500


def population(n: int, prev: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth y, production decision d (score >= 0.5) and stratum (decision x 2 score bands)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prev).astype(float)
    s = np.where(y > 0, rng.beta(4, 2, n), rng.beta(1, 6, n))
    d = (s >= 0.5).astype(float)
    band = np.minimum((s * 4).astype(int), 3)
    return y, d, d.astype(int) * 4 + band  # strata 0,1 (not flagged), 6,7 (flagged)


def draw(stratum: np.ndarray, alloc: dict[int, int], reps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cols, st = [], []
    for h, k in alloc.items():
        members = np.flatnonzero(stratum == h)
        k = min(k, len(members))
        keys = rng.random((reps, len(members)))
        cols.append(members[np.argpartition(keys, k - 1, axis=1)[:, :k]])
        st += [h] * k
    return np.concatenate(cols, axis=1), np.array(st)


def control(st: np.ndarray, frac: float, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    lab = np.zeros(shape)
    for h in np.unique(st):
        cols = np.flatnonzero(st == h)
        k = max(2, round(frac * len(cols)))
        pick = np.argpartition(rng.random((shape[0], len(cols))), k - 1, axis=1)[:, :k]
        np.put_along_axis(lab, cols[pick], 1.0, axis=1)
    return lab


def simulate(*, prev: float = 0.08, n_h: int = 100, frac: float = 0.2, afp: float = 0.03, afn: float = 0.15, queue: bool = True, seed: int = 1) -> dict[str, Any]:
    y, d, stratum = population(6000, prev, seed)
    sizes = np.bincount(stratum, minlength=8).astype(float)
    rng = np.random.default_rng(seed + 100)
    idx, st = draw(stratum, {0: n_h, 1: n_h, 6: n_h, 7: n_h}, REPS, rng)
    design = Design.of(st, sizes)
    Y, D = y[idx], d[idx]
    u = rng.random(Y.shape)
    aud = np.where(Y > 0, u > afn, u < afp).astype(float)  # the auditor errs
    best = np.where(aud != D, Y, aud) if queue else aud  # the disagreement queue is labelled
    obs = np.ones_like(Y)
    dom = (np.arange(8) >= 4).astype(float)
    lab = control(st, frac, Y.shape, rng)
    truth = {"precision": y[d > 0].mean(), "recall": y[d > 0].sum() / y.sum(), "prevalence": y.mean()}
    out = {
        "stratified": {
            "precision": stratified_mean(Y, obs, design, dom), "recall": stratified_ratio(Y, obs, design, dom),
            "prevalence": stratified_mean(Y, obs, design),
        },
        "ppi": {
            "precision": ppi_mean(best, Y, obs, lab, design, dom), "recall": ppi_ratio(best, Y, obs, lab, design, dom),
            "prevalence": ppi_mean(best, Y, obs, lab, design),
        },
        "human": {
            "precision": ppi_mean(None, Y, obs, lab, design, dom), "recall": ppi_ratio(None, Y, obs, lab, design, dom),
            "prevalence": ppi_mean(None, Y, obs, lab, design),
        },
    }
    res: dict[str, Any] = {}
    for kind, stats in out.items():
        for stat, (est, _var, lo, hi) in stats.items():
            t = truth[stat]
            res[f"{kind}/{stat}"] = {
                "coverage": float(np.mean((lo <= t) & (t <= hi))), "half_width": float(np.nanmean(hi - lo) / 2),
                "bias": float(np.nanmean(est) - t),
            }
    return res


@pytest.mark.parametrize(
    "scenario",
    [
        {},
        {"prev": 0.03},
        {"n_h": 40},
        {"queue": False},
        {"frac": 0.1},
    ],
    ids=["base", "rare", "small-sample", "no-queue", "few-labels"],
)
def test_95_cis_cover_the_truth_in_at_least_93_percent_of_audits(scenario: dict[str, Any]) -> None:
    res = simulate(**scenario)
    low = {k: v["coverage"] for k, v in res.items() if v["coverage"] < 0.93}
    assert not low, (low, res)
    for k, v in res.items():
        assert abs(v["bias"]) < 0.05, (k, v)


def test_ppi_is_narrower_than_human_labels_alone_and_exact_with_a_perfect_auditor() -> None:
    res = simulate()
    for stat in ("precision", "prevalence"):
        assert res[f"ppi/{stat}"]["half_width"] < res[f"human/{stat}"]["half_width"]
    perfect = simulate(afp=0.0, afn=0.0)
    for stat in ("precision", "recall", "prevalence"):
        assert perfect[f"ppi/{stat}"]["bias"] == pytest.approx(perfect[f"stratified/{stat}"]["bias"], abs=1e-12)


def test_a_stratum_without_an_audited_item_is_not_estimable() -> None:
    design = Design.of([0, 0, 1, 1], [10, 10, 5])
    est, _var, lo, hi = stratified_mean([1, 0, 1, 1], [1, 1, 1, 1], design)
    assert np.isnan(est) and np.isnan(lo) and np.isnan(hi)


def test_all_zero_sample_keeps_an_open_interval_and_fully_audited_strata_are_exact() -> None:
    design = Design.of([0] * 50, [1000])
    est, _var, lo, hi = stratified_mean(np.zeros(50), np.ones(50), design)
    assert est == 0 and lo == 0 and hi > 0.03  # zero of 50 does not prove a zero rate
    full = Design.of([0] * 5 + [1] * 5, [5, 5])
    est, var, lo, hi = stratified_mean([1, 1, 0, 0, 0] + [1] * 5, np.ones(10), full)
    assert est == pytest.approx(0.7) and var == 0


def test_kappa_matches_sklearn_and_sample_size_formula() -> None:
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2, 300)
    b = np.where(rng.random(300) < 0.8, a, 1 - a)
    assert float(cohen_kappa(a, b)) == pytest.approx(sklearn.cohen_kappa_score(a, b))
    iv = kappa_ci(a, b, seed=1)
    assert iv.low is not None and iv.high is not None and iv.low < iv.value < iv.high
    assert sample_size(0.05, 10**9) == 385  # n0 = 1.96^2 * 0.25 / 0.05^2
    assert sample_size(0.05, 1000) == 278  # with the finite-population correction


def test_kappa_without_spread_in_resamples_has_no_interval() -> None:
    """All raters agree on a mixed sample: every resample's kappa is 1, and the percentile
    interval was [1.000, 1.000], a claim of certainty from a few items. Now no interval, a reason."""
    a = np.array([1, 0, 1, 0, 0, 1])
    iv = kappa_ci(a, a.copy(), seed=0)
    assert iv.value == pytest.approx(1.0)
    assert iv.low is None and iv.high is None and "every resample gives the same kappa" in iv.reason
