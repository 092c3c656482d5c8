"""Triage alone: does the one cheap call select the policies a golden item is about?

Triage (``Settings.triage``) decides which policies get a per-policy call; a policy it leaves out
is allowed unjudged. So its misses cap recall and its extra picks feed false positives and wrong
attributions downstream. This benchmark measures the triage call by itself, one short call per
item, so a triage prompt can be tried on a development sample in minutes instead of the hour a
full ``bench_quality.py`` run takes.

Items: the same seeded samples as ``bench_quality.py`` (``--seed`` for the benchmark sample,
``--dev SEED`` for a development sample drawn outside it), every policy of the guidelines in play.
The gold policies of an item are those its set's ``mapping.yaml`` maps its positive labels to.

Per set (and pooled):

* ``gold_recall``: harmful items where triage selected at least one of their gold policies (the
  per-policy call then has the chance to flag it under the right policy);
* ``benign_none``: benign items where triage selected nothing (no per-policy call at all);
* ``selected_per_item`` on harmful and benign items;
* ``pick_precision``: selected (item, policy) pairs on harmful items that are gold policies;
* ``fallbacks``: items whose triage output stayed invalid, or whose call failed in transport for
  that item only (the engine then judges every policy);
* ``capped``: items answered "yes" for more policies than ``--triage-max`` (the first are kept);
* the most frequent wrong picks (gold label -> selected policy);
* ``sweep``: the same figures had the triage selected by P(yes) >= 0.5, 0.3, 0.2, 0.1, 0.05
  (``Settings.triage_threshold``; the call asks for log-probabilities, as ``--logprobs`` does).

With ``--baseline DIR`` (another run's ``--out`` on the same sample), gold recall and benign_none are
also paired with that run's, item by item: the difference with a paired-bootstrap 95% CI and an exact
McNemar test, per set and pooled.

Usage::

    python benchmarks/bench_triage.py --dev 11 --sets jigsaw_toxic,ailuminate_demo --out DIR
    python benchmarks/bench_triage.py --base-url http://127.0.0.1:8080/v1 --model NAME ...

Prints a table per set and one JSON line; writes ``answers.jsonl`` and ``result.json`` to --out
(resumable: answered items are not asked again; ``--measure-only`` recomputes the figures from
them without a model).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq
import yaml

from cotmod import AsyncModerator, Item
from cotmod.evals import gold_policies as eval_gold_policies
from cotmod.evals import paired_comparison
from cotmod.policy import load_policies
from cotmod.prompting import select_by_probability

DEFAULT_SETS = "jigsaw_toxic,ailuminate_demo,xstest"


def gold_policies(row: dict[str, Any], mapping: dict[str, Any]) -> list[str] | None:
    """The policies the item's positive labels map to, as ``cotmod eval``'s attribution counts
    them (:func:`cotmod.evals.gold_policies`: a catch-all label such as AILuminate's ``unsafe``,
    mapped to every policy, does not make every pick right); [] for a benign item; None when
    ambiguous."""
    labels = row["labels"]
    if labels.get(bq.ANY) is None:
        return None
    label_policies = {lab: spec["policies"] for lab, spec in mapping["labels"].items()}
    positive = [lab for lab, val in labels.items() if lab != bq.ANY and val and lab in label_policies]
    out = eval_gold_policies(positive, label_policies)
    if labels.get(bq.ANY) and not out:  # harmful but mapped to no policy (e.g. xstest "unsafe")
        return None
    return out


async def ask(mod: AsyncModerator, policy_ids: list[str], row: dict[str, Any], sem: asyncio.Semaphore) -> dict[str, Any]:
    """The engine's triage call for one item (:meth:`AsyncModerator.triage`: same request,
    parse and re-asks as ``moderate`` makes it; the moderator asks for log-probabilities so
    that other thresholds can be measured afterwards)."""
    async with sem:
        t0 = time.perf_counter()
        out = await mod.triage(Item(row["text"], row["id"]), policy_ids)
        s = time.perf_counter() - t0
    if out.fallback is not None:  # invalid output after the re-asks (or this call failed in transport)
        return {"id": row["id"], "selected": None, "summary": "", "attempts": out.attempts, "s": s}
    yes = sum(v == "yes" for v in (out.answers or {}).values())
    return {"id": row["id"], "selected": list(out.selected), "yes": yes, "scores": out.scores,
            "summary": out.summary, "attempts": out.attempts, "s": s}


SWEEP = (0.5, 0.3, 0.2, 0.1, 0.05)


def reselect(a: dict[str, Any], threshold: float, cap: int) -> dict[str, Any]:
    """The answer as it would have selected at another threshold (from its recorded P(yes))."""
    scores = a.get("scores")
    if not scores or a["selected"] is None:
        return a
    ranked = select_by_probability(scores, threshold, cap)
    return {**a, "selected": ranked, "yes": len(ranked)}


def measure(
    rows: list[dict[str, Any]],
    answers: dict[str, dict[str, Any]],
    mapping: dict[str, Any] | None = None,
    *,
    golds: dict[str, list[str] | None] | None = None,
) -> dict[str, Any]:
    """The figures for ``rows``; each row's gold policies come from ``mapping`` (its set's), or
    from ``golds`` (by row id) for rows of several sets measured together."""
    harm = benign = hit = none = fallback = capped = 0
    sel_h = sel_b = 0
    picks = good = 0
    wrong: collections.Counter[str] = collections.Counter()
    for r in rows:
        a = answers.get(r["id"])
        gold = golds.get(r["id"]) if golds is not None else gold_policies(r, mapping or {"labels": {}})
        if a is None or gold is None:
            continue
        if a["selected"] is None:
            fallback += 1
            continue
        sel = a["selected"]
        capped += a.get("yes", 0) > len(sel)
        if gold:
            harm += 1
            sel_h += len(sel)
            hit += bool(set(sel) & set(gold))
            picks += len(sel)
            good += sum(p in gold for p in sel)
            labs = "+".join(k for k, v in r["labels"].items() if v and k != bq.ANY)
            wrong.update(f"{labs} -> {p}" for p in sel if p not in gold)
        else:
            benign += 1
            sel_b += len(sel)
            none += not sel
            wrong.update(f"benign -> {p}" for p in sel)

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 3) if b else None

    return {
        "harmful": harm, "benign": benign, "fallbacks": fallback, "capped": capped,
        "gold_recall": ratio(hit, harm), "benign_none": ratio(none, benign),
        "selected_per_harmful": ratio(sel_h, harm), "selected_per_benign": ratio(sel_b, benign),
        "pick_precision": ratio(good, picks),
        "wrong_picks": dict(wrong.most_common(8)),
    }


def sweep(
    rows: list[dict[str, Any]], answers: dict[str, dict[str, Any]], golds: dict[str, list[str] | None], cap: int
) -> dict[str, dict[str, Any]]:
    """The main figures had the triage selected at each threshold of SWEEP (from recorded P(yes))."""
    keep = ("gold_recall", "benign_none", "selected_per_harmful", "selected_per_benign", "pick_precision")
    return {
        str(t): {k: v for k, v in measure(rows, {i: reselect(a, t, cap) for i, a in answers.items()}, golds=golds).items() if k in keep}
        for t in SWEEP
    }


def paired_vs(
    rows: list[dict[str, Any]], answers: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]],
    golds: dict[str, list[str] | None],
) -> dict[str, Any]:
    """This run against a baseline run's answers on the same items: gold recall on harmful items
    and benign_none on benign ones, each as the paired difference (this − baseline) with a
    paired-bootstrap 95% CI and an exact McNemar test (items either run could not answer, or
    without a gold, are left out of both)."""
    out: dict[str, Any] = {}
    for what, harmful in (("gold_recall", True), ("benign_none", False)):
        a: list[int] = []
        b: list[int] = []
        for r in rows:
            gold, x, y = golds.get(r["id"]), answers.get(r["id"]), base.get(r["id"])
            if gold is None or x is None or y is None or x["selected"] is None or y["selected"] is None or bool(gold) != harmful:
                continue
            a.append(int(bool(set(y["selected"]) & set(gold)) if harmful else not y["selected"]))
            b.append(int(bool(set(x["selected"]) & set(gold)) if harmful else not x["selected"]))
        if not a:
            continue
        pc = paired_comparison([1] * len(a), a, b, metrics=("accuracy",))
        m = pc.metrics["accuracy"]
        out[what] = {"n": len(a), "baseline": round(m.a, 3), "this": round(m.b, 3), "delta": round(m.delta, 3),
                     "ci95": [round(v, 3) for v in m.ci95] if m.ci95 else None,
                     "mcnemar": {"baseline_only": pc.mcnemar.a_correct_only, "this_only": pc.mcnemar.b_correct_only,
                                 "p_value": round(pc.mcnemar.p_value, 4)}}
    return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = [s for s in args.sets.split(",") if s]
    n = {**bq.DEFAULT_N, **bq.parse_n(args.n)}
    samples = bq.benchmark_sample(sets, n, args.seed, args.dev)
    policies = load_policies([args.guidelines])
    pids = [p.id for p in policies]
    base: dict[str, dict[str, Any]] = {}
    if args.baseline:  # read before any model call: a wrong path fails at once, in one line
        base_path = Path(args.baseline) / "answers.jsonl"
        if not base_path.is_file():
            raise SystemExit(f"--baseline {args.baseline}: no answers.jsonl there (give another run's --out)")
        for line in base_path.read_text().splitlines():
            a = json.loads(line)
            base[a["id"]] = a
    base_url = args.base_url
    if args.measure_only:
        base_url = "http://127.0.0.1:9/v1"  # never called: every item must already be answered
    elif base_url is None:
        from cotmod.backends._local import ensure_local_server

        base_url = ensure_local_server(args.model, n_parallel=args.concurrency)
    mod = AsyncModerator(args.guidelines, base_url=base_url, model=args.model, triage=True, triage_max=args.triage_max,
                         logprobs=True, triage_threshold=args.threshold,
                         concurrency=args.concurrency, prompts=args.prompts, timeout=600,
                         warm_prefix=False)  # the calls run at --concurrency from the start, as before
    done_path = out / "answers.jsonl"
    answers: dict[str, dict[str, Any]] = {}
    if done_path.exists():
        for line in done_path.read_text().splitlines():
            a = json.loads(line)
            answers[a["id"]] = a
    sem = asyncio.Semaphore(args.concurrency)
    result: dict[str, Any] = {"bench": "triage", "model": args.model, "seed": args.seed, "dev": args.dev,
                              "guidelines": str(args.guidelines), "triage_max": args.triage_max, "sets": {}}
    golds: dict[str, list[str] | None] = {}
    all_rows: list[dict[str, Any]] = []
    async with mod:
        fp = mod.triage_compiler(pids).fingerprint
        result["triage_fingerprint"] = fp
        with done_path.open("a") as fh:
            for name in sets:
                rows = [bq.golden_row(name, r) for r in samples[name]]
                todo = [r for r in rows if r["id"] not in answers or answers[r["id"]].get("fp") != fp]
                if todo and args.measure_only:
                    raise SystemExit(f"{name}: {len(todo)} items have no answer for this triage prompt in {done_path}")
                for coro in asyncio.as_completed([ask(mod, pids, r, sem) for r in todo]):
                    a = await coro
                    a["fp"] = fp
                    answers[a["id"]] = a
                    fh.write(json.dumps(a) + "\n")
                    fh.flush()
                mapping = yaml.safe_load((bq.GOLDSETS / name / "mapping.yaml").read_text())
                set_golds = {r["id"]: gold_policies(r, mapping) for r in rows}
                golds.update(set_golds)
                all_rows += rows
                res = measure(rows, answers, golds=set_golds)
                res["sweep"] = sweep(rows, answers, set_golds, args.triage_max)
                res["s_per_item"] = round(sum(answers[r["id"]]["s"] for r in rows) / max(len(rows), 1), 2)
                if args.baseline:
                    res["vs_baseline"] = paired_vs(rows, answers, base, set_golds)
                result["sets"][name] = res
                print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in res.items() if k not in ("wrong_picks", "sweep")), file=sys.stderr)
                for t, m in res["sweep"].items():
                    print(f"  P(yes) >= {t}: {m}", file=sys.stderr)
                print(f"  wrong picks: {res['wrong_picks']}", file=sys.stderr)
    if args.baseline:
        result["baseline"] = str(args.baseline)
        result["vs_baseline"] = paired_vs(all_rows, answers, base, golds)
        for k, d in result["vs_baseline"].items():
            print(f"vs baseline, pooled {k}: {d['baseline']} -> {d['this']}, delta {d['delta']:+} {d['ci95']}, "
                  f"McNemar {d['mcnemar']['baseline_only']}/{d['mcnemar']['this_only']} p {d['mcnemar']['p_value']}", file=sys.stderr)
    if len(sets) > 1:  # every set's items together (each with its own set's gold policies)
        pooled = measure(all_rows, answers, golds=golds)
        pooled["sweep"] = sweep(all_rows, answers, golds, args.triage_max)
        result["pooled"] = pooled
        print("pooled: " + ", ".join(f"{k} {v}" for k, v in pooled.items() if k not in ("wrong_picks", "sweep")), file=sys.stderr)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--base-url", default=None, help="use this OpenAI-compatible server instead of starting the local model")
    ap.add_argument("--sets", default=DEFAULT_SETS)
    ap.add_argument("--n", action="append", default=[], metavar="SET=N")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--dev", type=int, default=None)
    ap.add_argument("--guidelines", default=str(bq.HERE.parent / "guidelines"))
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--triage-max", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.3, help="Settings.triage_threshold (P(yes) to select a policy)")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="another run's --out on the same sample: paired gold recall and benign_none deltas with CIs and McNemar")
    ap.add_argument("--measure-only", action="store_true",
                    help="recompute result.json from --out's answers.jsonl without a model (every item must be answered)")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(amain(args))))


if __name__ == "__main__":
    main()
