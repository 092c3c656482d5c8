"""Score logs of ML classifiers: cotmod.classifiers.read_scores and its errors."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cotmod import InputError
from cotmod.classifiers import MISSING_STRATUM, parse_timestamp, read_scores
from cotmod.cli import cli


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_wide_columns_and_maps_read_the_same(tmp_path: Path) -> None:
    wide = _jsonl(
        tmp_path / "wide.jsonl",
        [
            {"id": "a", "timestamp": "2026-11-01T10:00:00Z", "score_spam": 0.9, "score_hate": 0.1, "label_spam": 1, "label_hate": None, "lang": "en"},
            {"id": "b", "timestamp": 1793527200, "score_spam": 0.2, "score_hate": 0.7, "label_spam": 0, "label_hate": 1},
        ],
    )
    mapped = _jsonl(
        tmp_path / "map.jsonl",
        [
            {"id": "a", "timestamp": "2026-11-01T10:00:00+00:00", "scores": {"spam": 0.9, "hate": 0.1}, "labels": {"spam": 1}, "lang": "en"},
            {"id": "b", "timestamp": 1793527200000, "scores": {"spam": 0.2, "hate": 0.7}, "labels": {"spam": 0, "hate": 1}},
        ],
    )
    a, b = read_scores(wide, strata=["lang"]), read_scores(mapped, strata=["lang"])
    for log in (a, b):
        assert log.labels == ("spam", "hate") and log.ids == ["a", "b"] and list(log.lines) == [1, 2]
        assert list(log.scores["spam"]) == [0.9, 0.2] and list(log.scores["hate"]) == [0.1, 0.7]
        assert list(log.truth["spam"]) == [1, 0] and list(log.truth["hate"]) == [-1, 1]
        assert log.strata["lang"] == ["en", MISSING_STRATUM]
        assert log.timestamps is not None
        assert log.timestamps[1] == 1793527200.0  # epoch seconds, and milliseconds above 1e11
    assert a.timestamps is not None and a.timestamps[0] == parse_timestamp("2026-11-01T10:00:00Z")


def test_csv_gz_with_unknown_truth_and_label_selection(tmp_path: Path) -> None:
    p = tmp_path / "s.csv.gz"
    with gzip.open(p, "wt", encoding="utf-8", newline="") as f:
        f.write("id,timestamp,score_spam,score_hate,label_spam,text\n")
        f.write("x,2026-11-01 10:00:00,0.5,0.25,,hello\n")
        f.write(",2026-11-01T11:00:00,1,0,true,\n")
    log = read_scores(p, labels=["spam"], text_field="text")
    assert log.labels == ("spam",) and "hate" not in log.scores
    assert list(log.truth["spam"]) == [-1, 1] and log.ids == ["x", "line-3"]  # no id: line-N
    assert log.texts == ["hello", ""]
    assert not read_scores(p, labels=["hate"]).has_truth("hate")


def test_timestamps_are_optional_unless_asked_for(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "s.jsonl", [{"score_spam": 0.1}, {"score_spam": 0.2}])
    assert read_scores(p).timestamps is None
    with pytest.raises(InputError, match=r"s.jsonl:1: field 'timestamp': is missing"):
        read_scores(p, require_timestamps=True)


def test_iso_and_epoch_parsing() -> None:
    assert parse_timestamp("1970-01-02T00:00:00Z") == 86400.0
    assert parse_timestamp("1970-01-02") == 86400.0  # no zone: UTC
    assert parse_timestamp("1970-01-02T01:00:00+01:00") == 86400.0
    assert parse_timestamp("86400") == 86400.0
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_timestamp("yesterday")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"score_spam": 0.1}, {"score_spam": 1.5}], r":2: field 'score_spam': expected a number from 0 to 1, got 1.5"),
        ([{"score_spam": 0.1}, {"score_spam": math.nan}], r":2: field 'score_spam': expected a number from 0 to 1, got nan"),
        ([{"score_spam": 0.1}, {"score_spam": "high"}], r":2: field 'score_spam': expected a number from 0 to 1, got 'high'"),
        ([{"score_spam": 0.1}, {"score_hate": 0.2}], r":2: field 'score_hate': unknown label 'hate'"),
        ([{"score_spam": 0.1, "score_hate": 0.1}, {"score_spam": 0.2}], r":2: field 'score_hate': is missing"),
        ([{"scores": {"spam": 0.1}}, {"scores": {"spam": None}}], r":2: field 'scores.spam': is null"),
        ([{"scores": [0.1]}], r":1: field 'scores': expected a map"),
        ([{"score_spam": 0.1, "label_spam": 2}], r":1: field 'label_spam': expected 1, 0 or empty \(unknown\), got 2"),
        ([{"score_spam": 0.1, "labels": {"spam": "maybe"}}], r":1: field 'labels.spam': expected 1, 0 or empty"),
        ([{"score_spam": 0.1, "timestamp": "2026-11-01"}, {"score_spam": 0.1}], r":2: field 'timestamp': is missing"),
        ([{"score_spam": 0.1, "timestamp": "soon"}], r":1: field 'timestamp': expected ISO 8601"),
        ([{"id": "no scores"}], r":1: field 'scores': no scores"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, rows: list[dict[str, object]], message: str) -> None:
    p = tmp_path / "s.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_scores(p)


def test_asked_for_label_missing_and_empty_file(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "s.jsonl", [{"score_spam": 0.1}])
    with pytest.raises(InputError, match=r"no score for label\(s\) 'hate' \(labels here: spam\)"):
        read_scores(p, labels=["hate"])
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no rows"):
        read_scores(empty)


def test_select_keeps_columns_aligned(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "s.jsonl", [{"id": str(i), "score_spam": i / 10, "g": "ab"[i % 2]} for i in range(6)])
    log = read_scores(p, strata=["g"])
    sub = log.select(np.asarray(log.strata["g"]) == "b")
    assert sub.ids == ["1", "3", "5"] and list(sub.lines) == [2, 4, 6] and list(sub.scores["spam"]) == [0.1, 0.3, 0.5]


def test_cli_bad_score_is_one_line_exit_2(tmp_path: Path) -> None:
    ref = _jsonl(tmp_path / "ref.jsonl", [{"score_spam": 0.1}] * 3)
    bad = _jsonl(tmp_path / "bad.jsonl", [{"score_spam": 0.1}, {"score_spam": -0.1}])
    r = CliRunner().invoke(cli, ["monitor", str(bad), "-r", str(ref), "-c", "10"])
    assert r.exit_code == 2
    assert "bad.jsonl:2: field 'score_spam': expected a number from 0 to 1, got -0.1" in r.output
    assert "Traceback" not in r.output


def test_parquet_with_native_timestamps(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from datetime import datetime, timezone

    t = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
    table = pa.table({"id": ["a", "b"], "timestamp": [t, t], "score_spam": [0.25, 0.75], "label_spam": [None, 1], "lang": ["en", None]})
    p = tmp_path / "s.parquet"
    pq.write_table(table, p)
    log = read_scores(p, strata=["lang"])
    assert log.timestamps is not None and list(log.timestamps) == [t.timestamp()] * 2
    assert list(log.scores["spam"]) == [0.25, 0.75] and list(log.truth["spam"]) == [-1, 1]
    assert log.strata["lang"] == ["en", MISSING_STRATUM] and list(log.lines) == [1, 2]
