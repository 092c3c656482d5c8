from __future__ import annotations

import inspect
import json

import jsonschema
import pytest

from cotmod import (
    AsyncModerator,
    ConfigError,
    InputError,
    Moderator,
    Settings,
    Verdict,
    verdict_json_schema,
)
from cotmod._verdict import Usage
from cotmod.backends._openai import ChatResult
from cotmod.testing import FakeBackend, decision

from .conftest import HATE_V


def make(backend: FakeBackend, **kw) -> AsyncModerator:
    kw.setdefault("decision_logic", False)  # scripted answers in the rules form
    return AsyncModerator(backend=backend, settings=Settings(**kw))


async def test_valid_answer_gives_derived_verdict() -> None:
    fake = FakeBackend([decision({"hate_speech": ["HATE-1", "HATE-3"]}, confidence=0.8)])
    mod = make(fake)
    v = await mod.moderate({"id": "p1", "text": "some post"}, policies=["hate_speech"])
    assert v.status == "ok" and v.item_id == "p1" and v.violates is True
    d = v.decision("hate_speech")
    # severity is the highest tier among cited rules (HATE-1 high > HATE-3 medium); action from it
    assert d.severity == "high" and d.action == "remove" and v.action == "remove"
    assert d.score == pytest.approx(0.8)
    assert v.policy_versions == {"hate_speech": HATE_V}
    assert v.prompt_fingerprint == mod.fingerprint(["hate_speech"])
    assert v.attempts == 1 and v.reasks == 0 and v.usage.total_tokens > 0
    jsonschema.validate(json.loads(v.model_dump_json()), verdict_json_schema())
    req = fake.history[0]
    assert req.response_format == "json_schema" and req.schema is not None
    # the server gets the schema with violates tied to rule_ids
    assert req.schema["properties"]["decisions"]["properties"]["hate_speech"]["anyOf"][0]["properties"]["violates"] == {"type": "boolean", "const": False}
    assert req.messages[-1]["content"].count("some post") == 1


async def test_critical_tier_escalates_and_reports() -> None:
    fake = FakeBackend([decision({"hate_speech": ["HATE-2"]})])
    v = await make(fake).moderate("x", policies=["hate_speech"])
    d = v.decision("hate_speech")
    assert d.severity == "critical" and d.action == "remove_and_report" and d.escalate and v.escalate


async def test_safe_answer() -> None:
    fake = FakeBackend([decision({"spam_scams": []}, confidence=0.7)])
    v = await make(fake).moderate("hi", policies=["spam_scams"])
    assert v.violates is False and v.action == "allow"
    assert v.decision("spam_scams").score == pytest.approx(0.3)


async def test_invalid_json_is_reasked_with_the_error() -> None:
    fake = FakeBackend(['{"reasoning": ["x"], "decisions": {', decision({"spam_scams": []})])
    v = await make(fake).moderate("hi", policies=["spam_scams"])
    assert v.status == "ok" and v.reasks == 1 and v.attempts == 2
    second = fake.history[1].messages
    assert second[-2] == {"role": "assistant", "content": '{"reasoning": ["x"], "decisions": {'}
    assert "not valid JSON" in second[-1]["content"]
    # usage of both attempts is summed: exactly what the backend reported for each request
    assert v.usage == sum_usage(fake.history, ['{"reasoning": ["x"], "decisions": {', json.dumps(decision({"spam_scams": []}))])


def sum_usage(requests, answers) -> Usage:
    """The usage FakeBackend reports for these requests and answers, summed."""
    from cotmod.prompting._tokens import count_tokens

    total = Usage()
    for req, text in zip(requests, answers, strict=True):
        p = sum(count_tokens(m["content"]) for m in req.messages)
        c = count_tokens(text)
        total.add(Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c))
    return total


async def test_inconsistent_decision_is_reasked() -> None:
    bad = decision({"spam_scams": []})
    bad["decisions"]["spam_scams"]["violates"] = True  # violates with no rule cited
    fake = FakeBackend([bad, decision({"spam_scams": ["SCAM-2"]})])
    v = await make(fake).moderate("win a prize", policies=["spam_scams"])
    assert v.status == "ok" and v.reasks == 1
    assert "rule_ids is empty" in fake.history[1].messages[-1]["content"]


async def test_unknown_rule_and_schema_violation_are_reasked() -> None:
    bad = decision({"spam_scams": ["SCAM-999"]})
    fake = FakeBackend([bad, {"reasoning": [], "decisions": {}}, decision({"spam_scams": []})])
    v = await make(fake, max_reasks=2).moderate("hi", policies=["spam_scams"])
    assert v.status == "ok" and v.reasks == 2
    assert "schema" in fake.history[1].messages[-1]["content"]


async def test_exhausted_reasks_give_error_verdict_never_safe() -> None:
    fake = FakeBackend(["not json", "still not json", "nope"])
    v = await make(fake, max_reasks=2).moderate("hi", policies=["spam_scams"])
    assert v.status == "error" and v.violates is None and v.action is None
    assert v.error is not None and v.error.raw_output == "nope" and v.error.type == "ModelOutputError"
    assert v.attempts == 3 and v.reasks == 2 and len(fake.history) == 3
    jsonschema.validate(json.loads(v.model_dump_json()), verdict_json_schema())


async def test_cut_off_output_is_an_error_to_reask() -> None:
    cut = ChatResult(text='{"reasoning": ["a a a a', finish_reason="length", usage=Usage(total_tokens=5))
    fake = FakeBackend([cut, decision({"spam_scams": []})])
    v = await make(fake).moderate("hi", policies=["spam_scams"])
    assert v.reasks == 1 and "cut off" in fake.history[1].messages[-1]["content"]


async def test_per_policy_makes_one_call_each_combined_one() -> None:
    ids = ["hate_speech", "spam_scams", "self_harm"]
    fake = FakeBackend(default=lambda req: decision({pid: [] for pid in req.schema["properties"]["decisions"]["required"]}))
    v = await make(fake).moderate("hi", policies=ids)
    assert len(fake.history) == 3 and [d.policy_id for d in v.decisions] == ids
    fake2 = FakeBackend(default=lambda req: decision({pid: [] for pid in req.schema["properties"]["decisions"]["required"]}))
    v2 = await make(fake2, strategy="combined").moderate("hi", policies=ids)
    assert len(fake2.history) == 1 and [d.policy_id for d in v2.decisions] == ids
    assert v.prompt_fingerprint != v2.prompt_fingerprint


async def test_bad_input_errors() -> None:
    mod = make(FakeBackend())
    with pytest.raises(InputError, match="empty"):
        await mod.moderate("  ")
    with pytest.raises(InputError, match="bytes"):
        await mod.moderate(b"hi")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        await mod.moderate("hi", policies=["nope"])


async def test_huge_text_is_truncated_visibly() -> None:
    fake = FakeBackend(default=decision({"spam_scams": []}))
    v = await make(fake, max_item_tokens=100).moderate("spam " * 5000, policies=["spam_scams"])
    assert v.truncated is not None and v.truncated.kept_tokens == 100 and v.truncated.item_tokens >= 5000


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        Moderator(backend=FakeBackend(), concurrency=0)
    with pytest.raises(ConfigError):
        Settings.load(concurrency=0)


def test_sync_and_async_twins_have_the_same_methods() -> None:
    def public(cls: type) -> dict[str, object]:
        return {n: v for n, v in inspect.getmembers(cls) if not n.startswith("_")}

    def shape(fn: object) -> list[tuple[str, object, object]]:
        sig = inspect.signature(fn)  # type: ignore[arg-type]
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    renamed = {"aclose": "close"}  # the one method whose name says it is async
    a_members, s_members = public(AsyncModerator), public(Moderator)
    assert {"moderate", "moderate_many", "moderate_stream", "policy_groups", "build_verdict"} <= set(a_members)
    for name, member in a_members.items():
        twin = renamed.get(name, name)
        assert twin in s_members, f"Moderator lacks {twin}"
        if isinstance(member, property):
            assert isinstance(s_members[twin], property), name
            assert (member.fset is None) == (s_members[twin].fset is None), name  # type: ignore[attr-defined]
        elif callable(member):
            assert shape(member) == shape(s_members[twin]), name
    assert shape(AsyncModerator.__init__) == shape(Moderator.__init__)


def test_sync_moderator_works() -> None:
    fake = FakeBackend(default=decision({"spam_scams": ["SCAM-2"]}))
    with Moderator(backend=fake) as mod:
        verdicts = mod.moderate_many(["a", "b", "c"], policies=["spam_scams"])
    assert [v.item_id for v in verdicts] == ["0", "1", "2"]
    assert all(isinstance(v, Verdict) and v.violates for v in verdicts)
    assert fake.closed


def test_logprob_scores_replace_stated_confidence() -> None:
    import math

    from cotmod.prompting._decision import violates_probabilities

    answer = json.dumps(decision({"spam_scams": ["SCAM-2"]}, confidence=0.9))
    # tokens as a llama.cpp server returns them: the "violates" value with its top alternatives
    head, tail = answer.split('"violates": ')
    toks = [{"token": head + '"violates":', "logprob": 0.0, "top_logprobs": []},
            {"token": " true", "logprob": math.log(0.7), "top_logprobs": [{"token": " true", "logprob": math.log(0.7)}, {"token": " false", "logprob": math.log(0.2)}]},
            {"token": tail[len("true"):], "logprob": 0.0, "top_logprobs": []}]
    assert violates_probabilities(["spam_scams"], toks) == [pytest.approx(0.7 / 0.9)]
    fake = FakeBackend([ChatResult(text=answer, finish_reason="stop", logprobs=toks)])
    v = asyncio_run(make(fake, logprobs=True).moderate("win", policies=["spam_scams"]))
    d = v.decision("spam_scams")
    assert d.score_source == "logprobs" and d.score == pytest.approx(0.7 / 0.9) and d.confidence == 0.9
    assert fake.history[0].logprobs is True


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)


async def test_self_consistency_votes_majority_and_share() -> None:
    # votes are told apart by their seed: seeds 0 and 2 say violates, seed 1 says safe
    def by_seed(req):
        return decision({"hate_speech": ["HATE-6"] if req.seed in (0, 2) else []}, reasoning=[f"vote with seed {req.seed}"])

    fake = FakeBackend(default=by_seed)
    mod = make(fake, votes=3, vote_temperature=0.9, concurrency=2)
    v = await mod.moderate("some post", policies=["hate_speech"])
    assert len(fake.history) == 3
    assert sorted(r.seed for r in fake.history) == [0, 1, 2]
    assert {r.temperature for r in fake.history} == {0.9}
    d = v.decision("hate_speech")
    assert v.violates is True and d.rule_ids == ["HATE-6"]
    assert d.score == pytest.approx(2 / 3) and d.score_source == "votes" and d.votes == [2, 1]
    assert v.reasoning == ["vote with seed 0"]  # the first vote on the majority side
    # every vote is counted
    assert v.attempts == 3 and v.usage == sum_usage(fake.history, [json.dumps(by_seed(r)) for r in fake.history])
    # the vote settings are part of the cache key and the manifest's sampling
    assert mod.sampling()["votes"] == 3 and "votes" not in make(FakeBackend()).sampling()

    # a majority for safe; a tie counts as violates (it reaches review, never silently allowed)
    safe = FakeBackend(default=lambda req: decision({"hate_speech": ["HATE-6"] if req.seed == 0 else []}))
    v = await make(safe, votes=3).moderate("x", policies=["hate_speech"])
    assert v.violates is False and v.decision("hate_speech").score == pytest.approx(1 / 3)
    tie = FakeBackend(default=lambda req: decision({"hate_speech": ["HATE-6"] if req.seed == 0 else []}))
    v = await make(tie, votes=2).moderate("x", policies=["hate_speech"])
    assert v.violates is True and v.decision("hate_speech").votes == [1, 1]


async def test_invalid_votes_are_left_out_and_all_invalid_is_an_error() -> None:
    def half_broken(req):
        return "not json" if req.seed == 1 else decision({"spam_scams": []})

    v = await make(FakeBackend(default=half_broken), votes=3, max_reasks=0).moderate("hi", policies=["spam_scams"])
    assert v.status == "ok" and v.decision("spam_scams").votes == [0, 2]
    v = await make(FakeBackend(default="not json"), votes=3, max_reasks=1).moderate("hi", policies=["spam_scams"])
    assert v.status == "error" and v.violates is None and v.attempts == 6 and v.reasks == 3


async def test_votes_respect_the_concurrency_limit() -> None:
    import asyncio

    in_flight = peak = 0

    class Counting(FakeBackend):
        async def complete(self, request):  # type: ignore[override]
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await super().complete(request)
            finally:
                in_flight -= 1

    backend = Counting(default=decision({"spam_scams": []}), delay=0.01)
    mod = make(backend, votes=5, concurrency=2)
    await asyncio.gather(*(mod.moderate(f"item {i}", policies=["spam_scams"]) for i in range(4)))
    assert len(backend.history) == 20 and peak == 2
    with pytest.raises(ConfigError):
        Settings.load(votes=0)
