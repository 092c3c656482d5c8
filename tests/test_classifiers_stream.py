"""Streaming drift monitoring (monitor_stream, cotmod monitor) and lenient reads of bad score logs."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from cotmod import InputError
from cotmod.classifiers import MonitorSettings, monitor, monitor_stream, read_scores
from cotmod.classifiers._demo import DemoClassifier, simulate_score_log, train_demo_classifier
from cotmod.classifiers._drift import SortedReference
from cotmod.cli import cli

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _to_parquet(src: Path, dst: Path) -> Path:
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    cols: dict[str, Any] = {k: [r.get(k) for r in rows] for k in rows[0]}
    if "timestamp" in cols:  # native timestamps, as a warehouse export has them
        cols["timestamp"] = pa.array([datetime.fromisoformat(t.replace("Z", "+00:00")) for t in cols["timestamp"]])
    pq.write_table(pa.table(cols), dst)
    return dst


@pytest.fixture(scope="module")
def demo() -> DemoClassifier:
    return train_demo_classifier(seed=0)


@pytest.fixture(scope="module")
def logs(demo: DemoClassifier, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stream")
    app = simulate_score_log(demo, d / "app.jsonl", n=3000, seed=4, positive_share=0.3, shifted_surface="app")
    return {
        "ref": simulate_score_log(demo, d / "ref.jsonl", n=20000, seed=1),
        "app": app,
        "app_parquet": _to_parquet(app, d / "app.parquet"),
    }


def _same(a: Any, b: Any) -> None:
    da, db = a.model_dump(), b.model_dump()
    assert db["rows"] == sum(g["n"] for g in db["groups"] if g["stratum"] is None) // len({g["label"] for g in db["groups"]})
    da["rows"] = db["rows"] = None
    da["source"] = db["source"] = None
    assert da == db


# -- the statistics on a sorted reference ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["continuous", "ties", "rounded"])
def test_sorted_reference_matches_scipy(kind: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        n, m = int(rng.integers(1, 2500)), int(rng.integers(1, 2500))
        if kind == "continuous":
            ref, cur = rng.random(n), rng.random(m) * rng.random()
        elif kind == "ties":
            ref, cur = rng.integers(0, 5, n) / 4, rng.integers(0, 7, m) / 6
        else:
            ref, cur = rng.beta(2, 5, n).round(2), rng.beta(3, 5, m).round(3)
        sr = SortedReference(ref)
        ks, w = sr.ks_wasserstein(cur)
        expect = stats.ks_2samp(ref, cur)
        assert ks == pytest.approx(expect.statistic, abs=1e-12)
        assert sr.ks_pvalue(ks, cur) == pytest.approx(expect.pvalue, abs=1e-12)
        assert w == pytest.approx(stats.wasserstein_distance(ref, cur), abs=1e-12)


def test_large_samples_use_the_asymptotic_p_value_as_scipy() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.beta(2, 5, 30000), rng.beta(2.05, 5, 12000)
    sr = SortedReference(ref)
    ks, _ = sr.ks_wasserstein(cur)
    assert sr.ks_pvalue(ks, cur) == pytest.approx(stats.ks_2samp(ref, cur).pvalue, rel=1e-9)


# -- streaming gives the in-memory report ----------------------------------------------------------


@pytest.mark.parametrize("chunk", [1000, 333, "1d", "6h"])
@pytest.mark.parametrize("source", ["app", "app_parquet"])
def test_stream_equals_in_memory(logs: dict[str, Path], chunk: str | int, source: str) -> None:
    ref = read_scores(logs["ref"], strata=["surface"])
    st = MonitorSettings(chunk=chunk, strata=["surface"])
    expect = monitor(read_scores(logs["app"], strata=["surface"]), ref, st)
    assert expect.alerts > 0
    for batch_rows in (37, 65536):  # chunks spanning many batches, and one batch holding all
        _same(expect, monitor_stream(logs[source], ref, st, batch_rows=batch_rows))


def test_rows_out_of_order_within_a_chunk_are_fine_beyond_it_an_error(logs: dict[str, Path], tmp_path: Path) -> None:
    ref = read_scores(logs["ref"])
    rows = [json.loads(line) for line in logs["app"].read_text().splitlines()]
    # swap rows across the first midnight (lines 1000 and 1001): one window out of order
    rows[999], rows[1000] = rows[1000], rows[999]
    p = _jsonl(tmp_path / "swapped.jsonl", rows)
    st = MonitorSettings(chunk="1d")
    _same(monitor(read_scores(p), ref, st), monitor_stream(p, ref, st, batch_rows=100))
    # a row from day 1 after rows of day 3: its chunk is already closed
    late = [*rows[:2500], rows[5], *rows[2500:]]
    p = _jsonl(tmp_path / "late.jsonl", late)
    with pytest.raises(InputError, match=r"late.jsonl:2501: field 'timestamp': 2026-11-01T00:07:12Z falls in a chunk already closed"):
        monitor_stream(p, ref, st)
    rep = monitor_stream(p, ref, st, skip_bad_rows=True)
    assert rep.rows_skipped == 1 and rep.skipped_rows[0].line == 2501 and rep.rows == 3000


def test_count_chunks_fail_early_when_the_reference_is_too_small(logs: dict[str, Path], tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text("".join(logs["ref"].read_text().splitlines(keepends=True)[:3000]))
    with pytest.raises(InputError, match="reference has 3000 rows for label 'spam': too few for 10 chunks of 1000 rows"):
        monitor_stream(logs["app"], read_scores(small), MonitorSettings(chunk=1000))


# -- bad rows: strict (one clear error) or lenient (counted, reported) ------------------------------


def _bad_log(tmp_path: Path) -> Path:
    rows: list[Any] = [{"id": f"r{i}", "timestamp": 1793527200 + i, "score_spam": (i % 10) / 10, "label_spam": i % 2} for i in range(40)]
    rows[3]["score_spam"] = 1.5
    rows[7]["score_spam"] = float("nan")
    rows[11]["timestamp"] = None
    rows[15]["label_spam"] = 3
    return _jsonl(tmp_path / "bad.jsonl", rows)


EXPECTED_BAD = {
    4: "bad.jsonl:4: field 'score_spam': expected a number from 0 to 1, got 1.5",
    8: "bad.jsonl:8: field 'score_spam': expected a number from 0 to 1, got nan",
    12: "bad.jsonl:12: field 'timestamp': is missing (rows must all have a timestamp, or none)",
    16: "bad.jsonl:16: field 'label_spam': expected 1, 0 or empty (unknown), got 3",
}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_bad_rows_strict_and_lenient(tmp_path: Path, fmt: str) -> None:
    p = _bad_log(tmp_path)
    if fmt == "parquet":
        rows = [json.loads(line) for line in p.read_text().splitlines()]
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        p = tmp_path / "bad.parquet"
        pq.write_table(pa.table(cols), p)
    name = p.name
    with pytest.raises(InputError, match=rf"{name}:4: field 'score_spam': expected a number from 0 to 1, got 1.5"):
        read_scores(p)
    ref = read_scores(_jsonl(tmp_path / "ref.jsonl", [{"score_spam": (i % 10) / 10, "timestamp": 0} for i in range(400)]))
    st = MonitorSettings(chunk=10)
    with pytest.raises(InputError, match=rf"{name}:4: field 'score_spam'"):
        monitor_stream(p, ref, st)
    log = read_scores(p, skip_bad_rows=True)
    rep = monitor_stream(p, ref, st, skip_bad_rows=True, batch_rows=7)
    for got in (log.skipped_rows, rep.skipped_rows):
        assert {r.line: r.reason.split(str(tmp_path) + "/")[-1] for r in got} == {
            k: v.replace("bad.jsonl", name) for k, v in EXPECTED_BAD.items()
        }
    assert log.skipped == rep.rows_skipped == 4 and len(log) == rep.rows == 36
    assert 4 not in set(log.lines)
    _same(monitor(log, ref, st), rep)


def test_unreadable_lines_are_counted_not_dropped(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_text('{"score_spam": 0.1}\n{not json\n[1, 2]\n{"score_spam": 0.3}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"s.jsonl:2: invalid JSON"):
        read_scores(p)
    log = read_scores(p, skip_bad_rows=True)
    assert len(log) == 2 and log.skipped == 2
    assert [r.line for r in log.skipped_rows] == [2, 3] and "expected a JSON object" in log.skipped_rows[1].reason
    only_bad = _jsonl(tmp_path / "b.jsonl", [{"score_spam": 2}])
    with pytest.raises(InputError, match=r"no usable rows \(1 skipped\)"):
        read_scores(only_bad, skip_bad_rows=True)


def test_cli_skip_bad_rows_reports_and_exits_1(tmp_path: Path) -> None:
    p = _bad_log(tmp_path)
    ref = _jsonl(tmp_path / "ref.jsonl", [{"score_spam": (i % 10) / 10, "timestamp": 0} for i in range(400)])
    run = CliRunner().invoke
    r = run(cli, ["monitor", str(p), "-r", str(ref), "-c", "10"])
    assert r.exit_code == 2 and "bad.jsonl:4: field 'score_spam': expected a number from 0 to 1, got 1.5" in r.output
    r = run(cli, ["monitor", str(p), "-r", str(ref), "-c", "10", "--skip-bad-rows"])
    assert r.exit_code == 1, r.output
    assert "4 row(s) skipped" in r.output
    for msg in EXPECTED_BAD.values():
        assert msg in r.output
    r = run(cli, ["monitor", str(p), "-r", str(ref), "-c", "10", "--skip-bad-rows", "--json"])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["rows_skipped"] == 4 and data["rows"] == 36 and len(data["skipped_rows"]) == 4
