"""Attribution figures of the eval harness: which policy was blamed, across labels.

A multi-label golden set goes through a scripted server that flags policy P when the item holds
P's marker word, so every figure (the gold-category × flagged-policy matrix, per-policy
attribution precision and recall, per-label recall, policies blamed per harmful item, the share
of benign items with no flag) is known by construction.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cotmod import AsyncModerator
from cotmod.cli import cli
from cotmod.cli._app import EXIT_UNDECIDED
from cotmod.evals import (
    EvalResult,
    compare,
    compare_runs,
    compute_metrics,
    html_report,
    load_result,
    paired_ratio_delta,
    parse_fail_on,
    run_eval,
    text_table,
    write_metrics,
)
from cotmod.testing import FakeOpenAIServer, body_schema, decision, offered_rule_ids

from .conftest import ROOT

VT, HB, HS = "violent_threats", "harassment_bullying", "hate_speech"
MARKERS = {VT: "THREAT", HB: "INSULT", HS: "HATE"}

MAPPING = """\
name: multi
labels:
  threat: {policies: [violent_threats]}
  insult: {policies: [harassment_bullying]}
  identity_hate: {policies: [hate_speech]}
  unsafe: {policies: [violent_threats, harassment_bullying, hate_speech]}
"""


def _lab(threat: int | None = 0, insult: int | None = 0, hate: int | None = 0) -> dict[str, int | None]:
    harmful = 1 in (threat, insult, hate)
    return {"threat": threat, "insult": insult, "identity_hate": hate, "unsafe": 1 if harmful else 0}


# (text, labels): the policies flagged are those whose marker is in the text; BROKEN: an error verdict
ROWS: list[tuple[str, dict[str, int | None]]] = [
    ("THREAT you will pay", _lab(threat=1)),  # g0 harmful {VT}, flagged VT
    ("INSULT you fool", _lab(insult=1)),  # g1 {HB}, flagged HB
    ("INSULT HATE both", _lab(insult=1, hate=1)),  # g2 {HB, HS}, flagged HB HS
    ("HATE ALONE, gold says insult", _lab(insult=1)),  # g3 {HB}, flagged HS: the wrong policy
    ("subtle threat, no marker", _lab(threat=1)),  # g4 {VT}, no flag
    ("calm words", _lab()),  # g5 benign, no flag
    ("INSULT QUOTED to condemn it", _lab()),  # g6 benign, flagged HB
    ("nice weather", _lab()),  # g7 benign, no flag
    ("THREAT INSULT HATE all at once", _lab(insult=1)),  # g8 {HB}, flagged VT HB HS
    ("BROKEN insult", _lab(insult=1)),  # g9 harmful: error verdict
    ("BROKEN calm", _lab()),  # g10 benign: error verdict
    ("THREAT INSULT", {"threat": 1, "insult": None, "identity_hate": 0, "unsafe": 1}),  # g11 {VT}; HB unverifiable
]


def server(ignore: dict[str, str] | None = None) -> FakeOpenAIServer:
    """Flags P when the item holds MARKERS[P], unless it also holds ``ignore[P]``."""
    ignore = ignore or {}

    def handler(body: dict[str, Any]) -> Any:
        if any("BROKEN" in str(msg["content"]) for msg in body["messages"]):
            return "not a decision"  # re-asks fail too: an error verdict
        text = body["messages"][-1]["content"]
        schema = body_schema(body)
        pids = list(schema["properties"]["decisions"]["properties"])
        cited = {
            pid: [offered_rule_ids(schema, pid)[0]]
            if MARKERS[pid] in text and not (pid in ignore and ignore[pid] in text)
            else []
            for pid in pids
        }
        return decision(cited, confidence=0.8)

    return FakeOpenAIServer(handler=handler)


def make_run(tmp_path: Path, name: str, ignore: dict[str, str] | None = None) -> Path:
    g = tmp_path / "gold.jsonl"
    if not g.exists():
        g.write_text("".join(json.dumps({"id": f"g{i}", "text": t, "labels": lab}) + "\n" for i, (t, lab) in enumerate(ROWS)))
        (tmp_path / "mapping.yaml").write_text(MAPPING)
    run = tmp_path / name
    with server(ignore) as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="m"), g, tmp_path / "mapping.yaml", run)
    return run


@pytest.fixture
def run_a(tmp_path: Path) -> Path:
    return make_run(tmp_path, "a")


def test_attribution_figures_known_by_construction(run_a: Path) -> None:
    result = compute_metrics(run_a, bootstrap_rounds=200)
    a = result.attribution
    assert a is not None
    assert a.policies == [VT, HB, HS]
    assert a.label_policies["unsafe"] == [VT, HB, HS]
    # error verdicts are neither a flag nor a non-flag: left out and counted apart
    assert (a.decided, a.harmful, a.benign) == (10, 7, 3)
    assert (a.errors, a.errors_harmful, a.errors_benign, a.missing) == (2, 1, 1, 0)
    assert {r.id for r in result.item_flags} == {f"g{i}" for i in range(12)} - {"g9", "g10"}
    assert result.errors == 2

    assert (a.benign_no_flag, a.benign_no_flag_share) == (2, pytest.approx(2 / 3))
    assert (a.harmful_flagged, a.harmful_flagged_share) == (6, pytest.approx(6 / 7))
    assert a.own_policy_share == pytest.approx(5 / 7)  # g3 (wrong policy) and g4 (no flag) miss
    assert a.blamed_per_harmful == pytest.approx(10 / 7)
    assert a.blamed_distribution == {"0": 1, "1": 3, "2": 2, "3+": 1}
    for ci, value in ((a.benign_no_flag_ci95, 2 / 3), (a.own_policy_ci95, 5 / 7), (a.blamed_per_harmful_ci95, 10 / 7)):
        assert ci is not None and ci[0] <= value <= ci[1]

    per_policy = {pid: b.model_dump(exclude={"precision_ci95"}) for pid, b in a.per_policy.items()}
    assert per_policy == {
        # g0, g11 correct; g8 is an insult (the catch-all unsafe does not make a threat flag right)
        VT: {"flagged": 3, "correct": 2, "benign": 0, "other_harm": 1, "unverifiable": 0,
             "precision": pytest.approx(2 / 3), "expected": 3, "recall": pytest.approx(2 / 3)},
        # g1, g2, g8 correct; g6 benign; g11 a threat whose insult label is unknown
        HB: {"flagged": 5, "correct": 3, "benign": 1, "other_harm": 1, "unverifiable": 1,
             "precision": pytest.approx(3 / 5), "expected": 4, "recall": pytest.approx(3 / 4)},
        # g2 correct; g3 and g8 are insults
        HS: {"flagged": 3, "correct": 1, "benign": 0, "other_harm": 2, "unverifiable": 0,
             "precision": pytest.approx(1 / 3), "expected": 1, "recall": 1.0},
    }
    per_label = {lab: e.model_dump(exclude={"recall_ci95"}) for lab, e in a.per_label.items()}
    assert per_label == {
        "threat": {"positives": 3, "own_policy": 2, "other_policy_only": 0, "no_flag": 1, "recall": pytest.approx(2 / 3)},
        "insult": {"positives": 4, "own_policy": 3, "other_policy_only": 1, "no_flag": 0, "recall": pytest.approx(3 / 4)},
        "identity_hate": {"positives": 1, "own_policy": 1, "other_policy_only": 0, "no_flag": 0, "recall": 1.0},
        "unsafe": {"positives": 7, "own_policy": 6, "other_policy_only": 0, "no_flag": 1, "recall": pytest.approx(6 / 7)},
    }
    matrix = {row: (r.items, r.no_flag, r.flagged_by) for row, r in a.matrix.items()}
    assert matrix == {
        "threat": (3, 1, {VT: 2, HB: 1, HS: 0}),
        "insult": (4, 0, {VT: 1, HB: 3, HS: 3}),
        "identity_hate": (1, 0, {VT: 0, HB: 1, HS: 1}),
        "unsafe": (7, 1, {VT: 3, HB: 4, HS: 3}),
        "benign": (3, 2, {VT: 0, HB: 1, HS: 0}),
    }
    # the per-label figures are unchanged by attribution (error verdicts excluded there too)
    assert result.labels["insult"].errors == 2 and result.labels["insult"].n == 9  # g11: insult unknown


def test_metrics_json_keeps_old_keys_and_round_trips(run_a: Path) -> None:
    result = compute_metrics(run_a, bootstrap_rounds=50)
    write_metrics(result)
    data = json.loads((run_a / "metrics.json").read_text())
    for key in ("run", "manifest", "thresholds", "labels", "micro", "macro", "predictions", "items", "errors", "missing"):
        assert key in data
    assert data["attribution"]["matrix"]["benign"]["flagged_by"] == {VT: 0, HB: 1, HS: 0}
    assert data["item_flags"][0] == {"id": "g0", "kind": "harmful", "gold": ["threat", "unsafe"], "own": [VT], "flagged": [VT], "triaged": None}
    assert load_result(run_a) == result
    # --json leaves the per-item records in metrics.json, like the predictions
    r = CliRunner().invoke(cli, ["report", str(run_a), "--json"])
    assert r.exit_code == EXIT_UNDECIDED, r.output  # the run has 2 error verdicts
    shown = json.loads(r.stdout)
    assert "item_flags" not in shown and "predictions" not in shown
    assert shown["attribution"]["blamed_distribution"] == {"0": 1, "1": 3, "2": 2, "3+": 1}


def test_thresholds_decide_attribution_flags(run_a: Path) -> None:
    # a review threshold above every score: harassment_bullying never flags
    a = compute_metrics(run_a, thresholds={HB: {"review": 0.99}}, bootstrap_rounds=0).attribution
    assert a is not None
    assert a.per_policy[HB].flagged == 0 and a.benign_no_flag == 3 and a.benign_no_flag_ci95 is None
    assert a.matrix["insult"].flagged_by == {VT: 1, HB: 0, HS: 3}


def test_terminal_and_html_show_attribution(run_a: Path) -> None:
    result = compute_metrics(run_a, bootstrap_rounds=100)
    table = text_table(result)
    assert "attribution: 3 policies in play; 10 decided items (7 harmful, 3 benign); 2 error verdicts left out (1 harmful, 1 benign)" in table
    assert "benign with no flag: 2/3 = 66.7%" in table
    assert "policies blamed per item 1.43" in table and "(0: 1, 1: 3, 2: 2, 3+: 1)" in table
    assert "    insult (4): harassment_bullying 3, hate_speech 3, violent_threats 1; no flag 0" in table
    assert "    benign (3): harassment_bullying 1; no flag 2" in table

    page = html_report(result)
    assert "Gold category × flagged policy" in page
    matrix = result.attribution.matrix  # type: ignore[union-attr]
    for row, r in matrix.items():
        for pid, n in r.flagged_by.items():
            cell = re.search(rf"data-cell='{row}\|{pid}'[^>]*>(\d+)<", page)
            assert cell is not None and int(cell.group(1)) == n, (row, pid)
        cell = re.search(rf"data-cell='{row}\|no flag'>(\d+)<", page)
        assert cell is not None and int(cell.group(1)) == r.no_flag
    # own-policy cells green, benign flags red, another label's policy amber
    assert "class='good' data-cell='insult|harassment_bullying'" in page
    assert "class='bad' data-cell='benign|harassment_bullying'" in page
    assert "class='warn' data-cell='insult|hate_speech'" in page
    assert re.search(r"data-metric='attribution.benign_no_flag_share'>66.7%", page)
    assert "2 error verdicts</b> are left out" in page


def test_single_policy_runs_keep_their_short_report(tmp_path: Path) -> None:
    g = tmp_path / "g.jsonl"
    g.write_text("".join(json.dumps({"id": f"h{i}", "text": t, "labels": {"hateful": y}}) + "\n" for i, (t, y) in enumerate([("HATE x", 1), ("calm", 0), ("HATE quote", 0)])))
    (tmp_path / "m.yaml").write_text("name: one\nlabels:\n  hateful: {policies: [hate_speech]}\n")
    with server() as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="m"), g, tmp_path / "m.yaml", tmp_path / "run")
    result = compute_metrics(tmp_path / "run", bootstrap_rounds=0)
    assert result.attribution is not None and result.attribution.benign_no_flag == 1
    assert "attribution:" not in text_table(result) and "Gold category" not in html_report(result)


def test_compare_reports_attribution_deltas(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a")
    # B: no insult flag on a quotation (g6 becomes clean), no hate flag on g3
    b = make_run(tmp_path, "b", ignore={HB: "QUOTED", HS: "ALONE"})
    for run in (a, b):
        write_metrics(compute_metrics(run, bootstrap_rounds=0))
    cmp = compare_runs(a, b, rounds=200)
    at = cmp.attribution
    assert at is not None and (at.n_paired, at.harmful, at.benign) == (10, 7, 3)
    m = at.metrics
    assert (m["benign_no_flag_share"].a, m["benign_no_flag_share"].b) == (pytest.approx(2 / 3), 1.0)
    assert m["benign_no_flag_share"].delta == pytest.approx(1 / 3)
    assert m["blamed_per_harmful"].delta == pytest.approx(-1 / 7)
    assert m["harmful_flagged_share"].delta == pytest.approx(-1 / 7)
    assert m["own_policy_share"].delta == 0
    ci = m["benign_no_flag_share"].ci95
    assert ci is not None and ci[0] <= 1 / 3 <= ci[1]
    pp = at.per_policy_precision
    assert (pp[HS].a, pp[HS].b) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert (pp[HB].a, pp[HB].b) == (pytest.approx(3 / 5), pytest.approx(3 / 4))
    assert pp[VT].delta == 0

    r = CliRunner().invoke(cli, ["compare", str(a), str(b)])
    # both runs have 2 error verdicts: shown on the 10 items both decided, and not a pass
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert "2 of 12 items not decided (2 error verdicts" in r.stderr
    assert "attribution (n=10: 7 harmful, 3 benign)" in r.output
    assert re.search(r"benign_no_flag_share\s+0\.667 -> 1\.000  delta \+0\.333 \[", r.output)
    assert re.search(r"blamed_per_harmful\s+1\.429 -> 1\.286  delta -0\.143", r.output)
    assert "hate_speech 0.333 -> 0.500" in r.output
    shown = json.loads(CliRunner().invoke(cli, ["compare", str(a), str(b), "--json"]).stdout)
    assert shown["attribution"]["metrics"]["benign_no_flag_share"]["delta"] == pytest.approx(1 / 3)
    # an attribution regression rule: B -> A loses a third of the benign items' clean passes
    r = CliRunner().invoke(cli, ["compare", str(b), str(a), "--fail-on", "benign_no_flag drop > 2"])
    assert r.exit_code == EXIT_UNDECIDED and "REGRESSION attribution: benign_no_flag_share drop 33.3 points > 2.0" in r.output
    passing = compare(load_result(a), load_result(b), fail_on=["benign_no_flag drop > 2", "own_policy_share drop > 0"])
    assert not passing.regressions and not passing.unmeasured and not passing.ok  # not ok: error verdicts


def test_fail_on_grammar_and_paired_ratio_delta() -> None:
    assert parse_fail_on("benign_no_flag_share drop > 1.5") == ("benign_no_flag", "drop", 1.5)
    assert parse_fail_on("precision drop > 2") == ("precision", "drop", 2.0)
    with pytest.raises(Exception, match="benign_no_flag"):
        parse_fail_on("blamed drop > 2")
    d = paired_ratio_delta([1, 0, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], rounds=100)
    assert d is not None and (d.a, d.b, d.delta) == (pytest.approx(2 / 3), 1.0, pytest.approx(1 / 3))
    assert d.ci95 is not None and d.ci95[0] >= 0
    assert paired_ratio_delta([0], [0], [0], [0]) is None


def test_old_run_directories_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run written before attribution existed: recomputed with it, and its old metrics.json loads."""
    name = "quality-qwen1.5b-v1.2"
    shutil.copytree(ROOT / "benchmarks" / "results" / name, tmp_path / "benchmarks" / "results" / name)
    monkeypatch.chdir(tmp_path)  # the manifest names the golden set relative to the repository
    run = Path("benchmarks/results") / name / "run"
    stored = json.loads((run / "metrics.json").read_text())
    assert "attribution" not in stored
    old = load_result(run)
    assert old.attribution is None and old.item_flags == []
    fresh = compute_metrics(run, bootstrap_rounds=200)
    assert isinstance(fresh, EvalResult)
    dumped = fresh.model_dump(mode="json")
    for label, e in stored["labels"].items():
        for key, value in e.items():
            assert dumped["labels"][label][key] == value, (label, key)
    a = fresh.attribution
    assert a is not None and a.decided == 200 - a.errors and a.policies[0] == "hate_speech"
    assert a.harmful + a.benign == a.decided
    assert sum(a.blamed_distribution.values()) == a.harmful
    assert sum(r.items for row, r in a.matrix.items() if row == "benign") == a.benign
    # an old metrics.json against a new one: the label comparison works, attribution is left out
    assert compare(old, fresh, rounds=50).attribution is None
    r = CliRunner().invoke(cli, ["report", str(run)])
    assert r.exit_code == 0 and "attribution: 6 policies in play" in r.output
