"""Load control on a fake clock: RateLimiter spacing and token budget, AdaptiveLimiter (AIMD),
and LimitedBackend as a self-contained backend wrapper (nothing patched from outside)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest

from cotmod import ChatRequest, OpenAIBackend
from cotmod._exceptions import ConfigError, RateLimitedError
from cotmod.backends import AdaptiveLimiter, AttemptHooks, LimitedBackend, RateLimiter
from cotmod.testing import FakeBackend


class FakeTime:
    """A clock and a sleep that advances it: waits take no wall time and are recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def request(**kw: Any) -> ChatRequest:
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    return ChatRequest(**kw)


# ---------------------------------------------------------------------------------------------
# RateLimiter


async def test_rate_limiter_spaces_requests_evenly() -> None:
    t = FakeTime()
    rl = RateLimiter(rpm=600, clock=t.clock, sleep=t.sleep)  # one per 0.1 s
    for _ in range(6):
        await rl.acquire()
    assert t.sleeps == pytest.approx([0.1] * 5)
    assert t.now == pytest.approx(0.5)
    assert rl.acquired == 6 and rl.waited_s == pytest.approx(0.5)


async def test_rate_limiter_spacing_holds_for_concurrent_callers() -> None:
    t = FakeTime()
    rl = RateLimiter(rpm=60, clock=t.clock, sleep=t.sleep)  # one per second
    admitted: list[float] = []

    async def one() -> None:
        await rl.acquire()
        admitted.append(t.now)

    await asyncio.gather(*(one() for _ in range(4)))
    assert admitted == pytest.approx([0.0, 1.0, 2.0, 3.0])


async def test_rate_limiter_does_not_save_up_idle_time() -> None:
    t = FakeTime()
    rl = RateLimiter(rpm=60, clock=t.clock, sleep=t.sleep)
    await rl.acquire()
    t.now += 10.0  # idle for a while: the next request goes at once, the one after waits 1 s
    await rl.acquire()
    await rl.acquire()
    assert t.sleeps == pytest.approx([1.0])


async def test_token_budget_waits_for_the_window_to_free_up() -> None:
    t = FakeTime()
    rl = RateLimiter(tpm=1000, clock=t.clock, sleep=t.sleep)
    await rl.acquire(600)
    t.now += 5.0
    await rl.acquire(300)
    assert t.sleeps == []
    await rl.acquire(600)  # 900 used in the last minute: waits until the first 600 expire
    assert t.now == pytest.approx(60.0)
    await rl.acquire(5000)  # more than the budget: counted as the whole budget, so it waits
    assert t.now == pytest.approx(120.0)


async def test_no_limits_never_wait() -> None:
    t = FakeTime()
    rl = RateLimiter(clock=t.clock, sleep=t.sleep)
    for _ in range(100):
        await rl.acquire(10_000)
    assert t.sleeps == []


@pytest.mark.parametrize("kw", [{"rpm": 0}, {"rpm": -5}, {"tpm": 0}, {"rpm": float("nan")}])
def test_rate_limits_must_be_positive(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="must be > 0"):
        RateLimiter(**kw)


# ---------------------------------------------------------------------------------------------
# AdaptiveLimiter


async def test_adaptive_limiter_halves_on_429_and_recovers() -> None:
    t = FakeTime()
    lim = AdaptiveLimiter(8, cooldown=1.0, clock=t.clock)
    for expected in (4, 2, 1, 1):
        lim.throttled()
        assert lim.limit == expected
        t.now += 1.0
    assert lim.cuts == 4 and lim.min_seen == 1
    for _ in range(40):
        await lim.acquire()
        await lim.release(ok=True)
    assert lim.limit == 8  # grown back by one slot per `limit` successes, capped


async def test_adaptive_limiter_cuts_once_per_cooldown() -> None:
    t = FakeTime()
    lim = AdaptiveLimiter(16, cooldown=0.02, clock=t.clock)
    lim.throttled()
    lim.throttled()  # same burst: one cut
    assert lim.limit == 8 and lim.cuts == 1
    for _ in range(3):
        t.now += 0.025
        lim.throttled()
        lim.throttled()
    assert lim.limit == 1 and lim.cuts == 4


async def test_adaptive_limiter_does_not_grow_within_a_cooldown_of_a_429() -> None:
    t = FakeTime()
    lim = AdaptiveLimiter(4, cooldown=10.0, clock=t.clock)
    lim.throttled()
    assert lim.limit == 2
    for _ in range(10):
        await lim.acquire()
        await lim.release(ok=True)
    assert lim.limit == 2
    t.now += 10.0
    for _ in range(2):
        await lim.acquire()
        await lim.release(ok=True)
    assert lim.limit == 3


async def test_adaptive_limiter_bounds_requests_in_flight() -> None:
    lim = AdaptiveLimiter(3)
    peak = 0
    gate = asyncio.Event()

    async def work() -> None:
        nonlocal peak
        await lim.acquire()
        peak = max(peak, lim.in_flight)
        await gate.wait()
        await lim.release(ok=True)

    tasks = [asyncio.create_task(work()) for _ in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert lim.in_flight == 3
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == 3 and lim.in_flight == 0


def test_concurrency_must_be_at_least_one() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        AdaptiveLimiter(0)


# ---------------------------------------------------------------------------------------------
# LimitedBackend


def mock_backend(handler: Any, **kw: Any) -> OpenAIBackend:
    kw.setdefault("initial_backoff", 0.0)
    kw.setdefault("max_backoff", 0.0)
    return OpenAIBackend(
        base_url="http://127.0.0.1:9/v1",
        model="m",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        **kw,
    )


def completion(text: str = "ok") -> httpx2.Response:
    return httpx2.Response(
        200,
        json={
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        },
    )


def too_many() -> httpx2.Response:
    return httpx2.Response(429, json={"error": {"message": "slow down"}})


async def test_limited_backend_is_a_backend_and_wraps_without_patching() -> None:
    inner = mock_backend(lambda r: completion())
    assert isinstance(inner, AttemptHooks)
    before = dict(vars(inner))
    limited = LimitedBackend(inner, concurrency=2)
    assert limited.model_name == "m"
    result = await limited.complete(request())
    assert result.text == "ok"
    after = dict(vars(inner))
    changed = {k for k in before.keys() | after.keys() if before.get(k) is not after.get(k)}
    assert changed <= {"_calls", "_attempts", "_loop"}  # only its own counters moved
    assert inner.on_retry is None
    await limited.aclose()


async def test_rate_limit_applies_to_every_transport_attempt() -> None:
    t = FakeTime()
    steps = [too_many(), too_many(), completion()]
    inner = mock_backend(lambda r: steps.pop(0), max_retries=3)
    limited = LimitedBackend(inner, concurrency=4, rpm=60, clock=t.clock, sleep=t.sleep)
    result = await limited.complete(request())
    assert result.transport_retries == 2
    assert t.sleeps == pytest.approx([1.0, 1.0])  # three attempts, spaced by the rpm cap
    stats = limited.stats
    assert stats.rate_acquired == 3
    # two 429s a cool-down (1 s) apart: two cuts, 4 -> 2 -> 1; the success a cool-down later
    # grows it back by one slot
    assert (stats.throttles, stats.cuts, stats.min_limit, stats.limit) == (2, 2, 1, 2)
    await limited.aclose()


async def test_wrapping_keeps_the_users_on_retry() -> None:
    # regression: LimitedBackend used to overwrite the inner backend's on_retry
    seen: list[int | None] = []
    steps = [too_many(), completion()]
    inner = mock_backend(lambda r: steps.pop(0), on_retry=lambda e, d: seen.append(getattr(e, "status_code", None)))
    limited = LimitedBackend(inner, concurrency=4)
    await limited.complete(request())
    assert seen == [429]
    assert limited.stats.throttles == 1
    await limited.aclose()


async def test_without_attempt_hooks_the_rate_limit_applies_per_call() -> None:
    t = FakeTime()
    fake = FakeBackend(default="fine")
    assert not isinstance(fake, AttemptHooks)
    limited = LimitedBackend(fake, concurrency=2, rpm=120, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        assert (await limited.complete(request())).text == "fine"
    assert t.sleeps == pytest.approx([0.5, 0.5])
    assert limited.stats.rate_acquired == 3


async def test_rate_limited_calls_cut_concurrency_and_release_their_slot() -> None:
    t = FakeTime()
    fake = FakeBackend([RateLimitedError("429", status_code=429, attempts=4)], default="fine")
    limited = LimitedBackend(fake, concurrency=8, clock=t.clock, sleep=t.sleep)
    with pytest.raises(RateLimitedError):
        await limited.complete(request())
    stats = limited.stats
    assert stats.throttles == 1 and stats.limit == 4 and stats.in_flight == 0
    await limited.complete(request())
    assert limited.stats.in_flight == 0


async def test_limited_backend_bounds_calls_in_flight() -> None:
    gate = asyncio.Event()
    active = 0
    peak = 0

    class Slow(FakeBackend):
        async def complete(self, request: ChatRequest) -> Any:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await gate.wait()
            active -= 1
            return await super().complete(request)

    limited = LimitedBackend(Slow(default="x"), concurrency=3)
    tasks = [asyncio.create_task(limited.complete(request())) for _ in range(9)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert active == 3 and limited.stats.in_flight == 3
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == 3


async def test_wrapping_the_same_backend_again_starts_fresh() -> None:
    # a runner wraps the moderator's backend for each run: an earlier wrapper's limits must not
    # keep applying to the inner backend
    t = FakeTime()
    inner = mock_backend(lambda r: completion())
    first = LimitedBackend(inner, concurrency=1, rpm=1, clock=t.clock, sleep=t.sleep)
    await first.complete(request())
    second = LimitedBackend(inner, concurrency=1, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        await second.complete(request())
    await inner.complete(request())
    assert t.sleeps == []
    assert first.stats.rate_acquired == 1
    await inner.aclose()


async def test_wrappers_compose_per_attempt() -> None:
    t = FakeTime()
    steps = [too_many(), completion()]
    inner = mock_backend(lambda r: steps.pop(0), max_retries=2)
    inside = LimitedBackend(inner, concurrency=4, rpm=60, clock=t.clock, sleep=t.sleep)
    outside = LimitedBackend(inside, concurrency=4, rpm=30, clock=t.clock, sleep=t.sleep)
    assert isinstance(inside, AttemptHooks)
    await outside.complete(request())
    assert inside.stats.rate_acquired == 2 and outside.stats.rate_acquired == 2
    assert inside.stats.throttles == 1 and outside.stats.throttles == 1
    assert t.now == pytest.approx(2.0)  # the outer cap (one per 2 s) spaced the two attempts
    await outside.aclose()
