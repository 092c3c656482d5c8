"""cotmod serve: the OpenAI-compatible /v1/moderations (checked with the official openai client),
/v1/verdicts, auth, limits, overload (429), timeouts, graceful drain, the audit log, metrics and
bad input, against a real uvicorn server on 127.0.0.1 with a fake model."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner

from cotmod import Verdict
from cotmod._config import Settings
from cotmod.backends._openai import ChatRequest, ChatResult
from cotmod.batch._store import repair_jsonl
from cotmod.cli import cli
from cotmod.serve import ApiKeys, ServeConfig, ServerThread, create_app, load_api_keys
from cotmod.testing import FakeBackend, FakeOpenAIServer, decision

from .conftest import GUIDELINES

KEY = "test-key-0123456789"


def _post(url: str, body: bytes | dict[str, Any] | list[Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"content-type": "application/json", **(headers or {})})
    return _open(req)


def _get(url: str) -> tuple[int, dict[str, str], Any]:
    return _open(urllib.request.Request(url))


def _open(req: urllib.request.Request) -> tuple[int, dict[str, str], Any]:
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, dict(exc.headers), exc.read()
    text = raw.decode()
    try:
        return status, {k.lower(): v for k, v in headers.items()}, json.loads(text)
    except json.JSONDecodeError:
        return status, {k.lower(): v for k, v in headers.items()}, text


def _auth() -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}"}


class GatedBackend:
    """Answers only once ``gate`` is set (a threading.Event), so tests can hold requests in flight."""

    model_name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = 0

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.started += 1
        await asyncio.to_thread(self.gate.wait)
        return await FakeBackend(default=lambda r: decision({p: [] for p in _policies_of(r)})).complete(request)

    async def aclose(self) -> None:
        pass


def _policies_of(request: ChatRequest) -> list[str]:
    assert request.schema is not None
    return list(request.schema["properties"]["decisions"]["properties"])


def _wait_until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def _settings(base_url: str | None = None, **kw: Any) -> Settings:
    return Settings(base_url=base_url, model="m" if base_url else None, guidelines=str(GUIDELINES), max_transport_retries=0, **kw)


def _serve(app: Any) -> ServerThread:
    return ServerThread(app).start()


def test_openai_client_moderations(fake: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    audit = tmp_path / "audit.jsonl"
    cfg = ServeConfig(api_keys=ApiKeys.of([KEY]), audit_log=audit, category_names={"hate_speech": "hate"})
    app = create_app(_settings(fake.base_url), cfg)
    caplog.set_level(logging.INFO, logger="cotmod.serve")
    texts = ["see you at the meeting tomorrow", "you people are VIOLATE vermin"]
    with _serve(app) as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY, max_retries=0)
        resp = client.moderations.create(input=texts, model="cotmod", extra_body={"policies": ["hate_speech", "spam_scams"]})
        single = client.moderations.create(input="just a string")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url + "/v1", api_key="wrong-key-000000", max_retries=0).moderations.create(input="x")
    assert resp.id.startswith("modr-") and resp.model == "m"
    assert [r.flagged for r in resp.results] == [False, True]
    safe, bad = resp.results
    # categories are the policy ids, hate_speech renamed to OpenAI's own "hate" field
    assert bad.categories.hate is True and bad.category_scores.hate == pytest.approx(0.9)
    assert bad.categories.model_extra == {"spam_scams": True}
    assert safe.categories.hate is False and safe.categories.model_extra == {"spam_scams": False}
    assert bad.category_applied_input_types is not None
    # cotmod's own verdict rides along
    extra = bad.model_extra or {}
    v = Verdict.model_validate(extra["cotmod"])
    hate = v.decision("hate_speech")
    assert hate.violates and hate.rule_ids and hate.rationale and v.policy_versions["hate_speech"] and v.prompt_fingerprint
    rid = resp.id.removeprefix("modr-")
    assert v.item_id == f"{rid}-1" and v.metadata["request_id"] == rid
    assert len(single.results) == 1 and single.results[0].flagged is False
    assert set(single.results[0].categories.model_extra or {}) >= {"spam_scams", "violent_threats"}  # every policy by default
    # the audit log: one verdict per input, readable as a cotmod run output, with the request id
    lines = audit.read_text().splitlines()
    assert len(lines) == 3
    logged = [Verdict.model_validate_json(x) for x in lines]
    assert sorted(x.item_id for x in logged) == sorted([f"{rid}-0", f"{rid}-1", single.id.removeprefix("modr-") + "-0"])
    assert len(repair_jsonl(audit)) == 3
    # access log: requests are logged, but no content and no key
    access = "\n".join(r.getMessage() for r in caplog.records if r.name == "cotmod.serve.access")
    assert "/v1/moderations" in access and " 200 " in access and " 401 " in access
    for secret in (KEY, "wrong-key-000000", "vermin", "meeting", "just a string"):
        assert secret not in caplog.text


def test_verdicts_endpoint_render_policies_and_metrics(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    app = create_app(_settings(fake.base_url), ServeConfig(audit_log=audit))
    with _serve(app) as srv:
        items = [{"id": "a1", "text": "VIOLATE here", "metadata": {"source": "app"}}, {"text": "a calm note"}]
        status, headers, body = _post(srv.base_url + "/v1/verdicts", {"items": items, "policies": ["spam_scams"]}, {"x-request-id": "trace-42"})
        assert status == 200, body
        # the request id is the server's own (unique); the client's X-Request-ID and item id are kept beside it
        rid = body["request_id"]
        assert headers["x-request-id"] == rid and re.fullmatch(r"req-[0-9a-f]{20}", rid)
        v1, v2 = (Verdict.model_validate(x) for x in body["verdicts"])
        assert (v1.item_id, v1.violates, v1.action) == (f"{rid}-0", True, v1.decision("spam_scams").action)
        assert v1.metadata == {"source": "app", "request_id": rid, "client_item_id": "a1", "client_request_id": "trace-42"}
        assert v2.item_id == f"{rid}-1" and v2.violates is False
        assert v2.metadata == {"request_id": rid, "client_request_id": "trace-42"}
        status, _, rendered = _post(srv.base_url + "/v1/render", {"text": "hello world", "policies": ["spam_scams"]})
        assert status == 200 and len(rendered["prompts"]) == 1
        prompt = rendered["prompts"][0]
        assert prompt["policies"] == ["spam_scams"] and "hello world" in prompt["messages"][-1]["content"]
        status, _, pols = _get(srv.base_url + "/v1/policies")
        assert status == 200 and "spam_scams" in [p["id"] for p in pols["policies"]]
        assert _get(srv.base_url + "/healthz")[0] == 200
        status, _, ready = _get(srv.base_url + "/readyz")
        assert status == 200 and ready["status"] == "ready"
        status, headers, metrics = _get(srv.base_url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'cotmod_serve_requests_total{endpoint="/v1/verdicts",status="200"} 1.0' in metrics
    assert f'cotmod_serve_decisions_total{{action="{v1.action}",policy="spam_scams"}} 1.0' in metrics
    assert 'cotmod_serve_decisions_total{action="allow",policy="spam_scams"} 1.0' in metrics
    assert 'cotmod_serve_verdicts_total{status="ok"} 2.0' in metrics
    prompt_tokens = re.search(r'cotmod_serve_tokens_total\{kind="prompt"\} (\S+)', metrics)
    assert prompt_tokens and float(prompt_tokens.group(1)) == v1.usage.prompt_tokens + v2.usage.prompt_tokens > 0
    for name in ("cotmod_serve_request_seconds_bucket", "cotmod_serve_queue_depth", "cotmod_serve_in_flight", "cotmod_serve_cache_hits_total"):
        assert name in metrics
    assert sorted(Verdict.model_validate_json(x).item_id for x in audit.read_text().splitlines()) == [f"{rid}-0", f"{rid}-1"]


BAD: list[tuple[str, str, bytes | dict[str, Any] | list[Any], int, str]] = [
    ("malformed json", "/v1/moderations", b'{"input": "x"', 400, "not valid JSON"),
    ("not utf-8", "/v1/moderations", b'{"input": "\xff"}', 400, "not valid UTF-8"),
    ("empty body", "/v1/moderations", b"", 400, "empty request body"),
    ("array body", "/v1/moderations", ["x"], 400, "must be a JSON object, got an array"),
    ("no input", "/v1/moderations", {"model": "x"}, 400, "input: required"),
    ("input number", "/v1/moderations", {"input": 3}, 400, "input: expected a string or an array of strings, got a number"),
    ("input empty array", "/v1/moderations", {"input": []}, 400, "input: empty array"),
    ("empty text", "/v1/moderations", {"input": ["ok", "  "]}, 400, "input[1]: empty text"),
    ("null in array", "/v1/moderations", {"input": ["ok", None]}, 400, "input[1]: expected a string or a text object, got null"),
    ("image input", "/v1/moderations", {"input": [{"type": "image_url", "image_url": {"url": "x"}}]}, 400, "input[0]: input type 'image_url' is not supported"),
    ("model not a string", "/v1/moderations", {"input": "x", "model": 5}, 400, "model: expected a string"),
    ("unknown policy", "/v1/moderations", {"input": "x", "policies": ["nope"]}, 400, "policies: unknown policy 'nope'"),
    ("policies not a list", "/v1/moderations", {"input": "x", "policies": "spam_scams"}, 400, "policies: expected a non-empty array"),
    ("lone surrogate", "/v1/moderations", b'{"input": "bad \\ud800 text"}', 400, "input[0]: text is not valid Unicode"),
    ("too many items", "/v1/moderations", {"input": ["t"] * 5}, 413, "5 items is over the limit of 4"),
    ("text too long", "/v1/moderations", {"input": "x" * 201}, 413, "text of 201 characters is over the limit of 200"),
    ("body too large", "/v1/verdicts", {"input": "y" * 5000}, 413, "over the limit of 4096 bytes"),
    ("verdicts both", "/v1/verdicts", {"input": "x", "items": [{"text": "y"}]}, 400, "give either items"),
    ("verdicts unknown field", "/v1/verdicts", {"items": [{"text": "y"}], "polices": ["x"]}, 400, "polices: unknown field"),
    ("item without text", "/v1/verdicts", {"items": [{"id": "a"}]}, 400, "items[0].text: expected a string, got null"),
    ("item typo", "/v1/verdicts", {"items": [{"text": "a", "txt": "b"}]}, 400, "items[0].txt: unknown field"),
    ("duplicate ids", "/v1/verdicts", {"items": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, 400, "items[1].id: duplicate id 'a'"),
    ("metadata not object", "/v1/verdicts", {"items": [{"text": "a", "metadata": [1]}]}, 400, "items[0].metadata: expected an object"),
    ("render without text", "/v1/render", {"policies": ["spam_scams"]}, 400, "text: expected a string, got null"),
]


def test_bad_input_gets_a_clear_json_error_and_the_service_keeps_serving(fake: FakeOpenAIServer) -> None:
    cfg = ServeConfig(max_items=4, max_text_chars=200, max_body_bytes=4096)
    app = create_app(_settings(fake.base_url), cfg)
    with _serve(app) as srv:
        for name, path, body, status, message in BAD:
            got, _, err = _post(srv.base_url + path, body)
            assert got == status, (name, err)
            assert message in err["error"]["message"], (name, err)
            assert err["error"]["type"] and "Traceback" not in json.dumps(err)
        got, _, err = _get(srv.base_url + "/v1/nothing")
        assert got == 404 and err["error"]["type"] == "not_found"
        got, _, err = _get(srv.base_url + "/v1/moderations")
        assert got == 405 and err["error"]["type"] == "method_not_allowed"
        status, _, ok = _post(srv.base_url + "/v1/moderations", {"input": "still serving"})
        assert status == 200 and ok["results"][0]["flagged"] is False
    assert fake.requests > 0


def test_auth_missing_and_wrong_keys_get_401(fake: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# service keys\nfile-key-aaaaaaaa\n\n")
    monkeypatch.setenv("SERVE_KEYS", "env-key-bbbbbbbb, env-key-cccccccc")
    keys = load_api_keys(keys_file, "SERVE_KEYS")
    assert len(keys) == 3
    app = create_app(_settings(fake.base_url), ServeConfig(api_keys=keys))
    with _serve(app) as srv:
        url = srv.base_url + "/v1/moderations"
        status, headers, err = _post(url, {"input": "x"})
        assert status == 401 and headers["www-authenticate"] == "Bearer" and "missing API key" in err["error"]["message"]
        status, _, err = _post(url, {"input": "x"}, {"authorization": "Bearer nope-nope-nope"})
        assert status == 401 and err["error"]["message"] == "invalid API key" and "nope" not in json.dumps(err)
        assert _post(url, {"input": "x"}, {"authorization": "Basic file-key-aaaaaaaa"})[0] == 401
        for key in ("file-key-aaaaaaaa", "env-key-bbbbbbbb", "env-key-cccccccc"):
            assert _post(url, {"input": "x"}, {"authorization": f"Bearer {key}"})[0] == 200
        assert _get(srv.base_url + "/v1/policies")[0] == 401
        # health, readiness, metrics and the page need no key
        assert [_get(srv.base_url + p)[0] for p in ("/healthz", "/readyz", "/metrics", "/")] == [200, 200, 200, 200]


def test_bad_key_sources_are_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cotmod import ConfigError

    with pytest.raises(ConfigError, match=r"keys.txt: API keys file not found"):
        load_api_keys(tmp_path / "keys.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_api_keys(tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("good-key-12345678\nabc\n")
    with pytest.raises(ConfigError, match=r"short.txt:2: not a usable API key") as info:
        load_api_keys(tmp_path / "short.txt")
    assert "abc" not in str(info.value).split(":", 2)[-1].replace("usable", "")
    monkeypatch.delenv("NO_SUCH_KEYS", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEYS is not set"):
        load_api_keys(env="NO_SUCH_KEYS")


def test_model_endpoint_down_is_503_and_not_ready() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(_settings(f"http://127.0.0.1:{port}/v1", timeout=5))
    with _serve(app) as srv:
        status, headers, err = _post(srv.base_url + "/v1/moderations", {"input": "hello"})
        assert status == 503 and err["error"]["type"] == "model_unavailable" and "unreachable" in err["error"]["message"]
        assert headers.get("retry-after")
        status, _, ready = _get(srv.base_url + "/readyz")
        assert status == 503 and "unreachable" in ready["reason"]
        assert _get(srv.base_url + "/healthz")[0] == 200
        status, _, metrics = _get(srv.base_url + "/metrics")
        assert 'cotmod_serve_requests_total{endpoint="/v1/moderations",status="503"} 1.0' in metrics


def test_invalid_model_output_is_502_on_moderations_and_an_error_verdict_on_verdicts(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with FakeOpenAIServer(handler=lambda body: "not json at all") as fake:
        app = create_app(_settings(fake.base_url, max_reasks=0), ServeConfig(audit_log=audit))
        with _serve(app) as srv:
            status, _, err = _post(srv.base_url + "/v1/moderations", {"input": "hi", "policies": ["spam_scams"]})
            assert status == 502 and err["error"]["type"] == "model_output_error" and err["error"]["param"] == "input[0]"
            status, _, body = _post(srv.base_url + "/v1/verdicts", {"input": "hi", "policies": ["spam_scams"]})
            assert status == 200 and body["verdicts"][0]["status"] == "error"
            _, _, metrics = _get(srv.base_url + "/metrics")
    assert [Verdict.model_validate_json(x).status for x in audit.read_text().splitlines()] == ["error", "error"]
    assert 'cotmod_serve_errors_total{type="ModelOutputError"} 2.0' in metrics


def test_overload_gets_429_with_retry_after_and_loses_no_verdict(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    backend = GatedBackend()
    app = create_app(_settings(), ServeConfig(audit_log=audit, max_concurrency=1, max_queue=1, retry_after=7), backend=backend)
    results: list[int] = []

    def send(text: str) -> None:
        results.append(_post(srv.base_url + "/v1/verdicts", {"input": text, "policies": ["spam_scams"]})[0])

    svc = app.state.service
    with _serve(app) as srv:
        first = threading.Thread(target=send, args=("one",))
        first.start()
        _wait_until(lambda: backend.started == 1, "the first request to reach the model")
        second = threading.Thread(target=send, args=("two",))
        second.start()
        _wait_until(lambda: len(svc.admission._waiters) == 1, "the second request to queue")
        status, headers, err = _post(srv.base_url + "/v1/verdicts", {"input": "three"})
        assert status == 429 and headers["retry-after"] == "7" and err["error"]["code"] == "overloaded"
        _, _, metrics = _get(srv.base_url + "/metrics")
        assert "cotmod_serve_queue_depth 1.0" in metrics and "cotmod_serve_in_flight 1.0" in metrics
        assert 'cotmod_serve_rejected_total{reason="overloaded"} 1.0' in metrics
        backend.gate.set()
        first.join(30)
        second.join(30)
        assert _get(srv.base_url + "/healthz")[0] == 200
    assert sorted(results) == [200, 200]
    assert len(audit.read_text().splitlines()) == 2


def test_request_timeout_is_504_and_the_service_recovers(tmp_path: Path) -> None:
    backend = GatedBackend()
    app = create_app(_settings(), ServeConfig(request_timeout=0.2, max_concurrency=1), backend=backend)
    with _serve(app) as srv:
        status, _, err = _post(srv.base_url + "/v1/verdicts", {"input": "slow", "policies": ["spam_scams"]})
        assert status == 504 and err["error"]["code"] == "request_timeout"
        assert app.state.service.admission.active == 0  # the slot was given back
        backend.gate.set()
        assert _post(srv.base_url + "/v1/verdicts", {"input": "fast", "policies": ["spam_scams"]})[0] == 200


def test_graceful_shutdown_drains_requests_in_progress(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    backend = GatedBackend()
    app = create_app(_settings(), ServeConfig(audit_log=audit), backend=backend)
    srv = _serve(app)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(_post(srv.base_url + "/v1/verdicts", {"input": "x", "policies": ["spam_scams"]})[0]))
    t.start()
    _wait_until(lambda: backend.started == 1, "the request to reach the model")
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    _wait_until(lambda: srv.server.should_exit, "shutdown to begin")
    assert stopper.is_alive()  # still draining: the request is in progress
    backend.gate.set()
    t.join(30)
    stopper.join(30)
    assert got == [200] and not srv.thread.is_alive()
    assert [Verdict.model_validate_json(x).status for x in audit.read_text().splitlines()] == ["ok"]


def test_cascade_scores_route_items_as_in_the_runner(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    cascade = tmp_path / "cascade.yaml"
    cascade.write_text("cascade:\n  spam_scams:\n    label: spam\n    allow_below: 0.1\n    action_at: 0.9\n")
    app = create_app(_settings(fake.base_url, cascade=str(cascade)))
    with _serve(app) as srv:
        url = srv.base_url + "/v1/moderations"
        body = {"policies": ["spam_scams"], "input": [
            {"type": "text", "text": "buy now", "scores": {"spam": 0.95}},
            {"type": "text", "text": "hi mum", "scores": {"spam": 0.01}},
            {"type": "text", "text": "VIOLATE maybe", "scores": {"spam": 0.5}},
        ]}
        before = fake.requests
        status, _, resp = _post(url, body)
        assert status == 200, resp
        routes = [r["cotmod"]["decisions"][0]["route"] for r in resp["results"]]
        assert routes == ["classifier_action", "classifier_allow", "llm"]
        assert [r["flagged"] for r in resp["results"]] == [True, False, True]
        assert fake.requests - before == 1  # only the uncertain item reached the model
        status, _, err = _post(url, {"policies": ["spam_scams"], "input": [{"type": "text", "text": "x", "scores": {"spam": 1.5}}]})
        assert status == 400 and err["error"]["message"].startswith("input[0]: ") and "spam" in err["error"]["message"]


def test_cli_serve_refuses_bad_setups() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["serve", "--host", "0.0.0.0", "--base-url", "http://127.0.0.1:9/v1", "-m", "m"])
    assert out.exit_code == 2 and "give API keys" in out.output
    out = runner.invoke(cli, ["serve", "--api-keys-file", "/nonexistent/keys.txt", "--base-url", "http://127.0.0.1:9/v1", "-m", "m"])
    assert out.exit_code == 2 and "API keys file not found" in out.output and "Traceback" not in out.output
    out = runner.invoke(cli, ["serve", "--category-name", "nope=x", "--base-url", "http://127.0.0.1:9/v1", "-m", "m", "-g", str(GUIDELINES)])
    assert out.exit_code == 2 and "unknown policy 'nope'" in out.output
    out = runner.invoke(cli, ["serve", "--category-name", "broken", "--base-url", "http://127.0.0.1:9/v1", "-m", "m"])
    assert out.exit_code == 2 and "POLICY=NAME" in out.output


def test_cli_serve_runs_and_stops_on_sigterm(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    env = {**os.environ, "SERVE_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cotmod", "serve", "--port", "0", "--base-url", fake.base_url, "-m", "m", "-g", str(GUIDELINES),
         "--api-key-env", "SERVE_KEY", "--audit-log", str(audit), "-p", "spam_scams"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stderr is not None
        port = None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line, re.I)
            if m:
                port = int(m.group(1))
                break
        assert port, "".join(lines)
        status, _, body = _post(f"http://127.0.0.1:{port}/v1/moderations", {"input": "VIOLATE"}, _auth())
        assert status == 200 and list(body["results"][0]["categories"]) == ["spam_scams"]
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    log = "".join(lines) + rest
    assert KEY not in log and "VIOLATE" not in log and '"POST /v1/moderations" 200' in log
    assert len(audit.read_text().splitlines()) == 1



def test_server_thread_socket_has_nodelay() -> None:
    """Regression: without TCP_NODELAY on the pre-bound socket, every keep-alive request waited
    ~40 ms for a delayed ACK (accepted sockets inherit the option from the listening one)."""
    import socket

    srv = ServerThread(create_app(_settings("http://127.0.0.1:9/v1")))
    try:
        assert srv.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        srv.sock.close()
