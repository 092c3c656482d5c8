"""Triage's reach in the eval harness: which policies triage sent each item to, against the gold.

A scripted backend answers each item's triage call with chosen P(yes) per policy (as token
log-probabilities) and judges the selected policies by marker words, so every figure (harmful
items sent to their own policy, benign items sent to none, the per-label reach and the same
figures at other thresholds) is known by construction.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotmod import AsyncModerator, ConfigError, Settings
from cotmod.backends._openai import ChatRequest, ChatResult
from cotmod.evals import (
    compute_metrics,
    html_report,
    load_result,
    run_eval,
    text_table,
    tune,
    write_metrics,
    write_thresholds,
)
from cotmod.testing import FakeBackend, item_content

from .test_triage import _yes_no_logprobs, is_triage, judge

VT, HB, HS = "violent_threats", "harassment_bullying", "hate_speech"

MAPPING = """\
name: multi
labels:
  threat: {policies: [violent_threats]}
  insult: {policies: [harassment_bullying]}
  identity_hate: {policies: [hate_speech]}
"""


def _lab(threat: int = 0, insult: int = 0, hate: int = 0) -> dict[str, int]:
    return {"threat": threat, "insult": insult, "identity_hate": hate}


# text -> (labels, P(yes) per policy as triage answers it); "BROKEN" triage output stays invalid
ROWS: dict[str, tuple[dict[str, int], dict[str, float]]] = {
    "threat one": (_lab(threat=1), {HS: 0.001, HB: 0.1, VT: 0.9}),  # reached at 0.3
    "insult one": (_lab(insult=1), {HS: 0.001, HB: 0.2, VT: 0.6}),  # missed at 0.3 (VT only), reached at 0.2
    "insult two": (_lab(insult=1), {HS: 0.01, HB: 0.04, VT: 0.02}),  # nothing until threshold 0
    "hate one": (_lab(hate=1), {HS: 0.95, HB: 0.5, VT: 0.4}),  # the two most likely: HS, HB
    "calm one": (_lab(), {HS: 0.001, HB: 0.002, VT: 0.001}),  # benign, nothing selected
    "calm two": (_lab(), {HS: 0.001, HB: 0.4, VT: 0.002}),  # benign, HB selected at 0.3
    "BROKEN insult": (_lab(insult=1), {HS: 0.5, HB: 0.5, VT: 0.5}),  # triage falls back: every policy judged
}


def backend() -> FakeBackend:
    def respond(req: ChatRequest) -> Any:
        if not is_triage(req):
            return judge(req)
        text = item_content({"messages": req.messages[:2]})  # the item, whatever re-asks follow it
        if "BROKEN" in text:
            return "not json"
        probs = next(p for t, (_, p) in ROWS.items() if t in text)
        assert req.schema is not None
        ids = list(req.schema["properties"]["at_stake"]["properties"])
        probs = {pid: probs[pid] for pid in ids}
        out = json.dumps({"summary": "a post", "at_stake": {p: "yes" if v >= 0.5 else "no" for p, v in probs.items()}})
        return ChatResult(out, "stop", model="fake-model", logprobs=_yes_no_logprobs(probs))

    return FakeBackend(default=respond)


def make_run(tmp_path: Path, name: str = "run", **settings: Any) -> Path:
    g = tmp_path / "gold.jsonl"
    if not g.exists():
        g.write_text("".join(json.dumps({"id": f"g{i}", "text": t, "labels": lab}) + "\n" for i, (t, (lab, _)) in enumerate(ROWS.items())))
        (tmp_path / "mapping.yaml").write_text(MAPPING)
    kw: dict[str, Any] = {"triage": True, "logprobs": True, "triage_threshold": 0.3, "decision_logic": False, **settings}
    mod = AsyncModerator(backend=backend(), settings=Settings(**kw))
    run_eval(mod, g, tmp_path / "mapping.yaml", tmp_path / name)
    return tmp_path / name


def test_triage_reach_known_by_construction(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["triage"] == {"max_policies": 2, "threshold": 0.3, "min_policies": 0}
    t = compute_metrics(run, bootstrap_rounds=200).triage
    assert t is not None
    assert (t.ran, t.fallbacks, t.harmful, t.benign) == (6, 1, 4, 2)
    assert (t.max_policies, t.threshold, t.settings_recorded) == (2, 0.3, True)
    # threat one and hate one reached their own policy; insult one (VT only) and insult two (nothing) did not
    assert (t.own_policy_reached, t.missed, t.own_policy_reached_share) == (2, 2, 0.5)
    assert (t.benign_none, t.benign_none_share) == (1, 0.5)
    assert t.selected_per_item == pytest.approx(5 / 6)
    assert t.own_policy_reached_ci95 is not None and t.own_policy_reached_ci95[0] <= 0.5 <= t.own_policy_reached_ci95[1]
    assert {lab: (e.reached, e.positives) for lab, e in t.per_label.items()} == {
        "threat": (1, 1), "insult": (0, 2), "identity_hate": (1, 1)
    }
    sweep = {p.threshold: (p.own_policy_reached, p.benign_none, p.selected_per_item) for p in t.sweep}
    assert sweep[0.3] == (0.5, 0.5, pytest.approx(5 / 6))  # the recorded selection, recomputed
    assert sweep[0.5] == (0.5, 1.0, pytest.approx(4 / 6))
    assert sweep[0.2] == (0.75, 0.5, pytest.approx(1.0))
    assert sweep[0.0] == (1.0, 0.0, pytest.approx(2.0))  # always the two most likely


def test_triage_min_is_recorded_and_the_sweep_applies_it(tmp_path: Path) -> None:
    """With triage_min = 1 no decided item goes without a policy call (benign_none 0 at every
    threshold), and the sweep re-applies the floor as the engine would."""
    run = make_run(tmp_path, triage_min=1)
    assert json.loads((run / "manifest.json").read_text())["triage"]["min_policies"] == 1
    t = compute_metrics(run, bootstrap_rounds=0).triage
    assert t is not None and t.min_policies == 1
    assert t.benign_none == 0 and all(p.benign_none == 0.0 for p in t.sweep)
    base = compute_metrics(make_run(tmp_path, "base"), bootstrap_rounds=0).triage
    assert base is not None and t.own_policy_reached >= base.own_policy_reached
    assert "at most 2 policies, at least 1 (the most likely), selected by P(yes) >= 0.3" in text_table(
        compute_metrics(run, bootstrap_rounds=0)
    )


def test_terminal_and_html_show_triage_reach(tmp_path: Path) -> None:
    result = compute_metrics(make_run(tmp_path), bootstrap_rounds=0)
    table = text_table(result)
    assert "triage: 6 decided items triaged (1 fell back to judging every policy, left out); at most 2 policies, selected by P(yes) >= 0.3" in table
    assert "harmful items sent to one of their own policies: 2/4 = 50.0%; 2 never judged under their own policy" in table
    assert "benign items sent to no policy call: 1/2 = 50.0%; policies selected per item 0.83" in table
    assert "per label (own policy selected): threat 1/1, insult 0/2, identity_hate 1/1" in table
    assert re.search(r"\n    0\.2 +75\.0% +50\.0% +1\.00\n", table)
    page = html_report(result)
    assert "Triage: which policies got their call" in page
    assert "data-metric='triage.own_policy_reached_share'>50.0%" in page
    assert "data-metric='triage.insult.reached'>0<" in page
    assert re.search(r"<tr class=here><td>0.3</td><td data-metric='triage.sweep.0.3.own'>50.0%", page)
    # saved and reloaded with the rest of the metrics
    write_metrics(result)
    assert load_result(result.run).triage == result.triage


def test_without_logprobs_the_words_decide_and_there_is_no_sweep(tmp_path: Path) -> None:
    t = compute_metrics(make_run(tmp_path, logprobs=False), bootstrap_rounds=0).triage
    assert t is not None and t.threshold is None and t.sweep == []
    # the sampled words: "yes" where P(yes) >= 0.5 (threat one VT, insult one VT, hate one HS and HB)
    assert (t.own_policy_reached, t.benign_none) == (2, 2)
    assert "selected by the sampled yes/no" in text_table(compute_metrics(tmp_path / "run", bootstrap_rounds=0))


def test_no_triage_no_section(tmp_path: Path) -> None:
    result = compute_metrics(make_run(tmp_path, triage=False), bootstrap_rounds=0)
    assert result.triage is None
    assert "triage:" not in text_table(result) and "Triage:" not in html_report(result)
    assert "triage" not in json.loads((tmp_path / "run" / "manifest.json").read_text())


def test_a_run_made_before_the_settings_were_recorded(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    del m["triage"]
    (run / "manifest.json").write_text(json.dumps(m))
    t = compute_metrics(run, bootstrap_rounds=0).triage
    assert t is not None and not t.settings_recorded and t.threshold is None
    assert t.max_policies == 2  # the most any item had selected
    assert "its threshold is not recorded" in text_table(compute_metrics(run, bootstrap_rounds=0))


def test_resuming_at_another_triage_threshold_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "verdicts.jsonl").write_text("".join((run / "verdicts.jsonl").read_text().splitlines(keepends=True)[:3]))
    # with logprobs the threshold is part of the triage prompt's fingerprint
    with pytest.raises(ConfigError, match="prompt_fingerprint"):
        make_run(tmp_path, triage_threshold=0.1)
    assert json.loads((run / "manifest.json").read_text())["triage"]["threshold"] == 0.3  # left describing the verdicts
    make_run(tmp_path)  # the same settings resume
    assert compute_metrics(run, bootstrap_rounds=0).triage.ran == 6  # type: ignore[union-attr]


def test_compare_pairs_triage_reach(tmp_path: Path) -> None:
    """0.3 against 0.2 on the same items: insult one's own policy (harassment_bullying, P(yes)
    0.2) is reached only at 0.2; the fallback item is left out of the pairing."""
    from click.testing import CliRunner

    from cotmod.cli import cli
    from cotmod.evals import compare_runs

    a = make_run(tmp_path, "a", triage_threshold=0.3)
    b = make_run(tmp_path, "b", triage_threshold=0.2)
    for run in (a, b):
        write_metrics(compute_metrics(run, bootstrap_rounds=200))
    c = compare_runs(a, b)
    t = c.triage
    assert t is not None and (t.n_paired, t.harmful, t.benign) == (6, 4, 2)
    reached = t.metrics["own_policy_reached_share"]
    assert (reached.a, reached.b) == (0.5, 0.75) and reached.delta == pytest.approx(0.25)
    assert t.metrics["benign_none_share"].delta == 0.0
    per_item = t.metrics["selected_per_item"]
    assert (per_item.a, per_item.b) == (pytest.approx(5 / 6), pytest.approx(1.0))
    insult_one = next(i for i, text in enumerate(ROWS) if text == "insult one")
    assert t.reached_b_only == [f"g{insult_one}"] and t.reached_a_only == []
    # the CLI: the block, and a --fail-on rule on triage's reach (exit 1 when met)
    res = CliRunner().invoke(cli, ["compare", str(b), str(a), "--fail-on", "triage_own_policy_reached drop > 10"])
    assert res.exit_code == 1, res.output
    assert "triage reach (n=6 triaged in both: 4 harmful, 2 benign)" in res.output
    assert "own_policy_reached_share 0.750 -> 0.500  delta -0.250" in res.output
    assert f"own policy reached by A only: 1 (g{insult_one})" in res.output
    assert "REGRESSION" in res.output and "triage_own_policy_reached_share" in res.output
    res = CliRunner().invoke(cli, ["compare", str(a), str(b), "--fail-on", "triage_own_policy_reached drop > 10", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["triage"]["metrics"]["own_policy_reached_share"]["delta"] == pytest.approx(0.25)


def test_compare_without_triage_has_no_triage_block(tmp_path: Path) -> None:
    from cotmod.evals import compare_runs

    a = make_run(tmp_path, "a", triage=False)
    b = make_run(tmp_path, "b", triage_threshold=0.2)
    for run in (a, b):
        write_metrics(compute_metrics(run, bootstrap_rounds=0))
    assert compare_runs(a, b, fail_on=["triage_benign_none drop > 1"]).triage is None


def test_triage_blend_is_recorded_and_moves_only_the_scores(tmp_path: Path) -> None:
    """An eval with ``triage_blend`` records its weight (a resume without it is refused by the run
    store) and its predictions carry the blended scores: a policy triaged out scores half its
    P(yes) instead of 0, while what was flagged stays the same."""
    base = compute_metrics(make_run(tmp_path), bootstrap_rounds=0)
    run = make_run(tmp_path, "blend", triage_blend=0.5)
    assert json.loads((run / "manifest.json").read_text())["triage_blend"] == 0.5
    blend = compute_metrics(run, bootstrap_rounds=0)
    b0 = {p.id: p for p in base.predictions["insult"]}
    b1 = {p.id: p for p in blend.predictions["insult"]}
    assert b0["g1"].score == 0.0 and b1["g1"].score == pytest.approx(0.1)  # insult one: HB triaged out at P(yes) 0.2
    assert b0["g2"].score == 0.0 and b1["g2"].score == pytest.approx(0.02)  # insult two: 0.04
    assert b1["g6"].score == b0["g6"].score  # triage fell back: no P(yes), the policy call's own score
    assert [p.pred for p in blend.predictions["insult"]] == [p.pred for p in base.predictions["insult"]]
    with pytest.raises(ConfigError, match="triage_blend"):
        make_run(tmp_path, "blend")


def test_tune_records_the_blend_and_a_run_with_another_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thresholds tuned on blended scores say so; applying them to scores blended otherwise (or
    not at all) gets a warning, and matching ones none. A file tuned on unblended scores has no
    such key (as before the option existed)."""
    blended = tmp_path / "blended.yaml"
    write_thresholds(tune(compute_metrics(make_run(tmp_path, "b", triage_blend=0.5), bootstrap_rounds=0), cost_fp=1, cost_fn=1), blended)
    plain = tmp_path / "plain.yaml"
    write_thresholds(tune(compute_metrics(make_run(tmp_path, "p"), bootstrap_rounds=0), cost_fp=1, cost_fn=1), plain)
    assert yaml.safe_load(blended.read_text())["triage_blend"] == 0.5
    assert "triage_blend" not in yaml.safe_load(plain.read_text())
    monkeypatch.chdir(tmp_path)

    def warned(path: Path, **kw: Any) -> bool:
        notices = Settings.resolve(None, thresholds=str(path), triage=True, logprobs=True, **kw).notices
        return any("was tuned on scores with triage_blend" in n for n in notices)

    assert not warned(blended, triage_blend=0.5)
    assert warned(blended) and warned(blended, triage_blend=0.3)
    assert not warned(plain) and warned(plain, triage_blend=0.5)
    # without logprobs the blend has no effect: the scores are unblended, whatever the setting
    notices = Settings.resolve(None, thresholds=str(blended), triage=True, triage_blend=0.5).notices
    assert any("scores with triage_blend 0:" in n for n in notices)
