"""cotmod serve builds its JSON responses around each verdict's audit-log line (serialised once):
the bodies must be the JSON they were when every verdict was re-serialised with
``model_dump(mode="json")`` and the whole body rendered by ``JSONResponse``; a verdict that could be
neither logged nor returned (a lone surrogate in its id or metadata) is refused before any model
call."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse

from cotmod import Verdict
from cotmod._config import Settings
from cotmod._verdict import ErrorInfo, Triage
from cotmod.backends._openai import ChatRequest
from cotmod.serve import ServeConfig, ServerThread, create_app
from cotmod.testing import FakeBackend, answer_for

from .conftest import GUIDELINES

POLICIES = ["hate_speech", "spam_scams"]


def _answer(request: ChatRequest) -> dict[str, Any]:
    """FakeOpenAIServer's answers: a policy is violated when the item holds VIOLATE."""
    return answer_for({"messages": request.messages, "response_format": {"json_schema": {"schema": request.schema}}})


def _post(url: str, body: bytes | dict[str, Any]) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _old_body(content: Any) -> bytes:
    """What the service sent before: the body rendered by JSONResponse."""
    return bytes(JSONResponse(content).body)


def _app(tmp_path: Path, backend: FakeBackend) -> Any:
    cfg = ServeConfig(audit_log=tmp_path / "audit.jsonl", category_names={"hate_speech": "hate"})
    return create_app(Settings(guidelines=str(GUIDELINES)), cfg, backend=backend)


def test_response_bodies_equal_the_model_dump_rendering(tmp_path: Path) -> None:
    app = _app(tmp_path, FakeBackend(default=_answer))
    svc = app.state.service
    meta = {"source": "app ünïcode ✓ \u2028", "tiny": 1e-7, "big": 1e16, "n": 10**20, "nested": {"l": [1, 2.5, None, True]}}
    with ServerThread(app) as srv:
        status, raw_mod = _post(srv.base_url + "/v1/moderations", {"input": ["a calm note", "VIOLATE now ✓"], "policies": POLICIES})
        assert status == 200, raw_mod
        items = [{"id": "a1", "text": "VIOLATE here", "metadata": meta}, {"text": "plain"}]
        status, raw_ver = _post(srv.base_url + "/v1/verdicts", {"items": items})
        assert status == 200, raw_ver
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    by_id = {x["item_id"]: x for x in audit}
    mod = json.loads(raw_mod)
    ver = json.loads(raw_ver)
    # each verdict in a response is its audit-log line, and equals model_dump(mode="json")
    returned = [r["cotmod"] for r in mod["results"]] + ver["verdicts"]
    assert len(returned) == len(audit) == 4
    for v in returned:
        assert v == by_id[v["item_id"]] == Verdict.model_validate(v).model_dump(mode="json")
    assert ver["verdicts"][0]["metadata"] == {**meta, "request_id": ver["request_id"], "client_item_id": "a1"}
    assert [r["flagged"] for r in mod["results"]] == [False, True]
    # the whole bodies: the same JSON as the old construction (JSONResponse over model_dump dicts)
    old_ver = {"request_id": ver["request_id"], "verdicts": [Verdict.model_validate(v).model_dump(mode="json") for v in ver["verdicts"]]}
    assert json.loads(_old_body(old_ver)) == ver
    assert list(ver) == list(old_ver)
    ids = ["hate_speech", "spam_scams"]
    old_results = []
    for r in mod["results"]:
        v = Verdict.model_validate(r["cotmod"])
        result = json.loads(svc.moderation_result(v, v.model_dump_json(), ids))
        old = {
            "flagged": bool(v.violates),
            "categories": {("hate" if p == "hate_speech" else p): v.decision(p).violates for p in ids},
            "category_scores": {("hate" if p == "hate_speech" else p): float(v.decision(p).score) for p in ids},
            "category_applied_input_types": {"hate": ["text"], "spam_scams": ["text"]},
            "cotmod": v.model_dump(mode="json"),
        }
        assert result == old and list(result) == list(old) and r == old
        old_results.append(old)
    old_mod = {"id": mod["id"], "model": "fake-model", "results": old_results}
    assert json.loads(_old_body(old_mod)) == mod and list(mod) == list(old_mod)
    # compact and UTF-8 like JSONResponse: no spaces after separators, non-ASCII unescaped
    assert b", " not in raw_ver.replace(b"a calm note", b"") and "ünïcode ✓".encode() in raw_ver


@pytest.mark.parametrize(
    "verdict_update",
    [
        {"status": "error", "violates": None, "action": None, "decisions": [], "error": ErrorInfo(type="ModelOutputError", message="bad ✗", raw_output="{")},
        {"triage": Triage(selected=["spam_scams"], skipped=["hate_speech"], summary="s", fallback=None), "latency_ms": 0.1 + 0.2},
    ],
)
def test_moderation_result_equals_the_model_dump_rendering_for_odd_verdicts(tmp_path: Path, verdict_update: dict[str, Any]) -> None:
    app = _app(tmp_path, FakeBackend(default=_answer))
    svc = app.state.service
    with ServerThread(app) as srv:
        status, raw = _post(srv.base_url + "/v1/verdicts", {"input": "VIOLATE", "policies": POLICIES})
        assert status == 200
    v = Verdict.model_validate(json.loads(raw)["verdicts"][0]).model_copy(update=verdict_update)
    got = svc.moderation_result(v, v.model_dump_json(), POLICIES)
    assert json.loads(got)["cotmod"] == v.model_dump(mode="json")
    assert json.loads(got) == json.loads(JSONResponse({**{k: x for k, x in json.loads(got).items() if k != "cotmod"}, "cotmod": v.model_dump(mode="json")}).body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"items": [{"id": "x", "text": "hello", "metadata": {"k": "\\ud800"}}]}', "items[0].metadata: not valid Unicode"),
        (b'{"items": [{"id": "bad \\udfff id", "text": "hello"}]}', "items[0].id: not valid Unicode"),
        (b'{"input": [{"type": "text", "text": "hi", "scores": {"spam_scams": "\\ud800"}}]}', "input[0].metadata: not valid Unicode"),
    ],
)
def test_lone_surrogate_in_id_or_metadata_is_a_400_before_any_model_call(tmp_path: Path, body: bytes, message: str) -> None:
    # before: the model was called, then the verdict could not be serialised for the audit log
    # (a 500 "internal error", and the verdict neither logged nor returned)
    backend = FakeBackend(default=_answer)
    app = _app(tmp_path, backend)
    with ServerThread(app) as srv:
        status, raw = _post(srv.base_url + "/v1/verdicts", body)
        err = json.loads(raw)["error"]
        assert status == 400 and message in err["message"], err
        assert backend.history == []
        status, _ = _post(srv.base_url + "/v1/verdicts", {"items": [{"id": "ok", "text": "fine"}]})
        assert status == 200
    assert [json.loads(x)["metadata"]["client_item_id"] for x in (tmp_path / "audit.jsonl").read_text().splitlines()] == ["ok"]
