"""bench_triage.py's figures, on hand-made answers (the model run itself is a benchmark)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

from .conftest import ROOT


def _load() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_triage", ROOT / "benchmarks" / "bench_triage.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bt = _load()
MAPPING = {"labels": {"insult": {"policies": ["harassment_bullying"]}, "threat": {"policies": ["violent_threats"]}}}


def row(i: str, **labels: int) -> dict[str, Any]:
    any_ = int(any(labels.values()))
    return {"id": i, "labels": {"insult": 0, "threat": 0, **labels, "any_violation": any_}}


def test_measure_counts_gold_recall_benign_none_picks_and_fallbacks() -> None:
    rows = [row("a", insult=1), row("b", threat=1), row("c"), row("d"), row("e", insult=1)]
    answers = {
        "a": {"selected": ["harassment_bullying", "violent_threats"], "yes": 2},
        "b": {"selected": ["hate_speech"], "yes": 3},  # capped at 1 by triage_max
        "c": {"selected": [], "yes": 0},
        "d": {"selected": ["adult_sexual_content"], "yes": 1},
        "e": {"selected": None, "yes": 0},  # invalid output: the engine would judge every policy
    }
    m = bt.measure(rows, answers, MAPPING)
    assert (m["harmful"], m["benign"], m["fallbacks"], m["capped"]) == (2, 2, 1, 1)
    assert m["gold_recall"] == 0.5 and m["benign_none"] == 0.5
    assert m["pick_precision"] == round(1 / 3, 3) and m["selected_per_harmful"] == 1.5
    assert m["wrong_picks"] == {"insult -> violent_threats": 1, "threat -> hate_speech": 1, "benign -> adult_sexual_content": 1}


def test_reselect_applies_another_threshold_and_keeps_the_most_probable() -> None:
    a = {"selected": ["spam_scams"], "scores": {"hate_speech": 0.2, "spam_scams": 0.9, "violent_threats": 0.35}}
    assert bt.reselect(a, 0.3, 2)["selected"] == ["spam_scams", "violent_threats"]
    assert bt.reselect(a, 0.1, 2)["selected"] == ["spam_scams", "violent_threats"]
    assert bt.reselect(a, 0.1, 3)["selected"] == ["spam_scams", "violent_threats", "hate_speech"]
    assert bt.reselect({"selected": None, "scores": None}, 0.1, 2)["selected"] is None


def test_pooled_measure_takes_each_sets_own_gold_policies() -> None:
    """Rows of two sets measured together: each row's gold policies come from its own set's
    mapping (``golds``), so a label name one set does not map cannot leak into another's."""
    spam_map = {"labels": {"spam": {"policies": ["spam_scams"]}}}
    jig = [row("j1", insult=1), row("j2")]
    sms = [{"id": "s1", "labels": {"spam": 1, "any_violation": 1}}, {"id": "s2", "labels": {"spam": 0, "any_violation": 0}}]
    golds = {**{r["id"]: bt.gold_policies(r, MAPPING) for r in jig}, **{r["id"]: bt.gold_policies(r, spam_map) for r in sms}}
    answers = {
        "j1": {"selected": ["violent_threats"], "yes": 1, "scores": {"violent_threats": 0.6, "harassment_bullying": 0.2}},
        "j2": {"selected": [], "yes": 0, "scores": {"violent_threats": 0.1}},
        "s1": {"selected": ["spam_scams"], "yes": 1, "scores": {"spam_scams": 0.9}},
        "s2": {"selected": [], "yes": 0, "scores": {"spam_scams": 0.05}},
    }
    m = bt.measure(jig + sms, answers, golds=golds)
    assert (m["harmful"], m["benign"], m["gold_recall"], m["benign_none"]) == (2, 2, 0.5, 1.0)
    assert m["wrong_picks"] == {"insult -> violent_threats": 1}
    swept = bt.sweep(jig + sms, answers, golds, 2)
    assert swept["0.3"]["gold_recall"] == 0.5
    assert swept["0.2"]["gold_recall"] == 1.0  # harassment_bullying (0.2) joins j1's picks
    assert swept["0.1"]["benign_none"] == 0.5  # j2's violent_threats (0.1) is picked


def test_paired_vs_baseline_pairs_items_and_counts_discordant_ones() -> None:
    rows = [row("h1", insult=1), row("h2", insult=1), row("h3", threat=1), row("b1"), row("b2")]
    golds = {r["id"]: bt.gold_policies(r, MAPPING) for r in rows}
    base = {"h1": {"selected": []}, "h2": {"selected": ["harassment_bullying"]}, "h3": {"selected": ["violent_threats"]},
            "b1": {"selected": []}, "b2": {"selected": ["hate_speech"]}}
    this = {"h1": {"selected": ["harassment_bullying"]}, "h2": {"selected": ["harassment_bullying"]},
            "h3": {"selected": None},  # invalid output in this run: left out of both
            "b1": {"selected": ["spam_scams"]}, "b2": {"selected": []}}
    d = bt.paired_vs(rows, this, base, golds)
    g = d["gold_recall"]
    assert (g["n"], g["baseline"], g["this"], g["delta"]) == (2, 0.5, 1.0, 0.5)
    assert (g["mcnemar"]["baseline_only"], g["mcnemar"]["this_only"]) == (0, 1)
    b = d["benign_none"]
    assert (b["n"], b["baseline"], b["this"], b["delta"]) == (2, 0.5, 0.5, 0.0)
    assert (b["mcnemar"]["baseline_only"], b["mcnemar"]["this_only"]) == (1, 1)


def test_a_catch_all_label_does_not_make_every_pick_right() -> None:
    """AILuminate rows are positive on their hazard and on ``unsafe``, mapped to every policy:
    only the hazard's policies count as gold, as in ``cotmod eval``'s attribution."""
    mapping = {"labels": {"cse": {"policies": ["minor_safety"]}, "ssh": {"policies": ["self_harm"]},
                          "unsafe": {"policies": ["minor_safety", "self_harm", "spam_scams"]}}}
    r = {"id": "a1", "labels": {"cse": 1, "ssh": 0, "unsafe": 1, "any_violation": 1}}
    assert bt.gold_policies(r, mapping) == ["minor_safety"]
    only_unsafe = {"id": "a2", "labels": {"cse": 0, "ssh": 0, "unsafe": 1, "any_violation": 1}}
    assert bt.gold_policies(only_unsafe, mapping) == ["minor_safety", "self_harm", "spam_scams"]
    m = bt.measure([r], {"a1": {"selected": ["spam_scams"], "yes": 1}}, mapping)
    assert m["gold_recall"] == 0.0 and m["pick_precision"] == 0.0
