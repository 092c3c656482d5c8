"""cotmod monitor on cotmod's own verdict logs: the error rate, tokens per verdict, and per policy the
violation rate, each rule's firing rate, score and confidence, with the classifier monitor's drift
statistics, alerts and exit codes. Logs come from the real batch runner (with a scripted backend);
the long ones for drift repeat the runner's own verdict lines with a known shift, or none."""

from __future__ import annotations

import copy
import json
import math
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cotmod import AsyncModerator, ConfigError, InputError
from cotmod.batch import Runner
from cotmod.classifiers import (
    MonitorSettings,
    VerdictMonitorReport,
    is_verdict_log,
    monitor_verdicts,
    read_verdict_log,
)
from cotmod.cli import cli
from cotmod.testing import FakeBackend, decision

POLICIES = ["hate_speech", "spam_scams"]
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _respond(req: Any) -> Any:
    text = req.messages[-1]["content"]
    if "GARBAGE" in text:
        return "this is not JSON"
    required = req.schema["properties"]["decisions"]["required"]
    return decision({pid: (["HATE-1"] if pid == "hate_speech" else ["SCAM-1"]) if "VIOLATE" in text else [] for pid in required})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `cotmod run`: 40 items (every 4th violates, 3 get invalid model output), one bad row."""
    d = tmp_path_factory.mktemp("run")
    inp = d / "in.jsonl"
    with inp.open("w") as f:
        for i in range(40):
            text = ("VIOLATE " if i % 4 == 0 else "") + ("GARBAGE " if i in (5, 17, 30) else "") + f"post {i}"
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
        f.write("{not json\n")
    out = d / "out.jsonl"
    mod = AsyncModerator(backend=FakeBackend(default=_respond), concurrency=2, max_reasks=0)
    s = Runner(mod).run_sync(inp, out, policies=POLICIES)
    assert s.dead_lettered == 4
    return out


def test_reads_a_runner_log_with_its_dead_letters(run: Path) -> None:
    assert is_verdict_log(run) and not is_verdict_log(run.with_name("in.jsonl"))
    log = read_verdict_log(run)
    assert log.verdicts == 37 and log.dead_letters == 3 and log.input_problems == 1 and log.has_time
    assert any("1 dead letter(s) of input problems" in n for n in log.notes)
    rep = monitor_verdicts(log, log, MonitorSettings(chunk=4, alerts="constant"))
    by = {g.label: g for g in rep.groups}
    names = [s.name for s in rep.series]
    assert names == [
        "error", "tokens",
        "violates:hate_speech", "rule:HATE-1", "score:hate_speech", "confidence:hate_speech",
        "violates:spam_scams", "rule:SCAM-1", "score:spam_scams", "confidence:spam_scams",
    ]
    assert {s.name: s.kind for s in rep.series}["tokens"] == "value" and {s.name: s.kind for s in rep.series}["rule:HATE-1"] == "rate"
    # error: every verdict and every failed item; the flag rate is the error rate
    assert by["error"].n == 40 and by["error"].ref_flag_rate == pytest.approx(3 / 40)
    # violation rate among the 37 decided verdicts: items 0, 4, ..., 36 (10 of them)
    assert by["violates:hate_speech"].n == 37 and by["violates:hate_speech"].ref_flag_rate == pytest.approx(10 / 37)
    assert by["rule:SCAM-1"].ref_flag_rate == pytest.approx(10 / 37)
    # the dead letters sit at the verdict-file line of the verdict written before them
    lines = [(c.first_line, c.last_line) for c in by["error"].chunks]
    assert lines[0][0] >= 1 and all(a <= b for a, b in lines) and max(b for _, b in lines) == 37


# -- long logs with a known shift, or none ----------------------------------------------------------


def _templates(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    lines = [json.loads(x) for x in run.read_text().splitlines()]
    bad = next(v for v in lines if v["violates"])
    good = next(v for v in lines if not v["violates"])
    return bad, good


def write_log(
    run: Path, path: Path, *, n: int, violate: float, error: float = 0.02, tokens: float = 800.0, seed: int,
    start: datetime = T0, step_s: float = 10.0, with_time: bool = True, region: str | None = None,
) -> Path:
    """``n`` items (verdict lines repeating the runner's own, dead letters for failed items) every ``step_s``."""
    rng = random.Random(seed)
    bad, good = _templates(run)
    dead: list[str] = []
    with path.open("w") as f:
        for i in range(n):
            t = (start + timedelta(seconds=i * step_s)).isoformat()
            if rng.random() < error:
                dead.append(json.dumps({"id": f"s{seed}-{i}", "line": i + 1, "error_type": "ModelOutputError", "message": "invalid output",
                                        "raw_output": "x", "attempts": 1, "retryable": True, "input": "in.jsonl", "at": t}))
                continue
            v = copy.deepcopy(bad if rng.random() < violate else good)
            v["item_id"] = f"s{seed}-{i}"
            v["created_at"] = t
            total = max(1, round(rng.gauss(tokens, 60)))
            v["usage"] = {"prompt_tokens": total - 100, "completion_tokens": 100, "total_tokens": total, "cached_prompt_tokens": 0}
            v["metadata"] = {"region": region or rng.choice(["eu", "us"]), "ts": t}
            if not with_time:
                del v["created_at"]
            f.write(json.dumps(v) + "\n")
    if dead:
        path.with_suffix(".errors.jsonl").write_text("\n".join(dead) + "\n")
    return path


@pytest.fixture(scope="module")
def logs(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("verdict-logs")
    later = T0 + timedelta(days=2)
    return {
        "ref": write_log(run, d / "ref.jsonl", n=6000, violate=0.1, seed=1),
        "same": write_log(run, d / "same.jsonl", n=1500, violate=0.1, seed=2, start=later),
        # the violation rate goes from 10% to 25% and tokens per item from 800 to 900
        "shift": write_log(run, d / "shift.jsonl", n=1500, violate=0.25, tokens=900, seed=3, start=later),
    }


def test_known_shift_alerts_on_the_violation_and_rule_rates_and_no_shift_does_not(logs: dict[str, Path]) -> None:
    ref = read_verdict_log(logs["ref"])
    st = MonitorSettings(chunk=500)
    same = monitor_verdicts(read_verdict_log(logs["same"]), ref, st)
    assert same.alerts == 0 and len(same.groups) == 10 and all(len(g.chunks) == 3 for g in same.groups if g.label != "error")
    shift = monitor_verdicts(read_verdict_log(logs["shift"]), ref, st)
    by = {g.label: g for g in shift.groups}
    for name in ("violates:hate_speech", "rule:HATE-1", "violates:spam_scams", "rule:SCAM-1"):
        assert all("flag_rate" in c.alerts and c.flag_rate_diff_ci95[0] > 0.05 for c in by[name].chunks), name
    assert all("wasserstein" in c.alerts for c in by["tokens"].chunks)  # 100 more tokens per item
    assert by["error"].alerts == 0
    # a value series has no operating threshold: NaN here, None in the dump, never a flag-rate alert
    tok = by["tokens"]
    assert math.isnan(tok.threshold) and tok.ref_flag_rate is None and math.isnan(tok.chunks[0].flag_rate)
    assert "flag_rate" not in tok.chunks[0].limits
    data = shift.model_dump(mode="json")
    dtok = next(g for g in data["groups"] if g["label"] == "tokens")
    assert dtok["threshold"] is None and dtok["chunks"][0]["flag_rate"] is None and dtok["chunks"][0]["flag_rate_diff_ci95"] is None
    assert json.loads(json.dumps(data, allow_nan=False)) == data  # strict JSON: no NaN anywhere
    assert isinstance(shift, VerdictMonitorReport) and shift.verdicts + shift.dead_letters == 1500


def test_time_chunks_strata_and_selection(logs: dict[str, Path]) -> None:
    ref = read_verdict_log(logs["ref"], strata=["region"])
    cur = read_verdict_log(logs["shift"], strata=["region"])
    rep = monitor_verdicts(cur, ref, MonitorSettings(chunk="1h", strata=["region"], labels=["violates", "error"]))
    assert [(g.label, g.stratum) for g in rep.groups] == [
        # dead letters carry no item metadata: their stratum is "(missing)"
        ("error", None), ("error", "region=(missing)"), ("error", "region=eu"), ("error", "region=us"),
        ("violates:hate_speech", None), ("violates:hate_speech", "region=eu"), ("violates:hate_speech", "region=us"),
        ("violates:spam_scams", None), ("violates:spam_scams", "region=eu"), ("violates:spam_scams", "region=us"),
    ]
    # 1500 items every 10 s from midnight: 1h windows of 360 items, the last one partial
    g = rep.groups[4]
    assert [c.start for c in g.chunks][:2] == ["2026-11-03T00:00:00Z", "2026-11-03T01:00:00Z"] and len(g.chunks) == 5
    assert g.alerts >= 4
    with pytest.raises(InputError, match="no verdict series 'nope'"):
        monitor_verdicts(cur, ref, MonitorSettings(chunk=500, labels=["nope"]))
    with pytest.raises(ConfigError, match="no operating threshold"):
        monitor_verdicts(cur, ref, MonitorSettings(chunk=500, thresholds={"error": 0.3}))
    only = monitor_verdicts(cur, ref, MonitorSettings(chunk=500, labels=["spam_scams"]))
    assert [g.label for g in only.groups] == ["violates:spam_scams", "rule:SCAM-1", "score:spam_scams", "confidence:spam_scams"]


def test_without_timestamps_only_count_chunks_and_dead_letters_are_reported(run: Path, tmp_path: Path) -> None:
    ref = write_log(run, tmp_path / "ref.jsonl", n=3000, violate=0.1, seed=4, with_time=False)
    cur = write_log(run, tmp_path / "cur.jsonl", n=600, violate=0.1, seed=5, with_time=False)
    log = read_verdict_log(cur)
    assert not log.has_time and log.dead_letters == 0 and log.unplaced > 0
    assert any("could not be placed in time (the verdicts carry no timestamp)" in n for n in log.notes)
    rep = monitor_verdicts(log, read_verdict_log(ref), MonitorSettings(chunk=200))
    assert rep.groups[0].label == "error" and rep.groups[0].n == log.verdicts
    with pytest.raises(InputError, match=r"cur\.jsonl:1: field 'created_at' is missing: chunking by time needs a timestamp on every verdict"):
        read_verdict_log(cur, require_timestamps=True)
    with pytest.raises(InputError, match="chunking by time needs a timestamp on every verdict, and these carry none"):
        monitor_verdicts(log, read_verdict_log(ref), MonitorSettings(chunk="1d"))
    # an item timestamp in the metadata: the dead letters (no metadata) cannot be placed
    meta = read_verdict_log(tmp_path / "ref.jsonl", time_field="metadata.ts")
    assert meta.has_time and meta.unplaced > 0 and any("they carry no 'metadata.ts'" in n for n in meta.notes)


def test_bad_lines_name_file_line_and_field_and_a_torn_last_line_is_left_out(run: Path, tmp_path: Path) -> None:
    lines = run.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    v = json.loads(lines[1])
    v["usage"] = {"total_tokens": "many"}
    bad.write_text(lines[0] + "\n" + json.dumps(v) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not a cotmod verdict \(field 'usage\.total_tokens'"):
        read_verdict_log(bad)
    mixed = tmp_path / "mixed.jsonl"
    v = json.loads(lines[1])
    del v["created_at"]
    mixed.write_text(lines[0] + "\n" + json.dumps(v) + "\n")
    with pytest.raises(InputError, match=r"mixed\.jsonl:2: field 'created_at' is missing \(verdicts must all have a timestamp, or none\)"):
        read_verdict_log(mixed)
    live = tmp_path / "live.jsonl"
    live.write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])  # a run still writing its sixth verdict
    log = read_verdict_log(live)
    assert log.verdicts == 5 and any("live.jsonl:6: the last line is incomplete" in n for n in log.notes)


def test_cli_detects_verdict_logs_exit_codes_json_and_html(logs: dict[str, Path], tmp_path: Path) -> None:
    run_cli = CliRunner().invoke
    r = run_cli(cli, ["monitor", str(logs["same"]), "-r", str(logs["ref"]), "-c", "500"])
    assert r.exit_code == 0, r.output
    head = re.match(r"(\d+) verdicts and (\d+) dead letters of failed items; reference (\d+) verdicts and (\d+) dead letters\n", r.output)
    assert head and int(head[1]) + int(head[2]) == 1500 and int(head[3]) + int(head[4]) == 6000 and "no alerts" in r.output
    assert re.search(r"tokens: \d+ rows, reference \d+\n", r.output)  # no threshold line for a value series
    page = tmp_path / "v.html"
    r = run_cli(cli, ["monitor", str(logs["shift"]), "-r", str(logs["ref"]), "-c", "500", "--verdicts", "--json", "--html", str(page)])
    assert r.exit_code == 1, r.output
    data = json.loads(r.stdout)
    assert data["input"] == "verdicts" and data["alerts"] >= 12
    assert {s["name"]: s["kind"] for s in data["series"]}["violates:hate_speech"] == "rate"
    html = page.read_text(encoding="utf-8")
    # rates get five plots (with the flag rate); value series four
    for gi, g in enumerate(data["groups"]):
        stats = re.findall(rf'<svg class="plot" data-group="{gi}" data-stat="(\w+)"', html)
        assert ("flag_rate" in stats) == (g["label"] in ("error",) or g["label"].startswith(("violates:", "rule:"))), g["label"]
        assert len(stats) in (4, 5)
    assert "firing rate of rule HATE-1 (hate_speech)" in html
    r = run_cli(cli, ["monitor", str(logs["same"]), "-r", str(logs["ref"]), "-c", "500", "--threshold", "0.7"])
    assert r.exit_code == 2 and "no operating threshold" in r.output
    r = run_cli(cli, ["monitor", str(logs["same"]), "-r", str(logs["ref"]), "-c", "500", "--skip-bad-rows"])
    assert r.exit_code == 2 and "--skip-bad-rows is for score logs" in r.output
    scores = tmp_path / "scores.jsonl"
    scores.write_text(json.dumps({"score_spam": 0.2}) + "\n")
    r = run_cli(cli, ["monitor", str(logs["same"]), "-r", str(scores), "-c", "500"])
    assert r.exit_code == 2 and "scores.jsonl: not a cotmod verdict log" in r.output
    r = run_cli(cli, ["monitor", str(scores), "-r", str(logs["ref"]), "-c", "500"])
    assert r.exit_code == 2 and "ref.jsonl: a cotmod verdict log, but" in r.output
    # an explicit --time-field is honoured (the item's time in its metadata)
    r = run_cli(cli, ["monitor", str(logs["shift"]), "-r", str(logs["ref"]), "-c", "1h", "--time-field", "metadata.ts", "-l", "violates:spam_scams", "--json"])
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["groups"][0]["chunks"][0]["start"] == "2026-11-03T00:00:00Z"


def test_a_constant_series_does_not_alert_on_rounding_noise() -> None:
    # A stated confidence that never changes (0.9 on every verdict): the reference chunks' spread is
    # exactly 0, and scipy's Wasserstein of two equal constant samples is ~1e-14, not 0; that must
    # not read as drift (it alerted on every chunk before the limits got a rounding tolerance).
    import numpy as np

    from cotmod.classifiers import ScoreLog, monitor

    def log(n: int) -> ScoreLog:
        return ScoreLog(path="c.jsonl", labels=("c",), ids=[str(i) for i in range(n)], lines=np.arange(1, n + 1),
                        scores={"c": np.full(n, 0.9)}, truth={"c": np.full(n, -1, dtype=np.int8)})

    rep = monitor(log(1500), log(6000), MonitorSettings(chunk=500))
    c = rep.groups[0].chunks[0]
    assert c.limits["wasserstein"] == (None, 0.0) and rep.alerts == 0
