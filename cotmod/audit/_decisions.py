"""Production decisions to audit: a cotmod run output or any system's decisions file.

Two shapes are read (JSONL, CSV or Parquet, ``.gz`` too, through the batch reader):

* **cotmod verdicts** (``cotmod run`` output): one :class:`~cotmod.Verdict` per line; each
  decision gives the policy, its version, ``violates``, ``score``, ``band``, ``route``, rationale
  and cited rules. Verdicts carry no text: give the run's input (``items``) for it. Error
  verdicts are not decisions: they are counted (``undecided``), never audited as one.
* **any system's decisions** (an LLM, a classifier, human reviewers): ``id``, ``text``, and per
  policy (or label, mapped to a policy by ``label_policy``) a decision as ``decision_<name>``
  columns or a ``decisions`` map (``{name: value}`` or ``{name: {"violates": v, "score": s,
  "band": b, "rationale": r, "rule_ids": [...]}}``). Values: ``1/0``, ``true/false``,
  ``yes/no``, ``violates/safe``, ``flag/allow``. Scores: ``score_<name>`` or ``scores.<name>``
  (a classifier's score log; a number from 0 to 1); with a ``threshold`` for the name, a score without a decision
  decides (``score >= threshold`` flags). Optional: ``policy_version`` (or a
  ``policy_versions`` map), ``timestamp`` and any fields used as strata.

Bad input stops with one line naming the file, line and field: a row without an id or without
any decision, an unknown policy, an unreadable value, a duplicate id, a missing text.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import InputError
from ..batch._reader import read_records

__all__ = ["DecisionsFile", "ProductionDecision", "ProductionItem", "load_decisions", "parse_flag"]

_TRUE = {"1", "true", "yes", "y", "violates", "violate", "violation", "flag", "flagged", "positive", "remove", "block"}
_FALSE = {"0", "false", "no", "n", "safe", "allow", "allowed", "ok", "negative", "pass", "not_flagged"}


@dataclass(frozen=True)
class ProductionDecision:
    """What production decided for one item and policy."""

    flagged: bool
    score: float | None = None
    band: str | None = None
    route: str | None = None
    rationale: str = ""
    rule_ids: tuple[str, ...] = ()
    policy_version: str | None = None


@dataclass(frozen=True)
class ProductionItem:
    id: str
    line: int
    text: str | None
    decisions: dict[str, ProductionDecision]
    fields: dict[str, str] = field(default_factory=dict)
    timestamp: str | None = None


@dataclass
class DecisionsFile:
    """The production decisions of one file: items, the policies decided, their versions."""

    path: str
    sha256: str
    kind: str  # "verdicts" or "decisions"
    items: list[ProductionItem]
    policy_versions: dict[str, list[str]]
    undecided: list[tuple[str, int]] = field(default_factory=list)  # (id, line) of error verdicts

    @property
    def policies(self) -> list[str]:
        return sorted({p for it in self.items for p in it.decisions})


def parse_flag(value: Any, where: str) -> bool | None:
    """A decision value as a flag: True (violates), False, or None (missing)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise InputError(f"{where}: decision {value!r} is not one of 1/0, true/false, yes/no, violates/safe, flag/allow")


def _score(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: score {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(f):
        raise InputError(f"{where}: score {value!r} is not a finite number")
    if not 0.0 <= f <= 1.0:
        raise InputError(f"{where}: score {value!r} is not a number from 0 to 1")
    return f


def _file_hash(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _texts(items_path: Path, id_field: str, text_field: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, rec in read_records(items_path):
        rid = rec.get(id_field)
        if rid in (None, ""):
            rid = f"line-{n}"  # the batch runner's id rule
        text = rec.get(text_field)
        if isinstance(text, str) and text.strip():
            out.setdefault(str(rid), text)
    return out


def _is_verdict(rec: Mapping[str, Any]) -> bool:
    return "item_id" in rec and isinstance(rec.get("decisions"), list) and "status" in rec


def load_decisions(
    path: str | Path,
    known_policies: Mapping[str, str] | Sequence[str],
    *,
    items: str | Path | None = None,
    label_policy: Mapping[str, str] | None = None,
    thresholds: Mapping[str, float] | None = None,
    strata_fields: Sequence[str] = (),
    id_field: str = "id",
    text_field: str = "text",
    fmt: str | None = None,
) -> DecisionsFile:
    """Read a decisions file (see the module doc). ``known_policies``: the policy ids an auditor
    can judge (a decision for any other name is an error unless ``label_policy`` maps it);
    ``items``: a file with the texts by id (required for cotmod verdicts, optional otherwise);
    ``thresholds``: per policy or label, the score at or above which an item is flagged when it
    has a score but no decision."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"decisions file not found: {p}")
    known = set(known_policies)
    lmap = dict(label_policy or {})
    for lb, pid in lmap.items():
        if pid not in known:
            raise InputError(f"--label-policy {lb}={pid}: unknown policy {pid!r} (known: {', '.join(sorted(known))})")
    ths = dict(thresholds or {})
    texts = _texts(Path(items), id_field, text_field) if items is not None else {}
    hashed = [p] + ([Path(items)] if items is not None else [])
    out: list[ProductionItem] = []
    undecided: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    versions: dict[str, set[str]] = {}
    kind: str | None = None

    def policy_of(name: str, where: str) -> str:
        if name in lmap:
            return lmap[name]
        if name in known:
            return name
        hint = "; map a label to a policy with --label-policy LABEL=POLICY" if not lmap else ""
        raise InputError(f"{where}: unknown policy {name!r} (known: {', '.join(sorted(known))}){hint}")

    for n, rec in read_records(p, fmt=fmt):
        where = f"{p}:{n}"
        this_kind = "verdicts" if _is_verdict(rec) else "decisions"
        if kind is None:
            kind = this_kind
        elif kind != this_kind:
            raise InputError(f"{where}: a {this_kind[:-1]} row in a file of {kind} (line 1 decides the shape)")
        meta: dict[str, Any] = rec["metadata"] if isinstance(rec.get("metadata"), dict) else {}
        if this_kind == "verdicts":
            rid = rec.get("item_id")
            if rid in (None, ""):
                raise InputError(f"{where}: field 'item_id': missing")
            rid = str(rid)
        else:
            rid = rec.get(id_field)
            if rid in (None, ""):
                raise InputError(f"{where}: field {id_field!r}: missing (every decision needs an id)")
            rid = str(rid)
        if rid in seen:
            raise InputError(f"{where}: field {id_field if this_kind == 'decisions' else 'item_id'!r}: duplicate id {rid!r} (first on line {seen[rid]})")
        seen[rid] = n
        decisions: dict[str, ProductionDecision] = {}
        if this_kind == "verdicts":
            if rec.get("status") != "ok":
                undecided.append((rid, n))
                continue
            for i, d in enumerate(rec["decisions"]):
                w = f"{where}: decisions[{i}]"
                if not isinstance(d, dict) or "policy_id" not in d:
                    raise InputError(f"{w}: not a policy decision")
                pid = policy_of(str(d["policy_id"]), f"{w}.policy_id")
                flag = parse_flag(d.get("violates"), f"{w}.violates")
                if flag is None:
                    raise InputError(f"{w}.violates: missing")
                ver = d.get("policy_version")
                decisions[pid] = ProductionDecision(
                    flagged=flag,
                    score=_score(d.get("score"), f"{w}.score"),
                    band=d.get("band"),
                    route=d.get("route"),
                    rationale=str(d.get("rationale") or ""),
                    rule_ids=tuple(str(r) for r in d.get("rule_ids") or ()),
                    policy_version=str(ver) if ver is not None else None,
                )
            text = texts.get(rid)
        else:
            decisions = _generic_decisions(rec, where, policy_of, ths)
            text = rec.get(text_field)
            if not isinstance(text, str) or not text.strip():
                text = texts.get(rid)
        if not decisions:
            raise InputError(
                f"{where}: no decision (expected decision_<policy> fields, a 'decisions' map, or scores with --threshold)"
                if this_kind == "decisions"
                else f"{where}: field 'decisions': empty"
            )
        for pid, d in decisions.items():
            if d.policy_version:
                versions.setdefault(pid, set()).add(d.policy_version)
        fields: dict[str, str] = {}
        for f in strata_fields:
            v = rec.get(f, meta.get(f))
            fields[f] = "(missing)" if v in (None, "") else str(v)
        ts = rec.get("timestamp") or rec.get("created_at")
        out.append(ProductionItem(rid, n, text if isinstance(text, str) else None, decisions, fields, str(ts) if ts else None))
    if not out and not undecided:
        raise InputError(f"{p}: no decisions")
    if not out:
        raise InputError(f"{p}: every verdict is an error verdict ({len(undecided)}): nothing to audit")
    return DecisionsFile(
        path=str(p),
        sha256=_file_hash(hashed),
        kind=kind or "decisions",
        items=out,
        policy_versions={k: sorted(v) for k, v in sorted(versions.items())},
        undecided=undecided,
    )


def _generic_decisions(
    rec: Mapping[str, Any], where: str, policy_of: Any, thresholds: Mapping[str, float]
) -> dict[str, ProductionDecision]:
    raw: dict[str, Any] = {}  # name -> decision value or detail mapping
    src: dict[str, str] = {}
    for k, v in rec.items():
        if isinstance(k, str) and k.startswith("decision_") and len(k) > len("decision_"):
            raw[k[len("decision_"):]] = v
            src[k[len("decision_"):]] = k
    dm = rec.get("decisions")
    if dm is not None:
        if not isinstance(dm, dict):
            raise InputError(f"{where}: field 'decisions' must be a map of policy: decision")
        for k, v in dm.items():
            raw[str(k)] = v
            src[str(k)] = f"decisions.{k}"
    scores: dict[str, Any] = {}
    sm = rec.get("scores")
    if isinstance(sm, dict):
        scores.update({str(k): (v, f"scores.{k}") for k, v in sm.items()})
    for k, v in rec.items():
        if isinstance(k, str) and k.startswith("score_") and len(k) > len("score_"):
            scores[k[len("score_"):]] = (v, k)
    for name in scores:
        if name not in raw and name in thresholds:
            raw[name] = None
            src[name] = scores[name][1]
    versions: dict[str, Any] = rec["policy_versions"] if isinstance(rec.get("policy_versions"), dict) else {}
    out: dict[str, ProductionDecision] = {}
    for name, value in raw.items():
        w = f"{where}: field {src[name]!r}"
        pid = policy_of(name, w)
        detail: Mapping[str, Any] = value if isinstance(value, dict) else {}
        flag_raw = detail.get("violates", detail.get("flagged", detail.get("decision"))) if detail else value
        score = _score(detail.get("score"), f"{w}.score") if detail.get("score") is not None else None
        if score is None and name in scores:
            score = _score(scores[name][0], f"{where}: field {scores[name][1]!r}")
        flag = parse_flag(flag_raw, w)
        if flag is None:
            if score is not None and name in thresholds:
                flag = score >= thresholds[name]
            elif score is not None:
                raise InputError(f"{w}: a score without a decision; give --threshold {name}=T to decide by the score")
            else:
                raise InputError(f"{w}: missing decision")
        if pid in out:
            raise InputError(f"{w}: a second decision for policy {pid!r}")
        ver = detail.get("policy_version") or versions.get(name) or versions.get(pid) or rec.get("policy_version")
        out[pid] = ProductionDecision(
            flagged=flag,
            score=score,
            band=str(detail["band"]) if detail.get("band") else None,
            route=str(detail["route"]) if detail.get("route") else None,
            rationale=str(detail.get("rationale") or rec.get("rationale") or ""),
            rule_ids=tuple(str(r) for r in detail.get("rule_ids") or ()),
            policy_version=str(ver) if ver else None,
        )
    return out
