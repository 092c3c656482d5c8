"""The classifier stream: score logs of ML classifiers, thresholds per label, FP/FN analysis (and
its explanation by the policies) and drift monitoring.

Needs the ``classifiers`` extra (``pip install 'cotmod[classifiers]'``: scipy and scikit-learn).

>>> from cotmod.classifiers import read_scores, choose_thresholds, monitor, MonitorSettings
"""

from ._cascade import CascadePoint, CascadeReport, choose_cascade, read_llm_decisions, write_cascade
from ._errors import (
    ErrorGroup,
    ErrorItem,
    ErrorReport,
    LabelErrors,
    classifier_errors,
    load_classifier_bands,
)
from ._estimate import (
    Calibrator,
    ChunkEstimate,
    EstimateReport,
    EstimateSettings,
    LabelEstimate,
    estimate_performance,
    fit_calibrator,
)
from ._explain import (
    ExplainedItem,
    ExplainGroup,
    ExplainReport,
    KindExplanation,
    LabelExplanation,
    explain_errors,
    explain_errors_async,
    load_label_map,
)
from ._monitor import ChunkDrift, GroupDrift, MonitorReport, MonitorSettings, monitor, parse_chunk
from ._report import monitor_html, write_monitor_html
from ._scores import MISSING_STRATUM, ScoreLog, SkippedRow, parse_timestamp, read_scores
from ._stream import monitor_stream
from ._thresholds import (
    ClassifierThresholds,
    OperatingPoint,
    PRPoint,
    TuneSettings,
    choose_threshold,
    choose_thresholds,
    load_classifier_thresholds,
    write_classifier_thresholds,
)
from ._verdictlog import (
    VerdictLog,
    VerdictMonitorReport,
    VerdictSeries,
    is_verdict_log,
    monitor_verdicts,
    read_verdict_log,
)

__all__ = [
    "MISSING_STRATUM",
    "Calibrator",
    "CascadePoint",
    "CascadeReport",
    "ChunkDrift",
    "ChunkEstimate",
    "ClassifierThresholds",
    "ErrorGroup",
    "ErrorItem",
    "ErrorReport",
    "EstimateReport",
    "EstimateSettings",
    "ExplainGroup",
    "ExplainReport",
    "ExplainedItem",
    "GroupDrift",
    "KindExplanation",
    "LabelErrors",
    "LabelEstimate",
    "LabelExplanation",
    "MonitorReport",
    "MonitorSettings",
    "OperatingPoint",
    "PRPoint",
    "ScoreLog",
    "SkippedRow",
    "TuneSettings",
    "VerdictLog",
    "VerdictMonitorReport",
    "VerdictSeries",
    "choose_cascade",
    "choose_threshold",
    "choose_thresholds",
    "classifier_errors",
    "estimate_performance",
    "explain_errors",
    "explain_errors_async",
    "fit_calibrator",
    "is_verdict_log",
    "load_classifier_bands",
    "load_classifier_thresholds",
    "load_label_map",
    "monitor",
    "monitor_html",
    "monitor_stream",
    "monitor_verdicts",
    "parse_chunk",
    "parse_timestamp",
    "read_llm_decisions",
    "read_scores",
    "read_verdict_log",
    "write_cascade",
    "write_classifier_thresholds",
    "write_monitor_html",
]
