"""False positives and false negatives of a classifier at its chosen thresholds.

On the rows whose ground truth is known, at each label's operating (review) threshold: a false
positive is a negative row scored ``>= review``, a false negative a positive row scored below it.
Errors are grouped by score band (auto_action / human_review / allow: every false negative is in
``allow``) and, with ``strata``, by each stratum value; each group lists its most confident
errors first (false positives by highest score, false negatives by lowest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .._exceptions import InputError
from .._yamlfile import read_yaml_mapping
from ._scores import ScoreLog

__all__ = ["ErrorGroup", "ErrorItem", "ErrorReport", "LabelErrors", "classifier_errors", "load_classifier_bands"]


class ErrorItem(BaseModel):
    id: str
    line: int
    score: float
    strata: dict[str, str] = Field(default_factory=dict)
    text: str | None = None


class ErrorGroup(BaseModel):
    kind: str  # fp | fn
    band: str  # auto_action | human_review | allow
    stratum: str | None = None  # "FIELD=VALUE"; None: all rows
    count: int
    share: float  # of the label's errors of this kind
    items: list[ErrorItem] = Field(default_factory=list)


class LabelErrors(BaseModel):
    label: str
    review: float
    auto_action: float | None = None
    known: int  # rows with ground truth
    unknown: int
    fp: int
    fn: int
    precision: float | None = None
    recall: float | None = None
    groups: list[ErrorGroup] = Field(default_factory=list)


class ErrorReport(BaseModel):
    source: str
    labels: list[LabelErrors] = Field(default_factory=list)


def load_classifier_bands(path: str | Path) -> dict[str, tuple[float, float | None]]:
    """``(review, auto_action)`` per label from a file written by ``cotmod classifier tune``."""
    p = Path(path)
    data = read_yaml_mapping(p, "classifier thresholds file")
    labels = data.get("labels")
    if not isinstance(labels, dict):
        raise InputError(f"{p}: expected 'labels: {{LABEL: {{review: x, auto_action: y}}}}' (written by cotmod classifier tune)")
    out: dict[str, tuple[float, float | None]] = {}
    for lb, spec in labels.items():
        if not isinstance(spec, dict):
            raise InputError(f"{p}: labels.{lb}: expected {{review: x, auto_action: y}}, got {spec!r}")
        if spec.get("review") is None:
            continue  # a label tune found no threshold for
        vals: list[float | None] = []
        for key in ("review", "auto_action"):
            raw = spec.get(key)
            if raw is None:
                vals.append(None)
                continue
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or not 0 <= raw <= 1:
                raise InputError(f"{p}: labels.{lb}.{key}: expected a number from 0 to 1, got {raw!r}")
            vals.append(float(raw))
        review, auto = vals
        assert review is not None
        if auto is not None and auto < review:
            raise InputError(f"{p}: labels.{lb}: auto_action ({auto}) is below review ({review})")
        out[str(lb)] = (review, auto)
    return out


def classifier_errors(
    log: ScoreLog,
    bands: Mapping[str, tuple[float, float | None]],
    *,
    labels: Sequence[str] | None = None,
    strata: Sequence[str] = (),
    per_group: int = 10,
) -> ErrorReport:
    """FP/FN of each label at ``bands[label] = (review, auto_action)``, by band and stratum."""
    names = list(labels) if labels else [lb for lb in log.labels if lb in bands]
    if not names:
        raise InputError(f"no label of {log.path} has a threshold (labels: {', '.join(log.labels)}; thresholds for: {', '.join(bands) or 'none'})")
    for lb in names:
        if lb not in log.labels:
            raise InputError(f"{log.path}: no label {lb!r} (labels: {', '.join(log.labels)})")
        if lb not in bands:
            raise InputError(f"no threshold for label {lb!r} (thresholds for: {', '.join(bands) or 'none'})")
    for name in strata:
        if name not in log.strata:
            raise InputError(f"{log.path}: stratum field {name!r} was not read")
    report = ErrorReport(source=log.path)
    for lb in names:
        review, auto = bands[lb]
        s, y = log.scores[lb], log.truth[lb]
        known = y >= 0
        flagged = s >= review
        fp = known & flagged & (y == 0)
        fn = known & ~flagged & (y == 1)
        tp = int((known & flagged & (y == 1)).sum())
        band = np.where(s < review, 2, np.where(s >= auto, 0, 1) if auto is not None else 1)
        le = LabelErrors(
            label=lb, review=review, auto_action=auto, known=int(known.sum()), unknown=int((~known).sum()),
            fp=int(fp.sum()), fn=int(fn.sum()),
            precision=tp / (tp + int(fp.sum())) if tp + fp.sum() else None,
            recall=tp / (tp + int(fn.sum())) if tp + fn.sum() else None,
        )
        cuts: list[tuple[str | None, np.ndarray]] = [(None, np.ones(len(s), dtype=bool))]
        for field in strata:
            vals = np.asarray(log.strata[field], dtype=object)
            cuts += [(f"{field}={v}", vals == v) for v in sorted(set(log.strata[field]))]
        for kind, mask, total in (("fp", fp, le.fp), ("fn", fn, le.fn)):
            for b, bname in enumerate(("auto_action", "human_review", "allow")):
                for stratum, cut in cuts:
                    idx = np.flatnonzero(mask & cut & (band == b))
                    if len(idx) == 0:
                        continue
                    order = idx[np.argsort(-s[idx] if kind == "fp" else s[idx], kind="mergesort")][:per_group]
                    items = [
                        ErrorItem(
                            id=log.ids[i], line=int(log.lines[i]), score=float(s[i]),
                            strata={f: log.strata[f][i] for f in log.strata},
                            text=None if log.texts is None else log.texts[i],
                        )
                        for i in order
                    ]
                    le.groups.append(ErrorGroup(kind=kind, band=bname, stratum=stratum, count=len(idx), share=len(idx) / total, items=items))
        report.labels.append(le)
    return report
