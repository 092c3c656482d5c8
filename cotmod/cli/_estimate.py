"""``cotmod classifier estimate``: precision, recall and F1 per chunk without labels (CBPE-like),
and the listing of rows a lenient read skipped (shared with ``cotmod monitor --skip-bad-rows``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from .._exceptions import ConfigError
from ._app import CONTEXT, EXIT_UNDECIDED, FloatRange
from ._monitor import _drop_options, _float, _scores_options, _warn_no_threshold, classifier


def echo_skipped(count: int, rows: Sequence[Any]) -> None:
    """To stderr: how many rows were skipped, and the first ones with FILE:LINE and the reason."""
    click.echo(f"{count} row(s) skipped (cannot be used):", err=True)
    for r in rows:
        click.echo(f"  {r.reason}", err=True)
    if count > len(rows):
        click.echo(f"  ... and {count - len(rows)} more", err=True)


def _interval(v: float | None, ci: tuple[float, float] | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def _opt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


@classifier.command("estimate", context_settings=CONTEXT)
@_drop_options("strata")  # the estimates are per label and chunk, not per stratum
@click.argument("scores", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--calibration", required=True, type=click.Path(exists=True, dir_okay=False),
    help="Labelled score log (a golden set scored by the classifier) to calibrate the scores on.",
)
@click.option("--chunk", "-c", required=True, help="Chunk by time window (30m, 6h, 1d, 1w) or by row count (100000).")
@_scores_options
@click.option("--thresholds", "thresholds_path", type=click.Path(exists=True, dir_okay=False), help="Operating thresholds per label (cotmod classifier tune).")
@click.option("--threshold", "threshold_values", multiple=True, help="Operating threshold: 0.7 (every label) or LABEL=0.7 [default: 0.5].")
@click.option("--method", type=click.Choice(["isotonic", "platt"]), default="isotonic", show_default=True, help="Calibration: isotonic regression or Platt scaling.")
@click.option("--min-precision", type=FloatRange(0, 1), help="Exit 1 when a chunk's estimated precision is below this.")
@click.option("--min-recall", type=FloatRange(0, 1), help="Exit 1 when a chunk's estimated recall is below this.")
@click.option("--min-f1", type=FloatRange(0, 1), help="Exit 1 when a chunk's estimated F1 is below this.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=100, show_default=True, help="Calibration resamples for the intervals (0: sampling noise only).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Bootstrap seed.")
@click.option("--skip-bad-rows", is_flag=True, help="Leave out rows of SCORES that cannot be used (counted and listed; exit 1).")
@click.option("--json", "as_json", is_flag=True)
def classifier_estimate(
    scores: str,
    calibration: str,
    chunk: str,
    labels: tuple[str, ...],
    id_field: str,
    time_field: str,
    fmt: str | None,
    thresholds_path: str | None,
    threshold_values: tuple[str, ...],
    method: str,
    min_precision: float | None,
    min_recall: float | None,
    min_f1: float | None,
    bootstrap: int,
    seed: int,
    skip_bad_rows: bool,
    as_json: bool,
) -> None:
    """Estimate each chunk's precision, recall, F1 and flag rate without labels (as NannyML's CBPE).

    Scores are calibrated on the labelled rows of --calibration (P(positive | score)); a chunk's
    expected true positives are the sum of calibrated probabilities over its flagged rows. 95%
    intervals cover the chunk's sampling noise and the calibration's error (bootstrap). Where
    SCORES has ground truth, realized values are shown next to the estimates. The estimates assume
    P(positive | score) is unchanged (a changed mix of items is fine; more positives among items
    that look the same is not). Exit 1 when an estimate is below --min-precision/--min-recall/
    --min-f1, or when --skip-bad-rows left rows out.
    """
    from ..classifiers._estimate import EstimateSettings, estimate_performance
    from ..classifiers._monitor import parse_chunk
    from ..classifiers._scores import read_scores
    from ..classifiers._thresholds import load_classifier_thresholds

    kind, _ = parse_chunk(chunk)
    th: dict[str, float] = load_classifier_thresholds(thresholds_path) if thresholds_path else {}
    default = 0.5
    for v in threshold_values:
        if "=" in v:
            name, _, raw = v.partition("=")
            th[name.strip()] = _float(raw, f"--threshold {v}")
        else:
            default = _float(v, "--threshold")
    for name, x in [*th.items(), ("--threshold", default)]:
        if not 0 <= x <= 1:
            raise ConfigError(f"threshold for {name!r}: expected a number from 0 to 1, got {x}")
    kw: dict[str, Any] = {"labels": labels or None, "id_field": id_field, "time_field": time_field, "fmt": fmt}
    log = read_scores(scores, require_timestamps=kind == "time", skip_bad_rows=skip_bad_rows, **kw)
    cal = read_scores(calibration, **kw)
    _warn_no_threshold(thresholds_path, log.labels, th, default)
    settings = EstimateSettings(
        chunk=chunk, thresholds=th, default_threshold=default, labels=labels or None, method=method,  # type: ignore[arg-type]
        min_precision=min_precision, min_recall=min_recall, min_f1=min_f1, bootstrap=bootstrap, seed=seed,
    )
    report = estimate_performance(log, cal, settings)
    if as_json:
        data = report.model_dump(mode="json")
        data["alerts"] = report.alerts
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"{report.source}: performance estimated from scores calibrated on {report.calibration} ({report.method}), chunks of {report.chunk}")
        for le in report.labels:
            click.echo(click.style(
                f"\n{le.label}: threshold {le.threshold:g}; calibration on {le.calibration_n} labelled rows ({le.calibration_positives} positive)",
                bold=True,
            ))
            click.echo(f"  {'chunk':<22} {'n':>7} {'flag':>6} {'precision [95% CI]':>24} {'recall [95% CI]':>24} {'f1 [95% CI]':>24}  realized p/r/f1      alerts")
            for c in le.chunks:
                name = c.start[:19] if c.start else f"#{c.index} (lines {c.first_line}-{c.last_line})"
                real = f"{_opt(c.realized_precision)}/{_opt(c.realized_recall)}/{_opt(c.realized_f1)}" if c.labelled else "-"
                mark = click.style(", ".join(c.alerts), fg="red") if c.alerts else "-"
                click.echo(
                    f"  {name:<22} {c.n:>7} {c.flag_rate:>6.3f} {_interval(c.precision, c.precision_ci95):>24} "
                    f"{_interval(c.recall, c.recall_ci95):>24} {_interval(c.f1, c.f1_ci95):>24}  {real:<20} {mark}"
                )
        n = report.alerts
        click.echo(f"\n{n} chunk(s) below the minimum" if n else "\nno chunk below the minimum")
    if report.rows_skipped:
        echo_skipped(report.rows_skipped, report.skipped_rows)
    if report.alerts or report.rows_skipped:
        sys.exit(EXIT_UNDECIDED)
