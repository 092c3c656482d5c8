"""Policy guidelines as data: the model of one policy file and its loader.

A policy file is YAML (one policy per file). Its format is defined by :class:`Policy` and shipped
as JSON Schema (``cotmod schema policy``). Loading keeps YAML line numbers so every problem can
be reported as ``file:line: field: message``; see :mod:`cotmod.policy._lint` for the checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ACTIONS",
    "AnswerOption",
    "Definition",
    "EscalationCriterion",
    "Example",
    "Exception_",
    "Policy",
    "PolicySet",
    "Question",
    "Rule",
    "SeverityTier",
    "When",
]

#: Enforcement actions, from least to most restrictive.
ACTIONS: tuple[str, ...] = (
    "allow",
    "label",
    "limit_reach",
    "age_restrict",
    "remove",
    "remove_and_report",
)
Action = Literal["allow", "label", "limit_reach", "age_restrict", "remove", "remove_and_report"]

_ID = r"^[a-z][a-z0-9_]*$"
_RULE_ID = r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)+$"
_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Definition(_Strict):
    """A term the policy uses, with the meaning enforcement must apply."""

    term: str = Field(min_length=1)
    meaning: str = Field(min_length=1)


#: A rule's condition under decision logic: question id -> the answer (or any of the answers)
#: that meets it. All conditions must hold.
When = dict[str, str | list[str]]

_WHEN_DESCRIPTION = (
    "Decision logic: question id -> the answer, or list of answers, that meets this criterion; every "
    "condition must hold (the policy's `questions` define ids and answers)"
)


class AnswerOption(_Strict):
    """One allowed answer to a decision-logic question."""

    value: str = Field(pattern=_ID, description="The answer as the model writes it, e.g. protected_group")
    meaning: str = Field(min_length=1, description="When to give this answer")
    evidence: bool = Field(
        default=True,
        description="The answer must quote the words of the content it rests on (false for answers "
        "such as 'none' that have nothing to quote)",
    )


class Question(_Strict):
    """A narrow question of a policy's decision logic, answered by the model (and by human
    reviewers: the labeling guide shows the same questions)."""

    id: str = Field(pattern=_ID, description="Stable question id, referred to by rules' `when`")
    ask: str = Field(min_length=1, description="The question, as the model and reviewers read it")
    answers: list[AnswerOption] = Field(min_length=2, description="The allowed answers")

    @property
    def values(self) -> list[str]:
        return [a.value for a in self.answers]

    def option(self, value: str) -> AnswerOption:
        for a in self.answers:
            if a.value == value:
                return a
        raise KeyError(value)


class Rule(_Strict):
    """A VIOLATES criterion. Its ``id`` is stable across versions (e.g. ``HATE-1``)."""

    id: str = Field(pattern=_RULE_ID, description="Stable rule ID, e.g. HATE-1")
    title: str = Field(min_length=1)
    description: str = Field(min_length=1, description="What content violates under this rule")
    severity: str = Field(description="ID of a tier in `severities`")
    when: When | None = Field(default=None, description=_WHEN_DESCRIPTION)


class Exception_(_Strict):
    """A SAFE criterion: content that looks like a violation but is allowed."""

    id: str = Field(pattern=_RULE_ID, description="Stable exception ID, e.g. HATE-S1")
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    when: When | None = Field(default=None, description=_WHEN_DESCRIPTION)


class SeverityTier(_Strict):
    """A severity tier and the enforcement action it triggers. Tiers are listed mildest first."""

    id: str = Field(pattern=_ID)
    description: str = Field(min_length=1)
    action: Action
    escalate: bool = Field(default=False, description="Always send this tier to human review")


class EscalationCriterion(_Strict):
    """When a human must review, and which queue gets it."""

    id: str = Field(pattern=_RULE_ID)
    when: str = Field(min_length=1)
    queue: str = Field(min_length=1)
    sla_hours: float | None = Field(default=None, gt=0)


class ExampleAnswer(_Strict):
    """An example's answer to a decision-logic question, with the words it rests on."""

    answer: str = Field(min_length=1)
    quote: str = Field(default="", description="The example's own words the answer rests on")


class Example(_Strict):
    """A boundary example: text, the expected decision, the rules it shows, and why.

    ``reasoning`` optionally spells out the worked steps, one per checklist question; the
    compiler then shows exactly these steps in the solved example turns (small models copy
    the shape of the reasoning they are shown, so worked steps that name the content's own
    target and words teach them to look at the content instead of echoing a rule).
    """

    text: str = Field(min_length=1)
    decision: Literal["violates", "safe"]
    rule_ids: list[str] = Field(default_factory=list, description="Rules (or exceptions) it shows")
    rationale: str = Field(min_length=1)
    reasoning: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Worked reasoning steps, one per checklist question (the decision step is added)",
    )
    answers: dict[str, ExampleAnswer | str] | None = Field(
        default=None,
        description="Decision logic: the answer to each question (a value, or {answer, quote} where the "
        "answer needs evidence); the decision derived from them must be the example's",
    )


class Policy(_Strict):
    """One moderation policy, as written by a policy author."""

    id: str = Field(pattern=_ID, description="Stable policy ID, e.g. hate_speech")
    title: str = Field(min_length=1)
    version: str = Field(pattern=_SEMVER, description="Semantic version of this policy")
    summary: str = Field(min_length=1, description="What the policy protects and why")
    definitions: list[Definition] = Field(default_factory=list)
    rules: list[Rule] = Field(min_length=1)
    exceptions: list[Exception_] = Field(default_factory=list)
    severities: list[SeverityTier] = Field(min_length=1)
    escalation: list[EscalationCriterion] = Field(default_factory=list)
    examples: list[Example] = Field(default_factory=list)
    checklist: list[str] = Field(min_length=1, description="Ordered reasoning steps")
    questions: list[Question] = Field(
        default_factory=list,
        description="Decision logic (optional): narrow questions the model answers with evidence; rules "
        "and exceptions with `when` are then derived from the answers in code",
    )

    # Where it came from (not part of the file format).
    source: str | None = Field(default=None, exclude=True)

    @field_validator("checklist")
    @classmethod
    def _non_empty_steps(cls, v: list[str]) -> list[str]:
        for i, step in enumerate(v):
            if not step.strip():
                raise ValueError(f"step {i} is empty")
        return v

    # -- derived views -------------------------------------------------------------------------
    @property
    def has_logic(self) -> bool:
        """The policy defines decision logic (questions)."""
        return bool(self.questions)

    def question(self, question_id: str) -> Question:
        for q in self.questions:
            if q.id == question_id:
                return q
        raise KeyError(question_id)

    @property
    def rule_ids(self) -> list[str]:
        return [r.id for r in self.rules]

    @property
    def exception_ids(self) -> list[str]:
        return [e.id for e in self.exceptions]

    @property
    def severity_ids(self) -> list[str]:
        return [s.id for s in self.severities]

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def tier(self, severity: str) -> SeverityTier:
        for s in self.severities:
            if s.id == severity:
                return s
        raise KeyError(severity)

    def severity_rank(self, severity: str) -> int:
        return self.severity_ids.index(severity)

    def content_hash(self) -> str:
        """Hash of the policy's content (not its file path or formatting)."""
        data = self.model_dump(mode="json")
        # decision-logic fields left unset are left out, so hashes of policies without decision
        # logic are what they were before it existed
        if not data.get("questions"):
            data.pop("questions", None)
        for section in ("rules", "exceptions"):
            for entry in data.get(section, []):
                if entry.get("when") is None:
                    entry.pop("when", None)
        for ex in data.get("examples", []):
            if ex.get("answers") is None:
                ex.pop("answers", None)
        blob = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


class PolicySet:
    """An ordered collection of policies with unique IDs."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self._by_id: dict[str, Policy] = {}
        for p in policies:
            if p.id in self._by_id:
                raise ValueError(f"duplicate policy id {p.id!r}")
            self._by_id[p.id] = p

    def __iter__(self) -> Any:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, policy_id: object) -> bool:
        return policy_id in self._by_id

    def __getitem__(self, policy_id: str) -> Policy:
        return self._by_id[policy_id]

    @property
    def ids(self) -> list[str]:
        return list(self._by_id)

    def select(self, ids: str | Iterable[str] | None) -> PolicySet:
        """The policies named (one id or several), in the order given; all when ``None``."""
        if ids is None:
            return self
        if isinstance(ids, str):
            ids = [ids]  # one policy id, not its characters
        out = []
        for pid in dict.fromkeys(ids):
            if pid not in self._by_id:
                known = ", ".join(sorted(self._by_id)) or "none"
                from .._exceptions import ConfigError

                raise ConfigError(f"unknown policy {pid!r} (known: {known})")
            out.append(self._by_id[pid])
        return PolicySet(out)

    def versions(self) -> dict[str, str]:
        return {p.id: p.version for p in self}


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of the guideline file format (what ``cotmod lint`` validates against)."""
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://cotmod.dev/schemas/policy.schema.json"
    schema.get("properties", {}).pop("source", None)
    return schema


def slug_ok(value: str) -> bool:
    return re.match(_ID, value) is not None


