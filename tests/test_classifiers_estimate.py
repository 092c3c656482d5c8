"""Performance without labels (cotmod classifier estimate), on the real demo spam classifier: scores
calibrated on one half of its held-out items, logs drawn from the other half with and without a
known change in the mix of items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cotmod import ConfigError, InputError
from cotmod.classifiers import EstimateSettings, estimate_performance, read_scores
from cotmod.classifiers._demo import DemoClassifier, train_demo_classifier
from cotmod.classifiers._estimate import estimate_chunk
from cotmod.cli import cli


@pytest.fixture(scope="module")
def demo() -> DemoClassifier:
    return train_demo_classifier(seed=0, test_size=0.6)


def _write(demo: DemoClassifier, path: Path, idx: np.ndarray, truth: bool = True) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, j in enumerate(idx):
            row = {"id": f"r{i}", "score_spam": round(float(demo.scores[j]), 6)}
            if truth:
                row["label_spam"] = int(demo.truth[j])
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def logs(demo: DemoClassifier, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("estimate")
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(demo.scores))
    cal, pool = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    s = demo.scores[pool]
    # a known mix shift: a source with 30x more borderline items (score 0.1-0.9); the items
    # themselves are unchanged, so P(spam | score) is too (covariate shift)
    w = np.where((s > 0.1) & (s < 0.9), 30.0, 1.0)
    return {
        "cal": _write(demo, d / "cal.jsonl", cal),
        "base": _write(demo, d / "base.jsonl", rng.choice(pool, size=20000)),
        "shift": _write(demo, d / "shift.jsonl", rng.choice(pool, size=20000, p=w / w.sum())),
    }


def test_estimates_track_realized_values_under_a_mix_shift(logs: dict[str, Path]) -> None:
    cal = read_scores(logs["cal"])
    st = EstimateSettings(chunk=1000)
    base = estimate_performance(read_scores(logs["base"]), cal, st).labels[0]
    shift = estimate_performance(read_scores(logs["shift"]), cal, st).labels[0]
    for le in (base, shift):
        assert len(le.chunks) == 20 and all(c.labelled == c.n == 1000 for c in le.chunks)
        inside = [c for c in le.chunks if c.precision_ci95 and c.realized_precision is not None
                  and c.precision_ci95[0] <= c.realized_precision <= c.precision_ci95[1]]
        # most chunks: realized precision within the estimate's 95% interval. Not 95% of them: the
        # logs are redrawn from a finite pool of about 1,700 items, whose own precision differs
        # from the calibration half's by sampling error the interval does not cover (a production
        # stream is not a finite pool)
        assert len(inside) >= 14, [len(inside), le.chunks[0]]

    def mean(le: object, attr: str) -> float:
        return float(np.mean([getattr(c, attr) for c in le.chunks]))  # type: ignore[attr-defined]

    # the shift lowers realized precision and recall, and the estimates move with them
    assert mean(shift, "realized_precision") < mean(base, "realized_precision")
    assert mean(shift, "precision") < mean(base, "precision")
    real_drop = mean(base, "realized_recall") - mean(shift, "realized_recall")
    est_drop = mean(base, "recall") - mean(shift, "recall")
    assert real_drop > 0.05 and est_drop > real_drop / 2
    # and estimating beats assuming the calibration set's recall still holds
    known = cal.truth["spam"] >= 0
    y, flagged = cal.truth["spam"][known] == 1, cal.scores["spam"][known] >= 0.5
    cal_recall = (y & flagged).sum() / y.sum()
    assert abs(mean(shift, "recall") - mean(shift, "realized_recall")) < abs(cal_recall - mean(shift, "realized_recall"))


def test_platt_and_no_bootstrap(logs: dict[str, Path]) -> None:
    cal, log = read_scores(logs["cal"]), read_scores(logs["shift"])
    wide = estimate_performance(log, cal, EstimateSettings(chunk=5000, bootstrap=30)).labels[0].chunks
    narrow = estimate_performance(log, cal, EstimateSettings(chunk=5000, bootstrap=0)).labels[0].chunks
    # the calibration's own error widens the intervals
    for w, n in zip(wide, narrow, strict=True):
        assert w.precision == n.precision and w.precision_ci95 and n.precision_ci95
        assert w.precision_ci95[1] - w.precision_ci95[0] >= n.precision_ci95[1] - n.precision_ci95[0]
    platt = estimate_performance(log, cal, EstimateSettings(chunk=5000, method="platt", bootstrap=0)).labels[0]
    assert platt.method == "platt" and all(c.precision is not None and 0.8 < c.precision <= 1 for c in platt.chunks)


def test_expected_counts_are_sums_of_probabilities() -> None:
    p = np.array([0.9, 0.8, 0.1, 0.3])
    flagged = np.array([True, True, False, False])
    est = estimate_chunk(p, flagged)
    assert est["precision"] == pytest.approx(0.85)  # (0.9 + 0.8) / 2
    assert est["recall"] == pytest.approx(1.7 / 2.1)  # TP / (TP + FN), FN = 0.1 + 0.3
    assert est["f1"] == pytest.approx(2 * 1.7 / (2 + 1.7 + 0.4))
    assert est["flag_rate"] == 0.5
    lo, hi = est["precision_ci95"]
    assert lo < 0.85 < hi
    none = estimate_chunk(np.array([0.1, 0.2]), np.array([False, False]))
    assert none["precision"] is None and none["flag_rate"] == 0


def test_bad_calibration_and_settings(tmp_path: Path, logs: dict[str, Path]) -> None:
    log = read_scores(logs["base"])
    unlabelled = tmp_path / "u.jsonl"
    unlabelled.write_text("".join(json.dumps({"score_spam": x / 10}) + "\n" for x in range(10)))
    with pytest.raises(InputError, match=r"u.jsonl: no rows with ground truth for label 'spam'"):
        estimate_performance(log, read_scores(unlabelled), EstimateSettings(chunk=1000))
    one_class = tmp_path / "o.jsonl"
    one_class.write_text("".join(json.dumps({"score_spam": x / 10, "label_spam": 0}) + "\n" for x in range(10)))
    with pytest.raises(InputError, match=r"are all negative; calibration needs both"):
        estimate_performance(log, read_scores(one_class), EstimateSettings(chunk=1000))
    cal = read_scores(logs["cal"])
    with pytest.raises(ConfigError, match="unknown calibration method 'beta'"):
        estimate_performance(log, cal, EstimateSettings(chunk=1000, method="beta"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no label 'hate'"):
        estimate_performance(log, cal, EstimateSettings(chunk=1000, labels=["hate"]))


def test_cli_estimate_exit_codes_and_json(logs: dict[str, Path], tmp_path: Path) -> None:
    run = CliRunner().invoke
    args = ["classifier", "estimate", str(logs["shift"]), "--calibration", str(logs["cal"]), "-c", "5000", "--bootstrap", "20"]
    r = run(cli, args)
    assert r.exit_code == 0, r.output
    assert "precision [95% CI]" in r.output and "no chunk below the minimum" in r.output
    r = run(cli, [*args, "--min-recall", "0.99", "--json"])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["alerts"] == 4 and all("recall" in c["alerts"] for c in data["labels"][0]["chunks"])
    assert {"precision", "precision_ci95", "recall", "f1", "flag_rate", "realized_precision"} <= set(data["labels"][0]["chunks"][0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(logs["base"].read_text() + '{"score_spam": 7}\n')
    r = run(cli, ["classifier", "estimate", str(bad), "--calibration", str(logs["cal"]), "-c", "5000", "--bootstrap", "0"])
    assert r.exit_code == 2 and "bad.jsonl:20001: field 'score_spam': expected a number from 0 to 1, got 7" in r.output
    r = run(cli, ["classifier", "estimate", str(bad), "--calibration", str(logs["cal"]), "-c", "5000", "--bootstrap", "0", "--skip-bad-rows"])
    assert r.exit_code == 1 and "1 row(s) skipped" in r.output and "bad.jsonl:20001" in r.output


def test_cli_estimate_warns_of_a_label_the_thresholds_file_has_no_threshold_for(logs: dict[str, Path], tmp_path: Path) -> None:
    th = tmp_path / "th.yaml"
    th.write_text("kind: classifier\nlabels:\n  spam:\n    reachable: false\n    note: no threshold reaches precision 0.999\n    review: null\n")
    args = ["classifier", "estimate", str(logs["shift"]), "--calibration", str(logs["cal"]), "-c", "5000", "--bootstrap", "0", "--thresholds", str(th)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert f"{th}: label spam has no threshold (cotmod classifier tune found none): its flag rate uses 0.5" in r.stderr
    r = CliRunner().invoke(cli, [*args, "--threshold", "0.3"])
    assert "its flag rate uses 0.3" in r.stderr
    r = CliRunner().invoke(cli, [*args, "--threshold", "spam=0.3"])
    assert r.exit_code == 0 and "has no threshold" not in r.stderr
