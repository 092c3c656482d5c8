"""Transport: one chat completion against an OpenAI-compatible endpoint, with transport retries.

This is the *transport* retry layer only: 408/409/429/5xx, timeouts, connection errors and
HTTP 200 responses whose body is not a chat completion (an HTML page from a proxy, a cut-off or
invalid JSON body) are retried with exponential backoff and jitter (tenacity), honouring
``Retry-After`` / ``retry-after-ms``, up to ``max_retries`` times; the number of retries is
returned with the result and counted in :attr:`OpenAIBackend.stats`. Validation *re-asks* (the
model answered, but not with a valid decision) live in the engine, not here: a broken HTTP body
is never re-asked. The SDK's own retries are disabled so there is exactly one retry policy.

Bounds: each attempt has a hard deadline of ``timeout`` seconds (connecting, waiting and reading
the body together), so one call takes at most ``timeout × (max_retries + 1)`` plus backoff and
rate-limit waits; when the last attempt timed out the error is a
:class:`~cotmod.RequestTimeoutError` naming the timeout. A
:class:`~cotmod.backends.CircuitBreaker` stops calling an endpoint that keeps failing (see
``circuit_*`` below); its half-open probe is a single attempt. API keys never appear in errors
or logs.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import logging
import math
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from .._exceptions import (
    AuthenticationError,
    CircuitOpenError,
    ConfigError,
    EndpointUnreachableError,
    MalformedResponseError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from .._verdict import Usage
from ._circuit import (
    DEFAULT_COOLDOWN,
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW,
    CircuitBreaker,
    CircuitStats,
)

__all__ = [
    "AttemptHooks",
    "Backend",
    "ChatRequest",
    "ChatResult",
    "OpenAIBackend",
    "TransportStats",
    "check_base_url",
]

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


BeforeAttempt = Callable[[ChatRequest], Awaitable[None]]
OnRetry = Callable[[BaseException, float], None]


@runtime_checkable
class AttemptHooks(Protocol):
    """A backend that lets a wrapper (e.g. :class:`~cotmod.backends.LimitedBackend`) act on each
    transport attempt of one call, retries included, without registering anything on it (so
    wrapping the same backend again, e.g. one runner after another, adds nothing up)."""

    async def complete_with_hooks(
        self,
        request: ChatRequest,
        *,
        before_attempt: BeforeAttempt | None = None,
        on_retry: OnRetry | None = None,
    ) -> ChatResult:
        """Like ``complete``; ``await before_attempt(request)`` runs before every attempt
        (outside the attempt's timeout), ``on_retry(error, delay)`` before each retry sleeps."""
        ...


@dataclass(frozen=True)
class TransportStats:
    """Counters of one :class:`OpenAIBackend` since it was made (a snapshot)."""

    calls: int
    """``complete()`` calls, refused ones included."""
    attempts: int
    """HTTP requests sent (first attempts and retries)."""
    retries: int
    """Transport retries (attempts after the first)."""
    failures: int
    """Calls that ended in a :class:`~cotmod.TransportError`, refused ones included."""
    timeouts: int
    """Attempts with no complete response within the timeout."""
    malformed: int
    """Attempts answered with HTTP 200 and a body that is not a chat completion."""
    circuit: CircuitStats
    """The circuit breaker's state and counters."""


def check_base_url(value: str) -> str:
    """Return ``value`` if it is a usable http(s) endpoint URL, else raise :class:`ConfigError`
    naming it (credentials in it are masked)."""
    shown = _mask_url(value)
    problem: str | None = None
    if not isinstance(value, str) or not value:
        problem = "it is empty"
    elif value != value.strip() or any(c.isspace() for c in value):
        problem = "it contains whitespace"
    else:
        try:
            parts = urllib.parse.urlsplit(value)
            port = parts.port  # raises ValueError when out of range or not a number
        except ValueError as exc:
            problem = str(exc)
        else:
            if not parts.scheme or "://" not in value:
                problem = "it has no scheme (http:// or https://)"
            elif parts.scheme.lower() not in ("http", "https"):
                problem = f"scheme {parts.scheme + '://'!r} is not http:// or https://"
            elif not parts.hostname:
                problem = "it has no host"
            elif port == 0:
                problem = "port 0 is not a port"
    if problem is not None:
        raise ConfigError(f"base URL {shown!r} is not a URL: {problem} (expected e.g. http://localhost:8080/v1)")
    return value


def _mask_url(value: object) -> str:
    text = str(value)
    try:
        parts = urllib.parse.urlsplit(text)
        if parts.password:
            return text.replace(":" + parts.password + "@", ":***@", 1)
    except ValueError:
        pass
    return text


class _AttemptTimeout(Exception):
    """An attempt hit its hard deadline (no complete response within ``timeout``)."""


class _MalformedBody(Exception):
    """HTTP 200 whose body is not a chat completion."""


@dataclass
class _Completion:
    text: str
    finish_reason: str | None
    usage: Usage
    model: str | None
    logprobs: list[dict[str, Any]] | None


def _snippet(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _parse_completion(body: str) -> _Completion:
    """The parts of a chat-completion body cotmod uses; :class:`_MalformedBody` if it is not one."""
    if not body.strip():
        raise _MalformedBody("the body is empty")
    try:
        data = json.loads(body)
    except ValueError as exc:
        what = "an HTML page" if body.lstrip().startswith("<") else "not valid JSON (cut off?)"
        raise _MalformedBody(f"the body is {what}: {exc.__class__.__name__} at char {getattr(exc, 'pos', '?')}, starting {_snippet(body)!r}") from None
    if not isinstance(data, dict):
        raise _MalformedBody(f"the body is JSON but not an object: {_snippet(body)!r}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            raise _MalformedBody(f"the body is an error, not a completion: {_snippet(str(err['message']), 200)!r}")
        raise _MalformedBody("response has no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise _MalformedBody("the first choice has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise _MalformedBody(f"message content is {type(content).__name__}, not a string")
    finish = choice.get("finish_reason")
    usage = Usage()
    raw_usage = data.get("usage")
    if isinstance(raw_usage, dict):
        usage.prompt_tokens = _int(raw_usage.get("prompt_tokens"))
        usage.completion_tokens = _int(raw_usage.get("completion_tokens"))
        usage.total_tokens = _int(raw_usage.get("total_tokens")) or (usage.prompt_tokens + usage.completion_tokens)
        details = raw_usage.get("prompt_tokens_details")
        usage.cached_prompt_tokens = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    logprobs = None
    raw_lp = choice.get("logprobs")
    if isinstance(raw_lp, dict) and isinstance(raw_lp.get("content"), list) and raw_lp["content"]:
        logprobs = [c for c in raw_lp["content"] if isinstance(c, dict)]
    model = data.get("model")
    return _Completion(
        text=content or "",
        finish_reason=finish if isinstance(finish, str) else None,
        usage=usage,
        model=model if isinstance(model, str) else None,
        logprobs=logprobs,
    )


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
    if isinstance(exc, (_AttemptTimeout, _MalformedBody)):
        return True
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
    """Chat completions through the official ``openai`` SDK's async client.

    ``timeout`` is the hard limit, in seconds, for one HTTP request (attempt); ``max_retries``
    the transport retries after the first attempt. ``circuit_failures`` consecutive calls that
    failed after their retries with 429/5xx/a malformed body/timeouts (a call starting more than
    ``circuit_window`` seconds after the previous such failure starts a new streak) open the
    circuit breaker for ``circuit_cooldown`` seconds (``circuit_failures=0`` disables it); see
    :mod:`cotmod.backends._circuit`. ``clock``
    (monotonic seconds) drives the breaker and ``sleep`` the backoff between retries; both are
    injectable for tests. Counters: :attr:`stats`.

    Raises :class:`~cotmod.ConfigError` for a malformed ``base_url`` or a non-positive timeout.
    """

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
        circuit_failures: int = DEFAULT_THRESHOLD,
        circuit_window: float = DEFAULT_WINDOW,
        circuit_cooldown: float = DEFAULT_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        check_base_url(base_url)
        if isinstance(timeout, bool) or not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.model_name = model
        self.base_url = base_url
        self.max_retries = max_retries
        self._api_key = api_key or "not-needed"
        self._shown_url = self._redact(_mask_url(base_url))
        self._wait = _Wait(initial_backoff, max_backoff)
        self.on_retry = on_retry
        self._timeout = float(timeout)
        self._sleep = sleep
        self._http_client = http_client
        self._headers = dict(extra_headers or {})
        self._client = self._new_client()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.circuit = CircuitBreaker(
            threshold=circuit_failures,
            window=circuit_window,
            cooldown=circuit_cooldown,
            clock=clock,
            name=self._shown_url,
        )
        self._calls = 0
        self._attempts = 0
        self._retries = 0
        self._failures = 0
        self._timeouts = 0
        self._malformed = 0

    @property
    def timeout(self) -> float:
        """Seconds allowed for one HTTP request (attempt)."""
        return self._timeout

    @property
    def stats(self) -> TransportStats:
        """Counters since the backend was made, and the circuit breaker's state."""
        return TransportStats(
            calls=self._calls,
            attempts=self._attempts,
            retries=self._retries,
            failures=self._failures,
            timeouts=self._timeouts,
            malformed=self._malformed,
            circuit=self.circuit.stats,
        )

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
        return f"OpenAIBackend(base_url={self._shown_url!r}, model={self.model_name!r})"

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

    async def _attempt(self, client: openai.AsyncOpenAI, payload: dict[str, Any]) -> _Completion:
        """One HTTP request with a hard deadline, its body checked to be a chat completion."""
        self._attempts += 1
        try:
            # The SDK's documented low-level post(): same auth and status errors as
            # chat.completions.create, without its per-request recursive transform of the
            # (large, static) messages and schema, which dominated CPU at scale. The body comes
            # back as text so that a broken body is a transport error we can retry, not a crash.
            body = await asyncio.wait_for(
                client.post("/chat/completions", cast_to=str, body=payload), timeout=self._timeout
            )
        except (asyncio.TimeoutError, openai.APITimeoutError):
            self._timeouts += 1
            raise _AttemptTimeout() from None
        try:
            return _parse_completion(body)
        except _MalformedBody:
            self._malformed += 1
            raise

    async def complete(self, request: ChatRequest) -> ChatResult:
        return await self.complete_with_hooks(request)

    async def complete_with_hooks(
        self,
        request: ChatRequest,
        *,
        before_attempt: BeforeAttempt | None = None,
        on_retry: OnRetry | None = None,
    ) -> ChatResult:
        """``complete``, with per-call hooks (see :class:`AttemptHooks`); ``on_retry`` runs
        after the backend's own ``on_retry``."""
        self._calls += 1
        started = self.circuit.now()
        try:
            probe = self.circuit.before_call()
        except CircuitOpenError:
            self._failures += 1
            raise
        try:
            result = await self._complete(request, probe, before_attempt, on_retry)
        except TransportError as exc:
            self._failures += 1
            self.circuit.record_failure(exc, probe, started)
            raise
        except BaseException:
            self.circuit.record_abandoned(probe)
            raise
        self.circuit.record_success(probe)
        return result

    async def _complete(
        self, request: ChatRequest, probe: bool, before_attempt: BeforeAttempt | None, on_retry: OnRetry | None
    ) -> ChatResult:
        retries = 0

        def before_sleep(state: RetryCallState) -> None:
            nonlocal retries
            retries += 1
            self._retries += 1
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
            if exc is not None:
                if self.on_retry is not None:
                    self.on_retry(exc, delay)
                if on_retry is not None:
                    on_retry(exc, delay)

        payload = self._payload(request)
        client = self._client_for_loop()
        attempts = 1 if probe else self.max_retries + 1
        url = self._shown_url
        start = time.perf_counter()
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=self._wait,
                retry=retry_if_exception(_is_retryable),
                before_sleep=before_sleep,
                sleep=self._sleep,
                reraise=True,
            ):
                with attempt:
                    if retries:
                        self.circuit.check_attempt(probe)
                    if before_attempt is not None:
                        await before_attempt(request)
                    parsed = await self._attempt(client, payload)
        except openai.AuthenticationError as exc:
            raise AuthenticationError(
                f"{url}: authentication failed (HTTP {exc.status_code}); check the API key",
                status_code=exc.status_code,
                attempts=retries + 1,
            ) from None
        except openai.PermissionDeniedError as exc:
            raise AuthenticationError(
                f"{url}: permission denied (HTTP {exc.status_code}) for model {self.model_name!r}",
                status_code=exc.status_code,
                attempts=retries + 1,
            ) from None
        except openai.RateLimitError:
            raise RateLimitedError(
                f"{url}: rate limited (HTTP 429) after {retries + 1} attempts",
                status_code=429,
                attempts=retries + 1,
            ) from None
        except openai.APIStatusError as exc:
            detail = self._redact(str(exc.message))[:300]
            cls = ServerError if exc.status_code >= 500 else TransportError
            raise cls(
                f"{url}: HTTP {exc.status_code} after {retries + 1} attempt(s): {detail}",
                status_code=exc.status_code,
                attempts=retries + 1,
            ) from None
        except _AttemptTimeout:
            raise RequestTimeoutError(
                f"{url} timed out after {retries + 1} attempt(s): no response within {self._timeout:g} s; "
                "raise it with --timeout or COTMOD_TIMEOUT",
                timeout=self._timeout,
                attempts=retries + 1,
            ) from None
        except _MalformedBody as exc:
            raise MalformedResponseError(
                f"{url}: HTTP 200 but not a chat completion after {retries + 1} attempt(s): "
                f"{self._redact(str(exc))}",
                status_code=200,
                attempts=retries + 1,
            ) from None
        except openai.APIConnectionError:
            raise EndpointUnreachableError(f"{url} is unreachable after {retries + 1} attempt(s)", attempts=retries + 1) from None
        latency = time.perf_counter() - start
        return ChatResult(
            text=parsed.text,
            finish_reason=parsed.finish_reason,
            usage=parsed.usage,
            model=parsed.model or self.model_name,
            transport_retries=retries,
            latency_s=latency,
            logprobs=parsed.logprobs,
        )

    async def aclose(self) -> None:
        await self._client.close()
        self._loop = None
