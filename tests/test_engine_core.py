"""Engine hardening: public API for the batch layer, metadata, model names, streaming, the cache
off the event loop and prefix warm-up. No timed assertions: gates are asyncio/threading events."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from typing import Any

import pytest

from cotmod import ConfigError, InputError, Settings, Verdict
from cotmod._exceptions import ServerError
from cotmod.backends._openai import Backend, ChatRequest, ChatResult
from cotmod.engine import AsyncModerator, GroupOutcome, Item, MemoryCache, Moderator, SqliteCache
from cotmod.testing import FakeBackend, decision


def make(backend: Backend, **kw: Any) -> AsyncModerator:
    warm = kw.pop("warm_prefix", True)
    cache = kw.pop("cache", None)
    kw.setdefault("decision_logic", False)  # scripted answers in the rules form
    return AsyncModerator(backend=backend, settings=Settings(**kw), warm_prefix=warm, cache=cache)


def safe_answer(req: ChatRequest) -> dict[str, Any]:
    return decision({pid: [] for pid in group_of(req)})


def group_of(req: ChatRequest) -> tuple[str, ...]:
    assert req.schema is not None
    return tuple(req.schema["properties"]["decisions"]["required"])


async def settle(rounds: int = 50) -> None:
    """Let every runnable task run until it blocks (no wall-clock time involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class GatedBackend(FakeBackend):
    """Each request waits until the test opens the gate of the word in its item text."""

    def __init__(self, words: list[str]) -> None:
        super().__init__(default=safe_answer)
        self.gates = {w: asyncio.Event() for w in words}
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    def word(self, req: ChatRequest) -> str:
        content = req.messages[-1]["content"]
        return next(w for w in self.gates if w in content)

    async def complete(self, request: ChatRequest) -> ChatResult:
        w = self.word(request)
        self.started.append(w)
        try:
            await self.gates[w].wait()
            return await super().complete(request)
        except asyncio.CancelledError:
            self.cancelled.append(w)
            raise
        finally:
            self.finished.append(w)


# -- the public API the batch layer uses ----------------------------------------------------------


async def test_policy_groups_follow_the_strategy() -> None:
    ids = ["hate_speech", "spam_scams"]
    assert make(FakeBackend()).policy_groups(ids) == [("hate_speech",), ("spam_scams",)]
    assert make(FakeBackend(), strategy="combined").policy_groups(ids) == [tuple(ids)]
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        make(FakeBackend()).policy_groups(["nope"])


async def test_wrapped_backend_sees_every_call_and_is_removed_after() -> None:
    fake = FakeBackend(default=safe_answer)
    mod = make(fake)
    seen: list[ChatRequest] = []

    class Recording:
        def __init__(self, inner: Backend) -> None:
            self.inner = inner
            self.model_name = inner.model_name

        async def complete(self, request: ChatRequest) -> ChatResult:
            seen.append(request)
            return await self.inner.complete(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    async with mod.wrapped_backend(Recording) as wrapper:
        assert isinstance(wrapper, Recording) and wrapper.inner is fake
        await mod.moderate("hi", policies=["spam_scams"])
    assert len(seen) == 1
    await mod.moderate("again", policies=["spam_scams"])
    assert len(seen) == 1 and len(fake.history) == 2  # the wrapper is gone, the backend stays
    assert await mod.get_backend() is fake


async def test_concurrency_setter_bounds_requests_in_flight() -> None:
    words = [f"w{i}" for i in range(6)]
    backend = GatedBackend(words)
    mod = make(backend, concurrency=4, warm_prefix=False)
    with pytest.raises(ConfigError, match="concurrency"):
        mod.concurrency = 0
    mod.concurrency = 2
    assert mod.concurrency == 2
    task = asyncio.ensure_future(mod.moderate_many(words, policies=["spam_scams"]))
    await settle()
    assert len(backend.started) == 2
    for w in words:
        backend.gates[w].set()
    verdicts = await task
    assert [v.item_id for v in verdicts] == [str(i) for i in range(6)]


async def test_build_verdict_from_outputs_obtained_elsewhere_matches_a_live_verdict() -> None:
    answers = {"hate_speech": decision({"hate_speech": ["HATE-1"]}), "spam_scams": decision({"spam_scams": []})}
    fake = FakeBackend(default=lambda req: answers[group_of(req)[0]])
    mod = make(fake)
    live = await mod.moderate({"id": "a", "text": "some post"}, policies=list(answers))
    groups = mod.policy_groups(list(answers))
    prompts = [mod.compiler(g).compile("some post", item_id="a") for g in groups]
    outcomes = [mod.outcome_from_output(p, ChatResult(text=json.dumps(answers[g[0]]), finish_reason="stop", model="m")) for g, p in zip(groups, prompts, strict=True)]
    assert all(isinstance(o, GroupOutcome) and o.error is None for o in outcomes)
    v = mod.build_verdict(Item("some post", "a"), groups, prompts, outcomes)
    assert v.decisions == live.decisions and v.action == live.action and v.prompt_fingerprint == live.prompt_fingerprint
    assert v.model == "m"
    bad = mod.outcome_from_output(prompts[0], ChatResult(text="not json", finish_reason="stop"))
    v = mod.build_verdict(Item("x", "b"), groups, prompts, [bad, outcomes[1]])
    assert v.status == "error" and v.violates is None and v.error is not None and v.error.raw_output == "not json"


def test_sync_build_verdict_passes_the_cascade_routes_on() -> None:
    """Moderator.build_verdict took ``routes`` and dropped it: the route and the classifier
    score of a policy the classifier sent to the LLM were missing from the verdict."""
    answers = {"hate_speech": decision({"hate_speech": []})}
    fake = FakeBackend(default=lambda req: answers[group_of(req)[0]])
    with Moderator(backend=fake, settings=Settings(decision_logic=False)) as mod:
        groups = mod.policy_groups(["hate_speech"])
        prompts = [mod.compiler(g).compile("some post", item_id="a") for g in groups]
        outcomes = [mod.outcome_from_output(prompts[0], ChatResult(text=json.dumps(answers["hate_speech"]), finish_reason="stop"))]
        v = mod.build_verdict(Item("some post", "a"), groups, prompts, outcomes, routes={"hate_speech": ("llm", 0.42)})
    d = v.decisions[0]
    assert (d.route, d.classifier_score) == ("llm", 0.42)


# -- 1. metadata ---------------------------------------------------------------------------------


async def test_item_metadata_is_carried_into_the_verdict() -> None:
    mod = make(FakeBackend(default=safe_answer))
    v = await mod.moderate({"id": "p1", "text": "hello", "lang": "en", "source": {"site": "forum", "n": 3}}, policies=["spam_scams"])
    assert v.metadata == {"lang": "en", "source": {"site": "forum", "n": 3}}
    v = await mod.moderate(Item("hello", "p2", {"user": 42}), policies=["spam_scams"])
    assert v.metadata == {"user": 42}
    assert (await mod.moderate("plain", policies=["spam_scams"])).metadata == {}
    # the verdict line written to a run's output keeps it
    line = v.model_dump_json()
    assert json.loads(line)["metadata"] == {"user": 42}
    assert Verdict.model_validate_json(line).metadata == {"user": 42}
    # an older verdict line without the field still reads
    old = json.loads(line)
    del old["metadata"]
    assert Verdict.model_validate(old).metadata == {}


async def test_metadata_that_is_not_json_is_a_clear_input_error() -> None:
    mod = make(FakeBackend(default=safe_answer))
    with pytest.raises(InputError, match=r"item 'p3': metadata must be JSON-serialisable"):
        await mod.moderate(Item("hello", "p3", {"when": object()}), policies=["spam_scams"])


# -- 2. the model name, never a path -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "requested", "expected"),
    [
        ("/home/u/.cotmod/models/smollm2-135m.gguf", "smollm2-135m", "smollm2-135m"),
        ("/home/u/.cotmod/models/smollm2-135m.gguf", "/home/u/.cotmod/models/smollm2-135m.gguf", "smollm2-135m"),
        ("C:\\models\\qwen.gguf", "C:\\models\\qwen.gguf", "qwen"),
        ("gpt-4o-2024-08-06", "gpt-4o", "gpt-4o-2024-08-06"),
        ("meta-llama/llama-3-70b", "meta-llama/llama-3-70b", "meta-llama/llama-3-70b"),
        ("", "smollm2-135m", "smollm2-135m"),
    ],
)
async def test_verdict_model_is_a_name_never_a_file_path(reported: str, requested: str, expected: str) -> None:
    answer = json.dumps(decision({"spam_scams": []}))
    fake = FakeBackend(default=ChatResult(text=answer, finish_reason="stop", model=reported), model_name=requested)
    v = await make(fake).moderate("hi", policies=["spam_scams"])
    assert v.model == expected


async def test_a_cached_decision_from_a_path_reporting_server_gets_the_name_too() -> None:
    cache = MemoryCache()
    answer = json.dumps(decision({"spam_scams": []}))
    path_model = ChatResult(text=answer, finish_reason="stop", model="/m/smollm2-135m.gguf")
    mod = make(FakeBackend(default=path_model, model_name="smollm2-135m"), cache=cache)
    await mod.moderate("hi", policies=["spam_scams"])
    for value in cache.data.values():  # as an older cotmod stored it
        value["model"] = "/m/smollm2-135m.gguf"
    v = await mod.moderate("hi", policies=["spam_scams"])
    assert v.cache_hits == 1 and v.model == "smollm2-135m"


# -- 3. streaming ----------------------------------------------------------------------------------


async def test_stream_yields_in_completion_order_with_bounded_items() -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo"]
    backend = GatedBackend(words)
    mod = make(backend, concurrency=8, warm_prefix=False)
    pulled: list[str] = []

    def source():
        for w in words:
            pulled.append(w)
            yield {"id": w, "text": f"post {w}"}

    stream = mod.moderate_stream(source(), policies=["spam_scams"], concurrency=2)
    first = asyncio.ensure_future(stream.__anext__())
    await settle()
    # two items in progress, the input read no further than needed
    assert sorted(backend.started) == ["alpha", "bravo"] and len(pulled) <= 3
    backend.gates["bravo"].set()
    v = await first
    assert v.item_id == "bravo"  # finished first, yielded first
    second = asyncio.ensure_future(stream.__anext__())
    await settle()
    assert sorted(backend.started) == ["alpha", "bravo", "charlie"]  # bravo's place went to the next item
    for w in ("delta", "charlie"):
        backend.gates[w].set()
    assert (await second).item_id == "charlie"  # delta has not started yet (alpha still holds a place)
    backend.gates["echo"].set()
    backend.gates["alpha"].set()
    rest = [v.item_id async for v in stream]
    assert sorted(rest) == ["alpha", "delta", "echo"]
    assert len(backend.history) == 5


async def test_stream_after_a_failure_finishes_what_is_in_progress_then_raises() -> None:
    def answer(req: ChatRequest) -> Any:
        if "boom" in req.messages[-1]["content"]:
            return ServerError("server fell over")
        return safe_answer(req)

    fake = FakeBackend(default=answer)
    mod = make(fake, warm_prefix=False)
    got: list[str] = []
    with pytest.raises(ServerError, match="fell over"):
        async for v in mod.moderate_stream(["ok a", "boom", "ok b", "ok c"], policies=["spam_scams"], concurrency=1):
            got.append(v.item_id)
    assert got == ["0"] and len(fake.history) == 2  # nothing started after the failure
    fake2 = FakeBackend(default=answer)
    got = []
    with pytest.raises(ServerError):
        async for v in make(fake2, warm_prefix=False).moderate_stream(["ok a", "boom", "ok b"], policies=["spam_scams"], concurrency=3):
            got.append(v.item_id)
    assert sorted(got) == ["0", "2"]  # the items in progress were not lost


async def test_leaving_the_stream_early_cancels_items_in_progress() -> None:
    backend = GatedBackend(["one", "two", "three"])
    mod = make(backend, warm_prefix=False)
    backend.gates["one"].set()
    stream = mod.moderate_stream(["one", "two", "three"], policies=["spam_scams"], concurrency=3)
    v = await stream.__anext__()
    assert v.item_id == "0"
    await stream.aclose()
    assert sorted(backend.cancelled) == ["three", "two"]  # cancelled, not left running
    assert sorted(backend.finished) == ["one", "three", "two"]


def test_sync_stream_yields_every_verdict() -> None:
    fake = FakeBackend(default=safe_answer)
    with Moderator(backend=fake) as mod:
        ids = sorted(v.item_id for v in mod.moderate_stream(["a", "b", "c"], policies=["spam_scams"], concurrency=2))
        assert ids == ["0", "1", "2"]
        stream = mod.moderate_stream(["d", "e", "f"], policies=["spam_scams"])
        assert isinstance(next(stream), Verdict)
        stream.close()  # leaving early is clean; the moderator stays usable
        assert mod.moderate("g", policies=["spam_scams"]).status == "ok"


# -- 4. the cache off the event loop ---------------------------------------------------------------


class BlockingCache:
    """A cache whose get blocks its thread until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.timed_out = False
        self.threads: set[str] = set()
        self.data: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        if not self.release.wait(timeout=5):  # a safety net, so a blocked loop fails instead of hanging
            self.timed_out = True
        return self.data.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.threads.add(threading.current_thread().name)
        self.data[key] = value

    def close(self) -> None:
        pass


async def test_a_slow_cache_does_not_block_the_event_loop() -> None:
    cache = BlockingCache()
    mod = make(FakeBackend(default=safe_answer), cache=cache)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    tick_task = asyncio.ensure_future(ticker())
    task = asyncio.ensure_future(mod.moderate("hi", policies=["spam_scams"]))
    while not cache.entered.is_set():
        await asyncio.sleep(0.001)
    before = ticks
    await settle()
    assert ticks > before and not task.done()  # the loop runs while the cache call is blocked
    cache.release.set()
    v = await task
    tick_task.cancel()
    assert v.status == "ok" and not cache.timed_out
    assert threading.current_thread().name not in cache.threads and len(cache.data) == 1
    await mod.aclose()


async def test_sqlite_cache_under_concurrent_gets_and_puts(tmp_path) -> None:
    cache = SqliteCache(tmp_path / "cache.sqlite")
    texts = [f"item number {i}" + (" win a prize" if i % 3 == 0 else "") for i in range(30)]

    def answer(req: ChatRequest) -> dict[str, Any]:
        return decision({"spam_scams": ["SCAM-2"] if "prize" in req.messages[-1]["content"] else []})

    first = make(FakeBackend(default=answer), cache=cache, concurrency=8)
    v1 = await first.moderate_many(texts, policies=["spam_scams"])
    assert len(cache) == 30 and all(v.cache_hits == 0 for v in v1)
    await first.aclose()
    # every decision now comes from the cache: a backend with nothing to say is never called
    second = make(FakeBackend(), cache=cache, concurrency=8)
    v2 = await asyncio.gather(*(second.moderate(t, policies=["spam_scams"]) for t in texts))
    assert all(v.cache_hits == 1 for v in v2)
    assert [v.decisions for v in v2] == [v.decisions for v in v1]
    assert [v.violates for v in v2] == ["prize" in t for t in texts]
    await second.aclose()
    cache.close()


# -- 5. prefix warm-up -----------------------------------------------------------------------------


class LoggingBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__(default=safe_answer)
        self.log: list[tuple[str, tuple[str, ...]]] = []

    async def complete(self, request: ChatRequest) -> ChatResult:
        g = group_of(request)
        self.log.append(("start", g))
        await settle(3)
        self.log.append(("end", g))
        return await super().complete(request)


def first_end_precedes_other_starts(log: list[tuple[str, tuple[str, ...]]], group: tuple[str, ...]) -> bool:
    events = [e for e, g in log if g == group]
    return events[:2] == ["start", "end"]


async def test_first_request_of_each_prefix_completes_before_the_others_start() -> None:
    backend = LoggingBackend()
    mod = make(backend, concurrency=6)
    verdicts = await mod.moderate_many(["a", "b", "c"], policies=["hate_speech", "spam_scams"])
    assert all(v.status == "ok" for v in verdicts) and len(backend.history) == 6
    for g in (("hate_speech",), ("spam_scams",)):
        assert first_end_precedes_other_starts(backend.log, g), backend.log
    # different prefixes warm at the same time
    assert [e for e, _ in backend.log[:2]] == ["start", "start"]
    # once warm, requests of a group overlap again
    again = LoggingBackend()
    mod._backend = again
    await mod.moderate_many(["d", "e"], policies=["spam_scams"])
    assert [e for e, _ in again.log] == ["start", "start", "end", "end"]
    # without warm-up, every first request starts at once (what timed out on a small server)
    cold = LoggingBackend()
    await make(cold, concurrency=6, warm_prefix=False).moderate_many(["a", "b", "c"], policies=["spam_scams"])
    assert [e for e, _ in cold.log[:3]] == ["start"] * 3


async def test_votes_warm_too_and_a_failed_warm_up_hands_over() -> None:
    backend = LoggingBackend()
    await make(backend, votes=3, concurrency=3).moderate("a", policies=["spam_scams"])
    assert first_end_precedes_other_starts(backend.log, ("spam_scams",))

    fake = FakeBackend([ServerError("first fails")], default=safe_answer)
    mod = make(fake, concurrency=4)
    results = await asyncio.gather(*(mod.moderate(t, policies=["spam_scams"]) for t in "abc"), return_exceptions=True)
    assert isinstance(results[0], ServerError)
    assert [r.status for r in results[1:]] == ["ok", "ok"]  # type: ignore[union-attr]


class RampBackend(GatedBackend):
    """Gated per item word; records requests in flight and can answer after transport retries."""

    def __init__(self, words: list[str], retried: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__(words)
        self.retried = retried
        self.in_flight = 0

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.in_flight += 1
        try:
            result = await super().complete(request)
        finally:
            self.in_flight -= 1
        if self.word(request) in self.retried:
            result = dataclasses.replace(result, transport_retries=1)
        return result

    async def answer(self, word: str) -> None:
        self.gates[word].set()
        await settle()


async def test_after_warm_up_a_group_ramps_up_one_more_request_per_answer() -> None:
    words = [f"w{i}" for i in range(6)]
    backend = RampBackend(words)
    mod = make(backend, concurrency=8)
    task = asyncio.ensure_future(mod.moderate_many(words, policies=["spam_scams"]))
    await settle()
    assert backend.started == ["w0"]  # warm-up: alone
    await backend.answer("w0")
    assert backend.started == ["w0", "w1", "w2"] and backend.in_flight == 2  # 1 + 1 answered
    await backend.answer("w1")
    assert backend.started == words[:5] and backend.in_flight == 3  # 1 + 2 answered
    await backend.answer("w2")
    assert backend.started == words and backend.in_flight == 3  # all started; 4 were allowed
    for w in words[3:]:
        await backend.answer(w)
    assert [v.status for v in await task] == ["ok"] * 6
    # the window is the moderator's: warm now, a new batch of the group starts at once (up to 7)
    again = RampBackend(["x0", "x1", "x2"])
    mod._backend = again
    task = asyncio.ensure_future(mod.moderate_many(["x0", "x1", "x2"], policies=["spam_scams"]))
    await settle()
    assert again.in_flight == 3
    for w in ["x0", "x1", "x2"]:
        await again.answer(w)
    await task


async def test_the_ramp_is_capped_by_concurrency_and_per_group() -> None:
    words = [f"w{i}" for i in range(4)]
    backend = RampBackend(words)
    mod = make(backend, concurrency=2)
    task = asyncio.ensure_future(mod.moderate_many(words, policies=["hate_speech", "spam_scams"]))
    await settle()
    assert backend.in_flight == 2  # each group warms with its first request, in parallel
    await backend.answer("w0")  # both groups' warm-ups answered; windows 2, but concurrency 2
    assert backend.in_flight == 2
    for w in words[1:]:
        await backend.answer(w)
    assert all(v.status == "ok" for v in await task)


async def test_an_answer_that_needed_transport_retries_halves_the_groups_window() -> None:
    words = [f"w{i}" for i in range(6)]
    backend = RampBackend(words, retried={"w1"})
    mod = make(backend, concurrency=8)
    task = asyncio.ensure_future(mod.moderate_many(words, policies=["spam_scams"]))
    await settle()
    await backend.answer("w0")
    assert backend.started == ["w0", "w1", "w2"]  # window 2
    await backend.answer("w1")  # overloaded: window 2 -> 1, w2 still in flight
    assert backend.started == ["w0", "w1", "w2"] and backend.in_flight == 1
    await backend.answer("w2")  # window 1 -> 2
    assert backend.started == words[:5] and backend.in_flight == 2
    for w in words[3:]:
        await backend.answer(w)
    verdicts = await task
    assert [v.transport_retries for v in verdicts] == [0, 1, 0, 0, 0, 0]


async def test_a_transport_failure_halves_the_window_and_a_cancelled_waiter_leaves_it() -> None:
    def answer(req: ChatRequest) -> Any:
        return ServerError("overloaded") if "BOOM" in req.messages[-1]["content"] else safe_answer(req)

    mod = make(FakeBackend(default=answer), concurrency=4)
    await mod.moderate("a", policies=["spam_scams"])  # warm: window 2
    await mod.moderate("b", policies=["spam_scams"])  # window 3
    with pytest.raises(ServerError):
        await mod.moderate("BOOM", policies=["spam_scams"])
    (ramp,) = mod._ramps.values()
    assert ramp.window == 1 and ramp.in_flight == 0
    # a request cancelled while it waits for the window takes no place in it
    gated = RampBackend(["g0", "g1", "g2"])
    mod._backend = gated
    first = asyncio.ensure_future(mod.moderate("g0", policies=["spam_scams"]))
    waiting = [asyncio.ensure_future(mod.moderate(w, policies=["spam_scams"])) for w in ("g1", "g2")]
    await settle()
    assert gated.started == ["g0"]
    waiting[0].cancel()
    await settle()
    await gated.answer("g0")
    assert gated.started == ["g0", "g2"]
    await gated.answer("g2")
    await first
    await waiting[1]
    assert ramp.in_flight == 0 and ramp.window == 3


async def test_a_runs_verdict_lines_keep_the_items_metadata(tmp_path) -> None:
    from cotmod.batch import Runner

    items = [Item("hello", "a", {"lang": "en", "thread": {"n": 7}}), {"id": "b", "text": "hi there", "lang": "de"}, Item("plain", "c")]
    out = tmp_path / "out.jsonl"
    mod = make(FakeBackend(default=safe_answer))
    await Runner(mod).run(items, out, policies=["spam_scams"])
    lines = {v["item_id"]: v for v in map(json.loads, out.read_text().splitlines())}
    assert lines["a"]["metadata"] == {"lang": "en", "thread": {"n": 7}}
    assert lines["b"]["metadata"] == {"lang": "de"}
    assert lines["c"]["metadata"] == {}


def test_the_prompt_fingerprint_covers_the_sampling_settings() -> None:
    def fp(**kw: Any) -> str:
        return make(FakeBackend(), **kw).fingerprint(["spam_scams"])

    base = fp()
    assert fp() == base
    assert fp(temperature=0.5) != base and fp(max_tokens=512) != base and fp(votes=3) != base


# -- 6. bad items and loose arguments at the engine's boundary -----------------------------------------


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("bad \ud800 x", "text is not valid Unicode"),
        (Item("x", 5), "the id must be a str, got int"),  # type: ignore[arg-type]
        (Item(5, "a"), "the text must be a str, got int"),  # type: ignore[arg-type]
        ({"id": "a", "text": ["x"]}, "the text must be a str, got list"),
        (Item("x", "a", [1]), "metadata must be a mapping"),  # type: ignore[arg-type]
        (Item("x", "bad \udfff id"), "id is not valid Unicode"),
    ],
)
def test_an_unusable_item_is_an_input_error_before_any_model_call(item: Any, message: str) -> None:
    # before: UnicodeEncodeError from inside the openai SDK, or pydantic's ValidationError after
    # the model calls
    fake = FakeBackend(default=safe_answer)
    with Moderator(backend=fake, settings=Settings(decision_logic=False)) as m:
        with pytest.raises(InputError, match=message):
            m.moderate(item, policies=["spam_scams", "hate_speech"])
        with pytest.raises(InputError, match=message):
            m.moderate_many([item], policies=["spam_scams"])
    assert fake.history == []


async def test_a_mapping_id_of_zero_is_kept_and_a_single_policy_string_is_one_policy() -> None:
    fake = FakeBackend(default=safe_answer)
    mod = make(fake)
    v = await mod.moderate({"id": 0, "text": "x"}, policies="hate_speech")  # type: ignore[arg-type]
    assert v.item_id == "0"  # before: "item"
    assert [d.policy_id for d in v.decisions] == ["hate_speech"]  # before: "unknown policy 'h'"
    assert (await mod.moderate({"id": "", "text": "x"}, "spam_scams")).item_id == "item"  # type: ignore[arg-type]
    assert mod.policy_groups("spam_scams") == [("spam_scams",)]  # type: ignore[arg-type]
    assert mod.fingerprint("spam_scams") == mod.fingerprint(["spam_scams"])  # type: ignore[arg-type]
    with Moderator(backend=FakeBackend(default=safe_answer), settings=Settings(decision_logic=False)) as m:
        assert [d.policy_id for d in m.moderate("hi", policies="spam_scams").decisions] == ["spam_scams"]  # type: ignore[arg-type]


async def test_the_stream_reads_an_async_iterable_too() -> None:
    async def source() -> Any:
        for i in range(5):
            await asyncio.sleep(0)
            yield {"id": f"a{i}", "text": f"post {i}"}

    mod = make(FakeBackend(default=safe_answer), concurrency=2)
    got = [v.item_id async for v in mod.moderate_stream(source(), ["spam_scams"])]
    assert sorted(got) == [f"a{i}" for i in range(5)]

    async def plain() -> Any:
        for t in ("one", "two"):
            yield t

    got = [v.item_id async for v in mod.moderate_stream(plain(), ["spam_scams"])]
    assert sorted(got) == ["0", "1"]  # positions, as for a plain iterable
    with Moderator(backend=FakeBackend(default=safe_answer), settings=Settings(decision_logic=False)) as m:
        assert sorted(v.item_id for v in m.moderate_stream(source(), ["spam_scams"])) == [f"a{i}" for i in range(5)]


def test_a_missing_decision_is_a_key_error_naming_the_policy_and_those_present() -> None:
    fake = FakeBackend(default=safe_answer)
    with Moderator(backend=fake, settings=Settings(decision_logic=False)) as m:
        v = m.moderate({"id": "p9", "text": "x"}, policies=["spam_scams", "hate_speech"])
    with pytest.raises(KeyError) as err:
        v.decision("unknown")
    msg = str(err.value)
    assert "'unknown'" in msg and "'p9'" in msg and "'spam_scams'" in msg and "'hate_speech'" in msg


def test_one_async_moderator_across_two_asyncio_runs_leaves_no_task_on_a_closed_loop(tmp_path) -> None:
    # before: "Task exception was never retrieved ... RuntimeError: Event loop is closed" on stderr
    # (the first loop's connections were closed, later, on the second loop)
    import subprocess
    import sys

    from cotmod.testing import FakeOpenAIServer

    from .conftest import GUIDELINES

    script = tmp_path / "two_runs.py"
    script.write_text(
        "import asyncio, gc, sys\n"
        "from cotmod import AsyncModerator, Settings\n"
        "mod = AsyncModerator(settings=Settings(base_url=sys.argv[1], model='m', guidelines=sys.argv[2], decision_logic=False))\n"
        "print(asyncio.run(mod.moderate('hello', ['spam_scams'])).status)\n"
        "print(asyncio.run(mod.moderate('hello again', ['spam_scams'])).status)\n"
        "async def third():\n"
        "    async with mod:\n"
        "        return (await mod.moderate('and again', ['spam_scams'])).status\n"
        "print(asyncio.run(third()))\n"
        "gc.collect()\n"
    )
    with FakeOpenAIServer() as srv:
        out = subprocess.run([sys.executable, str(script), srv.base_url, str(GUIDELINES)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "ok", "ok"]
    assert "Event loop is closed" not in out.stderr and "never retrieved" not in out.stderr, out.stderr
