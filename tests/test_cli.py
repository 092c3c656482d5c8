from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from click.testing import CliRunner

from cotmod.cli import cli
from cotmod.testing import FakeOpenAIServer

from .conftest import GUIDELINES


def run(*args: str, **kw):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kw)


def test_help_everywhere() -> None:
    for cmd in ([], ["moderate"], ["lint"], ["render"], ["schema"], ["models"], ["models", "pull"], ["models", "list"], ["local"], ["local", "serve"]):
        r = run(*cmd, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output, cmd


def test_lint_ok_and_errors(tmp_path: Path) -> None:
    r = run("lint")
    assert r.exit_code == 0 and r.output.startswith("ok: 10 file(s)")
    bad = tmp_path / "hate_speech.yaml"
    bad.write_text((GUIDELINES / "hate_speech.yaml").read_text().replace("  - id: HATE-3", "  - id: HATE-1"))
    r = run("lint", str(bad))
    assert r.exit_code == 1
    assert f"{bad}:" in r.output and "rules[2].id: duplicate ID 'HATE-1'" in r.output
    r = run("lint", "--json", str(bad))
    data = json.loads(r.output)
    assert r.exit_code == 1 and data["ok"] is False and data["errors"][0]["line"] > 1


def test_schema_and_render() -> None:
    r = run("schema", "verdict")
    schema = json.loads(r.output)
    assert "reasoning" in schema["properties"] and "decisions" in schema["properties"]
    r = run("render", "-p", "spam_scams", "--json", "Win {{ 7*7 }} now")
    data = json.loads(r.output)
    msgs = data["prompts"][0]["messages"]
    assert "{{ 7*7 }}" in msgs[-1]["content"] and data["prompts"][0]["tokens"]["system"] > 200
    r = run("render", "--vars")
    assert "content" in r.output and "policies" in r.output


def test_render_counts_tokens_per_message() -> None:
    """Few-shot turns repeat the user/assistant roles: each message gets its own count."""
    from cotmod.prompting._tokens import count_tokens

    data = json.loads(run("render", "-p", "hate_speech", "--json", "short").output)["prompts"][0]
    msgs, per = data["messages"], data["message_tokens"]
    assert len(msgs) > 3 and per == [count_tokens(m["content"]) for m in msgs]
    assert data["tokens"]["assistant"] == sum(n for m, n in zip(msgs, per, strict=True) if m["role"] == "assistant")
    assert data["tokens"]["user"] > per[-1]  # the example turns plus the item
    text = run("render", "-p", "hate_speech", "short").output
    heads = [line for line in text.splitlines() if line.startswith("--- ")]
    assert [int(h.split("(")[1].split()[0]) for h in heads] == per


def test_moderate_against_an_endpoint(tmp_path: Path) -> None:
    with FakeOpenAIServer() as srv:
        r = run("moderate", "--base-url", srv.base_url, "--model", "m", "-p", "hate_speech", "-p", "spam_scams", "--json", "please VIOLATE")
        assert r.exit_code == 0, r.output
        v = json.loads(r.output)
        jsonschema.validate(v, json.loads(run("schema", "verdict").output))
        assert v["violates"] is True and [d["policy_id"] for d in v["decisions"]] == ["hate_speech", "spam_scams"]
        posts = tmp_path / "posts.jsonl"
        posts.write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": "VIOLATE me"}\n')
        r = run("moderate", "--base-url", srv.base_url, "--model", "m", "-p", "spam_scams", "--file", str(posts))
        assert r.exit_code == 0
        assert "a  SAFE" in r.output and "b  VIOLATES" in r.output and "SCAM-1" in r.output


def test_clean_errors_no_tracebacks(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["moderate", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "-p", "nope", "hi"])
    assert r.exit_code == 2 and "unknown policy 'nope'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["moderate", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "   "])
    assert r.exit_code == 2 and "empty" in r.output
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    r = CliRunner().invoke(cli, ["moderate", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--file", str(bad)])
    assert r.exit_code == 2 and f"{bad}:2: not valid UTF-8" in r.output
    with FakeOpenAIServer(fail_first=100, fail_status=401) as srv:
        r = CliRunner().invoke(cli, ["moderate", "--base-url", srv.base_url, "--model", "m", "--api-key", "sk-SECRET-abcdef", "-p", "spam_scams", "hi"])
    assert r.exit_code == 3 and "authentication failed" in r.output and "sk-SECRET-abcdef" not in r.output
    r = CliRunner().invoke(cli, ["moderate", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "-p", "spam_scams", "hi"], env={"COTMOD_DEBUG": ""})
    assert r.exit_code == 3 and "unreachable" in r.output and "Traceback" not in r.output


def test_missing_local_model_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COTMOD_HOME", str(tmp_path))
    r = CliRunner().invoke(cli, ["moderate", "-p", "spam_scams", "--local-model", "smollm2-135m", "hi"])
    assert r.exit_code == 3 and "cotmod models pull smollm2-135m" in r.output


def test_models_list_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COTMOD_HOME", str(tmp_path))
    data = json.loads(run("models", "list", "--json").output)
    assert {d["name"] for d in data} == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert not any(d["installed"] for d in data)
