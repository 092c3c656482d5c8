"""Transport layer: retries, Retry-After, error mapping, key hygiene, the request payload,
broken bodies, timeouts, the circuit breaker and base-URL checks.

Tests talk to an in-process ``httpx2.MockTransport``, a closed 127.0.0.1 port, or a real HTTP
server on 127.0.0.1 (:class:`cotmod.testing.FakeOpenAIServer` with fault modes), never to the
network. Backoffs are tiny or skipped (an injected ``sleep``), and the circuit breaker runs on a
fake clock, so the whole file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import openai
import pytest

from cotmod import ChatRequest, OpenAIBackend
from cotmod._exceptions import (
    AuthenticationError,
    CircuitOpenError,
    ConfigError,
    CotmodError,
    EndpointUnreachableError,
    MalformedResponseError,
    ModelOutputError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from cotmod.backends import CircuitBreaker
from cotmod.testing import FakeOpenAIServer

SECRET = "sk-test-SECRET123456"
BASE_URL = "http://127.0.0.1:9/v1"

Handler = Callable[[httpx2.Request], httpx2.Response]


def completion(text: str = "hello", *, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": usage
        if usage is not None
        else {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    return body


def ok(text: str = "hello", **kw: Any) -> httpx2.Response:
    return httpx2.Response(200, json=completion(text, **kw))


def error(
    status: int, message: str = "boom", headers: dict[str, str] | None = None
) -> httpx2.Response:
    return httpx2.Response(
        status, json={"error": {"message": message, "type": "test_error"}}, headers=headers
    )


class Recorder:
    """A scripted handler: each call pops the next step (a Response, an exception, or a callable)."""

    def __init__(self, *steps: Any, repeat_last: bool = False) -> None:
        self.steps = list(steps)
        self.repeat_last = repeat_last
        self.requests: list[httpx2.Request] = []
        self.times: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.requests)

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        self.times.append(time.perf_counter())
        keep = self.repeat_last and len(self.steps) == 1
        step = self.steps[0] if keep else self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, type) and issubclass(step, BaseException):
            raise step("simulated failure", request=request)
        if callable(step):
            return step(request)
        return step


BackendFactory = Callable[..., OpenAIBackend]


@pytest.fixture
async def make_backend() -> AsyncIterator[BackendFactory]:
    made: list[OpenAIBackend] = []

    def factory(handler: Handler, **kw: Any) -> OpenAIBackend:
        kw.setdefault("max_retries", 3)
        kw.setdefault("initial_backoff", 0.01)
        kw.setdefault("max_backoff", 0.05)
        kw.setdefault("api_key", SECRET)
        backend = OpenAIBackend(
            base_url=BASE_URL,
            model="m",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
            **kw,
        )
        made.append(backend)
        return backend

    yield factory
    for b in made:
        await b.aclose()


def request(**kw: Any) -> ChatRequest:
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    return ChatRequest(**kw)


# ---------------------------------------------------------------------------------------------
# Retries that end in success


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
@pytest.mark.parametrize("failures", [1, 3])
async def test_retryable_status_then_success(
    make_backend: BackendFactory, status: int, failures: int
) -> None:
    rec = Recorder(*[error(status) for _ in range(failures)], ok("hello"))
    backend = make_backend(rec, max_retries=3)
    result = await backend.complete(request())
    assert result.text == "hello"
    assert result.finish_reason == "stop"
    assert result.model == "m"
    assert result.transport_retries == failures
    assert rec.calls == failures + 1
    assert result.latency_s > 0


async def test_no_retry_needed_reports_zero_retries(make_backend: BackendFactory) -> None:
    rec = Recorder(ok("fine"))
    result = await make_backend(rec).complete(request())
    assert (result.text, result.transport_retries, rec.calls) == ("fine", 0, 1)


async def test_exactly_max_retries_failures_still_succeeds(make_backend: BackendFactory) -> None:
    rec = Recorder(error(503), error(503), ok("last chance"))
    result = await make_backend(rec, max_retries=2).complete(request())
    assert result.text == "last chance"
    assert result.transport_retries == 2
    assert rec.calls == 3


async def test_max_retries_zero_means_a_single_attempt(make_backend: BackendFactory) -> None:
    rec = Recorder(error(503), ok())
    with pytest.raises(ServerError) as ei:
        await make_backend(rec, max_retries=0).complete(request())
    assert rec.calls == 1
    assert ei.value.attempts == 1
    assert ei.value.status_code == 503


def test_negative_max_retries_rejected() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        OpenAIBackend(base_url=BASE_URL, model="m", max_retries=-1)


# ---------------------------------------------------------------------------------------------
# Retry-After


@pytest.mark.parametrize(
    "headers",
    [{"retry-after": "0.2"}, {"retry-after-ms": "200"}],
    ids=["retry-after", "retry-after-ms"],
)
async def test_429_retry_after_is_honoured(
    make_backend: BackendFactory, headers: dict[str, str]
) -> None:
    rec = Recorder(error(429, "slow down", headers=headers), ok("after wait"))
    delays: list[float] = []
    backend = make_backend(rec, on_retry=lambda exc, delay: delays.append(delay))
    start = time.perf_counter()
    result = await backend.complete(request())
    elapsed = time.perf_counter() - start
    assert result.text == "after wait"
    assert result.transport_retries == 1
    assert rec.calls == 2
    # the backoff alone would be <= 0.05 s: only the header explains a 0.2 s wait
    assert rec.times[1] - rec.times[0] >= 0.18
    assert elapsed >= 0.18
    assert delays == [pytest.approx(0.2)]


async def test_retry_after_ms_takes_precedence_over_retry_after(
    make_backend: BackendFactory,
) -> None:
    headers = {"retry-after": "5", "retry-after-ms": "30"}
    rec = Recorder(error(429, headers=headers), ok())
    delays: list[float] = []
    result = await make_backend(rec, on_retry=lambda e, d: delays.append(d)).complete(request())
    assert result.transport_retries == 1
    assert delays == [pytest.approx(0.03)]
    assert rec.times[1] - rec.times[0] < 1.0


async def test_retry_after_on_503_is_honoured_too(make_backend: BackendFactory) -> None:
    rec = Recorder(error(503, headers={"retry-after": "0.15"}), ok())
    result = await make_backend(rec).complete(request())
    assert result.transport_retries == 1
    assert rec.times[1] - rec.times[0] >= 0.13


async def test_without_retry_after_backoff_stays_small(make_backend: BackendFactory) -> None:
    rec = Recorder(error(500), error(500), error(500), ok())
    delays: list[float] = []
    result = await make_backend(rec, on_retry=lambda e, d: delays.append(d)).complete(request())
    assert result.transport_retries == 3
    assert len(delays) == 3
    assert all(0 <= d <= 0.05 for d in delays), delays


async def test_retry_after_http_date_in_the_past_means_no_wait(
    make_backend: BackendFactory,
) -> None:
    headers = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    rec = Recorder(error(429, headers=headers), ok())
    delays: list[float] = []
    result = await make_backend(rec, on_retry=lambda e, d: delays.append(d)).complete(request())
    assert result.transport_retries == 1
    assert delays == [0.0]


async def test_unparsable_retry_after_falls_back_to_backoff(make_backend: BackendFactory) -> None:
    rec = Recorder(error(429, headers={"retry-after": "soon"}), ok())
    result = await make_backend(rec).complete(request())
    assert result.transport_retries == 1
    assert rec.calls == 2


# ---------------------------------------------------------------------------------------------
# Retries exhausted


async def test_429_forever_raises_rate_limited(make_backend: BackendFactory) -> None:
    rec = Recorder(error(429, "too many"), repeat_last=True)
    backend = make_backend(rec, max_retries=2)
    with pytest.raises(RateLimitedError) as ei:
        await backend.complete(request())
    exc = ei.value
    assert isinstance(exc, TransportError)
    assert isinstance(exc, CotmodError)
    assert exc.attempts == 3
    assert exc.status_code == 429
    assert rec.calls == 3
    assert "429" in str(exc)
    assert "3 attempts" in str(exc)


async def test_5xx_forever_raises_server_error(make_backend: BackendFactory) -> None:
    rec = Recorder(error(502, "bad gateway"), repeat_last=True)
    with pytest.raises(ServerError) as ei:
        await make_backend(rec, max_retries=2).complete(request())
    assert ei.value.status_code == 502
    assert ei.value.attempts == 3
    assert rec.calls == 3
    assert "HTTP 502" in str(ei.value)
    assert BASE_URL in str(ei.value)


async def test_connection_errors_are_retried(make_backend: BackendFactory) -> None:
    rec = Recorder(httpx2.ConnectError, httpx2.ConnectError, ok("reconnected"))
    result = await make_backend(rec, max_retries=3).complete(request())
    assert result.text == "reconnected"
    assert result.transport_retries == 2
    assert rec.calls == 3


async def test_timeouts_are_retried(make_backend: BackendFactory) -> None:
    rec = Recorder(httpx2.ReadTimeout, ok("eventually"))
    result = await make_backend(rec).complete(request())
    assert result.text == "eventually"
    assert result.transport_retries == 1


async def test_connection_errors_exhausted_raise_unreachable(make_backend: BackendFactory) -> None:
    rec = Recorder(httpx2.ConnectError, repeat_last=True)
    with pytest.raises(EndpointUnreachableError) as ei:
        await make_backend(rec, max_retries=2).complete(request())
    assert ei.value.attempts == 3
    assert rec.calls == 3
    assert "unreachable" in str(ei.value)
    assert "3 attempt" in str(ei.value)


async def test_timeouts_exhausted_raise_unreachable_saying_timed_out(
    make_backend: BackendFactory,
) -> None:
    rec = Recorder(httpx2.ReadTimeout, repeat_last=True)
    with pytest.raises(EndpointUnreachableError, match="timed out") as ei:
        await make_backend(rec, max_retries=1).complete(request())
    assert ei.value.attempts == 2
    assert rec.calls == 2


async def test_real_closed_port_is_unreachable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(
        base_url=f"http://127.0.0.1:{port}/v1",
        model="m",
        max_retries=1,
        initial_backoff=0.01,
        max_backoff=0.02,
        timeout=2.0,
    )
    try:
        start = time.perf_counter()
        with pytest.raises(EndpointUnreachableError) as ei:
            await backend.complete(request())
        assert time.perf_counter() - start < 2.0
    finally:
        await backend.aclose()
    assert ei.value.attempts == 2
    assert str(port) in str(ei.value)


# ---------------------------------------------------------------------------------------------
# Errors that are not retried, and key hygiene


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_errors_fail_fast_and_never_leak_the_key(
    make_backend: BackendFactory, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.DEBUG)  # root: cotmod, openai and httpx2 loggers alike
    caplog.set_level(logging.DEBUG, logger="cotmod")
    # like real providers, the error body echoes the offending key
    rec = Recorder(error(status, f"Incorrect API key provided: {SECRET}"), ok())
    backend = make_backend(rec, max_retries=3)
    with pytest.raises(AuthenticationError) as ei:
        await backend.complete(request())
    exc = ei.value
    assert rec.calls == 1  # no retry
    assert exc.attempts == 1
    assert exc.status_code == status
    # the key really was sent, so its absence below means something
    assert rec.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(exc)
    assert SECRET not in repr(exc)
    assert SECRET not in "".join(traceback.format_exception(exc))
    assert SECRET not in repr(backend)
    assert SECRET not in str(backend)
    assert SECRET not in caplog.text
    assert all(SECRET not in r.getMessage() for r in caplog.records)


async def test_retry_logs_mention_retries_but_not_the_key(
    make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="cotmod")
    rec = Recorder(error(503, f"overloaded for key {SECRET}"), ok())
    await make_backend(rec).complete(request())
    cotmod_records = [r for r in caplog.records if r.name == "cotmod"]
    assert any("transport retry 1/3" in r.getMessage() for r in cotmod_records)
    assert any("HTTP 503" in r.getMessage() for r in cotmod_records)
    assert SECRET not in caplog.text


async def test_rate_limited_message_never_contains_the_key(make_backend: BackendFactory) -> None:
    rec = Recorder(error(429, f"quota exceeded for {SECRET}"), repeat_last=True)
    with pytest.raises(RateLimitedError) as ei:
        await make_backend(rec, max_retries=1).complete(request())
    assert SECRET not in str(ei.value)
    assert SECRET not in repr(ei.value)


async def test_rate_limited_traceback_never_contains_the_key(make_backend: BackendFactory) -> None:
    rec = Recorder(error(429, f"quota exceeded for {SECRET}"), repeat_last=True)
    with pytest.raises(RateLimitedError) as ei:
        await make_backend(rec, max_retries=0).complete(request())
    assert SECRET not in "".join(traceback.format_exception(ei.value))


def test_repr_hides_key_but_shows_endpoint() -> None:
    backend = OpenAIBackend(base_url=BASE_URL, model="m", api_key=SECRET)
    text = repr(backend)
    assert SECRET not in text
    assert BASE_URL in text
    assert "'m'" in text


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_client_errors_are_not_retried(make_backend: BackendFactory, status: int) -> None:
    rec = Recorder(error(status, "bad request: unknown field"), ok())
    with pytest.raises(TransportError) as ei:
        await make_backend(rec, max_retries=3).complete(request())
    exc = ei.value
    assert type(exc) is TransportError  # not ServerError, not a retried kind
    assert rec.calls == 1
    assert exc.attempts == 1
    assert exc.status_code == status
    assert f"HTTP {status}" in str(exc)
    assert "unknown field" in str(exc)


async def test_client_error_detail_is_redacted(make_backend: BackendFactory) -> None:
    rec = Recorder(error(400, f"key {SECRET} may not use this model"))
    with pytest.raises(TransportError) as ei:
        await make_backend(rec).complete(request())
    assert SECRET not in str(ei.value)
    assert "***" in str(ei.value)
    assert "HTTP 400" in str(ei.value)


async def test_response_without_choices_is_a_retried_server_error(make_backend: BackendFactory) -> None:
    body = completion()
    body["choices"] = []
    rec = Recorder(httpx2.Response(200, json=body), repeat_last=True)
    with pytest.raises(MalformedResponseError, match="no choices") as ei:
        await make_backend(rec, max_retries=2).complete(request())
    assert isinstance(ei.value, ServerError)
    assert rec.calls == 3 and ei.value.attempts == 3


# ---------------------------------------------------------------------------------------------
# What is sent, what is parsed


SCHEMA = {
    "type": "object",
    "properties": {"decision": {"type": "string", "enum": ["safe", "violates"]}},
    "required": ["decision"],
    "additionalProperties": False,
}


async def test_payload_json_schema(make_backend: BackendFactory) -> None:
    rec = Recorder(ok())
    messages = [{"role": "system", "content": "be careful"}, {"role": "user", "content": "hi"}]
    req = ChatRequest(
        messages=messages,
        schema=SCHEMA,
        response_format="json_schema",
        temperature=0.3,
        max_tokens=123,
        seed=42,
        schema_name="my_schema",
    )
    await make_backend(rec).complete(req)
    assert rec.requests[0].method == "POST"
    assert rec.requests[0].url.path == "/v1/chat/completions"
    sent = rec.payloads()[0]
    assert sent["model"] == "m"
    assert sent["messages"] == messages
    assert sent["temperature"] == 0.3
    assert sent["max_tokens"] == 123
    assert sent["seed"] == 42
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "my_schema", "schema": SCHEMA, "strict": True},
    }
    assert "logprobs" not in sent
    assert "top_logprobs" not in sent


async def test_payload_json_object(make_backend: BackendFactory) -> None:
    rec = Recorder(ok())
    await make_backend(rec).complete(request(schema=SCHEMA, response_format="json_object"))
    assert rec.payloads()[0]["response_format"] == {"type": "json_object"}


async def test_payload_text_has_no_response_format_and_no_seed(
    make_backend: BackendFactory,
) -> None:
    rec = Recorder(ok())
    await make_backend(rec).complete(request(schema=SCHEMA, response_format="text"))
    sent = rec.payloads()[0]
    assert "response_format" not in sent
    assert "seed" not in sent  # seed=None is not sent
    assert sent["temperature"] == 0.0
    assert sent["max_tokens"] == 768


async def test_payload_json_schema_without_schema_sends_no_response_format(
    make_backend: BackendFactory,
) -> None:
    rec = Recorder(ok())
    await make_backend(rec).complete(request(schema=None, response_format="json_schema"))
    assert "response_format" not in rec.payloads()[0]


async def test_payload_identical_on_every_retry(make_backend: BackendFactory) -> None:
    rec = Recorder(error(500), error(502), ok())
    await make_backend(rec).complete(request(schema=SCHEMA, seed=7))
    payloads = rec.payloads()
    assert len(payloads) == 3
    assert payloads[0] == payloads[1] == payloads[2]


async def test_payload_logprobs(make_backend: BackendFactory) -> None:
    rec = Recorder(ok())
    await make_backend(rec).complete(request(logprobs=True))
    sent = rec.payloads()[0]
    assert sent["logprobs"] is True
    assert sent["top_logprobs"] == 5


async def test_usage_is_parsed(make_backend: BackendFactory) -> None:
    usage = {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    rec = Recorder(ok("x", usage=usage))
    result = await make_backend(rec).complete(request())
    assert result.usage.prompt_tokens == 11
    assert result.usage.completion_tokens == 7
    assert result.usage.total_tokens == 18
    assert result.usage.cached_prompt_tokens == 4


async def test_default_usage_parsed(make_backend: BackendFactory) -> None:
    result = await make_backend(Recorder(ok())).complete(request())
    assert result.usage.prompt_tokens == 3
    assert result.usage.completion_tokens == 2
    assert result.usage.total_tokens == 5
    assert result.usage.cached_prompt_tokens == 0


async def test_missing_usage_gives_zero_usage(make_backend: BackendFactory) -> None:
    body = completion()
    del body["usage"]
    result = await make_backend(Recorder(httpx2.Response(200, json=body))).complete(request())
    assert result.usage.total_tokens == 0
    assert result.text == "hello"


async def test_null_content_becomes_empty_text(make_backend: BackendFactory) -> None:
    body = completion()
    body["choices"][0]["message"]["content"] = None
    body["choices"][0]["finish_reason"] = "length"
    result = await make_backend(Recorder(httpx2.Response(200, json=body))).complete(request())
    assert result.text == ""
    assert result.finish_reason == "length"


async def test_on_retry_called_once_per_retry(make_backend: BackendFactory) -> None:
    calls: list[tuple[BaseException, float]] = []
    rec = Recorder(error(500), httpx2.ConnectError, error(429), ok())
    backend = make_backend(
        rec, max_retries=5, on_retry=lambda exc, delay: calls.append((exc, delay))
    )
    result = await backend.complete(request())
    assert result.transport_retries == 3
    assert len(calls) == 3
    assert isinstance(calls[0][0], openai.InternalServerError)
    assert isinstance(calls[1][0], openai.APIConnectionError)
    assert isinstance(calls[2][0], openai.RateLimitError)
    assert all(isinstance(d, float) and d >= 0 for _, d in calls)


async def test_on_retry_not_called_without_retries_or_on_final_failure(
    make_backend: BackendFactory,
) -> None:
    calls: list[Any] = []
    rec = Recorder(error(500), repeat_last=True)
    with pytest.raises(ServerError):
        await make_backend(rec, max_retries=1, on_retry=lambda e, d: calls.append(e)).complete(
            request()
        )
    assert rec.calls == 2
    assert len(calls) == 1  # one retry, the final failure does not sleep

    calls.clear()
    await make_backend(Recorder(ok()), on_retry=lambda e, d: calls.append(e)).complete(request())
    assert calls == []


async def test_extra_headers_are_sent(make_backend: BackendFactory) -> None:
    rec = Recorder(ok())
    await make_backend(rec, extra_headers={"x-gateway-route": "moderation"}).complete(request())
    assert rec.requests[0].headers["x-gateway-route"] == "moderation"
    assert rec.requests[0].headers["authorization"] == f"Bearer {SECRET}"


# ---------------------------------------------------------------------------------------------
# Against a real HTTP server: broken bodies, hangs, the circuit breaker


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def no_sleep(seconds: float) -> None:
    """Backoff that does not wait (retry delays are irrelevant to these tests)."""


def server_backend(url: str, **kw: Any) -> OpenAIBackend:
    kw.setdefault("max_retries", 2)
    kw.setdefault("sleep", no_sleep)
    kw.setdefault("api_key", SECRET)
    return OpenAIBackend(base_url=url, model="m", **kw)


@pytest.mark.parametrize("fault", ["html", "truncated", "invalid_json"])
async def test_http_200_with_a_broken_body_is_a_retried_transport_error(
    fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(fault=fault) as srv:
        backend = server_backend(srv.base_url, max_retries=2)
        try:
            with pytest.raises(MalformedResponseError) as ei:
                await backend.complete(request())
        finally:
            await backend.aclose()
    exc = ei.value
    assert isinstance(exc, TransportError) and isinstance(exc, ServerError)
    assert not isinstance(exc, ModelOutputError)  # never a validation re-ask
    assert srv.requests == 3 and srv.faults == 3  # retried like a 5xx
    assert exc.attempts == 3 and exc.status_code == 200
    message = str(exc)
    assert srv.base_url in message and "HTTP 200 but not a chat completion" in message
    assert "3 attempt(s)" in message
    assert "\n" not in message
    stats = backend.stats
    assert (stats.attempts, stats.retries, stats.malformed, stats.failures) == (3, 2, 3, 1)


async def test_html_page_is_named_as_such() -> None:
    with FakeOpenAIServer(fault="html") as srv:
        backend = server_backend(srv.base_url, max_retries=0)
        try:
            with pytest.raises(MalformedResponseError, match=r"an HTML page.*Bad Gateway"):
                await backend.complete(request())
        finally:
            await backend.aclose()


@pytest.mark.parametrize("fault", ["html", "truncated"])
async def test_broken_body_then_a_good_one_succeeds(fault: str) -> None:
    with FakeOpenAIServer(fault=fault, fault_first=2, handler=lambda body: "fine") as srv:
        backend = server_backend(srv.base_url, max_retries=3)
        try:
            result = await backend.complete(request())
        finally:
            await backend.aclose()
    assert result.text == "fine"
    assert result.transport_retries == 2
    assert srv.requests == 3


async def test_broken_body_never_leaks_the_key(make_backend: BackendFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    page = f"<html><body>502 upstream rejected key {SECRET}</body></html>"
    rec = Recorder(httpx2.Response(200, text=page, headers={"content-type": "text/html"}), repeat_last=True)
    with pytest.raises(MalformedResponseError) as ei:
        await make_backend(rec, max_retries=1).complete(request())
    assert rec.calls == 2
    assert "upstream rejected key" in str(ei.value)  # the snippet is shown ...
    assert SECRET not in str(ei.value)  # ... redacted
    assert SECRET not in "".join(traceback.format_exception(ei.value))
    assert SECRET not in caplog.text


async def test_a_server_that_never_answers_is_bounded_by_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(fault="hang") as srv:
        backend = server_backend(srv.base_url, timeout=0.2, max_retries=2)
        try:
            with pytest.raises(RequestTimeoutError) as ei:
                await asyncio.wait_for(backend.complete(request()), 60)  # safety net only
        finally:
            await backend.aclose()
    exc = ei.value
    assert isinstance(exc, EndpointUnreachableError)
    assert srv.requests == 3  # each attempt gave up after its timeout; then no more
    assert exc.attempts == 3 and exc.timeout == 0.2
    assert "no response within 0.2 s" in str(exc)
    assert "--timeout" in str(exc) and "COTMOD_TIMEOUT" in str(exc)
    assert "3 attempt(s)" in str(exc)
    assert backend.stats.timeouts == 3
    assert SECRET not in str(exc) and SECRET not in caplog.text


async def test_a_body_that_never_ends_is_bounded_by_the_timeout() -> None:
    # headers arrive, then a byte every 50 ms: no single read waits for the timeout, so only a
    # deadline on the whole request ends it
    with FakeOpenAIServer(fault="slow_body") as srv:
        backend = server_backend(srv.base_url, timeout=0.3, max_retries=1)
        try:
            with pytest.raises(RequestTimeoutError, match=r"no response within 0\.3 s") as ei:
                await asyncio.wait_for(backend.complete(request()), 60)  # safety net only
        finally:
            await backend.aclose()
    assert ei.value.attempts == 2
    assert srv.requests == 2


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf")])
def test_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        OpenAIBackend(base_url=BASE_URL, model="m", timeout=timeout)


async def test_circuit_opens_after_consecutive_429s_and_stops_hitting_the_server() -> None:
    clock = FakeClock()
    with FakeOpenAIServer(fail_first=10**9, fail_status=429, handler=lambda body: "ok") as srv:
        backend = server_backend(
            srv.base_url, max_retries=2, circuit_failures=3, circuit_cooldown=30.0, clock=clock
        )
        try:
            for _ in range(3):  # each call uses all of its 3 attempts
                with pytest.raises(RateLimitedError):
                    await backend.complete(request())
                clock.advance(1.0)
            assert srv.requests == 9
            assert backend.stats.circuit.state == "open"
            assert backend.stats.circuit.opened == 1

            clock.advance(10.0)  # 11 s after it opened
            for _ in range(5):
                with pytest.raises(CircuitOpenError) as ei:
                    await backend.complete(request())
            assert srv.requests == 9  # refused without touching the server
            exc = ei.value
            assert isinstance(exc, TransportError)
            assert exc.failures == 3 and exc.attempts == 0 and exc.status_code == 429
            assert exc.retry_in == pytest.approx(19.0)
            assert "circuit open after 3 consecutive failed requests" in str(exc)
            assert "RateLimitedError HTTP 429" in str(exc)
            assert "in 19.0 s" in str(exc)
            assert backend.stats.circuit.rejected == 5

            clock.advance(19.0)  # cool-down over: one probe, a single attempt, fails: open again
            with pytest.raises(RateLimitedError) as probe:
                await backend.complete(request())
            assert probe.value.attempts == 1
            assert srv.requests == 10
            assert backend.stats.circuit.state == "open" and backend.stats.circuit.opened == 2
            with pytest.raises(CircuitOpenError):
                await backend.complete(request())
            assert srv.requests == 10

            srv.fail_first = srv.requests  # the quota is back
            clock.advance(30.0)
            result = await backend.complete(request())  # the probe succeeds: closed
            assert result.transport_retries == 0
            assert backend.stats.circuit.state == "closed"
            assert backend.stats.circuit.consecutive_failures == 0
            await backend.complete(request())
            assert srv.requests == 12
        finally:
            await backend.aclose()
    stats = backend.stats
    assert stats.calls == 12 and stats.attempts == 12 and stats.failures == 10
    assert stats.circuit.probes == 2 and stats.circuit.rejected == 6


async def test_circuit_breaker_can_be_disabled() -> None:
    clock = FakeClock()
    with FakeOpenAIServer(fail_first=10**9, fail_status=503) as srv:
        backend = server_backend(srv.base_url, max_retries=1, circuit_failures=0, clock=clock)
        try:
            for _ in range(8):
                with pytest.raises(ServerError):
                    await backend.complete(request())
        finally:
            await backend.aclose()
    assert srv.requests == 16
    assert backend.stats.circuit.state == "closed" and backend.stats.circuit.opened == 0


async def test_circuit_messages_never_contain_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    url_with_key = "http://127.0.0.1:9/v1"
    rec = Recorder(error(429, f"quota exceeded for {SECRET}"), repeat_last=True)
    backend = OpenAIBackend(
        base_url=url_with_key,
        model="m",
        api_key=SECRET,
        max_retries=0,
        sleep=no_sleep,
        clock=clock,
        circuit_failures=1,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(rec)),
    )
    try:
        with pytest.raises(RateLimitedError):
            await backend.complete(request())
        with pytest.raises(CircuitOpenError) as ei:
            await backend.complete(request())
    finally:
        await backend.aclose()
    assert SECRET not in str(ei.value) and SECRET not in caplog.text
    assert any("circuit open" in r.getMessage() for r in caplog.records if r.name == "cotmod")


def test_circuit_needs_a_streak_without_quiet_spells() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, window=60.0, cooldown=30.0, clock=clock)
    fail = RateLimitedError("429", status_code=429)
    for _ in range(10):  # rare failures, more than a window apart: never a streak of 3
        assert breaker.before_call() is False
        breaker.record_failure(fail, probe=False)
        clock.advance(61.0)
    assert breaker.state == "closed" and breaker.stats.consecutive_failures == 1
    # a success resets the count
    breaker.record_failure(fail, probe=False)
    breaker.record_failure(fail, probe=False)
    breaker.record_success(probe=False)
    breaker.record_failure(fail, probe=False)
    breaker.record_failure(fail, probe=False)
    assert breaker.state == "closed" and breaker.stats.consecutive_failures == 2
    # errors that say nothing about load neither count nor reset
    breaker.record_failure(AuthenticationError("401", status_code=401), probe=False)
    breaker.record_failure(TransportError("400", status_code=400), probe=False)
    assert breaker.stats.consecutive_failures == 2
    breaker.record_failure(ServerError("502", status_code=502), probe=False)
    assert breaker.state == "open"


def test_calls_longer_than_the_window_still_make_a_streak() -> None:
    # a hanging server: every call takes timeout x attempts, far longer than the window, and the
    # next one starts right after
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, window=60.0, clock=clock)
    for _ in range(3):
        started = breaker.now()
        clock.advance(480.0)
        breaker.record_failure(RequestTimeoutError("slow", timeout=120.0, attempts=4), probe=False, started=started)
    assert breaker.state == "open" and breaker.stats.opened == 1


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown=5.0, clock=clock)
    breaker.record_failure(RequestTimeoutError("slow", timeout=1.0), probe=False)
    assert breaker.state == "open"
    clock.advance(5.0)
    assert breaker.before_call() is True  # the probe
    with pytest.raises(CircuitOpenError, match="probe request is in flight"):
        breaker.before_call()
    breaker.record_abandoned(probe=True)  # e.g. cancelled: the next call probes instead
    assert breaker.before_call() is True
    breaker.record_success(probe=True)
    assert breaker.state == "closed"
    assert breaker.before_call() is False
    assert breaker.stats.probes == 2 and breaker.stats.rejected == 1


@pytest.mark.parametrize("threshold,window,cooldown", [(-1, 60.0, 30.0), (5, 0.0, 30.0), (5, 60.0, float("nan"))])
def test_circuit_settings_are_checked(threshold: int, window: float, cooldown: float) -> None:
    with pytest.raises(ConfigError, match="circuit breaker"):
        CircuitBreaker(threshold=threshold, window=window, cooldown=cooldown)


# ---------------------------------------------------------------------------------------------
# Base URL


@pytest.mark.parametrize(
    "url,why",
    [
        ("localhost:8080/v1", "no scheme"),
        ("127.0.0.1:8080", "no scheme"),
        ("htp://localhost:8080/v1", "is not http:// or https://"),
        ("ftp://example.com/v1", "is not http:// or https://"),
        ("http://exa mple.com/v1", "whitespace"),
        (" http://localhost:8080/v1", "whitespace"),
        ("http://localhost:8080/v1\n", "whitespace"),
        ("http:///v1", "no host"),
        ("http://", "no host"),
        ("", "empty"),
        ("http://localhost:99999/v1", "out of range"),
        ("http://[::1/v1", "IPv6"),
    ],
)
def test_malformed_base_url_is_a_config_error_naming_it(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as ei:
        OpenAIBackend(base_url=url, model="m")
    assert repr(url) in str(ei.value)
    assert "is not a URL" in str(ei.value) and why in str(ei.value)
    assert not isinstance(ei.value, EndpointUnreachableError)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/v1", "https://api.openai.com/v1", "http://[::1]:8080/v1", "HTTPS://Example.com"])
def test_good_base_urls_are_accepted(url: str) -> None:
    assert OpenAIBackend(base_url=url, model="m").base_url == url


def test_base_url_credentials_are_masked() -> None:
    with pytest.raises(ConfigError) as ei:
        OpenAIBackend(base_url=f"http://user:{SECRET}@host:port/v1", model="m", api_key=SECRET)
    assert SECRET not in str(ei.value)
    backend = OpenAIBackend(base_url=f"http://user:{SECRET}@host/v1", model="m")
    assert SECRET not in repr(backend)


async def test_per_call_hooks_run_with_the_backends_own_on_retry(make_backend: BackendFactory) -> None:
    seen: list[str] = []
    rec = Recorder(error(429), error(503), ok())
    backend = make_backend(rec, on_retry=lambda e, d: seen.append("on_retry"))

    async def before(req: ChatRequest) -> None:
        seen.append("before")

    await backend.complete_with_hooks(request(), before_attempt=before, on_retry=lambda e, d: seen.append("hook"))
    assert seen == ["before", "on_retry", "hook", "before", "on_retry", "hook", "before"]
    seen.clear()
    await make_backend(Recorder(ok()), on_retry=lambda e, d: seen.append("on_retry")).complete(request())
    assert seen == []  # hooks belong to the call they were passed to
