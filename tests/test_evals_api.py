"""The eval library API (typed results, pure computing, separate writers) and the eval CLI's
options and exit codes."""

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
from cotmod.cli._app import EXIT_UNDECIDED, EXIT_USAGE
from cotmod.engine._thresholds import load_thresholds
from cotmod.evals import (
    EvalResult,
    compare,
    compare_runs,
    compute_metrics,
    load_result,
    metric_cis,
    run_eval,
    tune,
    write_metrics,
    write_thresholds,
)
from cotmod.testing import FakeOpenAIServer, body_schema, decision, offered_rule_ids

from .conftest import HATE_V, ROOT


def _policies_asked(body: dict[str, Any]) -> list[str]:
    return list(body_schema(body)["properties"]["decisions"]["properties"])


def flagging(words: dict[str, str], confidence: float = 0.8) -> FakeOpenAIServer:
    """A server on which policy P is violated when the item contains ``words[P]``."""

    def handler(body: dict[str, Any]) -> Any:
        text = body["messages"][-1]["content"]
        schema = body_schema(body)
        cited = {pid: [offered_rule_ids(schema, pid)[0]] if words.get(pid, "\0") in text else [] for pid in _policies_asked(body)}
        return decision(cited, confidence=confidence)

    return FakeOpenAIServer(handler=handler)


def write_golden(tmp_path: Path, rows: list[tuple[str, dict[str, int | None]]], mapping: str) -> tuple[Path, Path]:
    g = tmp_path / "gold.jsonl"
    g.write_text("".join(json.dumps({"id": f"g{i}", "text": t, "labels": labels}) + "\n" for i, (t, labels) in enumerate(rows)))
    m = tmp_path / "mapping.yaml"
    m.write_text(mapping)
    return g, m


HATE_ROWS: list[tuple[str, dict[str, int | None]]] = [
    ("HATE group X are vermin", {"hateful": 1}),
    ("HATE they should all leave", {"hateful": 1}),
    ("I love my neighbours", {"hateful": 0}),
    ("quoting HATE to condemn it", {"hateful": 0}),
    ("subtle hate without the marker", {"hateful": 1}),
    ("nice weather today", {"hateful": 0}),
]
HATE_MAPPING = "name: tiny\nlabels:\n  hateful: {policies: [hate_speech]}\n"


def test_metric_cis_equal_one_bootstrap_per_metric() -> None:
    import random

    import numpy as np

    from cotmod.evals._metrics import binary_metrics, bootstrap_ci

    rng = random.Random(3)
    y = np.array([rng.randint(0, 1) for _ in range(80)])
    p = np.array([rng.randint(0, 1) for _ in range(80)])
    got = metric_cis(y.tolist(), p.tolist(), rounds=300, seed=5)
    for k in ("precision", "recall", "f1", "fpr"):
        one = bootstrap_ci(lambda idx, k=k: binary_metrics(y[idx].tolist(), p[idx].tolist())[k], len(y), rounds=300, seed=5)
        assert getattr(got, k) == pytest.approx(one), k
    assert metric_cis([], [], rounds=300).precision is None and metric_cis([1], [1], rounds=0).f1 is None


def test_tune_leaves_metrics_json_with_its_cis_and_the_report_matches_it(tmp_path: Path) -> None:
    g, m = write_golden(tmp_path, HATE_ROWS, HATE_MAPPING)
    run = tmp_path / "run"
    with flagging({"hate_speech": "HATE"}) as srv:
        r = CliRunner().invoke(cli, ["eval", str(g), "-M", str(m), "-o", str(run), "--base-url", srv.base_url, "--model", "m"])
    assert r.exit_code == 0, r.output
    before = (run / "metrics.json").read_text()
    r = CliRunner().invoke(cli, ["tune", str(run), "-o", str(tmp_path / "th.yaml"), "--target-precision", "0.6"])
    assert r.exit_code == 0, r.output
    assert (run / "metrics.json").read_text() == before  # tune only reads the run
    metrics = json.loads(before)
    e = metrics["labels"]["hateful"]
    page = (run / "report.html").read_text()
    for key in ("precision", "recall", "f1"):
        ci = e["ci95"][key]
        assert ci is not None and ci[0] <= e[key] <= ci[1], key
        cell = re.search(rf"data-metric='hateful\.{key}'>([^<]+)<", page)
        assert cell is not None and cell.group(1) == f"{e[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]", key


def test_cost_based_tune_picks_the_cost_optimal_threshold(tmp_path: Path) -> None:
    # eight items with distinct scores; gold labels from the highest score down: 1 1 0 1 0 1 0 0
    scored = [(0.95, 1), (0.85, 1), (0.75, 0), (0.65, 1), (0.55, 0), (0.45, 1), (0.35, 0), (0.25, 0)]
    rows: list[tuple[str, dict[str, int | None]]] = [(f"item scored S={s}", {"hateful": y}) for s, y in scored]
    g, m = write_golden(tmp_path, rows, HATE_MAPPING)

    def handler(body: dict[str, Any]) -> Any:
        score = float(re.search(r"S=([0-9.]+)", body["messages"][-1]["content"]).group(1))  # type: ignore[union-attr]
        violates = score >= 0.5  # score = confidence when violating, 1 - confidence when not
        return decision({"hate_speech": ["HATE-1"] if violates else []}, confidence=score if violates else 1 - score)

    with FakeOpenAIServer(handler=handler) as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="m"), g, m, tmp_path / "run")
    result = compute_metrics(tmp_path / "run", bootstrap_rounds=0)
    assert sorted(p.score for p in result.predictions["hateful"]) == pytest.approx([s for s, _ in reversed(scored)])
    # target precision 0.9: the lowest threshold reaching it is 0.85 (2/2); 0.75 gives 2/3
    assert tune(result, target_precision=0.9).thresholds["hate_speech"].review == pytest.approx(0.85)
    # a missed violation costs 10, a false alarm 1: total cost FP + 10 FN per threshold is
    # 0.95: 30, 0.85: 20, 0.75: 21, 0.65: 11, 0.55: 12, 0.45: 2, 0.35: 3, 0.25: 4 -> 0.45
    fn_costly = tune(result, cost_fp=1, cost_fn=10)
    th = fn_costly.thresholds["hate_speech"]
    assert th.review == pytest.approx(0.45)
    assert (th.precision, th.recall) == (pytest.approx(4 / 6), pytest.approx(1.0))
    # false alarms costly instead: 10 FP + FN is 0.95: 3, 0.85: 2, 0.75: 12, ... -> 0.85
    assert tune(result, cost_fp=10, cost_fn=1).thresholds["hate_speech"].review == pytest.approx(0.85)
    # auto-action: the lowest threshold reaching precision 0.99 is 0.85, above review
    assert th.auto_action == pytest.approx(0.85) and th.policy_version == HATE_V
    # the file the engine reads: same thresholds, the tuned version and operating point recorded
    path = tmp_path / "th.yaml"
    write_thresholds(fn_costly, path)
    assert load_thresholds(path) == {"hate_speech": {"review": pytest.approx(0.45), "auto_action": pytest.approx(0.85)}}


def test_a_policy_without_auto_action_threshold_has_no_auto_action_key(tmp_path: Path) -> None:
    g, m = write_golden(tmp_path, HATE_ROWS, HATE_MAPPING)
    with flagging({"hate_speech": "HATE"}) as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="m"), g, m, tmp_path / "run")
    th = tune(compute_metrics(tmp_path / "run", bootstrap_rounds=0), target_precision=0.6)
    assert th.thresholds["hate_speech"].auto_action is None  # nothing reaches precision 0.99
    write_thresholds(th, tmp_path / "th.yaml")
    assert load_thresholds(tmp_path / "th.yaml") == {"hate_speech": {"review": pytest.approx(0.8)}}


def test_eval_policy_option_evaluates_only_those_policies(tmp_path: Path) -> None:
    rows: list[tuple[str, dict[str, int | None]]] = [
        ("HATE one", {"hateful": 1, "harassing": 0}),
        ("calm two", {"hateful": 0, "harassing": 0}),
        ("BULLY three", {"hateful": None, "harassing": 1}),  # only a harassment label: not sent
        ("BULLY HATE four", {"hateful": 1, "harassing": 1, "harmful": 1}),
        ("calm five", {"harmful": 0}),
    ]
    mapping = (
        "name: two\nlabels:\n  hateful: {policies: [hate_speech]}\n  harassing: {policies: [harassment_bullying]}\n"
        "  harmful: {policies: [harassment_bullying, hate_speech]}\n"
    )
    g, m = write_golden(tmp_path, rows, mapping)
    run = tmp_path / "run"
    with flagging({"hate_speech": "HATE", "harassment_bullying": "BULLY"}) as srv:
        r = CliRunner().invoke(cli, ["eval", str(g), "-M", str(m), "-o", str(run), "-p", "hate_speech", "--base-url", srv.base_url, "--model", "m", "--json"])
        assert r.exit_code == 0, r.output
        asked = [_policies_asked(b) for b in srv.bodies]
    assert asked == [["hate_speech"]] * 4  # g2 has no label hate_speech decides
    data = json.loads(r.stdout)
    # harassing has no selected policy: left out; harmful is judged by hate_speech alone
    assert list(data["labels"]) == ["hateful", "harmful"]
    assert data["labels"]["harmful"]["policies"] == ["hate_speech"] and data["labels"]["harmful"]["n"] == 2
    assert data["labels"]["harmful"]["confusion"] == {"tp": 1, "fp": 0, "fn": 0, "tn": 1}
    assert data["manifest"]["policies"] == {"hate_speech": HATE_V}
    assert data["manifest"]["mapping"]["only_policies"] == ["hate_speech"] and data["items"] == 4
    # report recomputes from the run directory with the same selection
    r = CliRunner().invoke(cli, ["report", str(run), "--json"])
    assert r.exit_code == 0 and list(json.loads(r.stdout)["labels"]) == ["hateful", "harmful"]
    # a policy the mapping does not use, and an unknown one: one clear line, exit 2
    for pid, message in (("spam_scams", "policy 'spam_scams' (from --policy) decides no label of the mapping 'two'"), ("nosuch", "--policy 'nosuch': unknown policy")):
        r = CliRunner().invoke(cli, ["eval", str(g), "-M", str(m), "-o", str(tmp_path / pid), "-p", pid, "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
        assert r.exit_code == EXIT_USAGE and message in r.output and "Traceback" not in r.output, r.output


def test_eval_with_error_verdicts_exits_1_and_still_writes_metrics(tmp_path: Path) -> None:
    g, m = write_golden(tmp_path, [*HATE_ROWS, ("BROKEN answer", {"hateful": 1})], HATE_MAPPING)
    run = tmp_path / "run"

    def handler(body: dict[str, Any]) -> Any:
        text = body["messages"][-1]["content"]
        if any("BROKEN" in msg["content"] for msg in body["messages"]):
            return "I think it is fine"  # never a valid decision, re-asks too: an error verdict
        return decision({"hate_speech": ["HATE-1"] if "HATE" in text else []})

    with FakeOpenAIServer(handler=handler) as srv:
        r = CliRunner().invoke(cli, ["eval", str(g), "-M", str(m), "-o", str(run), "--base-url", srv.base_url, "--model", "m", "--json"])
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert "1 of 7 items not decided (1 error verdicts" in r.stderr
    data = json.loads(r.stdout)  # stdout stays the JSON
    assert (data["items"], data["errors"], data["missing"]) == (7, 1, 0)
    saved = load_result(run)
    assert saved.undecided == 1 and saved.labels["hateful"].errors == 1 and saved.labels["hateful"].n == 6
    assert (run / "report.html").exists()


def test_compute_metrics_is_pure_and_attributes_errors_to_policies(tmp_path: Path) -> None:
    rows: list[tuple[str, dict[str, int | None]]] = [
        ("HATE group", {"harm": 1}),
        ("BULLY you", {"harm": 1}),
        ("HATE BULLY both", {"harm": 1}),
        ("BULLY quoting", {"harm": 0}),
        ("calm", {"harm": 0}),
    ]
    g, m = write_golden(tmp_path, rows, "name: multi\nlabels:\n  harm: {policies: [hate_speech, harassment_bullying]}\n")
    run = tmp_path / "run"
    with flagging({"hate_speech": "HATE", "harassment_bullying": "BULLY"}) as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="m"), g, m, run)
    files = sorted(p.name for p in run.iterdir())
    result = compute_metrics(run)
    assert isinstance(result, EvalResult) and sorted(p.name for p in run.iterdir()) == files  # nothing written
    attribution = {pid: a.model_dump() for pid, a in result.labels["harm"].per_policy.items()}
    assert attribution == {
        "hate_speech": {"flagged": 2, "true_positive": 2, "false_positive": 0, "precision": 1.0, "only_this_policy": 1},
        "harassment_bullying": {"flagged": 3, "true_positive": 2, "false_positive": 1, "precision": pytest.approx(2 / 3), "only_this_policy": 2},
    }
    path = write_metrics(result)
    assert path == run / "metrics.json" and load_result(run) == result  # the file round-trips
    same = compare(result, result, fail_on=["recall drop > 0"])
    assert same.ok and same.labels["harm"].metrics["f1"].delta == 0 and not same.labels["harm"].flipped


def test_saved_benchmark_runs_still_load_compare_and_recompute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run directories written by earlier versions (benchmarks/results) load for compare and report."""
    for name in ("quality-qwen1.5b-v1.1", "quality-qwen1.5b-v1.2"):
        shutil.copytree(ROOT / "benchmarks" / "results" / name, tmp_path / "benchmarks" / "results" / name)
    monkeypatch.chdir(tmp_path)  # their manifests name the golden set relative to the repository
    a, b = (Path("benchmarks/results") / n / "run" for n in ("quality-qwen1.5b-v1.1", "quality-qwen1.5b-v1.2"))
    stored = json.loads((a / "metrics.json").read_text())
    cmp = compare_runs(a, b, rounds=200)
    assert set(cmp.labels) == {"hateful", "unsafe"} and cmp.labels["hateful"].n_paired == len(stored["predictions"]["hateful"])
    r = CliRunner().invoke(cli, ["compare", str(a), str(b)])
    # each run has 4 error verdicts: the comparison is shown, on the items both decided, but does not pass
    assert r.exit_code == EXIT_UNDECIDED and "hateful (n=" in r.output
    assert f"A {a}: 4 of 200 items not decided (4 error verdicts, 0 not judged yet)" in r.stderr
    assert cmp.a_coverage is not None and (cmp.a_coverage.errors, cmp.a_coverage.items) == (4, 200) and not cmp.ok
    # recomputing (bench_quality used 200 bootstrap rounds) gives the stored figures, CIs included
    fresh = compute_metrics(a, bootstrap_rounds=200).model_dump(mode="json")
    for label, e in stored["labels"].items():
        for key, value in e.items():
            assert fresh["labels"][label][key] == value, (label, key)
    assert fresh["predictions"] == stored["predictions"] and fresh["micro"] == stored["micro"]
    assert (fresh["errors"], fresh["items"]) == (4, 200)  # 4 error verdicts in that run
    r = CliRunner().invoke(cli, ["report", str(a)])
    assert r.exit_code == EXIT_UNDECIDED and "4 of 200 items not decided" in r.output


def test_broken_run_files_are_one_clear_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"golden": {"path": "g.jsonl", "sha256": "x", "rows": 1}}')
    r = CliRunner().invoke(cli, ["report", str(run)])
    assert r.exit_code == EXIT_USAGE and f"{run / 'manifest.json'}: not a cotmod eval manifest (mapping: Field required)" in r.output
    (run / "metrics.json").write_text("{not json")
    r = CliRunner().invoke(cli, ["compare", str(run), str(run)])
    assert r.exit_code == EXIT_USAGE and f"{run / 'metrics.json'}: not a cotmod metrics file (Invalid JSON" in r.output
    assert "Traceback" not in r.output
