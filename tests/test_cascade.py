"""The classifier → LLM → human cascade (issue 12): classifier scores route each item per
policy; only the uncertain band reaches the LLM; every decision records its route. And
``cotmod classifier cascade`` chooses the bands on a golden set, reporting them on items it did
not choose them on."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from cotmod import AsyncModerator, ConfigError, InputError, Moderator, Settings
from cotmod.backends._openai import ChatRequest
from cotmod.batch import Runner, export_batch
from cotmod.classifiers._cascade import choose_cascade, read_llm_decisions
from cotmod.classifiers._scores import read_scores
from cotmod.cli import _moderate, cli
from cotmod.engine._cascade import load_cascade
from cotmod.testing import FakeBackend, answer_for

CASCADE = "cascade:\n  spam_scams:\n    label: spam\n    allow_below: 0.2\n    action_at: 0.9\n"


def good(req: ChatRequest) -> Any:
    return answer_for({"messages": req.messages, "response_format": {"type": "json_schema", "json_schema": {"schema": req.schema}}})


@pytest.fixture
def cascade_file(tmp_path: Path) -> Path:
    p = tmp_path / "cascade.yaml"
    p.write_text(CASCADE)
    return p


def mod(cascade: Path, backend: FakeBackend, **kw: Any) -> Moderator:
    return Moderator(backend=backend, settings=Settings(cascade=str(cascade), **kw))


def test_scores_route_items_and_only_the_uncertain_band_calls_the_llm(cascade_file: Path) -> None:
    fake = FakeBackend(default=good)
    m = mod(cascade_file, fake)
    low = m.moderate({"id": "a", "text": "VIOLATE but the classifier is sure", "scores": {"spam": 0.05}}, ["spam_scams"])
    high = m.moderate({"id": "b", "text": "harmless words", "score_spam": 0.95}, ["spam_scams"])
    assert len(fake.history) == 0  # both settled by the classifier
    d = low.decisions[0]
    assert (d.route, d.violates, d.action, d.score_source, d.classifier_score) == ("classifier_allow", False, "allow", "classifier", 0.05)
    d = high.decisions[0]
    assert (d.route, d.violates, d.action, d.band) == ("classifier_action", True, "remove", "auto_action")
    assert high.violates is True and high.attempts == 0 and high.status == "ok"
    mid = m.moderate({"id": "c", "text": "VIOLATE", "score_spam": "0.5"}, ["spam_scams"])  # a CSV string
    assert len(fake.history) == 1
    d = mid.decisions[0]
    assert (d.route, d.violates, d.classifier_score, d.score_source) == ("llm", True, 0.5, "confidence")
    # no score: the LLM decides, and the route says so with no score
    none = m.moderate({"id": "d", "text": "hello"}, ["spam_scams"])
    assert len(fake.history) == 2 and none.decisions[0].route == "llm" and none.decisions[0].classifier_score is None
    # route and classifier_score are in the JSON only when a cascade is in play
    assert json.loads(low.model_dump_json())["decisions"][0]["route"] == "classifier_allow"
    plain = Moderator(backend=FakeBackend(default=good), settings=Settings()).moderate("VIOLATE", ["spam_scams"])
    assert "route" not in json.loads(plain.model_dump_json())["decisions"][0]
    m.close()


def test_policies_outside_the_cascade_are_judged_as_before(cascade_file: Path) -> None:
    fake = FakeBackend(default=good)
    m = mod(cascade_file, fake)
    v = m.moderate({"id": "a", "text": "VIOLATE", "score_spam": 0.01}, ["spam_scams", "hate_speech"])
    assert len(fake.history) == 1  # hate_speech only
    by = {d.policy_id: d for d in v.decisions}
    assert by["spam_scams"].route == "classifier_allow" and by["hate_speech"].route is None
    assert by["hate_speech"].violates is True and v.violates is True
    m.close()


def test_combined_strategy_calls_once_and_keeps_the_classifier_decision(cascade_file: Path) -> None:
    fake = FakeBackend(default=good)
    m = mod(cascade_file, fake, strategy="combined")
    v = m.moderate({"id": "a", "text": "VIOLATE", "score_spam": 0.01}, ["spam_scams", "hate_speech"])
    assert len(fake.history) == 1
    by = {d.policy_id: d for d in v.decisions}
    assert by["spam_scams"].route == "classifier_allow" and not by["spam_scams"].violates
    assert by["hate_speech"].violates
    m.close()


def test_bad_scores_and_bad_cascade_files_are_one_clear_line(cascade_file: Path, tmp_path: Path) -> None:
    m = mod(cascade_file, FakeBackend(default=good))
    for bad in (1.5, -0.1, "high", "nan", True):
        with pytest.raises(InputError, match=r"item 'x': field score_spam: expected a classifier score from 0 to 1"):
            m.moderate({"id": "x", "text": "t", "score_spam": bad}, ["spam_scams"])
    with pytest.raises(InputError, match=r"field scores.spam"):
        m.moderate({"id": "x", "text": "t", "scores": {"spam": 7}}, ["spam_scams"])
    m.close()
    cases = {
        "cascade:\n  spam_scams:\n    label: spam\n    allow_below: 0.9\n    action_at: 0.2\n": "cascade.spam_scams: Value error, action_at (0.2) is below allow_below (0.9)",
        "cascade:\n  spam_scams:\n    label: spam\n    allow_below: 2\n    action_at: null\n": "cascade.spam_scams.allow_below:",
        "cascade:\n  spam_scams:\n    allow_below: 0.1\n    action_at: 0.9\n": "cascade.spam_scams.label: Field required",
        "cascade:\n  spam_scams:\n    label: s\n    allow_below: 0.1\n    action_at: 0.9\n    acton: remove\n": "cascade.spam_scams.acton: Extra inputs",
        "thresholds: {}\n": "expected 'cascade:",
    }
    for text, msg in cases.items():
        p = tmp_path / "bad.yaml"
        p.write_text(text)
        with pytest.raises(InputError) as e:
            load_cascade(p)
        assert str(e.value).startswith(f"{p}: ") and msg in str(e.value), str(e.value)
    p = tmp_path / "unknown.yaml"
    p.write_text(CASCADE.replace("spam_scams", "no_such_policy"))
    with pytest.raises(ConfigError, match=r"cascade\.no_such_policy: unknown policy"):
        AsyncModerator(backend=FakeBackend(default=good), settings=Settings(cascade=str(p)))


def test_run_reads_scores_from_csv_records_routes_and_dead_letters_bad_scores(cascade_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend(default=good)

    def make(settings: Any, cache: Any = None) -> AsyncModerator:
        return AsyncModerator(settings.guidelines, settings=settings, cache=cache, backend=fake)

    monkeypatch.setattr(_moderate, "_make_moderator", make)
    inp = tmp_path / "in.csv"
    with inp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "score_spam", "other"])
        w.writerows([["a", "VIOLATE", "0.01", "x"], ["b", "hello", "0.99", "x"], ["c", "VIOLATE", "0.5", "x"], ["d", "VIOLATE", "oops", "x"], ["e", "hi", "", "x"]])
    out = tmp_path / "out.jsonl"
    args = ["run", str(inp), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "-p", "spam_scams", "--no-cache", "--json", "--cascade", str(cascade_file)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output  # the bad score is dead-lettered: not every item decided
    verdicts = {json.loads(x)["item_id"]: json.loads(x) for x in out.read_text().splitlines()}
    routes = {k: v["decisions"][0]["route"] for k, v in verdicts.items()}
    assert routes == {"a": "classifier_allow", "b": "classifier_action", "c": "llm", "e": "llm"}
    assert len(fake.history) == 2  # c and e
    assert verdicts["a"]["metadata"] == {"score_spam": "0.01"}  # only the cascade's fields are carried
    dead = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert [d["id"] for d in dead] == ["d"] and "field score_spam" in json.dumps(dead[0])
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["cascade"]["spam_scams"]["action_at"] == 0.9
    # resuming with another cascade would mix verdicts: refused
    other = tmp_path / "other.yaml"
    other.write_text(CASCADE.replace("0.9", "0.8"))
    r = CliRunner().invoke(cli, [*args[:-1], str(other)])
    assert r.exit_code == 2 and "refusing to mix verdicts" in r.output


def test_batch_export_refuses_a_cascade(cascade_file: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "hi", "score_spam": 0.5}\n')
    m = AsyncModerator(backend=FakeBackend(default=good), settings=Settings(cascade=str(cascade_file)))
    with pytest.raises(ConfigError, match=r"a cascade .* runs live only"):
        export_batch(m, inp, tmp_path / "req.jsonl", policies=["spam_scams"])


def test_runner_library_items_carry_scores(cascade_file: Path, tmp_path: Path) -> None:
    fake = FakeBackend(default=good)
    m = AsyncModerator(backend=fake, settings=Settings(cascade=str(cascade_file)))
    items = [{"id": f"i{k}", "text": "VIOLATE", "scores": {"spam": s}} for k, s in enumerate([0.0, 0.3, 0.95])]
    summary = Runner(m).run_sync(items, tmp_path / "o.jsonl", policies=["spam_scams"])
    assert summary.processed == 3 and len(fake.history) == 1


# -- choosing the bands ------------------------------------------------------------------------------


def _golden(tmp_path: Path, n: int = 400, seed: int = 0) -> tuple[Path, Path, dict[str, Any]]:
    """A score log and LLM verdicts with known structure: the classifier is sure and right at
    the ends and a coin flip in the middle, where the LLM is right 90% of the time."""
    rng = np.random.default_rng(seed)
    scores_p, verdicts_p = tmp_path / "scores.jsonl", tmp_path / "verdicts.jsonl"
    with Moderator(backend=FakeBackend(default=good), settings=Settings()) as m:
        template = m.moderate("VIOLATE", ["spam_scams"]).model_dump(mode="json")
    truth_of: dict[str, int] = {}
    with scores_p.open("w") as fs, verdicts_p.open("w") as fv:
        for i in range(n):
            s = float(rng.random())
            if s < 0.3:
                y = 0
            elif s >= 0.8:
                y = 1
            else:
                y = int(rng.random() < 0.5)
            llm = y if rng.random() < 0.9 else 1 - y
            iid = f"i{i}"
            truth_of[iid] = y
            fs.write(json.dumps({"id": iid, "score_spam": round(s, 6), "label_spam": y}) + "\n")
            dec = dict(template["decisions"][0])
            dec.update(violates=bool(llm), action="remove" if llm else "allow")
            fv.write(json.dumps({**template, "item_id": iid, "decisions": [dec], "violates": bool(llm)}) + "\n")
    return scores_p, verdicts_p, truth_of


def test_choose_cascade_finds_the_uncertain_band_and_reports_on_held_out_items(tmp_path: Path) -> None:
    scores_p, verdicts_p, _ = _golden(tmp_path)
    log = read_scores(scores_p)
    llm, version = read_llm_decisions(verdicts_p, "spam_scams")
    rep = choose_cascade(log, llm, policy="spam_scams", label="spam", max_llm_share=0.6, max_f1_loss=0.0, seed=1, policy_version=version)
    c = rep.chosen
    assert rep.tune_items + rep.test_items == 400 and rep.target_met
    assert c.allow_below is not None and c.action_at is not None
    # the classifier is sure below 0.3 and above 0.8: the cascade sends about the middle half
    assert 0.2 <= c.allow_below <= 0.4 and 0.7 <= c.action_at <= 0.9
    assert 0.3 <= c.llm_share <= 0.6
    # better than either alone on items it was not chosen on (the LLM errs at the ends, the classifier in the middle)
    assert c.f1 > rep.llm_only.f1 and c.f1 > rep.classifier_only.f1
    assert rep.delta_f1_vs_llm_ci is not None and rep.delta_f1_vs_llm_ci[0] > 0
    assert rep.policy_version == version
    # an impossible target is said, with the best cascade within the share
    rep2 = choose_cascade(log, llm, policy="spam_scams", label="spam", max_llm_share=0.05, max_f1_loss=0.0, seed=1)
    assert not rep2.target_met and rep2.chosen_tune.llm_share <= 0.05


def test_cli_cascade_writes_a_file_run_can_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores_p, verdicts_p, _ = _golden(tmp_path)
    out = tmp_path / "cascade.yaml"
    r = CliRunner().invoke(cli, ["classifier", "cascade", str(scores_p), "-v", str(verdicts_p), "-m", "spam=spam_scams", "-o", str(out), "--max-llm-share", "0.6", "--max-f1-loss", "0"])
    assert r.exit_code == 0, r.output
    assert "spam -> spam_scams: allow below" in r.stdout and "dF1 cascade-LLM +" in r.stdout
    bands = load_cascade(out)
    assert bands["spam_scams"].label == "spam" and bands["spam_scams"].policy_version
    r = CliRunner().invoke(cli, ["classifier", "cascade", str(scores_p), "-v", str(verdicts_p), "-m", "spam=spam_scams", "--max-llm-share", "0.01", "--max-f1-loss", "0", "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)[0]["target_met"] is False
    r = CliRunner().invoke(cli, ["classifier", "cascade", str(scores_p), "-v", str(verdicts_p), "-m", "spam=hate_speech"])
    assert r.exit_code == 2 and "no verdict for policy 'hate_speech'" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item_id": "x"}\n')
    r = CliRunner().invoke(cli, ["classifier", "cascade", str(scores_p), "-v", str(bad), "-m", "spam=spam_scams"])
    assert r.exit_code == 2 and f"{bad}:1: not a cotmod verdict" in r.output


def test_sync_check_flags_a_cascade_chosen_for_another_policy_version(tmp_path: Path) -> None:
    import yaml

    from cotmod.governance._sync import check_manifest, update_manifest

    mod_ = AsyncModerator(backend=FakeBackend(default=good), settings=Settings())
    pid = "spam_scams"
    version = mod_.policies[pid].version
    m = tmp_path / "enforcement.yaml"
    m.write_text(yaml.safe_dump({"policies": {}}))
    update_manifest(m, mod_, policies=[pid])
    man = yaml.safe_load(m.read_text())
    man["policies"][pid]["classifier"] = {"label_map": {"spam": pid}, "cascade": "cascade.yaml"}
    m.write_text(yaml.safe_dump(man))

    def findings() -> list[str]:
        return [f.message for f in check_manifest(m, mod_, policies=[pid]) if f.pathway == "classifier"]

    assert any("cascade.yaml does not exist" in f for f in findings())
    cfile = tmp_path / "cascade.yaml"
    cfile.write_text(CASCADE + f"    policy_version: {version}\n")
    assert findings() == []
    cfile.write_text(CASCADE + "    policy_version: 0.0.1\n")
    assert findings() == [f"cascade bands were chosen for {pid} 0.0.1, policy is {version}: re-run cotmod eval and cotmod classifier cascade"]
    cfile.write_text(CASCADE.replace("label: spam", "label: scam") + f"    policy_version: {version}\n")
    assert findings() == [f"the cascade routes {pid} by label 'scam', which the label map does not map to {pid}"]


def test_cli_cascade_items_without_a_verdict_are_said_and_exit_1(tmp_path: Path) -> None:
    """Items the LLM did not decide (no verdict line: failed, dead-lettered, another run) are left
    out: one line says how many and on how many the bands stand, exit 1 (not all decided).
    Rows without ground truth are left out by design: said, exit code unchanged."""
    scores_p, verdicts_p, _ = _golden(tmp_path)
    lines = verdicts_p.read_text().splitlines()
    part = tmp_path / "part.jsonl"
    part.write_text("\n".join(lines[:300]) + "\n")
    args = ["classifier", "cascade", str(scores_p), "-m", "spam=spam_scams", "--max-llm-share", "0.6", "--max-f1-loss", "0"]
    r = CliRunner().invoke(cli, [*args, "-v", str(part)])
    assert r.exit_code == 1, r.output
    assert f"{scores_p}: 100 item(s) with ground truth have no verdict for spam_scams in {part}: left out" in r.stderr
    assert "reported on the other 300" in r.stderr
    rows = [json.loads(x) for x in scores_p.read_text().splitlines()]
    for row in rows[:50]:
        row.pop("label_spam")
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps(row) + "\n" for row in rows))
    r = CliRunner().invoke(cli, ["classifier", "cascade", str(unlabelled), *args[3:], "-v", str(verdicts_p)])
    assert r.exit_code == 0, r.output
    assert f"{unlabelled}: 50 row(s) without ground truth for spam: left out" in r.stderr and "no verdict" not in r.stderr
