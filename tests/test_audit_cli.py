"""`cotmod audit` end to end with a fake auditor: plan, run (resumable; refuses another plan's
output and other policy versions), report (terminal, JSON, HTML, history), export, labels,
golden set; and bad input, each one clear line naming file, line and field."""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cotmod.cli import cli
from cotmod.cli._app import EXIT_OK, EXIT_UNDECIDED, EXIT_USAGE
from cotmod.testing import FakeOpenAIServer

from .conftest import GUIDELINES, VERSIONS


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def decisions(path: Path, n: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            bad = rng.random() < 0.25
            flag = bad if rng.random() < 0.85 else not bad
            f.write(json.dumps({
                "id": f"i{i}", "text": ("VIOLATE " if bad else "hello ") + str(i), "decision_spam_scams": int(flag),
                "score_spam_scams": round(rng.random() * 0.5 + (0.5 if flag else 0), 3), "language": rng.choice(["en", "de"]),
            }) + "\n")
    return path


def plan(tmp: Path, *extra: str) -> Path:
    out = tmp / "plan.jsonl"
    r = invoke("audit", "plan", str(decisions(tmp / "dec.jsonl")), "-o", str(out), "--size", "60", "--strata", "language", *extra)
    assert r.exit_code == EXIT_OK, r.output
    return out


def run(srv: FakeOpenAIServer, plan_path: Path, out: Path, *extra: str) -> Result:
    return invoke("audit", "run", str(plan_path), "-o", str(out), "--base-url", srv.base_url, "--model", "m", "--no-cache", *extra)


def test_plan_run_report_export_labels_golden_history(tmp_path: Path) -> None:
    p = plan(tmp_path)
    head = json.loads(p.read_text().splitlines()[0])["audit_plan"]
    assert head["policies"] == {"spam_scams": VERSIONS["spam_scams"]} and head["seed"] == 0 and len(head["decisions_sha256"]) == 64
    items = [json.loads(x) for x in p.read_text().splitlines()[1:]]
    assert len(items) == 60
    for it in items:
        d = it["design"]["spam_scams"]
        assert d["pi"] == pytest.approx(d["n_h"] / d["N_h"]) and 0 < d["pi"] <= 1
    # the same inputs and seed give the same sample
    again = tmp_path / "again.jsonl"
    assert invoke("audit", "plan", str(tmp_path / "dec.jsonl"), "-o", str(again), "--size", "60", "--strata", "language").exit_code == 0
    assert [json.loads(x)["id"] for x in again.read_text().splitlines()[1:]] == [it["id"] for it in items]

    out = tmp_path / "audit.jsonl"
    with FakeOpenAIServer() as srv:
        r = run(srv, p, out, "--limit", "20")
        # --limit left items without an auditor verdict: exit 1, saying a rerun resumes
        assert r.exit_code == EXIT_UNDECIDED and "40 sampled item(s) not run yet (--limit left them; rerun to resume)" in r.output, r.output
        # resumable: the rest only
        r = run(srv, p, out, "--json")
        assert r.exit_code == EXIT_OK, r.output
        summary = json.loads(r.stdout)
        assert summary["resumed_skipped"] == 20 and summary["processed"] == 40
    assert len(out.read_text().splitlines()) == 60

    html = tmp_path / "a.html"
    hist = tmp_path / "h.jsonl"
    r = invoke("audit", "report", str(p), str(out), "--json", "--html", str(html), "--history", str(hist))
    assert r.exit_code == EXIT_OK, r.output
    rep = json.loads(r.stdout)
    pol = rep["policies"][0]
    assert pol["audited"] == 60 and pol["auditor_errors"] == 0
    est = pol["estimates"]["auditor"]
    for k in ("precision", "recall", "prevalence"):
        assert est[k]["low"] <= est[k]["value"] <= est[k]["high"]
    # the fake auditor flags exactly the VIOLATE texts: every disagreement is a production error
    for dg in pol["disagreements"]:
        assert dg["auditor_violates"] == dg["text"].startswith("VIOLATE") != dg["production_flagged"]
    assert set(pol["by_field"]["language"]) == {"de", "en"}
    page = html.read_text()
    assert "<script" not in page and "<svg" in page and "spam_scams" in page

    task = tmp_path / "task.csv"
    r = invoke("audit", "export", str(p), str(out), "-o", str(task), "--control", "20")
    assert r.exit_code == EXIT_OK, r.output
    with task.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(int(x["control"]) for x in rows) == 20
    assert {x["queue"] for x in rows} <= {"disagreement", "control"}
    assert all(x["policy_version"] == VERSIONS["spam_scams"] and "guide" in x["guide"] for x in rows)
    for x in rows:
        x["label"] = "violates" if x["text"].startswith("VIOLATE") else "safe"
    labelled = tmp_path / "labelled.csv"
    with labelled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    gold = tmp_path / "gold.jsonl"
    r = invoke("audit", "report", str(p), str(out), "--labels", str(labelled), "--json", "--history", str(hist), "--append-golden", str(gold))
    assert r.exit_code == EXIT_OK, r.output
    pol = json.loads(r.stdout)["policies"][0]
    assert pol["headline"] == "ppi" and pol["control_labels"] == 20
    assert pol["auditor_vs_human"]["value"] == 1.0
    g = [json.loads(x) for x in gold.read_text().splitlines()]
    assert len(g) == len(rows) and all(x["provenance"]["plan_sha256"] and x["labels"]["spam_scams"] in (0, 1) for x in g)
    # the golden set loads with a mapping whose labels are the policy ids
    from cotmod.evals import load_golden
    from cotmod.evals._golden import LabelMapping

    assert len(load_golden(gold, LabelMapping("audit", {"spam_scams": ["spam_scams"]}))) == len(g)
    r = invoke("audit", "history", str(hist))
    assert r.exit_code == EXIT_OK and r.output.count(VERSIONS["spam_scams"]) == 2 and "ppi" in r.output
    # times to the second in UTC (they were cut at 25 characters, mid-microseconds)
    assert re.search(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\b", r.output) and "+00:00" not in r.output
    # Label Studio import JSON
    ls = tmp_path / "task.json"
    assert invoke("audit", "export", str(p), str(out), "-o", str(ls)).exit_code == EXIT_OK
    assert all("data" in t for t in json.loads(ls.read_text()))


def test_audit_of_cotmod_verdicts_needs_the_texts(tmp_path: Path) -> None:
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps({"id": f"p{i}", "text": ("VIOLATE " if i % 3 == 0 else "hi ") + str(i)}) + "\n" for i in range(30)))
    verdicts = tmp_path / "v.jsonl"
    with FakeOpenAIServer() as srv:
        r = invoke("run", str(posts), "-o", str(verdicts), "--base-url", srv.base_url, "--model", "m", "-p", "spam_scams", "--no-cache")
        assert r.exit_code == EXIT_OK, r.output
    r = invoke("audit", "plan", str(verdicts), "-o", str(tmp_path / "plan.jsonl"), "--size", "10")
    assert r.exit_code == EXIT_USAGE and "has no text to audit" in r.output and "--items" in r.output
    r = invoke("audit", "plan", str(verdicts), "--items", str(posts), "-o", str(tmp_path / "plan.jsonl"), "--size", "10")
    assert r.exit_code == EXIT_OK, r.output


def test_run_refuses_another_plans_output_and_other_policy_versions(tmp_path: Path) -> None:
    p = plan(tmp_path)
    out = tmp_path / "audit.jsonl"
    with FakeOpenAIServer() as srv:
        assert run(srv, p, out).exit_code == EXIT_OK
        other = tmp_path / "other.jsonl"
        assert invoke("audit", "plan", str(tmp_path / "dec.jsonl"), "-o", str(other), "--size", "60", "--seed", "7").exit_code == 0
        r = run(srv, other, out)
        assert r.exit_code == EXIT_USAGE and "another plan" in r.output and "Traceback" not in r.output
        r = invoke("audit", "report", str(other), str(out))
        assert r.exit_code == EXIT_USAGE and "another plan" in r.output
        # a policy edited since the plan was made
        g = tmp_path / "g"
        shutil.copytree(GUIDELINES, g)
        f = g / "spam_scams.yaml"
        f.write_text(f.read_text().replace(f"\nversion: {VERSIONS['spam_scams']}\n", "\nversion: 9.9.9\n"))
        r = run(srv, p, tmp_path / "new.jsonl", "--guidelines", str(g))
        assert r.exit_code == EXIT_USAGE and "9.9.9" in r.output and "new plan" in r.output


def test_auditor_errors_are_counted_not_dropped(tmp_path: Path) -> None:
    p = plan(tmp_path)
    out = tmp_path / "audit.jsonl"

    def handler(body: dict[str, Any]) -> Any:
        from cotmod.testing import answer_for

        return "not json" if "hello 1" in json.dumps(body) else answer_for(body)

    with FakeOpenAIServer(handler=handler) as srv:
        r = run(srv, p, out)
    assert r.exit_code == EXIT_UNDECIDED
    r = invoke("audit", "report", str(p), str(out), "--json")
    assert r.exit_code == EXIT_UNDECIDED
    pol = json.loads(r.stdout)["policies"][0]
    assert pol["auditor_errors"] > 0 and pol["audited"] + pol["auditor_errors"] == pol["planned"]
    assert set(pol["auditor_error_ids"]) and all(i.startswith("i1") for i in pol["auditor_error_ids"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "x", "decision_spam_scams": 1}, "dec.jsonl:2: field 'id': missing"),
        ({"id": "b", "text": "x"}, "dec.jsonl:2: no decision"),
        ({"id": "b", "text": "x", "decision_nonsense": 1}, "dec.jsonl:2: field 'decision_nonsense': unknown policy 'nonsense'"),
        ({"id": "a", "text": "x", "decision_spam_scams": 1}, "dec.jsonl:2: field 'id': duplicate id 'a' (first on line 1)"),
        ({"id": "b", "text": "x", "decision_spam_scams": "maybe"}, "dec.jsonl:2: field 'decision_spam_scams': decision 'maybe'"),
        ({"id": "b", "text": "x", "score_spam_scams": 0.7}, "dec.jsonl:2: no decision"),
    ],
)
def test_bad_decisions_are_one_clear_line(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    f = tmp_path / "dec.jsonl"
    f.write_text(json.dumps({"id": "a", "text": "t", "decision_spam_scams": 0}) + "\n" + json.dumps(row) + "\n")
    r = invoke("audit", "plan", str(f), "-o", str(tmp_path / "p.jsonl"), "--size", "2")
    assert r.exit_code == EXIT_USAGE, r.output
    assert message in r.output and "Traceback" not in r.output


def test_classifier_scores_decide_with_a_threshold_and_label_map(tmp_path: Path) -> None:
    f = tmp_path / "scores.jsonl"
    f.write_text("".join(json.dumps({"id": f"s{i}", "text": f"t{i}", "scores": {"spam": i / 40}}) + "\n" for i in range(40)))
    out = tmp_path / "p.jsonl"
    r = invoke("audit", "plan", str(f), "-o", str(out), "--label-policy", "spam=spam_scams", "--threshold", "spam=0.5", "--size", "12", "--json")
    assert r.exit_code == EXIT_OK, r.output
    head = json.loads(out.read_text().splitlines()[0])["audit_plan"]
    assert head["population"]["spam_scams"] == {"N": 40, "flagged": 20}


def test_bad_labels_name_the_line_and_field(tmp_path: Path) -> None:
    p = plan(tmp_path)
    some = json.loads(p.read_text().splitlines()[1])["id"]
    cases = [
        ({"id": "nope", "policy": "spam_scams", "label": "safe"}, "field 'id': 'nope' is not in the audit sample"),
        ({"id": some, "policy": "spam_scams", "label": "perhaps"}, "field 'label': decision 'perhaps'"),
        ({"id": some, "policy": "hate_speech", "label": "safe"}, "field 'policy': 'hate_speech' is not audited"),
    ]
    for row, message in cases:
        f = tmp_path / "labels.jsonl"
        f.write_text(json.dumps(row) + "\n")
        r = invoke("audit", "labels", str(p), str(f))
        assert r.exit_code == EXIT_USAGE and f"labels.jsonl:1: {message}" in r.output, r.output


def test_label_files_from_windows_tools_and_odd_label_studio_shapes(tmp_path: Path) -> None:
    """A byte-order mark (Excel's "CSV UTF-8", Notepad) is skipped, not glued to the first column
    name; a Label Studio choice given as a string is that label, not its first letter; an export of
    the wrong shape names the task and field instead of an AttributeError traceback."""
    p = plan(tmp_path)
    some = json.loads(p.read_text().splitlines()[1])["id"]
    csv_file = tmp_path / "labels.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfid,policy,label\n" + f"{some},spam_scams,safe\n".encode())
    r = invoke("audit", "labels", str(p), str(csv_file))
    assert r.exit_code == EXIT_OK, r.output
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + (json.dumps({"id": some, "policy": "spam_scams", "label": "safe"}) + "\n").encode())
    assert invoke("audit", "labels", str(p), str(jsonl)).exit_code == EXIT_OK

    def ls_task(annotations: object) -> Path:
        f = tmp_path / "ls.json"
        f.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"data": {"id": some, "policy": "spam_scams"}, "annotations": annotations}]).encode())
        return f

    r = invoke("audit", "labels", str(p), str(ls_task([{"result": [{"value": {"choices": "perhaps"}}]}])))
    assert r.exit_code == EXIT_USAGE and "decision 'perhaps'" in r.output  # the whole string, not 'p'
    r = invoke("audit", "labels", str(p), str(ls_task([{"result": [{"value": {"choices": "safe"}}]}])))
    assert r.exit_code == EXIT_OK, r.output
    for bad, where in ((["x"], "annotations[0]"), ({"a": 1}, "'annotations' must be a list"),
                       ([{"result": ["x"]}], "annotations[0].result[0]"), ([{"result": [{"value": {"choices": 5}}]}], "value.choices")):
        r = invoke("audit", "labels", str(p), str(ls_task(bad)))
        assert r.exit_code == EXIT_USAGE and "task [0]" in r.output and where in r.output and "Traceback" not in r.output, r.output


def test_a_history_line_of_the_wrong_shape_names_the_line_and_field(tmp_path: Path) -> None:
    """audit history used to crash (KeyError 'at', AttributeError, a format error) on lines edited or
    written by hand; an unknown --policy printed nothing and exited 0."""
    good = {"at": "2026-11-27T10:00:00Z", "policies": {"spam_scams": {
        "version": "1.0.0", "truth": "auditor", "audited": 40, "precision": {"value": 0.9, "low": 0.8, "high": 0.95}}}}
    h = tmp_path / "h.jsonl"
    h.write_text(json.dumps(good) + "\n")
    r = invoke("audit", "history", str(h))
    assert r.exit_code == EXIT_OK and "0.900 [0.80, 0.95]" in r.output
    r = invoke("audit", "history", str(h), "-p", "nope")
    assert r.exit_code == EXIT_USAGE and "no audit of 'nope'" in r.output and "spam_scams" in r.output
    cases = [
        ({"policies": good["policies"]}, "field 'at'"),
        ({"at": "x", "policies": {"spam_scams": "x"}}, "field 'policies.spam_scams': expected an object"),
        ({"at": "x", "policies": {"spam_scams": {**good["policies"]["spam_scams"], "precision": {"value": "high"}}}},
         "field 'policies.spam_scams.precision.value': expected a number, got 'high'"),
        ({"at": "x", "policies": {"spam_scams": {**good["policies"]["spam_scams"], "audited": "40"}}}, "field 'policies.spam_scams.audited': expected a whole number"),
    ]
    for bad, message in cases:
        h.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        r = invoke("audit", "history", str(h))
        assert r.exit_code == EXIT_USAGE and f"h.jsonl:2: {message}" in r.output and "Traceback" not in r.output, r.output
