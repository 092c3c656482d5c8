"""The public triage call: ``AsyncModerator.triage`` / ``Moderator.triage`` make the triage
call ``moderate`` makes first, alone, and return its outcome."""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

import pytest

from cotmod import AsyncModerator, ConfigError, Item, Moderator, Settings
from cotmod._verdict import Triage
from cotmod.backends._openai import ChatRequest, ChatResult
from cotmod.engine import MemoryCache, TriageOutcome
from cotmod.prompting._triage import TRIAGE_SCHEMA_NAME
from cotmod.testing import FakeBackend, decision

POLICIES = ["hate_speech", "spam_scams", "violent_threats"]
PROBS = {"hate_speech": 0.2, "spam_scams": 0.9, "violent_threats": 0.3}


def settings(**kw: Any) -> Settings:
    kw.setdefault("decision_logic", False)
    kw.setdefault("triage", True)
    return Settings(**kw)


def is_triage(req: ChatRequest) -> bool:
    return req.schema_name == TRIAGE_SCHEMA_NAME


def canned(p_yes: dict[str, float]) -> ChatResult:
    """A triage answer with its token log-probabilities as llama.cpp streams them: the sampled
    word is "yes" from P(yes) 0.5 up, and each answer's first token has both candidates."""
    words = {p: "yes" if v >= 0.5 else "no" for p, v in p_yes.items()}
    toks: list[dict[str, Any]] = [{"token": '{"summary": "a post", "at_stake": {', "logprob": 0.0}]
    for i, (pid, py) in enumerate(p_yes.items()):
        toks.append({"token": ("" if i == 0 else ", ") + f'"{pid}": "', "logprob": 0.0})
        toks.append({"token": words[pid], "logprob": math.log(max(py, 1 - py)),
                     "top_logprobs": [{"token": "yes", "logprob": math.log(py)}, {"token": "no", "logprob": math.log(1 - py)}]})
        toks.append({"token": '"', "logprob": 0.0})
    toks.append({"token": "}}", "logprob": 0.0})
    text = json.dumps({"summary": "a post", "at_stake": words})
    assert "".join(t["token"] for t in toks) == text
    return ChatResult(text, "stop", model="fake-model", logprobs=toks)


def judge(req: ChatRequest) -> dict[str, Any]:
    """A valid "no rule met" decision for a policy request."""
    assert req.schema is not None
    return decision({pid: [] for pid in req.schema["properties"]["decisions"]["required"]})


def test_sync_and_async_triage_have_the_same_signature() -> None:
    a, s = inspect.signature(AsyncModerator.triage), inspect.signature(Moderator.triage)
    assert list(a.parameters) == list(s.parameters) == ["self", "item", "policies"]
    assert a == s and a.return_annotation == "TriageOutcome"
    assert a.parameters["policies"].default is None
    assert inspect.iscoroutinefunction(AsyncModerator.triage) and not inspect.iscoroutinefunction(Moderator.triage)


def test_triage_selects_by_the_probability_of_yes_and_makes_no_policy_call() -> None:
    fake = FakeBackend(default=lambda req: canned(PROBS) if is_triage(req) else judge(req))
    with Moderator(backend=fake, settings=settings(logprobs=True, triage_threshold=0.25)) as m:
        out = m.triage("a post about a match", POLICIES)
        assert len(fake.history) == 1 and is_triage(fake.history[0])  # no policy call
        # the same call moderate() makes first, and the record its verdict carries
        v = m.moderate("a post about a match", POLICIES)
    assert isinstance(out, TriageOutcome)
    # "no" was sampled for violent_threats at P(yes) 0.3: the 0.25 threshold selects it anyway
    assert out.selected == ["spam_scams", "violent_threats"]
    assert out.scores == PROBS and out.answers == {"hate_speech": "no", "spam_scams": "yes", "violent_threats": "no"}
    assert (out.summary, out.attempts, out.reasks, out.fallback, out.cached) == ("a post", 1, 0, None, False)
    assert out.record(POLICIES) == Triage(
        selected=["spam_scams", "violent_threats"], skipped=["hate_speech"], summary="a post", scores=PROBS
    )
    assert v.triage == out.record(POLICIES)
    triage_requests = [r for r in fake.history if is_triage(r)]
    assert len(triage_requests) == 2  # triage(), then moderate()'s first call
    first, second = triage_requests
    assert first.logprobs is True and first.messages[0] == second.messages[0]  # the same system message


async def test_async_triage_reasks_a_missing_policy_id() -> None:
    answers = [
        {"summary": "a post", "at_stake": {"hate_speech": "no", "spam_scams": "yes"}},
        {"summary": "a post", "at_stake": {"hate_speech": "no", "spam_scams": "yes", "violent_threats": "no"}},
    ]
    fake = FakeBackend(answers)
    mod = AsyncModerator(backend=fake, settings=settings(logprobs=False))
    out = await mod.triage(Item("a post", "x1"), POLICIES)
    assert out.selected == ["spam_scams"] and out.scores is None and out.fallback is None
    assert (out.attempts, out.reasks) == (2, 1)
    assert len(fake.history) == 2 and all(is_triage(r) for r in fake.history)
    reask = fake.history[1].messages
    assert reask[-2] == {"role": "assistant", "content": json.dumps(answers[0])}
    assert reask[-1]["role"] == "user" and "missing: violent_threats" in reask[-1]["content"]
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0  # both calls counted


async def test_triage_output_that_stays_invalid_selects_every_policy_and_is_not_cached() -> None:
    cache = MemoryCache()
    fake = FakeBackend(default="not json")
    mod = AsyncModerator(backend=fake, settings=settings(max_reasks=1), cache=cache)
    out = await mod.triage("a post", POLICIES)
    assert out.selected == POLICIES and out.fallback is not None and "after 2 attempt(s)" in out.fallback
    assert out.answers is None and out.attempts == 2
    # a valid answer is cached, with its words, and the next triage of the item comes from the cache
    fake.default = {"summary": "a post", "at_stake": {"hate_speech": "yes", "spam_scams": "no", "violent_threats": "no"}}
    assert (await mod.triage("a post", POLICIES)).cached is False
    again = await mod.triage("a post", POLICIES)
    assert again.cached and again.attempts == 0 and again.selected == ["hate_speech"]
    assert again.answers == {"hate_speech": "yes", "spam_scams": "no", "violent_threats": "no"}
    assert len(fake.history) == 3


@pytest.mark.parametrize(
    ("kw", "policies", "says"),
    [
        ({"triage": False}, POLICIES, "triage is off"),
        ({}, ["hate_speech"], "one policy"),
        ({"strategy": "combined"}, POLICIES, "'combined'"),
    ],
)
def test_triage_that_does_not_apply_is_a_config_error(kw: dict[str, Any], policies: list[str], says: str) -> None:
    fake = FakeBackend()
    with Moderator(backend=fake, settings=settings(**kw)) as m:
        assert not m.triage_applies(policies)
        with pytest.raises(ConfigError, match=says):
            m.triage("a post", policies)
    assert fake.history == []
