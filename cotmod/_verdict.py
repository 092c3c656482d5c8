"""Verdicts: what cotmod returns to you (the shared result models every stream reads).

The **Verdict** (pydantic): the decision per policy with severity, action and escalation
*derived from the cited rules* (not free-form), plus provenance (policy versions, prompt
fingerprint, model), usage, latency, transport retries and re-asks. What the model itself must
return (the decision schema) and how its output is parsed live in :mod:`cotmod.prompting`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

__all__ = [
    "DroppedCitation",
    "ErrorInfo",
    "Evidence",
    "PolicyDecision",
    "Triage",
    "Truncation",
    "Usage",
    "Verdict",
    "verdict_json_schema",
]


class Usage(BaseModel):
    """Token usage summed over every attempt (transport retries do not bill; re-asks do)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.cached_prompt_tokens += other.cached_prompt_tokens


class Evidence(BaseModel):
    """A grounded citation: the words of the content that meet a cited rule or exception."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The cited rule or exception ID")
    quote: str = Field(description="The words as the model quoted them")
    start: int = Field(ge=0, description="Offset (characters) of the quoted passage in the item text")
    end: int = Field(ge=0, description="End offset (exclusive): text[start:end] is the passage as written")


class DroppedCitation(BaseModel):
    """A citation that stayed ungrounded after the re-asks, so it does not count."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The rule or exception ID that was cited")
    quote: str = Field(default="", description="The quote the model gave (empty if none)")
    reason: Literal["no_quote", "empty_quote", "not_found"] = Field(
        description="no_quote: cited without a quote; empty_quote: the quote was blank; "
        "not_found: the quote is not in the content (after normalisation)"
    )


class Answer(BaseModel):
    """The model's answer to one question of a policy's decision logic, with its evidence."""

    question: str = Field(description="The question's id")
    answer: str = Field(description="One of the question's allowed answers")
    quote: str = Field(default="", description="The words of the content the answer rests on")
    start: int | None = Field(default=None, ge=0, description="Offset of the quote in the item text")
    end: int | None = Field(default=None, ge=0, description="End offset (exclusive) of the quote")
    grounded: bool = Field(
        default=True,
        description="False when the answer needed a quote and none was found in the content after "
        "the re-asks: the answer then counts for no rule or exception",
    )


class PolicyDecision(BaseModel):
    """The decision for one policy."""

    model_config = ConfigDict(extra="forbid")

    policy_id: str
    policy_version: str
    rationale: str = Field(description="Short justification citing the text")
    violates: bool
    rule_ids: list[str] = Field(default_factory=list, description="VIOLATES rules the text meets")
    exception_ids: list[str] = Field(default_factory=list, description="SAFE exceptions that apply")
    severity: str | None = Field(default=None, description="Highest severity among cited rules")
    action: Literal["allow", "label", "limit_reach", "age_restrict", "remove", "remove_and_report"]
    escalate: bool = Field(description="A human must review")
    escalation_ids: list[str] = Field(default_factory=list)
    confidence: float = Field(ge=0.0, le=1.0, description="The model's stated confidence")
    score: float = Field(
        ge=0.0, le=1.0, description="Probability-like score that the item violates (for thresholds)"
    )
    score_source: Literal["confidence", "logprobs", "votes", "answers", "classifier", "blend"] = Field(
        default="confidence",
        description="Where score comes from: stated confidence, token log-probabilities, the share "
        "of self-consistency votes for violates, the answers' probabilities (decision logic), the "
        "classifier's score (a cascade decision made without the LLM), or (Settings.triage_blend) the "
        "policy's own score blended with triage's probability that the policy is at stake",
    )
    votes: list[int] | None = Field(
        default=None,
        description="Self-consistency tally [violates, safe] over the valid votes (when votes > 1)",
    )
    band: Literal["auto_action", "human_review", "allow"] | None = Field(
        default=None, description="Operating band when thresholds are configured (cotmod tune)"
    )
    evidence: list[Evidence] = Field(
        default_factory=list,
        description="With evidence on: per cited rule and exception, the quoted words and their offsets in the item text",
    )
    dropped: list[DroppedCitation] = Field(
        default_factory=list,
        description="With evidence on: citations left out because they stayed ungrounded after the re-asks "
        "(the decision was recomputed without them)",
    )
    answers: list[Answer] = Field(
        default_factory=list,
        description="With decision logic: the model's answers to the policy's questions, from which the "
        "rules, violates, severity and action were derived",
    )
    triaged_out: bool = Field(
        default=False,
        description="The policy was not judged: triage found it not at stake (the decision is allow)",
    )
    route: Literal["classifier_allow", "classifier_action", "llm"] | None = Field(
        default=None,
        description="With a cascade: who decided. classifier_allow / classifier_action: the classifier's score "
        "was below allow_below / at or above action_at, no LLM call; llm: the LLM verdict decided",
    )
    classifier_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="With a cascade: the classifier score the item was routed by"
    )
    policy_score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="With Settings.triage_blend: the policy's own score before triage's P(yes) was blended in "
        "(0 for a policy triaged out); omitted otherwise",
    )

    @model_serializer(mode="wrap")
    def _omit_empty_evidence(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """With evidence off, ``evidence`` and ``dropped`` are empty and left out, so verdict
        lines stay as they were before the option existed (loading fills the defaults)."""
        data: dict[str, Any] = handler(self)
        for key in ("evidence", "dropped", "answers", "triaged_out", "route", "classifier_score", "policy_score"):
            if data.get(key) is None or (key not in ("classifier_score", "policy_score") and not data.get(key)):
                data.pop(key, None)
        return data


class Truncation(BaseModel):
    item_tokens: int
    kept_tokens: int


class ErrorInfo(BaseModel):
    type: str
    message: str
    raw_output: str | None = None


class Triage(BaseModel):
    """What triage (``Settings.triage``) decided for an item: which policies got their
    per-policy call and which were triaged out. Present only when triage ran (triage on and more
    than one policy group in play)."""

    model_config = ConfigDict(extra="forbid")

    selected: list[str] = Field(default_factory=list, description="Policies judged by their per-policy call")
    skipped: list[str] = Field(
        default_factory=list, description="Policies triaged out: not judged, their decision is allow (triaged_out)"
    )
    summary: str = Field(default="", description="The triage call's one-sentence account of the content")
    fallback: str | None = Field(
        default=None,
        description="Why triage did not narrow the policies (its output stayed invalid after the re-asks, or "
        "its call failed in transport): then every policy was judged; null when triage worked",
    )
    scores: dict[str, float] | None = Field(
        default=None,
        description="With logprobs: the triage call's probability of 'yes' per policy in play (selected when at "
        "least Settings.triage_threshold); omitted without logprobs",
    )

    @model_serializer(mode="wrap")
    def _omit_no_scores(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("scores") is None:
            out.pop("scores", None)
        return out


class Verdict(BaseModel):
    """cotmod's answer for one item. ``status == "error"`` is never a decision."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    status: Literal["ok", "error"]
    reasoning: list[str] = Field(default_factory=list, description="Chain-of-thought steps")
    decisions: list[PolicyDecision] = Field(default_factory=list)
    violates: bool | None = Field(description="Any policy violated; null when status is error")
    action: str | None = Field(description="Most restrictive action; null when status is error")
    escalate: bool | None = None
    policy_versions: dict[str, str]
    prompt_fingerprint: str
    model: str
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0
    attempts: int = Field(default=1, description="Model calls that returned a completion")
    transport_retries: int = 0
    reasks: int = 0
    cache_hits: int = Field(
        default=0, description="Policy groups (and the triage call, with triage on) answered from the result cache"
    )
    truncated: Truncation | None = None
    error: ErrorInfo | None = None
    triage: Triage | None = Field(
        default=None, description="With triage on: the policies selected and triaged out (omitted when triage did not run)"
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="The item's metadata (fields other than id and text), unchanged"
    )
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    cotmod_version: str = ""

    @model_serializer(mode="wrap")
    def _omit_no_triage(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without triage, ``triage`` is None and left out, so verdict lines stay as they were
        before the option existed (loading fills the default)."""
        data: dict[str, Any] = handler(self)
        if data.get("triage") is None:
            data.pop("triage", None)
        return data

    def decision(self, policy_id: str) -> PolicyDecision:
        """The decision for ``policy_id``; a :class:`KeyError` naming it and the policies this
        verdict has decisions for when there is none (another policy, or an error verdict)."""
        for d in self.decisions:
            if d.policy_id == policy_id:
                return d
        present = ", ".join(repr(d.policy_id) for d in self.decisions) or "none"
        status = "" if self.status == "ok" else f"; it is an error verdict (status {self.status!r})"
        raise KeyError(f"verdict {self.item_id!r} has no decision for policy {policy_id!r} (decisions for: {present}{status})")


def verdict_json_schema() -> dict[str, Any]:
    schema = Verdict.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


