"""Drift monitoring of classifier scores (cotmod monitor), on a real TF-IDF + logistic regression
spam classifier trained on the SMS Spam Collection, with scenarios of known shift and of none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from cotmod import ConfigError, InputError
from cotmod.classifiers import MonitorSettings, ScoreLog, monitor, parse_chunk, read_scores
from cotmod.classifiers._demo import DemoClassifier, simulate_score_log, train_demo_classifier
from cotmod.classifiers._drift import (
    distance_stats,
    flag_rate_test,
    leave_out_stats,
    psi,
    quantile_bins,
)
from cotmod.cli import cli

# -- the statistics ------------------------------------------------------------------------------


def test_psi_and_js_on_reference_quantile_bins() -> None:
    rng = np.random.default_rng(0)
    ref, cur = rng.beta(2, 5, 5000), rng.beta(2.5, 5, 800)
    bins = quantile_bins(ref, 10)
    assert len(bins.edges) == 9 and list(bins.ref_counts) == [500] * 10  # deciles of the reference
    d = distance_stats(ref, cur, bins)
    c = bins.counts(cur) / len(cur)
    assert d.psi == pytest.approx(float(np.sum((c - 0.1) * np.log(c / 0.1))))
    assert d.ks == pytest.approx(stats.ks_2samp(ref, cur).statistic)
    assert d.wasserstein == pytest.approx(stats.wasserstein_distance(ref, cur))
    assert 0 < d.js < 1
    # an empty bin counts as eps, not as a division by zero
    assert np.isfinite(psi(np.array([5, 5]), np.array([10, 0]), eps=1e-4))


def test_tied_scores_merge_bins() -> None:
    ref = np.r_[np.zeros(900), np.linspace(0.5, 1, 100)]
    bins = quantile_bins(ref, 10)
    assert len(bins.edges) == 1 and bins.ref_counts.sum() == 1000  # nine deciles are 0.0: one edge left


def test_leave_out_stats_equal_the_two_sample_stats_against_the_rest() -> None:
    rng = np.random.default_rng(1)
    ref = rng.random(600).round(2)
    bins = quantile_bins(ref, 10)
    chunk, rest = ref[100:160], np.r_[ref[:100], ref[160:]]
    lo = leave_out_stats(np.sort(ref), chunk, bins)
    assert lo.ks == pytest.approx(stats.ks_2samp(rest, chunk).statistic)
    assert lo.wasserstein == pytest.approx(stats.wasserstein_distance(rest, chunk))
    assert lo.psi == pytest.approx(psi(bins.counts(rest), bins.counts(chunk)))


def test_flag_rate_difference_ci_matches_newcombe() -> None:
    # Newcombe (1998), Stat Med 17:873, example (a): 56/70 vs 48/80, method 10: (0.0524, 0.3339)
    fr = flag_rate_test(56, 70, 48, 80)
    assert fr.diff == pytest.approx(0.2)
    assert fr.diff_ci95 == pytest.approx((0.0524, 0.3339), abs=5e-4)
    pooled = 104 / 150
    z = 0.2 / np.sqrt(pooled * (1 - pooled) * (1 / 70 + 1 / 80))
    assert fr.p_value == pytest.approx(2 * stats.norm.sf(z))


def test_parse_chunk() -> None:
    assert parse_chunk("1d") == ("time", 86400) and parse_chunk("6h") == ("time", 21600)
    assert parse_chunk("100000") == ("count", 100000) and parse_chunk(50) == ("count", 50)
    for bad in ("0", "1y", "day", "-5"):
        with pytest.raises(ConfigError, match="row count"):
            parse_chunk(bad)
    assert parse_chunk("5200w") == ("time", 5200 * 7 * 86400)
    with pytest.raises(ConfigError, match="at most 100 years"):  # used to overflow the window's dates
        parse_chunk("99999999999999w")


# -- scenarios with the real classifier -----------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> DemoClassifier:
    return train_demo_classifier(seed=0)


@pytest.fixture(scope="module")
def logs(demo: DemoClassifier, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("drift")
    return {
        "ref": simulate_score_log(demo, d / "ref.jsonl", n=20000, seed=1),
        "same": simulate_score_log(demo, d / "same.jsonl", n=3000, seed=2),
        "mix": simulate_score_log(demo, d / "mix.jsonl", n=3000, seed=3, positive_share=0.3),
        "app": simulate_score_log(demo, d / "app.jsonl", n=3000, seed=4, positive_share=0.3, shifted_surface="app"),
    }


def _read(p: Path) -> ScoreLog:
    return read_scores(p, strata=["surface"])


def test_the_demo_classifier_is_a_real_one(demo: DemoClassifier) -> None:
    from sklearn.metrics import roc_auc_score

    assert len(demo.texts) > 2000 and 0.1 < demo.positive_share < 0.2
    assert roc_auc_score(demo.truth, demo.scores) > 0.95
    assert demo.score(["WINNER!! Claim your free prize now, text WIN to 80086"])[0] > 0.5


def test_changed_mix_alerts_and_no_shift_does_not(logs: dict[str, Path]) -> None:
    ref = _read(logs["ref"])
    st = MonitorSettings(chunk=1000, thresholds={"spam": 0.5})
    same = monitor(_read(logs["same"]), ref, st)
    assert same.alerts == 0 and len(same.groups[0].chunks) == 3
    mix = monitor(_read(logs["mix"]), ref, st)
    chunks = mix.groups[0].chunks
    assert mix.alerts == 3 and all({"psi", "flag_rate"} <= set(c.alerts) for c in chunks)
    assert all(c.flag_rate_diff_ci95[0] > 0 and c.flag_rate_p < 1e-6 for c in chunks)
    # limits come from the reference chunks: flag rate two-sided, distances one-sided
    lo, hi = chunks[0].limits["flag_rate"]
    assert lo is not None and hi is not None and lo < chunks[0].ref_flag_rate < hi
    assert chunks[0].limits["psi"][0] is None


def test_small_chunks_data_driven_limits_do_not_cry_wolf(logs: dict[str, Path]) -> None:
    ref, same = _read(logs["ref"]), _read(logs["same"])
    const = monitor(same, ref, MonitorSettings(chunk=100, alerts="constant"))
    chunks = const.groups[0].chunks
    # no shift at all, yet PSI > 0.1 fires on many chunks of 100 rows (under no drift PSI is about
    # (1/n + 1/m) * chi2(bins - 1), mean 0.09 here) and the constant limits alert on most chunks
    assert len(chunks) == 30 and sum("psi" in c.alerts for c in chunks) >= 5 and const.alerts >= 15
    # limits from reference chunks of 100 rows: at most one false alarm in 30 chunks (5 statistics each)
    std = monitor(same, ref, MonitorSettings(chunk=100))
    assert std.alerts <= 1
    # the 99th percentile is a 1% false-alarm rate per statistic (and per side for the flag rate)
    assert monitor(same, ref, MonitorSettings(chunk=100, alerts="p99")).alerts <= 3
    # and they still see the shift at the same chunk size
    mix = monitor(_read(logs["mix"]), ref, MonitorSettings(chunk=100))
    assert mix.alerts >= 20


def test_shift_confined_to_one_stratum_is_found_there(logs: dict[str, Path]) -> None:
    rep = monitor(_read(logs["app"]), _read(logs["ref"]), MonitorSettings(chunk="1d", strata=["surface"]))
    by = {g.stratum: g for g in rep.groups}
    assert set(by) == {None, "surface=app", "surface=sms"}
    assert by["surface=app"].alerts == len(by["surface=app"].chunks) == 3
    assert by["surface=sms"].alerts == 0
    assert [c.start for c in by[None].chunks] == ["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"]
    assert by[None].chunks[1].end == "2026-11-03T00:00:00Z"


def test_too_small_reference_is_a_clear_error(logs: dict[str, Path], tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text("".join(logs["ref"].read_text().splitlines(keepends=True)[:3000]))
    ref = _read(small)
    with pytest.raises(InputError, match="reference has 3000 rows for label 'spam': too few for 10 chunks of 1000 rows"):
        monitor(_read(logs["same"]), ref, MonitorSettings(chunk=1000))
    assert monitor(_read(logs["same"]), ref, MonitorSettings(chunk=1000, alerts="constant")).groups[0].chunks
    with pytest.raises(InputError, match="no label 'hate'"):
        monitor(_read(logs["same"]), ref, MonitorSettings(chunk=1000, labels=["hate"]))
    with pytest.raises(ConfigError, match="unknown limit 'kl'"):
        monitor(_read(logs["same"]), ref, MonitorSettings(chunk=1000, alerts="constant", limits={"kl": 0.1}))


def test_cli_exit_codes_table_and_json(logs: dict[str, Path], tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(cli, ["monitor", str(logs["same"]), "-r", str(logs["ref"]), "-c", "1d", "--threshold", "spam=0.5"])
    assert r.exit_code == 0, r.output
    assert "2026-11-01T00:00:00" in r.output and "no alerts" in r.output
    r = run(cli, ["monitor", str(logs["mix"]), "-r", str(logs["ref"]), "-c", "1000", "-s", "surface", "--json"])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    # 3 chunks of all rows, 2 per surface (1000 and about 500 rows): every one alerts
    assert data["alerts"] == 7 and [g["stratum"] for g in data["groups"]] == [None, "surface=app", "surface=sms"]
    # a surface whose reference (about 10,000 rows) is short of 10 chunks of 1000 falls back on smaller reference chunks
    notes = [c["note"] for g in data["groups"][1:] for c in g["chunks"] if c["note"]]
    assert all("limits from reference chunks of" in n for n in notes)
    assert set(data["groups"][0]["chunks"][0]) >= {"psi", "js", "ks", "ks_p", "wasserstein", "flag_rate", "flag_rate_diff_ci95", "limits", "alerts"}
    r = run(cli, ["monitor", str(logs["same"]), "-r", str(logs["ref"]), "-c", "100", "--alerts", "constant", "--limit", "psi=0.25", "--limit", "js=1"])
    assert r.exit_code in (0, 1) and "constant limits psi 0.25, js 1" in r.output
    no_time = tmp_path / "nt.jsonl"
    no_time.write_text(json.dumps({"score_spam": 0.2}) + "\n")
    r = run(cli, ["monitor", str(no_time), "-r", str(logs["ref"]), "-c", "1d"])
    assert r.exit_code == 2 and "nt.jsonl:1: field 'timestamp': is missing" in r.output
    r = run(cli, ["monitor", str(logs["same"]), "-r", str(logs["ref"]), "-c", "1y"])
    assert r.exit_code == 2 and "time window" in r.output
    r = run(cli, ["monitor", str(logs["same"]), "-r", str(logs["ref"]), "-c", "10", "--limit", "psi"])
    assert r.exit_code == 2 and "NAME=VALUE" in r.output


# -- the benchmarks keep working (figures are not checked here) ----------------------------------


def test_bench_drift_and_monitor_scale_smoke() -> None:
    import subprocess
    import sys

    from .conftest import ROOT

    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_drift.py"), "--sizes", "300", "--trials", "10"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])["rows"][0]
    assert row["size"] == 300 and row["none_n"] == row["shift_n"] == 10
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_monitor_scale.py"), "--rows", "4000", "--chunk", "400"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["rows"] == 4000 and data["labels"] == 5 and data["tenth_rows"] == 400


def test_cli_messages_name_what_is_wrong(tmp_path: Path) -> None:
    """--verdicts on two score logs says SCORES is not a verdict log (not that REFERENCE is the
    odd one out); an unwritable --html names --html, not --output."""
    p = tmp_path / "s.jsonl"
    p.write_text("".join(json.dumps({"id": str(i), "score_spam": i * 37 % 100 / 100}) + "\n" for i in range(200)))
    r = CliRunner().invoke(cli, ["monitor", str(p), "-r", str(p), "-c", "20", "--verdicts"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"{p}: not a cotmod verdict log" in r.output and "--verdicts is for verdict logs" in r.output and "is one" not in r.output
    html = tmp_path / "missing" / "x.html"
    r = CliRunner().invoke(cli, ["monitor", str(p), "-r", str(p), "-c", "20", "--html", str(html)])
    assert r.exit_code == 2 and f"cannot write {html}" in r.output
    assert "choose another --html" in r.output and "--output" not in r.output


def test_verdict_logs_a_strata_field_no_verdict_has_is_warned_about(tmp_path: Path) -> None:
    from cotmod import Moderator, Settings
    from cotmod.testing import FakeBackend, decision

    with Moderator(backend=FakeBackend(default=decision({"spam_scams": []})), settings=Settings()) as m:
        template = m.moderate("hello", ["spam_scams"]).model_dump(mode="json")
    p = tmp_path / "verdicts.jsonl"
    p.write_text("".join(json.dumps({**template, "item_id": f"i{i}", "metadata": {"lang": "en"}}) + "\n" for i in range(100)))
    r = CliRunner().invoke(cli, ["monitor", str(p), "-r", str(p), "-c", "10", "-s", "metadata.lnag"])
    assert r.exit_code in (0, 1), r.output
    assert f"{p}: no row has a value for --strata metadata.lnag (a misspelling?)" in r.stderr
    r = CliRunner().invoke(cli, ["monitor", str(p), "-r", str(p), "-c", "10", "-s", "metadata.lang"])
    assert r.exit_code in (0, 1) and "--strata" not in r.stderr
