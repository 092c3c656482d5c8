"""cotmod serve: the audit log survives a torn last line, every audit-log record has a unique item
id (clients resend X-Request-ID and item ids), ``-p`` is the set of policies the service offers,
and with API keys the playground page carries no policy data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cotmod import InputError, Verdict
from cotmod._config import Settings
from cotmod.audit._decisions import load_decisions
from cotmod.batch._store import scan_jsonl
from cotmod.cli import cli
from cotmod.serve import ApiKeys, ServeConfig, ServerThread, create_app
from cotmod.testing import FakeBackend, answer_for

from .conftest import GUIDELINES
from .test_serve import KEY, _auth, _get, _post


def _answer(request: Any) -> dict[str, Any]:
    return answer_for({"messages": request.messages, "response_format": {"json_schema": {"schema": request.schema}}})


def _app(cfg: ServeConfig, backend: FakeBackend | None = None) -> Any:
    return create_app(Settings(guidelines=str(GUIDELINES)), cfg, backend=backend or FakeBackend(default=_answer))


def _first_verdict_line(tmp_path: Path) -> str:
    log = tmp_path / "first.jsonl"
    with ServerThread(_app(ServeConfig(audit_log=log))) as srv:
        assert _post(srv.base_url + "/v1/verdicts", {"input": "hello", "policies": ["spam_scams"]})[0] == 200
    return log.read_text().splitlines()[0]


@pytest.mark.parametrize("torn", ["fragment", "complete"])
def test_a_torn_last_line_is_repaired_before_the_next_verdict(tmp_path: Path, torn: str) -> None:
    line = _first_verdict_line(tmp_path)
    log = tmp_path / "torn.jsonl"
    # a kill -9 in the middle of a write: the last line has no newline, cut short or complete
    tail = line[: len(line) // 2] if torn == "fragment" else line
    log.write_text(line + "\n" + tail)
    with ServerThread(_app(ServeConfig(audit_log=log))) as srv:
        assert _post(srv.base_url + "/v1/verdicts", {"input": "a new post", "policies": ["spam_scams"]})[0] == 200
    lines = log.read_text().splitlines()
    assert len(lines) == (2 if torn == "fragment" else 3)
    for x in lines:
        Verdict.model_validate_json(x)  # before: the new verdict was glued onto the fragment
    assert len(list(scan_jsonl(log, ("item_id",)))) == len(lines)


def test_a_damaged_audit_log_refuses_to_start_and_deletes_nothing(tmp_path: Path) -> None:
    line = _first_verdict_line(tmp_path)
    log = tmp_path / "damaged.jsonl"
    log.write_text(line + "\nnot json\n" + line + "\n")
    before = log.read_bytes()
    with pytest.raises(InputError, match=r"damaged.jsonl:2: invalid JSON.*--audit-log"):
        _app(ServeConfig(audit_log=log))
    assert log.read_bytes() == before
    out = CliRunner().invoke(cli, ["serve", "--port", "0", "-g", str(GUIDELINES), "--base-url", "http://127.0.0.1:9/v1", "-m", "m", "--audit-log", str(log)])
    assert out.exit_code == 2 and "damaged.jsonl:2: invalid JSON" in out.output and "Traceback" not in out.output


def test_every_audit_log_record_has_a_unique_item_id_when_clients_resend_ids(tmp_path: Path) -> None:
    log = tmp_path / "served.jsonl"
    with ServerThread(_app(ServeConfig(audit_log=log))) as srv:
        for _ in range(2):  # a client retrying with the same X-Request-ID and the same item ids
            s1, h1, b1 = _post(srv.base_url + "/v1/moderations", {"input": ["VIOLATE here", "calm"], "policies": ["spam_scams"]}, {"x-request-id": "retry-abc"})
            s2, _, b2 = _post(srv.base_url + "/v1/verdicts", {"items": [{"id": "p1", "text": "a post"}], "policies": ["spam_scams"]}, {"x-request-id": "retry-abc"})
            assert s1 == 200 and s2 == 200
            assert h1["x-request-id"] == b1["id"].removeprefix("modr-") != "retry-abc"
            v = Verdict.model_validate(b2["verdicts"][0])
            assert v.metadata["client_item_id"] == "p1" and v.metadata["client_request_id"] == "retry-abc"
            assert v.item_id == b2["request_id"] + "-0"
    records = [json.loads(x) for x in log.read_text().splitlines()]
    ids = [r["item_id"] for r in records]
    assert len(records) == 6 and len(set(ids)) == 6
    assert all(r["metadata"]["client_request_id"] == "retry-abc" for r in records)
    assert all(r["item_id"].startswith(r["metadata"]["request_id"] + "-") for r in records)
    # what `cotmod audit plan served.jsonl` reads: before, "duplicate id 'retry-abc-0'"
    decisions = load_decisions(log, ["spam_scams", "hate_speech"])
    assert len(decisions.items) == 6


def test_the_policies_given_are_the_set_the_service_offers(tmp_path: Path) -> None:
    offered = ["hate_speech", "spam_scams"]
    backend = FakeBackend(default=_answer)
    with ServerThread(_app(ServeConfig(policies=offered), backend)) as srv:
        status, _, err = _post(srv.base_url + "/v1/verdicts", {"input": "x", "policies": ["self_harm"]})
        assert status == 400 and "'self_harm' is not offered" in err["error"]["message"] and err["error"]["code"] == "unknown_policy"
        status, _, err = _post(srv.base_url + "/v1/moderations", {"input": "x", "policies": ["spam_scams", "self_harm"]})
        assert status == 400 and "self_harm" in err["error"]["message"]
        assert backend.history == []
        status, _, body = _post(srv.base_url + "/v1/moderations", {"input": "x"})
        assert status == 200 and sorted(body["results"][0]["categories"]) == offered
        status, _, pols = _get(srv.base_url + "/v1/policies")
        assert status == 200 and [p["id"] for p in pols["policies"]] == offered
        page = _get(srv.base_url + "/")[2]
        assert '"spam_scams"' in page and '"self_harm"' not in page
        status, _, err = _post(srv.base_url + "/v1/render", {"text": "x", "policies": ["self_harm"]})
        assert status == 400
    # the CLI's -p sets that offered set
    seen: dict[str, Any] = {}

    def fake_run(app: Any, host: str, port: int, **kw: Any) -> None:
        seen["offered"] = app.state.service.offered

    import cotmod.serve

    mp = pytest.MonkeyPatch()
    mp.setattr(cotmod.serve, "run_server", fake_run)
    try:
        out = CliRunner().invoke(cli, ["serve", "-g", str(GUIDELINES), "--base-url", "http://127.0.0.1:9/v1", "-m", "m", "-p", "hate_speech", "-p", "spam_scams"])
    finally:
        mp.undo()
    assert out.exit_code == 0, out.output
    assert seen["offered"] == offered


def test_with_api_keys_the_playground_page_embeds_no_policy(tmp_path: Path) -> None:
    with ServerThread(_app(ServeConfig(api_keys=ApiKeys.of([KEY])))) as srv:
        status, headers, page = _get(srv.base_url + "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        for secret in ('"hate_speech"', "Dehumanization", "HATE-1", "spam_scams"):
            assert secret not in page, secret
        assert _get(srv.base_url + "/v1/policies")[0] == 401
        # with the key, the page's script gets them from the API
        req_status, _, pols = _open_with_key(srv.base_url + "/v1/policies")
        assert req_status == 200 and "hate_speech" in [p["id"] for p in pols["policies"]]
    with ServerThread(_app(ServeConfig())) as srv:  # without keys the page carries them
        assert '"hate_speech"' in _get(srv.base_url + "/")[2]


def _open_with_key(url: str) -> tuple[int, dict[str, str], Any]:
    import urllib.request

    from .test_serve import _open

    return _open(urllib.request.Request(url, headers=_auth()))
