"""Drift statistics between a reference sample of scores and a chunk of scores.

* PSI on the reference's quantile bins (10 by default; tied edges merge, so discrete scores get
  fewer bins): ``sum((c - r) * ln(c / r))`` over bin shares, an empty bin's share replaced by
  ``eps`` (1e-4, as Evidently does);
* Jensen-Shannon distance on the same bins (base 2, so in [0, 1]);
* Kolmogorov-Smirnov statistic and p-value (``scipy.stats.ks_2samp``);
* Wasserstein-1 distance (``scipy.stats.wasserstein_distance``; scores live in [0, 1], so it is
  not normalised);
* the flag rate at the operating threshold against the reference's: difference with a 95%
  Newcombe (Wilson hybrid score) CI and a pooled two-proportion z-test p-value.

:func:`leave_out_stats` gives the distance statistics of a reference chunk against the rest of
the reference (the chunk left out, so the spread used for data-driven alerts is not shrunk by
comparing a chunk with itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.spatial import distance

__all__ = ["Bins", "DistanceStats", "FlagRate", "distance_stats", "flag_rate_test", "leave_out_stats", "quantile_bins"]

Floats = npt.NDArray[np.float64]


@dataclass
class Bins:
    """Interior bin edges from the reference's quantiles, and the reference's counts in them."""

    edges: Floats
    ref_counts: npt.NDArray[np.int64]

    def counts(self, x: Floats) -> npt.NDArray[np.int64]:
        return np.bincount(np.searchsorted(self.edges, x, side="right"), minlength=len(self.edges) + 1).astype(np.int64)


def quantile_bins(ref: Floats, bins: int = 10) -> Bins:
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = edges[edges > ref.min()]  # bins are [edge, next edge): an edge at the minimum leaves an empty first bin
    b = Bins(edges=edges, ref_counts=np.zeros(len(edges) + 1, dtype=np.int64))
    b.ref_counts = b.counts(ref)
    return b


def _shares(counts: npt.NDArray[np.int64], eps: float) -> Floats:
    p = counts / max(int(counts.sum()), 1)
    return np.where(p == 0, eps, p)


def psi(ref_counts: npt.NDArray[np.int64], cur_counts: npt.NDArray[np.int64], eps: float = 1e-4) -> float:
    r, c = _shares(ref_counts, eps), _shares(cur_counts, eps)
    return float(np.sum((c - r) * np.log(c / r)))


def js_distance(ref_counts: npt.NDArray[np.int64], cur_counts: npt.NDArray[np.int64]) -> float:
    r = ref_counts / max(int(ref_counts.sum()), 1)
    c = cur_counts / max(int(cur_counts.sum()), 1)
    v = float(distance.jensenshannon(r, c, base=2))
    return 0.0 if math.isnan(v) else v


@dataclass
class DistanceStats:
    psi: float
    js: float
    ks: float
    ks_p: float | None
    wasserstein: float


def distance_stats(ref: Floats, cur: Floats, bins: Bins, eps: float = 1e-4) -> DistanceStats:
    cc = bins.counts(cur)
    ks = stats.ks_2samp(ref, cur)
    return DistanceStats(
        psi=psi(bins.ref_counts, cc, eps),
        js=js_distance(bins.ref_counts, cc),
        ks=float(ks.statistic),
        ks_p=float(ks.pvalue),
        wasserstein=float(stats.wasserstein_distance(ref, cur)),
    )


def leave_out_stats(ref_sorted: Floats, chunk: Floats, bins: Bins, eps: float = 1e-4) -> DistanceStats:
    """Distance statistics of ``chunk`` (rows of the reference) against the reference without it.

    The rest's ECDF is ``(N * F_ref - m * F_chunk) / (N - m)``; KS and Wasserstein are taken
    over the union of points, exactly as for two separate samples. No p-value (not needed for
    the spread).
    """
    n, m = len(ref_sorted), len(chunk)
    cs = np.sort(chunk)
    cc = bins.counts(cs)
    rest_counts = bins.ref_counts - cc
    grid = np.unique(np.r_[ref_sorted, cs])
    f_ref = np.searchsorted(ref_sorted, grid, side="right") / n
    f_chunk = np.searchsorted(cs, grid, side="right") / m
    f_rest = (n * f_ref - m * f_chunk) / (n - m)
    diff = np.abs(f_rest - f_chunk)
    w = float(np.sum(diff[:-1] * np.diff(grid))) if len(grid) > 1 else 0.0
    return DistanceStats(
        psi=psi(rest_counts, cc, eps),
        js=js_distance(rest_counts, cc),
        ks=float(diff.max()),
        ks_p=None,
        wasserstein=w,
    )


@dataclass
class FlagRate:
    rate: float
    ref_rate: float
    diff: float
    diff_ci95: tuple[float, float]
    p_value: float


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def flag_rate_test(k1: int, n1: int, k0: int, n0: int) -> FlagRate:
    """Chunk rate k1/n1 against reference rate k0/n0: difference, Newcombe CI, two-sided z-test."""
    z = 1.959963984540054
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = _wilson(k1, n1, z)
    l0, u0 = _wilson(k0, n0, z)
    d = p1 - p0
    lo = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    pool = (k1 + k0) / (n1 + n0)
    se = math.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n0))
    pv = 1.0 if se == 0 else float(2 * stats.norm.sf(abs(d) / se))
    return FlagRate(rate=p1, ref_rate=p0, diff=d, diff_ci95=(lo, hi), p_value=pv)
