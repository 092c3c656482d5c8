"""The one token-logprob scanner (``cotmod.prompting._decision.value_distributions``) behind
triage's P(yes) per policy and decision logic's answer distributions."""

from __future__ import annotations

import json
import math
from typing import Any

from cotmod.policy import load_policies
from cotmod.prompting._decision import ValueSlot, value_distributions
from cotmod.prompting._logic import answer_distributions
from cotmod.prompting._triage import yes_probabilities

from .conftest import GUIDELINES


def tok(t: str, *alts: tuple[str, float]) -> dict[str, Any]:
    """A token as a server streams it; ``alts``: its top candidates with their probabilities."""
    out: dict[str, Any] = {"token": t, "logprob": 0.0}
    if alts:
        out["top_logprobs"] = [{"token": a, "logprob": math.log(p)} for a, p in alts]
    return out


YES_NO = ("no", "yes")


def yn(*keys: str) -> ValueSlot:
    return ValueSlot(keys=keys, values=YES_NO, match=lambda h: [v for v in YES_NO if h[:1].lower() == v[0]])


def close(got: list[dict[str, float]] | None, want: list[dict[str, float]]) -> bool:
    return got is not None and len(got) == len(want) and all(
        g.keys() == w.keys() and all(math.isclose(g[v], w[v]) for v in w) for g, w in zip(got, want, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# The scanner


def test_the_opening_quote_in_its_own_token_is_skipped() -> None:
    stream = [tok('{"a": '), tok('"'), tok("yes", ("yes", 0.6), ("no", 0.2)), tok('"}')]
    assert close(value_distributions([yn("a")], stream), [{"no": 0.25, "yes": 0.75}])
    # whitespace alone is skipped too; the quote may also come with the key or with the value
    stream = [tok('{"a":'), tok(" "), tok(' "yes', (' "yes', 0.5), (' "no', 0.5)), tok('"}')]
    assert close(value_distributions([yn("a")], stream), [{"no": 0.5, "yes": 0.5}])
    stream = [tok('{"a":"'), tok("no", ("no", 0.9), ("yes", 0.1)), tok('"}')]
    assert close(value_distributions([yn("a")], stream), [{"no": 0.9, "yes": 0.1}])


def test_a_key_split_across_tokens_is_found() -> None:
    stream = [tok('{"sum'), tok('mary": "x", "'), tok("a"), tok('"'), tok(":"), tok(' "'), tok("y", ("y", 0.3), ("n", 0.7)), tok('"}')]
    assert close(value_distributions([yn("a")], stream), [{"no": 0.7, "yes": 0.3}])
    # a key split inside its name, with whitespace before the colon
    stream = [tok('{"lo'), tok("ng_na"), tok('me" '), tok(': "'), tok("no", ("no", 1.0))]
    assert close(value_distributions([yn("long_name")], stream), [{"no": 1.0, "yes": 0.0}])


def test_without_candidates_the_sampled_token_counts() -> None:
    stream = [tok('{"a": "'), {"token": "yes", "logprob": math.log(0.8)}, tok('"}')]
    assert close(value_distributions([yn("a")], stream), [{"no": 0.0, "yes": 1.0}])
    # an empty candidate list is no list: the sampled token counts
    stream = [tok('{"a": "'), {"token": "no", "logprob": 0.0, "top_logprobs": []}, tok('"}')]
    assert close(value_distributions([yn("a")], stream), [{"no": 1.0, "yes": 0.0}])


def test_no_candidate_mass_on_an_allowed_value_is_none() -> None:
    stream = [tok('{"a": "'), tok("maybe", ("maybe", 0.7), ("perhaps", 0.3)), tok('"}')]
    assert value_distributions([yn("a")], stream) is None
    # one slot without mass spoils the whole reading
    stream = [tok('{"a": "'), tok("yes", ("yes", 1.0)), tok('", "b": "'), tok("?", ("?", 1.0)), tok('"}')]
    assert value_distributions([yn("a"), yn("b")], stream) is None


def test_a_key_never_found_is_none() -> None:
    stream = [tok('{"a": "'), tok("yes", ("yes", 1.0)), tok('"}')]
    assert value_distributions([yn("a"), yn("b")], stream) is None
    assert value_distributions([yn("b")], stream) is None
    # the keys on the way must come first: "a" before "b" is not "b" before "a"
    stream = [tok('{"b": {"x": 1}, "a": {"x": "'), tok("yes", ("yes", 1.0)), tok('"}}')]
    assert value_distributions([yn("a", "b", "x")], stream) is None
    assert close(value_distributions([yn("b", "a", "x")], stream), [{"no": 0.0, "yes": 1.0}])
    assert value_distributions([yn("a")], None) is None and value_distributions([yn("a")], []) is None


def test_slots_are_read_in_order_and_a_candidate_matching_several_values_is_split() -> None:
    values = ("apple", "apricot", "banana")
    slot = ValueSlot(keys=("k",), values=values, match=lambda h: [v for v in values if v.startswith(h)])
    stream = [tok('[{"k": "'), tok("ap", ("ap", 0.5), ("ban", 0.5)), tok('ple"}, {"k": "'), tok("banana", ("banana", 1.0)), tok('"}]')]
    assert close(
        value_distributions([slot, slot], stream),
        [{"apple": 0.25, "apricot": 0.25, "banana": 0.5}, {"apple": 0.0, "apricot": 0.0, "banana": 1.0}],
    )


# ---------------------------------------------------------------------------------------------
# The two readers built on it, where the scanner is more robust than their own loops were


POLICIES = ["hate_speech", "spam_scams", "violent_threats"]


def test_triage_a_value_token_that_carries_the_next_key_is_read() -> None:
    """Regression: the token of an answer may carry what follows it up to the next key's
    opening quote (``yes","``); the old loop dropped that token's text and never found the
    next policy's key, so the scores were lost."""
    stream = [
        tok('{"summary": "a post", "at_stake": {"hate_speech": "'),
        tok('yes","', ("yes", 0.6), ("no", 0.4)),
        tok('spam_scams": "'),
        tok('no","', ("yes", 0.1), ("no", 0.9)),
        tok('violent_threats": "'),
        tok('no"}}', ("yes", 0.3), ("no", 0.7)),
    ]
    got = yes_probabilities(POLICIES, stream)
    assert got is not None
    assert [round(got[p], 6) for p in POLICIES] == [0.6, 0.1, 0.3]


def test_triage_a_policy_named_like_a_top_level_key_is_read_inside_at_stake() -> None:
    """Regression: a policy whose id is ``summary`` was read from the summary's first word (here
    "No", as if the model had answered no) instead of from its answer in ``at_stake``."""
    ids = ["summary", "spam_scams"]
    stream = [
        tok('{"summary": "'),
        tok("No", ("No", 0.9), ("A", 0.1)),
        tok(' threat here.", "at_stake": {"summary": "'),
        tok("yes", ("yes", 0.8), ("no", 0.2)),
        tok('", "spam_scams": "'),
        tok("no", ("yes", 0.25), ("no", 0.75)),
        tok('"}}'),
    ]
    got = yes_probabilities(ids, stream)
    assert got is not None and math.isclose(got["summary"], 0.8) and math.isclose(got["spam_scams"], 0.25)


def test_triage_a_long_policy_id_split_across_tokens_is_found() -> None:
    """Regression: the old loop kept the last 200 characters while looking for a key, so a
    policy id longer than that, split across tokens, was never found."""
    long_id = "policy_" + "x" * 250
    stream = [
        tok('{"summary": "a post", "at_stake": {"'),
        tok(long_id[:240]),
        tok(long_id[240:] + '": "'),
        tok("yes", ("yes", 0.7), ("no", 0.3)),
        tok('"}}'),
    ]
    got = yes_probabilities([long_id], stream)
    assert got is not None and math.isclose(got[long_id], 0.7)


def test_logic_a_question_named_answer_is_read_under_its_own_key() -> None:
    """Regression: with a question whose id is ``answer``, the old loop armed on the question's
    key (``"answer": {``), found no allowed value in ``{`` and gave up."""
    p = load_policies([GUIDELINES])["self_harm"]
    topic, act = p.questions
    p = p.model_copy(update={"questions": [topic.model_copy(update={"id": "answer"}), act]})
    stream = [
        tok('{"answers": {"answer":'),  # the question's key ends a token
        tok(' {"answer": "'),
        tok("none", ("none", 0.6), ("fig", 0.4)),
        tok('", "quote": ""}, "act": {"answer": "'),
        tok("other", ("other", 1.0)),
        tok('", "quote": ""}}, "rationale": "r", "confidence": 0.5}'),
    ]
    assert json.loads("".join(t["token"] for t in stream))["answers"]["answer"]["answer"] == "none"
    got = answer_distributions(p, stream)
    assert got is not None
    assert math.isclose(got["answer"]["none"], 0.6) and math.isclose(got["answer"]["figurative_only"], 0.4)
    assert math.isclose(got["act"]["other"], 1.0)


# ---------------------------------------------------------------------------------------------
# The rules form: P(violates = true) per policy, on the same scanner


def test_rules_form_violates_per_policy_in_written_order() -> None:
    from cotmod.prompting._decision import violates_probabilities

    # the reasoning quotes a policy's key and the word violates (escaped inside the string): not a slot
    head = '{"reasoning": ["the text says \\"spam_scams\\": \\"violates\\": true"], "decisions": {"hate_speech": {"rule_ids": [], "violates":'
    toks = [
        tok(head),
        tok(" fal", (" fal", 0.6), (" tr", 0.3), (" null", 0.1)),
        tok('se}, "spam_scams": {"violates": '),
        tok("t", ("t", 0.8), ("f", 0.2)),
        tok("rue}}}"),
    ]
    got = violates_probabilities(["hate_speech", "spam_scams"], toks)
    assert got is not None and math.isclose(got[0], 0.3 / 0.9) and math.isclose(got[1], 0.8)
    # a policy whose value is not in the completion: no scores at all, never a shifted one
    assert violates_probabilities(["hate_speech", "spam_scams", "self_harm"], toks) is None
    assert violates_probabilities(["hate_speech"], None) is None
