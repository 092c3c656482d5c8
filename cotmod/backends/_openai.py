"""Transport: one chat completion against an OpenAI-compatible endpoint, with transport retries.

This is the *transport* retry layer only: 408/409/429/5xx, timeouts and connection errors are
retried with exponential backoff and jitter (tenacity), honouring ``Retry-After`` /
``retry-after-ms``, up to ``max_retries`` times; the number of retries is returned with the
result. Validation *re-asks* live in the engine, not here. The SDK's own retries are disabled so
there is exactly one retry policy. API keys never appear in errors or logs.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import openai
from openai.types.chat import ChatCompletion
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from .._exceptions import (
    AuthenticationError,
    EndpointUnreachableError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from .._verdict import Usage

__all__ = ["Backend", "ChatRequest", "ChatResult", "OpenAIBackend"]

log = logging.getLogger("cotmod")

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 60.0


@dataclass
class ChatRequest:
    """What the engine asks the transport for."""

    messages: list[dict[str, str]]
    schema: dict[str, Any] | None = None
    response_format: str = "json_schema"
    temperature: float = 0.0
    max_tokens: int = 768
    seed: int | None = None
    logprobs: bool = False
    schema_name: str = "cotmod_decision"
    prompt_tokens: int | None = None  # the engine's estimate (for token-rate limits)


@dataclass
class ChatResult:
    """One completion, with what it took to get it."""

    text: str
    finish_reason: str | None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    transport_retries: int = 0
    latency_s: float = 0.0
    logprobs: list[dict[str, Any]] | None = None


@runtime_checkable
class Backend(Protocol):
    """Anything that can complete a chat request asynchronously."""

    model_name: str

    async def complete(self, request: ChatRequest) -> ChatResult: ...

    async def aclose(self) -> None: ...


def _retry_after_seconds(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return min(max(float(ms) / 1000.0, 0.0), MAX_RETRY_AFTER)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return min(max(float(ra), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None  # unparsable: fall back to exponential backoff
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return min(max(parsed.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUSES or exc.status_code >= 500
    return isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError))


class _Wait:
    """Retry-After when the server gives one, else exponential backoff with jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum

    def backoff(self, state: RetryCallState) -> float:
        exp = self.initial * float(2 ** max(state.attempt_number - 1, 0))
        return min(self.maximum, exp + random.uniform(0, self.initial))

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            ra = _retry_after_seconds(exc)
            if ra is not None:
                return ra
        return float(self.backoff(state))


class OpenAIBackend:
    """Chat completions through the official ``openai`` SDK's async client."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        initial_backoff: float = INITIAL_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        http_client: Any | None = None,
        on_retry: Callable[[BaseException, float], None] | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.model_name = model
        self.base_url = base_url
        self.max_retries = max_retries
        self._api_key = api_key or "not-needed"
        self._wait = _Wait(initial_backoff, max_backoff)
        self.on_retry = on_retry
        # awaited before every attempt, retries included (the runner's rate limiter)
        self.before_request: Callable[[ChatRequest], Awaitable[None]] | None = None
        self._timeout = timeout
        self._http_client = http_client
        self._headers = dict(extra_headers or {})
        self._client = self._new_client()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _new_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            timeout=self._timeout,
            max_retries=0,
            http_client=self._http_client,
            default_headers=self._headers or None,
        )

    def _client_for_loop(self) -> openai.AsyncOpenAI:
        """Connections belong to an event loop: a new loop (e.g. a second asyncio.run) gets a
        new client instead of failing on the closed one."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            if self._http_client is None:
                self._client = self._new_client()
            self._loop = loop
        return self._client

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model_name!r})"

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key != "not-needed" and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model_name,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = 5
        if request.response_format == "json_schema" and request.schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": True},
            }
        elif request.response_format == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    async def complete(self, request: ChatRequest) -> ChatResult:
        retries = 0

        def before_sleep(state: RetryCallState) -> None:
            nonlocal retries
            retries += 1
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            status = getattr(exc, "status_code", None)
            log.debug(
                "transport retry %d/%d after %s%s; sleeping %.2fs",
                retries,
                self.max_retries,
                type(exc).__name__,
                f" (HTTP {status})" if status else "",
                delay,
            )
            if self.on_retry is not None and exc is not None:
                self.on_retry(exc, delay)

        payload = self._payload(request)
        client = self._client_for_loop()
        start = time.perf_counter()
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.max_retries + 1),
                wait=self._wait,
                retry=retry_if_exception(_is_retryable),
                before_sleep=before_sleep,
                reraise=True,
            ):
                with attempt:
                    if self.before_request is not None:
                        await self.before_request(request)
                    # The SDK's documented low-level post(): same auth, errors and parsing as
                    # chat.completions.create, without its per-request recursive transform of
                    # the (large, static) messages and schema, which dominated CPU at scale.
                    resp = await client.post("/chat/completions", cast_to=ChatCompletion, body=payload)
        except openai.AuthenticationError as exc:
            raise AuthenticationError(
                f"{self.base_url}: authentication failed (HTTP {exc.status_code}); check the API key",
                status_code=exc.status_code,
                attempts=retries + 1,
            ) from None
        except openai.PermissionDeniedError as exc:
            raise AuthenticationError(
                f"{self.base_url}: permission denied (HTTP {exc.status_code}) for model {self.model_name!r}",
                status_code=exc.status_code,
                attempts=retries + 1,
            ) from None
        except openai.RateLimitError:
            raise RateLimitedError(
                f"{self.base_url}: rate limited (HTTP 429) after {retries + 1} attempts",
                status_code=429,
                attempts=retries + 1,
            ) from None
        except openai.APIStatusError as exc:
            detail = self._redact(str(exc.message))[:300]
            cls = ServerError if exc.status_code >= 500 else TransportError
            raise cls(
                f"{self.base_url}: HTTP {exc.status_code} after {retries + 1} attempt(s): {detail}",
                status_code=exc.status_code,
                attempts=retries + 1,
            ) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "is unreachable"
            raise EndpointUnreachableError(
                f"{self.base_url} {kind} after {retries + 1} attempt(s)", attempts=retries + 1
            ) from None
        latency = time.perf_counter() - start
        if not resp.choices:
            raise ServerError(f"{self.base_url}: response has no choices", attempts=retries + 1)
        choice = resp.choices[0]
        usage = Usage()
        if resp.usage is not None:
            usage.prompt_tokens = resp.usage.prompt_tokens or 0
            usage.completion_tokens = resp.usage.completion_tokens or 0
            usage.total_tokens = resp.usage.total_tokens or (usage.prompt_tokens + usage.completion_tokens)
            details = getattr(resp.usage, "prompt_tokens_details", None)
            cached = getattr(details, "cached_tokens", None) if details is not None else None
            usage.cached_prompt_tokens = int(cached or 0)
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = [c.model_dump() for c in choice.logprobs.content]
        return ChatResult(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            usage=usage,
            model=resp.model or self.model_name,
            transport_retries=retries,
            latency_s=latency,
            logprobs=logprobs,
        )

    async def aclose(self) -> None:
        await self._client.close()
        self._loop = None
