"""A real classifier for tests, examples and benchmarks, and score logs with a known drift.

:func:`train_demo_classifier` trains scikit-learn TF-IDF (word 1-2 grams) + logistic regression
on a labelled JSONL set in the golden-set format (``text`` and a ``labels`` map; by default the
SMS Spam Collection in ``benchmarks/goldsets/sms_spam``, CC BY 4.0) in about a second, and scores
a held-out split. :func:`simulate_score_log` writes a score log by drawing held-out items (with
their real scores and ground truth) at a chosen positive share, with timestamps and a synthetic
``surface`` stratum: the same share as the reference gives a log with no drift; another share
gives a known shift (a changed spam/ham mix), optionally confined to one surface.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._exceptions import ConfigError, InputError
from ..batch._reader import read_records

__all__ = ["DEFAULT_GOLDEN", "DemoClassifier", "simulate_score_log", "train_demo_classifier"]

#: The SMS Spam Collection in a source checkout (not shipped in the wheel).
DEFAULT_GOLDEN = Path(__file__).resolve().parents[2] / "benchmarks" / "goldsets" / "sms_spam" / "sms_spam.normalized.jsonl.gz"

SURFACES = ("sms", "app")


@dataclass
class DemoClassifier:
    """A trained pipeline and its held-out split: texts, truth and scores."""

    label: str
    model: Any  # sklearn Pipeline
    texts: list[str]
    truth: npt.NDArray[np.int8]
    scores: npt.NDArray[np.float64]

    @property
    def positive_share(self) -> float:
        return float(self.truth.mean())

    def score(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        return np.asarray(self.model.predict_proba(list(texts))[:, 1], dtype=np.float64)


def train_demo_classifier(golden: str | Path | None = None, *, label: str = "spam", test_size: float = 0.4, seed: int = 0) -> DemoClassifier:
    """Train TF-IDF + logistic regression for ``label`` on ``golden`` and score a held-out split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline

    path = Path(golden) if golden is not None else DEFAULT_GOLDEN
    if not path.is_file():
        raise ConfigError(f"labelled set not found: {path} (the SMS Spam set ships with a source checkout only)")
    texts: list[str] = []
    ys: list[int] = []
    for line, rec in read_records(path):
        lab = (rec.get("labels") or {}).get(label)
        if lab not in (0, 1) or not isinstance(rec.get("text"), str):
            raise InputError(f"{path}:{line}: needs 'text' and 'labels.{label}' = 0 or 1")
        texts.append(rec["text"])
        ys.append(int(lab))
    x_train, x_test, y_train, y_test = train_test_split(texts, ys, test_size=test_size, random_state=seed, stratify=ys)
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(C=10.0, max_iter=1000),
    )
    model.fit(x_train, y_train)
    scores = np.asarray(model.predict_proba(x_test)[:, 1], dtype=np.float64)
    return DemoClassifier(label=label, model=model, texts=list(x_test), truth=np.asarray(y_test, dtype=np.int8), scores=scores)


def simulate_score_log(
    demo: DemoClassifier,
    path: str | Path,
    *,
    n: int,
    positive_share: float | None = None,
    shifted_surface: str | None = None,
    seed: int = 0,
    start: datetime | None = None,
    rows_per_day: int = 1000,
    with_text: bool = False,
) -> Path:
    """Write a JSONL score log of ``n`` rows drawn (with replacement) from the held-out items.

    Each row: ``id``, ``timestamp`` (ISO 8601, ``rows_per_day`` rows a day from ``start``),
    ``surface`` (sms or app, half each), ``score_<label>``, ``label_<label>`` (and ``text``).
    ``positive_share``: the share of positive items (None: the held-out share, i.e. no drift);
    with ``shifted_surface`` the share changes on that surface only.
    """
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(demo.truth == 1)
    neg = np.flatnonzero(demo.truth == 0)
    base = demo.positive_share
    surface = rng.integers(0, len(SURFACES), size=n)
    share = np.full(n, base)
    if positive_share is not None:
        if shifted_surface is None:
            share[:] = positive_share
        else:
            if shifted_surface not in SURFACES:
                raise ConfigError(f"unknown surface {shifted_surface!r} ({', '.join(SURFACES)})")
            share[surface == SURFACES.index(shifted_surface)] = positive_share
    is_pos = rng.random(n) < share
    idx = np.where(is_pos, rng.choice(pos, size=n), rng.choice(neg, size=n))
    t0 = start or datetime(2026, 11, 1, tzinfo=timezone.utc)
    step = 86400.0 / rows_per_day
    p = Path(path)
    lb = demo.label
    with p.open("w", encoding="utf-8") as f:
        for i, j in enumerate(idx):
            row: dict[str, Any] = {
                "id": f"r{seed}-{i}",
                "timestamp": (t0 + timedelta(seconds=i * step)).isoformat().replace("+00:00", "Z"),
                "surface": SURFACES[int(surface[i])],
                f"score_{lb}": round(float(demo.scores[j]), 6),
                f"label_{lb}": int(demo.truth[j]),
            }
            if with_text:
                row["text"] = demo.texts[j]
            f.write(json.dumps(row) + "\n")
    return p
