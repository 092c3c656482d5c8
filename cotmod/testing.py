"""Test doubles: a fake backend you can script, for tests of code that uses cotmod.

>>> from cotmod.testing import FakeBackend, decision
>>> fake = FakeBackend()
>>> fake.enqueue(decision({"hate_speech": []}))   # a valid "safe" answer
>>> len(fake.history)
0
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._verdict import Usage
from .backends._openai import ChatRequest, ChatResult
from .prompting._tokens import count_tokens

__all__ = ["FakeBackend", "FakeOpenAIServer", "answer_for", "decision", "item_content", "logic_answer", "offered_rule_ids"]

Response = str | Mapping[str, Any] | BaseException | ChatResult | Callable[[ChatRequest], Any]


def decision(
    cited: Mapping[str, Sequence[str]],
    *,
    confidence: float = 0.9,
    reasoning: Sequence[str] = ("The content was checked against each rule.",),
    exceptions: Mapping[str, Sequence[str]] | None = None,
    evidence: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """A well-formed model answer: ``cited`` maps policy id -> violated rule ids ([] = safe).

    ``evidence`` (for a moderator with evidence on): policy id -> ``(rule or exception id,
    quote)`` pairs; every policy then carries an ``evidence`` list (empty when not given), e.g.
    ``decision({"hate_speech": ["HATE-1"]}, evidence={"hate_speech": [("HATE-1", "parasites")]})``.
    """
    exceptions = exceptions or {}

    def quotes(pid: str) -> dict[str, Any]:
        if evidence is None:
            return {}
        return {"evidence": [{"id": i, "quote": q} for i, q in evidence.get(pid, [])]}

    return {
        "reasoning": list(reasoning),
        "decisions": {
            pid: {
                "rationale": "cites " + (", ".join(rules) if rules else "no rule"),
                "rule_ids": list(rules),
                "exception_ids": list(exceptions.get(pid, [])),
                **quotes(pid),
                "violates": bool(rules),
                "confidence": confidence,
                "escalation_ids": [],
            }
            for pid, rules in cited.items()
        },
    }


class FakeBackend:
    """A scripted backend: ``enqueue`` answers, then inspect ``history`` of requests.

    An answer is a string (returned as the completion), a mapping (JSON-encoded), a
    :class:`ChatResult`, an exception (raised) or a callable ``request -> answer``. When the queue
    is empty, ``default`` (if given) answers; otherwise the call fails loudly.
    """

    def __init__(
        self,
        responses: Sequence[Response] = (),
        *,
        default: Response | None = None,
        model_name: str = "fake-model",
        delay: float = 0.0,
    ) -> None:
        self.model_name = model_name
        self._queue: deque[Response] = deque(responses)
        self.default = default
        self.delay = delay
        self.history: list[ChatRequest] = []
        self.closed = False

    def enqueue(self, *responses: Response) -> None:
        self._queue.extend(responses)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.history.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._queue:
            answer: Any = self._queue.popleft()
        elif self.default is not None:
            answer = self.default
        else:
            raise AssertionError("FakeBackend: no response enqueued for this request")
        if callable(answer) and not isinstance(answer, BaseException):
            answer = answer(request)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, ChatResult):
            return answer
        text = answer if isinstance(answer, str) else json.dumps(answer)
        prompt = sum(count_tokens(m["content"]) for m in request.messages)
        completion = count_tokens(text)
        return ChatResult(
            text=text,
            finish_reason="stop",
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
            model=self.model_name,
        )

    async def aclose(self) -> None:
        self.closed = True


def item_content(request: ChatRequest | Mapping[str, Any]) -> str:
    """The item text of a request (a :class:`ChatRequest` or an OpenAI request body): the lines
    between the content boundary lines of the last user message. For scripted answers that
    quote the content, e.g. ``FakeBackend(default=lambda r: decision(..., evidence={...}))``."""
    messages = request.messages if isinstance(request, ChatRequest) else request["messages"]
    user = str(messages[-1]["content"])
    m = re.search(r"^<<<CONTENT-([0-9a-f]+)>>>\n(.*)\n<<<END CONTENT-\1>>>$", user, re.S | re.M)
    if m is None:
        raise ValueError("the last message has no content boundary lines")
    return m.group(2)


def wants_evidence(schema: Mapping[str, Any], policy_id: str) -> bool:
    """The decision schema asks for evidence quotes for ``policy_id`` (evidence on)."""
    sub = schema["properties"]["decisions"]["properties"][policy_id]
    shape = sub["anyOf"][-1] if "anyOf" in sub else sub
    return "evidence" in shape["properties"]


def answer_for(request_body: Mapping[str, Any], flag_word: str = "VIOLATE") -> dict[str, Any]:
    """A valid decision for an OpenAI chat request whose ``response_format`` carries cotmod's
    decision schema: a policy is violated (its first rule cited) when the item contains
    ``flag_word``; otherwise everything is safe. A triage request answers "yes" for every
    policy when the item contains ``flag_word`` (the engine keeps ``triage_max``), "no" otherwise; a decision-logic request gets
    :func:`logic_answer`. Used by :class:`FakeOpenAIServer`. With
    evidence on, the cited rule quotes ``flag_word``."""
    schema = body_schema(request_body)
    item = str(request_body["messages"][-1]["content"])
    if "answers" in schema["properties"]:  # decision logic
        return logic_answer(schema, flag_word if flag_word in item else None)
    if "at_stake" in schema["properties"]:  # triage
        ids = list(schema["properties"]["at_stake"]["properties"])
        return {"summary": "a post", "at_stake": dict.fromkeys(ids, "yes" if flag_word in item else "no")}
    cited: dict[str, list[str]] = {}
    quotes: dict[str, list[tuple[str, str]]] = {}
    for pid in schema["properties"]["decisions"]["properties"]:
        rules = offered_rule_ids(schema, pid)
        cited[pid] = [rules[0]] if flag_word in item else []
        quotes[pid] = [(rules[0], flag_word)] if cited[pid] else []
    with_evidence = any(wants_evidence(schema, pid) for pid in cited)
    return decision(cited, evidence=quotes if with_evidence else None)


def _answer_shapes(sub: Mapping[str, Any]) -> list[tuple[list[str], bool]]:
    """(allowed answers, quote needed) per shape of one question's schema (plain or tied)."""
    shapes = sub.get("anyOf", [sub])
    out = []
    for shape in shapes:
        quote = shape["properties"]["quote"]
        out.append((list(shape["properties"]["answer"]["enum"]), quote.get("maxLength") != 0))
    return out


def logic_answer(schema: Mapping[str, Any], flag_word: str | None = None, *, answers: Mapping[str, tuple[str, str] | str] | None = None) -> dict[str, Any]:
    """A valid answer to a decision-logic schema (see ``cotmod.prompting._logic``).

    ``answers``: question id -> answer, or (answer, quote). Other questions: with ``flag_word``,
    each question's FIRST allowed answer (quoting ``flag_word`` when it needs a quote), which in
    the starter policies derives a violation of their first rule; without it, the first answer
    that needs no quote (an "empty" answer, so nothing fires)."""
    out: dict[str, Any] = {}
    for qid, sub in schema["properties"]["answers"]["properties"].items():
        given = (answers or {}).get(qid)
        if given is not None:
            value, quote = (given, "") if isinstance(given, str) else given
            out[qid] = {"quote": quote, "answer": value}
            continue
        shapes = _answer_shapes(sub)
        if flag_word is not None:  # the tied schema lists first the shape of the first answer
            values, needs_quote = shapes[0]
            out[qid] = {"quote": flag_word if needs_quote else "", "answer": values[0]}
        else:
            empty = next((vs[0] for vs, needs in shapes if not needs), None)
            out[qid] = {"quote": "", "answer": empty} if empty is not None else {"quote": "", "answer": shapes[0][0][-1]}
    return {"answers": out, "rationale": "answered the questions", "confidence": 0.9}


def offered_rule_ids(schema: Mapping[str, Any], policy_id: str) -> list[str]:
    """The rule IDs a decision schema lets the model cite for ``policy_id`` (plain or tied)."""
    sub = schema["properties"]["decisions"]["properties"][policy_id]
    shape = sub["anyOf"][-1] if "anyOf" in sub else sub  # tied schema: [none cited, some cited]
    return list(shape["properties"]["rule_ids"]["items"]["enum"])


def body_schema(request_body: Mapping[str, Any]) -> dict[str, Any]:
    rf = request_body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise ValueError("request has no json_schema response_format")
    return schema


FAULTS = ("html", "truncated", "invalid_json", "hang", "slow_body")


class FakeOpenAIServer:
    """A real HTTP server on 127.0.0.1 speaking the chat-completions API, for tests and
    benchmarks. It answers with :func:`answer_for` (or ``handler(body) -> dict|str``), after
    ``delay`` seconds. ``fail_first`` makes the first N requests fail with ``fail_status``.
    Use as a context manager; ``base_url`` is ready on entry; ``requests`` counts calls.

    ``fault`` makes requests misbehave at the HTTP level (the first ``fault_first`` of them, or
    all when it is None; counted after ``fail_first``):

    * ``"html"`` — HTTP 200 with an HTML error page (``content-type: text/html``), like a proxy;
    * ``"truncated"`` — HTTP 200, ``application/json``, a completion cut off half-way;
    * ``"invalid_json"`` — HTTP 200, ``application/json``, a body that is not JSON at all;
    * ``"hang"`` — accept the request and never answer (until the server stops);
    * ``"slow_body"`` — send the headers, then one byte of body every 50 ms, never finishing.

    ``faults`` counts the requests that got a fault.
    """

    def __init__(
        self,
        *,
        handler: Callable[[dict[str, Any]], Any] | None = None,
        delay: float = 0.0,
        fail_first: int = 0,
        fail_status: int = 500,
        retry_after: float | None = None,
        fault: str | None = None,
        fault_first: int | None = None,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)}; got {fault!r}")
        self.handler = handler or answer_for
        self.delay = delay
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.fault = fault
        self.fault_first = fault_first
        self.requests = 0
        self.faults = 0
        self.bodies: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []  # the Authorization header of each POST
        self._server: Any = None
        self._thread: Any = None
        self._stopping: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self._stopping = threading.Event()

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"status": "ok"})

            def handle(self) -> None:
                # the client may go away (e.g. killed mid-request)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    super().handle()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests += 1
                n = outer.requests
                outer.bodies.append(body)
                outer.auth_headers.append(self.headers.get("authorization"))
                if outer.delay:
                    time.sleep(outer.delay)
                if n <= outer.fail_first:
                    hdrs = {"retry-after": str(outer.retry_after)} if outer.retry_after is not None else {}
                    self._send(outer.fail_status, {"error": {"message": "injected failure", "type": "server_error"}}, hdrs)
                    return
                if outer.fault is not None and (outer.fault_first is None or n - outer.fail_first <= outer.fault_first):
                    outer.faults += 1
                    self._fault(str(outer.fault), n)
                    return
                answer = outer.handler(body)
                text = answer if isinstance(answer, str) else json.dumps(answer)
                self._send(200, self._completion(n, body, text))

            def _completion(self, n: int, body: Mapping[str, Any], text: str) -> dict[str, Any]:
                return {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }

            def _raw(self, content_type: str, data: bytes, length: int | None = None) -> None:
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data) if length is None else length))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def _fault(self, fault: str, n: int) -> None:
                if fault == "html":
                    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
                    self._raw("text/html; charset=utf-8", page)
                elif fault == "truncated":
                    full = json.dumps(self._completion(n, {}, "cut")).encode()
                    self._raw("application/json", full[: len(full) // 2])
                elif fault == "invalid_json":
                    self._raw("application/json", b"upstream connect error or disconnect/reset before headers")
                elif fault == "hang":
                    outer._stopping.wait()
                    self.close_connection = True
                elif fault == "slow_body":
                    self._raw("application/json", b"{", length=1_000_000)
                    while not outer._stopping.wait(0.05):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that disconnects is not a server failure

        self._server = Server(("127.0.0.1", 0), H)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
