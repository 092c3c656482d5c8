"""Per-label classifier thresholds: target precision, cost matrix, bands, bootstrap CIs, YAML and sync."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from sklearn.metrics import precision_recall_curve

from cotmod import AsyncModerator, InputError, load_policies
from cotmod.classifiers import (
    TuneSettings,
    choose_threshold,
    choose_thresholds,
    load_classifier_thresholds,
    read_scores,
    write_classifier_thresholds,
)
from cotmod.cli import cli
from cotmod.governance._sync import check_manifest, update_manifest
from cotmod.testing import FakeBackend


def _data(seed: int = 0, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int8)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1).round(3)  # rounded: many tied scores
    return y, s


def _brute(y: np.ndarray, s: np.ndarray) -> list[tuple[float, int, int]]:
    """(threshold, TP, FP) for every distinct score, the slow way."""
    return [(float(t), int(((s >= t) & (y == 1)).sum()), int(((s >= t) & (y == 0)).sum())) for t in np.unique(s)]


@pytest.mark.parametrize("target", [0.6, 0.8, 0.9])
def test_target_precision_gives_highest_recall_reaching_it(target: float) -> None:
    y, s = _data()
    op = choose_threshold("spam", s, y, settings=TuneSettings(target_precision=target, bootstrap_rounds=0))
    ok = [(t, tp, fp) for t, tp, fp in _brute(y, s) if tp + fp and tp / (tp + fp) >= target]
    best = max(ok, key=lambda r: (r[1], -r[0]))
    assert op.review == best[0]
    assert op.recall == best[1] / y.sum() and op.precision == best[1] / (best[1] + best[2])
    # scikit-learn's PR curve agrees on the chosen point
    prec, rec, thr = precision_recall_curve(y, s)
    k = int(np.flatnonzero(thr == op.review)[0])
    assert (prec[k], rec[k]) == pytest.approx((op.precision, op.recall))
    # the auto-action band starts at or above the review threshold, at the auto precision
    assert op.auto_action is None or op.auto_action >= op.review
    assert sum(op.bands.values()) == len(s)
    assert op.bands["allow"] == int((s < op.review).sum())


def test_cost_matrix_minimises_expected_cost() -> None:
    y, s = _data(1)
    for cfp, cfn in [(1.0, 1.0), (1.0, 10.0), (5.0, 1.0)]:
        op = choose_threshold("spam", s, y, settings=TuneSettings(cost_fp=cfp, cost_fn=cfn, bootstrap_rounds=0))
        costs = {t: cfp * fp + cfn * (int(y.sum()) - tp) for t, tp, fp in _brute(y, s)}
        best = min(costs.values())
        assert op.expected_cost == best
        assert op.review == max(t for t, c in costs.items() if c == best)  # a tie goes to the higher threshold


def test_bootstrap_ci_is_seeded_and_brackets_the_point() -> None:
    y, s = _data(2)
    st = TuneSettings(target_precision=0.8, bootstrap_rounds=500, seed=7)
    a = choose_threshold("spam", s, y, settings=st)
    b = choose_threshold("spam", s, y, settings=st)
    c = choose_threshold("spam", s, y, settings=st.model_copy(update={"seed": 8}))
    assert a.precision_ci95 == b.precision_ci95 and a.recall_ci95 == b.recall_ci95
    assert a.precision_ci95 != c.precision_ci95
    assert a.precision_ci95 is not None and a.recall_ci95 is not None and a.precision is not None and a.recall is not None
    assert a.precision_ci95[0] < a.precision < a.precision_ci95[1]
    assert a.recall_ci95[0] < a.recall < a.recall_ci95[1]
    # the width matches the binomial standard error of precision at the point (item bootstrap)
    tp_fp = round(a.flag_rate * len(y)) if a.flag_rate else 0
    se = (a.precision * (1 - a.precision) / tp_fp) ** 0.5
    assert a.precision_ci95[1] - a.precision_ci95[0] == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_unknown_truth_is_ignored_and_unreachable_targets_say_so() -> None:
    y, s = _data(3)
    y2 = y.copy()
    y2[:500] = -1
    op = choose_threshold("spam", s, y2, settings=TuneSettings(target_precision=0.8, bootstrap_rounds=0))
    ref = choose_threshold("spam", s[500:], y[500:], settings=TuneSettings(target_precision=0.8, bootstrap_rounds=0))
    assert (op.review, op.precision, op.recall, op.n, op.unknown) == (ref.review, ref.precision, ref.recall, len(y) - 500, 500)
    none = choose_threshold("spam", s, np.zeros_like(y), settings=TuneSettings(target_precision=0.8))
    assert not none.reachable and "no positive rows" in (none.note or "")
    flat = choose_threshold("spam", np.full(10, 0.5), np.array([1, 0] * 5, dtype=np.int8), settings=TuneSettings(target_precision=0.9))
    assert not flat.reachable and "no threshold reaches precision 0.9" in (flat.note or "")
    with pytest.raises(InputError, match="target precision"):
        choose_threshold("spam", s, y, settings=TuneSettings())


def _score_log(tmp_path: Path) -> Path:
    y, s = _data(4, 600)
    p = tmp_path / "scores.jsonl"
    p.write_text("".join(json.dumps({"id": str(i), "score_spam": float(v), "label_spam": int(t)}) + "\n" for i, (v, t) in enumerate(zip(s, y, strict=True))))
    return p


def test_yaml_round_trip_and_sync_check_flags_a_moved_policy(tmp_path: Path, policy_dir: Path) -> None:
    log = read_scores(_score_log(tmp_path))
    mod = AsyncModerator(policy_dir, backend=FakeBackend())
    pid = "hate_speech"
    version = mod.policies[pid].version
    th = choose_thresholds(log, target_precision=0.8, label_map={"spam": pid}, policy_versions={pid: version})
    write_classifier_thresholds(th, tmp_path / "clf.yaml")
    data = yaml.safe_load((tmp_path / "clf.yaml").read_text())
    assert data["kind"] == "classifier" and data["label_map"] == {"spam": pid} and data["policies"] == {pid: version}
    assert data["thresholds"][pid]["review"] == th.labels["spam"].review and data["thresholds"][pid]["label"] == "spam"
    assert "pr_curve" not in data["labels"]["spam"]
    assert load_classifier_thresholds(tmp_path / "clf.yaml") == {"spam": th.labels["spam"].review}
    # bind it in the enforcement manifest: in sync, then stale once the policy version moves
    m = tmp_path / "enforcement.yaml"
    m.write_text(yaml.safe_dump({"policies": {}}))
    update_manifest(m, mod)
    man = yaml.safe_load(m.read_text())
    man["policies"][pid]["classifier"] = {"label_map": {"spam": pid}, "thresholds": "clf.yaml"}
    m.write_text(yaml.safe_dump(man))
    assert not [f for f in check_manifest(m, mod) if f.pathway == "classifier"]
    data["policies"][pid] = "0.0.1"  # as if tuned for an older version
    (tmp_path / "clf.yaml").write_text(yaml.safe_dump(data))
    stale = [f for f in check_manifest(m, mod) if f.pathway == "classifier"]
    assert stale and f"tuned for {pid} 0.0.1, policy is {version}" in stale[0].message
    assert stale[0].message.endswith("re-run cotmod classifier tune")  # the command that wrote the file, not eval + tune


def test_sync_check_flags_labels_the_classifier_thresholds_do_not_cover(tmp_path: Path, policy_dir: Path) -> None:
    log = read_scores(_score_log(tmp_path))
    mod = AsyncModerator(policy_dir, backend=FakeBackend())
    pid = "hate_speech"
    th = choose_thresholds(log, target_precision=0.8, label_map={"spam": "self_harm"}, policy_versions={pid: mod.policies[pid].version})
    write_classifier_thresholds(th, tmp_path / "clf.yaml")
    m = tmp_path / "enforcement.yaml"
    m.write_text(yaml.safe_dump({"policies": {}}))
    update_manifest(m, mod)
    man = yaml.safe_load(m.read_text())
    man["policies"][pid]["classifier"] = {"label_map": {"spam": pid, "hateful": pid}, "thresholds": "clf.yaml"}
    m.write_text(yaml.safe_dump(man))
    found = {f.field: f.message for f in check_manifest(m, mod) if f.pathway == "classifier"}
    where = f"policies.{pid}.classifier.label_map"
    assert "has no threshold for label 'hateful'" in found[f"{where}.hateful"]
    assert f"label 'spam' was tuned for policy 'self_harm', the manifest maps it to '{pid}'" in found[f"{where}.spam"]


def test_label_map_must_name_known_labels(tmp_path: Path) -> None:
    log = read_scores(_score_log(tmp_path))
    with pytest.raises(InputError, match="label map names label 'hate'"):
        choose_thresholds(log, target_precision=0.8, label_map={"hate": "hate_speech"})


def test_cli_classifier_tune(tmp_path: Path) -> None:
    p = _score_log(tmp_path)
    out = tmp_path / "th.yaml"
    r = CliRunner().invoke(cli, ["classifier", "tune", str(p), "-o", str(out), "--target-precision", "0.8", "--label-map", "spam=spam_scams"])
    assert r.exit_code == 0, r.output
    version = load_policies().select(["spam_scams"])["spam_scams"].version  # the starter pack
    assert f"spam (spam_scams {version}): review >=" in r.output and "precision 0.8" in r.output
    assert yaml.safe_load(out.read_text())["policies"] == {"spam_scams": version}
    r = CliRunner().invoke(cli, ["classifier", "tune", str(p), "-o", str(out), "--cost-fp", "1", "--cost-fn", "5", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["labels"]["spam"]["expected_cost"] is not None
    r = CliRunner().invoke(cli, ["classifier", "tune", str(p), "-o", str(out), "--target-precision", "0.8", "--label-map", "spam=nope"])
    assert r.exit_code == 2 and "no policy 'nope'" in r.output
    r = CliRunner().invoke(cli, ["classifier", "tune", str(p), "-o", str(out)])
    assert r.exit_code == 2 and "--target-precision" in r.output


def test_cli_tune_label_without_threshold_writes_the_file_and_exits_1(tmp_path: Path) -> None:
    """A label with no positive rows gets no threshold: the file is still written (the other
    labels' thresholds are useful), a line names the label, exit 1; monitor warns on such a file."""
    y, s = _data(4, 600)
    p = tmp_path / "scores.jsonl"
    p.write_text("".join(
        json.dumps({"id": str(i), "score_spam": float(v), "label_spam": int(t),
                    "score_hate": float(v), "label_hate": 0}) + "\n"
        for i, (v, t) in enumerate(zip(s, y, strict=True))
    ))
    out = tmp_path / "th.yaml"
    for extra in ([], ["--json"]):
        r = CliRunner().invoke(cli, ["classifier", "tune", str(p), "-o", str(out), "--target-precision", "0.8", *extra])
        assert r.exit_code == 1, r.output
        assert f"{out}: label hate has no threshold (no positive rows with known truth for 'hate')" in r.stderr
        assert "label spam" not in r.stderr
        assert set(load_classifier_thresholds(out)) == {"spam"}
    r = CliRunner().invoke(cli, ["monitor", str(p), "-r", str(p), "-c", "50", "--thresholds", str(out)])
    assert r.exit_code in (0, 1), r.output
    assert f"{out}: label hate has no threshold (cotmod classifier tune found none): its flag rate uses 0.5" in r.stderr
    assert "label spam" not in r.stderr
    r = CliRunner().invoke(cli, ["monitor", str(p), "-r", str(p), "-c", "50", "--thresholds", str(out), "--threshold", "hate=0.7"])
    assert r.exit_code in (0, 1) and "label hate has no threshold" not in r.stderr  # set on the command line
