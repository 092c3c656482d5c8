"""The audit's estimators: design-weighted (stratified, Horvitz-Thompson) means and ratios, the
two-phase prediction-powered (PPI) estimator, Cohen's kappa, and their 95% intervals.

Everything is numpy and vectorised over leading axes: ``values`` of shape ``(..., n)`` (one row per
replicate audit) with a fixed stratum per column, so the coverage tests can run thousands of
simulated audits at once. Per-stratum sums are a product with the one-hot matrix of the strata.

Design
------
Population of ``N`` items in strata ``h`` of sizes ``N_h`` (known: the production decisions are a
census). The audit draws ``n_h`` items per stratum without replacement (first phase). Each audited
item carries weight ``N_h / n_h`` (its inverse inclusion probability).

* **Stratified mean** (a proportion such as prevalence, or precision: the mean over the flagged
  strata, which are whole strata since the production decision is a stratification variable):
  ``sum_h W_h ybar_h`` with ``W_h = N_h / N``; variance ``sum_h W_h^2 (1 - n_h/N_h) s_h^2 / n_h``.
* **Ratio** (recall = true positives among the flagged / all violations): ``A / B`` with the
  linearised (delta-method) variance ``Var(mean(a - R b)) / B^2``.
* **Two-phase PPI** (prediction-powered inference, Angelopoulos et al. 2023, as double sampling):
  the auditor's label ``yhat`` on every audited item, the human label ``y`` on a uniform random
  control subsample ``L`` (size ``m``) of the audited items. ``theta = mean_S(u yhat) + mean_L(u (y -
  yhat))`` with ``u = w / mean(w)``, unbiased for the stratified estimate a full human labelling
  would give; variance ``V1 + (1/m - 1/n) S^2_{u(y - yhat)}`` (``V1``: the first phase's stratified
  variance, with the best label known for each item). A null predictor (``yhat = 0``) gives the
  classical estimate from the human labels alone.

Intervals are Wilson intervals at the estimate with the design's effective sample size
(``n_eff = p(1-p) / Var``, as Korn and Graubard suggest for complex samples), which keeps
coverage near 95% when violations are rare (a Wald interval collapses when a stratum shows none).
Stratum variances use the sample variance with a half-count floor (a stratum whose audited items
all agree still gets ``0.5/(n_h+1)`` spread), so a rare event missed by the sample keeps the
interval open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Design",
    "Interval",
    "cohen_kappa",
    "kappa_ci",
    "ppi_mean",
    "ppi_ratio",
    "stratified_mean",
    "stratified_ratio",
    "wilson_interval",
]

Z95 = NormalDist().inv_cdf(0.975)
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval. ``value`` None: not estimable (``reason`` says why)."""

    value: float | None
    low: float | None
    high: float | None
    n: int = 0
    se: float | None = None
    reason: str = ""

    @property
    def half_width(self) -> float | None:
        if self.low is None or self.high is None:
            return None
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "se": self.se, **({"reason": self.reason} if self.reason else {})}


@dataclass(frozen=True)
class Design:
    """A stratified design: the stratum index of each audited item (column) and the population
    size of each stratum. ``domain``: per stratum, whether it belongs to the domain estimated
    (the flagged strata for precision); None: every stratum."""

    strata: npt.NDArray[np.int64]
    sizes: FloatArray

    @classmethod
    def of(cls, strata: Sequence[int] | npt.NDArray[Any], sizes: Sequence[float] | npt.NDArray[Any]) -> Design:
        return cls(np.asarray(strata, dtype=np.int64), np.asarray(sizes, dtype=np.float64))

    @property
    def onehot(self) -> FloatArray:
        m = np.zeros((len(self.strata), len(self.sizes)))
        m[np.arange(len(self.strata)), self.strata] = 1.0
        return m


def _arr(x: Any) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def _strat(
    values: FloatArray, mask: FloatArray, design: Design, domain: FloatArray | None, floor: bool, *, share_of_all: bool = False
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimate, variance, covered) of the stratified mean over the domain strata (with
    ``share_of_all``: ``sum_{h in domain} (N_h/N) ybar_h``, the domain's part of the overall mean);
    ``covered`` is False where a domain stratum with population has no audited item (the estimate
    is then NaN)."""
    oh = design.onehot
    sizes = design.sizes if domain is None else design.sizes * domain
    total = design.sizes.sum() if share_of_all else sizes.sum()
    cnt = mask @ oh
    v = np.where(mask > 0, values, 0.0)
    s1 = v @ oh
    s2 = (v * v) @ oh
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_h = np.where(cnt > 0, s1 / np.maximum(cnt, 1), 0.0)
        var_h = np.where(cnt > 1, (s2 - cnt * mean_h**2) / np.maximum(cnt - 1, 1), 0.0)
        var_h = np.maximum(var_h, 0.0)
        if floor:
            # half a count of spread: an all-0 (or all-1) stratum still has some uncertainty
            f = 0.5 / (cnt + 1)
            var_h = np.maximum(var_h, f * (1 - f))
        W = sizes / total if total > 0 else sizes
        fpc = np.where(sizes > 0, 1 - cnt / np.maximum(sizes, 1), 0.0)
        est = (W * mean_h).sum(axis=-1)
        var = (W**2 * np.maximum(fpc, 0.0) * var_h / np.maximum(cnt, 1)).sum(axis=-1)
    covered = ~((cnt == 0) & (sizes > 0)).any(axis=-1)
    est = np.where(covered, est, np.nan)
    return est, var, covered


def wilson_interval(p: FloatArray | float, var: FloatArray | float, n: FloatArray | float, z: float = Z95) -> tuple[FloatArray, FloatArray]:
    """Wilson interval at ``p`` with the effective sample size ``p(1-p)/var`` (at most ``n``;
    ``n`` itself when ``var`` is 0; at ``p`` 0 or 1, ``p`` is moved half a count inwards for the
    effective size only)."""
    p, var, n = _arr(p), _arr(var), _arr(n)
    pc = np.clip(np.nan_to_num(p), 0.0, 1.0)
    # at 0 or 1 the variance still speaks: the effective n comes from a half-count-smoothed p
    eps = 0.5 / (np.maximum(n, 1) + 1)
    ps = np.clip(pc, eps, 1 - eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        neff = np.where(var > 0, ps * (1 - ps) / var, n)
    neff = np.clip(np.minimum(neff, np.maximum(n, 1)), 1e-9, None)
    z2 = z * z
    centre = (pc + z2 / (2 * neff)) / (1 + z2 / neff)
    half = z * np.sqrt(pc * (1 - pc) / neff + z2 / (4 * neff * neff)) / (1 + z2 / neff)
    lo, hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    bad = ~np.isfinite(p)
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def stratified_mean(values: Any, mask: Any, design: Design, domain: Any = None) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Stratified mean of 0/1 ``values`` (``mask`` 1 where observed) over the ``domain`` strata:
    (estimate, variance, low, high), vectorised over leading axes."""
    v, m = _arr(values), _arr(mask)
    dom = None if domain is None else _arr(domain)
    est, var, _ = _strat(v, m, design, dom, floor=True)
    n = m.sum(axis=-1) if dom is None else (m * (dom[design.strata] > 0)).sum(axis=-1)
    lo, hi = wilson_interval(est, var, n)
    return est, var, lo, hi


def _ratio(a: FloatArray, va: FloatArray, c: FloatArray, vc: FloatArray, n: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """``A / (A + C)`` for independent parts (disjoint strata) with the delta-method variance."""
    b = a + c
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(b > 0, a / b, np.nan)
        var = (c * c * va + a * a * vc) / np.maximum(b, 1e-300) ** 4
    lo, hi = wilson_interval(r, var, np.maximum(n, 1))
    return r, var, lo, hi


def stratified_ratio(values: Any, mask: Any, design: Design, domain: Any) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """The domain's share of the total: ``A / (A + C)`` where ``A`` sums 0/1 ``values`` over the
    ``domain`` strata and ``C`` over the others (recall: violations among the flagged over all
    violations). Delta-method variance, each part with the half-count floor; Wilson interval."""
    v, m, dom = _arr(values), _arr(mask), _arr(domain)
    a, va, _ = _strat(v, m, design, dom, floor=True, share_of_all=True)
    c, vc, _ = _strat(v, m, design, 1 - dom, floor=True, share_of_all=True)
    n_pos = (v * m * (dom[design.strata] > 0)).sum(axis=-1)
    return _ratio(a, va, c, vc, n_pos)


def ppi_mean(
    yhat: Any, y: Any, observed: Any, labelled: Any, design: Design, domain: Any = None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Two-phase prediction-powered estimate of the stratified mean of 0/1 labels over ``domain``.

    ``yhat``: the predictor on every audited item (``observed`` 1 where it exists); ``y``: the
    human label where ``labelled`` is 1 (a random subsample of each stratum's audited items).
    ``yhat`` None: no predictor, the classical estimate from the human labels alone.
    Returns (estimate, variance, low, high)."""
    yh, yt, obs, lab = _arr(yhat), _arr(y), _arr(observed), _arr(labelled)
    lab = lab * obs
    dom = None if domain is None else _arr(domain)
    if yhat is None:
        yh = np.zeros_like(obs)
    est, var = _ppi(yh, np.where(lab > 0, yt, 0.0), obs, lab, design, dom, pool=yhat is not None)
    n = obs.sum(axis=-1) if dom is None else (obs * (dom[design.strata] > 0)).sum(axis=-1)
    lo, hi = wilson_interval(est, var, n)
    return est, var, lo, hi


def _ppi(
    gh: FloatArray, gt: FloatArray, obs: FloatArray, lab: FloatArray, design: Design, dom: FloatArray | None, *, share_of_all: bool = False,
    pool: bool = True,
) -> tuple[FloatArray, FloatArray]:
    """Stratified two-phase PPI (estimate, variance) of the stratified mean over ``dom``: ``gh``
    predicted per observed item, ``gt`` true where labelled (a random subsample of each stratum's
    observed items). Per stratum: ``mean_S(gh) + mean_L(gt - gh)``, variance
    ``(1 - n/N) S2_y / n + (1/m - 1/n) S2_d``, ``S2_y = S2_gh + S2_d + 2 cov(gh, d)`` (the first two
    moments of ``d`` from the labelled items), ``S2_y`` with the half-count floor, ``S2_d`` with
    the auditor's error rate pooled over the strata. A stratum without a
    labelled item keeps its prediction mean with the largest rectifier variance (0.25)."""
    oh = design.onehot
    sizes = design.sizes if dom is None else design.sizes * dom
    total = design.sizes.sum() if share_of_all else sizes.sum()
    W = sizes / total if total > 0 else sizes
    n = obs @ oh
    m = (lab * obs) @ oh
    gh = np.where(obs > 0, gh, 0.0)
    d = np.where(lab * obs > 0, gt - gh, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mh = np.where(n > 0, (gh @ oh) / np.maximum(n, 1), 0.0)
        s2h = np.where(n > 1, ((gh * gh) @ oh - n * mh**2) / np.maximum(n - 1, 1), 0.0)
        md = np.where(m > 0, (d @ oh) / np.maximum(m, 1), 0.0)
        s2d = np.where(m > 1, ((d * d) @ oh - m * md**2) / np.maximum(m - 1, 1), 0.0)
        lab_gh = np.where(lab * obs > 0, gh, 0.0)
        mgl = np.where(m > 0, (lab_gh @ oh) / np.maximum(m, 1), 0.0)
        cov = np.where(m > 1, ((lab_gh * d) @ oh - m * mgl * md) / np.maximum(m - 1, 1), 0.0)
        s2y = np.maximum(s2h + s2d + 2 * cov, 0.0)
        fy = 0.5 / (n + 1)
        s2y = np.maximum(s2y, fy * (1 - fy))
        # the rectifier's floor is pooled over the strata: the auditor's error rate seen anywhere
        # (at least half a count over every labelled item) bounds what a stratum that showed no
        # error can claim
        mt = m.sum(axis=-1, keepdims=True)
        # without a predictor (human labels alone) d is the label itself: a per-stratum floor
        pooled = ((d * d).sum(axis=-1, keepdims=True) + 0.5) / (mt + 1) if pool else 0.5 / (m + 1)
        s2d = np.where(m > 0, np.maximum(s2d, pooled * (1 - np.minimum(pooled, 0.5))), 0.25)
        fpc1 = np.where(sizes > 0, np.maximum(1 - n / np.maximum(sizes, 1), 0.0), 0.0)
        v1 = fpc1 * s2y / np.maximum(n, 1)
        v2 = np.maximum(1 / np.maximum(m, 1) - 1 / np.maximum(n, 1), 0.0) * s2d
        # a fully labelled stratum has no second phase
        v2 = np.where(m >= n, 0.0, v2)
        est = (W * (mh + md)).sum(axis=-1)
        var = (W**2 * (v1 + v2)).sum(axis=-1)
    covered = ~((n == 0) & (sizes > 0)).any(axis=-1)
    return np.where(covered, est, np.nan), var


def ppi_ratio(
    yhat: Any, y: Any, observed: Any, labelled: Any, design: Design, domain: Any
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Two-phase PPI of the domain's share of all positives (recall), as :func:`stratified_ratio`."""
    yt, obs, lab, dom = _arr(y), _arr(observed), _arr(labelled), _arr(domain)
    yh = np.zeros_like(obs) if yhat is None else _arr(yhat)
    lab = lab * obs
    yt = np.where(lab > 0, yt, 0.0)
    pool = yhat is not None
    a, va = _ppi(yh, yt, obs, lab, design, dom, share_of_all=True, pool=pool)
    c, vc = _ppi(yh, yt, obs, lab, design, 1 - dom, share_of_all=True, pool=pool)
    a, c = np.clip(a, 0.0, None), np.clip(c, 0.0, None)
    n_pos = (np.where(lab > 0, yt, yh) * obs * (dom[design.strata] > 0)).sum(axis=-1)
    return _ratio(a, va, c, vc, n_pos)


# -- agreement -------------------------------------------------------------------------------------


def cohen_kappa(a: Any, b: Any, weights: Any = None) -> FloatArray:
    """Cohen's kappa of two binary raters (vectorised over leading axes; ``weights`` per item,
    e.g. design weights for a population kappa; 0 weight = left out). NaN when undefined."""
    x, y = _arr(a), _arr(b)
    w = np.ones_like(x) if weights is None else _arr(weights) * np.ones_like(x)
    tot = w.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        po = (w * (x == y)).sum(axis=-1) / tot
        pa = (w * x).sum(axis=-1) / tot
        pb = (w * y).sum(axis=-1) / tot
        pe = pa * pb + (1 - pa) * (1 - pb)
        k = np.where(pe < 1, (po - pe) / (1 - pe), np.where(po == 1, 1.0, np.nan))
    return np.asarray(k, dtype=np.float64)


def kappa_ci(
    a: Sequence[int] | npt.NDArray[Any],
    b: Sequence[int] | npt.NDArray[Any],
    *,
    strata: Sequence[int] | npt.NDArray[Any] | None = None,
    weights: Sequence[float] | npt.NDArray[Any] | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> Interval:
    """Cohen's kappa with a 95% percentile bootstrap interval (resampling within ``strata`` when
    given, with the items' ``weights``)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(None, None, None, 0, reason="no items")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    k = float(cohen_kappa(x, y, w))
    if not np.isfinite(k):
        return Interval(None, None, None, n, reason="undefined (one rater gave a single value throughout)")
    rng = np.random.default_rng(seed)
    groups = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata, dtype=np.int64)
    idx = np.empty((reps, n), dtype=np.int64)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        idx[:, members] = members[rng.integers(0, len(members), size=(reps, len(members)))]
    boots = cohen_kappa(x[idx], y[idx], w[idx])
    boots = boots[np.isfinite(boots)]
    if len(boots) < reps // 2:
        return Interval(k, None, None, n, reason="too few items for an interval")
    if np.ptp(boots) == 0:  # every resample gives the same kappa (e.g. no disagreement at all): a
        # percentile interval would be the point itself, [1.000, 1.000], which claims certainty
        return Interval(k, None, None, n, reason="no interval: every resample gives the same kappa (too few disagreements)")
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return Interval(k, float(min(lo, k)), float(max(hi, k)), n, float(boots.std(ddof=1)))


def interval(est: Any, var: Any, lo: Any, hi: Any, n: int, reason: str = "") -> Interval:
    """An :class:`Interval` from one replicate's (estimate, variance, low, high)."""
    e = float(np.asarray(est))
    if not np.isfinite(e):
        return Interval(None, None, None, n, reason=reason or "not estimable")
    v = float(np.asarray(var))
    return Interval(e, float(np.asarray(lo)), float(np.asarray(hi)), n, float(np.sqrt(max(v, 0.0))))
