"""Span quality: do the words cotmod quotes match the words annotators marked as toxic?

SemEval-2021 Task 5 (Toxic Spans Detection; ``benchmarks/goldsets/toxic_spans``): posts from
Civil Comments, all toxic, with the character offsets of the toxic words (``spans``; empty in
922 posts). cotmod runs with grounded citations on (``evidence=True``) and the policies of the
set's mapping (harassment_bullying, hate_speech, violent_threats); a post's predicted span is
every character quoted by its violating decisions (``cotmod.evals.predicted_spans``: rule
evidence, and grounded answer quotes under decision logic). Score: the task's mean per-post
character F1 (``cotmod.evals.span_f1``: both empty 1.0, one empty 0.0), against two baselines on
the same posts: the whole post (every character) and no spans.

Sample: seeded (``--seed``, default 2026, never tuned on) from the ``--split`` (default test, the
task's evaluation split): ``--n`` posts with gold spans and ``--n-empty`` with none; ``--dev
SEED`` draws a development sample disjoint from the full-size benchmark sample.

Variants (``--variants``, default ``v12,new``; the names of bench_quality.py, each with
``evidence=True`` added): ``v12`` (rules form: quotes per cited rule), ``new`` (decision logic and
triage: the answers' quotes), ``new-notriage``, or ``--variant-settings NAME:key=val,...``.

Error verdicts predict no span (F1 1.0 on an empty-gold post, 0.0 otherwise) and are counted.
Also reported per variant: the share of posts flagged (any policy violated), mean F1 on the
flagged posts, re-asks per item (``Verdict.reasks``), dropped citations (ungrounded quotes left
out after the re-asks: total and per item), model calls per item (``Verdict.attempts``), tokens
per item, seconds per item. Output in ``--out``: ``sample.jsonl``, ``VARIANT/run/`` (a ``cotmod
eval`` run dir; running again resumes it), ``spans.jsonl`` (per post and variant: gold and
predicted spans as [start, end) ranges, F1) and ``result.json``; ends with one JSON line::

    python benchmarks/bench_spans.py --out benchmarks/results/NAME
    python benchmarks/bench_spans.py --out DIR --reuse       # re-measure, no model calls
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_quality import (  # noqa: E402
    VARIANTS,
    add_timing,
    count_lines,
    log,
    mean,
    moderator_kwargs,
    one_line,
    parse_variant_settings,
    read_jsonl,
    read_variant_settings,
    seconds_per_item,
    write_once,
)

from cotmod import AsyncModerator  # noqa: E402
from cotmod._exceptions import CotmodError, UserError  # noqa: E402
from cotmod.evals import load_mapping, predicted_spans, run_eval, span_f1  # noqa: E402
from cotmod.evals._metrics import bootstrap_ci  # noqa: E402

SET = HERE / "goldsets" / "toxic_spans"
MAPPING = SET / "mapping.yaml"
DEFAULT_N, DEFAULT_N_EMPTY = 60, 10
QUICK_N, QUICK_N_EMPTY = 6, 2


def load() -> list[dict[str, Any]]:
    with gzip.open(SET / "toxic_spans.normalized.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def draw(rows: list[dict[str, Any]], n: int, n_empty: int, seed: int, split: str, exclude: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """A seeded sample of ``n`` posts with gold spans and ``n_empty`` without, from ``split``
    ("all" for every split), leaving out ``exclude``."""
    keep = [r for r in rows if (split == "all" or r["split"] == split) and r["id"] not in exclude]
    pos = [r for r in keep if r["spans"]]
    empty = [r for r in keep if not r["spans"]]
    if n > len(pos) or n_empty > len(empty):
        raise ValueError(f"--n {n} / --n-empty {n_empty}: the {split} split has {len(pos)} posts with spans and {len(empty)} without")
    rng = random.Random(f"{seed}:toxic_spans")
    return rng.sample(pos, n) + rng.sample(empty, n_empty)


def sample(rows: list[dict[str, Any]], n: int, n_empty: int, seed: int, split: str, dev: int | None) -> list[dict[str, Any]]:
    """The benchmark sample, or with ``dev`` one drawn with that seed from the posts not in the
    full-size benchmark sample."""
    if dev is None:
        return draw(rows, n, n_empty, seed, split)
    held = frozenset(r["id"] for r in draw(rows, DEFAULT_N, DEFAULT_N_EMPTY, seed, split))
    return draw(rows, n, n_empty, dev, split, exclude=held)


def ranges(offsets: Iterable[int]) -> list[list[int]]:
    """Sorted offsets as [start, end) runs: {1, 2, 3, 7} → [[1, 4], [7, 8]]."""
    out: list[list[int]] = []
    for o in sorted(set(offsets)):
        if out and out[-1][1] == o:
            out[-1][1] = o + 1
        else:
            out.append([o, o + 1])
    return out


def post_scores(text: str, gold: Sequence[int], verdict: dict[str, Any] | None, policies: Sequence[str]) -> dict[str, Any]:
    """One post: the predicted offsets (none for an error verdict), its F1 and the baselines'."""
    pred = predicted_spans(verdict, policies) if verdict is not None and verdict.get("status", "ok") == "ok" else set()
    return {
        "pred": pred,
        "f1": span_f1(pred, gold),
        "f1_whole_post": span_f1(range(len(text)), gold),
        "f1_no_spans": span_f1([], gold),
    }


def mean_ci(values: Sequence[float], rounds: int, seed: int) -> list[float] | None:
    if not values or rounds <= 0:
        return None
    arr = np.asarray(values, dtype=float)
    ci = bootstrap_ci(lambda idx: float(arr[idx].mean()), len(arr), rounds=rounds, seed=seed)
    return list(ci) if ci else None


def summarise(posts: list[dict[str, Any]], rounds: int, seed: int) -> dict[str, Any]:
    """Mean span F1 and the baselines over the decided posts (errors included as no span)."""
    done = [p for p in posts if p["status"] != "missing"]
    f1 = [p["f1"] for p in done]
    whole = [p["f1_whole_post"] for p in done]
    none_ = [p["f1_no_spans"] for p in done]
    with_gold = [p for p in done if p["gold"]]
    no_gold = [p for p in done if not p["gold"]]
    flagged = [p for p in done if p["flagged"]]
    ok = [p for p in done if p["status"] == "ok"]
    diff = [a - b for a, b in zip(f1, whole, strict=True)]
    return {
        "n": len(done),
        "missing": sum(1 for p in posts if p["status"] == "missing"),
        "errors": sum(1 for p in done if p["status"] == "error"),
        "span_f1": mean(f1),
        "span_f1_ci95": mean_ci(f1, rounds, seed),
        "span_f1_with_gold": mean(p["f1"] for p in with_gold),
        "span_f1_empty_gold": mean(p["f1"] for p in no_gold),
        "baseline_whole_post": mean(whole),
        "baseline_no_spans": mean(none_),
        "delta_vs_whole_post": mean(diff),
        "delta_vs_whole_post_ci95": mean_ci(diff, rounds, seed + 1),
        "flagged_share": len(flagged) / len(done) if done else None,
        "span_f1_flagged": mean(p["f1"] for p in flagged),
        "with_predicted_span_share": sum(1 for p in done if p["pred"]) / len(done) if done else None,
        "reasks_per_item": mean(p["reasks"] for p in ok),
        "dropped_citations": sum(p["dropped"] for p in ok),
        "dropped_per_item": mean(p["dropped"] for p in ok),
        "calls_per_item": mean(p["calls"] for p in done if p["calls"] is not None),
        "tokens_per_item": mean(p["tokens"] for p in ok),
    }


def measure(items: list[dict[str, Any]], vdir: Path, policies: Sequence[str]) -> list[dict[str, Any]]:
    run = vdir / "run"
    verdicts = {str(v["item_id"]): v for v in read_jsonl(run / "verdicts.jsonl")}
    dead = {str(e["id"]): e for e in read_jsonl(run / "verdicts.errors.jsonl")}
    posts = []
    for it in items:
        v = verdicts.get(it["id"])
        d = dead.get(it["id"])
        status = "missing" if v is None and d is None else ("ok" if v is not None and v.get("status", "ok") == "ok" else "error")
        sc = post_scores(it["text"], it["spans"], v if status == "ok" else None, policies)
        decs = [x for x in (v or {}).get("decisions", []) if x["policy_id"] in policies]
        posts.append({
            "id": it["id"], "status": status, "gold": it["spans"], **sc,
            "flagged": [x["policy_id"] for x in decs if x["violates"]],
            "reasks": int((v or {}).get("reasks", 0)),
            "dropped": sum(len(x.get("dropped", [])) for x in decs),
            "calls": int((v or d or {}).get("attempts", 0)) if status != "missing" else None,
            "tokens": int((v or {}).get("usage", {}).get("total_tokens", 0)),
        })
    return posts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="local model, or the served name with --base-url")
    ap.add_argument("--base-url", default=None, help="use this OpenAI-compatible server instead of starting the local model")
    ap.add_argument("--n", type=int, default=None, help=f"posts with gold spans [default {DEFAULT_N}; --quick {QUICK_N}]")
    ap.add_argument("--n-empty", type=int, default=None, help=f"posts without [default {DEFAULT_N_EMPTY}; --quick {QUICK_N_EMPTY}]")
    ap.add_argument("--split", default="test", choices=("test", "train", "trial", "all"))
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--dev", type=int, default=None, metavar="SEED", help="a development sample disjoint from the benchmark sample")
    ap.add_argument("--variants", default="v12,new", help="comma-separated cotmod variants (bench_quality's names) [default: v12,new]")
    ap.add_argument("--variant-settings", action="append", default=[], metavar="NAME:key=val,...")
    ap.add_argument("--concurrency", type=int, default=3, help="requests in flight = server slots (3: one per policy)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--guidelines", default=None)
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--reuse", action="store_true", help="measure what is in --out (no model calls)")
    args = ap.parse_args()
    n = args.n if args.n is not None else (QUICK_N if args.quick else DEFAULT_N)
    n_empty = args.n_empty if args.n_empty is not None else (QUICK_N_EMPTY if args.quick else DEFAULT_N_EMPTY)
    try:
        defs = {**VARIANTS, **parse_variant_settings(args.variant_settings)}
        variants = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
        bad = [v for v in variants if v not in defs]
        if bad or not variants:
            raise ValueError(f"--variants: unknown variant {bad[0] if bad else '(none)'} (known: {', '.join(defs)})")
        if n < 0 or n_empty < 0 or n + n_empty == 0:
            raise ValueError("--n and --n-empty must be >= 0 and not both 0")
        if args.reuse and not args.out:
            raise ValueError("--reuse needs --out")
    except ValueError as exc:
        ap.error(str(exc))
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cotmod-spans-"))
    work.mkdir(parents=True, exist_ok=True)
    policies = load_mapping(MAPPING).policies
    settings = {v: {**defs[v], "evidence": True} for v in variants}

    if args.reuse:
        if not (work / "sample.jsonl").exists():
            print(f"bench_spans: {work} holds no sample.jsonl", file=sys.stderr)
            sys.exit(2)
        items = read_jsonl(work / "sample.jsonl")
        settings = {v: read_variant_settings(work / v, settings[v]) for v in variants}
    else:
        try:
            rows = sample(load(), n, n_empty, args.seed, args.split, args.dev)
        except ValueError as exc:
            ap.error(str(exc))
        items = [{"id": r["id"], "text": r["text"], "labels": {"toxic": 1}, "spans": r["spans"], "split": r["split"]} for r in rows]
        try:
            for v in variants:  # settings checked before anything runs
                AsyncModerator(args.guidelines, **moderator_kwargs(args, "http://127.0.0.1:9/v1", settings[v]))
            write_once(work / "sample.jsonl", "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items),
                       "sample (other --n, --n-empty, --split, --seed or --dev)")
            if args.base_url:
                url = args.base_url
            else:
                from cotmod.backends._local import ensure_local_server

                url = ensure_local_server(args.model, n_parallel=args.concurrency)
            for v in variants:
                vdir = work / v
                vdir.mkdir(exist_ok=True)
                write_once(vdir / "variant.json", json.dumps(settings[v], sort_keys=True) + "\n", "variant's settings (--variant-settings)")
                log(f"[{v}] toxic_spans: {len(items)} posts")
                run = vdir / "run"
                mod = AsyncModerator(args.guidelines, **moderator_kwargs(args, url, settings[v]))
                before = count_lines(run / "verdicts.jsonl") + count_lines(run / "verdicts.errors.jsonl")
                t0 = time.perf_counter()
                try:
                    run_eval(mod, work / "sample.jsonl", MAPPING, run)
                finally:
                    after = count_lines(run / "verdicts.jsonl") + count_lines(run / "verdicts.errors.jsonl")
                    if after > before:
                        add_timing(vdir / "timing.jsonl", time.perf_counter() - t0, after - before)
        except (CotmodError, ValueError) as exc:
            print(f"bench_spans: {one_line(exc)}", file=sys.stderr)
            sys.exit(3 if isinstance(exc, CotmodError) and not isinstance(exc, UserError) else 2)

    result: dict[str, Any] = {
        "bench": "spans", "model": args.model, "seed": args.seed, "dev": args.dev, "split": args.split,
        "posts": len(items), "with_gold_spans": sum(1 for it in items if it["spans"]), "policies": policies,
        "variant_settings": settings, "variants": {},
    }
    print(f"toxic_spans: {len(items)} posts ({result['with_gold_spans']} with gold spans), policies {', '.join(policies)}")
    print(f"{'variant':<14}{'n':>5}{'err':>5}{'span F1':>9}{'95% CI':>15}{'gold>0':>8}{'gold=0':>8}{'whole':>7}{'none':>7}"
          f"{'flagged':>9}{'F1|flag':>9}{'reasks':>8}{'dropped':>9}{'calls':>7}{'tok':>7}{'s/it':>7}")
    with (work / "spans.jsonl").open("w", encoding="utf-8") as f:
        for v in variants:
            posts = measure(items, work / v, policies)
            s = summarise(posts, args.bootstrap, args.seed)
            lat = [float(x.get("latency_ms", 0.0)) for x in read_jsonl(work / v / "run" / "verdicts.jsonl")]
            s["s_per_item"] = seconds_per_item(work / v / "timing.jsonl", lat, args.concurrency)
            result["variants"][v] = s
            for p in posts:
                f.write(json.dumps({"variant": v, "id": p["id"], "status": p["status"], "gold": ranges(p["gold"]),
                                    "pred": ranges(p["pred"]), "f1": p["f1"], "flagged": p["flagged"]}) + "\n")

            def g(key: str, spec: str = ".3f", s: dict[str, Any] = s) -> str:
                return "-" if s.get(key) is None else format(s[key], spec)

            ci = s["span_f1_ci95"]
            print(f"{v:<14}{s['n']:>5}{s['errors']:>5}{g('span_f1'):>9}{(f'[{ci[0]:.2f},{ci[1]:.2f}]' if ci else ''):>15}"
                  f"{g('span_f1_with_gold'):>8}{g('span_f1_empty_gold'):>8}{g('baseline_whole_post'):>7}{g('baseline_no_spans'):>7}"
                  f"{g('flagged_share'):>9}{g('span_f1_flagged'):>9}{g('reasks_per_item', '.2f'):>8}{s['dropped_citations']:>9}"
                  f"{g('calls_per_item', '.1f'):>7}{g('tokens_per_item', '.0f'):>7}{g('s_per_item', '.1f'):>7}")
    print("span F1: SemEval-2021 Task 5 per-post character F1, mean over posts; whole / none: baselines on the same posts; "
          "error verdicts predict no span")
    (work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
