"""The decision schema the model is constrained to, and parsing a completion against it.

* :func:`decision_schema` (per policy set): ``reasoning`` steps first, then per policy the cited
  rule IDs, exceptions, the ``violates`` flag, a confidence and a short rationale. Reasoning comes
  first so constrained decoding produces the chain of thought before the decision.
* :func:`parse_decision` validates a raw completion against the decision schema (jsonschema) and
  cross-checks it against the policies (rule IDs exist, ``violates`` agrees with the cited rules).
  Anything that fails raises :class:`OutputInvalid`, whose message is fed back to the model.
* With ``evidence`` on (opt-in), each decision also carries ``evidence``: per cited rule and
  exception, the exact words of the content that meet it. :func:`parse_decision` given the
  ``content`` grounds each quote (:func:`~cotmod._quotes.find_quote`); an ungrounded
  citation is an :class:`OutputInvalid` naming the id and the quote, or, with
  ``drop_ungrounded=True`` (the last attempt), the citation is dropped, recorded in
  ``PolicyDecision.dropped`` and the decision recomputed from the grounded citations.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

from .._quotes import find_quote
from .._verdict import DroppedCitation, Evidence, PolicyDecision
from ..policy._model import ACTIONS, Policy, PolicySet
from ._logic import parse_logic

__all__ = [
    "OutputInvalid",
    "constrain_decisions",
    "decision_schema",
    "derive_decision",
    "ground_citations",
    "parse_decision",
    "violates_probabilities",
]

MAX_STEP_CHARS = 400
MAX_RATIONALE_CHARS = 400
MAX_CITED = 4
MAX_QUOTE_CHARS = 300
#: one quote per cited rule and exception
MAX_EVIDENCE = 2 * MAX_CITED


class OutputInvalid(ValueError):
    """The model's output is not a valid decision. The message is what the model is told."""


# ---------------------------------------------------------------------------------------------
# The decision schema the model is constrained to.


def _evidence_schema(ids: list[str], limits: bool) -> dict[str, Any]:
    quote: dict[str, Any] = {"type": "string"}
    if limits:  # no minLength here: an empty quote is an ungrounded citation (re-asked, then dropped)
        quote["maxLength"] = MAX_QUOTE_CHARS
    s: dict[str, Any] = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"id": {"type": "string", "enum": ids}, "quote": quote},
            "required": ["id", "quote"],
            "additionalProperties": False,
        },
    }
    if limits:
        s["maxItems"] = MAX_EVIDENCE
    return s


def _policy_decision_schema(policy: Policy, limits: bool, evidence: bool = False) -> dict[str, Any]:
    def arr(enum: list[str]) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "array", "items": {"type": "string", "enum": enum}}
        if limits:
            s["maxItems"] = MAX_CITED
        return s

    rationale: dict[str, Any] = {"type": "string"}
    if limits:
        rationale["maxLength"] = MAX_RATIONALE_CHARS
    props: dict[str, Any] = {
        "rationale": rationale,
        "rule_ids": arr(policy.rule_ids),
        "exception_ids": arr(policy.exception_ids) if policy.exceptions else {"type": "array", "maxItems": 0, "items": {"type": "string"}},
    }
    if evidence:
        props["evidence"] = _evidence_schema([*policy.rule_ids, *policy.exception_ids], limits)
    props |= {
        "violates": {"type": "boolean"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    }
    if policy.escalation:
        props["escalation_ids"] = arr([e.id for e in policy.escalation])
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


def decision_schema(
    policies: PolicySet, *, max_steps: int = 6, limits: bool = True, evidence: bool = False
) -> dict[str, Any]:
    """JSON Schema of the model's output for these policies (reasoning first). ``evidence``:
    each decision also lists ``evidence`` items ``{"id", "quote"}`` (between the cited exception
    IDs and ``violates``)."""
    step: dict[str, Any] = {"type": "string"}
    reasoning: dict[str, Any] = {"type": "array", "items": step}
    if limits:
        step["maxLength"] = MAX_STEP_CHARS
        reasoning["minItems"] = 1
        reasoning["maxItems"] = max_steps
    per_policy = {p.id: _policy_decision_schema(p, limits, evidence) for p in policies}
    return {
        "type": "object",
        "properties": {
            "reasoning": reasoning,
            "decisions": {
                "type": "object",
                "properties": per_policy,
                "required": list(per_policy),
                "additionalProperties": False,
            },
        },
        "required": ["reasoning", "decisions"],
        "additionalProperties": False,
    }


def constrain_decisions(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema sent to the server: ``decision_schema`` with ``violates`` tied to ``rule_ids``.

    Each policy's decision becomes ``anyOf`` two shapes, "no rule cited and violates false" or "at
    least one rule cited and violates true", so a grammar-constrained server (llama.cpp, vLLM,
    OpenAI strict mode) cannot emit a decision the cross-checks would reject: the model reaches
    ``violates`` after ``rule_ids`` and only the consistent value is left. Without this a small
    model writes "No rule is met. Decision: VIOLATES." with ``rule_ids: []``, and re-asks rarely
    change its mind. The verdict is still validated against the plain schema, so a server that
    ignores the schema gets the precise re-ask message instead of an ``anyOf`` error.

    With evidence on, quotes must be non-empty here (``minLength`` 1; the plain schema lets an
    empty quote through to the grounding check), and with no rule cited they can only support
    exceptions.
    """
    out = copy.deepcopy(schema)
    decisions = out["properties"]["decisions"]["properties"]
    for pid, dec in decisions.items():
        none_cited = copy.deepcopy(dec)
        none_cited["properties"]["rule_ids"]["maxItems"] = 0
        none_cited["properties"]["violates"] = {"type": "boolean", "const": False}
        ev = none_cited["properties"].get("evidence")
        if ev is not None:  # no rule cited: quotes can only be for exceptions
            exc_ids = dec["properties"]["exception_ids"].get("items", {}).get("enum", [])
            exc_enum = [i for i in ev["items"]["properties"]["id"]["enum"] if i in exc_ids]
            if exc_enum:
                ev["items"]["properties"]["id"]["enum"] = exc_enum
            else:
                ev["maxItems"] = 0
        some_cited = copy.deepcopy(dec)
        some_cited["properties"]["rule_ids"]["minItems"] = 1
        some_cited["properties"]["violates"] = {"type": "boolean", "const": True}
        for shape in (none_cited, some_cited):
            if "evidence" in shape["properties"]:  # the server cannot write an empty quote
                shape["properties"]["evidence"]["items"]["properties"]["quote"]["minLength"] = 1
        decisions[pid] = {"anyOf": [none_cited, some_cited]}
    return out


_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.Draft202012Validator]] = {}


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """Validators are costly to build; reuse one per schema object."""
    hit = _VALIDATORS.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    v = jsonschema.Draft202012Validator(schema)
    if len(_VALIDATORS) > 256:
        _VALIDATORS.clear()
    _VALIDATORS[id(schema)] = (schema, v)
    return v


_FENCE = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.S)


def extract_json(raw: str) -> Any:
    """Parse JSON from a completion: the whole text, a fenced block, or the outermost braces."""
    text = raw.strip()
    if not text:
        raise OutputInvalid("the output was empty; reply with one JSON object")
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        m = _FENCE.search(text)
        candidates = [m.group(1)] if m else []
        start, end = text.find("{"), text.rfind("}")
        if start != -1 and end > start:
            candidates.append(text[start : end + 1])
        for c in candidates:
            try:
                return json.loads(c)
            except json.JSONDecodeError:
                continue
        raise OutputInvalid(
            f"the output is not valid JSON ({first.msg} at line {first.lineno} column {first.colno}); "
            "reply with one complete JSON object"
        ) from None


def check_schema(data: Any, schema: dict[str, Any]) -> None:
    """Raise :class:`OutputInvalid` naming (up to five) places where ``data`` breaks ``schema``."""
    errors = sorted(_validator(schema).iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        msgs = []
        for e in errors[:5]:
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            msgs.append(f"{where}: {e.message[:200]}")
        raise OutputInvalid("the JSON does not match the required schema: " + "; ".join(msgs))


def derive_decision(
    policy: Policy,
    *,
    rationale: str,
    rule_ids: list[str],
    exception_ids: list[str],
    escalation_ids: list[str],
    confidence: float,
    evidence: list[Evidence] | None = None,
    dropped: list[DroppedCitation] | None = None,
) -> PolicyDecision:
    """The decision from the cited rules: violates iff a rule is cited; severity is the highest
    tier among them, action and escalation that tier's (escalation also when an escalation
    criterion is cited); score is the confidence in "violates"."""
    violates = bool(rule_ids)
    if violates:
        severity: str | None = max((policy.rule(r).severity for r in rule_ids), key=policy.severity_rank)
        tier = policy.tier(severity)  # type: ignore[arg-type]
        action = tier.action
        escalate = tier.escalate or bool(escalation_ids)
    else:
        severity, action, escalate = None, "allow", bool(escalation_ids)
    assert action in ACTIONS
    return PolicyDecision(
        policy_id=policy.id,
        policy_version=policy.version,
        rationale=rationale,
        violates=violates,
        rule_ids=rule_ids,
        exception_ids=exception_ids,
        severity=severity,
        action=action,  # type: ignore[arg-type]
        escalate=escalate,
        escalation_ids=escalation_ids,
        confidence=confidence,
        score=confidence if violates else 1.0 - confidence,
        evidence=evidence or [],
        dropped=dropped or [],
    )


def _show_quote(quote: str, limit: int = 120) -> str:
    q = quote if len(quote) <= limit else quote[: limit - 1] + "…"
    return json.dumps(q, ensure_ascii=False)


def ground_citations(
    policy_id: str, cited: list[str], quotes: list[dict[str, Any]], content: str
) -> tuple[list[Evidence], list[DroppedCitation], list[str]]:
    """Ground the quotes of one decision in ``content``.

    Returns (evidence for the grounded quotes of cited IDs, the cited IDs left without any
    grounded quote, one re-ask message per ungrounded quote or unquoted ID). Quotes for IDs that
    are not cited are ignored (they support no citation)."""
    evidence: list[Evidence] = []
    dropped: list[DroppedCitation] = []
    problems: list[str] = []
    for cid in cited:
        mine = [str(q.get("quote", "")) for q in quotes if q.get("id") == cid]
        grounded = False
        failed: tuple[str, str] | None = None
        for quote in mine:
            span = find_quote(content, quote)
            if span is not None:
                grounded = True
                evidence.append(Evidence(id=cid, quote=quote, start=span[0], end=span[1]))
            elif not quote.strip():
                problems.append(
                    f"{policy_id}: the evidence quote for {cid} is empty; copy the exact words of the content that meet it"
                )
                failed = failed or ("empty_quote", quote)
            else:
                problems.append(
                    f"{policy_id}: the evidence quote for {cid} {_show_quote(quote)} was not found in the content; "
                    "copy the exact words"
                )
                if failed is None or failed[0] == "empty_quote":
                    failed = ("not_found", quote)
        if not mine:
            problems.append(
                f'{policy_id}: {cid} is cited without evidence; add {{"id": "{cid}", "quote": "<the exact words of the '
                f'content that meet it>"}} to evidence, or do not cite {cid}'
            )
            failed = ("no_quote", "")
        if not grounded and failed is not None:
            dropped.append(DroppedCitation(id=cid, quote=failed[1], reason=failed[0]))  # type: ignore[arg-type]
    return evidence, dropped, problems


def parse_decision(
    raw: str,
    policies: PolicySet,
    schema: dict[str, Any],
    *,
    finish_reason: str | None = None,
    content: str | None = None,
    drop_ungrounded: bool = False,
) -> tuple[list[str], list[PolicyDecision]]:
    """Validate a completion; return (reasoning steps, decisions). Raises :class:`OutputInvalid`.

    ``content`` (the item text the model saw): ground the ``evidence`` quotes of decisions that
    have them (evidence on). An ungrounded citation raises :class:`OutputInvalid` naming it,
    unless ``drop_ungrounded``: then the citation is dropped (``PolicyDecision.dropped``) and
    the decision recomputed from the grounded citations. Evidence offsets index ``content``.
    """
    if finish_reason == "length":
        raise OutputInvalid(
            "the output was cut off by the token limit before the JSON closed; "
            "keep reasoning steps short and do not repeat yourself"
        )
    data = extract_json(raw)
    check_schema(data, schema)
    if len(policies) == 1 and "answers" in schema.get("properties", {}):  # decision logic
        policy = next(iter(policies))
        reasoning, decision, ungrounded_answers = parse_logic(
            data, policy, content=content, drop_ungrounded=drop_ungrounded, derive=derive_decision
        )
        if ungrounded_answers and not drop_ungrounded:
            raise OutputInvalid("; ".join(ungrounded_answers))
        return reasoning, [decision]
    problems: list[str] = []
    ungrounded: list[str] = []
    decisions: list[PolicyDecision] = []
    for policy in policies:
        d = data["decisions"][policy.id]
        rule_ids = list(dict.fromkeys(d["rule_ids"]))
        exc_ids = list(dict.fromkeys(d["exception_ids"]))
        unknown = [r for r in rule_ids if r not in policy.rule_ids]
        if unknown:
            problems.append(f"{policy.id}: unknown rule ids {unknown}")
            continue
        violates = bool(d["violates"])
        if violates and not rule_ids:
            problems.append(
                f"{policy.id}: violates is true but rule_ids is empty; cite the VIOLATES rule(s) the "
                "text meets, or set violates to false"
            )
            continue
        if not violates and rule_ids:
            problems.append(
                f"{policy.id}: violates is false but rule_ids cites {rule_ids}; rule_ids lists only "
                "rules the text violates. Set violates to true, or empty rule_ids"
            )
            continue
        evidence: list[Evidence] = []
        dropped: list[DroppedCitation] = []
        if content is not None and "evidence" in d:
            evidence, dropped, missing = ground_citations(policy.id, [*rule_ids, *exc_ids], list(d["evidence"]), content)
            ungrounded.extend(missing)
            gone = {c.id for c in dropped}
            rule_ids = [r for r in rule_ids if r not in gone]
            exc_ids = [e for e in exc_ids if e not in gone]
        decisions.append(
            derive_decision(
                policy,
                rationale=d["rationale"],
                rule_ids=rule_ids,
                exception_ids=exc_ids,
                escalation_ids=list(dict.fromkeys(d.get("escalation_ids", []))),
                confidence=float(d["confidence"]),
                evidence=evidence,
                dropped=dropped,
            )
        )
    if not drop_ungrounded:
        problems.extend(ungrounded)
    if problems:
        raise OutputInvalid("; ".join(problems))
    return [str(s) for s in data["reasoning"]], decisions


# ---------------------------------------------------------------------------------------------
# Reading the model's probabilities of a value (a string, or a boolean) from its tokens' log-probabilities


@dataclass(frozen=True)
class ValueSlot:
    """One value of a completion (a string, or an unquoted boolean) whose probabilities :func:`value_distributions` reads.

    ``keys``: the JSON keys that lead to it, in the order they are written; the value is that of
    the last key, the ones before it are passed on the way (e.g. ``("at_stake", "hate_speech")``
    for the first policy of a triage answer, ``("hate_speech",)`` for the next ones, since the
    scan goes on from where the previous value was read). ``values``: the allowed values.
    ``match``: which allowed values a candidate token counts for, given the token without its
    leading whitespace and opening quote; its probability is split evenly among them."""

    keys: tuple[str, ...]
    values: tuple[str, ...]
    match: Callable[[str], Sequence[str]]


#: characters of text kept, besides the longest key, while looking for a key
_SCAN_KEEP = 200


def _value_head(token: str) -> str:
    """A token as the start of a string value: without leading whitespace and the opening quote."""
    head = token.lstrip()
    return head[1:] if head.startswith('"') else head


def _key_pattern(key: str, value: bool) -> re.Pattern[str]:
    """``"key":`` (whitespace allowed before the colon); for the value's key it must end the text
    (after it, only whitespace and the value's opening quote)."""
    pattern = '"' + re.escape(key) + r'"\s*:'
    return re.compile(pattern + r'\s*"?\s*$' if value else pattern)


def value_distributions(slots: Sequence[ValueSlot], logprobs: list[dict[str, Any]] | None) -> list[dict[str, float]] | None:
    """Per slot, the model's probability of each allowed value, read from the top
    log-probabilities of the first token of the value (renormalised over the allowed values).

    The scan follows the completion's tokens: once the text so far has passed the keys leading
    to the slot's value and ends with its own ``"key":`` (and maybe the opening quote), the next
    token that is not whitespace or the opening quote alone is the value's first token; its
    ``top_logprobs`` (or, without them, the sampled token itself) are the candidates. Slots are
    read in order, each after the previous one. None when a slot's value is not found, or when
    no candidate of its first token counts for an allowed value."""
    if not logprobs:
        return None
    if not slots:
        return []
    plans = [
        ([_key_pattern(k, False) for k in s.keys[:-1]], _key_pattern(s.keys[-1], True)) for s in slots
    ]
    keep = _SCAN_KEEP + max(len(k) for s in slots for k in s.keys) + 4
    out: list[dict[str, float]] = []
    passed = 0  # keys of the current slot passed so far
    text = ""
    armed = False
    for tok in logprobs:
        piece = str(tok.get("token", ""))
        if armed:
            if not _value_head(piece):  # whitespace or the opening quote alone: the value starts next
                continue
            slot = slots[len(out)]
            mass = dict.fromkeys(slot.values, 0.0)
            for cand in tok.get("top_logprobs") or [{"token": piece, "logprob": tok.get("logprob", 0.0)}]:
                matches = [v for v in slot.match(_value_head(str(cand.get("token", "")))) if v in mass]
                if matches:
                    p = math.exp(float(cand.get("logprob", -1e9)))
                    for v in matches:
                        mass[v] += p / len(matches)
            total = sum(mass.values())
            if total <= 0:
                return None
            out.append({v: m / total for v, m in mass.items()})
            if len(out) == len(slots):
                return out
            armed = False
            passed = 0
            text = ""  # the scan goes on from this token (it may carry the next key)
        text += piece
        on_the_way, own = plans[len(out)]
        while passed < len(on_the_way):
            m = on_the_way[passed].search(text)
            if m is None:
                break
            text = text[m.end() :]
            passed += 1
        if passed == len(on_the_way) and own.search(text):
            armed = True
            text = ""
        elif len(text) > keep:
            text = text[-keep:]
    return None


def _true_or_false(head: str) -> tuple[str, ...]:
    """A candidate token of an unquoted JSON boolean: ``t``, ``tr``, ``true`` count for true."""
    t = head.strip().lower()
    if t and t[0] == "t" and "true".startswith(t[:4]):
        return ("true",)
    if t and t[0] == "f" and "false".startswith(t[:5]):
        return ("false",)
    return ()


def violates_probabilities(policy_ids: Sequence[str], logprobs: list[dict[str, Any]] | None) -> list[float] | None:
    """P(violates = true) of each policy of a rules-form answer (``{"decisions": {"<id>":
    {"violates": ...}}}``, the policies in the order written), read by :func:`value_distributions`
    from the top log-probabilities of each ``violates`` value's first token (true vs false);
    None when one of them is not found."""
    slots = [
        ValueSlot(keys=(("decisions",) if i == 0 else ()) + (pid, "violates"), values=("true", "false"), match=_true_or_false)
        for i, pid in enumerate(policy_ids)
    ]
    dists = value_distributions(slots, logprobs)
    return None if dists is None else [d["true"] for d in dists]
