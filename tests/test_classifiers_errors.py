"""False positives and negatives at a classifier's thresholds, by band and stratum (cotmod classifier errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cotmod import InputError
from cotmod.classifiers import (
    EstimateSettings,
    classifier_errors,
    estimate_performance,
    load_classifier_bands,
    read_scores,
)
from cotmod.cli import cli

ROWS = [
    # id, score, truth, lang
    ("tp-auto", 0.95, 1, "en"),
    ("fp-auto", 0.92, 0, "en"),
    ("fp-auto-de", 0.97, 0, "de"),
    ("fp-review", 0.6, 0, "de"),
    ("tp-review", 0.7, 1, "en"),
    ("fn-1", 0.1, 1, "en"),
    ("fn-2", 0.3, 1, "de"),
    ("tn", 0.2, 0, "en"),
    ("unknown", 0.99, None, "en"),
]


def _log(tmp_path: Path) -> Path:
    p = tmp_path / "s.jsonl"
    p.write_text(
        "".join(json.dumps({"id": i, "score_spam": s, "label_spam": t, "lang": lang, "text": f"text of {i}"}) + "\n" for i, s, t, lang in ROWS)
    )
    return p


def _thresholds(tmp_path: Path, review: float = 0.5, auto: float | None = 0.9) -> Path:
    p = tmp_path / "th.yaml"
    p.write_text(yaml.safe_dump({"labels": {"spam": {"review": review, "auto_action": auto}}}))
    return p


def test_errors_by_band_and_stratum(tmp_path: Path) -> None:
    log = read_scores(_log(tmp_path), strata=["lang"], text_field="text")
    rep = classifier_errors(log, load_classifier_bands(_thresholds(tmp_path)), strata=["lang"])
    le = rep.labels[0]
    assert (le.known, le.unknown, le.fp, le.fn) == (8, 1, 3, 2)
    assert le.precision == pytest.approx(2 / 5) and le.recall == pytest.approx(2 / 4)
    got = {(g.kind, g.band, g.stratum): [it.id for it in g.items] for g in le.groups}
    assert got == {
        ("fp", "auto_action", None): ["fp-auto-de", "fp-auto"],  # most confident first
        ("fp", "auto_action", "lang=de"): ["fp-auto-de"],
        ("fp", "auto_action", "lang=en"): ["fp-auto"],
        ("fp", "human_review", None): ["fp-review"],
        ("fp", "human_review", "lang=de"): ["fp-review"],
        ("fn", "allow", None): ["fn-1", "fn-2"],  # lowest score first
        ("fn", "allow", "lang=de"): ["fn-2"],
        ("fn", "allow", "lang=en"): ["fn-1"],
    }
    g = next(g for g in le.groups if (g.kind, g.band, g.stratum) == ("fp", "auto_action", None))
    assert g.count == 2 and g.share == pytest.approx(2 / 3)
    assert g.items[0].text == "text of fp-auto-de" and g.items[0].line == 3 and g.items[0].strata == {"lang": "de"}


def test_without_auto_action_every_flagged_error_is_in_review(tmp_path: Path) -> None:
    log = read_scores(_log(tmp_path))
    rep = classifier_errors(log, {"spam": (0.5, None)}, per_group=1)
    bands = {(g.kind, g.band): (g.count, len(g.items)) for g in rep.labels[0].groups}
    assert bands == {("fp", "human_review"): (3, 1), ("fn", "allow"): (2, 1)}


def test_bad_thresholds_and_labels(tmp_path: Path) -> None:
    log = read_scores(_log(tmp_path))
    with pytest.raises(InputError, match="no threshold for label 'spam'"):
        classifier_errors(log, {}, labels=["spam"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"labels": {"spam": {"review": 0.8, "auto_action": 0.5}}}))
    with pytest.raises(InputError, match=r"labels.spam: auto_action \(0.5\) is below review \(0.8\)"):
        load_classifier_bands(bad)
    bad.write_text(yaml.safe_dump({"labels": {"spam": {"review": "high"}}}))
    with pytest.raises(InputError, match=r"labels\.spam\.review: expected a number from 0 to 1"):
        load_classifier_bands(bad)


def test_cli_errors_after_tune(tmp_path: Path) -> None:
    scores = _log(tmp_path)
    th = tmp_path / "tuned.yaml"
    run = CliRunner().invoke
    assert run(cli, ["classifier", "tune", str(scores), "-o", str(th), "--cost-fp", "1", "--cost-fn", "1"]).exit_code == 0
    r = run(cli, ["classifier", "errors", str(scores), "--thresholds", str(_thresholds(tmp_path)), "-s", "lang"])
    assert r.exit_code == 0, r.output
    assert "3 false positives, 2 false negatives" in r.output and "lang=de" in r.output and "text of fp-auto-de" in r.output
    r = run(cli, ["classifier", "errors", str(scores), "--thresholds", str(th), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["labels"][0]["label"] == "spam"
    # a stratum field the rows lack is a stratum of its own, not a silent drop
    r = run(cli, ["classifier", "errors", str(scores), "--thresholds", str(_thresholds(tmp_path)), "-s", "surface"])
    assert r.exit_code == 0 and "surface=(missing)" in r.output
    r = run(cli, ["classifier", "errors", str(scores), "--thresholds", str(scores)])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_thresholds_for_labels_the_log_does_not_have_are_errors(tmp_path: Path) -> None:
    """A typo in a label (LABEL=0.3, a thresholds file for another classifier, labels: {spam: 0.5})
    used to leave the real label at the default threshold, or print nothing, with exit 0."""
    scores = _log(tmp_path)
    run = CliRunner().invoke
    th = tmp_path / "th.yaml"
    th.write_text(yaml.safe_dump({"labels": {"other": {"review": 0.5}}}))
    r = run(cli, ["classifier", "errors", str(scores), "--thresholds", str(th)])
    assert r.exit_code == 2 and "no label of" in r.output and "thresholds for: other" in r.output
    th.write_text(yaml.safe_dump({"labels": {"spam": 0.5}}))
    r = run(cli, ["classifier", "errors", str(scores), "--thresholds", str(th)])
    assert r.exit_code == 2 and "labels.spam: expected {review: x, auto_action: y}, got 0.5" in r.output
    r = run(cli, ["monitor", str(scores), "-r", str(scores), "-c", "2", "--threshold", "other=0.3"])
    assert r.exit_code == 2 and "threshold for label 'other'" in r.output and "Traceback" not in r.output
    log = read_scores(scores)
    with pytest.raises(InputError, match="threshold for label 'other'"):
        estimate_performance(log, log, EstimateSettings(chunk=2, thresholds={"other": 0.3}))


def test_a_strata_field_no_row_has_is_warned_about(tmp_path: Path) -> None:
    """A misspelled --strata field groups every row under (missing): one line names it (the
    command still runs: a field some rows lack is a stratum of its own). estimate does not group
    by stratum: it has no --strata to mistype."""
    scores = _log(tmp_path)
    th = str(_thresholds(tmp_path))
    run = CliRunner().invoke
    r = run(cli, ["classifier", "errors", str(scores), "--thresholds", th, "-s", "lnag", "-s", "lang"])
    assert r.exit_code == 0, r.output
    assert f"{scores}: no row has a value for --strata lnag (a misspelling?): every row is grouped under (missing)" in r.stderr
    assert "--strata lang " not in r.stderr and "lang=de" in r.stdout
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"id": str(i), "score_spam": i * 37 % 100 / 100, "lang": "en" if i % 2 else "de"}) + "\n" for i in range(200)))
    r = run(cli, ["monitor", str(big), "-r", str(big), "-c", "20", "-s", "lnag"])
    assert r.exit_code == 0, r.output
    assert f"{big}: no row has a value for --strata lnag (a misspelling?)" in r.stderr
    r = run(cli, ["monitor", str(big), "-r", str(big), "-c", "20", "-s", "lang"])
    assert r.exit_code == 0 and "--strata" not in r.stderr
    r = run(cli, ["classifier", "estimate", str(scores), "--calibration", str(scores), "-c", "3", "-s", "lang"])
    assert r.exit_code == 2 and "No such option" in r.output
