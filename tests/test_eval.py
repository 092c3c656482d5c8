from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy.stats import binomtest
from sklearn import metrics as skm

from cotmod import AsyncModerator, InputError
from cotmod.cli import cli
from cotmod.cli._app import EXIT_UNDECIDED
from cotmod.evals._compare import compare_runs, tune
from cotmod.evals._harness import compute_metrics, run_eval, write_metrics
from cotmod.evals._metrics import (
    average_precision,
    binary_metrics,
    mcnemar_exact,
    paired_comparison,
    roc_auc,
)
from cotmod.testing import FakeOpenAIServer, decision

from .conftest import HATE_V, ROOT


def test_metrics_equal_sklearn_and_scipy() -> None:
    rng = random.Random(7)
    for _ in range(30):
        n = rng.randint(5, 200)
        y = [rng.randint(0, 1) for _ in range(n)]
        if len(set(y)) < 2:
            y[0], y[1] = 0, 1
        p = [rng.randint(0, 1) for _ in range(n)]
        s = [round(rng.random(), rng.choice([1, 2, 6])) for _ in range(n)]  # with ties
        m = binary_metrics(y, p)
        assert m["precision"] == pytest.approx(skm.precision_score(y, p, zero_division=0))
        assert m["recall"] == pytest.approx(skm.recall_score(y, p, zero_division=0))
        assert m["f1"] == pytest.approx(skm.f1_score(y, p, zero_division=0))
        tn, fp, fn, tp = skm.confusion_matrix(y, p, labels=[0, 1]).ravel()
        assert m["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
        assert m["fpr"] == pytest.approx(fp / (fp + tn) if fp + tn else 0)
        assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))
        assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    for b, c in [(0, 0), (3, 9), (10, 2), (25, 25), (0, 7), (40, 61)]:
        expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(expected)


def test_paired_comparison_equals_sklearn_and_scipy() -> None:
    rng = random.Random(11)
    y = [rng.randint(0, 1) for _ in range(120)]
    a = [v if rng.random() < 0.6 else 1 - v for v in y]
    b = [v if rng.random() < 0.8 else 1 - v for v in y]
    got = paired_comparison(y, a, b, metrics=("f1", "accuracy"), rounds=200)
    f1 = got.metrics["f1"]
    assert f1.delta == pytest.approx(skm.f1_score(y, b) - skm.f1_score(y, a))
    assert f1.ci95 is not None and f1.ci95[0] < f1.delta < f1.ci95[1]
    acc = got.metrics["accuracy"]
    assert (acc.a, acc.b) == (pytest.approx(skm.accuracy_score(y, a)), pytest.approx(skm.accuracy_score(y, b)))
    a_only = sum(1 for t, u, v in zip(y, a, b, strict=True) if u == t != v)
    b_only = sum(1 for t, u, v in zip(y, a, b, strict=True) if v == t != u)
    m = got.mcnemar
    assert (m.a_correct_only, m.b_correct_only) == (a_only, b_only)
    assert m.p_value == pytest.approx(binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue)


GOLD_ROWS = [
    # (text, hateful label, functionality)
    ("VIOLATE group X are vermin", 1, "derog"),
    ("VIOLATE they should all leave", 1, "derog"),
    ("I love my neighbours", 0, "neutral"),
    ("quoting 'X are vermin' to condemn it VIOLATE", 0, "counter"),  # a false positive
    ("subtle hate without the marker", 1, "implicit"),  # a false negative
    ("nice weather today", 0, "neutral"),
    ("unknown label row", None, "neutral"),
]


def make_golden(tmp_path: Path) -> tuple[Path, Path]:
    g = tmp_path / "gold.jsonl"
    with g.open("w") as f:
        for i, (text, lab, func) in enumerate(GOLD_ROWS):
            f.write(json.dumps({"id": f"g{i}", "text": text, "labels": {"hateful": lab}, "functionality": func}) + "\n")
    m = tmp_path / "mapping.yaml"
    m.write_text("name: tiny\nlabels:\n  hateful: {policies: [hate_speech]}\nstrata: [functionality]\n")
    return g, m


def scored_server(conf: float = 0.8) -> FakeOpenAIServer:
    def handler(body):
        text = body["messages"][-1]["content"]
        return decision({"hate_speech": ["HATE-1"] if "VIOLATE" in text else []}, confidence=conf)

    return FakeOpenAIServer(handler=handler)


def test_eval_end_to_end_metrics_rca_and_report(tmp_path: Path) -> None:
    g, m = make_golden(tmp_path)
    run = tmp_path / "runs" / "a"
    with scored_server() as srv:
        r = CliRunner().invoke(cli, ["eval", str(g), "-M", str(m), "-o", str(run), "--base-url", srv.base_url, "--model", "m", "--json"])
        assert r.exit_code == 0, r.output
        assert srv.requests == 6  # the unknown-label row is not sent
    data = json.loads(r.stdout)
    e = data["labels"]["hateful"]
    y = [1, 1, 0, 0, 1, 0]
    p = [1, 1, 0, 1, 0, 0]
    assert e["precision"] == pytest.approx(skm.precision_score(y, p)) and e["recall"] == pytest.approx(skm.recall_score(y, p))
    assert e["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 2} and e["support"] == 3 and e["n"] == 6
    assert e["ci95"]["precision"][0] <= e["precision"] <= e["ci95"]["precision"][1]
    rca = e["rca"]
    assert rca["fp_by_rule"] == {"HATE-1": 1} and rca["fp_examples"][0]["id"] == "g3"
    assert rca["by_stratum"]["functionality"]["counter"]["fp"] == 1 and rca["by_stratum"]["functionality"]["implicit"]["fn"] == 1
    assert e["per_rule"]["HATE-1"] == {"cited": 3, "true_positive": 2, "false_positive": 1, "precision": pytest.approx(2 / 3), "expected": 0, "recall": None}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["policies"] == {"hate_speech": HATE_V} and manifest["golden"]["rows"] == 7 and manifest["model"] == "m"
    # the HTML report shows the same numbers as the JSON
    page = (run / "report.html").read_text()
    for key in ("precision", "recall", "f1", "fpr", "auprc", "roc_auc"):
        cell = re.search(rf"data-metric='hateful\.{key}'>([^<\[ ]+)", page)
        assert cell is not None, key
        val = e[key]
        assert cell.group(1) == ("–" if val is None else f"{val:.3f}"), key
    assert "<svg" in page and "g3" in page


def test_rerun_is_cached_and_other_golden_set_refused(tmp_path: Path) -> None:
    g, m = make_golden(tmp_path)
    run = tmp_path / "run"
    with scored_server() as srv:
        mod = AsyncModerator(base_url=srv.base_url, model="m")
        run_eval(mod, g, m, run)
        n = srv.requests
        _, summary = run_eval(AsyncModerator(base_url=srv.base_url, model="m"), g, m, run)
        assert srv.requests == n and summary.resumed_skipped == 6
    g2 = tmp_path / "gold2.jsonl"
    g2.write_text(json.dumps({"id": "z", "text": "other", "labels": {"hateful": 0}}) + "\n")
    with pytest.raises(Exception, match="another golden set"):
        run_eval(AsyncModerator(base_url="http://127.0.0.1:9/v1", model="m"), g2, m, run)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "a", "text": "x", "labels": {"toxic": 1}}, "label(s) toxic not in the mapping"),
        ({"id": "a", "labels": {"hateful": 1}}, "missing or empty field 'text'"),
        ({"id": "a", "text": "x", "labels": {"hateful": 3}}, "labels.hateful: label value 3"),
    ],
)
def test_bad_golden_rows(tmp_path: Path, row: dict, message: str) -> None:
    _, m = make_golden(tmp_path)
    g = tmp_path / "bad.jsonl"
    g.write_text(json.dumps({"id": "ok", "text": "fine", "labels": {"hateful": 0}}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError, match=re.escape(message)) as ei:
        run_eval(AsyncModerator(base_url="http://127.0.0.1:9/v1", model="m"), g, m, tmp_path / "r")
    assert f"{g}:2" in str(ei.value)


def test_duplicate_ids_and_unknown_policy_in_mapping(tmp_path: Path) -> None:
    g, m = make_golden(tmp_path)
    g.write_text(g.read_text() + json.dumps({"id": "g0", "text": "again", "labels": {"hateful": 0}}) + "\n")
    with pytest.raises(InputError, match=r"duplicate id 'g0' \(first on line 1\)"):
        run_eval(AsyncModerator(base_url="http://127.0.0.1:9/v1", model="m"), g, m, tmp_path / "r")
    m.write_text("labels:\n  hateful: {policies: [hate_speach]}\n")
    with pytest.raises(InputError, match=r"labels\.hateful\.policies\[0\]: unknown policy 'hate_speach'"):
        run_eval(AsyncModerator(base_url="http://127.0.0.1:9/v1", model="m"), g, m, tmp_path / "r")


def test_tune_thresholds_and_engine_applies_them(tmp_path: Path) -> None:
    g, m = make_golden(tmp_path)
    run = tmp_path / "run"
    with scored_server(conf=0.9) as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="m"), g, m, run)
    metrics = compute_metrics(run)
    data = tune(metrics, target_precision=0.6)
    th = data.thresholds["hate_speech"]
    assert th.review == pytest.approx(0.9) and th.policy_version == HATE_V and th.label == "hateful"
    # the operating point: 2 of the 3 flagged items are hateful, 2 of the 3 hateful ones flagged
    assert (th.precision, th.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert th.precision_ci95 is not None and th.precision_ci95[0] <= 2 / 3 <= th.precision_ci95[1]
    out = tmp_path / "th.yaml"
    r = CliRunner().invoke(cli, ["tune", str(run), "-o", str(out), "--target-precision", "0.6"])
    assert r.exit_code == 0 and "review >= 0.900" in r.output
    with scored_server(conf=0.9) as srv:
        import asyncio

        async def both():
            async with AsyncModerator(base_url=srv.base_url, model="m", thresholds=str(out)) as mod:
                return await mod.moderate("VIOLATE", policies=["hate_speech"]), await mod.moderate("calm text", policies=["hate_speech"])

        v, v2 = asyncio.run(both())
        assert v.decisions[0].band == "human_review" and v.escalate
        assert v2.decisions[0].band == "allow" and v2.action == "allow"


def test_compare_runs_and_fail_on(tmp_path: Path) -> None:
    g, m = make_golden(tmp_path)
    with scored_server() as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="m"), g, m, tmp_path / "a")

    def worse(body):  # flags everything: precision drops
        return decision({"hate_speech": ["HATE-1"]})

    with FakeOpenAIServer(handler=worse) as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="m2"), g, m, tmp_path / "b")
    write_metrics(compute_metrics(tmp_path / "a"))
    write_metrics(compute_metrics(tmp_path / "b"))
    data = compare_runs(tmp_path / "a", tmp_path / "b", fail_on=["precision drop > 2"])
    e = data.labels["hateful"]
    assert e.metrics["precision"].delta == pytest.approx(0.5 - 2 / 3)
    assert {f.id for f in e.flipped} == {"g2", "g4", "g5"}
    assert e.mcnemar.model_dump() == {"a_correct_only": 2, "b_correct_only": 1, "p_value": pytest.approx(1.0)}
    assert not data.ok and [(x.label, x.metric, x.direction) for x in data.regressions] == [("hateful", "precision", "drop")]
    assert data.regressions[0].points == pytest.approx(100 * (2 / 3 - 0.5))
    r = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--fail-on", "precision drop > 2"])
    assert r.exit_code == EXIT_UNDECIDED and "REGRESSION hateful: precision drop 16.7 points > 2.0" in r.output
    as_json = json.loads(CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--fail-on", "precision drop > 2", "--json"]).stdout)
    assert as_json["ok"] is False and as_json["failures"] == ["hateful: precision drop 16.7 points > 2.0"]
    r = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--fail-on", "precision drop > 2"])
    assert r.exit_code == 0
    # a gate these runs cannot measure (neither triaged) does not pass silently
    r = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--fail-on", "triage_benign_none drop > 2"])
    assert r.exit_code == EXIT_UNDECIDED and "not measurable on these runs" in r.stderr and "needs triage records" in r.stderr
    same = compare_runs(tmp_path / "a", tmp_path / "a", fail_on=["triage_benign_none drop > 2"])
    assert not same.ok and not same.regressions and same.unmeasured == [
        "triage_benign_none drop > 2: needs triage records in both runs, with items of that kind"]


def test_shipped_goldsets_and_mappings_load() -> None:
    from cotmod.evals._golden import load_golden, load_mapping
    from cotmod.policy._lint import default_policies

    for d in sorted((ROOT / "benchmarks" / "goldsets").iterdir()):
        mp = load_mapping(d / "mapping.yaml")
        mp.validate(default_policies(), str(d))
        gs = load_golden(next(d.glob("*.normalized.jsonl.gz")), mp)
        assert len(gs) >= 100 and (d / "README.txt").exists()
        assert "CC BY 4.0" in mp.license or "CC0" in mp.license
        # every mapped label is known on rows of the set and has positives, so recall and AUPRC
        # are defined on it (SimpleSafetyTests is all unsafe: a recall-only set)
        for label in mp.labels:
            known = [it.labels[label] for it in gs.items if it.labels[label] is not None]
            assert known and 0 < sum(known) <= len(known), (d.name, label)


def test_eval_with_self_consistency_votes_scores_by_vote_share(tmp_path: Path) -> None:
    g, m = make_golden(tmp_path)
    run = tmp_path / "runs" / "votes"

    def handler(body):  # marked items: 2 of 3 votes (seeds 0, 1) violate; others: 1 of 3 (seed 2)
        text = body["messages"][-1]["content"]
        yes = body["seed"] in ((0, 1) if "VIOLATE" in text else (2,))
        return decision({"hate_speech": ["HATE-1"] if yes else []})

    with FakeOpenAIServer(handler=handler) as srv:
        r = CliRunner().invoke(cli, ["eval", str(g), "-M", str(m), "-o", str(run), "--base-url", srv.base_url, "--model", "m", "--votes", "3", "--json"])
        assert r.exit_code == 0, r.output
        assert srv.requests == 18  # 6 labelled rows x 3 votes
    data = json.loads(r.stdout)["labels"]["hateful"]
    assert data["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}  # the majority decides
    scores = {p["id"]: p["score"] for p in json.loads((run / "metrics.json").read_text())["predictions"]["hateful"]}
    assert scores["g0"] == pytest.approx(2 / 3) and scores["g2"] == pytest.approx(1 / 3)
    y = [1, 1, 0, 0, 1, 0]
    s = [scores[f"g{i}"] for i in range(6)]
    assert data["auprc"] == pytest.approx(skm.average_precision_score(y, s))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["sampling"]["votes"] == 3 and manifest["sampling"]["vote_temperature"] == 0.7
    # batch export cannot carry votes: a clear error, not a silent single call
    r = CliRunner().invoke(cli, ["batch", "export", str(g), "-o", str(tmp_path / "req.jsonl"), "--votes", "3", "-p", "hate_speech", "--model", "m"])
    assert r.exit_code != 0 and "votes" in r.output


def test_interrupted_eval_can_be_reported_then_resumed(tmp_path: Path) -> None:
    from cotmod import AuthenticationError
    from cotmod.testing import FakeBackend

    g, m = make_golden(tmp_path)
    run = tmp_path / "run"
    calls = 0

    def flaky(req):  # the endpoint starts refusing the key after 3 answers: the run aborts
        nonlocal calls
        calls += 1
        if calls > 3:
            raise AuthenticationError("key revoked", status_code=401)
        text = req.messages[-1]["content"]
        return decision({"hate_speech": ["HATE-1"] if "VIOLATE" in text else []})

    with pytest.raises(AuthenticationError):
        run_eval(AsyncModerator(backend=FakeBackend(default=flaky), concurrency=1), g, m, run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["complete"] is False
    r = CliRunner().invoke(cli, ["report", str(run)])
    # the report is printed and written, but an incomplete run does not exit 0
    assert r.exit_code == EXIT_UNDECIDED and "INCOMPLETE RUN" in r.output
    assert "3 of 6 items not decided" in r.stderr and (run / "report.html").exists()
    partial = json.loads(CliRunner().invoke(cli, ["report", str(run), "--json"]).stdout)["labels"]["hateful"]
    assert partial["missing"] == 3 and partial["n"] == 3  # metrics over the judged items; the rest counted missing
    # resuming judges only the 3 missing items and marks the run complete
    backend = FakeBackend(default=lambda req: decision({"hate_speech": ["HATE-1"] if "VIOLATE" in req.messages[-1]["content"] else []}))
    run_eval(AsyncModerator(backend=backend), g, m, run)
    assert len(backend.history) == 3 and json.loads((run / "manifest.json").read_text())["complete"] is True
    r = CliRunner().invoke(cli, ["report", str(run)])
    assert "INCOMPLETE" not in r.output and r.exit_code == 0


def test_a_run_file_with_bytes_that_are_not_utf8_is_one_clear_line(tmp_path: Path) -> None:
    """report / compare read verdicts.jsonl line by line: a corrupted (non-UTF-8) line names the file
    and line, exit 2, instead of a UnicodeDecodeError traceback; a line torn mid-character by a stop
    is still treated as torn."""
    from cotmod.testing import FakeBackend

    g, m = make_golden(tmp_path)
    run = tmp_path / "run"
    backend = FakeBackend(default=lambda req: decision({"hate_speech": ["HATE-1"] if "VIOLATE" in req.messages[-1]["content"] else []}))
    run_eval(AsyncModerator(backend=backend), g, m, run)
    verdicts = run / "verdicts.jsonl"
    good = verdicts.read_bytes()
    lines = good.count(b"\n")
    verdicts.write_bytes(good + "{\"x\": \"é".encode()[:-1])  # torn inside a two-byte character
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    verdicts.write_bytes(good + b"\xff\xfe oops\n")
    r = CliRunner().invoke(cli, ["report", str(run)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"{verdicts}:{lines + 1}: not valid UTF-8" in r.stderr


def test_report_names_thresholds_for_policies_the_run_did_not_judge(tmp_path: Path) -> None:
    """A thresholds file with a policy the run never judged (a typo, another policy set) changed
    nothing silently; report and eval now say so (the config route refuses unknown policies)."""
    from cotmod.testing import FakeBackend

    g, m = make_golden(tmp_path)
    run = tmp_path / "run"
    run_eval(AsyncModerator(backend=FakeBackend(default=lambda req: decision({"hate_speech": []}))), g, m, run)
    th = tmp_path / "t.yaml"
    th.write_text("thresholds:\n  nopolicy: {review: 0.5}\n  hate_speech: {review: 0.5}\n")
    r = CliRunner().invoke(cli, ["report", str(run), "--thresholds", str(th)])
    assert r.exit_code == 0, r.output
    assert "has thresholds for nopolicy, which this run did not judge (it judged hate_speech)" in r.stderr
    th.write_text("thresholds:\n  hate_speech: {review: 0.5}\n")
    assert "notice" not in CliRunner().invoke(cli, ["report", str(run), "--thresholds", str(th)]).stderr


def test_a_mapping_label_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    """docs/formats.md says unknown keys are errors; at the label level they were accepted."""
    from cotmod.evals import load_mapping

    m = tmp_path / "mapping.yaml"
    m.write_text("labels:\n  unsafe: {policies: [hate_speech], threshold: 0.5}\n")
    with pytest.raises(InputError, match=r"mapping\.yaml: labels\.unsafe: unknown field\(s\) threshold"):
        load_mapping(m)
    m.write_text("labels:\n  unsafe: {policies: [hate_speech], description: hateful posts}\n")
    assert load_mapping(m).labels == {"unsafe": ["hate_speech"]}


def test_a_classifier_thresholds_file_applied_to_llm_scores_is_warned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cotmod classifier tune`` writes per-policy ``thresholds`` too (for sync check); given to
    the LLM engine or to report/eval they decided on the LLM's scores with a classifier's cut-offs,
    silently. Now a warning says so; an LLM thresholds file gets none."""
    from cotmod._config import Settings
    from cotmod.testing import FakeBackend

    g, m = make_golden(tmp_path)
    run = tmp_path / "run"
    run_eval(AsyncModerator(backend=FakeBackend(default=lambda req: decision({"hate_speech": []}))), g, m, run)
    clf = tmp_path / "clf.yaml"
    clf.write_text("kind: classifier\nsource: scores.jsonl\nthresholds:\n  hate_speech: {review: 0.5, label: hateful}\n")
    llm = tmp_path / "llm.yaml"
    llm.write_text("thresholds:\n  hate_speech: {review: 0.5}\n")
    r = CliRunner().invoke(cli, ["report", str(run), "--thresholds", str(clf)])
    assert r.exit_code == 0, r.output
    assert f"{clf} was written by cotmod classifier tune" in r.stderr
    assert "classifier tune" not in CliRunner().invoke(cli, ["report", str(run), "--thresholds", str(llm)]).stderr
    monkeypatch.chdir(tmp_path)
    assert any("was written by cotmod classifier tune" in n for n in Settings.resolve(None, thresholds=str(clf)).notices)
    assert not any("classifier tune" in n for n in Settings.resolve(None, thresholds=str(llm)).notices)


def test_settings_made_by_hand_warn_through_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service building ``Settings(...)`` itself never sees ``Settings.resolve``'s notices: the
    engine issues each as a ``CotmodWarning`` instead (the library never prints), once per line;
    settings that do what they seem to give none, and the CLI prints each line once, not twice."""
    import warnings

    from cotmod import CotmodWarning, Moderator, Settings
    from cotmod.testing import FakeBackend

    monkeypatch.chdir(tmp_path)
    clf = tmp_path / "clf.yaml"
    clf.write_text("kind: classifier\nsource: scores.jsonl\nthresholds:\n  hate_speech: {review: 0.5, label: hateful}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Moderator(settings=Settings(thresholds=str(clf), triage_blend=0.5), backend=FakeBackend())
    assert [w.category for w in caught] == [CotmodWarning, CotmodWarning], caught
    text = [str(w.message) for w in caught]
    assert "triage_blend has no effect" in text[0] and "was written by cotmod classifier tune" in text[1]
    assert not any(t.startswith(("cotmod:", "warning:")) for t in text)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CotmodWarning)
        Moderator(settings=Settings(), backend=FakeBackend())  # nothing to warn about
    (tmp_path / "cotmod.toml").write_text('thresholds = "clf.yaml"\n')
    r = CliRunner().invoke(cli, ["moderate", "hello", "-p", "hate_speech", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    assert r.stderr.count("was written by cotmod classifier tune") == 1, r.stderr
    assert "Traceback" not in r.output
