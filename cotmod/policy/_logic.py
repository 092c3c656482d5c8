"""What a policy's decision logic decides: which rules and exceptions hold for a set of answers.

Pure policy semantics (no prompt, no model): the engine derives a decision from the model's answers
with these functions (:mod:`cotmod.prompting._logic`), and lint uses them to check that every
example's answers lead to the example's own decision and that every rule can fire.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._model import Policy, When

__all__ = ["fired", "holds", "outcome"]


def holds(when: When | None, answers: Mapping[str, str]) -> bool:
    """Every condition of ``when`` holds for ``answers`` (question id -> answer). A criterion
    without ``when`` never holds under decision logic; a question without a (counted) answer
    meets no condition."""
    if not when:
        return False
    for qid, want in when.items():
        got = answers.get(qid)
        if got is None:
            return False
        if isinstance(want, str):
            if got != want:
                return False
        elif got not in want:
            return False
    return True


def fired(policy: Policy, answers: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(rule ids, exception ids) whose conditions hold for ``answers``, before the exceptions
    override: the policy is violated when the first list is non-empty and the second empty."""
    rules = [r.id for r in policy.rules if holds(r.when, answers)]
    excs = [e.id for e in policy.exceptions if holds(e.when, answers)]
    return rules, excs


def outcome(policy: Policy, answers: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(violated rule ids, applying exception ids): an exception that fires clears the rules."""
    rules, excs = fired(policy, answers)
    return ([] if excs else rules), excs
