"""Span quality (cotmod.evals span_f1 / predicted_spans): character-level F1 per post as in
SemEval-2021 Task 5, and the offsets a verdict's quotes mark as violating. Expected values are
worked out by hand in the comments."""

from __future__ import annotations

from typing import Any

import pytest

from cotmod._verdict import Answer, Evidence, PolicyDecision, Verdict
from cotmod.evals import predicted_spans, span_f1, span_offsets

# -- span_f1: the SemEval-2021 Task 5 definition ----------------------------------------------


def test_both_empty_is_one_and_one_empty_is_zero() -> None:
    assert span_f1([], []) == 1.0
    assert span_f1(set(), [(0, 0)]) == 1.0  # an empty pair marks nothing
    assert span_f1([3, 4], []) == 0.0  # gold empty, something predicted
    assert span_f1([], [3, 4]) == 0.0  # gold non-empty, nothing predicted


def test_semeval_example_post() -> None:
    # tsd-trial-0: "Because he's a moron and a bigot. ..." gold = "moron" (15-19) + "bigot" (27-31)
    text = "Because he's a moron and a bigot. It's not any more complicated than that."
    gold = [15, 16, 17, 18, 19, 27, 28, 29, 30, 31]
    assert text[15:20] == "moron" and text[27:32] == "bigot"
    assert span_f1(gold, gold) == 1.0
    # predicting only "moron": |P∩G| = 5, |P| = 5, |G| = 10 → 2*5/15 = 2/3
    assert span_f1([(15, 20)], gold) == pytest.approx(2 / 3)
    # "a moron" (13-19): P = 7 offsets, 5 shared → 2*5/(7+10) = 10/17
    assert span_f1([(13, 20)], gold) == pytest.approx(10 / 17)
    # the whole post: |P| = len(text) = 74, 10 shared → 20/84
    assert len(text) == 74
    assert span_f1(range(len(text)), gold) == pytest.approx(20 / 84)
    # disjoint prediction: 0
    assert span_f1([(0, 7)], gold) == 0.0


def test_offsets_and_pairs_mix_and_duplicates_count_once() -> None:
    # pairs are [start, end): (2, 5) = {2, 3, 4}; 4 repeated and (3, 5) overlapping count once
    assert span_offsets([(2, 5), 4, (3, 5)]) == {2, 3, 4}
    # P = {2,3,4}, G = {3,4,5,6} → 2*2/(3+4) = 4/7
    assert span_f1([(2, 5), (3, 5)], [3, 4, 5, 6]) == pytest.approx(4 / 7)
    assert span_f1({1, 2}, [(1, 3)]) == 1.0


@pytest.mark.parametrize("bad", [[-1], [(3, 2)], [(-1, 2)], [(1, 2, 3)], ["a"], [True], [(1.0, 2)]])
def test_invalid_spans_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        span_offsets(bad)


# -- predicted_spans: which quotes count --------------------------------------------------------


def dec(policy: str, violates: bool, **kw: Any) -> PolicyDecision:
    return PolicyDecision(
        policy_id=policy,
        policy_version="1",
        rationale="r",
        violates=violates,
        action="remove" if violates else "allow",
        escalate=False,
        confidence=0.9,
        score=0.9 if violates else 0.1,
        **kw,
    )


def verdict(*decisions: PolicyDecision, status: str = "ok") -> Verdict:
    return Verdict(
        item_id="x",
        status=status,  # type: ignore[arg-type]
        decisions=list(decisions),
        violates=any(d.violates for d in decisions) if status == "ok" else None,
        action=None,
        policy_versions={d.policy_id: "1" for d in decisions},
        prompt_fingerprint="f",
        model="m",
    )


TEXT = "you are a moron and I will find you"


def test_rule_evidence_of_violating_decisions_only() -> None:
    v = verdict(
        dec(
            "harassment_bullying", True, rule_ids=["HB-1"], exception_ids=["HB-X1"],
            evidence=[
                Evidence(id="HB-1", quote="moron", start=10, end=15),
                Evidence(id="HB-X1", quote="you are", start=0, end=7),  # an exception: why it is safe
            ],
        ),
        # not violating: its quotes do not count
        dec("violent_threats", False, evidence=[Evidence(id="VT-X1", quote="find you", start=27, end=35)]),
    )
    assert TEXT[10:15] == "moron"
    assert predicted_spans(v) == set(range(10, 15))


def test_answers_of_violating_decisions_grounded_and_located() -> None:
    v = verdict(
        dec(
            "violent_threats", True, rule_ids=["VT-1"],
            answers=[
                Answer(question="threat", answer="yes", quote="I will find you", start=20, end=35),
                Answer(question="target", answer="yes", quote="you", start=0, end=3),
                Answer(question="ungrounded", answer="yes", quote="kill", grounded=False),  # no offsets
                Answer(question="none", answer="no"),
            ],
        ),
        dec("hate_speech", False, answers=[Answer(question="group", answer="no", quote="moron", start=10, end=15)]),
    )
    assert TEXT[20:35] == "I will find you"
    assert predicted_spans(v) == set(range(20, 35)) | {0, 1, 2}


def test_policies_filter_dict_lines_and_errors() -> None:
    v = verdict(
        dec("harassment_bullying", True, rule_ids=["HB-1"], evidence=[Evidence(id="HB-1", quote="moron", start=10, end=15)]),
        dec("violent_threats", True, rule_ids=["VT-1"], evidence=[Evidence(id="VT-1", quote="I will find you", start=20, end=35)]),
    )
    assert predicted_spans(v, ["violent_threats"]) == set(range(20, 35))
    assert predicted_spans(v, []) == set()
    # a verdict line read from JSON gives the same offsets
    line = v.model_dump(mode="json")
    assert predicted_spans(line) == set(range(10, 15)) | set(range(20, 35))
    # an error verdict has no decisions; a violation without evidence (citations off) marks nothing
    assert predicted_spans(verdict(status="error")) == set()
    assert predicted_spans(verdict(dec("hate_speech", True, rule_ids=["HS-1"]))) == set()


def test_end_to_end_f1_of_a_verdict() -> None:
    # gold "moron" + "find you"; the verdict quotes "a moron" (8-15) → P = 7, G = 5 + 8 = 13, shared 5
    gold = [*range(10, 15), *range(27, 35)]
    v = verdict(dec("harassment_bullying", True, rule_ids=["HB-1"], evidence=[Evidence(id="HB-1", quote="a moron", start=8, end=15)]))
    assert span_f1(predicted_spans(v), gold) == pytest.approx(2 * 5 / (7 + 13))
