"""The classifier → LLM → human cascade: a classifier's score routes each item per policy.

A cascade file (YAML, written by ``cotmod classifier cascade`` or by hand) binds a policy to one
classifier label and two score bounds::

    cascade:
      spam_scams:
        label: spam            # the classifier label whose score routes this policy
        allow_below: 0.08      # score <  allow_below: allowed by the classifier, no LLM call
        action_at: 0.97        # score >= action_at:   enforced by the classifier, no LLM call (null: never)
        action: remove         # the action of a classifier enforcement [default: remove]
        policy_version: 1.1.0  # optional: the policy version the bounds were chosen for

Between the bounds the item goes to the LLM chain-of-thought verdict, whose own operating band
(``cotmod tune`` thresholds, when configured) then routes it to auto-action, human review or
allow. Every decision of a policy in the cascade records its ``route`` (``classifier_allow``,
``classifier_action`` or ``llm``) and the ``classifier_score`` it was routed by.

An item carries its scores in its metadata: a map ``scores: {label: x}`` or a field
``score_<label>`` (numbers, or numeric strings as CSV gives them). An item without a score for a
policy's label goes to the LLM (route ``llm``, ``classifier_score`` null): a missing score never
allows or enforces anything by itself. A score that is not a number in [0, 1] is an input error
naming the item and the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .._exceptions import InputError
from .._yamlfile import read_yaml_mapping

__all__ = ["CascadeBand", "Route", "classifier_decision", "item_score", "load_cascade", "route_for", "score_fields"]

Route = Literal["classifier_allow", "classifier_action", "llm"]

class CascadeBand(BaseModel):
    """One policy's place in the cascade: its classifier label and score bounds."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, description="The classifier label whose score routes the policy")
    allow_below: float = Field(ge=0.0, le=1.0, description="Below this score the classifier allows (no LLM call)")
    action_at: float | None = Field(
        ge=0.0, le=1.0, description="At or above this score the classifier enforces (no LLM call); null: never"
    )
    action: Literal["label", "limit_reach", "age_restrict", "remove", "remove_and_report"] = Field(
        default="remove", description="The action of a classifier enforcement"
    )
    policy_version: str | None = Field(default=None, description="The policy version the bounds were chosen for")

    @model_validator(mode="after")
    def _ordered(self) -> CascadeBand:
        if self.action_at is not None and self.action_at < self.allow_below:
            raise ValueError(f"action_at ({self.action_at}) is below allow_below ({self.allow_below})")
        return self


def load_cascade(path: str | Path | None) -> dict[str, CascadeBand]:
    """Read a cascade file (see the module docstring); ``{}`` for None."""
    if path is None:
        return {}
    p = Path(path)
    data = read_yaml_mapping(p, "cascade file").get("cascade")
    if not isinstance(data, dict) or not data:
        raise InputError(f"{p}: expected 'cascade: {{POLICY: {{label: L, allow_below: x, action_at: y}}}}'")
    out: dict[str, CascadeBand] = {}
    for pid, spec in data.items():
        if not isinstance(spec, dict):
            raise InputError(f"{p}: cascade.{pid}: expected a mapping with label, allow_below and action_at")
        try:
            out[str(pid)] = CascadeBand.model_validate(spec)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            where = f"cascade.{pid}" + (f".{field}" if field else "")
            raise InputError(f"{p}: {where}: {err['msg']}") from None
    return out


def score_fields(bands: Mapping[str, CascadeBand]) -> list[str]:
    """The item fields a reader must keep so the cascade can see the scores."""
    return ["scores", *sorted({f"score_{b.label}" for b in bands.values()})]


def item_score(item_id: str, metadata: Mapping[str, Any], label: str) -> float | None:
    """The item's score for ``label`` (``scores.<label>`` or ``score_<label>``), None if absent."""
    raw: Any = None
    field = f"score_{label}"
    scores = metadata.get("scores")
    if isinstance(scores, Mapping) and scores.get(label) not in (None, ""):
        raw, field = scores[label], f"scores.{label}"
    elif metadata.get(field) not in (None, ""):
        raw = metadata[field]
    if raw is None:
        return None
    value: float | None = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InputError(f"item {item_id!r}: field {field}: expected a classifier score from 0 to 1, got {raw!r}")
    return value


def route_for(score: float | None, band: CascadeBand) -> Route:
    """Where a score sends the item (no score: the LLM)."""
    if score is None:
        return "llm"
    if band.action_at is not None and score >= band.action_at:
        return "classifier_action"
    if score < band.allow_below:
        return "classifier_allow"
    return "llm"


def classifier_decision(policy: Any, band: CascadeBand, score: float, route: Route) -> Any:
    """The decision of a policy settled by the classifier (no model call)."""
    from .._verdict import PolicyDecision

    enforce = route == "classifier_action"
    if enforce:
        rationale = f"classifier {band.label} score {score:.3f} >= action_at {band.action_at:g}: enforced by the classifier"
    else:
        rationale = f"classifier {band.label} score {score:.3f} < allow_below {band.allow_below:g}: allowed by the classifier"
    return PolicyDecision(
        policy_id=policy.id,
        policy_version=policy.version,
        rationale=rationale,
        violates=enforce,
        action=band.action if enforce else "allow",
        escalate=False,
        confidence=score if enforce else 1.0 - score,
        score=score,
        score_source="classifier",
        band="auto_action" if enforce else "allow",
        route=route,
        classifier_score=score,
    )

