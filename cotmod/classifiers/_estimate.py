"""Performance without labels: confidence-based estimates of precision, recall and F1 per chunk.

As NannyML's CBPE: a calibrator fitted on a labelled score log (a golden set scored by the
classifier) maps each score to P(positive | score); then, for a chunk of an unlabelled log at the
operating threshold t, with p_i the calibrated probabilities and F the flagged rows (score >= t):

* expected TP = sum of p over F, FP = |F| - TP, FN = sum of p over the rows not flagged;
* precision = TP / |F|, recall = TP / (TP + FN), F1 = 2 TP / (|F| + TP + FN), flag rate = |F| / n.

The 95% interval (normal, clipped to [0, 1]) adds two variances: the chunk's sampling noise, as
if each row's label were an independent Bernoulli(p_i) draw (Poisson-binomial variances of TP and
FN, delta method for the ratios), and the calibration's own error, the spread of the estimate
over calibrators refitted on ``bootstrap`` resamples of the calibration rows (default 100; 0
leaves it out, and a small calibration set then gives intervals that are too narrow). Where the
chunk has ground truth, the realized values on its labelled rows are given next to the estimates.

The estimates hold while P(positive | score) stays what it was on the calibration set: a change
in the mix of items (covariate shift, such as more borderline content) is tracked; a change in
the share of positives among items that look the same (label shift, concept drift) is not.

Calibration: ``"isotonic"`` (scikit-learn ``IsotonicRegression``, default) or ``"platt"``
(logistic regression on the score's logit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from .._exceptions import ConfigError, InputError
from ._monitor import _chunks, _no_unknown_thresholds, parse_chunk
from ._scores import ScoreLog, SkippedRow

__all__ = [
    "Calibrator",
    "ChunkEstimate",
    "EstimateReport",
    "EstimateSettings",
    "LabelEstimate",
    "estimate_performance",
    "fit_calibrator",
]

Floats = npt.NDArray[np.float64]
_Z95 = 1.959963984540054
_CLIP = 1e-6


@dataclass
class Calibrator:
    """Maps a label's scores to calibrated probabilities P(positive | score)."""

    label: str
    method: Literal["isotonic", "platt"]
    model: Any
    n: int
    positives: int

    def predict(self, scores: Floats) -> Floats:
        x = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            return np.asarray(self.model.predict(x), dtype=np.float64)
        return np.asarray(self.model.predict_proba(_logit(x)[:, None])[:, 1], dtype=np.float64)


def _logit(x: Floats) -> Floats:
    c = np.clip(x, _CLIP, 1 - _CLIP)
    return np.asarray(np.log(c / (1 - c)), dtype=np.float64)


def fit_calibrator(log: ScoreLog, label: str, method: str = "isotonic") -> Calibrator:
    """Fit ``label``'s calibrator on the rows of ``log`` with ground truth (both classes needed)."""
    if method not in ("isotonic", "platt"):
        raise ConfigError(f"unknown calibration method {method!r} (isotonic, platt)")
    x, y = _calibration_rows(log, label)
    return _fit(x, y, label, method)


def _calibration_rows(log: ScoreLog, label: str) -> tuple[Floats, npt.NDArray[np.int64]]:
    if label not in log.labels:
        raise InputError(f"{log.path}: the calibration log has no label {label!r} (labels: {', '.join(log.labels)})")
    known = log.truth[label] >= 0
    y = log.truth[label][known].astype(np.int64)
    x = log.scores[label][known]
    pos = int(y.sum())
    if len(y) == 0:
        raise InputError(f"{log.path}: no rows with ground truth for label {label!r} (label_{label} or labels.{label}); cannot calibrate")
    if pos == 0 or pos == len(y):
        raise InputError(
            f"{log.path}: the {len(y)} rows with ground truth for label {label!r} are all {'positive' if pos else 'negative'}; "
            "calibration needs both"
        )
    return x, y


def _fit(x: Floats, y: npt.NDArray[np.int64], label: str, method: str) -> Calibrator:
    if method not in ("isotonic", "platt"):
        raise ConfigError(f"unknown calibration method {method!r} (isotonic, platt)")
    pos = int(y.sum())
    model: Any
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
    else:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(x)[:, None], y)
    return Calibrator(label=label, method=method, model=model, n=len(y), positives=pos)  # type: ignore[arg-type]


@dataclass
class EstimateSettings:
    chunk: str | int
    thresholds: Mapping[str, float] = field(default_factory=dict)  # operating threshold per label
    default_threshold: float = 0.5
    labels: Sequence[str] | None = None
    method: Literal["isotonic", "platt"] = "isotonic"
    min_precision: float | None = None  # a chunk alerts when its estimated precision is below
    min_recall: float | None = None
    min_f1: float | None = None
    bootstrap: int = 100  # calibrators refitted on resamples of the calibration rows, for the intervals
    seed: int = 0


Interval = tuple[float, float]


class ChunkEstimate(BaseModel):
    index: int
    start: str | None = None
    end: str | None = None
    first_line: int
    last_line: int
    n: int
    flagged: int
    flag_rate: float
    precision: float | None  # None: nothing flagged
    precision_ci95: Interval | None = None
    recall: float | None  # None: no expected positives
    recall_ci95: Interval | None = None
    f1: float | None
    f1_ci95: Interval | None = None
    expected_positives: float
    labelled: int = 0  # rows of the chunk with ground truth
    realized_precision: float | None = None
    realized_recall: float | None = None
    realized_f1: float | None = None
    alerts: list[str] = Field(default_factory=list)


class LabelEstimate(BaseModel):
    label: str
    threshold: float
    method: str
    calibration_n: int
    calibration_positives: int
    n: int
    chunks: list[ChunkEstimate] = Field(default_factory=list)

    @property
    def alerts(self) -> int:
        return sum(1 for c in self.chunks if c.alerts)


class EstimateReport(BaseModel):
    source: str
    calibration: str
    chunk: str
    method: str
    min_precision: float | None = None
    min_recall: float | None = None
    min_f1: float | None = None
    labels: list[LabelEstimate] = Field(default_factory=list)
    rows_skipped: int = 0
    skipped_rows: list[SkippedRow] = Field(default_factory=list)

    @property
    def alerts(self) -> int:
        return sum(lb.alerts for lb in self.labels)


def _ci(value: float, var: float) -> Interval:
    half = _Z95 * math.sqrt(max(var, 0.0))
    return max(0.0, value - half), min(1.0, value + half)


def _realized(y: npt.NDArray[np.int8], flagged: npt.NDArray[np.bool_]) -> tuple[int, float | None, float | None, float | None]:
    known = y >= 0
    yk, fk = y[known] == 1, flagged[known]
    tp = int((yk & fk).sum())
    fp = int((~yk & fk).sum())
    fn = int((yk & ~fk).sum())
    prec = tp / (tp + fp) if tp + fp else None
    rec = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return int(known.sum()), prec, rec, f1


def _point(p: Floats, flagged: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    """Expected precision, recall, F1 (NaN where undefined)."""
    k = int(flagged.sum())
    a, b = float(p[flagged].sum()), float(p[~flagged].sum())
    nan = float("nan")
    return (a / k if k else nan, a / (a + b) if a + b > 0 else nan, 2 * a / (k + a + b) if k + a + b > 0 else nan)


def estimate_chunk(p: Floats, flagged: npt.NDArray[np.bool_], extra_var: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> dict[str, Any]:
    """The expected precision, recall and F1 (with 95% intervals) of rows with calibrated
    probabilities ``p``, of which ``flagged`` are flagged; ``extra_var`` (precision, recall, F1)
    is added to the sampling variances (the calibration's, from the bootstrap)."""
    k = int(flagged.sum())
    pf, pn = p[flagged], p[~flagged]
    a, b = float(pf.sum()), float(pn.sum())  # expected TP, expected FN
    va, vb = float((pf * (1 - pf)).sum()), float((pn * (1 - pn)).sum())
    out: dict[str, Any] = {"flagged": k, "flag_rate": k / len(p) if len(p) else 0.0, "expected_positives": a + b}
    out["precision"] = a / k if k else None
    out["precision_ci95"] = _ci(a / k, va / (k * k) + extra_var[0]) if k else None
    if a + b > 0:
        r = a / (a + b)
        out["recall"] = r
        out["recall_ci95"] = _ci(r, (b * b * va + a * a * vb) / (a + b) ** 4 + extra_var[1])
    else:
        out["recall"] = out["recall_ci95"] = None
    d = k + a + b
    if d > 0:
        f1 = 2 * a / d
        out["f1"] = f1
        out["f1_ci95"] = _ci(f1, ((2 * (k + b) / d**2) ** 2) * va + ((2 * a / d**2) ** 2) * vb + extra_var[2])
    else:
        out["f1"] = out["f1_ci95"] = None
    return out


def estimate_performance(log: ScoreLog, calibration: ScoreLog, settings: EstimateSettings) -> EstimateReport:
    """Per label and chunk of ``log``: precision, recall, F1 and flag rate estimated from
    scores calibrated on ``calibration``'s labelled rows, with realized values where ``log``
    has ground truth. A chunk alerts on an estimate below ``min_precision`` / ``min_recall`` /
    ``min_f1``."""
    kind, size = parse_chunk(settings.chunk)
    if settings.method not in ("isotonic", "platt"):
        raise ConfigError(f"unknown calibration method {settings.method!r} (isotonic, platt)")
    for name in ("min_precision", "min_recall", "min_f1"):
        v = getattr(settings, name)
        if v is not None and not 0 <= v <= 1:
            raise ConfigError(f"{name}: expected a number from 0 to 1, got {v}")
    labels = list(settings.labels) if settings.labels else list(log.labels)
    _no_unknown_thresholds(settings.thresholds, log)
    for lb in labels:
        if lb not in log.labels:
            raise InputError(f"{log.path}: no label {lb!r} (labels: {', '.join(log.labels)})")
    report = EstimateReport(
        source=log.path, calibration=calibration.path, chunk=str(settings.chunk), method=settings.method,
        min_precision=settings.min_precision, min_recall=settings.min_recall, min_f1=settings.min_f1,
        rows_skipped=log.skipped, skipped_rows=list(log.skipped_rows),
    )
    chunks = _chunks(log, kind, size)
    if settings.bootstrap < 0:
        raise ConfigError(f"bootstrap: expected 0 or more resamples, got {settings.bootstrap}")
    rng = np.random.default_rng(settings.seed)
    for lb in labels:
        cx, cy = _calibration_rows(calibration, lb)
        cal = _fit(cx, cy, lb, settings.method)
        boots: list[Calibrator] = []
        for _ in range(settings.bootstrap):
            pick = rng.integers(0, len(cy), len(cy))
            if 0 < int(cy[pick].sum()) < len(pick):
                boots.append(_fit(cx[pick], cy[pick], lb, settings.method))
        t = float(settings.thresholds.get(lb, settings.default_threshold))
        if not 0 <= t <= 1:
            raise ConfigError(f"threshold for {lb!r}: expected a number from 0 to 1, got {t}")
        scores = log.scores[lb]
        probs = cal.predict(scores)
        le = LabelEstimate(
            label=lb, threshold=t, method=settings.method, calibration_n=cal.n, calibration_positives=cal.positives, n=len(log),
        )
        for i, (idx, start, end) in enumerate(chunks):
            flagged = scores[idx] >= t
            extra = (0.0, 0.0, 0.0)
            if len(boots) > 1:
                pts = np.array([_point(b.predict(scores[idx]), flagged) for b in boots])
                with np.errstate(invalid="ignore"):
                    v = np.nanvar(pts, axis=0, ddof=1) if np.isfinite(pts).sum(axis=0).min() > 1 else np.zeros(3)
                extra = (float(v[0]), float(v[1]), float(v[2]))
            est = estimate_chunk(probs[idx], flagged, extra)
            labelled, rp, rr, rf = _realized(log.truth[lb][idx], flagged)
            c = ChunkEstimate(
                index=i, start=start, end=end, first_line=int(log.lines[idx].min()), last_line=int(log.lines[idx].max()),
                n=len(idx), labelled=labelled, realized_precision=rp, realized_recall=rr, realized_f1=rf, **est,
            )
            for name, value in (("precision", c.precision), ("recall", c.recall), ("f1", c.f1)):
                floor = getattr(settings, f"min_{name}")
                if floor is not None and value is not None and value < floor:
                    c.alerts.append(name)
            le.chunks.append(c)
        report.labels.append(le)
    return report
