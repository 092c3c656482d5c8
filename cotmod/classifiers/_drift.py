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

__all__ = [
    "Bins",
    "DistanceStats",
    "FlagRate",
    "SortedReference",
    "distance_stats",
    "flag_rate_test",
    "leave_out_stats",
    "quantile_bins",
]

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


_KS_EXACT_MAX = 10000  # scipy's ks_2samp method='auto': exact up to this many rows in the larger sample


class SortedReference:
    """A reference sample sorted once, for fast KS and Wasserstein against many chunks."""

    def __init__(self, ref: Floats) -> None:
        self.raw = np.asarray(ref, dtype=np.float64)
        self.sorted = np.sort(self.raw)
        self.prefix = np.r_[0.0, np.cumsum(self.sorted)]

    def __len__(self) -> int:
        return len(self.sorted)

    def _integral(self, b: Floats) -> Floats:
        """The integral of the reference's ECDF from -inf to each b."""
        k = np.searchsorted(self.sorted, b, side="right")
        return np.asarray((k * b - self.prefix[k]) / len(self.sorted), dtype=np.float64)

    def ks_wasserstein(self, cur: Floats) -> tuple[float, float]:
        """KS statistic and Wasserstein-1 distance between the reference and ``cur``.

        Between two consecutive distinct chunk values the chunk's ECDF is constant, so the KS
        supremum there is at one of the ends, and the integral of |F_ref - C| splits where the
        reference's ECDF crosses C (found with integer arithmetic, so it is exact).
        """
        r, n = self.sorted, len(self.sorted)
        u, cnt = np.unique(cur, return_counts=True)
        m = int(cnt.sum())
        cum = np.cumsum(cnt)
        right = np.searchsorted(r, u, side="right")  # reference rows <= u_i
        left = np.searchsorted(r, u, side="left")  # reference rows < u_i
        # at u_i (right-continuous): F_ref(u_i) - F_cur(u_i); just before u_i: F_ref(u_i-) - F_cur(u_{i-1})
        d_at = right / n - cum / m
        d_before = left / n - np.r_[0, cum[:-1]] / m
        ks = float(max(np.max(np.abs(d_at)), np.max(np.abs(d_before))))
        # Wasserstein: integral of |F_ref - F_cur| over the line
        g = self._integral
        w = float(g(u[:1])[0])  # below the chunk's minimum: F_cur = 0
        if len(u) > 1:
            a, b = u[:-1], u[1:]
            c_cnt = cum[:-1]
            c = c_cnt / m
            k = (c_cnt * n + m - 1) // m  # smallest k with k/n >= c: F_ref >= c from r[k-1] on
            t = np.clip(r[np.clip(k - 1, 0, n - 1)], a, b)
            ga, gb, gt = g(a), g(b), g(t)
            w += float(np.sum(c * (t - a) - (gt - ga) + (gb - gt) - c * (b - t)))
        top = float(r[-1])
        if top > u[-1]:  # above the chunk's maximum: F_cur = 1
            w += (top - float(u[-1])) - float(g(np.array([top]))[0] - g(u[-1:])[0])
        return ks, max(w, 0.0)

    def ks_pvalue(self, d: float, cur: Floats) -> float:
        """Two-sided p-value of KS statistic ``d`` for chunk ``cur``, as ``scipy.stats.ks_2samp``
        (which is cheap when it computes the exact p-value: both samples small)."""
        n, m = len(self.sorted), len(cur)
        if max(n, m) <= _KS_EXACT_MAX:
            return float(stats.ks_2samp(self.sorted, cur).pvalue)
        big, small = (float(n), float(m)) if n >= m else (float(m), float(n))
        en = big * small / (big + small)
        return float(np.clip(stats.kstwo.sf(d, np.round(en)), 0, 1))

    def stats(self, cur: Floats, bins: Bins, eps: float = 1e-4) -> DistanceStats:
        cc = bins.counts(cur)
        ks, w = self.ks_wasserstein(cur)
        return DistanceStats(
            psi=psi(bins.ref_counts, cc, eps),
            js=js_distance(bins.ref_counts, cc),
            ks=ks,
            ks_p=self.ks_pvalue(ks, cur),
            wasserstein=w,
        )


def distance_stats(ref: Floats, cur: Floats, bins: Bins, eps: float = 1e-4) -> DistanceStats:
    """PSI, JS, KS (with p) and Wasserstein between ``ref`` and ``cur`` (sort ``ref`` once with
    :class:`SortedReference` when comparing many chunks with it)."""
    return SortedReference(ref).stats(cur, bins, eps)


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
