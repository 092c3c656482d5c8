from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from cotmod import AsyncModerator, ConfigError, InputError, verdict_json_schema
from cotmod.batch._provider import export_batch, import_batch
from cotmod.batch._runner import Runner
from cotmod.cli import cli
from cotmod.testing import FakeOpenAIServer, answer_for

from .test_runner import ids_in, write_jsonl


def fake_provider(requests: Path, results: Path, *, corrupt: set[str] = frozenset()) -> None:
    """What a Batch API would return: one result line per request, in any order."""
    lines = []
    for raw in requests.read_text().splitlines():
        req = json.loads(raw)
        content = json.dumps(answer_for(req["body"]))
        if req["custom_id"].split(":", 1)[1] in corrupt:
            content = content[:40]
        lines.append(json.dumps({
            "id": "batch_req_x", "custom_id": req["custom_id"], "error": None,
            "response": {"status_code": 200, "request_id": "r", "body": {
                "id": "c", "object": "chat.completion", "model": req["body"]["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 900, "completion_tokens": 80, "total_tokens": 980}}},
        }))
    results.write_text("\n".join(reversed(lines)) + "\n")


def test_export_import_round_trip(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 9, extra=['{"id": "bad"}'])
    req = tmp_path / "requests.jsonl"
    mod = AsyncModerator(model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    counts = export_batch(mod, inp, req, policies=["hate_speech", "spam_scams"])
    assert counts == {"items": 9, "requests": 18, "bad_rows": 1}
    first = json.loads(req.read_text().splitlines()[0])
    assert first["method"] == "POST" and first["url"] == "/v1/chat/completions"
    assert first["body"]["model"] == "gpt-4o-mini" and first["body"]["response_format"]["type"] == "json_schema"
    results = tmp_path / "results.jsonl"
    fake_provider(req, results, corrupt={"p4"})
    out = tmp_path / "verdicts.jsonl"
    s = import_batch(mod, results, req, out)
    assert s.processed == 9 and s.errors == 1 and s.prompt_tokens == 18 * 900
    got = ids_in(out)
    assert sorted(got) == sorted(f"p{i}" for i in range(9) if i != 4)
    schema = verdict_json_schema()
    for line in out.read_text().splitlines():
        jsonschema.validate(json.loads(line), schema)
    v0 = json.loads(out.read_text().splitlines()[0])
    assert v0["prompt_fingerprint"] == mod.fingerprint(["hate_speech", "spam_scams"])
    err = json.loads(Runner.errors_path(out).read_text())
    assert err["id"] == "p4" and "no re-ask" in err["message"] and err["raw_output"]
    # importing again adds nothing (resumable, no duplicates)
    assert import_batch(mod, results, req, out).processed == 0
    # the failed item can be redone live with run --retry-errors on the same output
    with FakeOpenAIServer() as srv:
        live = AsyncModerator(model="gpt-4o-mini", base_url=srv.base_url)
        r = Runner(live).run_sync(inp, out, policies=["hate_speech", "spam_scams"], retry_errors=True)
    assert r.processed == 1 and sorted(ids_in(out)) == sorted(f"p{i}" for i in range(9))


def test_import_refuses_changed_policies(tmp_path: Path, policy_dir: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 2)
    req = tmp_path / "requests.jsonl"
    export_batch(AsyncModerator(policy_dir, model="m", base_url="http://127.0.0.1:9/v1"), inp, req, policies=["spam_scams"])
    f = policy_dir / "spam_scams.yaml"
    f.write_text(f.read_text().replace("version: 1.1.0", "version: 1.1.1", 1))
    results = tmp_path / "results.jsonl"
    fake_provider(req, results)
    with pytest.raises(ConfigError, match="changed since"):
        import_batch(AsyncModerator(policy_dir, model="m", base_url="http://127.0.0.1:9/v1"), results, req, tmp_path / "o.jsonl")


def test_batch_cli(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 3)
    req = tmp_path / "req.jsonl"
    r = CliRunner().invoke(cli, ["batch", "export", str(inp), "-o", str(req), "-p", "spam_scams", "--model", "gpt-4o-mini", "--base-url", "http://127.0.0.1:9/v1"])
    assert r.exit_code == 0 and "3 requests for 3 items" in r.output
    fake_provider(req, tmp_path / "res.jsonl")
    r = CliRunner().invoke(cli, ["batch", "import", str(tmp_path / "res.jsonl"), "--requests", str(req), "-o", str(tmp_path / "v.jsonl"), "--model", "gpt-4o-mini", "--base-url", "http://127.0.0.1:9/v1", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["processed"] == 3 and data["cost_usd"] == pytest.approx(3 * (900 * 0.15 + 80 * 0.60) / 1e6)


def test_batch_export_with_bad_rows_exits_1(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "\\ud800"}\n{"id": "c", "text": "also fine"}\n')
    req = tmp_path / "req.jsonl"
    r = CliRunner().invoke(cli, ["batch", "export", str(inp), "-o", str(req), "-p", "spam_scams", "--model", "gpt-4o-mini", "--base-url", "http://127.0.0.1:9/v1"])
    assert r.exit_code == 1, r.output
    assert "2 requests for 2 items (1 bad rows dead-lettered)" in r.output


def test_import_of_malformed_result_lines(tmp_path: Path) -> None:
    """A result line that is not JSON or not UTF-8 says so (it used to be reported as lacking
    custom_id); a result whose response is not an object is that item's error verdict (dead-lettered,
    the others imported, exit 1), not an AttributeError that stops the import."""
    inp = write_jsonl(tmp_path / "in.jsonl", 3)
    req = tmp_path / "requests.jsonl"
    mod = AsyncModerator(model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    export_batch(mod, inp, req, policies=["spam_scams"])
    results = tmp_path / "results.jsonl"
    fake_provider(req, results)
    good = results.read_text().splitlines()
    out = tmp_path / "verdicts.jsonl"
    for bad, message in (("{not json", "invalid JSON"), ('{"id": 1}', r"not a Batch API result line \(needs custom_id\)")):
        broken = tmp_path / "broken.jsonl"
        broken.write_text("\n".join([*good, bad]) + "\n")
        with pytest.raises(InputError, match=rf"broken\.jsonl:4: {message}"):
            import_batch(mod, broken, req, out)
    broken.write_bytes(("\n".join(good) + "\n").encode() + b"\xff\n")
    with pytest.raises(InputError, match=r"broken\.jsonl:4: not valid UTF-8"):
        import_batch(mod, broken, req, out)
    odd = [json.loads(x) for x in good]
    odd[0]["response"] = "oops"
    results.write_text("".join(json.dumps(x) + "\n" for x in odd))
    r = CliRunner().invoke(cli, ["batch", "import", str(results), "--requests", str(req), "-o", str(out), "--model", "gpt-4o-mini",
                                 "--base-url", "http://127.0.0.1:9/v1"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert len(ids_in(out)) == 2
    assert "malformed result: response is not an object" in Runner.errors_path(out).read_text()
