"""The quality benchmark's pure helpers (benchmarks/bench_quality.py): options, gold for
"anything violated", stratified seeded samples, per-item records and figures. No model runs."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cotmod.evals import ItemFlags

from .conftest import ROOT


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = mod
    spec.loader.exec_module(mod)
    return mod


bq = _load()


# -- options ------------------------------------------------------------------------------------
def test_parse_n_and_its_errors() -> None:
    assert bq.parse_n(["xstest=5", "hatecheck=0", "xstest=7"]) == {"xstest": 7, "hatecheck": 0}
    for bad, why in (("xstest", "SET=N"), ("nope=3", "SET=N"), ("xstest=a", "not a whole number"), ("xstest=-1", ">= 0")):
        with pytest.raises(ValueError, match=why):
            bq.parse_n([bad])


def test_parse_policies_defaults_and_overrides() -> None:
    modes = bq.parse_policies([])
    assert modes["hatecheck"] == modes["xstest"] == "mapped"
    assert {modes[s] for s in bq.SETS if s not in ("hatecheck", "xstest")} == {"all"}
    assert set(bq.parse_policies(["all"]).values()) == {"all"}
    assert bq.parse_policies(["all", "xstest=mapped"])["xstest"] == "mapped"
    with pytest.raises(ValueError, match="--policies"):
        bq.parse_policies(["some"])
    with pytest.raises(ValueError, match="--policies"):
        bq.parse_policies(["nope=all"])


def test_parse_variant_settings() -> None:
    got = bq.parse_variant_settings(["evid:decision_logic=true,triage=off,evidence=1,max_reasks=3,temperature=0.5,strategy=combined"])
    assert got == {"evid": {"decision_logic": True, "triage": False, "evidence": 1, "max_reasks": 3, "temperature": 0.5, "strategy": "combined"}}
    for bad in ("noname", "naive:triage=true", "x:triage"):
        with pytest.raises(ValueError, match="--variant-settings"):
            bq.parse_variant_settings([bad])


def test_builtin_variants_separate_decision_logic_and_triage() -> None:
    assert bq.VARIANTS["v12"] == {"decision_logic": False, "triage": False}
    assert bq.VARIANTS["new"] == {"decision_logic": True, "triage": True}
    assert bq.VARIANTS["new-notriage"] == {"decision_logic": True, "triage": False}


# -- gold and samples ----------------------------------------------------------------------------
def jig(threat: int = 0, insult: int = 0, ih: int = 0, toxic: int = 0, obscene: int = 0) -> dict[str, Any]:
    return {"id": "j", "labels": {"threat": threat, "insult": insult, "identity_hate": ih}, "toxic": toxic, "severe_toxic": 0, "obscene": obscene}


def test_gold_any() -> None:
    assert bq.gold_any("jigsaw_toxic", jig(insult=1, toxic=1)) == 1
    assert bq.gold_any("jigsaw_toxic", jig()) == 0
    # toxic / obscene without a mapped label: ambiguous, never sampled
    assert bq.gold_any("jigsaw_toxic", jig(toxic=1)) is None
    assert bq.gold_any("jigsaw_toxic", jig(obscene=1)) is None
    # AILuminate: other hazards unknown, unsafe 1
    assert bq.gold_any("ailuminate_demo", {"labels": {"vcr": None, "cse": 1, "unsafe": 1}}) == 1
    assert bq.gold_any("xstest", {"labels": {"unsafe": 0}}) == 0
    assert bq.gold_any("x", {"labels": {"a": None, "b": 0}}) is None


def test_allocate_even_remainder_first_and_capped() -> None:
    assert bq.allocate(5, {"neg": 10, "pos": 10}) == {"neg": 3, "pos": 2}
    assert bq.allocate(10, {"a": 2, "b": 10, "c": 10}) == {"a": 2, "b": 4, "c": 4}
    assert bq.allocate(0, {"a": 1}) == {"a": 0}
    with pytest.raises(ValueError, match="only 3 available"):
        bq.allocate(4, {"a": 1, "b": 2})


def rows(n_pos: int, n_neg: int, n_amb: int = 0) -> list[dict[str, Any]]:
    out = [{**jig(insult=1), "id": f"p{i}"} for i in range(n_pos)]
    out += [{**jig(), "id": f"n{i}"} for i in range(n_neg)]
    out += [{**jig(toxic=1), "id": f"a{i}"} for i in range(n_amb)]
    return out


def test_draw_is_seeded_stratified_and_skips_ambiguous_and_excluded() -> None:
    data = rows(20, 50, 30)
    a = bq.draw("jigsaw_toxic", data, 9, 1)
    assert [r["id"] for r in a] == [r["id"] for r in bq.draw("jigsaw_toxic", data, 9, 1)]
    assert [r["id"] for r in a] != [r["id"] for r in bq.draw("jigsaw_toxic", data, 9, 2)]
    assert Counter(r["id"][0] for r in a) == {"n": 5, "p": 4}
    excl = frozenset(f"p{i}" for i in range(18))
    b = bq.draw("jigsaw_toxic", data, 9, 1, exclude=excl)
    assert not {r["id"] for r in b} & excl and all(not r["id"].startswith("a") for r in b)
    with pytest.raises(ValueError, match="--n jigsaw_toxic=80"):
        bq.draw("jigsaw_toxic", data, 80, 1)


def test_ailuminate_is_stratified_by_hazard() -> None:
    data = [{"id": f"{h}{i}", "labels": {"unsafe": 1}, "hazard": h} for h in ("cse", "hte", "vcr") for i in range(10)]
    got = Counter(r["hazard"] for r in bq.draw("ailuminate_demo", data, 7, 3))
    assert got == {"cse": 3, "hte": 2, "vcr": 2}


def test_hatecheck_and_xstest_keep_the_1x_benchmark_items() -> None:
    """The default sample of the two 1.x sets is the committed 1.x benchmark sample, item for item."""
    s = bq.benchmark_sample(["hatecheck", "xstest"], bq.DEFAULT_N, 2026, None)
    committed = ROOT / "benchmarks" / "results" / "quality-qwen1.5b-v1.2" / "sample.jsonl"
    old = [json.loads(line)["id"] for line in committed.read_text().splitlines()]
    assert [r["id"] for r in s["hatecheck"] + s["xstest"]] == old


def test_dev_sample_is_disjoint_from_the_benchmark_sample() -> None:
    sets = ["xstest", "jigsaw_toxic", "sms_spam"]
    bench = bq.benchmark_sample(bq.SETS, bq.DEFAULT_N, 2026, None)
    dev = bq.benchmark_sample(sets, {**bq.DEFAULT_N, "xstest": 100, "jigsaw_toxic": 60}, 2026, 7)
    held = {r["id"] for rs in bench.values() for r in rs}
    got = {r["id"] for rs in dev.values() for r in rs}
    assert len(got) == 100 + 60 + bq.DEFAULT_N["sms_spam"] and not got & held


def test_golden_row_and_mapping_add_any_violation() -> None:
    row = {"id": "x", "text": "t", "labels": {"hateful": 1}, "functionality": "f"}
    assert bq.golden_row("hatecheck", row) == {"id": "x", "text": "t", "labels": {"hateful": 1, bq.ANY: 1}, "functionality": "f"}
    labels = {"hateful": ["hate_speech"]}
    assert bq.in_play("mapped", labels, ["a", "hate_speech"]) == ["hate_speech"]
    assert bq.in_play("all", labels, ["a", "hate_speech"]) == ["a", "hate_speech"]
    doc = bq.mapping_doc("hatecheck", labels, ["functionality"], ["a", "hate_speech"])
    assert doc["labels"][bq.ANY] == {"policies": ["a", "hate_speech"]} and doc["labels"]["hateful"] == {"policies": ["hate_speech"]}
    # --guidelines holding part of the starter pack: labels keep only the policies loaded
    part = bq.mapping_doc("x", {"unsafe": ["violent_threats", "dangerous_activities"], "cse": ["minor_safety"]}, [], ["dangerous_activities"])
    assert part["labels"] == {"unsafe": {"policies": ["dangerous_activities"]}, bq.ANY: {"policies": ["dangerous_activities"]}}
    row = {"id": "y", "text": "t", "labels": {"unsafe": 1, "cse": 1, bq.ANY: 1}}
    assert bq.keep_labels(row, part["labels"])["labels"] == {"unsafe": 1, bq.ANY: 1}
    assert bq.keep_labels(row, {**part["labels"], "cse": {}}) is row


def test_write_once_refuses_another_sample(tmp_path: Path) -> None:
    p = tmp_path / "sample.jsonl"
    bq.write_once(p, "a\n")
    bq.write_once(p, "a\n")
    with pytest.raises(ValueError, match="another sample"):
        bq.write_once(p, "b\n")
    assert p.read_text() == "a\n"


# -- records and figures -------------------------------------------------------------------------
def item(gold: int, iid: str = "i") -> dict[str, Any]:
    return {"id": iid, "labels": {"hateful": gold, bq.ANY: gold}}


def dec(pid: str, violates: bool, score: float) -> dict[str, Any]:
    return {"policy_id": pid, "violates": violates, "score": score}


def test_cotmod_record_ok_error_missing() -> None:
    v = {"status": "ok", "decisions": [dec("hate_speech", True, 0.8), dec("spam_scams", False, 0.3), dec("other", True, 0.99)],
         "attempts": 4, "reasks": 1, "usage": {"total_tokens": 900}}
    r = bq.cotmod_record(item(1), v, None, ["hate_speech", "spam_scams"])
    assert (r.status, r.pred, r.flagged, r.score, r.calls, r.tokens, r.reasks) == ("ok", 1, ["hate_speech"], 0.8, 4, 900, 1)
    assert r.gold_labels == ["hateful"] and r.triage is None
    t = bq.cotmod_record(item(0), {**v, "triage": {"selected": ["hate_speech"], "skipped": ["spam_scams"], "fallback": None}}, None, ["hate_speech"])
    assert t.triage == "ok"
    t = bq.cotmod_record(item(0), {**v, "triage": {"selected": [], "skipped": [], "fallback": "invalid"}}, None, ["hate_speech"])
    assert t.triage == "fallback"
    e = bq.cotmod_record(item(1), None, {"id": "i", "attempts": 3, "error_type": "ModelOutputError"}, ["hate_speech"])
    assert (e.status, e.pred, e.calls, e.error_type) == ("error", 0, 3, "ModelOutputError")  # wrong: a harmful item missed
    assert bq.cotmod_record(item(0), None, {"id": "i"}, ["hate_speech"]).pred == 1  # wrong: a benign item flagged
    assert bq.cotmod_record(item(0), None, None, ["hate_speech"]).status == "missing"


def test_naive_record_and_parse() -> None:
    assert bq.parse_naive('{"answer": "yes"}') == "yes"
    assert bq.parse_naive('{"answer": "maybe"}') is None
    assert bq.parse_naive("not json") is None and bq.parse_naive(None) is None
    assert bq.naive_record(item(0), {"answer": "yes", "tokens": 40}).pred == 1
    unparsed = bq.naive_record(item(0), {"answer": None})
    assert (unparsed.status, unparsed.pred) == ("error", 1)
    assert bq.naive_record(item(1), None).status == "missing"


def test_auprc_hand_example_and_fallback() -> None:
    # ranked: 0.9 pos (P 1, R .5), 0.8 neg, 0.7 pos (P 2/3, R 1), 0.1 neg → AP = .5*1 + .5*2/3
    y, s = [1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]
    assert bq.auprc(y, s) == pytest.approx(0.5 + 1 / 3)
    assert bq.average_precision(y, s) == pytest.approx(0.5 + 1 / 3)
    assert bq.auprc([1, 1], [0.2, 0.3]) is None and bq.auprc([], []) is None


def rec(iid: str, gold: int, status: str, pred: int | None, score: float | None = None, calls: int = 1) -> Any:
    return bq.ItemRecord(id=iid, gold=gold, gold_labels=[], status=status, pred=pred, score=score, calls=calls)


def test_headline_counts_errors_as_wrong_and_skips_missing() -> None:
    recs = [
        rec("a", 1, "ok", 1, 0.9, calls=3),
        rec("b", 1, "error", 0, calls=2),  # an error on a harmful item: a false negative
        rec("c", 0, "ok", 0, 0.2, calls=3),
        rec("d", 0, "error", 1),  # an error on a benign item: a false positive
        rec("e", 1, "missing", None),
    ]
    h = bq.headline(recs, rounds=50)
    assert h["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert (h["precision"], h["recall"], h["fpr"], h["errors"], h["missing"], h["n"]) == (0.5, 0.5, 0.5, 2, 1, 4)
    assert h["calls_per_item"] == pytest.approx(9 / 4) and h["calls_max"] == 3
    assert h["error_types"] == {"error": 2}  # records built by hand carry no type
    assert h["auprc"] == 1.0  # over the decided items a (pos, 0.9) and c (neg, 0.2)


def test_paired_vs_pairs_only_items_both_have() -> None:
    naive = [rec("a", 1, "ok", 0), rec("b", 0, "ok", 1), rec("c", 0, "ok", 0), rec("d", 1, "missing", None)]
    other = [rec("a", 1, "ok", 1), rec("b", 0, "error", 1), rec("c", 0, "ok", 0), rec("d", 1, "ok", 1)]
    d = bq.paired_vs(naive, other, rounds=50)
    assert d is not None and d["n"] == 3
    assert d["mcnemar"]["b_correct_only"] == 1 and d["mcnemar"]["a_correct_only"] == 0
    assert d["recall"]["delta"] == 1.0 and d["fpr"]["delta"] == 0.0


def test_paired_auprc_on_the_items_both_scored() -> None:
    """base ranks a benign item second (AP 0.5 + 1/3), other ranks both harmful items first (AP
    1); an error, a missing item and an unscored item are left out of the pairing."""
    base = [rec("a", 1, "ok", 1, 0.9), rec("b", 0, "ok", 1, 0.8), rec("c", 1, "ok", 1, 0.7), rec("d", 0, "ok", 0, 0.1),
            rec("e", 1, "error", 0), rec("f", 0, "ok", 0, 0.5)]
    other = [rec("a", 1, "ok", 1, 0.9), rec("b", 0, "ok", 0, 0.1), rec("c", 1, "ok", 1, 0.8), rec("d", 0, "ok", 0, 0.2),
             rec("e", 1, "ok", 1, 0.9), rec("f", 0, "ok", 0, None), rec("g", 1, "ok", 1, 0.9)]
    d = bq.paired_auprc(base, other, rounds=200)
    assert d is not None and d["n"] == 4
    assert d["a"] == pytest.approx(0.5 + 1 / 3) and d["b"] == 1.0 and d["delta"] == pytest.approx(1 / 6)
    lo, hi = d["ci95"]
    assert 0.0 <= lo <= d["delta"] <= hi <= 1.0  # other is never worse on a resample: it ranks perfectly
    assert bq.paired_auprc(base, other, rounds=200) == d  # seeded
    assert bq.paired_auprc([rec("a", 1, "ok", 1, 0.9)], [rec("a", 1, "ok", 1, 0.2)]) is None  # one class only
    pv = bq.paired_vs(base, other, rounds=50)
    assert pv is not None and pv["auprc"]["delta"] == pytest.approx(1 / 6)
    naive = [rec(r.id, r.gold, r.status, r.pred) for r in base]  # no scores: no AUPRC pairing
    assert "auprc" not in (bq.paired_vs(naive, other, rounds=50) or {})


def test_pair_attribution_hand_example() -> None:
    flags = [
        ItemFlags(id="1", kind="harmful", gold=["hateful"], own=["hate_speech"], flagged=["hate_speech", "harassment_bullying"]),
        ItemFlags(id="2", kind="harmful", gold=["cse"], own=["minor_safety"], flagged=["minor_safety"]),
        ItemFlags(id="3", kind="harmful", gold=["hte"], own=["hate_speech"], flagged=[]),
        ItemFlags(id="4", kind="benign", gold=[], own=[], flagged=["spam_scams"]),  # not a harmful item
    ]
    got = bq.pair_attribution(flags)
    assert got == {"attribution_precision": 2 / 3, "flagged_pairs_harmful": 3, "blamed_per_harmful": 1.0, "blamed_max": 2}


def test_seconds_per_item_from_timing_or_latencies(tmp_path: Path) -> None:
    t = tmp_path / "timing.jsonl"
    assert bq.seconds_per_item(t, [2000.0, 4000.0], 2) == pytest.approx(1.5)
    bq.add_timing(t, 30.0, 10)
    bq.add_timing(t, 10.0, 10)
    assert bq.seconds_per_item(t, [1.0], 2) == pytest.approx(2.0)


def test_read_jsonl_skips_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"id": 1}\n{"id": 2}\n{"id"')
    assert bq.read_jsonl(p) == [{"id": 1}, {"id": 2}]


# -- the operating point: a threshold chosen on a development run, applied to the benchmark ---------
def test_cotmod_record_decides_by_score_where_a_policy_has_a_threshold() -> None:
    v = {"status": "ok", "decisions": [dec("hate_speech", False, 0.4), dec("spam_scams", True, 0.2)]}
    assert bq.cotmod_record(item(1), v, None, ["hate_speech", "spam_scams"]).flagged == ["spam_scams"]
    op = {"hate_speech": {"review": 0.3}}  # spam_scams has none: the model's violates stands
    r = bq.cotmod_record(item(1), v, None, ["hate_speech", "spam_scams"], op)
    assert (r.pred, r.flagged) == (1, ["hate_speech", "spam_scams"])
    op = {"hate_speech": {"review": 0.5}, "spam_scams": {"review": 0.5}}
    r = bq.cotmod_record(item(1), v, None, ["hate_speech", "spam_scams"], op)
    assert (r.pred, r.flagged) == (0, [])
    assert bq.cotmod_record(item(1), v, None, ["hate_speech"], {"hate_speech": {"review": 0.4}}).flagged == ["hate_speech"]  # >=


def _pred(gold: int, score: float | None, status: str = "ok", variant: str = "new", set_: str = "s") -> dict[str, Any]:
    return {"set": set_, "variant": variant, "gold": gold, "score": score, "status": status}


def test_shared_threshold_maximises_f1_ties_to_the_higher_threshold() -> None:
    rows = [_pred(1, 0.9), _pred(1, 0.2), _pred(0, 0.5), _pred(0, 0.1), _pred(0, 0.0)]
    # t=0.9: tp1 fn1 -> 2/3; t=0.5: tp1 fp1 fn1 -> 0.5; t=0.2: tp2 fp1 -> 0.8; t=0.1: tp2 fp2 -> 2/3
    got = bq.shared_threshold(rows)
    assert (got["review"], round(got["f1"], 3), got["items"], got["errors"]) == (0.2, 0.8, 5, 0)
    flat = [_pred(1, 0.7), _pred(0, 0.5), _pred(1, 0.3), _pred(0, 0.2), _pred(0, 0.1), _pred(1, 0.05)]
    # t=0.7 (tp1 fn2) 0.5 ; t=0.3 (tp2 fp1 fn1) 2/3 ; t=0.05 (tp3 fp3) 2/3: a tie, the higher wins
    assert bq.shared_threshold(flat)["review"] == 0.3


def test_shared_threshold_counts_errors_as_wrong_and_needs_a_harmful_item() -> None:
    rows = [_pred(1, 0.9), _pred(0, 0.5), _pred(1, None, "error"), _pred(0, None, "error")]
    got = bq.shared_threshold(rows)  # t=0.9: tp1, fp 0+1, fn 0+1 -> 0.5; t=0.5: tp1 fp2 fn1 -> 0.4
    assert (got["review"], got["f1"], got["errors"]) == (0.9, 0.5, 2)
    with pytest.raises(ValueError, match="no decided harmful item"):
        bq.shared_threshold([_pred(0, 0.5), _pred(1, None, "error")])


def test_reuse_keeps_the_seeds_the_sample_was_drawn_with(tmp_path: Path) -> None:
    assert bq.reused_seeds(tmp_path, 2026, None) == (2026, None)  # nothing recorded
    (tmp_path / "result.json").write_text(json.dumps({"seed": 2026, "dev": 11}))
    assert bq.reused_seeds(tmp_path, 2026, None) == (2026, 11)  # a re-measure stays a development run
    (tmp_path / "result.json").write_text(json.dumps({"seed": 7, "dev": None}))
    assert bq.reused_seeds(tmp_path, 2026, None) == (7, None)


def test_tune_operating_point_only_from_a_development_run(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    lines = [_pred(1, 0.9), _pred(0, 0.5), _pred(1, 0.2, set_="t"), _pred(1, 0.99, variant="v12")]
    (dev / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (dev / "result.json").write_text(json.dumps({"dev": 11}))
    doc = bq.tune_operating_point(dev, "new", ["hate_speech", "spam_scams"])
    assert doc["thresholds"] == {"hate_speech": {"review": 0.2}, "spam_scams": {"review": 0.2}}
    assert doc["chosen_on"]["dev_seed"] == 11 and doc["chosen_on"]["sets"] == ["s", "t"] and doc["chosen_on"]["items"] == 3
    p = tmp_path / "op.yaml"
    p.write_text(json.dumps(doc))
    from cotmod.engine import load_thresholds

    assert load_thresholds(p) == doc["thresholds"]  # cotmod's own reader takes it (cotmod eval --thresholds)
    (dev / "result.json").write_text(json.dumps({"dev": None}))
    with pytest.raises(ValueError, match="never chosen on the benchmark sample"):
        bq.tune_operating_point(dev, "new", ["hate_speech"])
    with pytest.raises(ValueError, match="no prediction of variant 'naive'"):
        bq.tune_operating_point(dev, "naive", ["hate_speech"])


# -- bench_spans.py's helpers ----------------------------------------------------------------------
def _load_spans() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_spans", ROOT / "benchmarks" / "bench_spans.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_spans"] = mod
    spec.loader.exec_module(mod)
    return mod


bs = _load_spans()


def test_spans_ranges() -> None:
    assert bs.ranges({7, 1, 2, 3}) == [[1, 4], [7, 8]]
    assert bs.ranges([]) == []


def test_spans_draw_seeded_split_and_dev_disjoint() -> None:
    data = [{"id": f"p{i}", "spans": [1], "split": "test"} for i in range(30)]
    data += [{"id": f"e{i}", "spans": [], "split": "test"} for i in range(10)]
    data += [{"id": f"t{i}", "spans": [1], "split": "train"} for i in range(30)]
    a = bs.draw(data, 5, 2, 1, "test")
    assert [r["id"] for r in a] == [r["id"] for r in bs.draw(data, 5, 2, 1, "test")]
    assert Counter(r["id"][0] for r in a) == {"p": 5, "e": 2}
    held = {r["id"] for r in bs.draw(data, 20, 5, 1, "test")}
    dev = bs.draw(data, 10, 5, 9, "test", exclude=frozenset(held))
    assert not {r["id"] for r in dev} & held
    with pytest.raises(ValueError, match="posts with spans"):
        bs.draw(data, 31, 0, 1, "test")


def test_spans_post_scores_and_summary() -> None:
    text = "you are a moron"  # 15 characters; gold "moron" = 10..14
    gold = [10, 11, 12, 13, 14]
    v = {"status": "ok", "decisions": [{
        "policy_id": "harassment_bullying", "policy_version": "1", "rationale": "r", "violates": True,
        "rule_ids": ["HB-1"], "action": "remove", "escalate": False, "confidence": 0.9, "score": 0.9,
        "evidence": [{"id": "HB-1", "quote": "a moron", "start": 8, "end": 15}],
    }]}
    sc = bs.post_scores(text, gold, v, ["harassment_bullying"])
    assert sc["f1"] == pytest.approx(2 * 5 / (7 + 5)) and sc["f1_whole_post"] == pytest.approx(10 / 20) and sc["f1_no_spans"] == 0.0
    err = bs.post_scores(text, [], None, ["harassment_bullying"])  # an error verdict predicts no span
    assert err["f1"] == 1.0 and err["f1_whole_post"] == 0.0
    posts = [
        {"status": "ok", "gold": gold, **sc, "flagged": ["harassment_bullying"], "reasks": 1, "dropped": 2, "calls": 4, "tokens": 100},
        {"status": "error", "gold": [], **err, "flagged": [], "reasks": 0, "dropped": 0, "calls": 3, "tokens": 0},
        {"status": "missing", "gold": gold, "pred": set(), "f1": 0.0, "f1_whole_post": 0.0, "f1_no_spans": 0.0, "flagged": [], "calls": None},
    ]
    s = bs.summarise(posts, 20, 0)
    assert (s["n"], s["errors"], s["missing"]) == (2, 1, 1)
    assert s["span_f1"] == pytest.approx((10 / 12 + 1.0) / 2) and s["baseline_whole_post"] == pytest.approx(0.25)
    assert s["baseline_no_spans"] == pytest.approx(0.5) and s["span_f1_flagged"] == pytest.approx(10 / 12)
    assert (s["dropped_citations"], s["reasks_per_item"], s["calls_per_item"]) == (2, 1.0, 3.5)


def test_baseline_pairs_like_with_like() -> None:
    assert bq.baseline_of("new", "v14") == "v14" and bq.baseline_of("new@op", "v14") == "v14@op"
    assert bq.baseline_of("naive", "v14") is None and bq.baseline_of("v14@op", "v14") is None


def test_reuse_with_a_baseline_pairs_every_variant_with_it(tmp_path: Path) -> None:
    """A committed run re-measured with --reuse, its cotmod variant copied in as a "previous
    policies" variant: paired against itself it changes nothing, and naive stays paired too."""
    import shutil
    import subprocess

    src = ROOT / "benchmarks" / "results" / "quality-qwen1.5b-v1.4-issue11"
    out = tmp_path / "out"
    shutil.copytree(src / "sms_spam", out / "sms_spam")
    shutil.copytree(src / "sms_spam" / "new", out / "sms_spam" / "v14")
    (out / "result.json").write_text(json.dumps({"seed": 2026, "dev": None}))
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_quality.py"), "--out", str(out), "--reuse", "--sets", "sms_spam",
         "--baseline", "v14", "--operating-point", str(src / "operating_point.yaml"), "--bootstrap", "50"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads((out / "result.json").read_text())
    v = got["sets"]["sms_spam"]["variants"]
    assert set(v) == {"naive", "new", "v14", "new@op", "v14@op"}
    for name, base in (("new", "v14"), ("new@op", "v14@op")):
        pb = v[name]["paired_vs_baseline"]
        assert pb["baseline"] == base and pb["n"] == 30
        assert pb["f1"]["delta"] == 0 and pb["mcnemar"]["p_value"] == 1.0
        assert v[name]["attribution_vs_v14"] is not None
    assert "paired_vs_baseline" not in v["v14"] and "paired_vs_naive" in v["new"]
    assert v["new@op"]["operating_point"] and "paired_vs_model_decision" in v["new@op"]
    assert "new vs v14 (paired, 30 items): dF1 +0.000" in r.stdout
    assert got["pooled"]["new@op"]["paired_vs_baseline"]["baseline"] == "v14@op"


def test_an_unknown_baseline_is_one_clear_line_before_anything_runs(tmp_path: Path) -> None:
    import shutil
    import subprocess

    src = ROOT / "benchmarks" / "results" / "quality-qwen1.5b-v1.4-issue11"
    out = tmp_path / "out"
    shutil.copytree(src / "sms_spam", out / "sms_spam")
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_quality.py"), "--out", str(out), "--reuse", "--sets", "sms_spam", "--baseline", "v13"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "bench_quality: --baseline v13: not a variant of this run (variants: naive, new)"
    assert not (out / "result.json").exists()


def test_parse_curve_sorts_and_refuses_bad_thresholds() -> None:
    assert bq.parse_curve("0.1, 0.03,0.1,") == [0.03, 0.1]
    for bad, msg in (("0.1,x", "'x' is not a number"), ("1.5", "outside [0, 1]"), (" , ", "at least one threshold")):
        with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            bq.parse_curve(bad)


def test_threshold_curve_rereads_recorded_verdicts_at_each_threshold(tmp_path: Path) -> None:
    """--threshold-curve on a committed run (--reuse, no model): the model's decisions and each
    threshold, pooled; at the operating point's own threshold it agrees with VARIANT@op, and a
    lower threshold never flags fewer items."""
    import shutil
    import subprocess

    src = ROOT / "benchmarks" / "results" / "quality-qwen1.5b-v1.4-issue11"
    op_t = json.loads((src / "operating_point.yaml").read_text())["thresholds"]["spam_scams"]["review"]
    out = tmp_path / "out"
    shutil.copytree(src / "sms_spam", out / "sms_spam")
    (out / "result.json").write_text(json.dumps({"seed": 2026, "dev": None}))
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_quality.py"), "--out", str(out), "--reuse", "--sets", "sms_spam",
         "--variants", "new", "--operating-point", str(src / "operating_point.yaml"), "--bootstrap", "50",
         "--threshold-curve", f"0.5,{op_t!r},0.01"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads((out / "result.json").read_text())
    rows = got["threshold_curve"]["new"]
    assert [x["threshold"] for x in rows] == [None, 0.01, op_t, 0.5]
    new, at_op = got["pooled"]["new"], got["pooled"]["new@op"]
    assert (rows[0]["tp"], rows[0]["fp"], rows[0]["fn"]) == (new["confusion"]["tp"], new["confusion"]["fp"], new["confusion"]["fn"])
    assert rows[2]["f1"] == pytest.approx(at_op["f1"])
    assert rows[2]["benign_flagged"] == at_op["confusion"]["fp"] and rows[2]["benign"] == 15
    op_attr = got["sets"]["sms_spam"]["variants"]["new@op"]["attribution"]
    assert rows[2]["attribution_precision"] == op_attr["attribution_precision"]
    flagged = [x["tp"] + x["fp"] for x in rows[1:]]
    assert flagged == sorted(flagged, reverse=True) and flagged[0] > flagged[-1]
    assert "threshold curve of new" in r.stdout and "decision" in r.stdout


def test_the_naive_prompt_reaches_a_hosted_model_with_cotmods_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The naive baseline sends the key cotmod's own calls would send to the endpoint (here from
    COTMOD_API_KEY), so a comparison against a stronger hosted model (`--base-url`) runs both
    prompts there; with no key configured it sends a placeholder, as cotmod does for a local server."""
    from cotmod.testing import FakeOpenAIServer

    monkeypatch.chdir(tmp_path)  # no cotmod.toml in play
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    items = [{"id": "a", "text": "hello"}, {"id": "b", "text": "you idiot"}]
    with FakeOpenAIServer(handler=lambda body: {"answer": "yes" if "idiot" in body["messages"][-1]["content"] else "no"}) as srv:
        monkeypatch.setenv("COTMOD_API_KEY", "sk-bench-test-key")
        answers = tmp_path / "with-key.jsonl"
        asyncio.run(bq.run_naive(srv.base_url, "m", items, 2, answers))
        assert srv.auth_headers == ["Bearer sk-bench-test-key"] * 2
        got = {a["id"]: a["answer"] for a in bq.read_jsonl(answers)}
        assert got == {"a": "no", "b": "yes"}

        monkeypatch.delenv("COTMOD_API_KEY")
        asyncio.run(bq.run_naive(srv.base_url, "m", items, 2, tmp_path / "no-key.jsonl"))
        assert srv.auth_headers[2:] == ["Bearer not-needed"] * 2
