"""End-to-end: the real embedded model (SmolLM2-135M by default, for speed) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

from cotmod import Moderator
from cotmod.backends._local import ensure_local_server, model_path

from .conftest import e2e_model

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_url() -> str:
    name = e2e_model()
    if not model_path(name).is_file():
        pytest.fail(f"the e2e model is not installed; run: cotmod models pull {name}")
    return ensure_local_server(name)


def test_cli_moderate_json_validates_against_schema(local_url: str) -> None:
    env = {**os.environ, "COTMOD_BASE_URL": local_url, "COTMOD_MODEL": e2e_model()}
    out = subprocess.run(
        [sys.executable, "-m", "cotmod", "moderate", "-p", "spam_scams", "--json",
         "Congratulations! You won a prize, text WIN to 80086"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    verdict = json.loads(out.stdout)
    schema = json.loads(subprocess.run([sys.executable, "-m", "cotmod", "schema", "verdict"], capture_output=True, text=True, check=True).stdout)
    jsonschema.validate(verdict, schema)
    assert verdict["model"] and verdict["usage"]["prompt_tokens"] > 500
    assert verdict["policy_versions"] == {"spam_scams": "1.1.0"}
    if verdict["status"] == "ok":
        assert verdict["reasoning"] and verdict["decisions"][0]["policy_id"] == "spam_scams"
    else:  # a tiny model may fail validation; then it is an explicit error with the raw output
        assert verdict["violates"] is None and verdict["error"]["raw_output"]


def test_library_against_embedded_server_started_on_demand(monkeypatch: pytest.MonkeyPatch, local_url: str) -> None:
    # no base_url: the library starts (or reuses) the embedded server itself
    with Moderator(local_model=e2e_model(), max_reasks=1) as mod:
        # spam_scams: its prompt prefix is already in the shared server's cache (a cold ~3k-token
        # prefill costs ~30 s of this 2-core machine)
        v = mod.moderate("How do I kill a Python process?", policies=["spam_scams"])
    assert v.model and v.prompt_fingerprint == mod.fingerprint(["spam_scams"])
    assert v.usage.total_tokens > 0 and v.latency_ms > 0
    assert v.status in ("ok", "error")
    if v.status == "error":
        assert v.error is not None and v.error.raw_output is not None


def test_self_consistency_votes_against_the_real_server(local_url: str) -> None:
    from cotmod import Settings

    # sampled at temperature 0.7 with seeds 0, 1, 2 on the real llama.cpp server
    # one at a time: the votes then share the slot's cached prompt prefix (this test runs before
    # the impact test, whose edited spam_scams prompt would take that slot's cache)
    settings = Settings(base_url=local_url, model=e2e_model(), votes=3, max_reasks=1, concurrency=1, timeout=600)
    with Moderator(settings=settings) as mod:
        v = mod.moderate("WIN a free iPhone!!! Click bit.ly/x now and enter your card number", policies=["spam_scams"])
    assert v.attempts >= 3 and v.usage.completion_tokens > 0
    if v.status == "ok":
        d = v.decision("spam_scams")
        assert d.score_source == "votes" and d.votes is not None and 1 <= sum(d.votes) <= 3
        assert d.score == pytest.approx(d.votes[0] / sum(d.votes))
        assert d.violates == (2 * d.votes[0] >= sum(d.votes))
    else:  # every vote invalid (a tiny model): an explicit error, never a silent decision
        assert v.violates is None and v.error is not None


def test_impact_with_the_real_local_model_recomputes_only_the_changed_policy(tmp_path, policy_dir, local_url: str) -> None:
    from cotmod import load_policies
    from cotmod._config import Settings
    from cotmod.engine._cache import MemoryCache
    from cotmod.governance._impact import impact

    gold = tmp_path / "gold.jsonl"
    rows = [("Win a free prize now, text WIN to 80086", 1), ("See you at lunch tomorrow", 0)]
    gold.write_text("".join(json.dumps({"id": f"g{i}", "text": t, "labels": {"bad": y}}) + "\n" for i, (t, y) in enumerate(rows)))
    mapping = tmp_path / "mapping.yaml"
    # regulated_goods: the shortest starter prompt (the unchanged policy's prefill is paid once)
    mapping.write_text("labels:\n  bad: {policies: [spam_scams, regulated_goods]}\n")
    old = load_policies([policy_dir])
    f = policy_dir / "spam_scams.yaml"
    text = f.read_text()
    assert "\ntitle: " in text
    f.write_text(text.replace("version: 1.1.0", "version: 1.1.1", 1).replace("\ntitle: ", "\ntitle: Revised ", 1))
    new = load_policies([policy_dir])
    settings = Settings(base_url=local_url, model=e2e_model(), max_reasks=0, concurrency=2)
    res = impact(old, new, settings=settings, cache=MemoryCache(), golden=gold, mapping=mapping, work_dir=tmp_path / "imp")
    assert res["changed_policies"] == ["spam_scams"]
    calls = res["golden"]["model_calls"]
    assert calls["old"] == 4 and calls["new"] == 2  # regulated_goods decisions came from the cache
    assert "bad" in res["golden"]["comparison"]["labels"]


def test_real_server_grammar_cannot_emit_an_inconsistent_decision(local_url: str) -> None:
    """llama.cpp compiles the request schema (anyOf per decision) to a grammar: asked to copy a
    decision that says violates with no rule cited, it can only produce a consistent one."""
    import openai

    from cotmod import Compiler, load_policies
    from cotmod._config import default_guidelines_dir

    comp = Compiler(load_policies([default_guidelines_dir()]).select(["spam_scams"]))
    client = openai.OpenAI(base_url=local_url, api_key="x", timeout=300)
    for rules, violates in (([], True), (["SCAM-1"], False)):
        bad = {"reasoning": ["No rule is met.", "Decision: VIOLATES."], "decisions": {"spam_scams": {
            "rationale": "r", "rule_ids": rules, "exception_ids": [], "violates": violates, "confidence": 0.9}}}
        resp = client.chat.completions.create(
            model=e2e_model(),
            messages=[{"role": "system", "content": "Repeat the user's JSON exactly."}, {"role": "user", "content": json.dumps(bad)}],
            temperature=0,
            max_tokens=300,
            response_format={"type": "json_schema", "json_schema": {"name": "decision", "schema": comp.request_schema, "strict": True}},
        )
        out = json.loads(resp.choices[0].message.content or "")
        jsonschema.validate(out, comp.request_schema)
        dec = out["decisions"]["spam_scams"]
        assert dec["violates"] == bool(dec["rule_ids"]), dec


@pytest.fixture(scope="module")
def wide_local_url() -> str:
    """A local server with more slots than cores (the cold-start report: -c 7 on 2 cores)."""
    name = e2e_model()
    if not model_path(name).is_file():
        pytest.fail(f"the e2e model is not installed; run: cotmod models pull {name}")
    # threads=2 makes it a server of its own, not the 2-slot one of local_url
    return ensure_local_server(name, threads=2, n_parallel=4)


def test_cold_start_with_concurrency_needs_no_transport_retries(wide_local_url: str) -> None:
    """With prefix warm-up, the first request per policy group computes its ~4k-token prefix
    alone, then the group ramps up one more request per answer (slow start), so about one slot
    per group prefills at a time while warm slots answer; no request times out and is
    cancelled/retried (it did: every slot prefilled the same prefix at once, past the 120 s
    timeout, and with warm-up alone 3 followers launched at once and a warm-slot request starved
    behind 2 cold prefills). The model is named, not a path."""
    from cotmod import Settings

    settings = Settings(base_url=wide_local_url, model=e2e_model(), concurrency=4, max_reasks=0, max_tokens=256)
    # two items x two policy groups: all four requests are ready at once on a 4-slot server,
    # which without warm-up meant four cold ~4k-token prefills side by side (two items keep the
    # test at about a minute; four took two)
    texts = ["Congratulations! You won a prize, text WIN to 80086", "I will find where you live and hurt you"]
    with Moderator(settings=settings) as mod:
        verdicts = list(mod.moderate_stream(texts, policies=["spam_scams", "violent_threats"], concurrency=4))
    assert sorted(v.item_id for v in verdicts) == ["0", "1"]
    assert sum(v.transport_retries for v in verdicts) == 0, [v.transport_retries for v in verdicts]
    # the followers reused the warmed prefix (without warm-up all four prefilled it side by side
    # and none was cached: 0 of ~16k prompt tokens, twice as slow, measured)
    cached = sum(v.usage.cached_prompt_tokens for v in verdicts)
    assert cached * 3 >= sum(v.usage.prompt_tokens for v in verdicts), [v.usage for v in verdicts]
    assert all(v.attempts == 2 for v in verdicts)  # one call per policy, none repeated
    assert {v.model for v in verdicts} == {e2e_model()}  # llama.cpp reports the GGUF path; never recorded


def test_real_server_grammar_ties_each_quote_to_its_answer(local_url: str) -> None:
    """Decision logic: asked to copy answers whose quotes contradict them (a "protected group"
    with no quote, "nothing" with one), llama.cpp's grammar for the request schema can only
    return answers whose quote is empty exactly when the answer needs none."""
    import openai

    from cotmod import Compiler, load_policies
    from cotmod._config import default_guidelines_dir

    policies = load_policies([default_guidelines_dir()])
    comp = Compiler(policies.select(["hate_speech"]), decision_logic=True)
    hate = policies["hate_speech"]
    client = openai.OpenAI(base_url=local_url, api_key="x", timeout=300)
    bad = {"answers": {"target": {"quote": "", "answer": "protected_group"},
                       "attack": {"quote": "vermin", "answer": "no_attack"},
                       "voice": {"quote": "", "answer": "own_view"}},
           "rationale": "r", "confidence": 0.9}
    resp = client.chat.completions.create(
        model=e2e_model(),
        messages=[{"role": "system", "content": "Repeat the user's JSON exactly."}, {"role": "user", "content": json.dumps(bad)}],
        temperature=0,
        max_tokens=300,
        response_format={"type": "json_schema", "json_schema": {"name": "answers", "schema": comp.request_schema, "strict": True}},
    )
    out = json.loads(resp.choices[0].message.content or "")
    jsonschema.validate(out, comp.request_schema)
    for q in hate.questions:
        a = out["answers"][q.id]
        assert bool(a["quote"]) == q.option(a["answer"]).evidence, (q.id, a)
    # the plain (validation) schema would have let the contradictory copy through
    jsonschema.validate(bad, comp.schema)
