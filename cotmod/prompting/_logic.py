"""Policy decision logic: the model answers narrow questions; the decision is derived in code.

A policy may define ``questions`` (each with allowed ``answers``) and give its rules and
exceptions ``when:`` conditions over the answers (``{question: answer}`` or ``{question:
[answers]}``, all conditions must hold). Judged this way, the model never names a rule: per
question it copies the words of the content the answer rests on (``quote``) and picks one allowed
answer. Then, in code:

* a rule *fires* when all its conditions hold; an exception likewise;
* the policy is violated when a rule fires and no exception does (an exception overrides, as in
  the rules form: "violates only if a VIOLATES rule is met and no SAFE exception applies");
  ``rule_ids`` are the rules that fired, ``exception_ids`` the exceptions that fired;
* severity, action and escalation follow from the fired rules exactly as in the rules form
  (:func:`~cotmod.prompting._decision.derive_decision`).

Grounding: an answer whose option has ``evidence: true`` (the default) must quote words that are
in the content (:func:`~cotmod._quotes.find_quote`: whitespace, case and Unicode
normalised). An ungrounded answer is re-asked with the error; on the last attempt it is kept in
the verdict with ``grounded: false`` and counts for nothing: a condition on it does not hold, the
decision is derived from the grounded answers, and the rules and exceptions that fired only
because of it are recorded in ``dropped``. The evidence of a cited rule or exception is the
grounded quotes of the answers its conditions use, with their character offsets.

The request schema sent to the server ties each quote to its answer (when the compiler uses
schema limits): an empty quote can only be followed by an answer that needs no evidence, and a
non-empty quote only by one that does, so a grammar-constrained server cannot answer "protected
group" without quoting one.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._quotes import find_quote
from .._verdict import Answer, DroppedCitation, Evidence, PolicyDecision
from ..policy._logic import outcome
from ..policy._model import Example, ExampleAnswer, Policy, Question, When

__all__ = [
    "answer_distributions",
    "example_logic_answer",
    "logic_request_schema",
    "logic_schema",
    "parse_logic",
    "violation_probability",
]

MAX_ANSWER_QUOTE_CHARS = 200
MAX_LOGIC_RATIONALE_CHARS = 300
#: combinations of answers enumerated for the answer-probability score, at most
MAX_COMBINATIONS = 20000


# ---------------------------------------------------------------------------------------------
# Schemas


def _question_schema(q: Question, limits: bool) -> dict[str, Any]:
    quote: dict[str, Any] = {"type": "string"}
    if limits:
        quote["maxLength"] = MAX_ANSWER_QUOTE_CHARS
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": q.values}, "quote": quote},
        "required": ["answer", "quote"],
        "additionalProperties": False,
    }


def logic_schema(policy: Policy, *, limits: bool = True) -> dict[str, Any]:
    """JSON Schema of the model's output under decision logic: per question (in order) the answer
    then the quote it rests on, then a one-sentence rationale and a confidence.

    Answer first: with the quote first, a grammar-constrained model that had copied any words
    could only go on to an answer that needs evidence, and one that had written an empty quote
    only to one that does not, so the quote decided the answer (insults quoted under "harm" became
    physical harm). Written first, the answer is the model's judgment; the quote then has to
    ground it."""
    rationale: dict[str, Any] = {"type": "string"}
    if limits:
        rationale["maxLength"] = MAX_LOGIC_RATIONALE_CHARS
    qs = {q.id: _question_schema(q, limits) for q in policy.questions}
    return {
        "type": "object",
        "properties": {
            "answers": {"type": "object", "properties": qs, "required": list(qs), "additionalProperties": False},
            "rationale": rationale,
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["answers", "rationale", "confidence"],
        "additionalProperties": False,
    }


def logic_request_schema(policy: Policy, schema: dict[str, Any]) -> dict[str, Any]:
    """The schema sent to the server: each question's quote tied to its answer (an empty quote
    only after an answer that needs no evidence, a non-empty one only after one that does)."""
    out = copy.deepcopy(schema)
    props = out["properties"]["answers"]["properties"]
    for q in policy.questions:
        with_ev = [a.value for a in q.answers if a.evidence]
        without = [a.value for a in q.answers if not a.evidence]
        shapes = []
        base = props[q.id]
        if with_ev:
            s = copy.deepcopy(base)
            s["properties"]["quote"]["minLength"] = 1
            s["properties"]["answer"]["enum"] = with_ev
            shapes.append(s)
        if without:
            s = copy.deepcopy(base)
            s["properties"]["quote"] = {"type": "string", "maxLength": 0}
            s["properties"]["answer"]["enum"] = without
            shapes.append(s)
        if without and q.answers[0].value in without:  # the shape of the first answer first
            shapes.reverse()
        props[q.id] = shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
    return out


# ---------------------------------------------------------------------------------------------
# Parsing


def _answer_value(a: ExampleAnswer | str) -> tuple[str, str]:
    return (a, "") if isinstance(a, str) else (a.answer, a.quote)


def example_logic_answer(policy: Policy, ex: Example, confidence: float) -> dict[str, Any]:
    """The solved answer of a boundary example under decision logic (its ``answers``)."""
    answers = ex.answers or {}
    out: dict[str, Any] = {}
    for q in policy.questions:
        value, quote = _answer_value(answers[q.id]) if q.id in answers else (q.values[-1], "")
        out[q.id] = {"answer": value, "quote": quote}
    return {"answers": out, "rationale": ex.rationale, "confidence": confidence}


def _when_of(policy: Policy, cid: str) -> When:
    for r in policy.rules:
        if r.id == cid:
            return r.when or {}
    for e in policy.exceptions:
        if e.id == cid:
            return e.when or {}
    return {}


def parse_logic(
    data: dict[str, Any], policy: Policy, *, content: str | None, drop_ungrounded: bool, derive: Any
) -> tuple[list[str], PolicyDecision, list[str]]:
    """Turn schema-valid answers into a decision. Returns (reasoning, decision, problems): the
    problems are the ungrounded answers (re-ask messages); the decision already counts them for
    nothing, so the caller re-asks or, on the last attempt (``drop_ungrounded``), keeps it. ``derive`` is
    :func:`~cotmod.prompting._decision.derive_decision` (passed in to keep imports one-way)."""
    raw_answers = data["answers"]
    answers: list[Answer] = []
    counted: dict[str, str] = {}
    claimed: dict[str, str] = {}
    problems: list[str] = []
    failures: dict[str, tuple[str, str]] = {}
    reasoning: list[str] = []
    for q in policy.questions:
        a = raw_answers[q.id]
        value, quote = str(a["answer"]), str(a.get("quote", ""))
        claimed[q.id] = value
        needs = q.option(value).evidence
        span = find_quote(content, quote) if (content is not None and quote.strip()) else None
        grounded = True
        if needs and content is not None:
            if not quote.strip():
                grounded = False
                failures[q.id] = ("empty_quote", quote)
                problems.append(
                    f"{policy.id}: answers/{q.id}: the answer {value!r} needs the exact words of the content it "
                    "rests on in quote, and quote is empty (or give an answer that needs no quote)"
                )
            elif span is None:
                grounded = False
                failures[q.id] = ("not_found", quote)
                shown = quote if len(quote) <= 120 else quote[:119] + "…"
                problems.append(
                    f'{policy.id}: answers/{q.id}: the quote "{shown}" was not found in the content; copy the exact words'
                )
        if grounded:
            counted[q.id] = value
        answers.append(
            Answer(
                question=q.id,
                answer=value,
                quote=quote,
                start=span[0] if span else None,
                end=span[1] if span else None,
                grounded=grounded,
            )
        )
        shown_quote = f' ("{quote}")' if quote.strip() else ""
        reasoning.append(f"{q.id}: {value}{shown_quote}" + ("" if grounded else " [not found in the content]"))
    rule_ids, exc_ids = outcome(policy, counted)
    dropped: list[DroppedCitation] = []
    if failures:
        would_rules, would_excs = outcome(policy, claimed)
        for cid in [*would_rules, *would_excs]:
            if cid in rule_ids or cid in exc_ids:
                continue
            when = _when_of(policy, cid)
            reason, quote = next((failures[qid] for qid in when if qid in failures), ("not_found", ""))
            dropped.append(DroppedCitation(id=cid, quote=quote, reason=reason))  # type: ignore[arg-type]
    by_q = {a.question: a for a in answers}
    evidence: list[Evidence] = []
    for cid in [*rule_ids, *exc_ids]:
        for qid in _when_of(policy, cid):
            a = by_q[qid]
            if a.start is not None and a.end is not None and a.quote.strip():
                evidence.append(Evidence(id=cid, quote=a.quote, start=a.start, end=a.end))
    decision: PolicyDecision = derive(
        policy,
        rationale=str(data["rationale"]),
        rule_ids=rule_ids,
        exception_ids=exc_ids,
        escalation_ids=[],
        confidence=float(data["confidence"]),
        evidence=evidence,
        dropped=dropped,
    )
    decision = decision.model_copy(update={"answers": answers})
    return reasoning, decision, problems


# ---------------------------------------------------------------------------------------------
# A score that ranks: P(violates) under the model's uncertainty about its answers


def _prefix_match(values: Sequence[str]) -> Callable[[str], list[str]]:
    """A candidate token counts for every allowed value it is a prefix of, or that is a prefix of it."""

    def match(head: str) -> list[str]:
        t = head.rstrip('"')
        return [v for v in values if v.startswith(t) or t.startswith(v)] if t else []

    return match


def answer_distributions(policy: Policy, logprobs: list[dict[str, Any]] | None) -> dict[str, dict[str, float]] | None:
    """Per question, the model's probability of each allowed answer, read from the top
    log-probabilities of the first token of each question's ``"answer"`` value (looked for inside
    ``answers``, under each question's key, in question order; see
    :func:`~cotmod.prompting._decision.value_distributions`).

    A candidate token counts for every allowed value it is a prefix of (split evenly when it is a
    prefix of several); probabilities are renormalised over the allowed values. None when the
    answers cannot all be located."""
    # imported here: _decision imports this module (parse_logic) at import time
    from ._decision import ValueSlot, value_distributions

    questions = list(policy.questions)
    slots = [
        ValueSlot(
            keys=("answers", q.id, "answer") if i == 0 else (q.id, "answer"),
            values=tuple(q.values),
            match=_prefix_match(q.values),
        )
        for i, q in enumerate(questions)
    ]
    dists = value_distributions(slots, logprobs)
    if dists is None:
        return None
    return {q.id: d for q, d in zip(questions, dists, strict=True)}


def violation_probability(policy: Policy, dists: Mapping[str, Mapping[str, float]]) -> float:
    """P(violates) = the sum, over combinations of answers, of their probability (answers taken
    as independent) where the derived decision violates. Exact enumeration; questions whose
    distribution is nearly certain (> 0.999) are fixed to keep the product small."""
    fixed: dict[str, str] = {}
    free: list[tuple[str, list[tuple[str, float]]]] = []
    for qid, d in dists.items():
        top = max(d, key=lambda v: d[v])
        if d[top] > 0.999:
            fixed[qid] = top
        else:
            free.append((qid, [(v, p) for v, p in d.items() if p > 1e-4]))
    size = 1
    for _, vs in free:
        size *= len(vs)
    if size > MAX_COMBINATIONS:  # keep the likeliest answers of the widest questions
        free = [(qid, sorted(vs, key=lambda x: -x[1])[:3]) for qid, vs in free]
    total = 0.0
    mass = 0.0
    for combo in itertools.product(*(vs for _, vs in free)):
        p = 1.0
        answers = dict(fixed)
        for (qid, _), (v, pv) in zip(free, combo, strict=True):
            answers[qid] = v
            p *= pv
        mass += p
        if outcome(policy, answers)[0]:
            total += p
    return total / mass if mass > 0 else 0.0
