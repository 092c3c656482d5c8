"""Transport layer: retries, Retry-After, error mapping, key hygiene and the request payload.

Every test talks to an in-process ``httpx2.MockTransport`` (or a closed 127.0.0.1 port), never
to the network. Backoffs are tiny so the whole file runs in about a second.
"""

from __future__ import annotations

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
    CotmodError,
    EndpointUnreachableError,
    RateLimitedError,
    ServerError,
    TransportError,
)

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


async def test_response_without_choices_is_a_server_error(make_backend: BackendFactory) -> None:
    body = completion()
    body["choices"] = []
    rec = Recorder(httpx2.Response(200, json=body))
    with pytest.raises(ServerError, match="no choices"):
        await make_backend(rec).complete(request())


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
