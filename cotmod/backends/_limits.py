"""Load control for at-scale runs: request/token rate limits and adaptive concurrency.

* :class:`RateLimiter` spaces requests evenly to at most ``rpm`` per minute and keeps a
  one-minute token budget (``tpm``), so a capped run does not cause 429s in the first place.
* :class:`AdaptiveLimiter` bounds requests in flight. On a 429 it halves the limit (at most once
  per cool-down), and grows it back by one slot per ``limit`` successes (AIMD), up to the maximum.
* :class:`LimitedBackend` wraps any backend with both. It is itself a backend: hand it to the
  moderator in place of the inner one. Nothing is patched or registered on the inner backend:
  when it supports :class:`~cotmod.backends.AttemptHooks` (``OpenAIBackend`` does), each call
  passes its hooks along, so the rate limits apply to every transport attempt, retries
  included, and transport-level 429 retries cut the concurrency; otherwise the rate limits
  apply once per call. Wrappers compose (a LimitedBackend supports AttemptHooks itself). Its
  counters are in :attr:`LimitedBackend.stats`.

Time comes from an injectable ``clock`` (monotonic seconds) and ``sleep`` coroutine, so tests can
run them on a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .._exceptions import ConfigError, RateLimitedError
from ..prompting._tokens import count_tokens
from ._openai import AttemptHooks, Backend, BeforeAttempt, ChatRequest, ChatResult, OnRetry

__all__ = ["AdaptiveLimiter", "LimitedBackend", "LimiterStats", "RateLimiter"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """At most ``rpm`` requests and ``tpm`` tokens per minute (either may be None).

    ``acquire`` waits (with ``sleep``) until the request may go: requests are spaced
    ``60 / rpm`` seconds apart, and the tokens acquired in the last 60 s stay within ``tpm``
    (one request asking for more than ``tpm`` is counted as ``tpm``)."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rpm is not None and not rpm > 0:
            raise ConfigError(f"rpm must be > 0, got {rpm}")
        if tpm is not None and not tpm > 0:
            raise ConfigError(f"tpm must be > 0, got {tpm}")
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None
        self._lock = asyncio.Lock()
        self._tokens: deque[tuple[float, int]] = deque()
        self._token_sum = 0
        self.acquired = 0
        self.waited_s = 0.0

    async def _wait(self, seconds: float) -> None:
        self.waited_s += seconds
        await self._sleep(seconds)

    async def acquire(self, tokens: int = 0) -> None:
        if self.rpm is None and self.tpm is None:
            return
        async with self._lock:
            now = self._clock()
            if self.rpm is not None:
                interval = 60.0 / self.rpm
                slot = now if self._next is None else max(now, self._next)
                self._next = slot + interval
                if slot > now:
                    await self._wait(slot - now)
            if self.tpm is not None:
                tokens = min(max(tokens, 0), int(self.tpm))
                while True:
                    now = self._clock()
                    while self._tokens and self._tokens[0][0] <= now - 60.0:
                        self._token_sum -= self._tokens.popleft()[1]
                    if self._token_sum + tokens <= self.tpm:
                        break
                    await self._wait(max(self._tokens[0][0] + 60.0 - now, 0.01))
                self._tokens.append((self._clock(), tokens))
                self._token_sum += tokens
            self.acquired += 1


class AdaptiveLimiter:
    """Requests in flight, adapted to the server (AIMD): on a 429 the limit is halved (at most
    once per ``cooldown``); it grows by one slot after ``limit`` consecutive successes with no
    429 for a ``cooldown``, up to the maximum."""

    def __init__(self, maximum: int, *, cooldown: float = 1.0, clock: Clock = time.monotonic) -> None:
        if maximum < 1:
            raise ConfigError(f"concurrency must be >= 1, got {maximum}")
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self.cooldown = cooldown
        self._clock = clock
        self._last_cut: float | None = None
        self._last_429: float | None = None
        self._successes = 0
        self._cond = asyncio.Condition()
        self.cuts = 0
        self.min_seen = maximum

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < max(1, int(self.limit)))
            self.in_flight += 1

    async def release(self, *, ok: bool) -> None:
        async with self._cond:
            self.in_flight -= 1
            quiet = self._last_429 is None or self._clock() - self._last_429 >= self.cooldown
            if ok and self.limit < self.maximum and quiet:
                self._successes += 1
                if self._successes >= int(self.limit):
                    self._successes = 0
                    self.limit = min(float(self.maximum), self.limit + 1.0)
            self._cond.notify_all()

    def throttled(self) -> None:
        """A 429 was seen: cut the limit, at most once per cool-down (429s right after a cut
        answer requests sent under the old limit); growth waits a cool-down after any 429."""
        now = self._clock()
        self._successes = 0
        self._last_429 = now
        if self._last_cut is None or now - self._last_cut >= self.cooldown:
            self.limit = max(1.0, self.limit / 2)
            self.cuts += 1
            self.min_seen = min(self.min_seen, int(self.limit))
            self._last_cut = now


@dataclass(frozen=True)
class LimiterStats:
    """A snapshot of a :class:`LimitedBackend`'s load control."""

    throttles: int
    """429s seen (transport retries and calls that ended rate-limited)."""
    limit: int
    """Current concurrency limit."""
    maximum: int
    """Configured concurrency."""
    min_limit: int
    """Lowest concurrency limit reached."""
    cuts: int
    """How many times the concurrency limit was halved."""
    in_flight: int
    """Calls in flight now."""
    rate_acquired: int
    """Requests admitted by the rate limiter."""
    rate_waited_s: float
    """Total time requests waited for the rate limiter (seconds on its clock)."""


class LimitedBackend:
    """A backend wrapped with a rate limiter and an adaptive concurrency limiter.

    ``rpm``/``tpm`` cap requests/tokens per minute (None = no cap); ``concurrency`` is the most
    calls in flight, halved on 429s and grown back (``cooldown`` seconds). ``clock``/``sleep`` are
    injectable for tests. The inner backend is left untouched: wrapping it again later (a new
    run) starts from fresh limits."""

    def __init__(
        self,
        inner: Backend,
        *,
        concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        cooldown: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.rate = RateLimiter(rpm, tpm, clock=clock, sleep=sleep)
        self.adaptive = AdaptiveLimiter(concurrency, cooldown=cooldown, clock=clock)
        self.throttles = 0

    @property
    def stats(self) -> LimiterStats:
        return LimiterStats(
            throttles=self.throttles,
            limit=max(1, int(self.adaptive.limit)),
            maximum=self.adaptive.maximum,
            min_limit=self.adaptive.min_seen,
            cuts=self.adaptive.cuts,
            in_flight=self.adaptive.in_flight,
            rate_acquired=self.rate.acquired,
            rate_waited_s=self.rate.waited_s,
        )

    def _on_retry(self, exc: BaseException, delay: float) -> None:
        if getattr(exc, "status_code", None) == 429:
            self.throttles += 1
            self.adaptive.throttled()

    def _estimate(self, request: ChatRequest) -> int:
        if self.rate.tpm is None:
            return 0
        prompt = request.prompt_tokens
        if prompt is None:
            prompt = sum(count_tokens(m["content"]) for m in request.messages)
        return prompt + request.max_tokens

    async def _before_request(self, request: ChatRequest) -> None:
        await self.rate.acquire(self._estimate(request))

    async def complete(self, request: ChatRequest) -> ChatResult:
        return await self.complete_with_hooks(request)

    async def complete_with_hooks(
        self,
        request: ChatRequest,
        *,
        before_attempt: BeforeAttempt | None = None,
        on_retry: OnRetry | None = None,
    ) -> ChatResult:
        """``complete``, also running an outer wrapper's hooks (see :class:`AttemptHooks`)."""

        async def before(req: ChatRequest) -> None:
            await self._before_request(req)
            if before_attempt is not None:
                await before_attempt(req)

        def retried(exc: BaseException, delay: float) -> None:
            self._on_retry(exc, delay)
            if on_retry is not None:
                on_retry(exc, delay)

        await self.adaptive.acquire()
        ok = False
        try:
            # Rate limits apply to every attempt, transport retries included, where the inner
            # backend takes attempt hooks; otherwise once per call.
            if isinstance(self.inner, AttemptHooks):
                result = await self.inner.complete_with_hooks(request, before_attempt=before, on_retry=retried)
            else:
                await before(request)
                result = await self.inner.complete(request)
            ok = True
            return result
        except RateLimitedError:
            self.throttles += 1
            self.adaptive.throttled()
            raise
        finally:
            await self.adaptive.release(ok=ok)

    async def aclose(self) -> None:
        await self.inner.aclose()
