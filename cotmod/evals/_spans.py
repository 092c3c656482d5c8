"""Span quality: do the words a verdict quotes match the words annotators marked?

Character-level F1 per post as in SemEval-2021 Task 5 (Toxic Spans Detection, Pavlopoulos et
al. 2021): a post's prediction and gold are sets of character offsets; F1 is
``2 |P ∩ G| / (|P| + |G|)``; when the gold is empty, F1 is 1.0 if the prediction is empty too
and 0.0 otherwise; a non-empty gold with an empty prediction scores 0.0. The task's system
score is the mean of the per-post F1 over the posts::

    from cotmod.evals import predicted_spans, span_f1

    span_f1(predicted_spans(verdict), gold_offsets)   # gold_offsets: e.g. [15, 16, 17, 18, 19]

:func:`predicted_spans` reads a verdict's quotes (they carry offsets into the item text when
grounded citations are on, ``evidence=True``): the rule evidence of violating decisions and
the grounded answers of violating decisions judged by decision logic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._verdict import PolicyDecision, Verdict

__all__ = ["predicted_spans", "span_f1", "span_offsets"]

Spans = Iterable[int] | Iterable[tuple[int, int]]


def span_offsets(spans: Spans) -> set[int]:
    """The character offsets of ``spans``: either offsets (ints) or ``(start, end)`` pairs with
    ``end`` exclusive (``text[start:end]``), or a mix of both. Raises ``ValueError`` on a
    negative offset or a pair whose end comes before its start."""
    out: set[int] = set()
    for s in spans:
        if isinstance(s, bool):
            raise ValueError(f"span {s!r} is not an offset or a (start, end) pair")
        if isinstance(s, int):
            if s < 0:
                raise ValueError(f"negative offset {s}")
            out.add(s)
            continue
        if not (isinstance(s, (tuple, list)) and len(s) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in s)):
            raise ValueError(f"span {s!r} is not an offset or a (start, end) pair")
        start, end = s
        if start < 0 or end < start:
            raise ValueError(f"span ({start}, {end}) is not a valid (start, end) pair (end exclusive)")
        out.update(range(start, end))
    return out


def span_f1(pred: Spans, gold: Spans) -> float:
    """Character-level F1 of one post (SemEval-2021 Task 5): both empty → 1.0; exactly one
    empty → 0.0; else ``2 |P ∩ G| / (|P| + |G|)`` over the sets of character offsets."""
    p, g = span_offsets(pred), span_offsets(gold)
    if not g:
        return 1.0 if not p else 0.0
    if not p:
        return 0.0
    return 2 * len(p & g) / (len(p) + len(g))


def _decisions(verdict: Verdict | Mapping[str, Any]) -> list[PolicyDecision]:
    if isinstance(verdict, Verdict):
        return list(verdict.decisions)
    return [PolicyDecision.model_validate(d) for d in verdict.get("decisions", [])]


def predicted_spans(verdict: Verdict | Mapping[str, Any], policies: Sequence[str] | None = None) -> set[int]:
    """The character offsets a verdict marks as violating: over its decisions that violate (of
    ``policies`` only, when given), the spans ``[start, end)`` of

    * each ``evidence`` quote of a cited rule (quotes of exceptions, which say why content is
      safe, are left out), and
    * each ``answers`` quote that was grounded and located (decision logic: the words the
      answers rest on).

    ``verdict`` is a :class:`~cotmod.Verdict` or a verdict line as read from JSON. A verdict
    with no violating decision, an error verdict, or one made with grounded citations off
    (no offsets) gives the empty set."""
    keep = set(policies) if policies is not None else None
    out: set[int] = set()
    for d in _decisions(verdict):
        if not d.violates or (keep is not None and d.policy_id not in keep):
            continue
        exceptions = set(d.exception_ids)
        for e in d.evidence:
            if e.id not in exceptions and e.end > e.start:
                out.update(range(e.start, e.end))
        for a in d.answers:
            if a.grounded and a.start is not None and a.end is not None and a.end > a.start:
                out.update(range(a.start, a.end))
    return out
