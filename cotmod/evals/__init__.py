"""Golden-set evaluation as a typed library API.

Computing is pure and returns pydantic models; writing files is separate::

    from cotmod.evals import compute_metrics, write_metrics, write_report, tune, write_thresholds

    result = compute_metrics("runs/a")            # EvalResult: per-label LabelMetrics with CIs
    result.attribution                            # which policy was blamed, across labels
    write_metrics(result)                         # runs/a/metrics.json (result.model_dump())
    write_report(result)                          # runs/a/report.html
    write_thresholds(tune(result, target_precision=0.9), "thresholds.yaml")
    compare(result, compute_metrics("runs/b"))    # Comparison: paired deltas, McNemar, regressions
    span_f1(predicted_spans(verdict), gold)       # quoted words vs annotated words (SemEval-2021 Task 5)
    flagged_policies(verdict["decisions"], thresholds)  # the policies that flag it, as eval decides
"""

from ._compare import (
    compare,
    compare_attribution,
    compare_runs,
    compare_triage,
    parse_fail_on,
    tune,
    write_thresholds,
)
from ._golden import GoldenItem, GoldenSet, LabelMapping, load_golden, load_mapping
from ._harness import (
    compute_metrics,
    flagged_policies,
    gold_policies,
    load_result,
    run_eval,
    write_metrics,
)
from ._metrics import metric_cis, paired_comparison, paired_ratio_delta
from ._report import html_report, text_table, write_report
from ._results import (
    CI,
    Attribution,
    AttributionComparison,
    AttributionRow,
    Averages,
    Calibration,
    CalibrationBin,
    Comparison,
    Confusion,
    CurvePoint,
    EvalResult,
    Example,
    Flip,
    GoldenRef,
    ItemFlags,
    LabelAttribution,
    LabelComparison,
    LabelMetrics,
    LabelOperatingPoint,
    MappingRef,
    McNemar,
    MetricCIs,
    MetricDelta,
    MicroAverages,
    PairedComparison,
    PolicyAttribution,
    PolicyBlame,
    PolicyThreshold,
    Prediction,
    Regression,
    RootCauses,
    RuleStats,
    RunManifest,
    StratumErrors,
    Thresholds,
    TriageComparison,
    TriageLabelReach,
    TriagePoint,
    TriageReach,
    TuneMethod,
)
from ._spans import predicted_spans, span_f1, span_offsets

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
    "GoldenItem",
    "GoldenRef",
    "GoldenSet",
    "ItemFlags",
    "LabelAttribution",
    "LabelComparison",
    "LabelMapping",
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
    "RunManifest",
    "StratumErrors",
    "Thresholds",
    "TriageComparison",
    "TriageLabelReach",
    "TriagePoint",
    "TriageReach",
    "TuneMethod",
    "compare",
    "compare_attribution",
    "compare_runs",
    "compare_triage",
    "compute_metrics",
    "flagged_policies",
    "gold_policies",
    "html_report",
    "load_golden",
    "load_mapping",
    "load_result",
    "metric_cis",
    "paired_comparison",
    "paired_ratio_delta",
    "parse_fail_on",
    "predicted_spans",
    "run_eval",
    "span_f1",
    "span_offsets",
    "text_table",
    "tune",
    "write_metrics",
    "write_report",
    "write_thresholds",
]
