"""Semantic diff of policy bundles, and the version-bump rules.

Compares two sets of policies (two directories, or two git revisions of the policy directory) by stable
IDs, not by text: policies added/removed; per policy, rules added/removed/reworded/re-tiered,
exceptions, definitions, severity tiers and their actions, escalation criteria, examples, checklist
and summary changes, and decision logic (questions added/removed/reworded, their allowed answers,
and the ``when`` conditions of rules and exceptions). Version rules (semver):

* a changed policy whose version did not change is an error;
* a removed rule or exception, or a rule moved to a milder tier, needs a **major** bump;
* added rules or exceptions, stricter actions, changed definitions, escalation, a question's
  allowed answers, or ``when`` conditions that mean something else need at least a **minor** bump;
* wording-only and order-only changes need at least a **patch** bump; content that changed where
  nothing above looks (an order, a field compared nowhere) is a ``content.changed`` patch, so no
  edit that changes the prompt passes as "unchanged".
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import InputError
from ..policy._lint import load_policies
from ..policy._model import ACTIONS, Policy, PolicySet

__all__ = ["Change", "PolicyDiff", "diff_policies", "is_bare_revision", "load_bundle", "repo_path", "revision_subdir"]

LEVEL = {"patch": 1, "minor": 2, "major": 3}


@dataclass
class Change:
    kind: str  # e.g. rule.added, rule.reworded, severity.action_changed
    id: str
    detail: str
    needs: str  # patch | minor | major
    old: Any = None
    new: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "detail": self.detail, "needs": self.needs, "old": self.old, "new": self.new}


@dataclass
class PolicyDiff:
    policy_id: str
    status: str  # added | removed | changed | unchanged
    old_version: str | None
    new_version: str | None
    changes: list[Change] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def required_bump(self) -> str | None:
        if not self.changes:
            return None
        return max((c.needs for c in self.changes), key=lambda n: LEVEL[n])

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy_id": self.policy_id,
            "status": self.status,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "required_bump": self.required_bump,
            "changes": [c.to_dict() for c in self.changes],
            "errors": self.errors,
        }


def _semver(v: str) -> tuple[int, int, int]:
    core = v.split("-", 1)[0]
    a, b, c = (int(x) for x in core.split("."))
    return a, b, c


def _bump_level(old: str, new: str) -> str | None:
    o, n = _semver(old), _semver(new)
    if n <= o:
        return None
    if n[0] > o[0]:
        return "major"
    if n[1] > o[1]:
        return "minor"
    return "patch"


def _by_id(items: list[Any], key: str = "id") -> dict[str, Any]:
    return {getattr(x, key): x for x in items}


def _when_set(when: Any) -> dict[str, frozenset[str]] | None:
    """A ``when`` as what it means (the engine tests membership): ``{q: a}`` and ``{q: [a]}``,
    answer order, and an empty ``when`` and none read the same."""
    if not when:
        return None
    return {q: frozenset([v] if isinstance(v, str) else v) for q, v in when.items()}


def _diff_one(old: Policy, new: Policy) -> list[Change]:
    ch: list[Change] = []
    if old.title != new.title:
        ch.append(Change("title.changed", new.id, "title reworded", "patch", old.title, new.title))
    if old.summary != new.summary:
        ch.append(Change("summary.changed", new.id, "summary reworded", "patch", old.summary, new.summary))
    # rules
    o, n = _by_id(old.rules), _by_id(new.rules)
    for rid in o.keys() - n.keys():
        ch.append(Change("rule.removed", rid, f"rule {rid} ({o[rid].title}) removed", "major", o[rid].description, None))
    for rid in n.keys() - o.keys():
        ch.append(Change("rule.added", rid, f"rule {rid} ({n[rid].title}) added", "minor", None, n[rid].description))
    for rid in sorted(o.keys() & n.keys()):
        a, b = o[rid], n[rid]
        if a.description != b.description or a.title != b.title:
            ch.append(Change("rule.reworded", rid, f"rule {rid} reworded", "patch", a.description, b.description))
        if a.severity != b.severity:
            try:
                milder = new.severity_rank(b.severity) < old.severity_rank(a.severity)
            except ValueError:
                milder = True
            ch.append(
                Change("rule.severity_changed", rid, f"rule {rid} severity {a.severity} -> {b.severity}", "major" if milder else "minor", a.severity, b.severity)
            )
        if _when_set(a.when) != _when_set(b.when):
            ch.append(Change("rule.when_changed", rid, f"rule {rid}: the decision-logic answers it fires on changed", "minor", a.when, b.when))
    # exceptions
    o, n = _by_id(old.exceptions), _by_id(new.exceptions)
    for eid in o.keys() - n.keys():
        ch.append(Change("exception.removed", eid, f"exception {eid} ({o[eid].title}) removed", "major", o[eid].description, None))
    for eid in n.keys() - o.keys():
        ch.append(Change("exception.added", eid, f"exception {eid} ({n[eid].title}) added", "minor", None, n[eid].description))
    for eid in sorted(o.keys() & n.keys()):
        if o[eid].description != n[eid].description or o[eid].title != n[eid].title:
            ch.append(Change("exception.reworded", eid, f"exception {eid} reworded", "patch", o[eid].description, n[eid].description))
        if _when_set(o[eid].when) != _when_set(n[eid].when):
            ch.append(Change("exception.when_changed", eid, f"exception {eid}: the decision-logic answers it applies on changed", "minor", o[eid].when, n[eid].when))
    # definitions
    o, n = _by_id(old.definitions, "term"), _by_id(new.definitions, "term")
    for t in o.keys() - n.keys():
        ch.append(Change("definition.removed", t, f"definition of {t!r} removed", "minor", o[t].meaning, None))
    for t in n.keys() - o.keys():
        ch.append(Change("definition.added", t, f"definition of {t!r} added", "minor", None, n[t].meaning))
    for t in sorted(o.keys() & n.keys()):
        if o[t].meaning != n[t].meaning:
            ch.append(Change("definition.changed", t, f"definition of {t!r} changed", "minor", o[t].meaning, n[t].meaning))
    # severity tiers and actions
    o, n = _by_id(old.severities), _by_id(new.severities)
    for sid in o.keys() - n.keys():
        ch.append(Change("severity.removed", sid, f"severity tier {sid} removed", "major", o[sid].action, None))
    for sid in n.keys() - o.keys():
        ch.append(Change("severity.added", sid, f"severity tier {sid} added ({n[sid].action})", "minor", None, n[sid].action))
    for sid in sorted(o.keys() & n.keys()):
        a, b = o[sid], n[sid]
        if a.action != b.action:
            milder = ACTIONS.index(b.action) < ACTIONS.index(a.action)
            ch.append(Change("severity.action_changed", sid, f"tier {sid} action {a.action} -> {b.action}", "major" if milder else "minor", a.action, b.action))
        if a.escalate != b.escalate:
            ch.append(Change("severity.escalation_changed", sid, f"tier {sid} escalate {a.escalate} -> {b.escalate}", "minor", a.escalate, b.escalate))
        if a.description != b.description:
            ch.append(Change("severity.reworded", sid, f"tier {sid} reworded", "patch", a.description, b.description))
    # escalation criteria
    o, n = _by_id(old.escalation), _by_id(new.escalation)
    for xid in o.keys() - n.keys():
        ch.append(Change("escalation.removed", xid, f"escalation {xid} removed", "minor", o[xid].when, None))
    for xid in n.keys() - o.keys():
        ch.append(Change("escalation.added", xid, f"escalation {xid} added (queue {n[xid].queue})", "minor", None, n[xid].when))
    for xid in sorted(o.keys() & n.keys()):
        a, b = o[xid], n[xid]
        if (a.when, a.queue, a.sla_hours) != (b.when, b.queue, b.sla_hours):
            ch.append(Change("escalation.changed", xid, f"escalation {xid} changed", "minor", a.model_dump(), b.model_dump()))
    # examples (keyed by text)
    o, n = _by_id(old.examples, "text"), _by_id(new.examples, "text")
    for t in o.keys() - n.keys():
        ch.append(Change("example.removed", t[:60], "example removed", "patch", o[t].model_dump(), None))
    for t in n.keys() - o.keys():
        ch.append(Change("example.added", t[:60], f"example added ({n[t].decision})", "patch", None, n[t].model_dump()))
    for t in sorted(o.keys() & n.keys()):
        if o[t] != n[t]:
            needs = "minor" if o[t].decision != n[t].decision else "patch"
            ch.append(Change("example.changed", t[:60], f"example changed ({o[t].decision} -> {n[t].decision})", needs, o[t].model_dump(), n[t].model_dump()))
    # decision-logic questions (what the model answers and reviewers follow)
    o, n = _by_id(old.questions), _by_id(new.questions)
    for qid in o.keys() - n.keys():
        ch.append(Change("question.removed", qid, f"question {qid} removed", "minor", o[qid].ask, None))
    for qid in n.keys() - o.keys():
        ch.append(Change("question.added", qid, f"question {qid} added", "minor", None, n[qid].ask))
    for qid in sorted(o.keys() & n.keys()):
        a, b = o[qid], n[qid]
        if a.ask != b.ask:
            ch.append(Change("question.reworded", qid, f"question {qid} reworded", "patch", a.ask, b.ask))
        before, after = [x.model_dump() for x in a.answers], [x.model_dump() for x in b.answers]
        if {(x.value, x.evidence) for x in a.answers} != {(x.value, x.evidence) for x in b.answers}:
            ch.append(Change("question.answers_changed", qid, f"question {qid}: allowed answers changed", "minor", before, after))
        elif a.answers != b.answers:  # the same answers, reworded or reordered
            ch.append(Change("question.answers_reworded", qid, f"question {qid}: answers reworded or reordered", "patch", before, after))
    if old.checklist != new.checklist:
        ch.append(Change("checklist.changed", new.id, "reasoning checklist changed", "patch", old.checklist, new.checklist))
    if not ch and old.model_copy(update={"version": new.version}).content_hash() != new.content_hash():
        # what is compared above is unchanged, yet the content is not: an order (rules, tiers,
        # questions, ...) or a field compared nowhere. The prompt and fingerprint changed with it.
        ch.append(Change("content.changed", new.id, "content changed (an order, or a field diff does not compare)", "patch"))
    return ch


def diff_policies(old: PolicySet, new: PolicySet) -> list[PolicyDiff]:
    out: list[PolicyDiff] = []
    for pid in sorted(set(old.ids) | set(new.ids)):
        if pid not in new:
            out.append(PolicyDiff(pid, "removed", old[pid].version, None))
            continue
        if pid not in old:
            out.append(PolicyDiff(pid, "added", None, new[pid].version))
            continue
        a, b = old[pid], new[pid]
        d = PolicyDiff(pid, "unchanged", a.version, b.version, _diff_one(a, b))
        if d.changes:
            d.status = "changed"
            bump = _bump_level(a.version, b.version)
            need = d.required_bump
            assert need is not None
            if bump is None:
                if a.version == b.version:
                    d.errors.append(f"{pid}: content changed but version is still {a.version} (needs a {need} bump)")
                else:
                    d.errors.append(f"{pid}: version went from {a.version} to {b.version} (must increase)")
            elif LEVEL[bump] < LEVEL[need]:
                reasons = [c.detail for c in d.changes if c.needs == need][:3]
                d.errors.append(f"{pid}: {a.version} -> {b.version} is a {bump} bump but the change needs {need} ({'; '.join(reasons)})")
        elif a.version != b.version:
            d.status = "changed"
            if _semver(b.version) < _semver(a.version):  # a version that goes down is an error, content change or not
                d.errors.append(f"{pid}: version went from {a.version} to {b.version} (must increase)")
        out.append(d)
    return out


def _git(repo: str | Path, *args: str, text: bool = True) -> subprocess.CompletedProcess[Any]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=text)


def is_bare_revision(spec: str) -> bool:
    """``spec`` names a git revision without a path (``HEAD~1``, not ``HEAD~1:pol`` nor a directory)."""
    return not Path(spec).exists() and ":" not in spec


def repo_path(path: str | Path, repo: str | Path = ".") -> str | None:
    """``path`` (a file or directory on disk) as a path inside the git repository ``repo``,
    relative to its root and ``/``-separated (``""`` for the root itself); None when ``repo`` is
    not a git work tree or ``path`` is outside it."""
    proc = _git(repo, "rev-parse", "--show-toplevel")
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    try:
        rel = Path(path).resolve().relative_to(Path(proc.stdout.strip()).resolve())
    except ValueError:
        return None
    return "" if rel == Path() else rel.as_posix()


def revision_subdir(
    old: str,
    new: str,
    *,
    repo: str | Path = ".",
    in_use: Callable[[], tuple[Path, str, bool] | None] | None = None,
) -> tuple[str, str]:
    """What a bare revision among OLD and NEW (``REV`` without ``:path``) means: ``(path inside the
    repository, why)``. In order: the path the other argument names (a directory or file inside
    the repository, or the ``:path`` of ``REV:path``); else the policy directory in use
    (``in_use()``: ``(path, description, from_config)``, e.g. the config file's ``guidelines``), which
    must then be inside the repository when it comes from a config file; else ``guidelines``."""
    for other in (old, new):
        if Path(other).exists():
            rel = repo_path(other, repo)
            if rel is not None:
                return rel, f"the path of {other}"
    for other in (old, new):
        if not Path(other).exists() and ":" in other:
            path = other.partition(":")[2]
            if path:
                return path, f"as in {other}"
    used = in_use() if in_use is not None else None
    if used is not None:
        in_use_path, what, from_config = used
        rel = repo_path(in_use_path, repo)
        if rel is not None:
            return rel, f"the policy directory in use, {what}"
        if from_config:
            raise InputError(
                f"the policy directory in use, {what}, is not inside the git repository {repo}: "
                "name the revision's copy as REV:PATH (PATH relative to the repository root)"
            )
    return "guidelines", "the default policy directory"


def load_bundle(spec: str, *, repo: str | Path = ".", subdir: str = "guidelines") -> tuple[PolicySet, str]:
    """Policies from a directory (or file), or from ``REV`` / ``REV:path`` of a git repository
    (``REV`` alone: ``REV:subdir``; ``path`` a directory or one policy file)."""
    p = Path(spec)
    if p.exists():
        return load_policies([p]), str(p)
    rev, sep, path = spec.partition(":")
    if not sep:
        path = subdir
    path = path.strip("/")
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if proc.returncode != 0:
        raise InputError(f"{spec!r} is neither a directory nor a git revision of {repo}")
    label = f"{rev}:{path}"
    kind = _git(repo, "cat-file", "-t", label)
    if kind.returncode != 0 or kind.stdout.strip() not in ("tree", "blob"):
        raise InputError(f"git revision {rev} has no directory {path!r} (name the one to compare: {rev}:PATH)")
    tmp = Path(tempfile.mkdtemp(prefix="cotmod-rev-"))
    if kind.stdout.strip() == "blob":
        names = [(path, Path(path).name)]
    else:
        listing = _git(repo, "ls-tree", "--full-tree", "-z", label)  # "MODE TYPE OBJECT\tNAME" per entry
        entries = [e.split("\t", 1) for e in listing.stdout.split("\0") if "\t" in e]
        names = [(f"{path}/{n}" if path else n, n) for meta, n in entries if meta.split()[1:2] == ["blob"]]
    for git_path, name in names:
        if not name.endswith((".yaml", ".yml")):
            continue
        blob = _git(repo, "show", f"{rev}:{git_path}", text=False)
        if blob.returncode != 0:
            raise InputError(f"git show {rev}:{git_path} failed: {blob.stderr.decode(errors='replace').strip()}")
        (tmp / name).write_bytes(blob.stdout)
    return load_policies([tmp]), label


def changelog_markdown(diffs: list[PolicyDiff], old_label: str, new_label: str) -> str:
    lines = [f"# Policy changelog: {old_label} → {new_label}", ""]
    for d in diffs:
        if d.status == "unchanged":
            continue
        head = {"added": f"added ({d.new_version})", "removed": f"removed (was {d.old_version})"}.get(d.status, f"{d.old_version} → {d.new_version}")
        lines.append(f"## {d.policy_id}: {head}")
        for e in d.errors:
            lines.append(f"- **Version error**: {e}")
        for c in d.changes:
            lines.append(f"- `{c.kind}` {c.detail} *(needs {c.needs})*")
            if c.kind.endswith(("reworded", "changed")) and isinstance(c.old, str) and isinstance(c.new, str):
                lines.append(f"  - before: {c.old}")
                lines.append(f"  - after: {c.new}")
        lines.append("")
    if len(lines) == 2:
        lines.append("No changes.")
    return "\n".join(lines)
