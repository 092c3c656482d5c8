"""Loading and linting guideline files, with ``file:line: field`` for every problem.

Checks, in order:

1. Size (``file: too large`` over 5 MiB), YAML syntax, duplicate keys (which plain YAML loaders
   silently overwrite), and aliases that expand to a huge or recursive document (an "alias
   bomb", see :mod:`cotmod._yamlfile`).
2. The shipped JSON Schema (``cotmod/schemas/policy.schema.json``) via ``jsonschema``: unknown
   fields, missing sections, wrong types, bad IDs and versions.
3. Semantic checks the schema cannot express: duplicate rule/exception/escalation IDs, rules whose
   severity is not a declared tier, examples citing unknown rules, a "violates" example citing no
   rule, a "safe" example citing a VIOLATES rule, duplicate severity tiers, actions that get
   milder as severity rises, a file name that does not match the policy id, duplicate policy ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from .._exceptions import InputError, LintIssue, PolicyError
from .._yamlfile import GuardedLoader, YamlGuardError, read_text_limited, safe_compose
from ._model import ACTIONS, Policy, PolicySet, default_guidelines_dir

__all__ = ["LintReport", "lint_paths", "load_policies", "load_policy_file"]

PathKey = tuple[str | int, ...]
SCHEMA_PATH = Path(__file__).parent.parent / "schemas" / "policy.schema.json"
MIN_EXAMPLES_RECOMMENDED = 4


class _LineLoader(GuardedLoader):
    """A SafeLoader that rejects duplicate keys and alias bombs."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first defined on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _line_map(node: yaml.Node, path: PathKey = (), out: dict[PathKey, int] | None = None) -> dict[PathKey, int]:
    """Map every path in the document (("rules", 0, "id"), ...) to its 1-based line."""
    if out is None:
        out = {}
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[(*path, key)] = k.start_mark.line + 1
            _line_map(v, (*path, key), out)
            out[(*path, key)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out)
    return out


def _line_for(lines: dict[PathKey, int], path: Iterable[str | int]) -> int | None:
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return lines.get(())


def _field(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return data


class LintReport:
    """Errors and warnings from linting one or more files, and the policies that loaded."""

    def __init__(self) -> None:
        self.errors: list[LintIssue] = []
        self.warnings: list[LintIssue] = []
        self.policies: list[Policy] = []
        self.files: list[str] = []
        self.invalid_files: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.files,
            "policies": {p.id: p.version for p in self.policies},
            "invalid_files": self.invalid_files,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
        }


def _lint_one(path: Path, report: LintReport) -> Policy | None:
    name = str(path)
    report.files.append(name)

    def err(line: int | None, field: str, msg: str, code: str) -> None:
        report.errors.append(LintIssue(name, line, field, msg, code))

    def warn(line: int | None, field: str, msg: str, code: str) -> None:
        report.warnings.append(LintIssue(name, line, field, msg, code))

    try:
        raw = read_text_limited(path)
    except InputError as exc:
        err(None, "", str(exc).removeprefix(f"{name}: "), "too-large")
        return None
    except OSError as exc:
        err(None, "", f"cannot read file: {exc.strerror or exc}", "unreadable")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        err(line, "", f"not valid UTF-8 (byte offset {exc.start})", "encoding")
        return None
    try:
        node, data = safe_compose(text, _LineLoader)
    except YamlGuardError as exc:
        err(exc.line, "", exc.message, "yaml-guard")
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        yline = mark.line + 1 if mark else None
        err(yline, "", f"YAML error: {exc.problem or exc}", "yaml")
        return None
    except yaml.YAMLError as exc:
        err(None, "", f"YAML error: {exc}", "yaml")
        return None
    if node is None or not isinstance(data, dict):
        err(1, "", "expected a mapping (id, title, version, rules, ...) at the top level", "structure")
        return None
    lines = _line_map(node)

    # 2. JSON Schema.
    validator = jsonschema.Draft202012Validator(_schema())
    schema_errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    for e in schema_errors:
        path_ = list(e.absolute_path)
        msg = e.message
        if e.validator == "additionalProperties":
            msg = f"unknown field(s): {msg.split('(')[-1].rstrip(')')}"
            code = "unknown-field"
        elif e.validator == "required":
            code = "missing-field"
        else:
            code = "schema"
        err(_line_for(lines, path_), _field(path_), msg, code)
    if schema_errors:
        return None

    try:
        policy = Policy.model_validate({**data, "source": name})
    except ValidationError as exc:  # pragma: no cover - the schema catches these first
        for d in exc.errors():
            loc = [x for x in d["loc"] if isinstance(x, (str, int))]
            err(_line_for(lines, loc), _field(loc), d["msg"], "schema")
        return None

    # 3. Semantic checks.
    if path.stem != policy.id:
        warn(lines.get(("id",)), "id", f"policy id {policy.id!r} differs from file name {path.stem!r}", "file-name")
    seen: dict[str, str] = {}
    sections: list[tuple[str, list[str]]] = [
        ("rules", [r.id for r in policy.rules]),
        ("exceptions", [e.id for e in policy.exceptions]),
        ("escalation", [x.id for x in policy.escalation]),
    ]
    for section, ids in sections:
        for i, item_id in enumerate(ids):
            if item_id in seen:
                err(
                    lines.get((section, i, "id")),
                    f"{section}[{i}].id",
                    f"duplicate ID {item_id!r} (already used in {seen[item_id]})",
                    "duplicate-id",
                )
            else:
                seen[item_id] = f"{section}[{i}]"
    tiers: dict[str, int] = {}
    for i, tier in enumerate(policy.severities):
        if tier.id in tiers:
            err(lines.get(("severities", i, "id")), f"severities[{i}].id", f"duplicate severity tier {tier.id!r}", "duplicate-id")
        tiers[tier.id] = i
    used_tiers = set()
    for i, rule in enumerate(policy.rules):
        if rule.severity not in tiers:
            err(
                lines.get(("rules", i, "severity")),
                f"rules[{i}].severity",
                f"unknown severity {rule.severity!r} (declared: {', '.join(tiers) or 'none'})",
                "unknown-severity",
            )
        used_tiers.add(rule.severity)
    for i, tier in enumerate(policy.severities):
        if tier.id not in used_tiers:
            warn(lines.get(("severities", i, "id")), f"severities[{i}]", f"no rule has severity {tier.id!r}", "unused-severity")
        if tier.action == "allow":
            err(
                lines.get(("severities", i, "action")),
                f"severities[{i}].action",
                "a severity tier of a violation cannot have action 'allow'",
                "action",
            )
    for i in range(1, len(policy.severities)):
        prev, cur = policy.severities[i - 1], policy.severities[i]
        if ACTIONS.index(cur.action) < ACTIONS.index(prev.action):
            err(
                lines.get(("severities", i, "action")),
                f"severities[{i}].action",
                f"action {cur.action!r} of tier {cur.id!r} is milder than {prev.action!r} of the milder tier "
                f"{prev.id!r} (tiers are listed mildest first)",
                "action-order",
            )
    rule_ids, exc_ids = set(policy.rule_ids), set(policy.exception_ids)
    for i, ex in enumerate(policy.examples):
        for j, rid in enumerate(ex.rule_ids):
            where = lines.get(("examples", i, "rule_ids", j)) or lines.get(("examples", i))
            if rid not in rule_ids | exc_ids:
                err(where, f"examples[{i}].rule_ids[{j}]", f"cites unknown rule {rid!r}", "unknown-rule")
            elif ex.decision == "safe" and rid in rule_ids:
                err(where, f"examples[{i}].rule_ids[{j}]", f"a 'safe' example cites VIOLATES rule {rid!r}; cite exceptions only", "example-rule")
            elif ex.decision == "violates" and rid in exc_ids:
                err(where, f"examples[{i}].rule_ids[{j}]", f"a 'violates' example cites exception {rid!r}", "example-rule")
        if ex.decision == "violates" and not ex.rule_ids:
            err(lines.get(("examples", i)), f"examples[{i}].rule_ids", "a 'violates' example must cite at least one rule", "example-rule")
    if len(policy.examples) < MIN_EXAMPLES_RECOMMENDED:
        warn(lines.get(("examples",)) or 1, "examples", f"only {len(policy.examples)} boundary examples; {MIN_EXAMPLES_RECOMMENDED}+ recommended", "few-examples")
    return policy


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml")))
        else:
            out.append(p)
    return out


def lint_paths(paths: Iterable[str | Path] | None = None) -> LintReport:
    """Lint guideline files (or directories of them). Never raises for bad files."""
    report = LintReport()
    files = _expand(paths if paths is not None else [default_guidelines_dir()])
    if not files:
        report.errors.append(LintIssue(str(next(iter(paths or []), "guidelines")), None, "", "no .yaml policy files found", "empty"))
    by_id: dict[str, str] = {}
    for f in files:
        errors_before = len(report.errors)
        policy = _lint_one(f, report)
        if policy is None or len(report.errors) > errors_before:
            # a policy with any error is not valid, even when it parsed
            report.invalid_files.append(str(f))
            continue
        if policy.id in by_id:
            report.errors.append(LintIssue(str(f), 1, "id", f"duplicate policy id {policy.id!r} (also in {by_id[policy.id]})", "duplicate-policy"))
            report.invalid_files.append(str(f))
            continue
        by_id[policy.id] = str(f)
        report.policies.append(policy)
    return report


def load_policies(paths: Iterable[str | Path] | None = None) -> PolicySet:
    """Load and validate policies; raise :class:`PolicyError` listing every error."""
    report = lint_paths(paths)
    if report.errors:
        raise PolicyError(report.errors)
    return PolicySet(report.policies)


def load_policy_file(path: str | Path) -> Policy:
    """Load one policy file (raises :class:`PolicyError`)."""
    policy: Policy = next(iter(load_policies([path])))
    return policy


def default_policies() -> PolicySet:
    """The starter pack shipped in ``guidelines/``."""
    return load_policies([default_guidelines_dir()])
