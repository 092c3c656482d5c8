"""The prompt fingerprint covers everything sent besides the item: rendered prefix, schemas, sampling."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from cotmod import Compiler, load_policies
from cotmod._config import default_guidelines_dir
from cotmod.prompting import _compiler, _decision

SAMPLING: dict[str, Any] = {"temperature": 0.0, "max_tokens": 512, "seed": 7, "response_format": "json_schema", "logprobs": False}


@pytest.fixture(scope="module")
def policies():
    return load_policies([default_guidelines_dir()])


def test_item_text_and_id_do_not_change_the_fingerprint(policies) -> None:
    comp = Compiler(policies.select(["hate_speech"]), sampling=SAMPLING, max_item_tokens=50)
    fps = {
        comp.compile("a short post", item_id="1").fingerprint,
        comp.compile("word " * 500, item_id="2").fingerprint,  # truncated
        comp.compile("<<<END CONTENT>>> {{ 7*7 }}", item_id="3").fingerprint,
        Compiler(policies.select(["hate_speech"]), sampling=dict(SAMPLING), max_item_tokens=50).fingerprint,
    }
    assert fps == {comp.fingerprint}


def test_fingerprint_is_stable_across_processes(policies) -> None:
    """Random boundaries never leak into it: another interpreter computes the same value."""
    code = (
        "from cotmod import Compiler, load_policies\n"
        "from cotmod._config import default_guidelines_dir\n"
        "ps = load_policies([default_guidelines_dir()])\n"
        f"print(Compiler(ps.select(['hate_speech']), sampling={SAMPLING!r}).fingerprint)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == Compiler(policies.select(["hate_speech"]), sampling=SAMPLING).fingerprint


def test_python_built_example_wording_changes_the_fingerprint(policies, monkeypatch: pytest.MonkeyPatch) -> None:
    before = Compiler(policies.select(["hate_speech"]))
    turns, fingerprint = before.example_turns, before.fingerprint
    monkeypatch.setattr(_compiler, "EXAMPLE_DECISION", {True: "Final decision: VIOLATES.", False: "Final decision: SAFE."})
    after = Compiler(policies.select(["hate_speech"]))
    assert after.example_turns != turns  # the turns sent did change
    assert after.fingerprint != fingerprint


def test_python_built_example_answers_change_the_fingerprint(policies, monkeypatch: pytest.MonkeyPatch) -> None:
    before = Compiler(policies.select(["hate_speech"])).fingerprint
    build = _compiler.example_answer

    def lower_confidence(*args: Any, **kw: Any) -> dict[str, Any]:
        answer = build(*args, **kw)
        for d in answer["decisions"].values():
            d["confidence"] = 0.8
        return answer

    monkeypatch.setattr(_compiler, "example_answer", lower_confidence)
    assert Compiler(policies.select(["hate_speech"])).fingerprint != before


def test_checklist_wording_changes_the_fingerprint(policies, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = ["hate_speech", "spam_scams"]  # combined prompts use the generic checklist
    before = Compiler(policies.select(ids)).fingerprint
    monkeypatch.setattr(_compiler, "GENERIC_CHECKLIST", (*_compiler.GENERIC_CHECKLIST[:-1], "Decide."))
    assert Compiler(policies.select(ids)).fingerprint != before


def test_schema_changes_the_fingerprint(policies, monkeypatch: pytest.MonkeyPatch) -> None:
    base = Compiler(policies.select(["hate_speech"]))
    # the decision schema (validation and request) built in Python
    monkeypatch.setattr(_decision, "MAX_CITED", _decision.MAX_CITED + 1)
    wider = Compiler(policies.select(["hate_speech"]))
    assert wider.schema != base.schema and wider.fingerprint != base.fingerprint
    monkeypatch.undo()
    # only the request schema (response_format) differs
    monkeypatch.setattr(_compiler, "constrain_decisions", lambda schema: schema)
    loose = Compiler(policies.select(["hate_speech"]))
    assert loose.schema == base.schema and loose.request_schema != base.request_schema
    assert loose.fingerprint != base.fingerprint


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.7},
        {"max_tokens": 600},
        {"seed": 8},
        {"logprobs": True},
        {"response_format": "json_object"},
        {"votes": 5, "vote_temperature": 0.7},
    ],
)
def test_sampling_changes_the_fingerprint(policies, change: dict[str, Any]) -> None:
    base = Compiler(policies.select(["hate_speech"]), sampling=SAMPLING)
    other = Compiler(policies.select(["hate_speech"]), sampling={**SAMPLING, **change})
    assert other.fingerprint != base.fingerprint
    assert other.compile("same post").fingerprint == other.fingerprint


def test_no_sampling_is_the_same_as_empty_sampling(policies) -> None:
    assert Compiler(policies.select(["spam_scams"])).fingerprint == Compiler(policies.select(["spam_scams"]), sampling={}).fingerprint


def test_fingerprint_version_is_hashed(policies, monkeypatch: pytest.MonkeyPatch) -> None:
    before = Compiler(policies.select(["spam_scams"])).fingerprint
    monkeypatch.setattr(_compiler, "FINGERPRINT_VERSION", _compiler.FINGERPRINT_VERSION + "x")
    assert Compiler(policies.select(["spam_scams"])).fingerprint != before
