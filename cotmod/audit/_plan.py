"""Planning an audit: a seeded stratified sample of production decisions, per policy.

Per policy, the population (the items production decided for it) is stratified by the decision
(flagged or not) × the score band (production's ``band`` when it has one, else the score cut at
``score_bands``) × the values of chosen fields (``strata_fields``). The sample size comes from a
target 95% CI half-width (``n0 = z² p(1-p) / E²`` at ``p = 0.5``, with the finite-population
correction ``n = n0 / (1 + (n0-1)/N)``), or is given (``size``), and is capped by a ``budget``
over every policy. Allocation over the strata:

* ``proportional``: ``n_h ∝ N_h``;
* ``neyman``: ``n_h ∝ N_h S_h``, ``S_h = sqrt(p_h (1-p_h))`` with ``p_h`` the stratum's mean score
  (without scores: 0.5 flagged, 0.1 not flagged);
* ``oversample`` (the default): ``nonflagged_share`` of the sample goes to the items production
  did *not* flag (recall needs them, and violations there are rare), Neyman within each side,
  so high-score non-flagged strata get the most. With a size from the half-width, each side is
  sized for it.

Every stratum gets at least two items (one if it has one) so its variance can be estimated.
Each sampled item carries, per policy, its stratum, the stratum's population ``N_h``, its sample
size ``n_h`` and its inclusion probability ``n_h / N_h``. The plan file (JSONL: a header line,
then one line per sampled item with its text) records the decisions file's hash, production's
and the auditor's policy versions and the seed; the same inputs and seed give the same plan.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from .._exceptions import ConfigError, InputError
from .._version import __version__
from ._decisions import DecisionsFile, ProductionDecision, ProductionItem

__all__ = ["ALLOCATIONS", "AuditPlan", "PlanItem", "Stratum", "make_plan", "read_plan", "sample_size"]

ALLOCATIONS = ("oversample", "proportional", "neyman")
PLAN_FORMAT = 1
Z95 = NormalDist().inv_cdf(0.975)


@dataclass
class Stratum:
    policy: str
    key: str
    flagged: bool
    band: str
    fields: dict[str, str]
    N: int
    n: int

    @property
    def inclusion(self) -> float:
        return self.n / self.N if self.N else 0.0


@dataclass
class PlanItem:
    """One sampled item: its text, production's decisions, and per policy its design."""

    id: str
    text: str
    production: dict[str, dict[str, Any]]  # policy -> flagged, score, band, route, rationale, rule_ids, policy_version
    design: dict[str, dict[str, Any]]  # policy -> stratum, N_h, n_h, pi
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def policies(self) -> list[str]:
        return list(self.design)


@dataclass
class AuditPlan:
    header: dict[str, Any]
    strata: dict[str, list[Stratum]]
    items: list[PlanItem]
    path: str | None = None
    sha256: str | None = None

    @property
    def policies(self) -> dict[str, str]:
        """Policy id -> the auditor's policy version the plan was made for."""
        return dict(self.header["policies"])

    @property
    def seed(self) -> int:
        return int(self.header["seed"])

    def write(self, path: str | Path) -> str:
        """Write the plan (JSONL) and return its sha256 (what audit runs and reports check)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        head = {**self.header, "strata": {pid: [asdict(s) for s in ss] for pid, ss in self.strata.items()}}
        lines = [json.dumps({"audit_plan": head}, ensure_ascii=False)]
        lines += [json.dumps(asdict(it), ensure_ascii=False) for it in self.items]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(p)
        self.path, self.sha256 = str(p), hashlib.sha256(data).hexdigest()
        return self.sha256


def sample_size(half_width: float, population: int, p: float = 0.5) -> int:
    """Items needed for a 95% CI of ``half_width`` on a proportion near ``p`` (finite-population
    corrected): ``n0 = z² p(1-p)/E²``, ``n = n0 / (1 + (n0-1)/N)``."""
    if not 0 < half_width < 1:
        raise ConfigError(f"the target half-width must be between 0 and 1, got {half_width}")
    if population <= 0:
        return 0
    n0 = Z95**2 * p * (1 - p) / half_width**2
    return min(population, math.ceil(n0 / (1 + (n0 - 1) / population)))


def _band(d: ProductionDecision, edges: Sequence[float]) -> str:
    if d.band:
        return f"band={d.band}"
    if d.score is None:
        return "-"
    cuts = [0.0, *edges, 1.0]
    for lo, hi in itertools.pairwise(cuts):
        if d.score < hi:
            return f"score {lo:g}-{hi:g}"
    return f"score {cuts[-2]:g}-1"


def _stable(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _allocate(n: int, sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """``n`` items over strata ∝ ``weights``, each stratum at least min(2, N_h) (largest
    remainder, capped at N_h, the excess handed on)."""
    H = len(sizes)
    alloc = [min(2, s) for s in sizes]
    n = max(n, sum(alloc))
    left = n - sum(alloc)
    while left > 0:
        open_ = [h for h in range(H) if alloc[h] < sizes[h]]
        if not open_:
            break
        w = [weights[h] if weights[h] > 0 else 1e-9 for h in open_]
        tot = sum(w)
        raw = [left * x / tot for x in w]
        give = [min(math.floor(r), sizes[h] - alloc[h]) for r, h in zip(raw, open_, strict=True)]
        rem = left - sum(give)
        order = sorted(range(len(open_)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
        for i in order:
            if rem <= 0:
                break
            h = open_[i]
            if alloc[h] + give[i] < sizes[h]:
                give[i] += 1
                rem -= 1
        for i, h in enumerate(open_):
            alloc[h] += give[i]
        gained = sum(give)
        left -= gained
        if gained == 0:
            break
    return alloc


def make_plan(
    decisions: DecisionsFile,
    auditor_versions: Mapping[str, str],
    *,
    policies: Sequence[str] | None = None,
    strata_fields: Sequence[str] = (),
    score_bands: Sequence[float] = (0.25, 0.5, 0.75),
    allocation: str = "oversample",
    size: int | None = None,
    half_width: float | None = None,
    budget: int | None = None,
    nonflagged_share: float = 0.5,
    seed: int = 0,
) -> AuditPlan:
    """A seeded stratified audit sample of ``decisions`` (see the module doc).
    ``auditor_versions``: the policies the auditor will judge with, id -> version."""
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"unknown allocation {allocation!r} ({', '.join(ALLOCATIONS)})")
    if not 0 < nonflagged_share < 1:
        raise ConfigError(f"the non-flagged share must be between 0 and 1, got {nonflagged_share}")
    edges = sorted(float(x) for x in score_bands)
    if any(not 0 < e < 1 for e in edges):
        raise ConfigError("score bands must be cut points between 0 and 1")
    chosen = list(policies) if policies else decisions.policies
    for pid in chosen:
        if pid not in auditor_versions:
            raise ConfigError(f"policy {pid!r} is not among the auditor's policies ({', '.join(sorted(auditor_versions))})")
        if pid not in decisions.policies:
            raise InputError(f"{decisions.path}: no decision for policy {pid!r} (decided: {', '.join(decisions.policies)})")
    by_policy: dict[str, list[ProductionItem]] = {
        pid: sorted((it for it in decisions.items if pid in it.decisions), key=lambda it: it.id) for pid in chosen
    }
    # sizes per policy
    targets: dict[str, int] = {}
    E = half_width if half_width is not None else (None if size is not None else 0.05)
    for pid, pop in by_policy.items():
        nf = sum(1 for it in pop if it.decisions[pid].flagged)
        if size is not None:
            targets[pid] = min(size, len(pop))
        else:
            assert E is not None
            if allocation == "oversample":
                targets[pid] = sample_size(E, nf) + sample_size(E, len(pop) - nf)
            else:
                targets[pid] = sample_size(E, len(pop))
    if budget is not None:
        if budget < 1:
            raise ConfigError(f"the budget must be at least 1, got {budget}")
        total = sum(targets.values())
        if total > budget:
            targets = {pid: max(1, math.floor(budget * t / total)) for pid, t in targets.items()}

    strata: dict[str, list[Stratum]] = {}
    picked: dict[str, dict[str, dict[str, Any]]] = {}  # item id -> policy -> design
    item_of: dict[str, ProductionItem] = {}
    for pid, pop in by_policy.items():
        groups: dict[tuple[Any, ...], list[ProductionItem]] = {}
        for it in pop:
            d = it.decisions[pid]
            groups.setdefault((not d.flagged, _band(d, edges), *(it.fields.get(f, "(missing)") for f in strata_fields)), []).append(it)
        keys = sorted(groups)
        sizes = [len(groups[k]) for k in keys]
        min_needed = sum(min(2, s) for s in sizes)
        if targets[pid] < len(keys):
            raise ConfigError(
                f"policy {pid}: a sample of {targets[pid]} cannot cover its {len(keys)} strata; raise --size/--budget "
                "or use fewer strata (--strata, --score-bands)"
            )
        n_total = targets[pid]

        def sd(k: tuple[Any, ...], pid: str = pid, groups: dict[tuple[Any, ...], list[ProductionItem]] = groups) -> float:
            scores = [s for s in (it.decisions[pid].score for it in groups[k]) if s is not None]
            flagged = not k[0]
            if scores:
                p = sum(min(max(s, 0.0), 1.0) for s in scores) / len(scores)
            else:
                p = 0.5 if flagged else 0.1
            p = min(max(p, 0.05), 0.95)
            return math.sqrt(p * (1 - p))

        if allocation == "proportional":
            alloc = _allocate(n_total, sizes, [float(s) for s in sizes])
        elif allocation == "neyman":
            alloc = _allocate(n_total, sizes, [s * sd(k) for s, k in zip(sizes, keys, strict=True)])
        else:
            sides = {True: [i for i, k in enumerate(keys) if not k[0]], False: [i for i, k in enumerate(keys) if k[0]]}
            alloc = [0] * len(keys)
            if not sides[True] or not sides[False]:
                alloc = _allocate(n_total, sizes, [s * sd(k) for s, k in zip(sizes, keys, strict=True)])
            else:
                n_non = round(n_total * nonflagged_share)
                for flagged_side, share in ((True, n_total - n_non), (False, n_non)):
                    idx = sides[flagged_side]
                    sub = _allocate(share, [sizes[i] for i in idx], [sizes[i] * sd(keys[i]) for i in idx])
                    for i, a in zip(idx, sub, strict=True):
                        alloc[i] = a
        if n_total < min_needed:
            # fewer items than two per stratum: one each, the rest by size
            alloc = [1] * len(keys)
            for i in sorted(range(len(keys)), key=lambda i: -sizes[i])[: n_total - len(keys)]:
                alloc[i] = min(2, sizes[i])
        rng = np.random.default_rng([seed, _stable(pid)])
        ss: list[Stratum] = []
        for k, a in zip(keys, alloc, strict=True):
            members = groups[k]
            flagged = not k[0]
            fields = dict(zip(strata_fields, k[2:], strict=True))
            key = " | ".join(["flagged" if flagged else "not flagged", k[1], *(f"{f}={v}" for f, v in fields.items())])
            st = Stratum(pid, key, flagged, k[1], fields, len(members), a)
            ss.append(st)
            chosen_idx = sorted(rng.choice(len(members), size=a, replace=False).tolist()) if a else []
            for i in chosen_idx:
                it = members[i]
                if it.text is None:
                    raise InputError(
                        f"{decisions.path}:{it.line}: id {it.id!r} has no text to audit "
                        "(a decisions file needs a 'text' field; for cotmod verdicts give the run's input with --items)"
                    )
                item_of[it.id] = it
                picked.setdefault(it.id, {})[pid] = {"stratum": key, "N_h": st.N, "n_h": a, "pi": a / st.N}
        strata[pid] = ss
    items: list[PlanItem] = []
    for iid in sorted(picked):
        it = item_of[iid]
        assert it.text is not None
        prod = {pid: _prod_dict(it.decisions[pid]) for pid in picked[iid]}
        items.append(PlanItem(iid, it.text, prod, picked[iid], dict(it.fields)))
    header = {
        "format": PLAN_FORMAT,
        "decisions_file": decisions.path,
        "decisions_sha256": decisions.sha256,
        "decisions_kind": decisions.kind,
        "policies": {pid: auditor_versions[pid] for pid in chosen},
        "production_policy_versions": {pid: decisions.policy_versions.get(pid, []) for pid in chosen},
        "seed": seed,
        "allocation": allocation,
        "nonflagged_share": nonflagged_share if allocation == "oversample" else None,
        "strata_fields": list(strata_fields),
        "score_bands": edges,
        "size": size,
        "half_width": E,
        "budget": budget,
        "population": {
            pid: {"N": len(pop), "flagged": sum(1 for it in pop if it.decisions[pid].flagged)} for pid, pop in by_policy.items()
        },
        "undecided_in_production": len(decisions.undecided),
        "created_at": datetime.now(timezone.utc).isoformat(),
        "cotmod_version": __version__,
    }
    return AuditPlan(header, strata, items)


def _prod_dict(d: ProductionDecision) -> dict[str, Any]:
    return {
        "flagged": d.flagged,
        "score": d.score,
        "band": d.band,
        "route": d.route,
        "rationale": d.rationale,
        "rule_ids": list(d.rule_ids),
        "policy_version": d.policy_version,
    }


def read_plan(path: str | Path) -> AuditPlan:
    """Read a plan written by :meth:`AuditPlan.write` (errors name the line)."""
    from ..batch._reader import read_records

    p = Path(path)
    if not p.is_file():
        raise InputError(f"audit plan not found: {p}")
    data = p.read_bytes()
    header: dict[str, Any] | None = None
    items: list[PlanItem] = []
    for n, rec in read_records(p, fmt="jsonl"):
        if header is None:
            head = rec.get("audit_plan")
            if not isinstance(head, dict) or head.get("format") != PLAN_FORMAT:
                raise InputError(f"{p}:{n}: not an audit plan (write one with cotmod audit plan)")
            header = head
            continue
        try:
            items.append(PlanItem(str(rec["id"]), str(rec["text"]), dict(rec["production"]), dict(rec["design"]), dict(rec.get("fields") or {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{p}:{n}: not a plan item ({exc})") from None
    if header is None:
        raise InputError(f"{p}: empty audit plan")
    strata = {pid: [Stratum(**s) for s in ss] for pid, ss in header.pop("strata").items()}
    return AuditPlan(header, strata, items, str(p), hashlib.sha256(data).hexdigest())
