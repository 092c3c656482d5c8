"""Exit codes and warnings of eval / report / tune / compare on runs that are not fully decided,
thresholds that cannot be chosen, and refused evals (a new user's walkthrough).

House rule: a command whose items were not all decided does not exit 0, and quality claims
count the error verdicts; a refused eval leaves the run directory as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cotmod import AsyncModerator, AuthenticationError
from cotmod.cli import cli
from cotmod.cli._app import EXIT_UNDECIDED, EXIT_USAGE
from cotmod.evals import compute_metrics, run_eval, tune, write_metrics
from cotmod.testing import FakeBackend, FakeOpenAIServer, decision, item_content

# g0, g2, ... g8 harmful (the marker VIOLATE), g1, ... g9 benign
ROWS = [(f"VIOLATE post h{i // 2}", 1) if i % 2 == 0 else (f"calm post b{i // 2}", 0) for i in range(10)]


def make_golden(tmp_path: Path, rows: list[tuple[str, int]] = ROWS) -> tuple[Path, Path]:
    g = tmp_path / "gold.jsonl"
    g.write_text("".join(json.dumps({"id": f"g{i}", "text": t, "labels": {"hateful": y}}) + "\n" for i, (t, y) in enumerate(rows)))
    m = tmp_path / "mapping.yaml"
    m.write_text("name: tiny\nlabels:\n  hateful: {policies: [hate_speech]}\n")
    return g, m


def answer(broken: tuple[str, ...] = (), false_positive: str | None = None):
    """Flags the items with VIOLATE (and ``false_positive``); items holding a ``broken`` marker
    get no valid answer (error verdicts)."""

    def handler(req):
        if any(b in str(msg["content"]) for msg in req.messages for b in broken):
            return "not a decision"  # the re-asks too: an error verdict
        text = item_content(req)
        flag = "VIOLATE" in text or (false_positive is not None and false_positive in text)
        return decision({"hate_speech": ["HATE-1"] if flag else []})

    return handler


def make_run(tmp_path: Path, name: str, **kw) -> Path:
    g, m = make_golden(tmp_path)
    run = tmp_path / name
    run_eval(AsyncModerator(backend=FakeBackend(default=answer(**kw))), g, m, run)
    write_metrics(compute_metrics(run, bootstrap_rounds=50))
    return run


def killed_run(tmp_path: Path, name: str, after: int = 3) -> Path:
    """A run whose endpoint stopped answering after ``after`` items (concurrency 1): incomplete."""
    g, m = make_golden(tmp_path)
    run = tmp_path / name
    calls = 0

    def flaky(req):
        nonlocal calls
        calls += 1
        if calls > after:
            raise AuthenticationError("key revoked", status_code=401)
        return answer()(req)

    with pytest.raises(AuthenticationError):
        run_eval(AsyncModerator(backend=FakeBackend(default=flaky), concurrency=1), g, m, run)
    write_metrics(compute_metrics(run, bootstrap_rounds=50))
    return run


# -- finding 1: compare ------------------------------------------------------------------------


def test_compare_names_each_runs_undecided_items_and_does_not_pass(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a")
    e = make_run(tmp_path, "e", broken=("post h0", "post h1"))  # 2 harmful items get error verdicts
    r = CliRunner().invoke(cli, ["compare", str(a), str(e), "--fail-on", "recall drop > 5"])
    # on the 8 items both decided nothing moved, but B failed on 2 of 10: the gate does not pass
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert "REGRESSION" not in r.output and "paired on the 8 items both runs decided" in r.stdout
    assert f"B {e}: 2 of 10 items not decided (2 error verdicts, 0 not judged yet)" in r.stderr
    assert f"A {a}:" not in r.stderr and "Traceback" not in r.output
    data = json.loads(CliRunner().invoke(cli, ["compare", str(a), str(e), "--json"]).stdout)
    assert data["ok"] is False and data["n_paired"] == 8 and data["labels"]["hateful"]["n_paired"] == 8
    assert (data["b_coverage"]["errors"], data["b_coverage"]["missing"], data["b_coverage"]["undecided"]) == (2, 0, 2)
    assert data["a_coverage"]["undecided"] == 0 and data["a_coverage"]["decided_all"] is True
    # two fully decided runs still pass; a regression still exits 1
    r = CliRunner().invoke(cli, ["compare", str(a), str(a), "--fail-on", "recall drop > 5"])
    assert r.exit_code == 0 and not r.stderr, r.output
    worse = make_run(tmp_path, "worse", false_positive="post b0")
    r = CliRunner().invoke(cli, ["compare", str(a), str(worse), "--fail-on", "precision drop > 2"])
    assert r.exit_code == EXIT_UNDECIDED and "REGRESSION hateful: precision drop" in r.output


def test_compare_against_a_killed_run_says_so_and_does_not_pass(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a")
    k = killed_run(tmp_path, "k", after=3)
    r = CliRunner().invoke(cli, ["compare", str(k), str(a), "--fail-on", "recall drop > 5"])
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert f"A {k}: 7 of 10 items not decided (0 error verdicts, 7 not judged yet)" in r.stderr
    assert "paired on the 3 items both runs decided" in r.stdout and "hateful (n=3," in r.stdout


def test_compare_counts_undecided_items_of_old_metrics_files_from_the_run(tmp_path: Path) -> None:
    """metrics.json written before it counted items/errors/missing: compare counts them from the run's files."""
    a = make_run(tmp_path, "a")
    e = make_run(tmp_path, "e", broken=("post h0",))
    m = json.loads((e / "metrics.json").read_text())
    for key in ("items", "errors", "missing"):
        del m[key]
    (e / "metrics.json").write_text(json.dumps(m))
    r = CliRunner().invoke(cli, ["compare", str(a), str(e)])
    assert r.exit_code == EXIT_UNDECIDED and "1 of 10 items not decided (1 error verdicts" in r.stderr, r.output


# -- finding 2: report -------------------------------------------------------------------------


def test_report_exits_1_on_error_verdicts_and_on_an_incomplete_run(tmp_path: Path) -> None:
    e = make_run(tmp_path, "e", broken=("post h0",))
    r = CliRunner().invoke(cli, ["report", str(e)])
    assert r.exit_code == EXIT_UNDECIDED and "1 of 10 items not decided" in r.stderr, r.output
    assert (e / "report.html").exists() and "hateful" in r.stdout  # still written and printed
    k = killed_run(tmp_path, "k", after=4)
    r = CliRunner().invoke(cli, ["report", str(k), "--json"])
    assert r.exit_code == EXIT_UNDECIDED and json.loads(r.stdout)["missing"] == 6
    assert CliRunner().invoke(cli, ["report", str(make_run(tmp_path, "a"))]).exit_code == 0


# -- finding 3: tune on an incomplete run ------------------------------------------------------


def test_tune_on_an_incomplete_run_warns_and_exits_1(tmp_path: Path) -> None:
    k = killed_run(tmp_path, "k", after=4)  # g0..g3: two harmful, two benign
    out = tmp_path / "thr.yaml"
    r = CliRunner().invoke(cli, ["tune", str(k), "-o", str(out), "--target-precision", "0.5"])
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert f"warning: {k}: 6 of 10 items not decided (0 error verdicts, 6 not judged yet)" in r.stderr
    assert "the thresholds were chosen on the 4 decided items only" in r.stderr
    assert "hate_speech" in yaml.safe_load(out.read_text())["thresholds"]  # the file is still written
    r = CliRunner().invoke(cli, ["tune", str(make_run(tmp_path, "a")), "-o", str(out), "--target-precision", "0.5"])
    assert r.exit_code == 0 and not r.stderr, r.output


# -- finding 4: a label left without a threshold -----------------------------------------------


def test_tune_names_each_label_left_without_a_threshold_and_exits_1(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", false_positive="post b0")  # 5 of the 6 flagged are harmful: precision 0.833
    out = tmp_path / "thr.yaml"
    r = CliRunner().invoke(cli, ["tune", str(a), "-o", str(out), "--target-precision", "0.95"])
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert "hateful: no threshold reaches precision 0.95" in r.stdout
    assert f"{out}: label hateful has no threshold (no threshold reaches precision 0.95): the thresholds file leaves out hate_speech" in r.stderr
    assert yaml.safe_load(out.read_text())["thresholds"] == {}
    r = CliRunner().invoke(cli, ["tune", str(a), "-o", str(out), "--target-precision", "0.95", "--json"])
    assert r.exit_code == EXIT_UNDECIDED and json.loads(r.stdout)["evidence"]["hateful"]["reachable"] is False


# -- finding 5: a label with one class only ----------------------------------------------------


def test_one_class_label_is_warned_by_eval_and_gets_no_threshold_from_tune(tmp_path: Path) -> None:
    # a file sorted by label: --limit 3 takes three hateful items and no benign one
    rows = [(f"VIOLATE h{i}", 1) for i in range(4)] + [(f"calm b{i}", 0) for i in range(4)]
    g, m = make_golden(tmp_path, rows)
    run = tmp_path / "run"
    with FakeOpenAIServer() as srv:
        r = CliRunner().invoke(cli, ["eval", str(g), "-M", str(m), "-o", str(run), "--limit", "3", "--base-url", srv.base_url, "--model", "m"])
    assert r.exit_code == 0, r.output  # every item decided
    assert "warning: label hateful has no negative items (all 3 decided items are positive)" in r.stderr
    assert "--limit 3 took the first 3 items of the golden set in file order" in r.stderr
    out = tmp_path / "thr.yaml"
    r = CliRunner().invoke(cli, ["tune", str(run), "-o", str(out), "--target-precision", "0.9"])
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert "review >=" not in r.output and "hateful: no negative items among the 3 decided" in r.stdout
    assert f"{out}: label hateful has no threshold (no negative items" in r.stderr
    assert yaml.safe_load(out.read_text())["thresholds"] == {}
    # the cost method cannot choose one either, and an all-negative label is named too
    result = compute_metrics(run, bootstrap_rounds=0)
    assert tune(result, cost_fp=1, cost_fn=1).evidence["hateful"].review is None
    (tmp_path / "neg").mkdir()
    g_neg, m_neg = make_golden(tmp_path / "neg", [(f"calm b{i}", 0) for i in range(3)])
    with FakeOpenAIServer() as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="m"), g_neg, m_neg, tmp_path / "neg" / "run")
    ev = tune(compute_metrics(tmp_path / "neg" / "run", bootstrap_rounds=0), target_precision=0.9).evidence["hateful"]
    assert not ev.reachable and ev.note.startswith("no positive items among the 3 decided")


def test_eval_sample_draws_a_seeded_sample_of_both_classes_from_a_sorted_file(tmp_path: Path) -> None:
    """``--sample N --seed S``: a seeded random sample of the eligible items (kept in file order,
    recorded in the manifest), the way out of ``--limit``'s trap on a file sorted by label; the
    same seed draws the same items, another seed others."""
    rows = [(f"VIOLATE h{i}", 1) for i in range(10)] + [(f"calm b{i}", 0) for i in range(10)]
    g, m = make_golden(tmp_path, rows)

    def sent(run: Path) -> list[str]:
        return [json.loads(x)["id"] for x in (run / "items.jsonl").read_text().splitlines()]

    with FakeOpenAIServer() as srv:
        runs = {}
        for name, seed in (("a", 7), ("b", 7), ("c", 8)):
            r = CliRunner().invoke(cli, ["eval", str(g), "-M", str(m), "-o", str(tmp_path / name), "--sample", "8", "--seed", str(seed),
                                         "--base-url", srv.base_url, "--model", "m"])
            assert r.exit_code == 0, r.output
            runs[name] = sent(tmp_path / name)
    assert len(runs["a"]) == 8 and runs["a"] == runs["b"] and runs["a"] != runs["c"]
    ids = [json.loads(x)["id"] for x in g.read_text().splitlines()]
    assert runs["a"] == sorted(runs["a"], key=ids.index)  # file order kept
    texts = {json.loads(x)["id"]: json.loads(x)["text"] for x in g.read_text().splitlines()}
    assert {texts[i].startswith("VIOLATE") for i in runs["a"]} == {True, False}  # both classes (seed 7)
    assert "has no negative items" not in r.stderr
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["sample"] == {"n": 8, "seed": 7}


# -- finding 6: a refused eval -----------------------------------------------------------------


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def test_refused_eval_leaves_every_file_untouched_and_names_overwrite(tmp_path: Path) -> None:
    g = tmp_path / "gold.jsonl"
    g.write_text("".join(
        json.dumps({"id": f"g{i}", "text": t, "labels": {"hateful": h, "spam": s}}) + "\n"
        for i, (t, h, s) in enumerate([("VIOLATE a", 1, 0), ("calm", 0, 0), ("buy VIOLATE", 1, 1), ("hello", 0, 1)])
    ))
    m = tmp_path / "mapping.yaml"
    m.write_text("name: two\nlabels:\n  hateful: {policies: [hate_speech]}\n  spam: {policies: [spam_scams]}\n")
    run = tmp_path / "runs" / "a"
    with FakeOpenAIServer() as srv:
        base = ["eval", str(g), "-M", str(m), "-o", str(run), "--base-url", srv.base_url, "--model", "m"]
        assert CliRunner().invoke(cli, base).exit_code == 0
        before = _snapshot(run)
        r = CliRunner().invoke(cli, [*base, "-p", "spam_scams"])
        assert r.exit_code == EXIT_USAGE and "refusing to mix verdicts" in r.output and "Traceback" not in r.output
        assert "pass --overwrite to start over" in r.output
        assert _snapshot(run) == before  # items.jsonl, manifest.json, verdicts... all as they were
        # another golden set is refused the same way, naming --overwrite
        g2 = tmp_path / "gold2.jsonl"
        g2.write_text(json.dumps({"id": "z", "text": "other", "labels": {"hateful": 0, "spam": 0}}) + "\n")
        r = CliRunner().invoke(cli, ["eval", str(g2), "-M", str(m), "-o", str(run), "--base-url", srv.base_url, "--model", "m"])
        assert r.exit_code == EXIT_USAGE and "another golden set" in r.output and "--overwrite" in r.output
        assert _snapshot(run) == before
        # --overwrite (which the message names) exists on eval and starts over
        r = CliRunner().invoke(cli, [*base, "-p", "spam_scams", "--overwrite"])
        assert r.exit_code == 0, r.output
    items = [json.loads(line) for line in (run / "items.jsonl").read_text().splitlines()]
    assert [it["policies"] for it in items] == [["spam_scams"]] * 4
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["policies"]) == ["spam_scams"] and manifest["complete"] is True
    verdicts = [json.loads(line) for line in (run / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 4 and all({d["policy_id"] for d in v["decisions"]} == {"spam_scams"} for v in verdicts)
