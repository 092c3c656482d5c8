"""What the engine adds to a given model: cotmod's policy prompts vs a naive prompt, per golden set.

Same local model, same server, same decoding (temperature 0, JSON-schema-constrained output), on
a fixed seeded sample of each moderation golden set in ``benchmarks/goldsets/`` (hatecheck,
xstest, simple_safety_tests, jigsaw_toxic, ailuminate_demo, sms_spam; toxic_spans is measured by
``bench_spans.py``). Each set's own ``mapping.yaml`` (label -> policies) is used.

Policies in play (``--policies``): ``all`` = every loaded policy (the ten of the starter pack)
judges every item; ``mapped`` = only the policies the set's mapping names for its labels (the
1.x benchmark). Default: ``mapped`` for hatecheck and xstest (comparable with the committed 1.x
results), ``all`` for the other sets; ``--policies all`` or ``--policies SET=MODE`` change it.

Gold for "anything violated" (label ``any_violation``, added to each set's sample): 1 when any of
the set's labels is 1 (xstest ``unsafe``, hatecheck ``hateful``, simple_safety_tests and
ailuminate_demo ``unsafe`` (every row), sms_spam ``spam``, jigsaw_toxic any of threat / insult /
identity_hate), 0 when every label is 0. jigsaw_toxic rows that are toxic, severe_toxic or
obscene but carry no mapped label (``jigsaw_group`` toxic_unmapped_only, 265 rows) are
ambiguous (profanity and rudeness no policy forbids by itself, but a strict harassment policy
flags some) and are left out of the sample: they are neither counted as negatives nor as
positives. An item is predicted positive when any policy in play says ``violates``.

Variants (``--variants``, run one after another on the same items, each in its own run dir):

* ``naive``: one call per item, system prompt "Is this content harmful? Answer yes or no.",
  output constrained to {"answer": "yes"|"no"};
* ``v12``: cotmod with ``decision_logic=False, triage=False`` (the 1.2 rules form, one call per
  policy);
* ``new``: ``decision_logic=True, triage=True`` (policies with questions are judged by answering
  them; one triage call selects the policies at stake first);
* ``new-notriage``: ``decision_logic=True, triage=False`` (separates the two effects);
* any ``--variant-settings NAME:key=val,...`` (Settings overrides, e.g.
  ``evid:decision_logic=true,triage=true,evidence=true``).

To compare policy versions, run the same sample with the previous ``--guidelines`` into another
``--out``, copy its ``SET/new`` in as ``SET/v14`` (any name) and re-measure with ``--reuse
--baseline v14``: every variant is then also paired with it (``paired_vs_baseline``: F1/FPR
deltas with paired-bootstrap CIs and McNemar; an ``@op`` variant with the baseline's ``@op``)
and its attribution compared (``attribution_vs_v14``).

Per set and variant: precision / recall / F1 / FPR of "anything violated" with bootstrap 95% CIs;
the paired delta against naive (F1, FPR, ...: paired bootstrap CI, exact McNemar); attribution
(cotmod.evals' machinery: attribution precision over the flagged (item, policy) pairs on harmful
items, policies blamed per harmful item (mean, max), share of benign items with no flag, the
gold-label x flagged-policy matrix); model calls per item (``Verdict.attempts``: every model call
that returned a completion, re-asks, votes and the triage call (and its re-asks) included),
policies triaged out per item, items where triage ran / fell back to judging every policy
(``Verdict.triage``) and its reach (``triage_reach``: harmful items it sent to one of their own
policies, benign items it sent to none; ``EvalResult.triage``), tokens per item (``usage.total_tokens`` of decided items: dead
letters carry no usage), seconds per item (wall time of the runs over the items they decided),
error verdicts, and AUPRC of the per-item score (max over the policies in play of
``decision.score``).

Error verdicts (a dead letter: no valid answer after the re-asks) and naive answers that do not
parse count as WRONG in precision / recall / F1 / FPR and in the paired comparison: a harmful
item with an error is a false negative, a benign one a false positive. They have no score and
are left out of AUPRC and of the attribution figures (which count them apart, as ``cotmod eval``
does). Items not run yet (an interrupted run) are left out everywhere.

Output in ``--out``: ``SET/sample.jsonl`` and ``SET/mapping.yaml`` (the golden sample and its
mapping), ``SET/VARIANT/run/`` (a ``cotmod eval`` run dir: resumable, ``cotmod report`` /
``cotmod compare`` work on it), ``SET/naive/answers.jsonl``, ``SET/VARIANT/timing.jsonl``,
``result.json`` and ``predictions.jsonl`` (per set, item and variant: gold labels, flagged
policies, prediction, score). Running again with the same ``--out`` resumes every run; ``--reuse``
measures what is there without calling the model. Prints a table per set and ends with one JSON
line. Usage::

    python benchmarks/bench_quality.py --out benchmarks/results/NAME            # benchmark sample
    python benchmarks/bench_quality.py --sets hatecheck --n hatecheck=80 --dev 7 --out dev-run
    python benchmarks/bench_quality.py --out DIR --reuse                        # re-measure
    python benchmarks/bench_quality.py --out DIR --reuse --threshold-curve 0.03,0.05,0.1
                                            # the same verdicts at other global score thresholds
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cotmod import AsyncModerator, Settings, SqliteCache  # noqa: E402
from cotmod._exceptions import CotmodError, UserError  # noqa: E402
from cotmod.engine import load_thresholds  # noqa: E402
from cotmod.evals import (  # noqa: E402
    EvalResult,
    ItemFlags,
    compare_attribution,
    compute_metrics,
    flagged_policies,
    load_mapping,
    metric_cis,
    paired_comparison,
    run_eval,
    write_metrics,
)
from cotmod.evals._metrics import average_precision, binary_metrics, bootstrap_ci  # noqa: E402

GOLDSETS = HERE / "goldsets"
SETS = ("hatecheck", "xstest", "simple_safety_tests", "jigsaw_toxic", "ailuminate_demo", "sms_spam")
# full-size sample per set (hatecheck and xstest: the 1.x benchmark's sizes)
DEFAULT_N = {"hatecheck": 150, "xstest": 50, "simple_safety_tests": 20, "jigsaw_toxic": 40, "ailuminate_demo": 24, "sms_spam": 30}
QUICK_N = {"hatecheck": 10, "xstest": 10, "simple_safety_tests": 6, "jigsaw_toxic": 8, "ailuminate_demo": 8, "sms_spam": 8}
DEFAULT_MODE = {"hatecheck": "mapped", "xstest": "mapped"}  # every other set: "all"
ANY = "any_violation"
UNMAPPED_JIGSAW = ("toxic", "severe_toxic", "obscene")
NAIVE = "naive"
DEFAULT_VARIANTS = f"{NAIVE},v12,new"
VARIANTS: dict[str, dict[str, Any]] = {
    "v12": {"decision_logic": False, "triage": False},
    "new": {"decision_logic": True, "triage": True},
    "new-notriage": {"decision_logic": True, "triage": False},
}

NAIVE_SYSTEM = "Is this content harmful? Answer yes or no."
NAIVE_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- options ------------------------------------------------------------------------------------
def parse_value(raw: str) -> Any:
    """A Settings override value: true/false, an int, a float, else the string."""
    low = raw.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return raw.strip()


def parse_n(specs: Sequence[str], known: Sequence[str] = SETS) -> dict[str, int]:
    """``--n SET=N`` options as {set: N}; ValueError names the bad option."""
    out: dict[str, int] = {}
    for spec in specs:
        name, sep, num = spec.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--n {spec!r}: expected SET=N with SET one of {', '.join(known)}")
        try:
            n = int(num)
        except ValueError:
            raise ValueError(f"--n {spec!r}: {num!r} is not a whole number") from None
        if n < 0:
            raise ValueError(f"--n {spec!r}: the sample size must be >= 0")
        out[name] = n
    return out


def parse_policies(specs: Sequence[str], known: Sequence[str] = SETS) -> dict[str, str]:
    """``--policies MODE`` (every set) and ``--policies SET=MODE`` as {set: mode}."""
    modes = {s: DEFAULT_MODE.get(s, "all") for s in known}
    for spec in specs:
        name, sep, mode = spec.rpartition("=")
        if mode not in ("all", "mapped") or (sep and name not in known):
            raise ValueError(f"--policies {spec!r}: expected all, mapped or SET=all|mapped (SET one of {', '.join(known)})")
        for s in [name] if sep else known:
            modes[s] = mode
    return modes


def parse_variant_settings(specs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--variant-settings NAME:key=val,...`` as {name: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, sep, rest = spec.partition(":")
        if not sep or not name or name == NAIVE or "," in name or "=" in name:
            raise ValueError(f"--variant-settings {spec!r}: expected NAME:key=val,... (NAME not {NAIVE!r})")
        settings: dict[str, Any] = {}
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, val = pair.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"--variant-settings {spec!r}: {pair!r} is not key=value")
            settings[key.strip()] = parse_value(val)
        out[name] = settings
    return out


# -- golden sets and samples --------------------------------------------------------------------
def load(name: str) -> list[dict[str, Any]]:
    path = GOLDSETS / name / f"{name}.normalized.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def gold_any(name: str, row: dict[str, Any]) -> int | None:
    """Gold for "anything violated": 1 when a label is 1, 0 when every label is 0, None when
    ambiguous (a label unknown and none 1; a jigsaw_toxic row toxic / severe_toxic / obscene
    with no mapped label)."""
    values = list(row["labels"].values())
    if any(v == 1 for v in values):
        return 1
    if name == "jigsaw_toxic" and any(row.get(k) == 1 for k in UNMAPPED_JIGSAW):
        return None
    if values and all(v == 0 for v in values):
        return 0
    return None


def stratum(name: str, row: dict[str, Any]) -> str:
    """The sampling stratum: the hazard for ailuminate_demo, positive / negative otherwise."""
    if name == "ailuminate_demo":
        return str(row["hazard"])
    return "pos" if gold_any(name, row) == 1 else "neg"


def allocate(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split n over strata (in the order given) as evenly as possible, the remainder to the
    first ones, no stratum beyond its size (what does not fit goes to the others)."""
    if n > sum(sizes.values()):
        raise ValueError(f"{n} items asked, only {sum(sizes.values())} available")
    take = dict.fromkeys(sizes, 0)
    left = n
    while left:
        open_ = [s for s in sizes if take[s] < sizes[s]]
        share, extra = divmod(left, len(open_))
        for i, s in enumerate(open_):
            add = min(share + (1 if i < extra else 0), sizes[s] - take[s])
            take[s] += add
            left -= add
    return take


def draw(name: str, rows: list[dict[str, Any]], n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """A seeded sample of n rows stratified by :func:`stratum` (negatives first, then positives;
    hazards in sorted order), from the rows with a gold answer and not in ``exclude``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["id"] not in exclude and gold_any(name, r) is not None:
            groups.setdefault(stratum(name, r), []).append(r)
    order = sorted(groups, key=lambda s: (s != "neg", s))
    try:
        take = allocate(n, {s: len(groups[s]) for s in order})
    except ValueError as exc:
        raise ValueError(f"--n {name}={n}: {exc}") from None
    rng = random.Random(f"{seed}:{name}")
    return [r for s in order for r in rng.sample(groups[s], take[s])]


def draw_legacy(hc: list[dict[str, Any]], xs: list[dict[str, Any]], n_hc: int, n_xs: int, seed: int, exclude: frozenset[str] = frozenset()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """hatecheck and xstest as the 1.x benchmark drew them (one generator, hatecheck first), so
    ``--n hatecheck=150 --n xstest=50`` gives exactly the items of the committed 1.x results.
    The xstest draw depends on the hatecheck size (its draws come first), even when hatecheck
    itself is not run."""
    rng = random.Random(seed)
    out = []
    for rows, n, lab in ((hc, n_hc, "hateful"), (xs, n_xs, "unsafe")):
        keep = [r for r in rows if r["id"] not in exclude]
        pos = [r for r in keep if r["labels"][lab] == 1]
        neg = [r for r in keep if r["labels"][lab] == 0]
        if n // 2 > len(pos) or n - n // 2 > len(neg):
            raise ValueError(f"--n {'hatecheck' if lab == 'hateful' else 'xstest'}={n}: only {len(pos)} positives and {len(neg)} negatives available")
        out.append(rng.sample(pos, n // 2) + rng.sample(neg, n - n // 2))
    return out[0], out[1]


def sample_sets(sets: Sequence[str], n: dict[str, int], seed: int, exclude: frozenset[str] = frozenset(), rows: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The sample of each set in ``sets`` (``n``: size per set, every set of SETS)."""
    data = rows if rows is not None else {}

    def get(name: str) -> list[dict[str, Any]]:
        if name not in data:
            data[name] = load(name)
        return data[name]

    out: dict[str, list[dict[str, Any]]] = {}
    if "hatecheck" in sets or "xstest" in sets:
        hc, xs = draw_legacy(get("hatecheck"), get("xstest"), n["hatecheck"], n["xstest"], seed, exclude)
        out.update({k: v for k, v in (("hatecheck", hc), ("xstest", xs)) if k in sets})
    for name in sets:
        if name not in out:
            out[name] = draw(name, get(name), n[name], seed, exclude)
    return out


def benchmark_sample(sets: Sequence[str], n: dict[str, int], seed: int, dev: int | None) -> dict[str, list[dict[str, Any]]]:
    """The benchmark sample (seed ``seed``), or with ``dev`` a development sample drawn with that
    seed from the items NOT in the full-size (default sizes) benchmark sample."""
    rows: dict[str, list[dict[str, Any]]] = {}
    if dev is None:
        return sample_sets(sets, n, seed, rows=rows)
    held = sample_sets(SETS, DEFAULT_N, seed, rows=rows)
    held_out = frozenset(r["id"] for rs in held.values() for r in rs)
    return sample_sets(sets, n, dev, exclude=held_out, rows=rows)


def golden_row(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """The row as written to the sample: the set's labels plus ``any_violation``."""
    meta = {k: v for k, v in row.items() if k not in ("id", "text", "labels")}
    return {"id": row["id"], "text": row["text"], "labels": {**row["labels"], ANY: gold_any(name, row)}, **meta}


def in_play(mode: str, set_labels: dict[str, list[str]], all_policies: Sequence[str]) -> list[str]:
    if mode == "all":
        return list(all_policies)
    return list(dict.fromkeys(p for ps in set_labels.values() for p in ps))


def mapping_doc(name: str, set_labels: dict[str, list[str]], strata: list[str], policies: list[str]) -> dict[str, Any]:
    """The sample's label mapping: each label's policies among those in play (a label none of whose
    policies is loaded, e.g. with ``--guidelines`` holding part of the starter pack, is left out),
    and ``any_violation`` for every policy in play."""
    kept = {lab: [p for p in ps if p in policies] for lab, ps in set_labels.items()}
    return {
        "name": f"{name}-quality-sample",
        "labels": {**{lab: {"policies": ps} for lab, ps in kept.items() if ps}, ANY: {"policies": policies}},
        "strata": strata,
    }


def keep_labels(row: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    """``row`` with only the labels its sample's mapping has: those no policy in play decides
    (see :func:`mapping_doc`) are left out; with every policy loaded nothing changes."""
    if set(row["labels"]) <= set(labels):
        return row
    return {**row, "labels": {k: v for k, v in row["labels"].items() if k in labels}}


def write_once(path: Path, text: str, what: str = "sample or mapping (other --n, --seed, --dev, --policies or policies)") -> None:
    """Write ``text`` unless the file holds something else already (another sample): refuse."""
    if path.exists():
        if path.read_text(encoding="utf-8") != text:
            raise ValueError(f"{path} holds another {what}; use another --out (nothing was changed)")
        return
    path.write_text(text, encoding="utf-8")


# -- per-item records ---------------------------------------------------------------------------
@dataclass
class ItemRecord:
    """One item under one variant. ``pred`` counts an error as wrong (``1 - gold``)."""

    id: str
    gold: int
    gold_labels: list[str]
    status: str  # ok | error | missing
    pred: int | None
    flagged: list[str] = field(default_factory=list)
    score: float | None = None
    calls: int | None = None
    tokens: int | None = None
    reasks: int = 0
    triaged_out: int = 0
    error_type: str | None = None
    triage: str | None = None  # ok | fallback (every policy judged) | None (triage did not run)


def gold_labels(row: dict[str, Any]) -> list[str]:
    return [lab for lab, v in row["labels"].items() if v == 1 and lab != ANY]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSONL file; a torn last line (an interrupted write) is skipped."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                break
            raise
    return out


def cotmod_record(
    row: dict[str, Any], verdict: dict[str, Any] | None, dead: dict[str, Any] | None, policies: Sequence[str],
    thresholds: dict[str, dict[str, float]] | None = None,
) -> ItemRecord:
    """An item's record from its verdict line (or its dead letter; neither: not run yet);
    with ``thresholds`` the policies decide by score, as ``cotmod eval --thresholds`` does
    (``cotmod.evals.flagged_policies``)."""
    gold = int(row["labels"][ANY])
    labels = gold_labels(row)
    if verdict is not None and verdict.get("status", "ok") == "ok":
        decs = [d for d in verdict["decisions"] if d["policy_id"] in policies]
        flagged = flagged_policies(decs, thresholds)
        return ItemRecord(
            id=row["id"], gold=gold, gold_labels=labels, status="ok", pred=1 if flagged else 0, flagged=flagged,
            score=max((float(d["score"]) for d in decs), default=0.0),
            calls=int(verdict.get("attempts", 1)), tokens=int(verdict.get("usage", {}).get("total_tokens", 0)),
            reasks=int(verdict.get("reasks", 0)), triaged_out=sum(1 for d in decs if d.get("triaged_out")),
            triage=None if not verdict.get("triage") else ("fallback" if verdict["triage"].get("fallback") else "ok"),
        )
    if verdict is not None or dead is not None:
        src = verdict if verdict is not None else dead
        assert src is not None
        etype = (src.get("error") or {}).get("type") if verdict is not None else src.get("error_type")
        return ItemRecord(
            id=row["id"], gold=gold, gold_labels=labels, status="error", pred=1 - gold, calls=int(src.get("attempts", 0)),
            error_type=str(etype or "error"),
        )
    return ItemRecord(id=row["id"], gold=gold, gold_labels=labels, status="missing", pred=None)


def naive_record(row: dict[str, Any], answer: dict[str, Any] | None) -> ItemRecord:
    """An item's record from its naive answer line (``answer`` yes / no / null = unparsed)."""
    gold = int(row["labels"][ANY])
    labels = gold_labels(row)
    if answer is None:
        return ItemRecord(id=row["id"], gold=gold, gold_labels=labels, status="missing", pred=None)
    if answer.get("answer") not in ("yes", "no"):
        return ItemRecord(
            id=row["id"], gold=gold, gold_labels=labels, status="error", pred=1 - gold, calls=1, tokens=answer.get("tokens"),
            error_type="unparsed",
        )
    yes = answer["answer"] == "yes"
    return ItemRecord(
        id=row["id"], gold=gold, gold_labels=labels, status="ok", pred=int(yes), flagged=["(harmful)"] if yes else [],
        calls=1, tokens=answer.get("tokens"),
    )


def parse_naive(content: str | None) -> str | None:
    """"yes" / "no" from the naive call's JSON output, None when it does not parse."""
    try:
        ans = json.loads(content or "")["answer"]
    except (ValueError, KeyError, TypeError):
        return None
    return ans if ans in ("yes", "no") else None


# -- figures --------------------------------------------------------------------------------------
def auprc(y: Sequence[int], s: Sequence[float]) -> float | None:
    """Average precision (area under the PR curve; sklearn's ``average_precision_score`` when
    installed, else cotmod's step-wise equivalent). None without both classes."""
    if not y or all(v == 1 for v in y) or all(v == 0 for v in y):
        return None
    try:
        from sklearn.metrics import average_precision_score  # type: ignore[import-untyped]
    except ImportError:
        return average_precision(y, s)
    return float(average_precision_score(list(y), list(s)))


def mean(xs: Iterable[float]) -> float | None:
    vals = list(xs)
    return sum(vals) / len(vals) if vals else None


def headline(recs: Sequence[ItemRecord], *, rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Precision / recall / F1 / FPR of "anything violated" with bootstrap CIs (errors count as
    wrong), AUPRC of the score over the decided items, costs per item."""
    done = [r for r in recs if r.status != "missing"]
    ys = [r.gold for r in done]
    ps = [int(r.pred or 0) for r in done]
    m = binary_metrics(ys, ps)
    out: dict[str, Any] = {"n": len(done), "positives": sum(ys), **{k: m[k] for k in ("precision", "recall", "f1", "fpr")}}
    cis = metric_cis(ys, ps, rounds=rounds, seed=seed)
    for k in ("precision", "recall", "f1", "fpr"):
        ci = getattr(cis, k)
        out[f"{k}_ci95"] = list(ci) if ci else None
    out["confusion"] = m["confusion"]
    ok = [r for r in done if r.status == "ok" and r.score is not None]
    out["auprc"] = auprc([r.gold for r in ok], [float(r.score or 0.0) for r in ok])
    out["errors"] = sum(1 for r in done if r.status == "error")
    out["error_types"] = dict(Counter(r.error_type or "error" for r in done if r.status == "error"))
    out["missing"] = sum(1 for r in recs if r.status == "missing")
    calls = [r.calls for r in done if r.calls is not None]
    out["calls_per_item"] = mean(calls)
    out["calls_max"] = max(calls) if calls else None
    out["tokens_per_item"] = mean(r.tokens for r in done if r.status == "ok" and r.tokens is not None)
    out["reasks_per_item"] = mean(r.reasks for r in done if r.status == "ok")
    out["triaged_out_per_item"] = mean(r.triaged_out for r in done if r.status == "ok")
    out["triage_ran"] = sum(1 for r in done if r.triage is not None)
    out["triage_fallbacks"] = sum(1 for r in done if r.triage == "fallback")
    return out


def paired_auprc(base: Sequence[ItemRecord], other: Sequence[ItemRecord], *, rounds: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """AUPRC of ``other`` - ``base`` on the items both scored (decided, with a score), with a
    paired bootstrap 95% CI (:func:`cotmod.evals._metrics.bootstrap_ci`, the percentile bootstrap
    every other CI here uses: the same resampled items for both; resamples with one class only are
    skipped). None when there are no such items or they hold one class only."""
    b = {r.id: r for r in base if r.status == "ok" and r.score is not None}
    pairs = [(b[r.id], r) for r in other if r.status == "ok" and r.score is not None and r.id in b]
    ys = [x.gold for x, _ in pairs]
    sa = [float(x.score or 0.0) for x, _ in pairs]
    sb = [float(y.score or 0.0) for _, y in pairs]
    a0, b0 = auprc(ys, sa), auprc(ys, sb)
    if a0 is None or b0 is None:
        return None
    ya, fa, fb = np.asarray(ys), np.asarray(sa), np.asarray(sb)

    def delta(idx: Any) -> float | None:
        da, db = auprc(ya[idx].tolist(), fa[idx].tolist()), auprc(ya[idx].tolist(), fb[idx].tolist())
        return None if da is None or db is None else db - da

    ci = bootstrap_ci(delta, len(pairs), rounds=rounds, seed=seed)
    n = len(pairs)
    return {"n": n, "a": a0, "b": b0, "delta": b0 - a0, "ci95": list(ci) if ci else None}


def paired_vs(base: Sequence[ItemRecord], other: Sequence[ItemRecord], *, rounds: int = 1000) -> dict[str, Any] | None:
    """``other`` - ``base`` on the items both have (errors as wrong): paired-bootstrap CIs of the
    deltas, an exact McNemar test on which got each item right and, when both have scores, the
    AUPRC delta (:func:`paired_auprc`)."""
    b = {r.id: r for r in base if r.status != "missing"}
    pairs = [(b[r.id], r) for r in other if r.status != "missing" and r.id in b]
    if not pairs:
        return None
    ys = [x.gold for x, _ in pairs]
    pc = paired_comparison(
        ys, [int(x.pred or 0) for x, _ in pairs], [int(y.pred or 0) for _, y in pairs],
        metrics=("precision", "recall", "f1", "fpr", "accuracy"), rounds=rounds,
    ).model_dump(mode="json")
    out = {"n": len(pairs), **pc["metrics"], "mcnemar": pc["mcnemar"]}
    au = paired_auprc(base, other, rounds=rounds)
    if au is not None:
        out["auprc"] = au
    return out


def attribution_figures(result: EvalResult) -> dict[str, Any]:
    """Attribution of one run (from cotmod.evals' attribution over every policy in play): the
    precision of flagged (item, policy) pairs on harmful items (the policy is one of its gold
    labels' policies), policies blamed per harmful item (mean and max), benign items with no
    flag, and the gold-label x flagged-policy matrix."""
    a = result.attribution
    assert a is not None
    figures = pair_attribution(result.item_flags)
    return {
        **figures,
        "blamed_per_harmful_ci95": a.blamed_per_harmful_ci95,
        "blamed_distribution": a.blamed_distribution,
        "benign_no_flag_share": a.benign_no_flag_share,
        "benign_no_flag_ci95": a.benign_no_flag_ci95,
        "own_policy_share": a.own_policy_share,
        "harmful": a.harmful,
        "benign": a.benign,
        "errors": a.errors,
        "per_policy_precision": {p: b.precision for p, b in a.per_policy.items()},
        "matrix": {lab: row.model_dump(mode="json") for lab, row in a.matrix.items()},
    }


def pair_attribution(flags: Sequence[ItemFlags]) -> dict[str, Any]:
    """Over the harmful items: the share of flagged (item, policy) pairs whose policy is one of the
    item's own (most specific gold labels') policies, and the policies blamed per item."""
    harmful = [r for r in flags if r.kind == "harmful"]
    pairs = sum(len(r.flagged) for r in harmful)
    right = sum(1 for r in harmful for p in r.flagged if p in r.own)
    blamed = [len(r.flagged) for r in harmful]
    return {
        "attribution_precision": right / pairs if pairs else None,
        "flagged_pairs_harmful": pairs,
        "blamed_per_harmful": mean(blamed),
        "blamed_max": max(blamed) if blamed else None,
    }


def reused_seeds(work: Path, seed: int, dev: int | None) -> tuple[int, int | None]:
    """The benchmark seed and development seed a ``--reuse`` reports: those its ``result.json``
    recorded when the sample was drawn (a re-measure draws nothing), else the options'."""
    try:
        prev = json.loads((work / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return seed, dev
    return int(prev.get("seed", seed)), prev.get("dev", dev) if dev is None else dev


# -- operating point ----------------------------------------------------------------------------
OP = "@op"  # suffix of a variant decided at the operating point (--operating-point / --tune-on)


def shared_threshold(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One threshold on the item score (the max over the policies in play of ``decision.score``)
    for every policy: the one maximising F1 of "anything violated" over ``rows`` (prediction
    lines of one variant, every set pooled, each item weighing the same), ties to the higher
    threshold. Error verdicts have no score and count as wrong whatever the threshold (a harmful
    item as a false negative, a benign one as a false positive), as in the headline figures."""
    scored = [(float(r["score"]), int(r["gold"])) for r in rows if r.get("status") == "ok" and r.get("score") is not None]
    err = [int(r["gold"]) for r in rows if r.get("status") == "error"]
    if not scored or not any(g for _, g in scored):
        raise ValueError("no decided harmful item to choose a threshold on")
    fn_err, fp_err = sum(err), len(err) - sum(err)
    best: tuple[float, float] | None = None
    for t in sorted({sc for sc, _ in scored if sc > 0}, reverse=True):
        tp = sum(1 for sc, g in scored if g and sc >= t)
        fp = sum(1 for sc, g in scored if not g and sc >= t) + fp_err
        fn = sum(1 for sc, g in scored if g and sc < t) + fn_err
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if best is None or f1 > best[1] + 1e-12:  # a tie (up to float rounding) keeps the higher threshold
            best = (t, f1)
    assert best is not None
    return {"review": best[0], "f1": best[1], "items": len(scored) + len(err), "errors": len(err)}


def tune_operating_point(dev_out: Path, variant: str, policies: Sequence[str]) -> dict[str, Any]:
    """The thresholds document (``cotmod tune``'s format: ``thresholds: {POLICY: {review: t}}``)
    with the shared threshold chosen on a development run's ``predictions.jsonl`` (its ``variant``
    lines), for every policy."""
    path = dev_out / "predictions.jsonl"
    rows = [r for r in read_jsonl(path) if r.get("variant") == variant]
    if not rows:
        raise ValueError(f"{path}: no prediction of variant {variant!r} (run the development sample first)")
    try:
        dev_result = json.loads((dev_out / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{dev_out / 'result.json'}: {exc}") from None
    if dev_result.get("dev") is None:
        raise ValueError(f"{dev_out}: not a development run (--dev SEED): a threshold is never chosen on the benchmark sample")
    chosen = shared_threshold(rows)
    return {
        "thresholds": {pid: {"review": chosen["review"]} for pid in policies},
        "chosen_on": {"run": str(dev_out), "dev_seed": dev_result["dev"], "variant": variant,
                      "sets": sorted({r["set"] for r in rows}), "items": chosen["items"], "errors": chosen["errors"],
                      "rule": "max F1 of anything-violated, every set pooled, ties to the higher threshold", "dev_f1": chosen["f1"]},
    }


def parse_curve(spec: str) -> list[float]:
    """``--threshold-curve``: comma-separated thresholds in [0, 1], returned sorted."""
    out: list[float] = []
    for part in (x.strip() for x in spec.split(",")):
        if not part:
            continue
        try:
            t = float(part)
        except ValueError:
            raise ValueError(f"--threshold-curve: {part!r} is not a number") from None
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"--threshold-curve: {part} is outside [0, 1]")
        out.append(t)
    if not out:
        raise ValueError("--threshold-curve: give at least one threshold, e.g. 0.03,0.05,0.1")
    return sorted(set(out))


def threshold_curve(
    sets: Sequence[str], items_by_set: dict[str, list[dict[str, Any]]], infos: dict[str, dict[str, Any]],
    work: Path, variant: str, thresholds: Sequence[float | None],
) -> list[dict[str, Any]]:
    """A cotmod variant's recorded verdicts decided at each global threshold on every policy's
    score (None: the model's own decisions), every set pooled: F1 of "anything violated" (errors
    count as wrong, as in the headline figures), benign items flagged, attribution precision and
    policies blamed per harmful item, and F1 per set. No model call; each set's verdicts are read
    once."""
    runs = {}
    for name in sets:
        run_dir = work / name / variant / "run"
        runs[name] = (run_dir, {str(x["item_id"]): x for x in read_jsonl(run_dir / "verdicts.jsonl")},
                      {str(x["id"]): x for x in read_jsonl(run_dir / "verdicts.errors.jsonl")})
    rows = []
    for threshold in thresholds:
        ys: list[int] = []
        ps: list[int] = []
        errors = 0
        flags: list[ItemFlags] = []
        per_set: dict[str, float | None] = {}
        for name in sets:
            run_dir, verdicts, dead = runs[name]
            pols = infos[name]["policies"]
            op = None if threshold is None else {pid: {"review": threshold} for pid in pols}
            recs = [cotmod_record(it, verdicts.get(it["id"]), dead.get(it["id"]), pols, op) for it in items_by_set[name]]
            done = [r for r in recs if r.pred is not None]  # items not run yet are left out
            errors += sum(1 for r in done if r.status == "error")
            m = binary_metrics([r.gold for r in done], [int(r.pred or 0) for r in done])
            c = m["confusion"]
            per_set[name] = m["f1"] if c["tp"] + c["fp"] + c["fn"] else None
            ys += [r.gold for r in done]
            ps += [int(r.pred or 0) for r in done]
            if (run_dir / "manifest.json").exists():
                flags.extend(compute_metrics(run_dir, thresholds=op, bootstrap_rounds=10).item_flags)
        m = binary_metrics(ys, ps)
        c = m["confusion"]
        rows.append({
            "threshold": threshold, "f1": m["f1"], "tp": c["tp"], "fp": c["fp"], "fn": c["fn"],
            "benign_flagged": c["fp"], "benign": c["fp"] + c["tn"], "errors": errors, **pair_attribution(flags),
            "f1_per_set": per_set,
        })
    return rows


def print_curve(variant: str, rows: Sequence[dict[str, Any]]) -> None:
    print(f"\nthreshold curve of {variant} (every policy decides by score >= threshold; the same verdicts, pooled)")
    print(f"  {'threshold':>9} {'F1':>6} {'TP':>4} {'FP':>4} {'FN':>4} {'benign flagged':>15} {'attribution':>11} {'blamed':>6}  F1 per set")
    for r in rows:
        t = "decision" if r["threshold"] is None else f"{r['threshold']:.3g}"
        ap_ = r["attribution_precision"]
        per = " ".join(f"{k}:{fmt(v)}" for k, v in r["f1_per_set"].items())
        print(f"  {t:>9} {r['f1']:6.3f} {r['tp']:4d} {r['fp']:4d} {r['fn']:4d} {r['benign_flagged']:>8d} of {r['benign']:<4d} "
              f"{'-' if ap_ is None else f'{ap_:.2f}':>11} {fmt(r['blamed_per_harmful'], '.2f'):>6}  {per}")


# -- running ------------------------------------------------------------------------------------
def count_lines(path: Path) -> int:
    return len(read_jsonl(path))


def add_timing(path: Path, wall_s: float, new_items: int) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"wall_s": wall_s, "new_items": new_items, "at": time.time()}) + "\n")


def seconds_per_item(timing: Path, latencies_ms: Sequence[float], concurrency: int) -> float | None:
    """Wall seconds of the runs over the items they decided; without a timing file (a run dir
    made elsewhere), the verdicts' own latencies over the concurrency."""
    rows = [r for r in read_jsonl(timing) if r.get("new_items")]
    if rows:
        return float(sum(r["wall_s"] for r in rows)) / sum(int(r["new_items"]) for r in rows)
    if latencies_ms:
        return sum(latencies_ms) / 1000 / concurrency / len(latencies_ms)
    return None


async def run_naive(base_url: str, model: str, items: list[dict[str, Any]], concurrency: int, answers: Path) -> None:
    """The naive prompt on the items without an answer in ``answers`` (appended as they come)."""
    import openai

    done = {a["id"] for a in read_jsonl(answers)}
    todo = [it for it in items if it["id"] not in done]
    if not todo:
        return
    # the key cotmod's own calls use for this endpoint (COTMOD_API_KEY / OPENAI_API_KEY, a config's
    # api_key_env, with cotmod's rules on which endpoint may receive it), so both prompts reach a
    # hosted model; a local server needs none
    key = Settings.load(base_url=base_url, model=model).api_key
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key.get_secret_value() if key else "not-needed",
                                max_retries=2, timeout=600)
    sem = asyncio.Semaphore(concurrency)
    with answers.open("a", encoding="utf-8") as f:

        async def one(it: dict[str, Any]) -> None:
            async with sem:
                t0 = time.perf_counter()
                try:
                    resp = await client.chat.completions.create(
                        model=model,
                        messages=[{"role": "system", "content": NAIVE_SYSTEM}, {"role": "user", "content": it["text"]}],
                        temperature=0,
                        seed=0,
                        max_tokens=20,
                        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": NAIVE_SCHEMA, "strict": True}},
                    )
                except openai.APIError as exc:  # not written: retried on the next run
                    log(f"naive {it['id']}: {type(exc).__name__}: {exc}")
                    return
                content = resp.choices[0].message.content
                line = {
                    "id": it["id"], "answer": parse_naive(content), "raw": content,
                    "tokens": resp.usage.total_tokens if resp.usage else None,
                    "latency_ms": (time.perf_counter() - t0) * 1000,
                }
                f.write(json.dumps(line) + "\n")
                f.flush()

        try:
            await asyncio.gather(*(one(it) for it in todo))
        finally:
            await client.close()


def run_cotmod_variant(args: argparse.Namespace, url: str, settings: dict[str, Any], sample: Path, mapping: Path, vdir: Path) -> None:
    run_dir = vdir / "run"
    cache = SqliteCache(args.cache) if getattr(args, "cache", None) else None
    mod = AsyncModerator(args.guidelines, cache=cache, **moderator_kwargs(args, url, settings))
    before = count_lines(run_dir / "verdicts.jsonl") + count_lines(run_dir / "verdicts.errors.jsonl")
    t0 = time.perf_counter()
    try:
        run_eval(mod, sample, mapping, run_dir)
    finally:
        wall = time.perf_counter() - t0
        if cache is not None:
            cache.close()
        after = count_lines(run_dir / "verdicts.jsonl") + count_lines(run_dir / "verdicts.errors.jsonl")
        if after > before:
            add_timing(vdir / "timing.jsonl", wall, after - before)


def read_variant_settings(vdir: Path, default: dict[str, Any]) -> dict[str, Any]:
    """The settings a variant ran with (``variant.json`` in its directory), else ``default``."""
    p = vdir / "variant.json"
    return dict(json.loads(p.read_text(encoding="utf-8"))) if p.exists() else default


def moderator_kwargs(args: argparse.Namespace, url: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The moderator's settings for a variant: the benchmark's defaults, then the variant's."""
    return {
        "base_url": url,
        "model": args.model,
        "concurrency": args.concurrency,
        "logprobs": True,
        "prompts": args.prompts,
        # a cold start processes every slot's long static prefix at once on 2 cores: allow it
        "timeout": 600,
        **settings,
    }


def one_line(exc: Exception) -> str:
    """A problem as one line (pydantic: the first field and its message)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
        except (TypeError, IndexError, KeyError):
            pass
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- reporting ------------------------------------------------------------------------------------
def short(pid: str) -> str:
    return "".join(w[0] for w in pid.split("_"))


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def fmt_ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.2f},{ci[1]:.2f}]"


def print_set(name: str, info: dict[str, Any]) -> None:
    print(f"\n== {name}: {info['items']} items, policies {info['policies_mode']} ({', '.join(short(p) for p in info['policies'])})")
    print(f"{'variant':<14}{'n':>5}{'err':>5}{'prec':>7}{'rec':>7}{'F1':>7}{'FPR':>7}{'AUPRC':>7}"
          f"{'calls':>7}{'tok':>7}{'s/it':>7}  {'F1 95% CI':<12}{'dF1 vs naive':>22}{'dFPR vs naive':>22}{'McNemar p':>10}")
    for v, r in info["variants"].items():
        d = r.get("paired_vs_naive")
        df1 = dfpr = mp = ""
        if d:
            df1 = f"{d['f1']['delta']:+.3f} {fmt_ci(d['f1']['ci95'])}"
            dfpr = f"{d['fpr']['delta']:+.3f} {fmt_ci(d['fpr']['ci95'])}"
            mp = f"{d['mcnemar']['p_value']:.3g}"
        print(f"{v:<14}{r['n']:>5}{r['errors']:>5}{fmt(r['precision']):>7}{fmt(r['recall']):>7}{fmt(r['f1']):>7}"
              f"{fmt(r['fpr']):>7}{fmt(r['auprc']):>7}{fmt(r['calls_per_item'], '.1f'):>7}{fmt(r['tokens_per_item'], '.0f'):>7}"
              f"{fmt(r['s_per_item'], '.1f'):>7}  {fmt_ci(r['f1_ci95']):<12}{df1:>22}{dfpr:>22}{mp:>10}")
    for v, r in info["variants"].items():
        pb = r.get("paired_vs_baseline")
        if pb and pb.get("f1"):
            print(f"  {v} vs {pb['baseline']} (paired, {pb['n']} items): dF1 {pb['f1']['delta']:+.3f} {fmt_ci(pb['f1']['ci95'])}, "
                  f"dFPR {pb['fpr']['delta']:+.3f} {fmt_ci(pb['fpr']['ci95'])}, McNemar p {pb['mcnemar']['p_value']:.3g}"
                  + (f", dAUPRC {pb['auprc']['delta']:+.3f} {fmt_ci(pb['auprc']['ci95'])}" if pb.get("auprc") else ""))
    for v, r in info["variants"].items():
        if r.get("triage_ran"):
            tr = r.get("triage_reach")
            reach = (f"; harmful items sent to their own policy {tr['own_policy_reached']}/{tr['harmful']}, "
                     f"benign sent to none {tr['benign_none']}/{tr['benign']}") if tr else ""
            print(f"  {v}: triage ran on {r['triage_ran']} items ({r['triage_fallbacks']} fell back to every policy); "
                  f"policies triaged out per item {fmt(r['triaged_out_per_item'], '.2f')}{reach}")
        at = r.get("attribution")
        if not at:
            continue
        print(f"  {v}: attribution precision {fmt(at['attribution_precision'])} ({at['flagged_pairs_harmful']} pairs); "
              f"blamed per harmful item {fmt(at['blamed_per_harmful'], '.2f')} (max {at['blamed_max']}); "
              f"benign with no flag {fmt(at['benign_no_flag_share'])} of {at['benign']}")
        pols = info["policies"]
        head = "gold / flagged"
        print("    " + f"{head:<18}{'items':>6}{'none':>6}" + "".join(f"{short(p):>5}" for p in pols))
        for lab, row in at["matrix"].items():
            print("    " + f"{lab[:18]:<18}{row['items']:>6}{row['no_flag']:>6}" + "".join(f"{row['flagged_by'].get(p, 0):>5}" for p in pols))


def baseline_of(variant: str, baseline: str) -> str | None:
    """The variant ``variant`` is paired with under ``--baseline``: the baseline itself, or its
    operating-point twin for an ``@op`` variant; None for naive and for the baseline's own."""
    if variant in (NAIVE, baseline, baseline + OP):
        return None
    return baseline + OP if variant.endswith(OP) else baseline


def baseline_pairs(records: dict[str, list[ItemRecord]], baseline: str, *, rounds: int) -> dict[str, dict[str, Any]]:
    """``paired_vs_baseline`` of every variant that has a baseline to pair with in ``records``
    (see :func:`baseline_of`), per set or pooled alike."""
    out: dict[str, dict[str, Any]] = {}
    for v in records:
        b = baseline_of(v, baseline)
        if b is not None and b in records:
            out[v] = {"baseline": b, **(paired_vs(records[b], records[v], rounds=rounds) or {})}
    return out


def measure_set(name: str, info: dict[str, Any], items: list[dict[str, Any]], set_dir: Path, variants: list[str], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list[ItemRecord]]]:
    pols = info["policies"]
    records: dict[str, list[ItemRecord]] = {}
    out: dict[str, Any] = {}
    for v in variants:
        vdir = set_dir / v
        if v == NAIVE:
            answers = {a["id"]: a for a in read_jsonl(vdir / "answers.jsonl")}
            recs = [naive_record(it, answers.get(it["id"])) for it in items]
            lat = [a["latency_ms"] for a in answers.values() if "latency_ms" in a]
            row = headline(recs, rounds=args.bootstrap, seed=args.seed)
            row["s_per_item"] = seconds_per_item(vdir / "timing.jsonl", lat, args.concurrency)
            records[v], out[v] = recs, {"prompt": v, **row}
            continue
        run_dir = vdir / "run"
        verdicts = {str(x["item_id"]): x for x in read_jsonl(run_dir / "verdicts.jsonl")}
        dead = {str(x["id"]): x for x in read_jsonl(run_dir / "verdicts.errors.jsonl")}
        recs = [cotmod_record(it, verdicts.get(it["id"]), dead.get(it["id"]), pols) for it in items]
        row = headline(recs, rounds=args.bootstrap, seed=args.seed)
        row["s_per_item"] = seconds_per_item(vdir / "timing.jsonl", [float(x.get("latency_ms", 0.0)) for x in verdicts.values()], args.concurrency)
        if (run_dir / "manifest.json").exists():
            result = compute_metrics(run_dir, bootstrap_rounds=200)
            write_metrics(result)
            row["attribution"] = attribution_figures(result)
            row["_flags"] = result.item_flags
            if result.triage is not None:  # which policies triage sent the items to (cotmod eval's figures)
                t = result.triage
                row["triage_reach"] = {"own_policy_reached": t.own_policy_reached, "harmful": t.harmful,
                                       "benign_none": t.benign_none, "benign": t.benign,
                                       "selected_per_item": t.selected_per_item}
        records[v], out[v] = recs, {"prompt": v, "settings": info["settings"].get(v, {}), **row}
        op = getattr(args, "op_thresholds", None)
        if op:  # the same verdicts decided at the operating point: no model call
            vo = v + OP
            recs = [cotmod_record(it, verdicts.get(it["id"]), dead.get(it["id"]), pols, op) for it in items]
            row = {**headline(recs, rounds=args.bootstrap, seed=args.seed), "s_per_item": out[v]["s_per_item"]}
            if (run_dir / "manifest.json").exists():
                result = compute_metrics(run_dir, thresholds=op, bootstrap_rounds=200)
                row["attribution"] = attribution_figures(result)
                row["_flags"] = result.item_flags
            row["paired_vs_model_decision"] = paired_vs(records[v], recs, rounds=args.bootstrap)
            records[vo], out[vo] = recs, {"prompt": v, "settings": out[v]["settings"], "operating_point": op, **row}
    if NAIVE in records:
        for v in records:
            if v != NAIVE:
                out[v]["paired_vs_naive"] = paired_vs(records[NAIVE], records[v], rounds=args.bootstrap)
    explicit = getattr(args, "baseline", None)
    base = explicit or "v12"
    if explicit:
        for v, pb in baseline_pairs(records, explicit, rounds=args.bootstrap).items():
            out[v]["paired_vs_baseline"] = pb
    for v in out:
        b = baseline_of(v, base)
        if b is None or b not in out:
            continue
        if out[b].get("_flags") and out[v].get("_flags"):
            cmp = compare_attribution(out[b]["_flags"], out[v]["_flags"], pols, rounds=args.bootstrap, seed=args.seed)
            out[v][f"attribution_vs_{base}"] = cmp.model_dump(mode="json") if cmp else None
    for r in out.values():
        r.pop("_flags", None)
    return out, records


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="local model (cotmod models list), or the served name with --base-url")
    ap.add_argument("--base-url", default=None, help="use this OpenAI-compatible server instead of starting the local model")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated sets [default: all: {','.join(SETS)}]")
    ap.add_argument("--n", action="append", default=[], metavar="SET=N", help=f"sample size of a set (repeatable) [defaults: {DEFAULT_N}]")
    ap.add_argument("--policies", action="append", default=[], metavar="MODE|SET=MODE",
                    help="all (every policy judges every item) or mapped (the set's mapping); repeatable "
                    "[default: mapped for hatecheck and xstest, all for the others]")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated, run in order [default: {DEFAULT_VARIANTS}; also new-notriage; with --reuse: the variant directories found]")
    ap.add_argument("--variant-settings", action="append", default=[], metavar="NAME:key=val,...",
                    help="define (or redefine) a cotmod variant by Settings overrides, e.g. evid:decision_logic=true,triage=true,evidence=true")
    ap.add_argument("--seed", type=int, default=2026, help="the benchmark sample's seed (never tuned on)")
    ap.add_argument("--dev", type=int, default=None, metavar="SEED",
                    help="draw a development sample with this seed from the items NOT in the full-size benchmark sample "
                    "(tune policies on it, report on the benchmark sample)")
    ap.add_argument("--concurrency", type=int, default=6,
                    help="requests in flight = server slots (6: one per XSTest policy, so each policy's cached prompt prefix keeps a slot)")
    ap.add_argument("--quick", action="store_true", help=f"small samples {QUICK_N} (--n still wins)")
    ap.add_argument("--guidelines", default=None, help="Policy directory [default: the starter pack]")
    ap.add_argument("--prompts", default=None, help="Prompt template directory [default: the shipped one]")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the CIs")
    ap.add_argument("--out", default=None, help="Keep the run directories here (run again with the same --out to resume)")
    ap.add_argument("--reuse", action="store_true", help="Measure what is already in --out (no model calls)")
    ap.add_argument("--operating-point", default=None, metavar="FILE",
                    help="a thresholds file (cotmod tune's format): every cotmod variant is also measured deciding by "
                    "score at it, as VARIANT@op (the same verdicts, no model call)")
    ap.add_argument("--tune-on", default=None, metavar="DEV_OUT",
                    help="choose the operating point on a development run's --out (--dev SEED): one threshold on the score "
                    "for every policy, maximising pooled F1 of that run's --tune-variant; written to OUT/operating_point.yaml")
    ap.add_argument("--cache", default=None, metavar="FILE",
                    help="a result cache (cotmod.SqliteCache) shared by the variants and runs: a variant that "
                    "differs only in triage threshold re-asks triage and reuses every policy call already made "
                    "(its calls per item then count only the calls it made)")
    ap.add_argument("--baseline", default=None, metavar="VARIANT",
                    help="also pair every variant with this one (an @op variant with its @op twin): paired F1/FPR "
                    "deltas with CIs and McNemar (paired_vs_baseline) and attribution deltas (attribution_vs_VARIANT); "
                    "e.g. a run of the previous policies copied in as SET/v14 and measured with --reuse")
    ap.add_argument("--tune-variant", default="new", help="the development run's variant to tune on [default: new]")
    ap.add_argument("--threshold-curve", default=None, metavar="T,T,...",
                    help="also decide every cotmod variant's recorded verdicts at each of these global score thresholds "
                         "(no model call): pooled F1, benign items flagged, attribution precision and policies blamed "
                         "per harmful item, F1 per set; printed and written to result.json's threshold_curve")
    args = ap.parse_args()

    try:
        sets = [s.strip() for s in args.sets.split(",") if s.strip()]
        bad = [s for s in sets if s not in SETS]
        if bad or not sets:
            raise ValueError(f"--sets: unknown set {bad[0] if bad else '(none)'} (known: {', '.join(SETS)})")
        n = {**(QUICK_N if args.quick else DEFAULT_N), **parse_n(args.n)}
        modes = parse_policies(args.policies)
        defs = {**VARIANTS, **parse_variant_settings(args.variant_settings)}
        variants = list(dict.fromkeys(v.strip() for v in (args.variants or DEFAULT_VARIANTS).split(",") if v.strip()))
        unknown = [v for v in variants if v != NAIVE and v not in defs]
        if unknown or not variants:
            raise ValueError(f"--variants: unknown variant {unknown[0] if unknown else '(none)'} (known: {NAIVE}, {', '.join(defs)})")
        if args.reuse and not args.out:
            raise ValueError("--reuse needs --out (the directory to measure)")
        if args.operating_point and args.tune_on:
            raise ValueError("give --operating-point or --tune-on, not both")
        curve = parse_curve(args.threshold_curve) if args.threshold_curve is not None else None
        sets = [s for s in sets if n[s] > 0]
        if not sets:
            raise ValueError("every selected set has --n 0")
    except ValueError as exc:
        ap.error(str(exc))

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cotmod-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.reuse:  # the sample was drawn with the seeds recorded then: a re-measure keeps them
        args.seed, args.dev = reused_seeds(work, args.seed, args.dev)
    try:
        probe = AsyncModerator(args.guidelines, **moderator_kwargs(args, "http://127.0.0.1:9/v1", {}))
        all_policies = probe.policies.ids
        for v in variants:  # every variant's settings are valid before anything runs
            if v != NAIVE and not args.reuse:
                AsyncModerator(args.guidelines, **moderator_kwargs(args, "http://127.0.0.1:9/v1", defs[v]))
        if args.tune_on:
            op_doc = tune_operating_point(Path(args.tune_on), args.tune_variant, all_policies)
            (work / "operating_point.yaml").write_text(json.dumps(op_doc, indent=1) + "\n", encoding="utf-8")
            args.operating_point = str(work / "operating_point.yaml")
        args.op_thresholds = load_thresholds(args.operating_point) if args.operating_point else None
    except (CotmodError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"bench_quality: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)

    items_by_set: dict[str, list[dict[str, Any]]] = {}
    infos: dict[str, dict[str, Any]] = {}
    if args.reuse:
        # what is in --out: its samples, mappings and variant directories (--n, --seed, --dev and
        # --policies are not needed); --sets and --variants narrow it down when given
        sets = [s for s in sets if (work / s / "sample.jsonl").exists()]
        if not sets:
            print(f"bench_quality: {work} holds no sample of the selected sets", file=sys.stderr)
            sys.exit(2)
        if args.variants is None:
            found = {d.name for s in sets for d in (work / s).iterdir() if d.is_dir()}
            variants = [v for v in (NAIVE, *VARIANTS) if v in found] + sorted(found - {NAIVE, *VARIANTS})
        for name in sets:
            items_by_set[name] = read_jsonl(work / name / "sample.jsonl")
            doc = json.loads((work / name / "mapping.yaml").read_text(encoding="utf-8"))
            pols = list(doc["labels"][ANY]["policies"])
            infos[name] = {
                "items": len(items_by_set[name]), "policies_mode": "all" if set(pols) == set(all_policies) else "mapped",
                "policies": pols, "positives": sum(1 for r in items_by_set[name] if r["labels"][ANY] == 1),
                "settings": {v: read_variant_settings(work / name / v, defs.get(v, {})) for v in variants if v != NAIVE},
            }
    else:
        try:
            samples = benchmark_sample(sets, n, args.seed, args.dev)
        except ValueError as exc:
            ap.error(str(exc))
        for name in sets:
            m = load_mapping(GOLDSETS / name / "mapping.yaml")
            pols = in_play(modes[name], m.labels, all_policies)
            set_dir = work / name
            set_dir.mkdir(exist_ok=True)
            doc = mapping_doc(name, m.labels, m.strata, pols)
            items_by_set[name] = [keep_labels(golden_row(name, r), doc["labels"]) for r in samples[name]]
            sample_text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items_by_set[name])
            try:
                write_once(set_dir / "sample.jsonl", sample_text)
                write_once(set_dir / "mapping.yaml", json.dumps(doc, indent=1) + "\n")
            except ValueError as exc:
                print(f"bench_quality: {exc}", file=sys.stderr)
                sys.exit(2)
            infos[name] = {
                "items": len(items_by_set[name]), "policies_mode": modes[name], "policies": pols,
                "positives": sum(1 for r in items_by_set[name] if r["labels"][ANY] == 1),
                "settings": {v: defs[v] for v in variants if v != NAIVE},
            }

    if args.baseline and args.baseline not in variants:
        print(f"bench_quality: --baseline {args.baseline}: not a variant of this run (variants: {', '.join(variants)})", file=sys.stderr)
        sys.exit(2)
    if not args.reuse:
        if args.base_url:
            url = args.base_url
        else:
            from cotmod.backends._local import ensure_local_server

            url = ensure_local_server(args.model, n_parallel=args.concurrency)
        for v in variants:
            for name in sets:
                set_dir = work / name
                vdir = set_dir / v
                vdir.mkdir(exist_ok=True)
                log(f"[{v}] {name}: {len(items_by_set[name])} items")
                try:
                    if v == NAIVE:
                        answers = vdir / "answers.jsonl"
                        before = count_lines(answers)
                        t0 = time.perf_counter()
                        asyncio.run(run_naive(url, args.model, items_by_set[name], args.concurrency, answers))
                        if count_lines(answers) > before:
                            add_timing(vdir / "timing.jsonl", time.perf_counter() - t0, count_lines(answers) - before)
                    else:
                        write_once(vdir / "variant.json", json.dumps(defs[v], sort_keys=True) + "\n", "variant's settings (--variant-settings)")
                        run_cotmod_variant(args, url, defs[v], set_dir / "sample.jsonl", set_dir / "mapping.yaml", vdir)
                except ValueError as exc:  # write_once: the variant ran with other settings
                    print(f"bench_quality: [{v}] {name}: {one_line(exc)}", file=sys.stderr)
                    sys.exit(2)
                except CotmodError as exc:
                    print(f"bench_quality: [{v}] {name}: {one_line(exc)}", file=sys.stderr)
                    sys.exit(2 if isinstance(exc, UserError) else 3)

    result: dict[str, Any] = {
        "bench": "quality", "model": args.model, "seed": args.seed, "dev": args.dev, "variants": variants,
        "operating_point": args.operating_point,
        "variant_settings": {v: infos[sets[0]]["settings"].get(v, {}) for v in variants if v != NAIVE}, "sets": {},
    }
    pooled: dict[str, list[ItemRecord]] = {}
    with (work / "predictions.jsonl").open("w", encoding="utf-8") as pf:
        for name in sets:
            items = items_by_set[name]
            per_variant, records = measure_set(name, infos[name], items, work / name, variants, args)
            info = {k: v for k, v in infos[name].items() if k != "settings"}
            info["variants"] = per_variant
            result["sets"][name] = info
            print_set(name, info)
            for v, recs in records.items():
                pooled.setdefault(v, []).extend(recs)
                for r in recs:
                    pf.write(json.dumps({"set": name, "variant": v, **asdict(r)}) + "\n")
    pooled_out: dict[str, Any] = {v: headline(recs, rounds=args.bootstrap, seed=args.seed) for v, recs in pooled.items()}
    if NAIVE in pooled:
        for v in pooled:
            if v != NAIVE:
                pooled_out[v]["paired_vs_naive"] = paired_vs(pooled[NAIVE], pooled[v], rounds=args.bootstrap)
    if args.baseline:
        for v, pb in baseline_pairs(pooled, args.baseline, rounds=args.bootstrap).items():
            pooled_out[v]["paired_vs_baseline"] = pb
    result["pooled"] = pooled_out
    if curve is not None:
        result["threshold_curve"] = {}
        for v in variants:
            if v == NAIVE:
                continue
            rows = threshold_curve(sets, items_by_set, infos, work, v, [None, *curve])
            result["threshold_curve"][v] = rows
            print_curve(v, rows)
    print(f"\nmodel {args.model}; seed {args.seed}{f'; dev sample (seed {args.dev})' if args.dev is not None else ''}; "
          f"out {work}; policy legend: " + ", ".join(f"{short(p)}={p}" for p in all_policies))
    print("errors count as wrong in P/R/F1/FPR (harmful -> FN, benign -> FP); calls = Verdict.attempts per item")
    (work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
