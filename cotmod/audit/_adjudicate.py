"""Human adjudication: the labeling task (the disagreement queue plus a seeded random control
sample), the labels imported back, and adjudicated items appended to a golden set.

Task rows (CSV, JSONL; Label Studio import JSON): one per item and policy, ``task_id``
(``<id>::<policy>``), ``id``, ``policy``, ``policy_version``, ``guide`` (the labeling guide of
that version: ``cotmod guide export -p POLICY``, its fingerprint), ``queue`` (``disagreement``:
production and the auditor disagree; ``control``: the random sample), ``control`` (1 when the
item is in the control sample, whatever its queue), ``text``, production's and the auditor's
decisions with rationales and cited rules, and an empty ``label`` to fill with ``violates`` or
``safe`` (1/0, yes/no and the like are read too; blank = not labelled yet). Optional ``labeler``
and ``note`` columns travel into the golden set's provenance.

The control sample is stratified like the audit (per policy, ``control`` items spread over the
strata in proportion to their audited counts, at least one per stratum while it lasts), seeded,
so its human labels support the prediction-powered estimates.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import ConfigError, InputError
from .._verdict import Verdict
from ..batch._reader import read_records
from ._decisions import parse_flag
from ._plan import AuditPlan, _allocate, _stable

__all__ = ["HumanLabel", "TaskRow", "append_golden", "control_sample", "export_task", "read_labels"]

TASK_FIELDS = [
    "task_id", "id", "policy", "policy_version", "guide", "queue", "control", "label", "labeler", "note", "text",
    "production_decision", "production_score", "production_rationale", "production_rules",
    "auditor_decision", "auditor_score", "auditor_rationale", "auditor_rules", "stratum",
]


@dataclass
class TaskRow:
    values: dict[str, Any]


@dataclass(frozen=True)
class HumanLabel:
    id: str
    policy: str
    violates: bool
    control: bool
    line: int
    labeler: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def control_sample(plan: AuditPlan, policy: str, size: int, seed: int | None = None) -> set[str]:
    """A seeded random control sample of ``size`` of the plan's items for ``policy``, spread over
    its strata in proportion to their sample sizes (at least one per stratum while it lasts)."""
    members: dict[str, list[str]] = {}
    for it in plan.items:
        d = it.design.get(policy)
        if d is not None:
            members.setdefault(d["stratum"], []).append(it.id)
    keys = sorted(members)
    sizes = [len(members[k]) for k in keys]
    size = min(size, sum(sizes))
    if size <= 0:
        return set()
    if size < len(keys):
        alloc = [0] * len(keys)
        for i in sorted(range(len(keys)), key=lambda i: -sizes[i])[:size]:
            alloc[i] = 1
    else:
        alloc = [min(1, s) for s in sizes]
        rest = _allocate(size - sum(alloc), [s - a for s, a in zip(sizes, alloc, strict=True)], [float(s) for s in sizes])
        # _allocate floors each stratum at two: take exactly what fits
        alloc = [a + r for a, r in zip(alloc, rest, strict=True)]
        while sum(alloc) > size:
            i = max(range(len(keys)), key=lambda j: alloc[j] / max(sizes[j], 1))
            alloc[i] -= 1
    rng = np.random.default_rng([plan.seed if seed is None else seed, _stable("control:" + policy)])
    out: set[str] = set()
    for k, a in zip(keys, alloc, strict=True):
        ids = sorted(members[k])
        out.update(ids[i] for i in rng.choice(len(ids), size=a, replace=False).tolist())
    return out


def _rules(ids: Sequence[str]) -> str:
    return ", ".join(ids)


def export_task(
    plan: AuditPlan,
    verdicts: Mapping[str, Verdict],
    output: str | Path,
    *,
    control: int = 50,
    seed: int | None = None,
    guides: Mapping[str, str] | None = None,
    fmt: str | None = None,
) -> dict[str, int]:
    """Write the labeling task (``fmt``: csv, jsonl or labelstudio; default from the extension:
    ``.csv``, ``.jsonl``, ``.json`` = Label Studio). Returns counts per queue, and ``undecided``:
    the sampled item-policy pairs without an auditor decision (not in the disagreement queue)."""
    out = Path(output)
    kind = fmt or {".csv": "csv", ".jsonl": "jsonl", ".json": "labelstudio"}.get(out.suffix.lower())
    if kind not in ("csv", "jsonl", "labelstudio"):
        raise ConfigError(f"{out}: cannot tell the task format from the extension; use .csv, .jsonl or .json (Label Studio)")
    rows: list[dict[str, Any]] = []
    counts = {"disagreement": 0, "control": 0, "control_and_disagreement": 0, "undecided": 0}
    for pid, ver in plan.policies.items():
        ctl = control_sample(plan, pid, control, seed)
        for it in plan.items:
            if pid not in it.design:
                continue
            v = verdicts.get(it.id)
            dec = None
            if v is not None and v.status == "ok":
                try:
                    dec = v.decision(pid)
                except KeyError:
                    dec = None
            prod = it.production[pid]
            if dec is None:
                counts["undecided"] += 1
            disagree = dec is not None and dec.violates != bool(prod["flagged"])
            in_ctl = it.id in ctl
            if not (disagree or in_ctl):
                continue
            if disagree and in_ctl:
                counts["control_and_disagreement"] += 1
            counts["disagreement" if disagree else "control"] += 1
            rows.append(
                {
                    "task_id": f"{it.id}::{pid}", "id": it.id, "policy": pid, "policy_version": ver,
                    "guide": (guides or {}).get(pid, f"cotmod guide export -p {pid} (version {ver})"),
                    "queue": "disagreement" if disagree else "control", "control": 1 if in_ctl else 0,
                    "label": "", "labeler": "", "note": "", "text": it.text,
                    "production_decision": "violates" if prod["flagged"] else "safe",
                    "production_score": "" if prod.get("score") is None else prod["score"],
                    "production_rationale": prod.get("rationale") or "", "production_rules": _rules(prod.get("rule_ids") or []),
                    "auditor_decision": "" if dec is None else ("violates" if dec.violates else "safe"),
                    "auditor_score": "" if dec is None else dec.score,
                    "auditor_rationale": "" if dec is None else dec.rationale,
                    "auditor_rules": "" if dec is None else _rules(dec.rule_ids),
                    "stratum": it.design[pid]["stratum"],
                }
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        with out.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=TASK_FIELDS)
            w.writeheader()
            w.writerows(rows)
    elif kind == "jsonl":
        with out.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        out.write_text(json.dumps([{"data": r} for r in rows], ensure_ascii=False, indent=1), encoding="utf-8")
    return counts


def _ls_tasks(p: Path) -> list[tuple[int, dict[str, Any]]]:
    """A Label Studio export (JSON list of tasks with annotations) as label rows."""
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: not readable JSON ({exc})") from None
    if not isinstance(data, list):
        raise InputError(f"{p}: expected a JSON list of Label Studio tasks")
    out = []
    for i, task in enumerate(data, start=1):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise InputError(f"{p}: task [{i - 1}]: no 'data' object")
        rec = dict(task["data"])
        where = f"{p}: task [{i - 1}]"
        anns = task.get("annotations") or []
        if not isinstance(anns, list):
            raise InputError(f"{where}: 'annotations' must be a list, got {type(anns).__name__}")
        for j, ann in enumerate(anns):
            results = (ann or {}).get("result") if isinstance(ann, dict) else None
            if (ann is not None and not isinstance(ann, dict)) or not isinstance(results or [], list):
                raise InputError(f"{where}: annotations[{j}]: expected an object with a 'result' list (a Label Studio export)")
            for k, res in enumerate(results or []):
                value = res.get("value") if isinstance(res, dict) else None
                choices = value.get("choices") if isinstance(value, dict) else None
                if res is not None and not isinstance(value, dict):
                    raise InputError(f"{where}: annotations[{j}].result[{k}]: expected an object with a 'value' object")
                if isinstance(choices, str):
                    choices = [choices]
                if choices is not None and not isinstance(choices, list):
                    raise InputError(f"{where}: annotations[{j}].result[{k}].value.choices: expected a list of labels")
                if choices:
                    rec["label"] = choices[0]
        out.append((i, rec))
    return out


DEFAULT_CONTROL = 50  # cotmod audit export --control's default


def read_labels(
    path: str | Path,
    plan: AuditPlan,
    *,
    control: int | None = None,
    control_seed: int | None = None,
    notices: list[str] | None = None,
) -> list[HumanLabel]:
    """Human labels (CSV, JSONL, or a Label Studio JSON export) for the plan's items. Blank
    labels are skipped (not labelled yet); an id not in the plan for that policy, an unknown
    policy, an unknown label value or a second label for the same item and policy is an error
    naming the line and field; so is a CSV or JSONL file without a ``label`` field at all.

    Control-sample membership comes from the plan, not from the file: the :func:`control_sample`
    of ``control`` items per policy (default: as many as the file's ``control`` column marks for
    that policy, else export's default of 50) drawn with ``control_seed`` (default: the plan's
    seed), as ``export_task`` drew it. A ``control`` column that disagrees with it (a row marked
    control that is not in that sample, or the other way round) is an error naming the line.
    ``notices`` (when given) gets a line when the sample size had to be assumed (no column)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"labels file not found: {p}")
    records = _ls_tasks(p) if p.suffix.lower() == ".json" else list(read_records(p))
    if p.suffix.lower() != ".json" and records and not any("label" in rec for _, rec in records):
        raise InputError(f"{p}: field 'label': missing (no row has one; fill the exported task's 'label' column with violates or safe)")
    in_plan = {(it.id, pid) for it in plan.items for pid in it.design}
    out: list[HumanLabel] = []
    seen: dict[tuple[str, str], int] = {}
    marked: list[tuple[int, str, str, bool]] = []  # (line, id, policy, the control column's value)
    for n, rec in records:
        where = f"{p}:{n}"
        rid = rec.get("id")
        if rid in (None, ""):
            raise InputError(f"{where}: field 'id': missing")
        rid = str(rid)
        pid = rec.get("policy")
        if pid in (None, ""):
            if len(plan.policies) != 1:
                raise InputError(f"{where}: field 'policy': missing (the plan audits {', '.join(plan.policies)})")
            pid = next(iter(plan.policies))
        pid = str(pid)
        if pid not in plan.policies:
            raise InputError(f"{where}: field 'policy': {pid!r} is not audited by the plan ({', '.join(plan.policies)})")
        ver = rec.get("policy_version")
        if ver not in (None, "") and str(ver) != plan.policies[pid]:
            raise InputError(f"{where}: field 'policy_version': labelled under {pid} {ver}, the plan is for {plan.policies[pid]}")
        if (rid, pid) not in in_plan:
            raise InputError(f"{where}: field 'id': {rid!r} is not in the audit sample for {pid}")
        ctl = parse_flag(rec.get("control"), f"{where}: field 'control'")
        if ctl is not None:
            marked.append((n, rid, pid, ctl))
        flag = parse_flag(rec.get("label"), f"{where}: field 'label'")
        if flag is None:
            continue
        if (rid, pid) in seen:
            raise InputError(f"{where}: a second label for {rid!r} / {pid} (first on line {seen[(rid, pid)]})")
        seen[(rid, pid)] = n
        out.append(HumanLabel(rid, pid, flag, False, n, str(rec.get("labeler") or ""), str(rec.get("note") or "")))
    seed = plan.seed if control_seed is None else control_seed
    members: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    for pid in plan.policies:
        claimed = {(rid, n) for n, rid, q, c in marked if q == pid and c}
        sizes[pid] = control if control is not None else (len({rid for rid, _ in claimed}) if marked else DEFAULT_CONTROL)
        members[pid] = control_sample(plan, pid, sizes[pid], seed)
    if not marked and control is None and out and notices is not None:
        notices.append(
            f"{p}: no 'control' column: the control sample is taken to be audit export's default ({DEFAULT_CONTROL} per policy, "
            f"seed {seed}); give --control N (and --control-seed S) if the task was exported with other values"
        )
    for n, rid, pid, ctl in marked:
        if ctl != (rid in members[pid]):
            raise InputError(
                f"{p}:{n}: field 'control': {rid!r} is {'' if ctl else 'not '}marked as a control item for {pid}, but the "
                f"plan's control sample ({sizes[pid]} item(s), seed {seed}) {'does not include' if ctl else 'includes'} it; "
                "the control sample must be the random one cotmod audit export drew: restore the column, or give "
                "--control N / --control-seed S as given to audit export"
            )
    return [replace(lab, control=lab.id in members[lab.policy]) for lab in out]


def _golden_problem(rec: dict[str, Any]) -> str | None:
    """What keeps a line from being a golden-set row (id, text, a labels object), if anything."""
    if rec.get("id") in (None, ""):
        return "field 'id': missing"
    if not isinstance(rec.get("text"), str) or not rec["text"].strip():
        return "field 'text': missing or empty"
    if not isinstance(rec.get("labels"), dict):
        return "field 'labels': expected an object of label: 1|0 (a golden-set row)"
    return None


def check_golden_target(path: str | Path) -> None:
    """Refuse a non-empty ``path`` that is not a golden set (JSONL); repair a torn final line."""
    from ._report import check_append_target

    check_append_target(Path(path), "a golden set", ("id",), _golden_problem)


def append_golden(
    path: str | Path, plan: AuditPlan, labels: Sequence[HumanLabel], *, auditor_model: str = "", labels_path: str = ""
) -> tuple[int, int]:
    """Append the adjudicated items to a golden set (JSONL; cotmod.evals format with labels
    named by policy id, 1 violates / 0 safe, and a ``provenance`` field). An id already in the
    file is not appended again. Returns (appended, already present)."""
    p = Path(path)
    check_golden_target(p)
    present: set[str] = set()
    if p.exists() and p.stat().st_size > 0:
        for _n, rec in read_records(p, fmt="jsonl"):
            if rec.get("id") not in (None, ""):
                present.add(str(rec["id"]))
    text = {it.id: it for it in plan.items}
    by_id: dict[str, list[HumanLabel]] = {}
    for lab in labels:
        by_id.setdefault(lab.id, []).append(lab)
    now = datetime.now(timezone.utc).isoformat()
    added = skipped = 0
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        for rid, labs in by_id.items():
            if rid in present:
                skipped += 1
                continue
            it = text[rid]
            rec = {
                "id": rid,
                "text": it.text,
                "labels": {lab.policy: int(lab.violates) for lab in labs},
                **{k: v for k, v in it.fields.items()},
                "provenance": {
                    "source": "cotmod audit",
                    "policy_versions": {lab.policy: plan.policies[lab.policy] for lab in labs},
                    "plan_sha256": plan.sha256,
                    "decisions_file": plan.header.get("decisions_file"),
                    "decisions_sha256": plan.header.get("decisions_sha256"),
                    "auditor_model": auditor_model,
                    "labels_file": labels_path,
                    "queue": sorted({"control" if lab.control else "disagreement" for lab in labs}),
                    "labelers": sorted({lab.labeler for lab in labs if lab.labeler}),
                    "adjudicated_at": now,
                },
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            added += 1
    return added, skipped
