"""The golden-set harness: run a golden set through the batch runner, then measure.

A run directory holds everything needed to reproduce and compare::

    runs/NAME/
      manifest.json      policy versions, prompt fingerprint, model, sampling, cotmod version,
                         date, golden set path + sha256, label mapping
      items.jsonl        the items sent (id, text, the policies that decide its known labels)
      verdicts.jsonl     one verdict per item (the runner's output: cached, resumable)
      verdicts.errors.jsonl
      metrics.json       every figure (what the terminal table and the HTML report show)

:func:`run_eval` runs (or resumes) the model calls. :func:`compute_metrics` is pure: it reads
the run directory and returns an :class:`EvalResult`; :func:`write_metrics` writes it to
``metrics.json`` (and ``cotmod.evals.write_report`` the HTML page).

Scores for curves and thresholds: per label, the highest ``score`` among its policies' decisions
(``score`` is the verdict's probability-like score: stated confidence by default, token
log-probabilities when the server returns them).
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from .._exceptions import ConfigError, InputError, UserError
from .._version import __version__
from ..batch._runner import Runner, RunSummary
from ..engine._moderator import AsyncModerator
from ..prompting import select_by_probability
from ._golden import GoldenItem, LabelMapping, load_golden, load_mapping
from ._metrics import (
    average_precision,
    binary_metrics,
    bootstrap_ci,
    calibration,
    from_confusion,
    metric_cis,
    pr_curve,
    roc_auc,
)
from ._results import (
    CI,
    Attribution,
    AttributionRow,
    Averages,
    Calibration,
    Confusion,
    CurvePoint,
    EvalResult,
    Example,
    ItemFlags,
    LabelAttribution,
    LabelMetrics,
    MicroAverages,
    PolicyAttribution,
    PolicyBlame,
    Prediction,
    RootCauses,
    RuleStats,
    RunManifest,
    StratumErrors,
    TriageLabelReach,
    TriagePoint,
    TriageReach,
)

__all__ = ["compute_metrics", "load_result", "run_eval", "write_metrics"]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    tmp.replace(path)


def run_eval(
    moderator: AsyncModerator,
    golden_path: str | Path,
    mapping_path: str | Path,
    run_dir: str | Path,
    *,
    policies: Sequence[str] | None = None,
    concurrency: int | None = None,
    limit: int | None = None,
    on_progress: Callable[[RunSummary, int | None], None] | None = None,
    overwrite: bool = False,
    sample: int | None = None,
    seed: int = 0,
) -> tuple[RunManifest, RunSummary]:
    """Run (or resume) an evaluation; returns (manifest, runner summary).

    ``limit`` takes the first N eligible items in file order; ``sample`` a seeded random sample
    of N of them (``seed``), kept in file order (both: a sample of the first ``limit``).

    ``policies`` evaluates only those policies (``cotmod eval -p``): each label keeps the
    selected ones among its policies, labels decided by none of them are not evaluated, and
    items whose only known labels are those are not sent.

    A run directory holding verdicts of another configuration (other policies, prompt, model or
    sampling) or of another golden set is refused before anything in it is written; with
    ``overwrite`` its verdicts, dead letters, items, metrics and report are discarded first
    (``cotmod eval --overwrite``: start over).
    """
    mapping = load_mapping(mapping_path)
    mapping.validate(moderator.policies, str(mapping_path))
    golden = load_golden(golden_path, mapping)
    if policies:
        for pid in policies:
            if pid not in moderator.policies:
                raise InputError(f"--policy {pid!r}: unknown policy (known: {', '.join(moderator.policies.ids)})")
        mapping = mapping.restrict(list(dict.fromkeys(policies)), str(mapping_path))
    out = Path(run_dir)
    mpath = out / "manifest.json"
    vpath = out / "verdicts.jsonl"
    runner = Runner(moderator, concurrency=concurrency)
    if overwrite:
        for name in ("manifest.json", "items.jsonl", "metrics.json", "report.html"):
            (out / name).unlink(missing_ok=True)  # the runner's own files go with overwrite=True below
    elif mpath.exists():
        try:
            old = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{mpath}: not a cotmod eval manifest ({exc}); pass --overwrite to start over") from None
        old_golden = old.get("golden") if isinstance(old, dict) else None
        old_golden = old_golden if isinstance(old_golden, dict) else {}
        if old_golden.get("sha256") != golden.sha256:
            raise ConfigError(
                f"{out} holds a run of another golden set ({old_golden.get('path')}); "
                "use another run directory, or pass --overwrite to start over"
            )
    if not overwrite:
        # the run store's refusal (verdicts of another configuration), checked before
        # items.jsonl and manifest.json are rewritten: a refused eval leaves the run as it was
        runner.check_resumable(vpath, mapping.policies)
    out.mkdir(parents=True, exist_ok=True)
    items = out / "items.jsonl"
    lines: list[str] = []
    for it in golden.items:
        pols = list(dict.fromkeys(p for lab, v in it.labels.items() if v is not None for p in mapping.labels[lab]))
        if not pols:
            continue
        lines.append(json.dumps({"id": it.id, "text": it.text, "policies": pols}, ensure_ascii=False) + "\n")
        if limit is not None and len(lines) >= limit:
            break
    if sample is not None and sample < len(lines):
        # a seeded simple random sample of the eligible items, kept in golden-set order: the
        # same seed and golden set give the same items (resume, a second configuration)
        keep = set(random.Random(seed).sample(range(len(lines)), sample))
        lines = [line for i, line in enumerate(lines) if i in keep]
    s = moderator.settings
    manifest = {
        **runner.manifest(mapping.policies),
        # what triage selected by (its threshold and max are also in the prompt fingerprint):
        # recorded for the triage-reach figures, which recompute the selection at other thresholds
        **({"triage": {"max_policies": s.triage_max, "threshold": s.triage_threshold if s.logprobs else None,
                       "min_policies": s.triage_min if s.logprobs else 0}}
           if moderator.triage_applies(mapping.policies) else {}),
        "cotmod_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "golden": {"path": str(golden_path), "sha256": golden.sha256, "rows": len(golden)},
        "mapping": {
            "path": str(mapping_path),
            "name": mapping.name,
            "labels": mapping.labels,
            "strata": mapping.strata,
            "only_policies": list(dict.fromkeys(policies)) if policies else None,
        },
        "limit": limit,
        **({"sample": {"n": sample, "seed": seed}} if sample is not None else {}),
    }
    # written first, so an interrupted run can still be reported on (cotmod report) and resumed;
    # restored if the run store refuses this configuration (the run directory then still
    # describes the verdicts it holds)
    previous = mpath.read_bytes() if mpath.exists() else None
    previous_items = items.read_bytes() if items.exists() else None
    tmp = items.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(items)
    _write_json(mpath, {**manifest, "complete": False})
    try:
        summary = Runner.run_sync(
            runner, items, vpath, policies=mapping.policies, policies_field="policies", on_progress=on_progress,
            overwrite=overwrite,
        )
    except UserError:
        for path, before in ((mpath, previous), (items, previous_items)):
            if before is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(before)
        raise
    manifest["complete"] = True
    _write_json(mpath, manifest)
    return RunManifest.model_validate(manifest), summary


@dataclass
class _Run:
    manifest: RunManifest
    mapping: LabelMapping
    items: list[GoldenItem]  # the items sent to the model, in golden-set order
    verdicts: dict[str, dict[str, Any]]
    errors: dict[str, dict[str, Any]]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A run's records, read only: unlike the run store's :func:`~cotmod.batch._store.scan_jsonl`
    it never repairs a torn last line (a report may read a run another process is still
    appending to: that line is skipped, and the runner mends it on resume)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if not raw.endswith(b"\n"):
                    break  # torn mid-character by a stop: as a torn line below
                raise InputError(f"{path}:{n}: not valid UTF-8 (byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):
                    break  # a torn last line (a run stopped mid-write): the runner repairs it on resume
                raise InputError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    return out


def _load_run(run_dir: Path) -> _Run:
    mpath = run_dir / "manifest.json"
    if not mpath.exists():
        raise InputError(f"{run_dir}: not a run directory (no manifest.json); create one with cotmod eval")
    try:
        manifest = RunManifest.model_validate_json(mpath.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise InputError(f"{mpath}: not a cotmod eval manifest ({_why(exc)})") from None
    mapping = LabelMapping(name=manifest.mapping.name, labels=manifest.mapping.labels, strata=manifest.mapping.strata)
    golden = load_golden(manifest.golden.path, mapping)
    if golden.sha256 != manifest.golden.sha256:
        raise InputError(f"{manifest.golden.path} changed since the run {run_dir} was made")
    sent_path = run_dir / "items.jsonl"
    if sent_path.exists():
        sent = {str(r["id"]) for r in _read_jsonl(sent_path)}
        items = [it for it in golden.items if it.id in sent]
    else:  # not written by this cotmod: every item with a known, evaluated label
        items = [it for it in golden.items if any(v is not None and mapping.labels[lab] for lab, v in it.labels.items())]
    vpath = run_dir / "verdicts.jsonl"
    verdicts = {str(v["item_id"]): v for v in _read_jsonl(vpath)}
    errors = {str(e["id"]): e for e in _read_jsonl(Runner.errors_path(vpath))}
    return _Run(manifest, mapping, items, verdicts, errors)


@dataclass
class _Row:
    """One decided item seen through one label."""

    id: str
    text: str
    y: int
    pred: int
    score: float
    rules: list[str]
    flagged_by: list[str]  # the label's policies whose decision made the item positive
    expected_rules: list[str]
    rationale: str
    reasoning: list[str]
    strata: dict[str, Any] = field(default_factory=dict)


def flagged_policies(decisions: Sequence[Mapping[str, Any]], thresholds: Mapping[str, Mapping[str, float]] | None = None) -> list[str]:
    """The policies whose decision (a verdict's ``decisions`` entries, as dicts) flags the item,
    in order, each once: ``score >= review`` where the policy has an operating threshold
    (``load_thresholds``: what ``cotmod eval --thresholds`` applies), the model's ``violates``
    otherwise."""
    out: list[str] = []
    for d in decisions:
        th = (thresholds or {}).get(d["policy_id"])
        if (th is not None and float(d["score"]) >= th["review"]) or (th is None and d["violates"]):
            out.append(d["policy_id"])
    return list(dict.fromkeys(out))


def _row(it: GoldenItem, y: int, label: str, v: dict[str, Any], policies: list[str], thresholds: dict[str, dict[str, float]], strata: list[str]) -> _Row:
    decs = [d for d in v["decisions"] if d["policy_id"] in policies]
    flagged = flagged_policies(decs, thresholds)
    return _Row(
        id=it.id,
        text=it.text,
        y=y,
        pred=1 if flagged else 0,
        score=max((float(d["score"]) for d in decs), default=0.0),
        rules=[r for d in decs for r in d["rule_ids"]],
        flagged_by=flagged,
        expected_rules=it.expected_rules.get(label, []),
        rationale=" | ".join(d["rationale"] for d in decs if d["violates"]) or (decs[0]["rationale"] if decs else ""),
        reasoning=list(v.get("reasoning", [])),
        strata={s: it.meta.get(s) for s in strata},
    )


def compute_metrics(
    run_dir: str | Path,
    *,
    thresholds: dict[str, dict[str, float]] | None = None,
    bootstrap_rounds: int = 1000,
    seed: int = 0,
    max_examples: int = 50,
) -> EvalResult:
    """Every figure of a run: per label and per rule, averages, curves, calibration, RCA.

    Pure: reads the run directory (manifest, golden set, verdicts) and writes nothing; save the
    result with :func:`write_metrics`. ``thresholds`` (as ``cotmod tune`` writes them, per
    policy) decide by score instead of the model's ``violates``. ``bootstrap_rounds=0`` skips
    the confidence intervals (they are then ``None``).
    """
    rd = Path(run_dir)
    run = _load_run(rd)
    thresholds = thresholds or {}
    strata = run.mapping.strata
    labels_out: dict[str, LabelMetrics] = {}
    predictions: dict[str, list[Prediction]] = {}
    pooled = Counter[str]()
    for label, pols in run.mapping.evaluated_labels.items():
        rows: list[_Row] = []
        n_known = n_error = n_missing = 0
        for it in run.items:
            gold = it.labels.get(label)
            if gold is None:
                continue
            n_known += 1
            v = run.verdicts.get(it.id)
            if v is None:
                if it.id in run.errors:
                    n_error += 1
                else:
                    n_missing += 1
                continue
            rows.append(_row(it, int(gold), label, v, pols, thresholds, strata))
        y = [r.y for r in rows]
        p = [r.pred for r in rows]
        s = [r.score for r in rows]
        m = binary_metrics(y, p)
        for k, val in m["confusion"].items():
            pooled[k] += val
        labels_out[label] = LabelMetrics(
            policies=pols,
            **{k: m[k] for k in ("precision", "recall", "f1", "fpr", "support", "n", "confusion")},
            known=n_known,
            errors=n_error,
            missing=n_missing,
            error_rate=(n_error + n_missing) / n_known if n_known else 0.0,
            auprc=average_precision(y, s) if rows else None,
            roc_auc=roc_auc(y, s) if rows else None,
            ci95=metric_cis(y, p, rounds=bootstrap_rounds, seed=seed),
            calibration=Calibration.model_validate(calibration(y, s)) if rows else None,
            pr_curve=[CurvePoint(**pt) for pt in pr_curve(y, s)],
            per_rule=_per_rule(rows),
            per_policy=_per_policy(rows, pols),
            rca=_rca(rows, strata, max_examples),
        )
        predictions[label] = [Prediction(id=r.id, y=r.y, pred=r.pred, score=r.score) for r in rows]
    pooled_c = {k: pooled[k] for k in ("tp", "fp", "fn", "tn")}
    names = ("precision", "recall", "f1", "fpr")
    macro = {k: float(np.mean([getattr(e, k) for e in labels_out.values()])) if labels_out else 0.0 for k in names}
    undecided = [it.id for it in run.items if it.id not in run.verdicts]
    n_errors = sum(1 for i in undecided if i in run.errors)
    attribution, item_flags = _attribution(run, thresholds, bootstrap_rounds, seed)
    triage = _triage_reach(run, bootstrap_rounds, seed)
    return EvalResult(
        run=str(rd),
        manifest=run.manifest,
        thresholds=thresholds,
        labels=labels_out,
        micro=MicroAverages(**from_confusion(pooled_c), confusion=Confusion(**pooled_c)),
        macro=Averages(**macro),
        predictions=predictions,
        items=len(run.items),
        errors=n_errors,
        missing=len(undecided) - n_errors,
        attribution=attribution,
        triage=triage,
        item_flags=item_flags,
    )


def write_metrics(result: EvalResult, run_dir: str | Path | None = None) -> Path:
    """Write ``result`` as ``metrics.json`` into ``run_dir`` (default: the run it measures)."""
    path = Path(run_dir if run_dir is not None else result.run) / "metrics.json"
    _write_json(path, result.model_dump(mode="json"))
    return path


def load_result(run_dir: str | Path) -> EvalResult:
    """The :class:`EvalResult` saved in a run directory's ``metrics.json``."""
    p = Path(run_dir) / "metrics.json"
    if not p.exists():
        raise InputError(f"{run_dir}: no metrics.json; run cotmod eval (or cotmod report) first")
    try:
        return EvalResult.model_validate_json(p.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise InputError(f"{p}: not a cotmod metrics file ({_why(exc)}); recreate it with cotmod report") from None


def _why(exc: ValidationError) -> str:
    """The first problem pydantic found, as ``field.path: message``."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(x) for x in first["loc"])
    more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
    return (f"{loc}: {first['msg']}" if loc else first["msg"]) + more


def _per_rule(rows: list[_Row]) -> dict[str, RuleStats]:
    """For each cited rule: how often cited, precision of its citations, recall where expected."""
    cited: dict[str, list[int]] = defaultdict(list)
    expected: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        for rule in set(r.rules):
            cited[rule].append(r.y)
        for rule in set(r.expected_rules):
            expected[rule].append(1 if rule in r.rules else 0)
    out: dict[str, RuleStats] = {}
    for rule in sorted(set(cited) | set(expected)):
        ys = cited.get(rule, [])
        ex = expected.get(rule, [])
        out[rule] = RuleStats(
            cited=len(ys),
            true_positive=sum(ys),
            false_positive=len(ys) - sum(ys),
            precision=(sum(ys) / len(ys)) if ys else None,
            expected=len(ex),
            recall=(sum(ex) / len(ex)) if ex else None,
        )
    return out


def _per_policy(rows: list[_Row], policies: list[str]) -> dict[str, PolicyAttribution]:
    """For each policy of the label: the items it flagged, how many were gold positives, and how
    many no other policy of the label flagged."""
    out: dict[str, PolicyAttribution] = {}
    for pid in policies:
        flagged = [r for r in rows if pid in r.flagged_by]
        tp = sum(r.y for r in flagged)
        out[pid] = PolicyAttribution(
            flagged=len(flagged),
            true_positive=tp,
            false_positive=len(flagged) - tp,
            precision=tp / len(flagged) if flagged else None,
            only_this_policy=sum(1 for r in flagged if len(r.flagged_by) == 1),
        )
    return out


BENIGN = "benign"


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def _mean_ci(values: list[float], rounds: int, seed: int) -> CI:
    """Percentile-bootstrap CI of the mean of ``values`` (a share when they are 0/1)."""
    if not values or rounds <= 0:
        return None
    arr = np.asarray(values, dtype=float)
    return bootstrap_ci(lambda idx: float(arr[idx].mean()), len(arr), rounds=rounds, seed=seed)


def _item_kind(it: GoldenItem, labels: dict[str, list[str]]) -> tuple[str, list[str], list[str]]:
    """(kind, positive labels, policies of the most specific positive labels) of an item: harmful
    when a known label is 1, benign otherwise (unknown labels are left out, as everywhere).

    A positive label whose policies strictly include those of another positive label of the
    same item (a catch-all like ``unsafe`` next to a hazard) says less about which policy should
    fire, so it does not widen the policies a flag may correctly come from."""
    pos = [lab for lab in labels if it.labels.get(lab) == 1]
    if not pos:
        return BENIGN, [], []
    return "harmful", pos, gold_policies(pos, labels)


def gold_policies(positive: Sequence[str], labels: Mapping[str, Sequence[str]]) -> list[str]:
    """The policies a flag may correctly come from, for an item gold-positive on the labels
    ``positive`` (``labels``: each label's policies, as in a mapping): those of its most specific
    positive labels. A positive label whose policies strictly include another positive label's
    (a catch-all like AILuminate's ``unsafe``, mapped to every policy, next to the item's hazard)
    is left out, so it does not make every policy right. In label order, without repeats."""
    specific = [lab for lab in positive if not any(set(labels[o]) < set(labels[lab]) for o in positive)]
    return list(dict.fromkeys(p for lab in specific for p in labels[lab]))


def _attribution(
    run: _Run, thresholds: dict[str, dict[str, float]], rounds: int, seed: int
) -> tuple[Attribution, list[ItemFlags]]:
    """Which policy was blamed, over every decided item and every policy in play."""
    labels = run.mapping.evaluated_labels
    in_play = list(dict.fromkeys(p for ps in labels.values() for p in ps))
    records: list[ItemFlags] = []
    unknown_pols: dict[str, set[str]] = {}
    errors = {"harmful": 0, BENIGN: 0}
    missing = 0
    for it in run.items:
        kind, pos, own = _item_kind(it, labels)
        v = run.verdicts.get(it.id)
        if v is None or v.get("status", "ok") != "ok":
            if v is not None or it.id in run.errors:
                errors[kind] += 1
            else:
                missing += 1
            continue
        flagged = flagged_policies([d for d in v["decisions"] if d["policy_id"] in in_play], thresholds)
        t = v.get("triage")
        triaged = list(t.get("selected", [])) if isinstance(t, dict) and not t.get("fallback") else None
        records.append(ItemFlags(id=it.id, kind=kind, gold=pos, own=own, flagged=flagged, triaged=triaged))
        unknown_pols[it.id] = {p for lab, ps in labels.items() if it.labels.get(lab) is None for p in ps}
    harmful = [r for r in records if r.kind == "harmful"]
    benign = [r for r in records if r.kind == BENIGN]

    per_policy: dict[str, PolicyBlame] = {}
    for k, pid in enumerate(in_play):
        flags = [r for r in records if pid in r.flagged]
        right = [1.0 if pid in r.own else 0.0 for r in flags]
        wrong = [r for r in flags if pid not in r.own]
        expected = [r for r in harmful if pid in r.own]
        hit = sum(1 for r in expected if pid in r.flagged)
        per_policy[pid] = PolicyBlame(
            flagged=len(flags),
            correct=int(sum(right)),
            benign=sum(1 for r in wrong if r.kind == BENIGN),
            other_harm=sum(1 for r in wrong if r.kind == "harmful"),
            unverifiable=sum(1 for r in wrong if pid in unknown_pols[r.id]),
            precision=_share(int(sum(right)), len(flags)),
            precision_ci95=_mean_ci(right, rounds, seed + k),
            expected=len(expected),
            recall=_share(hit, len(expected)),
        )

    per_label: dict[str, LabelAttribution] = {}
    matrix: dict[str, AttributionRow] = {}
    for k, (lab, pols) in enumerate(labels.items()):
        rows = [r for r in harmful if lab in r.gold]
        own_hit = [1.0 if set(r.flagged) & set(pols) else 0.0 for r in rows]
        n_own = int(sum(own_hit))
        no_flag = sum(1 for r in rows if not r.flagged)
        per_label[lab] = LabelAttribution(
            positives=len(rows),
            own_policy=n_own,
            other_policy_only=len(rows) - n_own - no_flag,
            no_flag=no_flag,
            recall=_share(n_own, len(rows)),
            recall_ci95=_mean_ci(own_hit, rounds, seed + 100 + k),
        )
        matrix[lab] = _matrix_row(rows, in_play)
    matrix[BENIGN if BENIGN not in labels else f"{BENIGN} (all labels 0)"] = _matrix_row(benign, in_play)

    blamed = [len(r.flagged) for r in harmful]
    dist = Counter(str(n) if n < 3 else "3+" for n in blamed)
    no_flag_benign = [0.0 if r.flagged else 1.0 for r in benign]
    own_share = [1.0 if set(r.flagged) & set(r.own) else 0.0 for r in harmful]
    attribution = Attribution(
        policies=in_play,
        label_policies=labels,
        decided=len(records),
        harmful=len(harmful),
        benign=len(benign),
        errors=sum(errors.values()),
        errors_harmful=errors["harmful"],
        errors_benign=errors[BENIGN],
        missing=missing,
        benign_no_flag=int(sum(no_flag_benign)),
        benign_no_flag_share=_share(int(sum(no_flag_benign)), len(benign)),
        benign_no_flag_ci95=_mean_ci(no_flag_benign, rounds, seed),
        harmful_flagged=sum(1 for n in blamed if n),
        harmful_flagged_share=_share(sum(1 for n in blamed if n), len(harmful)),
        own_policy_share=_share(int(sum(own_share)), len(harmful)),
        own_policy_ci95=_mean_ci(own_share, rounds, seed),
        blamed_per_harmful=float(np.mean(blamed)) if blamed else None,
        blamed_per_harmful_ci95=_mean_ci([float(n) for n in blamed], rounds, seed),
        blamed_distribution={k: dist.get(k, 0) for k in ("0", "1", "2", "3+")},
        per_policy=per_policy,
        per_label=per_label,
        matrix=matrix,
    )
    return attribution, records


#: the P(yes) thresholds :func:`_triage_reach` recomputes the selection at (0: always the most likely)
TRIAGE_SWEEP = (0.5, 0.3, 0.2, 0.1, 0.05, 0.0)


@dataclass
class _Triaged:
    kind: str
    gold: list[str]
    own: list[str]
    selected: list[str]
    scores: dict[str, float] | None


def _triage_reach(run: _Run, rounds: int, seed: int) -> TriageReach | None:
    """Which policies triage sent each decided item to, against its gold policies (None when no
    verdict carries a triage record)."""
    labels = run.mapping.evaluated_labels
    rows: list[_Triaged] = []
    fallbacks = 0
    for it in run.items:
        v = run.verdicts.get(it.id)
        if v is None or v.get("status", "ok") != "ok" or not v.get("triage"):
            continue
        t = v["triage"]
        if t.get("fallback"):
            fallbacks += 1
            continue
        kind, pos, own = _item_kind(it, labels)
        scores = t.get("scores")
        rows.append(_Triaged(kind, pos, own, list(t.get("selected", [])), dict(scores) if isinstance(scores, dict) else None))
    if not rows and not fallbacks:
        return None
    recorded = (run.manifest.model_extra or {}).get("triage")
    settings = recorded if isinstance(recorded, dict) else {}
    cap = settings.get("max_policies")
    if not isinstance(cap, int) or cap < 1:
        cap = max([len(r.selected) for r in rows] + [1])
    threshold = settings.get("threshold")
    floor = settings.get("min_policies")
    floor = floor if isinstance(floor, int) and floor > 0 else 0
    harmful = [r for r in rows if r.kind == "harmful"]
    benign = [r for r in rows if r.kind == BENIGN]

    def figures(selected: Callable[[_Triaged], list[str]]) -> tuple[list[float], list[float], float | None]:
        reached = [1.0 if set(selected(r)) & set(r.own) else 0.0 for r in harmful]
        none = [0.0 if selected(r) else 1.0 for r in benign]
        per_item = float(np.mean([len(selected(r)) for r in rows])) if rows else None
        return reached, none, per_item

    reached, none, per_item = figures(lambda r: r.selected)
    per_label: dict[str, TriageLabelReach] = {}
    for lab, pols in labels.items():
        pos_rows = [r for r in harmful if lab in r.gold]
        hit = sum(1 for r in pos_rows if set(r.selected) & set(pols))
        per_label[lab] = TriageLabelReach(positives=len(pos_rows), reached=hit, share=_share(hit, len(pos_rows)))

    def at(t: float) -> Callable[[_Triaged], list[str]]:
        return lambda r: select_by_probability(r.scores or {}, t, cap, floor)

    sweep: list[TriagePoint] = []
    if rows and all(r.scores for r in rows):
        for t in TRIAGE_SWEEP:
            re_, no_, pi_ = figures(at(t))
            sweep.append(TriagePoint(
                threshold=t,
                own_policy_reached=_share(int(sum(re_)), len(re_)),
                benign_none=_share(int(sum(no_)), len(no_)),
                selected_per_item=pi_ or 0.0,
            ))
    return TriageReach(
        ran=len(rows),
        fallbacks=fallbacks,
        harmful=len(harmful),
        benign=len(benign),
        max_policies=cap,
        threshold=threshold if isinstance(threshold, int | float) else None,
        min_policies=floor,
        settings_recorded=bool(settings),
        own_policy_reached=int(sum(reached)),
        own_policy_reached_share=_share(int(sum(reached)), len(reached)),
        own_policy_reached_ci95=_mean_ci(reached, rounds, seed),
        missed=len(reached) - int(sum(reached)),
        benign_none=int(sum(none)),
        benign_none_share=_share(int(sum(none)), len(none)),
        benign_none_ci95=_mean_ci(none, rounds, seed + 1),
        selected_per_item=per_item,
        per_label=per_label,
        sweep=sweep,
    )


def _matrix_row(rows: list[ItemFlags], policies: list[str]) -> AttributionRow:
    return AttributionRow(
        items=len(rows),
        no_flag=sum(1 for r in rows if not r.flagged),
        flagged_by={pid: sum(1 for r in rows if pid in r.flagged) for pid in policies},
    )


def _rca(rows: list[_Row], strata: list[str], max_examples: int) -> RootCauses:
    """False positives and negatives with their reasoning, grouped by cited rule and by stratum."""
    fps = [r for r in rows if r.y == 0 and r.pred == 1]
    fns = [r for r in rows if r.y == 1 and r.pred == 0]
    by_rule: Counter[str] = Counter(rule for r in fps for rule in set(r.rules))
    by_stratum: dict[str, dict[str, StratumErrors]] = {}
    for s in strata:
        table: dict[str, StratumErrors] = defaultdict(StratumErrors)
        for r in rows:
            if r.strata.get(s) in (None, ""):
                continue  # this row has no value for the stratum (e.g. another set's field)
            cell = table[str(r.strata.get(s))]
            cell.n += 1
            if r.y == 0 and r.pred == 1:
                cell.fp += 1
            if r.y == 1 and r.pred == 0:
                cell.fn += 1
        for cell in table.values():
            cell.errors = cell.fp + cell.fn
        if table:
            by_stratum[s] = dict(sorted(table.items(), key=lambda kv: -kv[1].errors))

    def ex(r: _Row) -> Example:
        return Example(id=r.id, text=r.text, score=r.score, rules=r.rules, rationale=r.rationale, reasoning=r.reasoning, strata=r.strata)

    return RootCauses(
        false_positives=len(fps),
        false_negatives=len(fns),
        fp_by_rule=dict(by_rule.most_common()),
        by_stratum=by_stratum,
        fp_examples=[ex(r) for r in sorted(fps, key=lambda r: -r.score)[:max_examples]],
        fn_examples=[ex(r) for r in sorted(fns, key=lambda r: r.score)[:max_examples]],
    )
