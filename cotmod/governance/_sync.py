"""The enforcement manifest: one policy version, every pathway bound to it.

``enforcement.yaml`` binds each policy version to its machine and human pathways::

    guide: {path: docs/labeling-guide.md, fingerprint: guide-…}   # exported labeling guide
    policies:
      hate_speech:
        version: 1.0.0
        llm: {fingerprint: fp-…}                         # compiled prompt of this policy
        classifier:                                      # optional: a score-threshold classifier
          label_map: {hateful: hate_speech}
          thresholds: thresholds.yaml                    # written by cotmod tune or cotmod classifier tune
          cascade: cascade.yaml                          # optional: written by cotmod classifier cascade
        escalation:                                      # where humans get what
          - {severity: critical, queue: threat-assessment, sla_hours: 1}
          - {criterion: HATE-X2, queue: hate-speech-specialists, sla_hours: 24}

``policies=[...]`` (``cotmod sync check/update -p``) restricts both to those policies' bindings;
the labeling guide, which covers every bound policy, is then left alone.

``check`` lists every pathway still bound to an old version or fingerprint (or to rules, tiers
or criteria that no longer exist). ``update`` rewrites what can be derived from the policies
(versions, prompt fingerprints, the guide, routes for escalation criteria) and lists what needs
a human (re-tuning thresholds on a fresh eval, queues for new escalating tiers, label maps).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .._exceptions import InputError
from .._yamlfile import read_yaml_mapping
from ..engine._moderator import AsyncModerator
from ..policy._model import PolicySet
from ._guide import guide_fingerprint, guide_html, guide_markdown

__all__ = ["Finding", "check_manifest", "update_manifest"]


@dataclass
class Finding:
    policy: str
    pathway: str  # version | llm | classifier | guide | escalation | manifest
    field: str
    message: str
    fix: str  # auto | human

    def to_dict(self) -> dict[str, str]:
        return {"policy": self.policy, "pathway": self.pathway, "field": self.field, "message": self.message, "fix": self.fix}

    def __str__(self) -> str:
        return f"{self.policy} [{self.pathway}] {self.field}: {self.message} ({'cotmod sync update fixes it' if self.fix == 'auto' else 'needs a human'})"


#: The keys a manifest may hold, by level (anything else is a typo: one clear error, not ignored).
TOP_KEYS = ("guide", "policies")
GUIDE_KEYS = ("path", "fingerprint")
POLICY_KEYS = ("version", "llm", "classifier", "escalation")
LLM_KEYS = ("fingerprint",)
CLASSIFIER_KEYS = ("label_map", "thresholds", "cascade")
ROUTE_KEYS = ("severity", "criterion", "queue", "sla_hours")


def _load(path: Path) -> dict[str, Any]:
    data = read_yaml_mapping(path, "enforcement manifest")
    if not isinstance(data.get("policies"), dict):
        raise InputError(f"{path}: expected a mapping with 'policies: {{POLICY_ID: {{version: ...}}}}'")
    _check_shape(path, data)
    _check_keys(path, data)
    return data


def _check_keys(path: Path, data: dict[str, Any]) -> None:
    """An unknown key anywhere in the manifest (``bogus: 1`` under a policy, ``escalaton:``) is
    one error naming the file, the line and the key, as in cotmod.toml and mapping.yaml."""
    levels: list[tuple[tuple[str | int, ...], Any, tuple[str, ...]]] = [((), data, TOP_KEYS)]
    guide = data.get("guide")
    if isinstance(guide, dict):
        levels.append((("guide",), guide, GUIDE_KEYS))
    for pid, spec in data["policies"].items():
        if not isinstance(spec, dict):
            continue
        here: tuple[str | int, ...] = ("policies", pid)
        levels.append((here, spec, POLICY_KEYS))
        if isinstance(spec.get("llm"), dict):
            levels.append(((*here, "llm"), spec["llm"], LLM_KEYS))
        if isinstance(spec.get("classifier"), dict):
            levels.append(((*here, "classifier"), spec["classifier"], CLASSIFIER_KEYS))
        if isinstance(spec.get("escalation"), list):
            for i, route in enumerate(spec["escalation"]):
                if isinstance(route, dict):
                    levels.append(((*here, "escalation", i), route, ROUTE_KEYS))
    for where, mapping, known in levels:
        for key in mapping:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            at = _key_line(path, (*where, key))
            name = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in where).lstrip(".")
            raise InputError(
                f"{path}{f':{at}' if at else ''}: {name + ': ' if name else ''}unknown key {key!r} "
                f"(known: {', '.join(known)}){hint}"
            )


def _key_line(path: Path, keys: tuple[str | int, ...]) -> int | None:
    """The 1-based line of ``keys`` in the manifest (None when it cannot be told)."""
    from .._yamlfile import read_text_limited, safe_compose
    from ..policy._lint import _line_map

    try:
        node, _ = safe_compose(read_text_limited(path).decode("utf-8"))
    except Exception:  # the file was read a moment ago; no line is no reason to fail
        return None
    if node is None:
        return None
    lines = _line_map(node)
    return lines.get(tuple(k if isinstance(k, int) else str(k) for k in keys))


def _expect(path: Path, where: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    """One clear line when a manifest entry has the wrong type (None = absent, always fine)."""
    if value is not None and not isinstance(value, kind):
        shown = value if isinstance(value, (str, int, float, bool)) else type(value).__name__
        raise InputError(f"{path}: {where}: expected {what}, got {shown!r}")


def _check_shape(path: Path, data: dict[str, Any]) -> None:
    """The manifest's entries have the types :func:`check_manifest` and :func:`update_manifest`
    read (a hand edit such as ``llm: yes`` or ``policies: {self_harm: "1.2.0"}`` is one clear
    line naming the field, not a crash)."""
    text = (str,)
    for pid, spec in data["policies"].items():
        where = f"policies.{pid}"
        _expect(path, where, spec, dict, "a mapping like {version: ..., llm: {fingerprint: ...}}")
        spec = spec or {}
        _expect(path, f"{where}.version", spec.get("version"), (str, int, float), "a version string")
        _expect(path, f"{where}.llm", spec.get("llm"), dict, "a mapping like {fingerprint: fp-...}")
        clf = spec.get("classifier")
        _expect(path, f"{where}.classifier", clf, dict, "a mapping like {label_map: {...}, thresholds: FILE}")
        clf = clf or {}
        _expect(path, f"{where}.classifier.label_map", clf.get("label_map"), dict, "a mapping of classifier labels to policy ids")
        for label, target in (clf.get("label_map") or {}).items():
            _expect(path, f"{where}.classifier.label_map.{label}", target, text, "a policy id")
        for key in ("thresholds", "cascade"):
            _expect(path, f"{where}.classifier.{key}", clf.get(key), text, "a file path")
    guide = data.get("guide")
    _expect(path, "guide", guide, dict, "a mapping like {path: labeling-guide.md}")
    for key in ("path", "fingerprint"):
        _expect(path, f"guide.{key}", (guide or {}).get(key), text, "a string")


def _selected(moderator: AsyncModerator, policies: Sequence[str] | None) -> set[str] | None:
    if not policies:
        return None
    moderator.policies.select(policies)  # ConfigError naming an unknown policy
    return set(policies)


def check_manifest(path: str | Path, moderator: AsyncModerator, policies: Sequence[str] | None = None) -> list[Finding]:
    """Every stale or broken binding in the manifest (empty list = all pathways in sync);
    ``policies``: only those policies' bindings (and not the shared guide)."""
    only = _selected(moderator, policies)
    found = _check(Path(path), moderator)
    if only is None:
        return found
    return [f for f in found if f.policy in only]


def _check(p: Path, moderator: AsyncModerator) -> list[Finding]:
    data = _load(p)
    base = p.parent
    policies: PolicySet = moderator.policies
    out: list[Finding] = []
    bound = data["policies"]
    for pid in policies.ids:
        if pid not in bound:
            out.append(Finding(pid, "manifest", f"policies.{pid}", "policy has no enforcement binding", "auto"))
    for pid, spec in bound.items():
        where = f"policies.{pid}"
        if pid not in policies:
            out.append(Finding(pid, "manifest", where, f"names a policy that does not exist (known: {', '.join(policies.ids)})", "human"))
            continue
        pol = policies[pid]
        spec = spec or {}
        if spec.get("version") != pol.version:
            out.append(Finding(pid, "version", f"{where}.version", f"bound to {spec.get('version')}, policy is {pol.version}", "auto"))
        fp = moderator.fingerprint([pid])
        if (spec.get("llm") or {}).get("fingerprint") != fp:
            out.append(Finding(pid, "llm", f"{where}.llm.fingerprint", f"prompt fingerprint {(spec.get('llm') or {}).get('fingerprint')} is stale (now {fp})", "auto"))
        clf = spec.get("classifier")
        if clf:
            for label, target in (clf.get("label_map") or {}).items():
                if target not in policies:
                    out.append(Finding(pid, "classifier", f"{where}.classifier.label_map.{label}", f"maps to unknown policy {target!r}", "human"))
            tpath = clf.get("thresholds")
            if tpath:
                tfile = base / tpath
                if not tfile.exists():
                    out.append(Finding(pid, "classifier", f"{where}.classifier.thresholds", f"file {tfile} does not exist", "human"))
                else:
                    tdata = read_yaml_mapping(tfile, "thresholds file")
                    tuned_for = (tdata.get("policies") or {}).get(pid)
                    if tuned_for != pol.version:
                        # per-label classifier thresholds come from cotmod classifier tune, not from an eval
                        redo = "cotmod classifier tune" if tdata.get("kind") == "classifier" else "cotmod eval and cotmod tune"
                        out.append(Finding(pid, "classifier", f"{where}.classifier.thresholds", f"thresholds were tuned for {pid} {tuned_for}, policy is {pol.version}: re-run {redo}", "human"))
                    if pid not in (tdata.get("thresholds") or {}):
                        out.append(Finding(pid, "classifier", f"{where}.classifier.thresholds", f"{tfile} has no thresholds for {pid}", "human"))
                    tlabels = tdata.get("labels")
                    if isinstance(tlabels, dict):  # per-label classifier thresholds (cotmod classifier tune)
                        for label, target in (clf.get("label_map") or {}).items():
                            lspec = tlabels.get(label)
                            lwhere = f"{where}.classifier.label_map.{label}"
                            if not isinstance(lspec, dict) or lspec.get("review") is None:
                                out.append(Finding(pid, "classifier", lwhere, f"{tfile} has no threshold for label {label!r}", "human"))
                            elif lspec.get("policy") != target:
                                out.append(Finding(pid, "classifier", lwhere, f"label {label!r} was tuned for policy {lspec.get('policy')!r}, the manifest maps it to {target!r}: re-run cotmod classifier tune", "human"))
            cpath = clf.get("cascade")
            if cpath:
                out.extend(_check_cascade(base / cpath, pid, pol.version, clf.get("label_map") or {}, f"{where}.classifier.cascade"))
        routes = spec.get("escalation") or []
        routed_tiers, routed_criteria = set(), set()
        if not isinstance(routes, list):
            raise InputError(f"{p}: {where}.escalation: expected a list of routes ({{severity|criterion, queue}}), got {type(routes).__name__}")
        for i, r in enumerate(routes):
            if not isinstance(r, dict):
                raise InputError(f"{p}: {where}.escalation[{i}]: expected a mapping like {{severity: high, queue: QUEUE}}, got {r!r}")
            if "severity" in r:
                routed_tiers.add(r["severity"])
                if r["severity"] not in pol.severity_ids:
                    out.append(Finding(pid, "escalation", f"{where}.escalation[{i}].severity", f"tier {r['severity']!r} no longer exists", "human"))
            elif "criterion" in r:
                routed_criteria.add(r["criterion"])
                if r["criterion"] not in {x.id for x in pol.escalation}:
                    out.append(Finding(pid, "escalation", f"{where}.escalation[{i}].criterion", f"criterion {r['criterion']!r} no longer exists", "auto"))
            if not r.get("queue"):
                out.append(Finding(pid, "escalation", f"{where}.escalation[{i}].queue", "route has no queue", "human"))
        for tier in pol.severities:
            if tier.escalate and tier.id not in routed_tiers:
                out.append(Finding(pid, "escalation", f"{where}.escalation", f"tier {tier.id!r} always escalates but has no queue", "human"))
        for x in pol.escalation:
            if x.id not in routed_criteria:
                out.append(Finding(pid, "escalation", f"{where}.escalation", f"criterion {x.id} (queue {x.queue}) is not routed", "auto"))
            else:
                for r in routes:
                    if r.get("criterion") == x.id and (r.get("queue"), r.get("sla_hours")) != (x.queue, x.sla_hours):
                        out.append(Finding(pid, "escalation", f"{where}.escalation", f"route for {x.id} differs from the policy (queue {x.queue}, SLA {x.sla_hours})", "auto"))
    guide = data.get("guide")
    if guide:
        gpath = base / guide.get("path", "")
        in_guide = policies.select([pid for pid in bound if pid in policies])
        want = guide_fingerprint(in_guide)
        if not gpath.is_file():
            out.append(Finding("*", "guide", "guide.path", f"{gpath} does not exist", "auto"))
        elif want not in gpath.read_text(encoding="utf-8") or guide.get("fingerprint") != want:
            out.append(Finding("*", "guide", "guide.fingerprint", f"labeling guide is stale (now {want})", "auto"))
    return out


def update_manifest(
    path: str | Path, moderator: AsyncModerator, *, create: bool = False, policies: Sequence[str] | None = None
) -> tuple[list[str], list[Finding]]:
    """Regenerate the derivable bindings; returns (what was updated, what still needs a human).
    ``policies``: only those policies' bindings (the shared guide is left alone)."""
    only = _selected(moderator, policies)
    selection = list(policies) if policies else None
    p = Path(path)
    if not p.exists() and create:
        p.write_text(yaml.safe_dump({"guide": {"path": "labeling-guide.md"}, "policies": {}}, sort_keys=False))
    data = _load(p)
    base = p.parent
    pset = moderator.policies
    done: list[str] = []
    bound = data["policies"]
    for pid in pset.ids:
        if pid not in bound and (only is None or pid in only):
            bound[pid] = {}
            done.append(f"{pid}: bound")
    for pid, spec in list(bound.items()):
        if pid not in pset or (only is not None and pid not in only):
            continue
        spec = bound[pid] = spec or {}
        pol = pset[pid]
        if spec.get("version") != pol.version:
            done.append(f"{pid}: version {spec.get('version')} -> {pol.version}")
            spec["version"] = pol.version
        fp = moderator.fingerprint([pid])
        llm = spec.setdefault("llm", {})
        if llm.get("fingerprint") != fp:
            done.append(f"{pid}: prompt fingerprint -> {fp}")
            llm["fingerprint"] = fp
        routes = spec.setdefault("escalation", [])
        crits = {x.id: x for x in pol.escalation}
        kept = [r for r in routes if "criterion" not in r or r["criterion"] in crits]
        if len(kept) != len(routes):
            done.append(f"{pid}: removed routes of deleted criteria")
        for r in kept:
            if "criterion" in r:
                x = crits[r["criterion"]]
                if (r.get("queue"), r.get("sla_hours")) != (x.queue, x.sla_hours):
                    r["queue"], r["sla_hours"] = x.queue, x.sla_hours
                    done.append(f"{pid}: route {x.id} -> {x.queue}")
        routed = {r.get("criterion") for r in kept}
        for x in pol.escalation:
            if x.id not in routed:
                kept.append({"criterion": x.id, "queue": x.queue, "sla_hours": x.sla_hours})
                done.append(f"{pid}: routed {x.id} -> {x.queue}")
        spec["escalation"] = kept
    guide = data.get("guide")
    if guide is not None and only is None:
        gpath = base / guide.setdefault("path", "labeling-guide.md")
        in_guide = pset.select([pid for pid in bound if pid in pset])
        fp = guide_fingerprint(in_guide)
        text = guide_html(in_guide) if gpath.suffix in (".html", ".htm") else guide_markdown(in_guide)
        if not gpath.is_file() or fp not in gpath.read_text(encoding="utf-8") or guide.get("fingerprint") != fp:
            gpath.parent.mkdir(parents=True, exist_ok=True)
            gpath.write_text(text, encoding="utf-8")
            guide["fingerprint"] = fp
            done.append(f"guide: exported {gpath} ({fp})")
    tmp = p.with_suffix(".tmp")
    tmp.write_text(
        "# Enforcement manifest: every pathway bound to a policy version (cotmod sync check / update).\n"
        + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    tmp.replace(p)
    remaining = [f for f in check_manifest(p, moderator, selection) if f.fix == "human"]
    return done, remaining


def _check_cascade(path: Path, pid: str, version: str, label_map: dict[str, Any], where: str) -> list[Finding]:
    """A cascade file bound in the manifest: it exists, routes this policy by a label the
    manifest maps to it, and its bands were chosen for the current policy version."""
    from ..engine._cascade import load_cascade

    if not path.exists():
        return [Finding(pid, "classifier", where, f"file {path} does not exist", "human")]
    band = load_cascade(path).get(pid)
    if band is None:
        return [Finding(pid, "classifier", where, f"{path} has no cascade for {pid}", "human")]
    out: list[Finding] = []
    if label_map and label_map.get(band.label) != pid:
        out.append(Finding(pid, "classifier", where, f"the cascade routes {pid} by label {band.label!r}, which the label map does not map to {pid}", "human"))
    if band.policy_version != version:
        out.append(
            Finding(
                pid, "classifier", where,
                f"cascade bands were chosen for {pid} {band.policy_version}, policy is {version}: re-run cotmod eval and "
                "cotmod classifier cascade",
                "human",
            )
        )
    return out
