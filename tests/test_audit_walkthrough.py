"""Fixes from a new user's walkthrough of `cotmod audit`: outputs that were silently overwritten
or appended to the wrong file, control-sample membership taken on trust from the labels file,
label files without labels, partial audits exported or run with exit 0, out-of-range scores."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from cotmod.cli._app import EXIT_OK, EXIT_UNDECIDED, EXIT_USAGE
from cotmod.testing import FakeOpenAIServer

from .test_audit_cli import decisions, invoke, plan, run


@pytest.fixture
def audited(tmp_path: Path) -> tuple[Path, Path]:
    """A plan and its complete audit."""
    p = plan(tmp_path)
    out = tmp_path / "audit.jsonl"
    with FakeOpenAIServer() as srv:
        r = run(srv, p, out)
    assert r.exit_code == EXIT_OK, r.output
    return p, out


def labelled_task(tmp_path: Path, p: Path, out: Path, *extra: str, control_column: bool = True) -> Path:
    task = tmp_path / "task.csv"
    r = invoke("audit", "export", str(p), str(out), "-o", str(task), "--control", "20", "--overwrite", *extra)
    assert r.exit_code == EXIT_OK, r.output
    with task.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for x in rows:
        x["label"] = "violates" if x["text"].startswith("VIOLATE") else "safe"
    labelled = tmp_path / "labelled.csv"
    fields = list(rows[0]) if control_column else ["id", "label"]
    with labelled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return labelled


# 1. --history / --append-golden only append to files of their kind, after repairing a torn line


def test_history_refuses_a_file_that_is_not_a_history_and_repairs_a_torn_line(audited: tuple[Path, Path], tmp_path: Path) -> None:
    p, out = audited
    for target in (out, p):
        before = target.read_bytes()
        r = invoke("audit", "report", str(p), str(out), "--history", str(target))
        assert r.exit_code == EXIT_USAGE, r.output
        assert f"{target}:1: " in r.output and "not an audit history" in r.output and "Traceback" not in r.output
        assert target.read_bytes() == before
    hist = tmp_path / "h.jsonl"
    assert invoke("audit", "report", str(p), str(out), "--history", str(hist)).exit_code == EXIT_OK
    good = hist.read_bytes()
    hist.write_bytes(good + good[: len(good) // 2])  # a second append cut short (Ctrl-C)
    r = invoke("audit", "report", str(p), str(out), "--history", str(hist))
    assert r.exit_code == EXIT_OK, r.output
    lines = hist.read_text().splitlines()
    assert len(lines) == 2 and lines[0].encode() + b"\n" == good and all(json.loads(x)["policies"] for x in lines)
    assert invoke("audit", "history", str(hist)).exit_code == EXIT_OK


def test_append_golden_refuses_a_file_of_verdicts_and_repairs_a_torn_line(audited: tuple[Path, Path], tmp_path: Path) -> None:
    p, out = audited
    labelled = labelled_task(tmp_path, p, out)
    before = out.read_bytes()
    r = invoke("audit", "report", str(p), str(out), "--labels", str(labelled), "--append-golden", str(out))
    assert r.exit_code == EXIT_USAGE and f"{out}:1: " in r.output and "not a golden set" in r.output, r.output
    assert out.read_bytes() == before
    hist = tmp_path / "h.jsonl"
    r = invoke("audit", "report", str(p), str(out), "--labels", str(labelled), "--append-golden", str(p), "--history", str(hist))
    assert r.exit_code == EXIT_USAGE and "not a golden set" in r.output, r.output
    assert not hist.exists()  # refused before anything was written
    gold = tmp_path / "gold.jsonl"
    row = {"id": "other-1", "text": "an older golden row", "labels": {"spam_scams": 0}}
    gold.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "other-2"})[:20])  # torn second row
    r = invoke("audit", "report", str(p), str(out), "--labels", str(labelled), "--append-golden", str(gold))
    assert r.exit_code == EXIT_OK, r.output
    rows = [json.loads(x) for x in gold.read_text().splitlines()]
    assert rows[0] == row and all("provenance" in x for x in rows[1:]) and len(rows) > 1


# 2. audit plan refuses to replace a plan; audit report says the plan changed since the audit


def test_plan_refuses_an_existing_plan_and_report_says_the_plan_changed(audited: tuple[Path, Path], tmp_path: Path) -> None:
    p, out = audited
    before = p.read_bytes()
    args = ("audit", "plan", str(tmp_path / "dec.jsonl"), "-o", str(p), "--size", "60", "--strata", "language")
    r = invoke(*args)
    assert r.exit_code == EXIT_USAGE and f"{p} exists" in r.output and "--overwrite" in r.output, r.output
    assert p.read_bytes() == before
    assert invoke("audit", "report", str(p), str(out)).exit_code == EXIT_OK
    assert "--overwrite" in invoke("audit", "plan", "--help").output
    r = invoke(*args, "--overwrite")
    assert r.exit_code == EXIT_OK, r.output
    r = invoke("audit", "report", str(p), str(out))
    assert r.exit_code == EXIT_USAGE and "changed since the audit" in r.output, r.output
    old, new = hashlib.sha256(before).hexdigest()[:12], hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    assert old in r.output and new in r.output and old != new


# 3. audit export refuses to replace a (perhaps labelled) task file


def test_export_refuses_an_existing_task_file(audited: tuple[Path, Path], tmp_path: Path) -> None:
    p, out = audited
    task = tmp_path / "task.csv"
    task.write_text("task_id,id,label\nx,y,violates\n")
    r = invoke("audit", "export", str(p), str(out), "-o", str(task))
    assert r.exit_code == EXIT_USAGE and f"{task} exists" in r.output and "--overwrite" in r.output, r.output
    assert task.read_text() == "task_id,id,label\nx,y,violates\n"
    assert invoke("audit", "export", str(p), str(out), "-o", str(task), "--overwrite").exit_code == EXIT_OK
    assert "violates" not in task.read_text().splitlines()[0]


# 4. control membership comes from the plan; a control column that disagrees is an error


def test_control_membership_comes_from_the_plan(audited: tuple[Path, Path], tmp_path: Path) -> None:
    p, out = audited
    # id,label only: the control sample is the plan's (--control as exported), so PPI is the headline
    bare = labelled_task(tmp_path, p, out, control_column=False)
    r = invoke("audit", "report", str(p), str(out), "--labels", str(bare), "--control", "20", "--json")
    assert r.exit_code == EXIT_OK, r.output
    pol = json.loads(r.stdout)["policies"][0]
    assert pol["headline"] == "ppi" and pol["control_labels"] == 20
    assert "20 in the control sample" in invoke("audit", "labels", str(p), str(bare), "--control", "20").output
    # without --control, the export default is assumed, and said so
    r = invoke("audit", "labels", str(p), str(bare))
    assert r.exit_code == EXIT_OK and "no 'control' column" in r.output and "--control N" in r.output, r.output
    # a labeller marks a disagreement row as control
    labelled = labelled_task(tmp_path, p, out)
    with labelled.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    i = next(k for k, x in enumerate(rows) if x["control"] == "0")
    rows[i]["control"] = "1"
    with labelled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for cmd in (("labels", str(p), str(labelled)), ("report", str(p), str(out), "--labels", str(labelled))):
        r = invoke("audit", *cmd)
        assert r.exit_code == EXIT_USAGE, r.output
        assert "field 'control'" in r.output and "control sample" in r.output and "Traceback" not in r.output
    # with the size given, the line of the wrongly marked row is named
    r = invoke("audit", "labels", str(p), str(labelled), "--control", "20")
    assert r.exit_code == EXIT_USAGE and f"labelled.csv:{i + 2}: field 'control': {rows[i]['id']!r} is marked" in r.output, r.output


# 5. a labels file without labels


def test_labels_file_without_labels(audited: tuple[Path, Path], tmp_path: Path) -> None:
    p, out = audited
    some = json.loads(p.read_text().splitlines()[1])["id"]
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text(f"id,policy\n{some},spam_scams\n")
    r = invoke("audit", "labels", str(p), str(nolabel))
    assert r.exit_code == EXIT_USAGE and "nolabel.csv: field 'label': missing" in r.output, r.output
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    task = tmp_path / "task.csv"
    assert invoke("audit", "export", str(p), str(out), "-o", str(task), "--control", "20").exit_code == EXIT_OK
    for f in (empty, task):
        r = invoke("audit", "labels", str(p), str(f))
        assert r.exit_code == EXIT_UNDECIDED and "no labels" in r.output and "Traceback" not in r.output, r.output


# 6. export of a partial audit warns and exits 1


def test_export_of_a_partial_audit_warns_and_exits_1(tmp_path: Path) -> None:
    p = plan(tmp_path)
    out = tmp_path / "audit.jsonl"
    with FakeOpenAIServer() as srv:
        assert run(srv, p, out, "--limit", "45").exit_code == EXIT_UNDECIDED
    task = tmp_path / "task.csv"
    r = invoke("audit", "export", str(p), str(out), "-o", str(task))
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert "warning: 15 sampled item-policy pair(s) without an auditor decision" in r.output
    assert task.read_text().startswith("task_id,")  # the task is still written


# 7. scores outside [0, 1]


def test_plan_refuses_a_score_outside_0_1(tmp_path: Path) -> None:
    f = tmp_path / "dec.csv"
    f.write_text("id,text,decision_spam_scams,score_spam_scams\na,x,1,0.9\nb,y,0,2\n")
    r = invoke("audit", "plan", str(f), "-o", str(tmp_path / "p.jsonl"), "--size", "2")
    assert r.exit_code == EXIT_USAGE and "dec.csv:3: field 'score_spam_scams': score '2' is not a number from 0 to 1" in r.output, r.output
    assert not (tmp_path / "p.jsonl").exists()


# 9, 10. help text and a strata field no row has


def test_plan_help_and_a_strata_field_no_row_has(tmp_path: Path) -> None:
    h = invoke("audit", "plan", "--help").output
    assert "95% CI" in h and "%%" not in h
    r = invoke("audit", "plan", str(decisions(tmp_path / "dec.jsonl")), "-o", str(tmp_path / "p.jsonl"), "--size", "60", "--strata", "langauge")
    assert r.exit_code == EXIT_OK, r.output
    assert "warning: --strata langauge: no row of" in r.output
    r = invoke("audit", "plan", str(tmp_path / "dec.jsonl"), "-o", str(tmp_path / "q.jsonl"), "--size", "60", "--strata", "language")
    assert "warning" not in r.output
