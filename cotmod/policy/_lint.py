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
4. Decision logic (``questions`` and ``when``): conditions naming an unknown question or an answer
   the question does not allow, ``when`` without questions, rules that can never fire (no
   ``when``, or an exception applies to every answer combination that meets them), questions no
   rule uses, and examples whose answers are invalid, quote words not in the example, or derive
   a decision other than the example's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from .._config import default_guidelines_dir
from .._exceptions import InputError, LintIssue, PolicyError
from .._quotes import find_quote
from .._yamlfile import GuardedLoader, YamlGuardError, read_text_limited, safe_compose
from ._logic import holds, outcome
from ._model import ACTIONS, Policy, PolicySet

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

    def errors_for(self, file: str) -> list[LintIssue]:
        """The errors reported so far for one file."""
        return [e for e in self.errors if e.file == file]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.files,
            "policies": {p.id: p.version for p in self.policies},
            "invalid_files": self.invalid_files,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
        }


def _lint_one(path: Path, report: LintReport) -> tuple[Policy, int | None] | None:
    """The file's policy and the line of its top-level ``id:`` (None when it did not parse or
    validate); every issue found goes into ``report``."""
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
        elif any(k in ("when", "answers", "value", "answer") for k in path_) and _has_bool(e.instance):
            msg = f"{msg} (YAML reads yes/no/on/off as true/false: quote the answer, e.g. 'yes')"
            code = "schema"
        elif path_ == ["version"] and isinstance(e.instance, (int, float)) and not isinstance(e.instance, bool):
            # version: 1.1 is a YAML float (and 2 an integer), not the string "1.1"
            msg = f'{msg} (YAML reads an unquoted {e.instance!r} as a number: quote it and give all three parts, e.g. version: "1.1.0")'
            code = "schema"
        elif e.validator in ("anyOf", "oneOf") and isinstance(e.validator_value, list):
            allowed = [_describe(sub) for sub in e.validator_value]
            msg = f"{e.instance!r} is not allowed here: expected {' or '.join(allowed)}" if all(allowed) else msg
            code = "schema"
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
    _lint_logic(policy, lines, err, warn, check_examples=not report.errors_for(name))
    if len(policy.examples) < MIN_EXAMPLES_RECOMMENDED:
        warn(lines.get(("examples",)) or 1, "examples", f"only {len(policy.examples)} boundary examples; {MIN_EXAMPLES_RECOMMENDED}+ recommended", "few-examples")
    return policy, lines.get(("id",))


Report = Callable[[int | None, str, str, str], None]
#: answer combinations enumerated to find rules that can never fire, at most
MAX_LOGIC_COMBINATIONS = 200_000


def _lint_logic(policy: Policy, lines: dict[PathKey, int], err: Report, warn: Report, *, check_examples: bool = True) -> None:
    """Decision logic: questions, ``when`` conditions and the examples' answers (the examples
    only when the file has no other error, so one mistake is not reported again through them)."""
    questions = {q.id: q for q in policy.questions}
    for i, q in enumerate(policy.questions):
        if list(questions).count(q.id) > 1 or [x.id for x in policy.questions].index(q.id) != i:
            err(lines.get(("questions", i, "id")), f"questions[{i}].id", f"duplicate question id {q.id!r}", "duplicate-id")
        seen: set[str] = set()
        for j, opt in enumerate(q.answers):
            if opt.value in seen:
                err(
                    lines.get(("questions", i, "answers", j, "value")),
                    f"questions[{i}].answers[{j}].value",
                    f"duplicate answer {opt.value!r} of question {q.id!r}",
                    "duplicate-id",
                )
            seen.add(opt.value)
    criteria = [("rules", i, c.id, c.when) for i, c in enumerate(policy.rules)]
    criteria += [("exceptions", i, c.id, c.when) for i, c in enumerate(policy.exceptions)]
    used: set[str] = set()
    valid = True
    for section, i, cid, when in criteria:
        if when is None:
            continue
        if not questions:
            err(
                lines.get((section, i, "when")),
                f"{section}[{i}].when",
                f"{cid} has `when` but the policy defines no `questions`",
                "logic-undefined",
            )
            valid = False
            continue
        if not when:
            err(lines.get((section, i, "when")), f"{section}[{i}].when", f"{cid}: `when` is empty", "logic-undefined")
            valid = False
        for qid, want in when.items():
            where = lines.get((section, i, "when", qid)) or lines.get((section, i, "when"))
            field = f"{section}[{i}].when.{qid}"
            wq = questions.get(qid)
            if wq is None:
                err(where, field, f"{cid} refers to unknown question {qid!r} (questions: {', '.join(questions)})", "logic-undefined")
                valid = False
                continue
            used.add(qid)
            for v in [want] if isinstance(want, str) else want:
                if v not in wq.values:
                    err(where, field, f"{cid}: {v!r} is not an answer of question {qid!r} (answers: {', '.join(wq.values)})", "logic-undefined")
                    valid = False
    if not questions:
        for i, ex in enumerate(policy.examples):
            if ex.answers is not None:
                err(lines.get(("examples", i, "answers")), f"examples[{i}].answers", "answers need the policy's `questions`", "logic-undefined")
        return
    if not any(r.when for r in policy.rules):
        err(lines.get(("questions",)), "questions", "no rule has `when`: under decision logic nothing can violate", "logic-never-fires")
        return
    for i, q in enumerate(policy.questions):
        if q.id not in used:
            warn(lines.get(("questions", i, "id")), f"questions[{i}]", f"question {q.id!r} is asked but no rule or exception uses it", "logic-unused")
    for i, r in enumerate(policy.rules):
        if r.when is None:
            warn(lines.get(("rules", i, "id")), f"rules[{i}]", f"{r.id} has no `when`: it never fires under decision logic", "logic-never-fires")
    if not valid:
        return
    # rules that can never fire: every combination of answers that meets them also meets an exception
    size = 1
    for q in policy.questions:
        size *= len(q.answers)
    if size <= MAX_LOGIC_COMBINATIONS:
        can_fire: set[str] = set()
        for combo in itertools.product(*(q.values for q in policy.questions)):
            answers = dict(zip(questions, combo, strict=True))
            can_fire.update(outcome(policy, answers)[0])
        for i, r in enumerate(policy.rules):
            if r.when and r.id not in can_fire:
                blockers = [e.id for e in policy.exceptions if e.when and any(holds(r.when, a) and holds(e.when, a) for a in [_witness(policy, r.when)])]
                why = f" (an exception always applies with it: {', '.join(blockers)})" if blockers else ""
                err(lines.get(("rules", i, "when")), f"rules[{i}].when", f"{r.id} can never fire{why}", "logic-never-fires")
    # the examples' answers must be valid and derive the example's decision
    for i, ex in enumerate(policy.examples if check_examples else []):
        if ex.answers is None:
            warn(lines.get(("examples", i)), f"examples[{i}]", "no `answers`: this example is not shown under decision logic", "logic-example")
            continue
        ok = True
        given: dict[str, str] = {}
        for qid, ans in ex.answers.items():
            where = lines.get(("examples", i, "answers", qid)) or lines.get(("examples", i, "answers"))
            field = f"examples[{i}].answers.{qid}"
            value, quote = (ans, "") if isinstance(ans, str) else (ans.answer, ans.quote)
            eq = questions.get(qid)
            if eq is None:
                err(where, field, f"unknown question {qid!r}", "logic-undefined")
                ok = False
                continue
            if value not in eq.values:
                err(where, field, f"{value!r} is not an answer of question {qid!r} (answers: {', '.join(eq.values)})", "logic-undefined")
                ok = False
                continue
            if eq.option(value).evidence and not quote.strip():
                err(where, field, f"the answer {value!r} needs a quote of the example's words", "logic-example")
                ok = False
            elif quote.strip() and find_quote(ex.text, quote) is None:
                err(where, field, f"quote {quote!r} is not in the example's text", "logic-example")
                ok = False
            given[qid] = value
        missing = [qid for qid in questions if qid not in ex.answers]
        if missing:
            err(lines.get(("examples", i, "answers")), f"examples[{i}].answers", f"no answer to question(s) {', '.join(missing)}", "logic-example")
            ok = False
        if not ok:
            continue
        rules, _ = outcome(policy, given)
        derived = "violates" if rules else "safe"
        where = lines.get(("examples", i, "answers"))
        if derived != ex.decision:
            err(where, f"examples[{i}].answers", f"the answers derive {derived.upper()} ({', '.join(rules) or 'no rule'}) but the example is {ex.decision.upper()}", "logic-example")
        elif rules and not set(rules) <= set(ex.rule_ids):
            err(where, f"examples[{i}].answers", f"the answers derive {', '.join(rules)}, not among the example's rule_ids {ex.rule_ids}", "logic-example")


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return False


def _witness(policy: Policy, when: Any) -> dict[str, str]:
    """Answers that meet ``when`` (its first allowed answer per condition; others: first answer)."""
    out = {q.id: q.values[0] for q in policy.questions}
    for qid, want in when.items():
        out[qid] = want if isinstance(want, str) else want[0]
    return out


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml")))
        else:
            out.append(p)
    return out


def _describe(schema: Any) -> str:
    """A short reading of a simple JSON Schema branch ("a number > 0", "null"); "" when it is
    not simple enough to say in a few words (the validator's own message is kept then)."""
    if not isinstance(schema, dict):
        return ""
    kind = schema.get("type")
    # scalar branches only: a mapping or a list can fail on what is inside it, and "expected a
    # mapping" would then mislead (the validator's own message is kept)
    words = {"number": "a number", "integer": "a whole number", "string": "a string", "null": "null (or leave it out)",
             "boolean": "true or false"}
    if not isinstance(kind, str) or kind not in words:
        return ""
    out = words[kind]
    for key, op in (("exclusiveMinimum", ">"), ("minimum", ">="), ("exclusiveMaximum", "<"), ("maximum", "<=")):
        if key in schema:
            out += f" {op} {schema[key]}"
    if "enum" in schema:
        out = "one of " + ", ".join(map(repr, schema["enum"]))
    return out


def lint_paths(paths: str | Path | Iterable[str | Path] | None = None) -> LintReport:
    """Lint guideline files (or directories of them): one path or several. Never raises for bad
    files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]  # one directory, not the characters of its name
    report = LintReport()
    files = _expand(paths if paths is not None else [default_guidelines_dir()])
    if not files:
        report.errors.append(LintIssue(str(next(iter(paths or []), "guidelines")), None, "", "no .yaml policy files found", "empty"))
    by_id: dict[str, str] = {}
    for f in files:
        errors_before = len(report.errors)
        parsed = _lint_one(f, report)
        if parsed is None or len(report.errors) > errors_before:
            # a policy with any error is not valid, even when it parsed
            report.invalid_files.append(str(f))
            continue
        policy, id_line = parsed
        if policy.id in by_id:
            report.errors.append(LintIssue(str(f), id_line, "id", f"duplicate policy id {policy.id!r} (also in {by_id[policy.id]})", "duplicate-policy"))
            report.invalid_files.append(str(f))
            continue
        by_id[policy.id] = str(f)
        report.policies.append(policy)
    return report


def load_policies(paths: str | Path | Iterable[str | Path] | None = None) -> PolicySet:
    """Load and validate policies (one path or several); raise :class:`PolicyError` listing every
    error."""
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
