"""Dynamic prompts: per item, the boundary examples most similar to it (issue 11, part 5)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cotmod import Moderator, load_policies
from cotmod.cli import cli
from cotmod.prompting import Compiler
from cotmod.testing import FakeBackend, decision

from .conftest import GUIDELINES

HATE = ["hate_speech"]


def comp(k: int, **kw: object) -> Compiler:
    return Compiler(load_policies([GUIDELINES]).select(HATE), dynamic_examples=k, **kw)  # type: ignore[arg-type]


def test_nearest_examples_follow_the_cached_system_message() -> None:
    c = comp(3)
    text = "No landlord should rent to Muslims, they should be kept out of housing."
    p = c.compile(text)
    examples = load_policies([GUIDELINES])["hate_speech"].examples
    chosen = c.nearest_examples(text)
    assert len(chosen) == 3 and chosen == sorted(chosen)
    assert any("Muslims" in examples[i].text for i in chosen)  # the most similar one is there
    # both sides of the boundary are shown
    assert {examples[i].decision for i in chosen} == {"violates", "safe"}
    # messages: the static system message, the chosen example turns, the item
    assert p.messages[0] == c.prefix_messages[0] and len(c.prefix_messages) == 1
    shown = [json.loads(m["content"]) for m in p.messages[2:-1:2]]
    assert len(p.messages) == 1 + 2 * 3 + 1 and len(shown) == 3
    assert [examples[i].text in p.messages[1 + 2 * j]["content"] for j, i in enumerate(chosen)] == [True] * 3


def test_fewer_prompt_tokens_and_its_own_fingerprint() -> None:
    static, dyn = comp(0), comp(3)
    text = "Fans of the other club are idiots."
    assert dyn.compile(text).prompt_tokens < static.compile(text).prompt_tokens
    assert dyn.fingerprint != static.fingerprint != comp(2).fingerprint
    assert dyn.fingerprint == comp(3).fingerprint  # stable across compilers and items


def test_selection_is_deterministic_and_falls_back_to_order_without_overlap() -> None:
    c = comp(2)
    assert c.nearest_examples("zzzz qqqq") == c.nearest_examples("zzzz qqqq")
    # nothing in common with any example: the first example of each decision
    examples = load_policies([GUIDELINES])["hate_speech"].examples
    first_v = next(i for i, e in enumerate(examples) if e.decision == "violates")
    first_s = next(i for i, e in enumerate(examples) if e.decision == "safe")
    assert c.nearest_examples("zzzz qqqq") == sorted([first_v, first_s])


def test_more_than_there_are_shows_them_all_and_combined_prompts_have_none() -> None:
    n = len(load_policies([GUIDELINES])["hate_speech"].examples)
    assert len(comp(50).nearest_examples("anything")) == n
    both = Compiler(load_policies([GUIDELINES]).select(["hate_speech", "spam_scams"]), dynamic_examples=3)
    assert both.dynamic_examples == 0 and len(both.compile("hi").messages) == 2


def test_decision_logic_examples_are_chosen_the_same_way() -> None:
    c = comp(3, decision_logic=True)
    p = c.compile("Women should not be allowed to vote.")
    answers = [json.loads(m["content"]) for m in p.messages[2:-1:2]]
    assert len(answers) == 3 and all("answers" in a for a in answers)


def test_moderator_and_cli_use_the_setting() -> None:
    fake = FakeBackend(default=decision({"hate_speech": []}))
    with Moderator(GUIDELINES, backend=fake, dynamic_examples=2) as m:
        m.moderate("hello", policies=HATE)
    assert len(fake.history[0].messages) == 1 + 4 + 1
    r = CliRunner().invoke(cli, ["render", "-p", "hate_speech", "--dynamic-examples", "2", "--json", "some text"])
    assert r.exit_code == 0, r.output
    rendered = json.loads(r.stdout)
    msgs = rendered[0]["messages"] if isinstance(rendered, list) else rendered["prompts"][0]["messages"]
    assert len(msgs) == 1 + 4 + 1
