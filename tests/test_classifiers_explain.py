"""cotmod classifier explain: a real classifier's errors (TF-IDF + logistic regression on SMS Spam)
explained by scripted verdicts of the spam_scams policy, grouped by the deciding rule or exception."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from scipy.stats import binomtest

from cotmod import AsyncModerator, AuthenticationError, ChatRequest, ConfigError, InputError
from cotmod.classifiers import (
    classifier_errors,
    explain_errors,
    load_classifier_bands,
    load_label_map,
    read_scores,
)
from cotmod.classifiers._demo import train_demo_classifier
from cotmod.cli import _moderate, cli
from cotmod.cli._app import EXIT_FAILURE, EXIT_OK, EXIT_UNDECIDED, EXIT_USAGE
from cotmod.testing import FakeBackend, FakeOpenAIServer, decision, item_content

from .conftest import GUIDELINES

REVIEW, AUTO = 0.3, 0.9


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo classifier's held-out split as a score log with text, and thresholds for it."""
    d = train_demo_classifier(seed=0)
    root = tmp_path_factory.mktemp("explain")
    scores = root / "scores.jsonl"
    with scores.open("w", encoding="utf-8") as f:
        for i, (text, y, s) in enumerate(zip(d.texts, d.truth, d.scores, strict=True)):
            f.write(json.dumps({"id": f"sms-{i}", "score_spam": round(float(s), 6), "label_spam": int(y), "text": text}) + "\n")
    th = root / "th.yaml"
    th.write_text(yaml.safe_dump({"labels": {"spam": {"review": REVIEW, "auto_action": AUTO}}}))
    return scores, th


def errors_of(scores: Path, th: Path) -> dict[str, list[Any]]:
    """Every FP and FN of the demo log at the thresholds, in log order (the explain pool)."""
    log = read_scores(scores, text_field="text")
    rep = classifier_errors(log, load_classifier_bands(th), per_group=len(log))
    out: dict[str, list[Any]] = {"fp": [], "fn": []}
    for g in rep.labels[0].groups:
        if g.stratum is None:
            out[g.kind] += g.items
    return {k: sorted(v, key=lambda it: it.line) for k, v in out.items()}


def text_of(req: ChatRequest) -> str:
    """The item text of a request (a re-ask's last message is the correction, not the item)."""
    for i in range(len(req.messages), 0, -1):
        try:
            return item_content({"messages": req.messages[:i]})
        except ValueError:
            continue
    raise AssertionError("no item in the request")


def scripted(plan: dict[str, str]) -> Callable[[ChatRequest], Any]:
    """Answers by item text: 'rule:R1,R2' violates, 'exc:E' an exception applies, 'bad' no valid
    answer, anything else safe with no rule."""

    def respond(req: ChatRequest) -> Any:
        what = plan.get(text_of(req), "none")
        if what == "bad":
            return "this is not a verdict"
        if what.startswith("rule:"):
            return decision({"spam_scams": what[5:].split(",")})
        if what.startswith("exc:"):
            return decision({"spam_scams": []}, exceptions={"spam_scams": [what[4:]]})
        return decision({"spam_scams": []})

    return respond


def moderator(fake: FakeBackend) -> AsyncModerator:
    return AsyncModerator(GUIDELINES, backend=fake)


def wilson(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return (ci.low, ci.high)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def use_backend(monkeypatch: pytest.MonkeyPatch, respond: Callable[[ChatRequest], Any]) -> FakeBackend:
    fake = FakeBackend(default=respond)

    def make(settings: Any, cache: Any = None) -> AsyncModerator:
        return AsyncModerator(settings.guidelines, settings=settings, cache=cache, backend=fake)

    monkeypatch.setattr(_moderate, "_make_moderator", make)
    return fake


ENDPOINT = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--no-cache"]


# -- the library -----------------------------------------------------------------------------------


def test_groups_by_deciding_rule_or_exception_with_wilson_cis(demo_files: tuple[Path, Path], tmp_path: Path) -> None:
    scores, th = demo_files
    errs = errors_of(scores, th)
    fps, fns = errs["fp"], errs["fn"]
    assert len(fps) >= 8 and len(fns) >= 20  # the real classifier's errors at 0.3
    plan: dict[str, str] = {}
    # FPs: 3 the policy says violate (one cites a low-severity rule too: the high one decides),
    # 3 allowed by the legitimate-marketing exception, 1 error verdict, the rest no rule
    plan[fps[0].text] = "rule:SCAM-8,SCAM-2"
    plan[fps[1].text] = "rule:SCAM-2"
    plan[fps[2].text] = "rule:SCAM-2"
    for it in fps[3:6]:
        plan[it.text] = "exc:SCAM-S2"
    plan[fps[6].text] = "bad"
    # FNs: 12 violate by SCAM-3 (the classifier missed them), 2 error verdicts, the rest allowed
    for it in fns[:12]:
        plan[it.text] = "rule:SCAM-3"
    for it in fns[12:14]:
        plan[it.text] = "bad"
    fake = FakeBackend(default=scripted(plan))
    log = read_scores(scores, text_field="text")
    rep = explain_errors(
        log, load_classifier_bands(th), moderator=moderator(fake), label_policy={"spam": "spam_scams"}, sample=100, run_dir=tmp_path / "run"
    )
    (le,) = rep.labels
    assert (le.label, le.policy, le.review, le.auto_action) == ("spam", "spam_scams", REVIEW, AUTO)

    fp = le.fp
    n_fp = len(fps) - 1
    assert (fp.errors, fp.sampled, fp.decided, fp.undecided, fp.no_text) == (len(fps), len(fps), n_fp, 1, 0)
    assert fp.undecided_ids == [fps[6].id]
    groups = {(g.outcome, g.criterion): g for g in fp.groups}
    assert set(groups) == {("violates", "SCAM-2"), ("exception", "SCAM-S2"), ("no_rule", None)}
    g = groups[("violates", "SCAM-2")]
    assert g.count == 3 and g.share == pytest.approx(3 / n_fp) and g.ci95 == pytest.approx(wilson(3, n_fp))
    assert g.example_ids == [it.id for it in fps[:3]] and g.title == "Prize, lottery and giveaway scams"
    assert "label error" in g.meaning
    g = groups[("exception", "SCAM-S2")]
    assert g.count == 3 and g.title == "Legitimate marketing" and g.ci95 == pytest.approx(wilson(3, n_fp))
    assert groups[("no_rule", None)].count == n_fp - 6
    assert fp.violates == 3 and fp.violates_share == pytest.approx(3 / n_fp)
    assert fp.violates_ci95 == pytest.approx(wilson(3, n_fp))
    assert sum(g.count for g in fp.groups) == fp.decided and sum(g.share for g in fp.groups) == pytest.approx(1)
    bad = next(it for it in fp.items if it.id == fps[6].id)
    assert bad.outcome == "error" and bad.error is not None and bad.error.startswith("ModelOutputError")

    fn = le.fn
    n_fn = len(fns) - 2
    assert (fn.errors, fn.sampled, fn.decided, fn.undecided) == (len(fns), len(fns), n_fn, 2)
    groups = {(g.outcome, g.criterion): g for g in fn.groups}
    assert groups[("violates", "SCAM-3")].count == 12 and "classifier missed" in groups[("violates", "SCAM-3")].meaning
    assert groups[("no_rule", None)].count == n_fn - 12 and "label noise" in groups[("no_rule", None)].meaning
    assert fn.groups[0].count >= fn.groups[-1].count  # most frequent first
    assert rep.undecided == 3
    # the report is kept with the verdicts
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["labels"][0]["fp"]["undecided_ids"] == [fps[6].id]


def test_sample_is_seeded_and_drawn_from_errors_with_text(demo_files: tuple[Path, Path], tmp_path: Path) -> None:
    scores, th = demo_files
    fns = errors_of(scores, th)["fn"]
    # take the text away from three FNs: counted as not explainable, never sampled
    rows = [json.loads(x) for x in scores.read_text().splitlines()]
    gone = {it.id for it in fns[:3]}
    for r in rows:
        if r["id"] in gone:
            r["text"] = "" if r["id"] == fns[0].id else None
            if r["id"] == fns[2].id:
                del r["text"]
    p = tmp_path / "s.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = read_scores(p, text_field="text")
    bands = load_classifier_bands(th)

    def run(seed: int, sample: int = 5) -> Any:
        fake = FakeBackend(default=scripted({}))
        return explain_errors(log, bands, moderator=moderator(fake), label_policy={"spam": "spam_scams"}, sample=sample, seed=seed).labels[0]

    a, b, c = run(0), run(0), run(1)
    assert a.fn.sampled == 5 and a.fn.no_text == 3 and sorted(a.fn.no_text_ids) == sorted(gone)
    ids = [it.id for it in a.fn.items]
    assert ids == [it.id for it in b.fn.items] and ids != [it.id for it in c.fn.items]
    assert not gone & set(ids)
    assert len(set(ids)) == 5 and set(ids) <= {it.id for it in fns}
    # a sample larger than the pool takes every error with text
    assert run(0, sample=1000).fn.sampled == len(fns) - 3


def test_library_bad_input(demo_files: tuple[Path, Path], tmp_path: Path) -> None:
    scores, th = demo_files
    log = read_scores(scores, text_field="text")
    bands = load_classifier_bands(th)
    mod = moderator(FakeBackend(default=scripted({})))
    with pytest.raises(ConfigError, match="label 'spam' maps to unknown policy 'spamz'"):
        explain_errors(log, bands, moderator=mod, label_policy={"spam": "spamz"})
    with pytest.raises(InputError, match="no label 'ham'"):
        explain_errors(log, bands, moderator=mod, label_policy={"ham": "spam_scams"})
    no_text = read_scores(scores)
    with pytest.raises(InputError, match="without a text field"):
        explain_errors(no_text, bands, moderator=mod, label_policy={"spam": "spam_scams"})


def test_load_label_map(tmp_path: Path) -> None:
    m = tmp_path / "enforcement.yaml"
    m.write_text(yaml.safe_dump({"policies": {
        "spam_scams": {"version": "1.1.0", "classifier": {"label_map": {"spam": "spam_scams", "scam": "spam_scams"}}},
        "hate_speech": {"version": "1.0.0"},
    }}))
    assert load_label_map(m) == {"spam": "spam_scams", "scam": "spam_scams"}
    m.write_text(yaml.safe_dump({"policies": {
        "a": {"classifier": {"label_map": {"spam": "spam_scams"}}},
        "b": {"classifier": {"label_map": {"spam": "hate_speech"}}},
    }}))
    with pytest.raises(InputError, match=r"policies\.b\.classifier\.label_map\.spam: label 'spam' maps to 'hate_speech' here but to 'spam_scams' at policies\.a"):
        load_label_map(m)


# -- the command -----------------------------------------------------------------------------------


def test_cli_text_json_and_exit_codes(demo_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores, th = demo_files
    fps = errors_of(scores, th)["fp"]
    plan = {fps[0].text: "exc:SCAM-S2", fps[1].text: "exc:SCAM-S2", fps[2].text: "rule:SCAM-1"}
    use_backend(monkeypatch, scripted(plan))
    out = tmp_path / "rca"
    r = invoke("classifier", "explain", str(scores), "--thresholds", str(th), "--label-policy", "spam=spam_scams",
               "--sample", "10", "-o", str(out), *ENDPOINT)
    assert r.exit_code == EXIT_OK, r.output
    n = len(fps)
    lo, hi = wilson(2, n)
    assert f"spam: {n} FPs, sampled {n}" in r.stdout
    assert f"{100 * 2 / n:.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%]" in r.stdout
    assert "allowed by exception SCAM-S2 (Legitimate marketing)" in r.stdout
    assert "violates SCAM-1 (Phishing and credential theft): policy agrees" in r.stdout
    assert "FNs, sampled 10" in r.stdout and "rerun the same command to resume" in r.stderr
    assert (out / "report.json").is_file() and (out / "verdicts-spam_scams.jsonl").is_file()

    # an error verdict: exit 1, listed, counted in --json
    plan[fps[3].text] = "bad"
    use_backend(monkeypatch, scripted(plan))
    r = invoke("classifier", "explain", str(scores), "--thresholds", str(th), "--label-policy", "spam=spam_scams",
               "--sample", "10", "-o", str(tmp_path / "rca2"), "--json", *ENDPOINT)
    assert r.exit_code == EXIT_UNDECIDED, r.output
    data = json.loads(r.stdout)
    assert data["undecided"] == 1 and data["exit_code"] == EXIT_UNDECIDED
    assert data["labels"][0]["fp"]["undecided_ids"] == [fps[3].id]
    assert "1 sampled item(s) without a verdict" in r.stderr


def test_resume_after_a_stop_sends_only_the_rest(demo_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores, th = demo_files
    calls = {"n": 0}
    good = scripted({})

    def dies_after_5(req: ChatRequest) -> Any:
        calls["n"] += 1
        if calls["n"] > 5:
            raise AuthenticationError("authentication failed (HTTP 401)", status_code=401)
        return good(req)

    use_backend(monkeypatch, dies_after_5)
    out = tmp_path / "rca"
    args = ["classifier", "explain", str(scores), "--thresholds", str(th), "--label-policy", "spam=spam_scams",
            "--sample", "8", "-o", str(out), "-c", "1", *ENDPOINT]
    r = invoke(*args)
    assert r.exit_code == EXIT_FAILURE, r.output
    assert "verdicts already written to" in r.stderr and "Traceback" not in r.output
    verdicts = out / "verdicts-spam_scams.jsonl"
    assert len(verdicts.read_text().splitlines()) == 5

    fake = use_backend(monkeypatch, good)
    r = invoke(*args)
    assert r.exit_code == EXIT_OK, r.output
    ids = [json.loads(x)["item_id"] for x in verdicts.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 16  # 8 FPs + 8 FNs, each judged once
    assert len(fake.history) == 16 - 5  # only the items without a verdict were sent
    fake = use_backend(monkeypatch, good)
    assert invoke(*args).exit_code == EXIT_OK and fake.history == []  # a third run sends nothing
    # another configuration refuses to mix its verdicts into the run directory: one line, exit 2
    r = invoke(*args, "--strategy", "combined")
    assert r.exit_code == EXIT_USAGE and "refusing to mix verdicts" in r.output and "Traceback" not in r.output


def test_error_verdicts_stay_out_until_retried(demo_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores, th = demo_files
    fns = errors_of(scores, th)["fn"]
    args = ["classifier", "explain", str(scores), "--thresholds", str(th), "--label-policy", "spam=spam_scams",
            "--sample", "100", "-o", str(tmp_path / "rca"), "--json", *ENDPOINT]
    use_backend(monkeypatch, scripted({fns[0].text: "bad", fns[1].text: "bad"}))
    r = invoke(*args)
    assert r.exit_code == EXIT_UNDECIDED and json.loads(r.stdout)["labels"][0]["fn"]["undecided"] == 2
    fake = use_backend(monkeypatch, scripted({}))
    r = invoke(*args)  # a rerun keeps them as they were (dead-lettered) and sends nothing
    assert r.exit_code == EXIT_UNDECIDED and fake.history == []
    assert sorted(json.loads(r.stdout)["labels"][0]["fn"]["undecided_ids"]) == sorted([fns[0].id, fns[1].id])
    r = invoke(*args, "--retry-errors")
    assert r.exit_code == EXIT_OK, r.output
    assert len(fake.history) == 2 and json.loads(r.stdout)["labels"][0]["fn"]["undecided"] == 0


def test_manifest_and_two_labels_of_one_policy(demo_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores, _ = demo_files
    # a second label with the same scores and truth: its errors are the same items, judged once
    rows = [json.loads(x) for x in scores.read_text().splitlines()]
    for r in rows:
        r["score_scam"], r["label_scam"] = r["score_spam"], r["label_spam"]
    two = tmp_path / "two.jsonl"
    two.write_text("".join(json.dumps(r) + "\n" for r in rows))
    th2 = tmp_path / "th2.yaml"
    th2.write_text(yaml.safe_dump({"labels": {lb: {"review": REVIEW, "auto_action": AUTO} for lb in ("spam", "scam")}}))
    m = tmp_path / "enforcement.yaml"
    m.write_text(yaml.safe_dump({"policies": {"spam_scams": {"version": "1.1.0", "classifier": {
        "label_map": {"spam": "spam_scams", "scam": "spam_scams", "other_clf_label": "spam_scams"}}}}}))
    fake = use_backend(monkeypatch, scripted({}))
    out = tmp_path / "rca"
    r = invoke("classifier", "explain", str(two), "--thresholds", str(th2), "--manifest", str(m), "--sample", "5", "-o", str(out), "--json", *ENDPOINT)
    assert r.exit_code == EXIT_OK, r.output
    data = json.loads(r.stdout)
    assert sorted(le["label"] for le in data["labels"]) == ["scam", "spam"]
    assert [it["id"] for it in data["labels"][0]["fn"]["items"]] != [] and "other_clf_label" in r.stderr
    judged = [json.loads(x)["item_id"] for x in (out / "verdicts-spam_scams.jsonl").read_text().splitlines()]
    assert len(judged) == len(set(judged)) == len(fake.history)
    both = {it["id"] for le in data["labels"] for k in ("fp", "fn") for it in le[k]["items"]}
    assert set(judged) == both


def test_cli_through_http(demo_files: tuple[Path, Path], tmp_path: Path) -> None:
    scores, th = demo_files
    with FakeOpenAIServer() as srv:  # answer_for: nothing in SMS texts says VIOLATE, so every item is allowed
        r = invoke("classifier", "explain", str(scores), "--thresholds", str(th), "--label-policy", "spam=spam_scams",
                   "--sample", "3", "-o", str(tmp_path / "rca"), "--base-url", srv.base_url, "--model", "m", "--no-cache", "--json")
    assert r.exit_code == EXIT_OK, r.output
    le = json.loads(r.stdout)["labels"][0]
    assert [(g["outcome"], g["count"], g["share"]) for g in le["fp"]["groups"]] == [("no_rule", 3, 1.0)]
    assert le["fn"]["violates"] == 0 and le["fn"]["sampled"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label-policy", "spam=spamz"], "maps to unknown policy 'spamz'"),
        (["--label-policy", "ham=spam_scams"], "no label 'ham'"),
        (["--label-policy", "spam"], "expected LABEL=POLICY"),
        ([], "give --manifest ENFORCEMENT.yaml or --label-policy"),
        (["--label-policy", "spam=spam_scams", "-l", "ham"], "--label ham: not mapped to a policy"),
        (["--label-policy", "spam=spam_scams", "--sample", "0"], "--sample"),
        (["--label-policy", "spam=spam_scams", "--text-field", "body"], "none of the errors has text"),
        (["--label-policy", "spam=spam_scams", "-p", "hate_speech"], "no label is mapped to these policies"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(demo_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], message: str) -> None:
    scores, th = demo_files
    fake = use_backend(monkeypatch, scripted({}))
    r = invoke("classifier", "explain", str(scores), "--thresholds", str(th), "-o", str(tmp_path / "rca"), *extra, *ENDPOINT)
    assert r.exit_code == EXIT_USAGE, r.output
    assert message in r.output and "Traceback" not in r.output
    assert fake.history == []


def test_cli_manifest_with_unknown_policy_and_no_mapped_label(demo_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores, th = demo_files
    use_backend(monkeypatch, scripted({}))
    m = tmp_path / "enforcement.yaml"
    m.write_text(yaml.safe_dump({"policies": {"spam_scams": {"classifier": {"label_map": {"spam": "scams_v2"}}}}}))
    r = invoke("classifier", "explain", str(scores), "--thresholds", str(th), "--manifest", str(m), *ENDPOINT)
    assert r.exit_code == EXIT_USAGE and "maps to unknown policy 'scams_v2'" in r.output
    m.write_text(yaml.safe_dump({"policies": {"spam_scams": {"classifier": {"label_map": {"ham": "spam_scams"}}}}}))
    r = invoke("classifier", "explain", str(scores), "--thresholds", str(th), "--manifest", str(m), *ENDPOINT)
    assert r.exit_code == EXIT_USAGE and "none of its mapped labels (ham) is in the score log" in r.output


def test_from_an_error_report_and_with_the_sync_moderator(demo_files: tuple[Path, Path], tmp_path: Path) -> None:
    """An ErrorReport lists only its most confident errors per group: only those can be sampled,
    the rest are counted as unlisted. The sync Moderator works as well as the async one."""
    from cotmod import Moderator

    scores, th = demo_files
    errs = errors_of(scores, th)
    log = read_scores(scores, text_field="text")
    report = classifier_errors(log, load_classifier_bands(th), per_group=3)
    fake = FakeBackend(default=scripted({}))
    mod = Moderator(GUIDELINES, backend=fake)
    try:
        rep = explain_errors(report, moderator=mod, label_policy={"spam": "spam_scams"}, sample=50, run_dir=tmp_path / "rca")
    finally:
        mod.close()
    fn = rep.labels[0].fn
    listed = {it.id for g in report.labels[0].groups if g.kind == "fn" and g.stratum is None for it in g.items}
    assert fn.errors == len(errs["fn"]) and fn.unlisted == len(errs["fn"]) - len(listed)
    assert {it.id for it in fn.items} == listed and fn.decided == len(listed) == len(fake.history) - rep.labels[0].fp.sampled


@pytest.mark.parametrize("truth", [True, False])
def test_nothing_to_explain_is_said_and_exit_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, truth: bool) -> None:
    """A perfect classifier, or a log without ground truth: no error to sample, one clear line,
    exit 0, and the promised report.json written (the run directory did not exist)."""
    scores = tmp_path / "scores.jsonl"
    rows = [{"id": f"i{i}", "score_spam": 0.9 if i % 2 else 0.1, "text": f"message {i}"} | ({"label_spam": i % 2} if truth else {}) for i in range(10)]
    scores.write_text("".join(json.dumps(r) + "\n" for r in rows))
    th = tmp_path / "th.yaml"
    th.write_text(yaml.safe_dump({"labels": {"spam": {"review": REVIEW, "auto_action": AUTO}}}))
    fake = use_backend(monkeypatch, scripted({}))
    out = tmp_path / "new" / "rca"
    r = invoke("classifier", "explain", str(scores), "--thresholds", str(th), "--label-policy", "spam=spam_scams", "-o", str(out), *ENDPOINT)
    assert r.exit_code == EXIT_OK, r.output
    why = "0 FPs and 0 FNs at review >= 0.3000 on 10 rows with ground truth" if truth else "spam: no ground truth in the score log"
    assert "no false positives or negatives to explain (" in r.stdout and why in r.stdout
    assert "cannot write" not in r.output and fake.history == []
    report = json.loads((out / "report.json").read_text())
    assert report["labels"][0]["known"] == (10 if truth else 0) and report["labels"][0]["fp"]["sampled"] == 0


def test_bad_label_fails_before_the_run_is_announced(demo_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores, th = demo_files
    use_backend(monkeypatch, scripted({}))
    r = invoke("classifier", "explain", str(scores), "--thresholds", str(th), "--label-policy", "toxic=spam_scams", "-o", str(tmp_path / "rca"), *ENDPOINT)
    assert r.exit_code == EXIT_USAGE and "no label 'toxic'" in r.stderr
    assert "explaining" not in r.output and not (tmp_path / "rca").exists()


def test_no_cascade_option(demo_files: tuple[Path, Path], tmp_path: Path) -> None:
    """--cascade (shared endpoint option) would route errors by the classifier's own scores."""
    scores, th = demo_files
    assert "--cascade" not in invoke("classifier", "explain", "--help").stdout
    r = invoke("classifier", "explain", str(scores), "--thresholds", str(th), "--cascade", str(th), *ENDPOINT)
    assert r.exit_code == EXIT_USAGE and "No such option '--cascade'" in r.output
