"""Load control for at-scale runs: request/token rate limits and adaptive concurrency.

* :class:`RateLimiter` spaces requests evenly to at most ``rpm`` per minute and keeps a
  one-minute token budget (``tpm``), so a capped run does not cause 429s in the first place.
* :class:`AdaptiveLimiter` bounds requests in flight. On a 429 it halves the limit (at most once
  per cool-down), and grows it back by one slot per ``limit`` successes (AIMD), up to the maximum.
* :class:`LimitedBackend` wraps any backend with both.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from .._exceptions import ConfigError, RateLimitedError
from ..prompting._tokens import count_tokens
from ._openai import Backend, ChatRequest, ChatResult

__all__ = ["AdaptiveLimiter", "LimitedBackend", "RateLimiter"]


class RateLimiter:
    """At most ``rpm`` requests and ``tpm`` tokens per minute (either may be None)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        if rpm is not None and rpm <= 0:
            raise ConfigError("rpm must be > 0")
        if tpm is not None and tpm <= 0:
            raise ConfigError("tpm must be > 0")
        self.rpm = rpm
        self.tpm = tpm
        self._next = 0.0
        self._lock = asyncio.Lock()
        self._tokens: deque[tuple[float, int]] = deque()
        self._token_sum = 0

    async def acquire(self, tokens: int = 0) -> None:
        if self.rpm is None and self.tpm is None:
            return
        async with self._lock:
            now = time.monotonic()
            if self.rpm is not None:
                interval = 60.0 / self.rpm
                slot = max(now, self._next)
                self._next = slot + interval
                if slot > now:
                    await asyncio.sleep(slot - now)
            if self.tpm is not None:
                tokens = min(tokens, int(self.tpm))
                while True:
                    now = time.monotonic()
                    while self._tokens and self._tokens[0][0] <= now - 60.0:
                        self._token_sum -= self._tokens.popleft()[1]
                    if self._token_sum + tokens <= self.tpm:
                        break
                    await asyncio.sleep(max(self._tokens[0][0] + 60.0 - now, 0.01))
                self._tokens.append((time.monotonic(), tokens))
                self._token_sum += tokens


class AdaptiveLimiter:
    """Requests in flight, adapted to the server (AIMD): on a 429 the limit is halved (at most
    once per ``cooldown``); it grows by one slot after ``limit`` consecutive successes with no
    429 for a ``cooldown``, up to the maximum."""

    def __init__(self, maximum: int, *, cooldown: float = 1.0) -> None:
        if maximum < 1:
            raise ConfigError("concurrency must be >= 1")
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self.cooldown = cooldown
        self._last_cut = -1e9
        self._last_429 = -1e9
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
            if ok and self.limit < self.maximum and time.monotonic() - self._last_429 >= self.cooldown:
                self._successes += 1
                if self._successes >= int(self.limit):
                    self._successes = 0
                    self.limit = min(float(self.maximum), self.limit + 1.0)
            self._cond.notify_all()

    def throttled(self) -> None:
        """A 429 was seen: cut the limit, at most once per cool-down (429s right after a cut
        answer requests sent under the old limit); growth waits a cool-down after any 429."""
        now = time.monotonic()
        self._successes = 0
        self._last_429 = now
        if now - self._last_cut >= self.cooldown:
            self.limit = max(1.0, self.limit / 2)
            self.cuts += 1
            self.min_seen = min(self.min_seen, int(self.limit))
            self._last_cut = now


class LimitedBackend:
    """A backend wrapped with a rate limiter and an adaptive concurrency limiter."""

    def __init__(self, inner: Backend, *, concurrency: int, rpm: float | None = None, tpm: float | None = None) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.rate = RateLimiter(rpm, tpm)
        self.adaptive = AdaptiveLimiter(concurrency)
        self.throttles = 0
        hook = getattr(inner, "on_retry", "absent")
        if hook != "absent":
            inner.on_retry = self._on_retry  # type: ignore[attr-defined]
        # Rate limits apply to every attempt, transport retries included, where the transport
        # lets us hook in; otherwise once per call.
        self._per_attempt = hasattr(inner, "before_request")
        if self._per_attempt:
            inner.before_request = self._before_request  # type: ignore[attr-defined]

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
        await self.adaptive.acquire()
        ok = False
        try:
            if not self._per_attempt:
                await self.rate.acquire(self._estimate(request))
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
