"""Typed results of the eval library: what ``compute_metrics``, ``tune`` and ``compare`` return.

They are pydantic models whose ``model_dump(mode="json")`` is the on-disk shape: ``metrics.json``
is an :class:`EvalResult`, a thresholds file written by ``cotmod tune`` is a :class:`Thresholds`,
and ``cotmod compare --json`` prints a :class:`Comparison`. Files written by earlier versions load
(fields added since have defaults).

A 95% confidence interval (``CI``) is ``(low, high)`` from a percentile bootstrap over items, or
``None`` when it could not be computed (no items, or bootstrapping turned off).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

__all__ = [
    "CI",
    "Attribution",
    "AttributionComparison",
    "AttributionRow",
    "Averages",
    "Calibration",
    "CalibrationBin",
    "Comparison",
    "Confusion",
    "CurvePoint",
    "EvalResult",
    "Example",
    "Flip",
    "GoldenRef",
    "ItemFlags",
    "LabelAttribution",
    "LabelComparison",
    "LabelMetrics",
    "LabelOperatingPoint",
    "MappingRef",
    "McNemar",
    "MetricCIs",
    "MetricDelta",
    "MicroAverages",
    "PairedComparison",
    "PolicyAttribution",
    "PolicyBlame",
    "PolicyThreshold",
    "Prediction",
    "Regression",
    "RootCauses",
    "RuleStats",
    "RunCoverage",
    "RunManifest",
    "StratumErrors",
    "Thresholds",
    "TuneMethod",
]

CI = tuple[float, float] | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- run metadata ----------------------------------------------------------------------------------


class GoldenRef(_Model):
    """The golden set a run was made on (its rows are checked against ``sha256`` on reload)."""

    path: str
    sha256: str
    rows: int


class MappingRef(_Model):
    """The label mapping a run used. ``labels`` maps each dataset label to the policies that
    decide it; a label with no policies was not evaluated (``cotmod eval -p`` left it out)."""

    path: str | None = None
    name: str
    labels: dict[str, list[str]]
    strata: list[str] = Field(default_factory=list)
    only_policies: list[str] | None = None


class RunManifest(BaseModel):
    """``manifest.json`` of a run directory: policy versions, prompt fingerprint, model, sampling,
    cotmod version, date, golden set and mapping. Keys written by the batch runner that are not
    listed here are kept as they are."""

    model_config = ConfigDict(extra="allow")

    policies: dict[str, str] = Field(default_factory=dict)
    prompt_fingerprint: str | None = None
    model: str | None = None
    cotmod_version: str | None = None
    created_at: str | None = None
    golden: GoldenRef
    mapping: MappingRef
    limit: int | None = None
    complete: bool | None = None


# -- per label -------------------------------------------------------------------------------------


class Confusion(_Model):
    tp: int
    fp: int
    fn: int
    tn: int


class MetricCIs(_Model):
    precision: CI = None
    recall: CI = None
    f1: CI = None
    fpr: CI = None


class CalibrationBin(_Model):
    bin: tuple[float, float]
    n: int
    mean_score: float
    fraction_positive: float


class Calibration(_Model):
    """Expected calibration error over equal-width score bins, and the reliability table."""

    ece: float
    bins: list[CalibrationBin]


class CurvePoint(_Model):
    """One point of the precision–recall curve: predicting positive at ``score >= threshold``."""

    threshold: float
    precision: float
    recall: float
    fpr: float


class RuleStats(_Model):
    """A rule's citations: how often cited, how many of those were gold positives, and (where the
    golden set lists ``expected_rules``) how often it was cited when expected."""

    cited: int
    true_positive: int
    false_positive: int
    precision: float | None
    expected: int
    recall: float | None


class PolicyAttribution(_Model):
    """Which policy was blamed: among the items of a label, those this policy flagged (its
    decision made the item positive), how many were gold positives, and how many only this
    policy flagged (no other policy of the label did)."""

    flagged: int
    true_positive: int
    false_positive: int
    precision: float | None
    only_this_policy: int


class StratumErrors(_Model):
    n: int = 0
    fp: int = 0
    fn: int = 0
    errors: int = 0


class Example(_Model):
    """A misclassified item with the model's score, cited rules, rationale and reasoning."""

    id: str
    text: str
    score: float
    rules: list[str]
    rationale: str
    reasoning: list[str]
    strata: dict[str, Any]


class RootCauses(_Model):
    """False positives and negatives grouped by cited rule and by stratum, with examples."""

    false_positives: int
    false_negatives: int
    fp_by_rule: dict[str, int]
    by_stratum: dict[str, dict[str, StratumErrors]]
    fp_examples: list[Example]
    fn_examples: list[Example]


class LabelMetrics(_Model):
    """Every figure of one dataset label: counts over the items with a known label and a verdict
    (``n``), bootstrap CIs, ranking metrics on the score, calibration, the PR curve, per-rule
    and per-policy statistics and root causes. ``errors`` and ``missing`` count items with a
    known label that got an error verdict or no verdict yet; they are not in ``n``."""

    policies: list[str]
    precision: float
    recall: float
    f1: float
    fpr: float
    support: int
    n: int
    confusion: Confusion
    known: int
    errors: int
    missing: int
    error_rate: float
    auprc: float | None
    roc_auc: float | None
    ci95: MetricCIs
    calibration: Calibration | None
    pr_curve: list[CurvePoint]
    per_rule: dict[str, RuleStats]
    per_policy: dict[str, PolicyAttribution] = Field(default_factory=dict)
    rca: RootCauses


class Averages(_Model):
    precision: float
    recall: float
    f1: float
    fpr: float


class MicroAverages(Averages):
    confusion: Confusion


class Prediction(_Model):
    """One item's gold label ``y``, prediction and score for a label (what tune/compare use)."""

    id: str
    y: int
    pred: int
    score: float


# -- attribution: which policy was blamed, across labels ------------------------------------------


class PolicyBlame(_Model):
    """One policy's flags over every decided item of the run (not one label's items).

    A flag is ``correct`` when the item is gold-positive on a label mapped to this policy
    (counting the item's most specific positive labels: a positive label whose policies strictly
    include another positive label's, like a catch-all ``unsafe``, is not counted). Wrong flags
    are on ``benign`` items (no known label 1) or on items positive for ``other_harm``:
    ``flagged = correct + benign + other_harm`` and ``precision = correct / flagged``.
    ``unverifiable`` of the wrong flags are on items where a label this policy decides is unknown.
    ``expected`` items are those whose specific labels map to this policy; ``recall`` is the
    share of them it flagged (a label decided by several policies needs only one of them)."""

    flagged: int
    correct: int
    benign: int
    other_harm: int
    unverifiable: int = 0
    precision: float | None
    precision_ci95: CI = None
    expected: int
    recall: float | None


class LabelAttribution(_Model):
    """Items gold-positive on a label: how many a policy of this label flagged (``recall``), how
    many only other policies flagged (blamed on the wrong policy), how many no policy flagged."""

    positives: int
    own_policy: int
    other_policy_only: int
    no_flag: int
    recall: float | None
    recall_ci95: CI = None


class AttributionRow(_Model):
    """A row of the gold-category × flagged-policy matrix: its items, those no policy flagged,
    and per policy in play the items it flagged (an item flagged by two policies counts in both)."""

    items: int
    no_flag: int
    flagged_by: dict[str, int]


class Attribution(_Model):
    """Which policy was blamed, over the decided items (error verdicts and items not judged yet
    are left out and counted in ``errors`` / ``missing``).

    ``harmful`` items are gold-positive on some evaluated label; ``benign`` items are not (their
    known labels are 0; unknown labels are left out, as everywhere: with every label known, as in
    a multi-label set, benign means all labels 0).
    ``matrix`` rows are the evaluated labels and ``"benign"``, columns ``policies`` (the policies
    in play); ``label_policies`` are the evaluated labels' policies. ``blamed_distribution`` counts harmful items by how many policies flagged them
    (``"0"``, ``"1"``, ``"2"``, ``"3+"``)."""

    policies: list[str]
    label_policies: dict[str, list[str]] = Field(default_factory=dict)
    decided: int
    harmful: int
    benign: int
    errors: int
    errors_harmful: int = 0
    errors_benign: int = 0
    missing: int
    benign_no_flag: int
    benign_no_flag_share: float | None
    benign_no_flag_ci95: CI = None
    harmful_flagged: int
    harmful_flagged_share: float | None
    own_policy_share: float | None
    own_policy_ci95: CI = None
    blamed_per_harmful: float | None
    blamed_per_harmful_ci95: CI = None
    blamed_distribution: dict[str, int]
    per_policy: dict[str, PolicyBlame]
    per_label: dict[str, LabelAttribution]
    matrix: dict[str, AttributionRow]


class TriageLabelReach(_Model):
    """Items gold-positive on a label, and how many of them triage sent to one of the label's
    policies (the others were never judged under it)."""

    positives: int
    reached: int
    share: float | None


class TriagePoint(_Model):
    """What triage would have selected at another P(yes) threshold, recomputed from the recorded
    probabilities (no new call; the per-policy calls a lower threshold adds were not made, so
    their decisions are unknown)."""

    threshold: float
    own_policy_reached: float | None
    benign_none: float | None
    selected_per_item: float


class TriageReach(_Model):
    """Which policies triage (``Settings.triage``) sent each decided item to, against the gold.

    Triage caps recall: a policy it leaves out is allowed without being judged. ``ran`` counts
    decided items with a triage record whose call worked; ``fallbacks`` those where it fell back
    to judging every policy (left out of the figures). ``own_policy_reached``: harmful items with
    one of their own policies selected (the policies of their most specific positive labels, as
    in :class:`Attribution`); the others (``missed``) were never judged under their own policy.
    ``benign_none``: benign items sent to no policy call. ``selected_per_item``: policies selected
    per item (per-policy calls, one per policy group). ``max_policies`` and ``threshold`` are the
    run's settings (from its manifest; ``threshold`` is None when the sampled yes/no decided;
    ``settings_recorded`` is False for a manifest that predates them: ``max_policies`` is then
    the most any item had selected and ``threshold`` unknown; ``min_policies`` is
    ``Settings.triage_min``, 0 when not set).
    ``sweep``: the same figures at other thresholds, from the recorded P(yes) (empty without
    ``logprobs``); threshold 0 is "always the ``max_policies`` most likely policies"."""

    ran: int
    fallbacks: int
    harmful: int
    benign: int
    max_policies: int
    threshold: float | None = None
    min_policies: int = 0
    settings_recorded: bool = True
    own_policy_reached: int
    own_policy_reached_share: float | None
    own_policy_reached_ci95: CI = None
    missed: int
    benign_none: int
    benign_none_share: float | None
    benign_none_ci95: CI = None
    selected_per_item: float | None
    per_label: dict[str, TriageLabelReach]
    sweep: list[TriagePoint] = Field(default_factory=list)


class ItemFlags(_Model):
    """One decided item for attribution (what ``compare`` pairs): ``kind`` harmful or benign,
    its positive evaluated labels, the policies of its most specific positive
    labels (``own``), the policies in play that flagged it, and ``triaged``: the policies
    triage sent it to (``None`` when no triage call decided it: triage off, or it fell back to
    every policy; absent in files written before it existed)."""

    id: str
    kind: str
    gold: list[str]
    own: list[str]
    flagged: list[str]
    triaged: list[str] | None = None


class EvalResult(_Model):
    """Everything measured on a run directory; ``metrics.json`` is its ``model_dump(mode="json")``.

    ``items`` is how many items were sent to the model; ``errors`` of them got an error verdict
    (dead-lettered) and ``missing`` have no verdict yet (an interrupted run): ``undecided`` is
    their sum, and the metrics cover only the decided items. ``attribution`` says which policy
    was blamed across labels (``None`` in files written before it existed); ``triage`` which
    policies triage sent the items to (``None`` when triage did not run); ``item_flags`` are
    the attribution's per-item records, like ``predictions`` left out of ``--json``.
    """

    run: str
    manifest: RunManifest
    thresholds: dict[str, dict[str, float]] = Field(default_factory=dict)
    labels: dict[str, LabelMetrics]
    micro: MicroAverages
    macro: Averages
    predictions: dict[str, list[Prediction]]
    items: int = 0
    errors: int = 0
    missing: int = 0
    attribution: Attribution | None = None
    triage: TriageReach | None = None
    item_flags: list[ItemFlags] = Field(default_factory=list)

    @property
    def undecided(self) -> int:
        return self.errors + self.missing


# -- tune ------------------------------------------------------------------------------------------


class TuneMethod(_Model):
    target_precision: float | None = None
    cost_fp: float | None = None
    cost_fn: float | None = None
    auto_precision: float = 0.99


class LabelOperatingPoint(_Model):
    """The operating point chosen on a label's predictions: the review threshold and its
    precision and recall (with bootstrap CIs over items), or ``reachable=False`` and a note."""

    reachable: bool = True
    note: str = ""
    review: float | None = None
    auto_action: float | None = None
    precision: float | None = None
    recall: float | None = None
    precision_ci95: CI = None
    recall_ci95: CI = None
    n: int = 0


class PolicyThreshold(_Model):
    """A policy's bands on the decision score: ``>= auto_action`` enforce automatically,
    ``>= review`` human review, below: allow. ``policy_version`` is the version the threshold
    was tuned for; ``label`` the dataset label whose operating point set it."""

    review: float
    auto_action: float | None = None
    policy_version: str | None = None
    label: str | None = None
    precision: float | None = None
    recall: float | None = None
    precision_ci95: CI = None
    recall_ci95: CI = None


class Thresholds(_Model):
    """What ``tune`` chose: thresholds per policy, the operating point per label, the method,
    and the run (policy versions, prompt fingerprint, model) they were tuned on."""

    thresholds: dict[str, PolicyThreshold]
    evidence: dict[str, LabelOperatingPoint]
    method: TuneMethod
    run: str
    policies: dict[str, str] = Field(default_factory=dict)
    prompt_fingerprint: str | None = None
    model: str | None = None
    triage_blend: float | None = Field(
        default=None, description="Settings.triage_blend of the run the scores came from (None: not blended)"
    )
    created_at: str


# -- compare ---------------------------------------------------------------------------------------


class MetricDelta(_Model):
    """A metric of A and of B on the same items, the delta B − A and its paired-bootstrap CI."""

    a: float
    b: float
    delta: float
    ci95: CI


class McNemar(_Model):
    """Exact McNemar test on which side got each item right (two-sided p-value)."""

    a_correct_only: int
    b_correct_only: int
    p_value: float


class PairedComparison(_Model):
    metrics: dict[str, MetricDelta]
    mcnemar: McNemar


class Flip(_Model):
    """An item whose prediction differs between A and B."""

    id: str
    y: int
    a: int
    b: int
    score_a: float
    score_b: float


class LabelComparison(_Model):
    n_paired: int
    metrics: dict[str, MetricDelta]
    mcnemar: McNemar
    flipped: list[Flip]


class Regression(_Model):
    """A ``--fail-on`` rule that B met: ``metric`` moved ``points`` (percentage points) in
    ``direction``, more than the rule's ``limit``."""

    label: str
    metric: str
    direction: str
    points: float
    limit: float

    def __str__(self) -> str:
        return f"{self.label}: {self.metric} {self.direction} {self.points:.1f} points > {self.limit}"


class AttributionComparison(_Model):
    """Attribution figures of A and B on the items both decided: ``metrics`` are
    ``benign_no_flag_share``, ``harmful_flagged_share``, ``own_policy_share`` and
    ``blamed_per_harmful``; ``per_policy_precision`` per policy in play (both with
    paired-bootstrap CIs over items)."""

    n_paired: int
    harmful: int
    benign: int
    metrics: dict[str, MetricDelta]
    per_policy_precision: dict[str, MetricDelta]


class TriageComparison(_Model):
    """Triage's reach in A and B on the items both decided with a working triage call in both:
    ``metrics`` are ``own_policy_reached_share`` (harmful items sent to one of their own
    policies), ``benign_none_share`` (benign items sent to no policy call) and
    ``selected_per_item``, with paired-bootstrap CIs; ``reached_a_only`` / ``reached_b_only``
    the harmful items whose own policy only one side reached (ids, for reading them)."""

    n_paired: int
    harmful: int
    benign: int
    metrics: dict[str, MetricDelta]
    reached_a_only: list[str] = Field(default_factory=list)
    reached_b_only: list[str] = Field(default_factory=list)


class RunCoverage(_Model):
    """How much of a compared run was decided: of the ``items`` sent to the model, ``errors`` got
    an error verdict and ``missing`` have no verdict yet (an interrupted run); ``complete`` is
    the manifest's (false: the run never finished; None in files written before it existed)."""

    items: int = 0
    errors: int = 0
    missing: int = 0
    complete: bool | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def undecided(self) -> int:
        return self.errors + self.missing

    @computed_field  # type: ignore[prop-decorator]
    @property
    def decided_all(self) -> bool:
        """Every item sent has a verdict and the run finished."""
        return not self.undecided and self.complete is not False


class Comparison(_Model):
    """Run B against run A on the same golden set, per label; ``regressions`` are the
    ``--fail-on`` rules B met. Every figure is paired on the items both runs decided
    (``n_paired`` of them, across labels); ``a_coverage`` / ``b_coverage`` say how many items
    each run left undecided (error verdicts, or not judged yet). ``ok`` when no rule was met or
    left unmeasured and both runs decided every item: a gate does not pass on part of a run."""

    a: str
    b: str
    a_manifest: dict[str, Any]
    b_manifest: dict[str, Any]
    labels: dict[str, LabelComparison]
    attribution: AttributionComparison | None = None
    triage: TriageComparison | None = None
    regressions: list[Regression] = Field(default_factory=list)
    unmeasured: list[str] = Field(
        default_factory=list,
        description="--fail-on rules these runs cannot measure (no triage or attribution records, no paired label): "
        "a gate that cannot be evaluated does not pass",
    )
    n_paired: int = Field(default=0, description="items both runs decided (in any label): what the figures are paired on")
    a_coverage: RunCoverage | None = None
    b_coverage: RunCoverage | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def failures(self) -> list[str]:
        """The regressions as one line each."""
        return [str(r) for r in self.regressions]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        decided = all(c is None or c.decided_all for c in (self.a_coverage, self.b_coverage))
        return not self.regressions and not self.unmeasured and decided
