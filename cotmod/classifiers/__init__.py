"""The classifier stream: score logs of ML classifiers, thresholds per label, FP/FN analysis and
drift monitoring.

Needs the ``classifiers`` extra (``pip install 'cotmod[classifiers]'``: scipy and scikit-learn).

>>> from cotmod.classifiers import read_scores, choose_thresholds, monitor, MonitorSettings
"""

from ._errors import (
    ErrorGroup,
    ErrorItem,
    ErrorReport,
    LabelErrors,
    classifier_errors,
    load_classifier_bands,
)
from ._monitor import ChunkDrift, GroupDrift, MonitorReport, MonitorSettings, monitor, parse_chunk
from ._scores import MISSING_STRATUM, ScoreLog, parse_timestamp, read_scores
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

__all__ = [
    "MISSING_STRATUM",
    "ChunkDrift",
    "ClassifierThresholds",
    "ErrorGroup",
    "ErrorItem",
    "ErrorReport",
    "GroupDrift",
    "LabelErrors",
    "MonitorReport",
    "MonitorSettings",
    "OperatingPoint",
    "PRPoint",
    "ScoreLog",
    "TuneSettings",
    "choose_threshold",
    "choose_thresholds",
    "classifier_errors",
    "load_classifier_bands",
    "load_classifier_thresholds",
    "monitor",
    "parse_chunk",
    "parse_timestamp",
    "read_scores",
    "write_classifier_thresholds",
]
