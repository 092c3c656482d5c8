"""Golden sets and label mappings.

A golden set is JSONL (optionally ``.gz``) or CSV. Each row has an id, a text and expected labels::

    {"id": "hc-1", "text": "...", "labels": {"hateful": 1}, "functionality": "derog_neg_emote_h"}

Label values are ``1`` (violates), ``0`` (does not) or unknown (``null``, ``""``, ``"unknown"``,
missing): unknown labels are excluded per label, never counted as negatives. Optional per row:
``expected_rules`` (``{"label": ["HATE-1"]}``) and any other fields, usable as strata. In CSV, a
label column is named ``label:<name>``.

A label mapping (YAML) says which cotmod policies decide each dataset label: a row is predicted
positive for a label when any of its policies is violated::

    name: hatecheck
    labels:
      hateful: {policies: [hate_speech]}
    strata: [functionality, target]
    source: github.com/paul-rottger/hatecheck-data
    license: CC BY 4.0
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import InputError
from .._yamlfile import read_yaml_mapping
from ..batch import read_records
from ..policy._model import PolicySet

__all__ = ["GoldenItem", "GoldenSet", "LabelMapping", "load_golden", "load_mapping"]

UNKNOWN = (None, "", "unknown", "?", "null")


@dataclass(frozen=True)
class LabelMapping:
    name: str
    labels: dict[str, list[str]]
    strata: list[str] = field(default_factory=list)
    source: str = ""
    license: str = ""

    @property
    def policies(self) -> list[str]:
        return list(dict.fromkeys(p for ps in self.labels.values() for p in ps))

    @property
    def evaluated_labels(self) -> dict[str, list[str]]:
        """The labels that are evaluated: those decided by at least one policy."""
        return {label: pids for label, pids in self.labels.items() if pids}

    def restrict(self, policies: Sequence[str], where: str) -> LabelMapping:
        """This mapping with only ``policies`` deciding labels (``cotmod eval -p``).

        Each label keeps those of its policies that are selected; a label none of them decides
        keeps an empty list: it is not evaluated (its values are treated as unknown), but rows
        may still carry it. Every selected policy must decide some label.
        """
        unused = [p for p in policies if p not in self.policies]
        if unused:
            raise InputError(
                f"{where}: policy {unused[0]!r} (from --policy) decides no label of the mapping "
                f"{self.name!r} (its policies: {', '.join(self.policies)})"
            )
        keep = set(policies)
        return LabelMapping(
            name=self.name,
            labels={label: [p for p in pids if p in keep] for label, pids in self.labels.items()},
            strata=self.strata,
            source=self.source,
            license=self.license,
        )

    def validate(self, policies: PolicySet, where: str) -> None:
        for label, pids in self.labels.items():
            for i, pid in enumerate(pids):
                if pid not in policies:
                    raise InputError(
                        f"{where}: labels.{label}.policies[{i}]: unknown policy {pid!r} "
                        f"(known: {', '.join(policies.ids)})"
                    )


def load_mapping(path: str | Path) -> LabelMapping:
    p = Path(path)
    data = read_yaml_mapping(p, "label mapping")
    if not isinstance(data.get("labels"), dict) or not data["labels"]:
        raise InputError(f"{p}: a mapping needs 'labels: {{LABEL: {{policies: [POLICY, ...]}}}}'")
    unknown = set(data) - {"name", "labels", "strata", "source", "license", "description"}
    if unknown:
        raise InputError(f"{p}: unknown field(s) {', '.join(sorted(unknown))}")
    labels: dict[str, list[str]] = {}
    for label, spec in data["labels"].items():
        extra = sorted(set(spec) - {"policies", "description"}) if isinstance(spec, dict) else []
        if extra:
            raise InputError(f"{p}: labels.{label}: unknown field(s) {', '.join(map(str, extra))} (a label has 'policies')")
        pol = spec.get("policies") if isinstance(spec, dict) else spec
        if isinstance(pol, str):
            pol = [pol]
        if not isinstance(pol, list) or not pol or not all(isinstance(x, str) for x in pol):
            raise InputError(f"{p}: labels.{label}.policies must be a non-empty list of policy ids")
        labels[str(label)] = pol
    strata = data.get("strata") or []
    if not isinstance(strata, list):
        raise InputError(f"{p}: strata must be a list of field names")
    return LabelMapping(
        name=str(data.get("name") or p.stem),
        labels=labels,
        strata=[str(s) for s in strata],
        source=str(data.get("source", "")),
        license=str(data.get("license", "")),
    )


@dataclass(frozen=True)
class GoldenItem:
    id: str
    text: str
    labels: dict[str, int | None]
    expected_rules: dict[str, list[str]]
    meta: dict[str, Any]
    line: int


@dataclass
class GoldenSet:
    path: Path
    items: list[GoldenItem]
    sha256: str

    def __len__(self) -> int:
        return len(self.items)


def _norm_label(value: Any, where: str) -> int | None:
    if value in UNKNOWN:
        return None
    if value in (1, "1", True, "true", "yes"):
        return 1
    if value in (0, "0", False, "false", "no"):
        return 0
    raise InputError(f"{where}: label value {value!r} is not 1, 0 or unknown")


def _rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a golden set through the batch runner's one strict reader (JSONL, CSV, Parquet,
    ``.gz``); CSV ``label:NAME`` columns become the ``labels`` mapping."""
    if not p.exists():
        raise InputError(f"golden set not found: {p}")
    is_csv = p.name.removesuffix(".gz").endswith(".csv")
    for n, rec in read_records(p):
        if is_csv:
            labels = {k.split(":", 1)[1]: v for k, v in rec.items() if k and k.startswith("label:")}
            rest = {k: v for k, v in rec.items() if k and not k.startswith("label:")}
            rec = {**rest, "labels": labels}
        yield n, rec


def load_golden(path: str | Path, mapping: LabelMapping) -> GoldenSet:
    """Load and validate a golden set against a mapping (errors name the row and field)."""
    p = Path(path)
    items: list[GoldenItem] = []
    seen: dict[str, int] = {}
    h = hashlib.sha256()
    for n, obj in _rows(p):
        where = f"{p}:{n}"
        rid = obj.get("id")
        if rid in (None, ""):
            raise InputError(f"{where}: missing field 'id'")
        rid = str(rid)
        if rid in seen:
            raise InputError(f"{where}: duplicate id {rid!r} (first on line {seen[rid]})")
        seen[rid] = n
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: missing or empty field 'text' (id {rid!r})")
        raw_labels = obj.get("labels")
        if not isinstance(raw_labels, dict):
            raise InputError(f"{where}: field 'labels' must be an object of label: 1|0|null")
        outside = sorted(set(raw_labels) - set(mapping.labels))
        if outside:
            raise InputError(
                f"{where}: label(s) {', '.join(outside)} not in the mapping {mapping.name!r} "
                f"(mapped: {', '.join(mapping.labels)})"
            )
        labels = {lab: _norm_label(raw_labels.get(lab), f"{where}: labels.{lab}") for lab in mapping.labels}
        exp = obj.get("expected_rules") or {}
        if not isinstance(exp, dict):
            raise InputError(f"{where}: expected_rules must be an object of label: [rule ids]")
        meta = {k: v for k, v in obj.items() if k not in ("id", "text", "labels", "expected_rules")}
        h.update(json.dumps([rid, text, labels], sort_keys=True).encode())
        items.append(GoldenItem(rid, text, labels, {k: list(v) for k, v in exp.items()}, meta, n))
    if not items:
        raise InputError(f"{p}: no rows")
    return GoldenSet(p, items, h.hexdigest())
