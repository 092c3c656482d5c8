"""The ``cotmod serve`` ASGI app (FastAPI): an HTTP moderation service over :class:`AsyncModerator`.

Endpoints
---------
* ``POST /v1/moderations``: OpenAI's Moderation API. ``input`` is a string, an array of strings or
  an array of ``{"type": "text", "text": ...}`` objects (a text object may carry classifier
  ``scores`` for the cascade); optional ``policies`` (cotmod's, default: all). One result per
  input with ``flagged`` (the verdict violates a policy), ``categories`` and ``category_scores``
  (per policy, named by its id or by :attr:`ServeConfig.category_names`) and
  ``category_applied_input_types``; the full cotmod verdict rides along under ``cotmod``. An
  input the model gave no valid answer for makes the request fail with 502: an error verdict is
  never reported as "not flagged".
* ``POST /v1/verdicts``: full verdicts for ``items`` (``[{"id"?, "text", "scores"?, "metadata"?}]``)
  or ``input`` (as above); error verdicts are returned as they are (``status: "error"``).
* ``POST /v1/render``: the exact prompts the model would get for ``{"text", "policies"?}``.
* ``GET /v1/policies``: the policies the service offers (ids, titles, versions, rules, exceptions):
  :attr:`ServeConfig.policies` (``cotmod serve -p``), default every loaded policy. A request naming
  another policy gets 400 (``unknown_policy``).
* ``GET /healthz`` (the process is up), ``GET /readyz`` (the model endpoint answers; 503 with the
  reason otherwise), ``GET /metrics`` (Prometheus), ``GET /`` (the playground page).

Every request gets its own request id, made by the server (``req-`` + 20 hex digits, unique): it
is returned in ``X-Request-ID``, stored in each verdict's ``metadata.request_id``, and every item id
is ``<request id>-<index>``, so every audit-log record has a unique ``item_id`` even when a client
resends a request. What the client sent is kept beside it, never as the id: a sane ``X-Request-ID``
header in ``metadata.client_request_id`` (and in the access log), an item's ``id`` (``/v1/verdicts``)
in ``metadata.client_item_id``.

Behaviour
---------
* Auth: with keys configured, ``/v1/*`` needs ``Authorization: Bearer KEY`` (401 otherwise).
* Limits: body bytes, items per request and characters per text (413); at most
  ``max_concurrency`` moderation requests run at once and ``max_queue`` wait, more get 429 with
  ``Retry-After``; a request that takes longer than ``request_timeout`` gets 504.
* Every verdict is appended to the audit log (``audit_log``, the JSONL of ``cotmod run`` output)
  as soon as it is made, before the response is sent. At start, a torn last line (a kill in the
  middle of a write) is repaired as the batch runner does: kept if complete, cut if not; any other
  unreadable line refuses to start (nothing is deleted).
* Errors are JSON ``{"error": {"message", "type", "param", "code"}}``: 400 bad input, 401, 404,
  405, 413, 429, 502 (invalid model output, upstream failure), 503 (model endpoint unreachable or
  refusing cotmod's key, audit log not writable), 504 (timeout). Never a traceback.
* The access log (logger ``cotmod.serve.access``) has method, path (no query string), status,
  duration and request id: no content, no keys.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._config import Settings
from .._exceptions import (
    AuthenticationError,
    CircuitOpenError,
    ConfigError,
    CotmodError,
    EndpointUnreachableError,
    InputError,
    ModelNotAvailableError,
    RateLimitedError,
    RequestTimeoutError,
    TransportError,
    UserError,
)
from .._verdict import Verdict
from .._version import __version__
from ..backends._openai import Backend
from ..batch._store import Appender, scan_jsonl
from ..engine._cache import Cache
from ..engine._moderator import AsyncModerator, Item
from ._auth import ApiKeys
from ._metrics import CONTENT_TYPE_LATEST, ServeMetrics
from ._playground import playground_html

__all__ = ["ApiError", "ReadyCheck", "ServeConfig", "create_app"]

log = logging.getLogger("cotmod.serve")
access_log = logging.getLogger("cotmod.serve.access")

#: ``async () -> None`` when ready, else the reason it is not
ReadyCheck = Callable[[], Awaitable[str | None]]

_ENDPOINTS = {
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/moderations",
    "/v1/verdicts",
    "/v1/render",
    "/v1/policies",
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_AUDIT_LOG_HINT = "the audit log was edited or damaged. Nothing was deleted: fix or remove that line, or give another --audit-log file"


@dataclass
class ServeConfig:
    """How the service behaves (``cotmod serve`` options)."""

    api_keys: ApiKeys = field(default_factory=ApiKeys)
    #: the verdict log (JSONL, appended; the format of ``cotmod run`` output); None: none
    audit_log: Path | None = None
    #: moderation requests processed at once
    max_concurrency: int = 8
    #: moderation requests waiting for a slot at most; more get 429
    max_queue: int = 16
    #: seconds a client is told to wait after a 429
    retry_after: int = 1
    #: items per request
    max_items: int = 64
    #: request body bytes
    max_body_bytes: int = 1 << 20
    #: characters per item text
    max_text_chars: int = 32_000
    #: seconds for one request, waiting included (504 after)
    request_timeout: float = 120.0
    #: policy id -> the category name /v1/moderations reports it under (default: the id)
    category_names: dict[str, str] = field(default_factory=dict)
    #: the policies the service offers (``cotmod serve -p``): requests may name only these, and
    #: ``/v1/policies`` and the playground list only these (default: every loaded policy)
    policies: list[str] | None = None
    #: the policies a request without ``policies`` is judged against (default: every offered one)
    default_policies: list[str] | None = None
    #: serve the playground page at /
    playground: bool = True
    #: write one access-log line per request (no content, no keys)
    access_log: bool = True


class ApiError(Exception):
    """An error response: ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _transport_error(exc: TransportError) -> ApiError:
    """The response for a failure to get an answer from the model endpoint."""
    if isinstance(exc, RequestTimeoutError):
        return ApiError(504, f"the model endpoint timed out ({exc})", "timeout", code="model_timeout")
    if isinstance(exc, RateLimitedError):
        return ApiError(429, f"the model endpoint is rate limiting ({exc})", "rate_limit_error", code="model_rate_limited", headers={"Retry-After": "5"})
    if isinstance(exc, AuthenticationError):
        return ApiError(503, "the model endpoint refused cotmod's credentials", "model_unavailable", code="model_auth_failed")
    if isinstance(exc, (EndpointUnreachableError, CircuitOpenError)):
        return ApiError(503, f"the model endpoint is unreachable ({exc})", "model_unavailable", code="model_unreachable", headers={"Retry-After": "5"})
    return ApiError(502, f"the model endpoint failed ({type(exc).__name__}: {exc})", "upstream_error", code="model_failed")


class _Admission:
    """At most ``limit`` holders at once and ``queue`` waiters; :meth:`acquire` returns False
    (turn the request away) when both are full. Slots are handed over in FIFO order."""

    def __init__(self, limit: int, queue: int, metrics: ServeMetrics) -> None:
        self.limit = limit
        self.queue = queue
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._metrics = metrics

    def _gauges(self) -> None:
        self._metrics.in_flight.set(self.active)
        self._metrics.queue_depth.set(len(self._waiters))

    async def acquire(self) -> bool:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            self._gauges()
            return True
        if len(self._waiters) >= self.queue:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._gauges()
        try:
            await fut
        except asyncio.CancelledError:
            if fut in self._waiters:
                self._waiters.remove(fut)
            elif fut.done() and not fut.cancelled():
                self.release()  # a slot was handed to us as we were cancelled: pass it on
            self._gauges()
            raise
        self._gauges()
        return True

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes to the next waiter: active unchanged
                self._gauges()
                return
        self.active -= 1
        self._gauges()


class _Observe:
    """ASGI middleware: the request id, request metrics and the access log."""

    def __init__(self, app: Any, metrics: ServeMetrics, access: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_rid = ""
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                given = v.decode("latin-1")
                client_rid = given if _REQUEST_ID.match(given) else ""
                break
        # the server's own id, unique: a client may resend its X-Request-ID (retries)
        rid = "req-" + os.urandom(10).hex()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["client_request_id"] = client_rid or None
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            path = str(scope.get("path", ""))
            self.metrics.observe_request(path if path in _ENDPOINTS else "other", status, elapsed)
            if self.access:
                client = scope.get("client") or ("-", 0)
                access_log.info(
                    '%s "%s %s" %d %.1fms rid=%s%s', client[0], scope.get("method", "-"), path, status, elapsed * 1000, rid,
                    f" client_rid={client_rid}" if client_rid else "",
                )


def _endpoint_ready_check(mod: AsyncModerator, settings: Settings) -> ReadyCheck:
    """``GET {base_url}/models`` of the moderator's endpoint answers (any status but 401/403 or
    5xx); a backend without a ``base_url`` (in-process) is always ready."""

    def probe(url: str) -> str | None:
        headers = dict(settings.extra_headers or {})
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        req = urllib.request.Request(url.rstrip("/") + "/models", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5.0):  # the configured endpoint
                return None
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return f"the model endpoint refused cotmod's credentials (HTTP {exc.code})"
            if exc.code >= 500:
                return f"the model endpoint answered HTTP {exc.code}"
            return None  # it answers (e.g. no /models route)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"the model endpoint is unreachable ({reason})"

    async def check() -> str | None:
        try:
            backend = await mod.get_backend()
        except CotmodError as exc:
            return f"no model backend: {exc}"
        url = getattr(backend, "base_url", None)
        if not isinstance(url, str):
            return None
        return await asyncio.to_thread(probe, url)

    return check


def _texts(value: Any, param: str) -> list[tuple[str, dict[str, Any]]]:
    """The (text, metadata) pairs of an OpenAI ``input`` value."""
    if isinstance(value, str):
        return [(value, {})]
    if not isinstance(value, list):
        raise ApiError(400, f"{param}: expected a string or an array of strings, got {_kind(value)}", param=param)
    if not value:
        raise ApiError(400, f"{param}: empty array (give at least one text)", param=param)
    out: list[tuple[str, dict[str, Any]]] = []
    for i, x in enumerate(value):
        where = f"{param}[{i}]"
        if isinstance(x, str):
            out.append((x, {}))
        elif isinstance(x, dict):
            kind = x.get("type", "text")
            if kind != "text":
                raise ApiError(400, f"{where}: input type {kind!r} is not supported (text only)", param=where)
            text = x.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{where}.text: expected a string, got {_kind(text)}", param=f"{where}.text")
            out.append((text, {"scores": x["scores"]} if "scores" in x else {}))
        else:
            raise ApiError(400, f"{where}: expected a string or a text object, got {_kind(x)}", param=where)
    return out


def _kind(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )


#: a verdict and its JSON text (the audit-log line)
Recorded = tuple[Verdict, str]


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogate, which JSON escapes let in)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _dumps(obj: Any) -> str:
    """JSON text as :class:`JSONResponse` renders it (compact, UTF-8, no NaN)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def _json_response(text: str) -> Response:
    """A JSON response whose body is already JSON text (verdicts spliced in as serialised)."""
    return Response(text.encode("utf-8"), media_type="application/json")


class _Service:
    """The state behind the routes."""

    def __init__(self, mod: AsyncModerator, config: ServeConfig, ready_check: ReadyCheck | None) -> None:
        self.mod = mod
        self.config = config
        self.metrics = ServeMetrics()
        self.admission = _Admission(config.max_concurrency, config.max_queue, self.metrics)
        self.ready_check = ready_check or _endpoint_ready_check(mod, mod.settings)
        self.audit: Appender | None = None
        for pid, name in config.category_names.items():
            if pid not in mod.policies:
                raise InputError(f"category name for unknown policy {pid!r} (known: {', '.join(mod.policies.ids)})")
            if not name.strip():
                raise InputError(f"category name for {pid!r} is empty")
        #: the policies the service offers (unknown ids: a ConfigError naming them)
        self.offered: list[str] = list(mod.policies.select(config.policies).ids if config.policies else mod.policies.ids)
        if config.default_policies is not None:
            mod.policies.select(config.default_policies)  # unknown ids: a ConfigError naming them
            outside = [p for p in config.default_policies if p not in self.offered]
            if outside:
                raise ConfigError(f"default policy {outside[0]!r} is not offered (offered: {', '.join(self.offered)})")
        self.default_policies = list(config.default_policies) if config.default_policies else list(self.offered)
        names = [self.category(pid) for pid in self.offered]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InputError(f"category names must be distinct; {', '.join(map(repr, dupes))} is used twice")

    def category(self, pid: str) -> str:
        return self.config.category_names.get(pid, pid)

    # -- request parsing ---------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if not self.config.api_keys.check(request.headers.get("authorization")):
            given = "authorization" in request.headers
            raise ApiError(
                401,
                "invalid API key" if given else "missing API key: send 'Authorization: Bearer KEY'",
                "authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def body(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit} bytes", code="request_too_large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise ApiError(400, "empty request body: send a JSON object")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "request body is not valid UTF-8") from None
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        except RecursionError:
            raise ApiError(400, "request body is nested too deeply") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"request body must be a JSON object, got {_kind(data)}")
        return data

    def policies(self, data: Mapping[str, Any]) -> list[str] | None:
        value = data.get("policies")
        if value is None:
            return list(self.default_policies)
        if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
            raise ApiError(400, "policies: expected a non-empty array of policy ids", param="policies")
        offered = set(self.offered)
        unknown = [p for p in value if p not in offered]
        if unknown:
            pid, known = unknown[0], ", ".join(self.offered)
            what = f"policy {pid!r} is not offered by this service" if pid in self.mod.policies else f"unknown policy {pid!r}"
            raise ApiError(400, f"policies: {what} (offered: {known})", param="policies", code="unknown_policy")
        return list(dict.fromkeys(value))

    def items(
        self,
        pairs: Sequence[tuple[str | None, str, dict[str, Any]]],
        rid: str,
        param: str,
        policies: list[str] | None,
        client_rid: str | None = None,
    ) -> list[Item]:
        """Items from (client id, text, metadata) triples, checked: count, empty or oversized
        text, invalid Unicode, cascade scores, client ids unique within the request. Item ids are
        ``<rid>-<index>``; the client's id goes to ``metadata.client_item_id``, its
        ``X-Request-ID`` to ``metadata.client_request_id``."""
        cfg = self.config
        if len(pairs) > cfg.max_items:
            raise ApiError(413, f"{param}: {len(pairs)} items is over the limit of {cfg.max_items} per request", param=param, code="too_many_items")
        ids = self.mod.policies.select(policies).ids
        out: list[Item] = []
        seen: set[str] = set()
        for i, (given, text, meta) in enumerate(pairs):
            where = f"{param}[{i}]"
            if not text.strip():
                raise ApiError(400, f"{where}: empty text", param=where)
            if len(text) > cfg.max_text_chars:
                raise ApiError(413, f"{where}: text of {len(text)} characters is over the limit of {cfg.max_text_chars}", param=where, code="text_too_long")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, f"{where}: text is not valid Unicode (a lone surrogate)", param=where) from None
            client: dict[str, str] = {}
            if given is not None:
                if not _utf8(given):
                    raise ApiError(400, f"{where}.id: not valid Unicode (a lone surrogate)", param=f"{where}.id")
                if given in seen:
                    raise ApiError(400, f"{where}.id: duplicate id {given!r} in this request", param=f"{where}.id")
                seen.add(given)
                client["client_item_id"] = given
            if client_rid:
                client["client_request_id"] = client_rid
            item = Item(text, f"{rid}-{i}", {**meta, "request_id": rid, **client})
            try:
                if not _utf8(json.dumps(dict(item.metadata), allow_nan=False, ensure_ascii=False)):
                    # the verdict carries the metadata and could be neither logged nor returned
                    raise ApiError(400, f"{where}.metadata: not valid Unicode (a lone surrogate)", param=where)
                self.mod.routes(item, ids)  # a bad cascade score fails here, before any model call
            except (TypeError, ValueError) as exc:
                raise ApiError(400, f"{where}.metadata: not JSON-serialisable ({exc})", param=where) from None
            except InputError as exc:
                raise ApiError(400, f"{where}: {exc}", param=where) from None
            out.append(item)
        return out

    # -- the work ----------------------------------------------------------------------------------
    def record(self, v: Verdict) -> str:
        """Audit-log and count one verdict (as soon as it is made); returns its JSON, serialised
        once: the audit-log line and the verdict in the response are the same text."""
        line = v.model_dump_json()
        if self.audit is not None:
            try:
                self.audit.write(line)
            except CotmodError as exc:
                log.error("audit log: %s", exc)
                raise ApiError(503, "the audit log cannot be written; no verdict is returned unlogged", "server_error", code="audit_log_failed") from None
        self.metrics.observe_verdict(v)
        return line

    async def moderate(self, items: list[Item], policies: list[str] | None) -> list[Recorded]:
        """Moderate under the admission limit; each verdict is recorded as it finishes and
        returned with its JSON (see :meth:`record`)."""
        if not await self.admission.acquire():
            self.metrics.rejected.labels("overloaded").inc()
            raise ApiError(
                429,
                f"the service is at capacity ({self.config.max_concurrency} requests in progress, {self.config.max_queue} waiting); retry later",
                "rate_limit_error",
                code="overloaded",
                headers={"Retry-After": str(self.config.retry_after)},
            )
        try:

            async def one(item: Item) -> Recorded:
                v = await self.mod.moderate(item, policies)
                return v, self.record(v)

            if len(items) == 1:  # the common case: no task and gather for a single item
                return [await one(items[0])]
            tasks = [asyncio.ensure_future(one(it)) for it in items]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.admission.release()

    async def run(self, items: list[Item], policies: list[str] | None) -> list[Recorded]:
        try:
            return await asyncio.wait_for(self.moderate(items, policies), self.config.request_timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than {self.config.request_timeout:g} s", "timeout", code="request_timeout") from None
        except TransportError as exc:
            raise _transport_error(exc) from None
        except ModelNotAvailableError as exc:
            raise ApiError(503, f"the model is not available ({exc})", "model_unavailable", code="model_unavailable") from None
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
        except CotmodError as exc:  # e.g. the result cache is locked by another process
            log.error("request failed: %s", exc)
            raise ApiError(503, "the service cannot answer now; see the server log", "server_error", code="service_unavailable") from None

    # -- responses ---------------------------------------------------------------------------------
    def moderation_result(self, v: Verdict, verdict_json: str, policy_ids: Sequence[str]) -> str:
        """One ``results`` entry (JSON text): the OpenAI fields, then the verdict under ``cotmod``."""
        by_id = {d.policy_id: d for d in v.decisions}
        categories: dict[str, bool] = {}
        scores: dict[str, float] = {}
        for pid in policy_ids:
            d = by_id.get(pid)
            name = self.category(pid)
            categories[name] = bool(d is not None and d.violates)
            scores[name] = float(d.score if d is not None and not d.triaged_out else 0.0)
        head = {
            "flagged": bool(v.violates),
            "categories": categories,
            "category_scores": scores,
            "category_applied_input_types": {name: ["text"] for name in categories},
        }
        return _dumps(head)[:-1] + ',"cotmod":' + verdict_json + "}"


def _handler(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Every failure becomes a JSON error response: an :class:`ApiError` as it is, anything else
    a 500 without a traceback (the traceback goes to the server log)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as exc:
            return exc.response()
        except Exception:
            log.exception("unexpected error (request %s)", getattr(request.state, "request_id", "-"))
            return ApiError(500, "internal error; see the server log", "server_error", code="internal_error").response()

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def create_app(
    settings: Settings,
    config: ServeConfig | None = None,
    *,
    backend: Backend | None = None,
    cache: Cache | None = None,
    moderator: AsyncModerator | None = None,
    ready_check: ReadyCheck | None = None,
) -> FastAPI:
    """The service as an ASGI app (serve it with uvicorn: ``cotmod serve`` does).

    ``settings`` configure the moderator (policies from ``settings.guidelines``, thresholds,
    cascade, endpoint), ``config`` the service. ``backend``/``cache`` go to the
    :class:`AsyncModerator` it creates, or pass your own ``moderator``. ``ready_check``: what
    ``/readyz`` asks (default: the moderator's endpoint answers ``GET /models``). Raises a
    :class:`~cotmod.UserError` for a bad configuration (unknown policy in ``category_names``,
    a base URL without a model name).
    """
    config = config or ServeConfig()
    if moderator is None:
        if backend is None and settings.base_url and not settings.model:
            raise ConfigError("a model name is required with base_url (--model or COTMOD_MODEL)")
        moderator = AsyncModerator(settings.guidelines, settings=settings, backend=backend, cache=cache)
    mod = moderator
    svc = _Service(mod, config, ready_check)
    if config.audit_log is not None:
        audit_path = Path(config.audit_log)
        # a torn last line (a kill mid-write) is repaired first, so the next verdict starts a line
        for _ in scan_jsonl(audit_path, ("item_id", "id"), hint=_AUDIT_LOG_HINT):
            pass
        svc.audit = Appender(audit_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await mod.aclose()
            if svc.audit is not None:
                svc.audit.close()

    app = FastAPI(title="cotmod", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        message = {404: f"no such endpoint: {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail)
        )
        return ApiError(exc.status_code, message, kind, headers=exc.headers).response()

    @_handler
    async def moderations(request: Request) -> Response:
        svc.authorize(request)
        data = await svc.body(request)
        if "input" not in data:
            raise ApiError(400, "input: required (a string or an array of strings)", param="input")
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, f"model: expected a string, got {_kind(model)}", param="model")
        policies = svc.policies(data)
        rid = request.state.request_id
        items = svc.items([(None, t, m) for t, m in _texts(data["input"], "input")], rid, "input", policies, request.state.client_request_id)
        recorded = await svc.run(items, policies)
        for i, (v, _) in enumerate(recorded):
            if v.status != "ok":
                why = v.error.message if v.error else "no valid answer"
                raise ApiError(
                    502,
                    f"input[{i}]: the model gave no valid answer ({why[:300]}); the error verdict {v.item_id!r} is in the audit log",
                    "model_output_error",
                    param=f"input[{i}]",
                    code="no_verdict",
                )
        ids = mod.policies.select(policies).ids
        head = _dumps({"id": f"modr-{rid}", "model": recorded[0][0].model if recorded else mod.model_name})
        return _json_response(head[:-1] + ',"results":[' + ",".join(svc.moderation_result(v, j, ids) for v, j in recorded) + "]}")

    @_handler
    async def verdicts(request: Request) -> Response:
        svc.authorize(request)
        data = await svc.body(request)
        unknown = sorted(set(data) - {"items", "input", "policies"})
        if unknown:
            raise ApiError(400, f"{unknown[0]}: unknown field (expected items or input, and policies)", param=unknown[0])
        if ("items" in data) == ("input" in data):
            raise ApiError(400, "give either items ([{id?, text, scores?, metadata?}]) or input (a string or an array of strings)")
        policies = svc.policies(data)
        rid = request.state.request_id
        triples: list[tuple[str | None, str, dict[str, Any]]] = []
        if "input" in data:
            triples = [(None, t, m) for t, m in _texts(data["input"], "input")]
            param = "input"
        else:
            param = "items"
            raw = data["items"]
            if not isinstance(raw, list) or not raw:
                raise ApiError(400, "items: expected a non-empty array of {id?, text, scores?, metadata?}", param="items")
            for i, x in enumerate(raw):
                where = f"items[{i}]"
                if not isinstance(x, dict):
                    raise ApiError(400, f"{where}: expected an object with text, got {_kind(x)}", param=where)
                extra = sorted(set(x) - {"id", "text", "scores", "metadata"})
                if extra:
                    raise ApiError(400, f"{where}.{extra[0]}: unknown field (expected id, text, scores, metadata)", param=f"{where}.{extra[0]}")
                text = x.get("text")
                if not isinstance(text, str):
                    raise ApiError(400, f"{where}.text: expected a string, got {_kind(text)}", param=f"{where}.text")
                item_id = x.get("id")
                if item_id is not None and (not isinstance(item_id, (str, int)) or isinstance(item_id, bool) or not str(item_id).strip()):
                    raise ApiError(400, f"{where}.id: expected a non-empty string", param=f"{where}.id")
                meta = x.get("metadata") or {}
                if not isinstance(meta, dict):
                    raise ApiError(400, f"{where}.metadata: expected an object, got {_kind(meta)}", param=f"{where}.metadata")
                meta = {k: v for k, v in meta.items() if k not in ("request_id", "client_request_id", "client_item_id")}
                if "scores" in x:
                    meta["scores"] = x["scores"]
                triples.append((None if item_id is None else str(item_id), text, meta))
        items = svc.items(triples, rid, param, policies, request.state.client_request_id)
        recorded = await svc.run(items, policies)
        return _json_response(_dumps({"request_id": rid})[:-1] + ',"verdicts":[' + ",".join(j for _, j in recorded) + "]}")

    @_handler
    async def render(request: Request) -> Response:
        svc.authorize(request)
        data = await svc.body(request)
        text = data.get("text")
        if not isinstance(text, str):
            raise ApiError(400, f"text: expected a string, got {_kind(text)}", param="text")
        policies = svc.policies(data)
        svc.items([(None, text, {})], request.state.request_id, "text", policies)
        prompts = mod.render(text, policies)
        triage = mod.triage_applies(policies)
        body = [
            {
                "kind": "triage" if triage and i == 0 else "policy",
                "policies": p.policies.ids,
                "fingerprint": p.fingerprint,
                "prompt_tokens": p.prompt_tokens,
                "truncated": p.truncated,
                "messages": p.messages,
            }
            for i, p in enumerate(prompts)
        ]
        return JSONResponse({"prompts": body})

    @_handler
    async def policies(request: Request) -> Response:
        svc.authorize(request)
        return JSONResponse({"policies": policy_list(mod, svc.offered), "evidence": mod.settings.evidence})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> Response:
        try:
            reason = await svc.ready_check()
        except Exception as exc:  # a broken check is "not ready", never a 500
            reason = f"readiness check failed: {type(exc).__name__}"
        if reason is None:
            return JSONResponse({"status": "ready", "model": mod.model_name})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def index(request: Request) -> Response:
        if not config.playground:
            return ApiError(404, "the playground is off (cotmod serve --no-playground)", "not_found").response()
        return HTMLResponse(
            playground_html(
                {
                    # with API keys, no policy data without a key: the page fetches /v1/policies
                    # with the key typed in
                    "policies": None if config.api_keys.enabled else policy_list(mod, svc.offered),
                    "evidence": mod.settings.evidence,
                    "auth": config.api_keys.enabled,
                    "version": __version__,
                    "model": mod.model_name,
                }
            )
        )

    # plain Starlette routes for the POST endpoints: the handlers take the Request and return a
    # Response, so FastAPI's per-request dependency solving (query, header and body parsing for
    # parameters there are none of) is pure overhead on the hot path
    app.add_route("/v1/moderations", moderations, methods=["POST"])
    app.add_route("/v1/verdicts", verdicts, methods=["POST"])
    app.add_route("/v1/render", render, methods=["POST"])
    app.add_api_route("/v1/policies", policies, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/", index, methods=["GET"])
    app.add_middleware(_Observe, metrics=svc.metrics, access=config.access_log)
    return app


def policy_list(mod: AsyncModerator, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """What the playground and ``GET /v1/policies`` show of each policy (of ``ids``, default all)."""
    return [
        {
            "id": p.id,
            "title": p.title,
            "version": p.version,
            "summary": p.summary,
            "rules": [{"id": r.id, "title": r.title, "severity": r.severity} for r in p.rules],
            "exceptions": [{"id": e.id, "title": e.title} for e in p.exceptions],
        }
        for p in (mod.policies.select(ids) if ids is not None else mod.policies)
    ]
