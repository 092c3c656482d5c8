from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
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
    assert r.exit_code == 0 and r.stdout.startswith("ok: 10 file(s)")
    bad = tmp_path / "hate_speech.yaml"
    bad.write_text((GUIDELINES / "hate_speech.yaml").read_text().replace("  - id: HATE-3", "  - id: HATE-1"))
    r = run("lint", str(bad))
    assert r.exit_code == 1
    assert f"{bad}:" in r.output and "rules[2].id: duplicate ID 'HATE-1'" in r.output
    r = run("lint", "--json", str(bad))
    data = json.loads(r.stdout)
    assert r.exit_code == 1 and data["ok"] is False and data["errors"][0]["line"] > 1


def test_schema_and_render() -> None:
    r = run("schema", "verdict")
    schema = json.loads(r.stdout)
    assert "reasoning" in schema["properties"] and "decisions" in schema["properties"]
    r = run("render", "-p", "spam_scams", "--json", "Win {{ 7*7 }} now")
    data = json.loads(r.stdout)
    msgs = data["prompts"][0]["messages"]
    assert "{{ 7*7 }}" in msgs[-1]["content"] and data["prompts"][0]["tokens"]["system"] > 200
    r = run("render", "--vars")
    assert "content" in r.output and "policies" in r.output
    used = json.loads(run("render", "--vars", "--json").stdout)  # --json is JSON here too
    assert "content" in used["moderation.user.j2"] and "policies" in used["moderation.system.j2"]


def test_render_counts_tokens_per_message() -> None:
    """Few-shot turns repeat the user/assistant roles: each message gets its own count."""
    from cotmod.prompting._tokens import count_tokens

    data = json.loads(run("render", "-p", "hate_speech", "--json", "short").stdout)["prompts"][0]
    msgs, per = data["messages"], data["message_tokens"]
    assert len(msgs) > 3 and per == [count_tokens(m["content"]) for m in msgs]
    assert data["tokens"]["assistant"] == sum(n for m, n in zip(msgs, per, strict=True) if m["role"] == "assistant")
    assert data["tokens"]["user"] > per[-1]  # the example turns plus the item
    text = run("render", "-p", "hate_speech", "short").stdout
    heads = [line for line in text.splitlines() if line.startswith("--- ")]
    # the two renders' item messages differ by their random content boundary: compare the prefix
    assert len(heads) == len(per) and [int(h.split("(")[1].split()[0]) for h in heads][:-1] == per[:-1]


def test_moderate_against_an_endpoint(tmp_path: Path) -> None:
    with FakeOpenAIServer() as srv:
        r = run("moderate", "--base-url", srv.base_url, "--model", "m", "-p", "hate_speech", "-p", "spam_scams", "--json", "please VIOLATE")
        assert r.exit_code == 0, r.output
        v = json.loads(r.stdout)
        jsonschema.validate(v, json.loads(run("schema", "verdict").stdout))
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


def test_an_output_file_in_a_missing_directory_is_one_clear_line(tmp_path: Path) -> None:
    """-o into a directory that does not exist (guide export, tune, classifier tune, cascade, sync
    update --create all write with plain file writes) is caught at the CLI boundary: one line
    naming the file, exit 2, no traceback."""
    target = tmp_path / "nodir" / "guide.md"
    r = CliRunner().invoke(cli, ["guide", "export", "-o", str(target)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines()[-1] == f"Error: FileNotFoundError: No such file or directory: {target}"
    r = CliRunner().invoke(cli, ["sync", "update", str(tmp_path / "nodir" / "m.yaml"), "--create"])
    assert r.exit_code == 2 and "No such file or directory" in r.stderr and "Traceback" not in r.output


def test_missing_local_model_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COTMOD_HOME", str(tmp_path))
    r = CliRunner().invoke(cli, ["moderate", "-p", "spam_scams", "--local-model", "smollm2-135m", "hi"])
    assert r.exit_code == 3 and "cotmod models pull smollm2-135m" in r.output


def test_models_list_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COTMOD_HOME", str(tmp_path))
    data = json.loads(run("models", "list", "--json").output)
    assert {d["name"] for d in data} == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert not any(d["installed"] for d in data)


def test_commands_use_the_guidelines_of_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    """Inside a policy repo, every command uses ./guidelines (not the starter pack) and says so."""
    import shutil

    import yaml

    from .conftest import HATE_V

    shutil.copytree(GUIDELINES, tmp_path / "starter")
    # the manifest is created against the starter pack
    r = run("sync", "update", str(tmp_path / "enforcement.yaml"), "--create", "-g", str(tmp_path / "starter"))
    data = yaml.safe_load((tmp_path / "enforcement.yaml").read_text())
    assert data["policies"]["hate_speech"]["version"] == HATE_V
    # the user's own repo: two policies, hate_speech changed
    own = tmp_path / "guidelines"
    own.mkdir()
    for name in ("hate_speech", "spam_scams"):
        shutil.copy(GUIDELINES / f"{name}.yaml", own)
    f = own / "hate_speech.yaml"
    f.write_text(f.read_text().replace(f"version: {HATE_V}", "version: 9.0.0").replace("denies their humanity", "denies that they are human"))
    monkeypatch.chdir(tmp_path)

    r = run("lint")
    assert r.exit_code == 0 and r.stdout.startswith("ok: 2 file(s), 2 valid")
    assert r.stderr == "cotmod: policies from ./guidelines (2 files)\n"
    r = run("render", "-p", "hate_speech", "--json", "hi")
    assert r.exit_code == 0 and json.loads(r.stdout)["prompts"][0]["policies"] == {"hate_speech": "9.0.0"}
    assert "policies from ./guidelines (2 files)" in r.stderr
    r = run("render", "-p", "minor_safety", "hi")  # not in ./guidelines
    assert r.exit_code == 2 and "unknown policy 'minor_safety'" in r.output
    r = run("schema", "decision")
    assert set(json.loads(r.stdout)["properties"]["decisions"]["properties"]) == {"hate_speech", "spam_scams"}
    r = run("guide", "export")
    assert "hate_speech` v9.0.0" in r.stdout and "SCAM-1" in r.stdout and "MINOR-1" not in r.stdout
    r = run("sync", "check", "--json")  # default manifest ./enforcement.yaml, default policies ./guidelines
    assert r.exit_code == 1, r.output
    stale = {(x["policy"], x["pathway"]) for x in json.loads(r.stdout)}
    assert ("hate_speech", "version") in stale and ("minor_safety", "manifest") in stale
    # --guidelines still wins, and is not announced (what is left needs a human: escalation queues)
    r = run("sync", "check", "-g", str(tmp_path / "starter"), "--json")
    assert r.exit_code == 1 and "policies from" not in r.stderr
    assert {x["fix"] for x in json.loads(r.stdout)} == {"human"}


def test_lint_of_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["lint", str(tmp_path / "nosuch")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "does not exist" in r.output and "nosuch" in r.output


def test_commands_reading_the_configs_guidelines_say_which_config(tmp_path: Path, monkeypatch) -> None:
    """lint, guide export and schema decision take their policies from ./cotmod.toml's guidelines:
    they say so, like the commands with endpoint options."""
    import shutil

    (tmp_path / "pol").mkdir()
    for name in ("hate_speech", "spam_scams"):
        shutil.copy(GUIDELINES / f"{name}.yaml", tmp_path / "pol")
    (tmp_path / "cotmod.toml").write_text('guidelines = "pol"\n')
    monkeypatch.chdir(tmp_path)
    for args in (["lint"], ["guide", "export"], ["schema", "decision"]):
        r = run(*args)
        assert r.exit_code == 0, (args, r.output)
        assert r.stderr == "cotmod: using config ./cotmod.toml\ncotmod: policies from ./pol (config file; 2 files)\n", args
    r = run("guide", "export", "-g", "pol")  # the config is not read for --guidelines: nothing to say
    assert r.exit_code == 0 and r.stderr == ""


def test_lint_and_commands_use_the_starter_pack_elsewhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = run("lint")
    assert r.exit_code == 0 and r.stdout.startswith("ok: 10 file(s)")
    assert r.stderr.startswith("cotmod: policies from the starter pack (10 files")


def test_timeout_option_reaches_the_settings(monkeypatch) -> None:
    from cotmod.cli import _app

    seen = {}
    real = _app._settings

    def spy(**kw):
        s = real(**kw)
        seen["timeout"] = s.timeout
        return s

    monkeypatch.setattr("cotmod.cli._policies._settings", spy)
    r = run("render", "-p", "spam_scams", "--timeout", "2.5", "hi")
    assert r.exit_code == 0 and seen["timeout"] == 2.5


def test_float_options_refuse_nan_and_infinities_and_seeds_refuse_negatives(tmp_path: Path) -> None:
    """--sigma nan made every comparison false (no drift alert could fire, exit 0) and
    --target-precision nan wrote a thresholds file without thresholds; a negative --seed crashed in
    numpy. Each is now a usage error naming the option."""
    s = tmp_path / "s.jsonl"
    s.write_text("")
    run = tmp_path / "run"
    run.mkdir()
    cases = [
        (["monitor", str(s), "-r", str(s), "--sigma", "nan"], "--sigma", "not a finite number"),
        (["monitor", str(s), "-r", str(s), "--sigma", "inf"], "--sigma", "not a finite number"),
        (["tune", str(run), "--target-precision", "nan"], "--target-precision", "not a finite number"),
        (["classifier", "tune", str(s), "--target-precision", "nan"], "--target-precision", "not a finite number"),
        (["classifier", "cascade", str(s), "-v", str(s), "-m", "a=b", "--max-llm-share", "nan"], "--max-llm-share", "not a finite number"),
        (["moderate", "--timeout", "inf", "hi"], "--timeout", "not a finite number"),
        (["classifier", "estimate", str(s), "--seed", "-5"], "--seed", "x>=0"),
        (["audit", "plan", str(s), "--seed", "-1"], "--seed", "x>=0"),
        (["audit", "plan", str(s), "-o", str(tmp_path / "p.jsonl"), "--score-bands", "0.5,abc"], "--score-bands", "expected numbers separated by commas"),
    ]
    for args, option, message in cases:
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and option in r.stderr and message in r.stderr, (args, r.output)


def test_run_json_still_prints_json_when_a_failure_stops_the_run(tmp_path: Path) -> None:
    """run --json printed nothing on stdout when the endpoint was unreachable (exit 3): a caller
    parsing stdout got no JSON. It now gets the output path, the error and the exit code."""
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "text": "hi"}) + "\n")
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(cli, ["run", str(inp), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                                 "-p", "spam_scams", "--json", "--no-cache"])
    assert r.exit_code == 3 and "Traceback" not in r.output
    data = json.loads(r.stdout)
    assert data["exit_code"] == 3 and data["stopped"] is True and data["output"] == str(out)
    assert data["error"]["type"] == "EndpointUnreachableError" and "unreachable" in data["error"]["message"]
    assert "unreachable" in r.stderr  # the one-line error still goes to stderr


def test_a_cascade_for_policies_the_run_does_not_judge_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --cascade C -p P` where C binds none of P changed nothing, silently: now a notice."""
    from cotmod import AsyncModerator
    from cotmod.backends._openai import ChatRequest
    from cotmod.cli import _moderate
    from cotmod.testing import FakeBackend, answer_for

    def good(req: ChatRequest) -> Any:
        return answer_for({"messages": req.messages, "response_format": {"type": "json_schema", "json_schema": {"schema": req.schema}}})

    fake = FakeBackend(default=good)
    monkeypatch.setattr(_moderate, "_make_moderator", lambda settings, cache=None: AsyncModerator(settings.guidelines, settings=settings, cache=cache, backend=fake))
    cascade = tmp_path / "cascade.yaml"
    cascade.write_text("cascade:\n  spam_scams:\n    label: spam\n    allow_below: 0.2\n    action_at: 0.9\n")
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "hello", "score_spam": 0.5}\n')
    base = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--no-cache", "--cascade", str(cascade)]
    r = CliRunner().invoke(cli, ["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "-p", "hate_speech", *base])
    assert r.exit_code == 0, r.output
    assert f"the cascade {cascade} binds spam_scams, none of which this run judges (hate_speech): it changes nothing" in r.stderr
    r = CliRunner().invoke(cli, ["run", str(inp), "-o", str(tmp_path / "o2.jsonl"), "-p", "spam_scams", *base])
    assert r.exit_code == 0 and "changes nothing" not in r.stderr
