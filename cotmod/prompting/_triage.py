"""Triage (``Settings.triage``, opt-in): one cheap call selects the policies plausibly at stake.

Before the per-policy calls, the item is sent once with a static system message listing every
policy in play (id, title, summary and the titles of its rules, one line each). The model answers
``{"summary": "<the kind of text, then what it literally says>", "at_stake": {"<id>": "no" | "yes", ...}}``:
the summary first (a short chain of thought that describes the content without judging it), then
"no" or "yes" for every policy in play, in policy order.

The summary starts with the kind of text (a chat message, an advertisement, a prize notice, a
question, an insult, a request for instructions, ...) and may not call the content a threat or a
violation. Asked only for "what the content literally says or asks, to whom", the 1.5B default
model wrote judgements there ("a direct threat to someone's life" for a prize SMS) and then
answered violent_threats "yes" with P ≈ 0.99; spam reached spam_scams for 1 of 12 prize SMS.
Measured alone on a development sample and confirmed on a fresh one (``--dev 2029``, 72 items, all
ten policies, P(yes) ≥ 0.3): harmful items with their own policy picked 0.50 → 0.54, benign items
with nothing picked 0.79 → 0.96 (``benchmarks/results/triage-qwen1.5b-fresh2029-prompts/``). The policies answered "yes" (at most
``max_policies``, in policy order) get their per-policy call; the engine records the others as
triaged out.

Why a yes/no per policy rather than a list of ids: asked for a list, a small model picked the
first policy of the prompt for most items, harmless ones included (Qwen2.5-Coder-1.5B on a
development sample of 40 Jigsaw comments: an insult's own policy among the picks for 3 of 20
insults, nothing picked for 5 of 20 harmless comments); answering each policy in turn, 11 of 20
and 14 of 20 (``benchmarks/bench_triage.py``).

* The prompt is built like the per-policy prompts (:mod:`cotmod.prompting._compiler`): the static
  system message first, byte-identical for every item; the item last, between random per-request
  boundary lines (:func:`content_boundary`), never parsed as template source, truncated to the
  same token budget.
* Templates: ``triage.system.j2`` and ``triage.user.j2`` of the prompts directory, else the
  bundled ones (a custom prompts directory written before triage existed has none); re-asks use
  the directory's ``reask.j2``.
* :func:`parse_triage` validates an answer (jsonschema, then every id must be a policy in play;
  repeated ids are merged). Anything wrong raises :class:`OutputInvalid`, whose message is fed
  back to the model.
* :attr:`TriageCompiler.fingerprint` hashes everything sent besides the item, like
  :attr:`Compiler.fingerprint <cotmod.prompting.Compiler.fingerprint>`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .._exceptions import InputError
from ..policy._model import PolicySet
from ._compiler import (
    REASK_TEMPLATE,
    CompiledPrompt,
    PromptTemplates,
    boundary_lines,
    content_boundary,
    hash_fingerprint,
)
from ._decision import OutputInvalid, ValueSlot, check_schema, extract_json, value_distributions
from ._tokens import count_tokens, token_counter_name, truncate_to_tokens

__all__ = [
    "MAX_SUMMARY_CHARS",
    "TRIAGE_SCHEMA_NAME",
    "TriageAnswer",
    "TriageCompiler",
    "parse_triage",
    "select_by_probability",
    "triage_schema",
    "yes_probabilities",
]

TRIAGE_SYSTEM_TEMPLATE = "triage.system.j2"
TRIAGE_USER_TEMPLATE = "triage.user.j2"
#: the ``json_schema`` name of the triage request (the decision requests use ``cotmod_decision``)
TRIAGE_SCHEMA_NAME = "cotmod_triage"
MAX_SUMMARY_CHARS = 150
TRIAGE_FINGERPRINT_VERSION = "2"
_PROBE_TEXT = "<item text>"
_PROBE_BOUNDARY = "0" * 16


@dataclass(frozen=True)
class TriageAnswer:
    """A valid triage answer: the one-sentence summary and the selected policy ids (in the
    order of the policy set, without repeats); with log-probabilities, the model's probability of
    "yes" for every policy in play (``scores``). ``answers``: the word answered for every policy
    in play ("no" or "yes", in policy order), whatever was selected."""

    summary: str
    policies: list[str]
    scores: dict[str, float] | None = None
    answers: dict[str, str] = field(default_factory=dict)


#: policies the triage call may select at most (Settings.triage_max)
DEFAULT_MAX_POLICIES = 2
#: what the triage call answers for each policy in play
TRIAGE_ANSWERS = ("no", "yes")


def triage_schema(policies: PolicySet, *, limits: bool = True, max_policies: int = DEFAULT_MAX_POLICIES) -> dict[str, Any]:
    """The JSON Schema the triage answer is constrained to (sent as ``response_format``): the
    summary, then ``at_stake`` with "no" or "yes" for every policy in play, in policy order.

    ``limits`` (``Settings.schema_limits``) adds ``maxLength`` to the summary. ``max_policies``
    cannot be said in JSON Schema for an object of answers: :func:`parse_triage` applies it."""
    del max_policies  # applied when parsing
    ids = policies.ids
    summary: dict[str, Any] = {"type": "string"}
    if limits:
        summary["maxLength"] = MAX_SUMMARY_CHARS
    at_stake = {
        "type": "object",
        "properties": {pid: {"type": "string", "enum": list(TRIAGE_ANSWERS)} for pid in ids},
        "required": list(ids),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"summary": summary, "at_stake": at_stake},
        "required": ["summary", "at_stake"],
        "additionalProperties": False,
    }


#: what an answer is validated against: the shape only. Unknown ids get their own re-ask message
#: (naming the valid ones), repeated ids are merged and a long summary is cut for the record, so
#: none of these costs a re-ask.
_PARSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "at_stake": {"type": "object", "additionalProperties": {"type": "string", "enum": list(TRIAGE_ANSWERS)}},
    },
    "required": ["summary", "at_stake"],
    "additionalProperties": False,
}


def _cut(text: str, limit: int = MAX_SUMMARY_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _yes_or_no(head: str) -> tuple[str, ...]:
    """A candidate token counts for "yes" when it starts with "y", for "no" with "n" (any case)."""
    first = head.lstrip('"')[:1].lower()
    return ("yes",) if first == "y" else ("no",) if first == "n" else ()


def yes_probabilities(policy_ids: list[str], logprobs: list[dict[str, Any]] | None) -> dict[str, float] | None:
    """Per policy, the model's probability of answering "yes" in ``at_stake``, read from the top
    log-probabilities of the first token of each answer (a candidate starting with "y" counts for
    yes, with "n" for no; renormalised over the two). The answers are looked for inside
    ``at_stake``, in policy order (:func:`~cotmod.prompting._decision.value_distributions`).
    None unless every policy's answer is found."""
    slots = [
        ValueSlot(keys=("at_stake", pid) if i == 0 else (pid,), values=TRIAGE_ANSWERS, match=_yes_or_no)
        for i, pid in enumerate(policy_ids)
    ]
    dists = value_distributions(slots, logprobs)
    if dists is None:
        return None
    return {pid: d["yes"] for pid, d in zip(policy_ids, dists, strict=True)}


def select_by_probability(
    scores: Mapping[str, float], threshold: float, max_policies: int | None = None, min_policies: int = 0
) -> list[str]:
    """The policies triage selects from its P(yes) ``scores``: those at least ``threshold``,
    most probable first (ties in the order of ``scores``), at most ``max_policies``; when fewer
    than ``min_policies`` reach the threshold, the most probable of the others make up the
    number (``Settings.triage_min``: no item is left without a policy call). The one rule
    :func:`parse_triage` applies and the eval harness re-applies at other thresholds."""
    ranked = sorted(scores, key=lambda p: -scores[p])  # stable: ties keep the order of scores
    chosen = [p for p in ranked if scores[p] >= threshold]
    floor = min(min_policies, max_policies) if max_policies is not None else min_policies
    if len(chosen) < floor:
        chosen = ranked[:floor]
    return chosen[:max_policies] if max_policies is not None else chosen


def parse_triage(
    raw: str,
    policies: PolicySet,
    *,
    finish_reason: str | None = None,
    max_policies: int | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    threshold: float | None = None,
    min_policies: int = 0,
) -> TriageAnswer:
    """Validate a triage completion against the policies in play. Raises :class:`OutputInvalid`.

    Every policy in play must be answered "no" or "yes" and no other id may appear (each is
    re-asked with the valid ids).

    With ``threshold`` and the completion's ``logprobs`` (see :func:`yes_probabilities`), a
    policy is selected when its probability of "yes" is at least ``threshold`` (whatever the
    sampled word), and ``max_policies`` keeps the most probable; ``min_policies`` makes up that many
    from the most probable when fewer reach the threshold. Otherwise the policies answered
    "yes" are selected and ``max_policies`` keeps the first, in policy order."""
    if finish_reason == "length":
        raise OutputInvalid(
            "the output was cut off by the token limit before the JSON closed; keep the summary to one short sentence"
        )
    data = extract_json(raw)
    check_schema(data, _PARSE_SCHEMA)
    answered: dict[str, str] = data["at_stake"]
    unknown = [p for p in answered if p not in policies.ids]
    if unknown:
        raise OutputInvalid(
            f"at_stake names unknown policy ids {unknown}; answer exactly these ids: {', '.join(policies.ids)}"
        )
    missing = [p for p in policies.ids if p not in answered]
    if missing:
        raise OutputInvalid(f"at_stake must answer every policy \"no\" or \"yes\"; missing: {', '.join(missing)}")
    scores = yes_probabilities(policies.ids, logprobs) if threshold is not None else None
    if scores is not None and threshold is not None:
        chosen = set(select_by_probability({p: scores[p] for p in policies.ids}, threshold, max_policies, min_policies))
        yes = [p for p in policies.ids if p in chosen]
    else:
        yes = [p for p in policies.ids if answered[p] == "yes"]
        yes = yes[:max_policies] if max_policies is not None else yes
    rounded = {p: round(v, 4) for p, v in scores.items()} if scores is not None else None
    return TriageAnswer(
        summary=_cut(str(data["summary"])),
        policies=yes,
        scores=rounded,
        answers={p: answered[p] for p in policies.ids},
    )


class TriageCompiler:
    """Compiles the triage prompt for a policy set; the system message is rendered once.

    ``templates``: the prompts directory (``triage.*.j2`` fall back to the bundled ones when it
    has none). ``max_item_tokens``: the same budget as the per-policy prompts, so triage sees the
    same part of a long item. ``sampling``: what the caller sends with each request besides the
    messages; it only feeds the fingerprint.
    """

    def __init__(
        self,
        policies: PolicySet,
        *,
        templates: PromptTemplates | None = None,
        max_item_tokens: int = 2000,
        schema_limits: bool = True,
        sampling: Mapping[str, Any] | None = None,
        max_policies: int = DEFAULT_MAX_POLICIES,
    ) -> None:
        if len(policies) == 0:
            raise InputError("no policies selected")
        if max_policies < 1:
            raise ValueError("max_policies must be >= 1")
        #: the triage call selects at most this many policies
        self.max_policies = min(max_policies, len(policies))
        if max_item_tokens < 1:
            raise ValueError("max_item_tokens must be >= 1")
        self.policies = policies
        self.templates = templates or PromptTemplates()
        self.max_item_tokens = max_item_tokens
        self.schema_limits = schema_limits
        self.request_schema = triage_schema(policies, limits=schema_limits, max_policies=self.max_policies)
        self.schema = _PARSE_SCHEMA
        self.sampling: dict[str, Any] = dict(sampling or {})

    def _templates_for(self, name: str) -> PromptTemplates:
        if (self.templates.directory / name).is_file():
            return self.templates
        return _bundled_templates()

    @cached_property
    def system_prompt(self) -> str:
        return self._templates_for(TRIAGE_SYSTEM_TEMPLATE).render(
            TRIAGE_SYSTEM_TEMPLATE,
            policies=list(self.policies),
            max_summary_chars=MAX_SUMMARY_CHARS,
            max_policies=self.max_policies,
        )

    @cached_property
    def prefix_messages(self) -> list[dict[str, str]]:
        """Every message before the item: the system message, the same for every item."""
        return [{"role": "system", "content": self.system_prompt}]

    @cached_property
    def system_tokens(self) -> int:
        return count_tokens(self.system_prompt)

    def _user_message(self, text: str, item_id: str, truncated: bool, boundary: str) -> str:
        content_open, content_close = boundary_lines(boundary)
        return self._templates_for(TRIAGE_USER_TEMPLATE).render(
            TRIAGE_USER_TEMPLATE,
            content=text,
            item_id=item_id,
            truncated=truncated,
            boundary=boundary,
            content_open=content_open,
            content_close=content_close,
        )

    def _request_blob(self) -> dict[str, Any]:
        """Everything a triage request sends besides the item and the sampling settings."""
        return {
            "v": TRIAGE_FINGERPRINT_VERSION,
            "kind": "triage",
            "templates": {
                n: hashlib.sha256(self._templates_for(n).source(n).encode()).hexdigest()
                for n in (TRIAGE_SYSTEM_TEMPLATE, TRIAGE_USER_TEMPLATE)
            }
            | {REASK_TEMPLATE: hashlib.sha256(self.templates.source(REASK_TEMPLATE).encode()).hexdigest()},
            "prefix": self.prefix_messages,
            "item": [self._user_message(_PROBE_TEXT, "item", t, _PROBE_BOUNDARY) for t in (False, True)],
            "reask": self.reask_message("<error>", 2, 3),
            "schema": self.schema,
            "request_schema": self.request_schema,
            "settings": {
                "max_item_tokens": self.max_item_tokens,
                "schema_limits": self.schema_limits,
                "token_counter": token_counter_name(),
                "max_policies": self.max_policies,
            },
        }

    @cached_property
    def fingerprint(self) -> str:
        """Stable hash of everything sent besides the item, and of the expected output, with each
        policy's id, version and content hash: it changes whenever a policy in play changes."""
        blob = self._request_blob() | {
            "policies": [[p.id, p.version, p.content_hash()] for p in self.policies],
            "sampling": self.sampling,
        }
        return hash_fingerprint(blob)

    @cached_property
    def prompt_fingerprint(self) -> str:
        """Stable hash of exactly what a triage request sends besides the item (the rendered
        messages, templates and schemas), without the sampling settings and without the policies'
        content hashes. The triage prompt shows only each policy's id, title, summary and rule
        titles, so an edit anywhere else in a policy (a rule's description, an exception, an
        example, the decision questions, the version) leaves it unchanged. The engine keys cached
        triage answers on it (with the sampling passed to the cache key separately), so a policy
        edit re-asks only that policy's calls, not triage for every item."""
        return hash_fingerprint(self._request_blob())

    def compile(self, text: str, *, item_id: str = "item") -> CompiledPrompt:
        """The triage messages for one item. Each call draws a fresh random content boundary."""
        if not isinstance(text, str):
            raise InputError(f"item {item_id!r}: text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"item {item_id!r}: text is empty")
        kept, n_tokens = truncate_to_tokens(text, self.max_item_tokens)
        truncated = kept != text
        boundary = content_boundary(kept)
        user = self._user_message(kept, item_id, truncated, boundary)
        return CompiledPrompt(
            messages=[*self.prefix_messages, {"role": "user", "content": user}],
            schema=self.schema,
            output_schema=self.request_schema,
            fingerprint=self.fingerprint,
            policies=self.policies,
            item_tokens=n_tokens,
            kept_tokens=min(n_tokens, self.max_item_tokens),
            truncated=truncated,
            prompt_tokens=self.system_tokens + count_tokens(user),
            boundary=boundary,
            content=kept,
        )

    def reask_message(self, error: str, attempt: int, max_attempts: int) -> str:
        return self.templates.render(REASK_TEMPLATE, error=error, attempt=attempt, max_attempts=max_attempts)


@functools.lru_cache(maxsize=1)
def _bundled_templates() -> PromptTemplates:
    return PromptTemplates()
