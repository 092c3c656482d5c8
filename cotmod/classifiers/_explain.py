"""Explain a classifier's errors with the policy: the root-cause analysis a policy lead brings to the
model team.

For each classifier label mapped to a policy (``label_policy``: label -> policy id, e.g. from the
``classifier.label_map`` of an enforcement manifest, :func:`load_label_map`), a seeded sample of
the label's false positives and false negatives (at its review threshold; only rows with text can
be explained, the others are counted as not explainable) gets cotmod's chain-of-thought verdict on
the mapped policy, and the sample is grouped by what the policy says about each item:

* **violates** by rule R (the rule of highest severity cited, ties in the policy's order): for a
  false positive, the policy agrees with the classifier against the label (a likely label error,
  or a policy/label disagreement: the most interesting group); for a false negative, the
  classifier missed a violation.
* **exception** X applies (the first cited, in the policy's order): the policy allows the item on
  purpose, e.g. counter-speech (an FP the model team can fix with such examples; for an FN, the
  label likely is noise or follows another rule than the policy).
* **no_rule**: the policy allows it and no rule applies.

Each group has its count, its share of the decided items of the sample with a Wilson 95% CI,
and example ids. Items that got no verdict (an error verdict, a failed request) are counted and
listed separately, never dropped from view; shares are of the decided items.

The verdicts go through the batch runner into a run directory (one verdict file per policy,
``verdicts-<policy>.jsonl``, with its ``.errors.jsonl`` and manifest), so a long run is
resumable: run it again with the same arguments and only the items without a verdict are sent;
the same seed and sample size give the same sample.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from .._exceptions import ConfigError, InputError
from .._verdict import PolicyDecision, Verdict
from .._yamlfile import read_yaml_mapping
from ._drift import _wilson
from ._errors import ErrorItem, ErrorReport, classifier_errors
from ._scores import ScoreLog

if TYPE_CHECKING:
    from ..batch._runner import RunSummary
    from ..engine._moderator import AsyncModerator, Moderator
    from ..policy._model import Policy

__all__ = [
    "ExplainGroup",
    "ExplainReport",
    "ExplainedItem",
    "KindExplanation",
    "LabelExplanation",
    "explain_errors",
    "explain_errors_async",
    "load_label_map",
]

Kind = Literal["fp", "fn"]
Outcome = Literal["violates", "exception", "no_rule"]
Z95 = 1.959963984540054
EXAMPLES = 5  # example ids per group

MEANING: dict[tuple[str, str], str] = {
    ("fp", "violates"): "policy agrees it violates: likely a label error or a policy/label disagreement",
    ("fp", "exception"): "allowed by an exception of the policy",
    ("fp", "no_rule"): "policy allows it: no rule applies",
    ("fn", "violates"): "violates the policy: the classifier missed it",
    ("fn", "exception"): "policy also allows it (an exception applies): likely label noise",
    ("fn", "no_rule"): "policy also allows it (no rule applies): likely label noise",
}


class ExplainedItem(BaseModel):
    """One sampled error and what the mapped policy's verdict says about it."""

    id: str
    line: int
    score: float
    strata: dict[str, str] = Field(default_factory=dict)
    outcome: Outcome | Literal["error"]
    criterion: str | None = None  # the deciding rule or exception id
    rule_ids: list[str] = Field(default_factory=list)
    exception_ids: list[str] = Field(default_factory=list)
    confidence: float | None = None
    rationale: str | None = None
    error: str | None = None  # "TYPE: message" when the item got no verdict


class ExplainGroup(BaseModel):
    """Sampled errors of one kind that the policy decides the same way."""

    outcome: Outcome
    criterion: str | None = None  # rule id (violates) or exception id (exception)
    title: str | None = None  # the rule's or exception's title
    meaning: str
    count: int
    share: float  # of the decided items of the sample
    ci95: tuple[float, float]  # Wilson score interval of the share
    example_ids: list[str] = Field(default_factory=list)


class KindExplanation(BaseModel):
    """A label's false positives (``fp``) or false negatives (``fn``), explained on a sample."""

    kind: Kind
    errors: int  # errors of this kind at the review threshold
    unlisted: int = 0  # errors an ErrorReport source did not list (its per-group cap): not sampled
    no_text: int = 0  # errors without text: not explainable
    no_text_ids: list[str] = Field(default_factory=list)  # the first few
    sampled: int = 0
    decided: int = 0
    undecided: int = 0  # sampled items without a verdict (error verdicts, failed requests)
    undecided_ids: list[str] = Field(default_factory=list)
    violates: int = 0  # decided items the policy says violate
    violates_share: float | None = None
    violates_ci95: tuple[float, float] | None = None
    groups: list[ExplainGroup] = Field(default_factory=list)  # most frequent first
    items: list[ExplainedItem] = Field(default_factory=list)  # in log order


class LabelExplanation(BaseModel):
    label: str
    policy: str
    policy_version: str
    review: float
    auto_action: float | None = None
    known: int = 0  # rows with ground truth
    fp: KindExplanation
    fn: KindExplanation


class ExplainReport(BaseModel):
    """What :func:`explain_errors` found, per label. ``undecided`` > 0: some sampled items got no
    verdict (listed per label and kind)."""

    source: str
    run_dir: str | None = None
    model: str
    sample: int
    seed: int
    labels: list[LabelExplanation] = Field(default_factory=list)

    @property
    def undecided(self) -> int:
        return sum(le.fp.undecided + le.fn.undecided for le in self.labels)


def load_label_map(path: str | Path) -> dict[str, str]:
    """Classifier label -> policy id from an enforcement manifest: the union of every
    ``policies.<id>.classifier.label_map`` (a label mapped to two policies is an error)."""
    p = Path(path)
    data = read_yaml_mapping(p, "enforcement manifest")
    bound = data.get("policies")
    if not isinstance(bound, dict):
        raise InputError(f"{p}: expected a mapping with 'policies: {{POLICY_ID: {{classifier: {{label_map: {{LABEL: POLICY}}}}}}}}'")
    out: dict[str, str] = {}
    where: dict[str, str] = {}
    for pid, spec in bound.items():
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise InputError(f"{p}: policies.{pid}: expected a mapping, got {type(spec).__name__}")
        clf = spec.get("classifier")
        if not clf:
            continue
        if not isinstance(clf, dict):
            raise InputError(f"{p}: policies.{pid}.classifier: expected a mapping, got {type(clf).__name__}")
        lmap = clf.get("label_map") or {}
        if not isinstance(lmap, dict):
            raise InputError(f"{p}: policies.{pid}.classifier.label_map: expected a mapping LABEL: POLICY, got {type(lmap).__name__}")
        for label, target in lmap.items():
            field = f"policies.{pid}.classifier.label_map.{label}"
            if not isinstance(target, str) or not target.strip():
                raise InputError(f"{p}: {field}: expected a policy id, got {target!r}")
            if str(label) in out and out[str(label)] != target:
                raise InputError(f"{p}: {field}: label {label!r} maps to {target!r} here but to {out[str(label)]!r} at {where[str(label)]}")
            out[str(label)] = target
            where[str(label)] = field
    return out


# -- sampling ----------------------------------------------------------------------------------------


def _pools(
    source: ErrorReport | ScoreLog, bands: Mapping[str, tuple[float, float | None]] | None, labels: Sequence[str]
) -> tuple[ErrorReport, dict[str, dict[str, list[ErrorItem]]]]:
    """The error report and, per label and kind, every error it lists (in log order)."""
    if isinstance(source, ScoreLog):
        if bands is None:
            raise ConfigError("explain_errors: a ScoreLog needs bands (label -> (review, auto_action))")
        if source.texts is None:
            raise InputError(f"{source.path}: the score log was read without a text field; read it with text_field='text'")
        report = classifier_errors(source, bands, labels=labels, per_group=max(1, len(source)))
    else:
        report = source
        known = {le.label for le in report.labels}
        for lb in labels:
            if lb not in known:
                raise InputError(f"{report.source}: the error report has no label {lb!r} (labels: {', '.join(sorted(known)) or 'none'})")
    pools: dict[str, dict[str, list[ErrorItem]]] = {}
    for le in report.labels:
        kinds: dict[str, dict[int, ErrorItem]] = {"fp": {}, "fn": {}}
        for g in le.groups:
            if g.stratum is None:
                for it in g.items:
                    kinds[g.kind].setdefault(it.line, it)
        pools[le.label] = {k: [v[line] for line in sorted(v)] for k, v in kinds.items()}
    return report, pools


def _has_text(it: ErrorItem) -> bool:
    return it.text is not None and bool(it.text.strip())


def _sample(items: list[ErrorItem], n: int, seed: int, label: str, kind: str) -> list[ErrorItem]:
    """``n`` items drawn without replacement, the same for the same seed, label and kind (in log order)."""
    if len(items) <= n:
        return list(items)
    rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8")), 0 if kind == "fp" else 1])
    pick = sorted(rng.choice(len(items), size=n, replace=False).tolist())
    return [items[i] for i in pick]


# -- verdicts ------------------------------------------------------------------------------------------


def _deciding(d: PolicyDecision, policy: Policy) -> tuple[Outcome, str | None]:
    if d.violates:
        order = {r.id: i for i, r in enumerate(policy.rules)}
        cited = [r for r in d.rule_ids if r in order] or list(d.rule_ids)
        if not cited:
            return "violates", None

        def key(rid: str) -> tuple[int, int]:
            try:
                rank = policy.severity_rank(policy.rule(rid).severity)
            except (KeyError, ValueError):
                rank = -1
            return (-rank, order.get(rid, len(order)))

        return "violates", sorted(cited, key=key)[0]
    if d.exception_ids:
        order = {e.id: i for i, e in enumerate(policy.exceptions)}
        return "exception", sorted(d.exception_ids, key=lambda e: order.get(e, len(order)))[0]
    return "no_rule", None


def _title(policy: Policy, criterion: str | None) -> str | None:
    if criterion is None:
        return None
    titles = {r.id: r.title for r in policy.rules} | {e.id: e.title for e in policy.exceptions}
    return titles.get(criterion)


def _read_verdicts(path: Path, want: set[str]) -> dict[str, Verdict]:
    out: dict[str, Verdict] = {}
    if not path.exists():
        return out
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                if obj.get("item_id") in want:
                    v = Verdict.model_validate(obj)
                    out.setdefault(v.item_id, v)
            except ValueError as exc:
                raise InputError(f"{path}:{n}: not a verdict ({str(exc).splitlines()[0]})") from None
    return out


def _read_errors(path: Path, want: set[str]) -> dict[str, str]:
    from ..batch._store import read_dead_letters

    out: dict[str, str] = {}
    if not path.exists():
        return out
    for dl in read_dead_letters(path):
        if dl.id in want:
            obj = json.loads(dl.raw)
            out[dl.id] = f"{obj.get('error_type', 'error')}: {obj.get('message', '')}"  # the latest wins
    return out


def _explain_kind(
    kind: Kind,
    errors: int,
    pool: list[ErrorItem],
    sampled: list[ErrorItem],
    key: Mapping[int, str],
    verdicts: Mapping[str, Verdict],
    failures: Mapping[str, str],
    policy: Policy,
) -> KindExplanation:
    no_text = [it for it in pool if not _has_text(it)]
    ke = KindExplanation(
        kind=kind, errors=errors, unlisted=max(0, errors - len(pool)), no_text=len(no_text),
        no_text_ids=[it.id for it in no_text[:10]], sampled=len(sampled),
    )
    counts: dict[tuple[Outcome, str | None], list[str]] = {}
    for it in sampled:
        k = key[it.line]
        base: dict[str, Any] = {"id": it.id, "line": it.line, "score": it.score, "strata": it.strata}
        v = verdicts.get(k)
        if v is None or v.status != "ok":
            why = failures.get(k) or (f"{v.error.type}: {v.error.message}" if v is not None and v.error else "no verdict")
            ke.items.append(ExplainedItem(**base, outcome="error", error=why))
            ke.undecided += 1
            ke.undecided_ids.append(it.id)
            continue
        try:
            d = v.decision(policy.id)
        except KeyError:
            ke.items.append(ExplainedItem(**base, outcome="error", error=f"the verdict has no decision for {policy.id}"))
            ke.undecided += 1
            ke.undecided_ids.append(it.id)
            continue
        outcome, criterion = _deciding(d, policy)
        ke.items.append(
            ExplainedItem(
                **base, outcome=outcome, criterion=criterion, rule_ids=list(d.rule_ids), exception_ids=list(d.exception_ids),
                confidence=d.confidence, rationale=d.rationale,
            )
        )
        counts.setdefault((outcome, criterion), []).append(it.id)
    ke.decided = ke.sampled - ke.undecided
    n = ke.decided
    if n:
        ke.violates = sum(len(ids) for (o, _), ids in counts.items() if o == "violates")
        ke.violates_share = ke.violates / n
        ke.violates_ci95 = _wilson(ke.violates, n, Z95)
    rank = {"violates": 0, "exception": 1, "no_rule": 2}
    for (outcome, criterion), ids in sorted(counts.items(), key=lambda kv: (-len(kv[1]), rank[kv[0][0]], kv[0][1] or "")):
        ke.groups.append(
            ExplainGroup(
                outcome=outcome, criterion=criterion, title=_title(policy, criterion), meaning=MEANING[(kind, outcome)],
                count=len(ids), share=len(ids) / n, ci95=_wilson(len(ids), n, Z95), example_ids=ids[:EXAMPLES],
            )
        )
    return ke


# -- the run -------------------------------------------------------------------------------------------


def _progress_hook(fn: Callable[[str, RunSummary, int], None], pid: str, total: int) -> Callable[[RunSummary, int | None], None]:
    def hook(summary: RunSummary, _total: int | None) -> None:
        fn(pid, summary, total)

    return hook


def check_explain_args(
    source: ErrorReport | ScoreLog,
    bands: Mapping[str, tuple[float, float | None]] | None,
    *,
    moderator: AsyncModerator,
    label_policy: Mapping[str, str],
    sample: int,
) -> None:
    """The checks :func:`explain_errors_async` makes before anything is sampled or sent (so a
    caller can run them before it announces the run): raises :class:`~cotmod.ConfigError` or
    :class:`~cotmod.InputError` as it does."""
    if sample < 1:
        raise ConfigError(f"sample must be >= 1, got {sample}")
    if not label_policy:
        raise ConfigError("no label mapped to a policy (label_policy is empty)")
    for lb, pid in label_policy.items():
        if pid not in moderator.policies:
            raise ConfigError(f"label {lb!r} maps to unknown policy {pid!r} (known: {', '.join(moderator.policies.ids)})")
    if isinstance(source, ScoreLog):
        for lb in label_policy:
            if lb not in source.labels:
                raise InputError(f"{source.path}: no label {lb!r} (labels: {', '.join(source.labels)})")
            if bands is not None and lb not in bands:
                raise InputError(f"no threshold for label {lb!r} (thresholds for: {', '.join(bands) or 'none'})")
    else:
        known = {le.label for le in source.labels}
        for lb in label_policy:
            if lb not in known:
                raise InputError(f"{source.source}: the error report has no label {lb!r} (labels: {', '.join(sorted(known)) or 'none'})")


async def explain_errors_async(
    source: ErrorReport | ScoreLog,
    bands: Mapping[str, tuple[float, float | None]] | None = None,
    *,
    moderator: AsyncModerator,
    label_policy: Mapping[str, str],
    sample: int = 50,
    seed: int = 0,
    run_dir: str | Path | None = None,
    concurrency: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    retry_errors: bool = False,
    overwrite: bool = False,
    on_progress: Callable[[str, RunSummary, int], None] | None = None,
) -> ExplainReport:
    """Explain the false positives and negatives of each label of ``label_policy`` with its policy.

    ``source``: a :class:`ScoreLog` read with its text (then ``bands``: label -> ``(review,
    auto_action)``, as from :func:`load_classifier_bands`), or an :class:`ErrorReport` (only the
    errors it lists can be sampled; the rest are counted as ``unlisted``). ``sample``: errors
    drawn per label and kind (seeded by ``seed``). ``run_dir``: where the verdicts are kept
    (resumable; None: a temporary directory, removed after). ``retry_errors``: send the items
    that got no verdict in an earlier run again; ``overwrite``: discard earlier verdicts.
    ``on_progress(policy, summary, total)`` is called as verdicts come in. Does not close the
    moderator.

    Raises :class:`~cotmod.ConfigError` for a label mapped to an unknown policy,
    :class:`~cotmod.InputError` for a label the log lacks, a label without a threshold, or errors
    none of which has text; a runtime failure that stops a run (authentication, unreachable
    endpoint) propagates with every verdict written so far kept.
    """
    import tempfile

    from ..batch._runner import Runner

    check_explain_args(source, bands, moderator=moderator, label_policy=label_policy, sample=sample)
    labels = list(label_policy)
    report, pools = _pools(source, bands, labels)
    errors_total = {le.label: (le.fp, le.fn) for le in report.labels}
    if all(not _has_text(it) for lb in labels for items in pools[lb].values() for it in items) and any(
        items for lb in labels for items in pools[lb].values()
    ):
        raise InputError(f"{report.source}: none of the errors has text to explain (is the text in another field?)")

    # the sample, and per policy the items to judge (an item sampled for two labels of one policy
    # is judged once). Items are keyed by their id, or by id and line when ids repeat among the errors.
    lines_of: dict[str, set[int]] = {}
    for lb in labels:
        for items in pools[lb].values():
            for it in items:
                lines_of.setdefault(it.id, set()).add(it.line)
    dup_ids = any(len(v) > 1 for v in lines_of.values())
    sampled: dict[tuple[str, str], list[ErrorItem]] = {}
    keys: dict[int, str] = {}
    per_policy: dict[str, dict[str, str]] = {}
    for lb in labels:
        pid = label_policy[lb]
        for kind in ("fp", "fn"):
            pick = _sample([it for it in pools[lb][kind] if _has_text(it)], sample, seed, lb, kind)
            sampled[(lb, kind)] = pick
            for it in pick:
                key = f"{it.id}@line{it.line}" if dup_ids else it.id
                keys[it.line] = key
                assert it.text is not None
                per_policy.setdefault(pid, {}).setdefault(key, it.text)

    tmp: tempfile.TemporaryDirectory[str] | None = None
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cotmod-explain-")
        root = Path(tmp.name)
    else:
        root = Path(run_dir)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"cannot use {root} as the run directory: it is a file")
    try:
        runner = Runner(moderator, concurrency=concurrency, rpm=rpm, tpm=tpm)
        verdicts: dict[str, dict[str, Verdict]] = {}
        failures: dict[str, dict[str, str]] = {}
        for pid, texts in per_policy.items():
            out = root / f"verdicts-{pid}.jsonl"
            rows = [{"id": k, "text": t} for k, t in texts.items()]
            hook = None if on_progress is None else _progress_hook(on_progress, pid, len(rows))
            if overwrite:
                await runner.run(rows, out, policies=[pid], overwrite=True, on_progress=hook)
            else:
                if retry_errors:
                    await runner.run(rows, out, policies=[pid], retry_errors=True, on_progress=hook)
                await runner.run(rows, out, policies=[pid], on_progress=hook)
            want = set(texts)
            verdicts[pid] = _read_verdicts(out, want)
            failures[pid] = {k: v for k, v in _read_errors(runner.errors_path(out), want).items() if k not in verdicts[pid]}
        result = ExplainReport(
            source=report.source, run_dir=None if tmp is not None else str(root), model=moderator.model_name, sample=sample, seed=seed,
        )
        by_label = {le.label: le for le in report.labels}
        for lb in labels:
            pid = label_policy[lb]
            pol = moderator.policies[pid]
            le = by_label[lb]
            n_fp, n_fn = errors_total[lb]
            args = (keys, verdicts.get(pid, {}), failures.get(pid, {}), pol)
            result.labels.append(
                LabelExplanation(
                    label=lb, policy=pid, policy_version=pol.version, review=le.review, auto_action=le.auto_action, known=le.known,
                    fp=_explain_kind("fp", n_fp, pools[lb]["fp"], sampled[(lb, "fp")], *args),
                    fn=_explain_kind("fn", n_fn, pools[lb]["fn"], sampled[(lb, "fn")], *args),
                )
            )
        if tmp is None:
            from ..batch._store import write_json_atomic

            root.mkdir(parents=True, exist_ok=True)  # nothing sampled: no verdicts created it
            write_json_atomic(root / "report.json", result.model_dump(mode="json"))
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def explain_errors(
    source: ErrorReport | ScoreLog,
    bands: Mapping[str, tuple[float, float | None]] | None = None,
    *,
    moderator: AsyncModerator | Moderator,
    label_policy: Mapping[str, str],
    sample: int = 50,
    seed: int = 0,
    run_dir: str | Path | None = None,
    **kwargs: Any,
) -> ExplainReport:
    """Blocking :func:`explain_errors_async` (same parameters); takes a :class:`~cotmod.Moderator`
    or an :class:`~cotmod.AsyncModerator` (whose connections are closed after).

    >>> report = explain_errors(log, bands, moderator=Moderator(), label_policy={"spam": "spam_scams"})  # doctest: +SKIP
    >>> report.labels[0].fp.groups[0].meaning  # doctest: +SKIP
    """
    from ..engine._moderator import Moderator

    kw: dict[str, Any] = {"label_policy": label_policy, "sample": sample, "seed": seed, "run_dir": run_dir, **kwargs}
    if isinstance(moderator, Moderator):
        return moderator._call(explain_errors_async(source, bands, moderator=moderator._async, **kw))
    amod = moderator

    async def go() -> ExplainReport:
        try:
            return await explain_errors_async(source, bands, moderator=amod, **kw)
        finally:
            await amod.aclose()

    return asyncio.run(go())
