"""The classifier stream: ``monitor`` (score drift), ``classifier tune`` (thresholds per label) and
``classifier errors`` (false positives and negatives at those thresholds)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .._exceptions import ConfigError, InputError
from ._app import CONTEXT, EXIT_UNDECIDED, F, FloatRange, _Group, _policy_source, cli


def _pairs(values: tuple[str, ...], what: str, example: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ConfigError(f"{what} {v!r}: expected {example}")
        out[key.strip()] = val.strip()
    return out


def _float(v: str, where: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {v!r}") from None


def _scores_options(f: Any) -> Any:
    for opt in reversed(
        [
            click.option("--label", "-l", "labels", multiple=True, help="Label to use (repeatable) [default: every label of the first row]."),
            click.option("--strata", "-s", multiple=True, help="Field to group by as well (repeatable), e.g. language."),
            click.option("--id-field", default="id", show_default=True),
            click.option("--time-field", default="timestamp", show_default=True),
            click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), help="Input format [default: from the extension]."),
        ]
    ):
        f = opt(f)
    return f


def _drop_options(*names: str) -> Callable[[F], F]:
    """Leave out shared options (by parameter name) a command has no use for; goes right under
    the command decorator."""

    def deco(f: F) -> F:
        f.__click_params__ = [p for p in getattr(f, "__click_params__", []) if p.name not in names]  # type: ignore[attr-defined]
        return f

    return deco


def _warn_no_threshold(thresholds_path: str | None, labels: Sequence[str], th: Mapping[str, float], default: float) -> None:
    """One line per label the thresholds file has without a threshold (tune found none), when
    neither --threshold LABEL=X sets it: its flag rate falls back on the default."""
    if not thresholds_path:
        return
    from ..classifiers._thresholds import labels_without_threshold

    for lb in labels_without_threshold(thresholds_path):
        if lb in labels and lb not in th:
            click.echo(f"{thresholds_path}: label {lb} has no threshold (cotmod classifier tune found none): its flag rate uses {default:g}", err=True)


def _warn_missing_strata(path: str, strata: Mapping[str, Sequence[str]]) -> None:
    """One line per --strata field no row of ``path`` has a value for (a misspelling groups every
    row under (missing))."""
    from ..classifiers._scores import MISSING_STRATUM

    for name, values in strata.items():
        if len(values) and all(v == MISSING_STRATUM for v in values):
            click.echo(f"{path}: no row has a value for --strata {name} (a misspelling?): every row is grouped under {MISSING_STRATUM}", err=True)


@cli.command(context_settings=CONTEXT)
@click.argument("scores", type=click.Path(exists=True, dir_okay=False))
@click.option("--reference", "-r", required=True, type=click.Path(exists=True, dir_okay=False), help="Score log the chunks are compared with.")
@click.option("--chunk", "-c", required=True, help="Chunk by time window (30m, 6h, 1d, 1w) or by row count (100000).")
@_scores_options
@click.option(
    "--alerts",
    type=click.Choice(["std", "p99", "constant"]),
    default="std",
    show_default=True,
    help="std: above the reference chunks' mean + SIGMA sd; p99: above their 99th percentile; constant: fixed limits (--limit).",
)
@click.option("--sigma", type=FloatRange(min=0), default=3.0, show_default=True)
@click.option("--limit", "limits", multiple=True, help="Constant limit, e.g. psi=0.25 (psi, js, wasserstein; ks_p, flag_rate_p: p-values).")
@click.option("--thresholds", "thresholds_path", type=click.Path(exists=True, dir_okay=False), help="Operating thresholds per label (cotmod classifier tune).")
@click.option("--threshold", "threshold_values", multiple=True, help="Operating threshold: 0.7 (every label) or LABEL=0.7 [default: 0.5].")
@click.option("--bins", type=click.IntRange(2, 100), default=10, show_default=True, help="Reference quantile bins for PSI and JS.")
@click.option("--skip-bad-rows", is_flag=True, help="Leave out rows of SCORES that cannot be used (counted and listed; exit 1).")
@click.option(
    "--verdicts",
    "verdict_logs",
    is_flag=True,
    help="SCORES and REFERENCE are cotmod verdict logs (detected by their fields when not given): monitor the error rate, "
    "tokens per verdict, and per policy the violation rate, each rule's firing rate, score and confidence.",
)
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Also write a self-contained HTML report with time-series plots.")
@click.option("--json", "as_json", is_flag=True)
def monitor(
    scores: str,
    reference: str,
    chunk: str,
    labels: tuple[str, ...],
    strata: tuple[str, ...],
    id_field: str,
    time_field: str,
    fmt: str | None,
    alerts: str,
    sigma: float,
    limits: tuple[str, ...],
    thresholds_path: str | None,
    threshold_values: tuple[str, ...],
    bins: int,
    skip_bad_rows: bool,
    verdict_logs: bool,
    html_path: str | None,
    as_json: bool,
) -> None:
    """Score drift of a classifier, chunk by chunk, per label and per stratum; exit 1 on any alert.

    Per chunk: PSI on the reference's quantile bins, Jensen-Shannon distance, KS (with p),
    Wasserstein, and the flag rate at the operating threshold against the reference's (difference,
    95% CI, two-proportion test p). By default a chunk alerts when a statistic leaves the spread
    of reference chunks of the same size (mean + SIGMA sd), so small chunks do not cry wolf.

    On cotmod verdict logs (--verdicts, or detected: lines with item_id, status, policy_versions
    and prompt_fingerprint), the series are: error (error verdicts and the dead letters of failed
    items in the run's .errors.jsonl), tokens, and per policy violates:POLICY, rule:RULE,
    score:POLICY and confidence:POLICY; -l takes a series, a kind (violates, rule...) or a policy.
    Time is each verdict's created_at (or --time-field, e.g. metadata.timestamp).
    """
    from ..classifiers._monitor import MonitorSettings, parse_chunk
    from ..classifiers._scores import read_scores
    from ..classifiers._stream import monitor_stream
    from ..classifiers._thresholds import load_classifier_thresholds

    parse_chunk(chunk)  # a bad --chunk fails before anything is read
    th: dict[str, float] = load_classifier_thresholds(thresholds_path) if thresholds_path else {}
    default = 0.5
    for v in threshold_values:
        if "=" in v:
            name, _, raw = v.partition("=")
            th[name.strip()] = _float(raw, f"--threshold {v}")
        else:
            default = _float(v, "--threshold")
    for name, x in th.items():
        if not 0 <= x <= 1:
            raise ConfigError(f"threshold for {name!r}: expected a number from 0 to 1, got {x}")
    if not 0 <= default <= 1:
        raise ConfigError(f"--threshold: expected a number from 0 to 1, got {default}")
    lim = {k: _float(v, f"--limit {k}") for k, v in _pairs(limits, "--limit", "NAME=VALUE, e.g. psi=0.25").items()}
    if verdict_logs or _is_verdict_log(scores, fmt):
        if th or threshold_values:
            raise ConfigError("--threshold/--thresholds: verdict series have no operating threshold (rates are 0/1)")
        if skip_bad_rows:
            raise ConfigError("--skip-bad-rows is for score logs: a verdict log's unreadable line is an error (FILE:LINE)")
        explicit_time = click.get_current_context().get_parameter_source("time_field") != ParameterSource.DEFAULT
        vsettings = MonitorSettings(
            chunk=chunk, alerts=alerts, sigma=sigma, bins=bins, limits=lim,  # type: ignore[arg-type]
            labels=labels or None, strata=strata,
        )
        _finish(_monitor_verdicts(scores, reference, vsettings, time_field if explicit_time else "created_at", fmt), html_path, as_json)
        return
    kw: dict[str, Any] = {"labels": labels or None, "strata": strata, "id_field": id_field, "time_field": time_field, "fmt": fmt}
    if _is_verdict_log(reference, fmt):
        raise InputError(f"{reference}: a cotmod verdict log, but {scores} is a score log; compare like with like")
    ref = read_scores(reference, **kw)
    _warn_no_threshold(thresholds_path, ref.labels, th, default)
    _warn_missing_strata(reference, ref.strata)
    settings = MonitorSettings(
        chunk=chunk, alerts=alerts, sigma=sigma, bins=bins, limits=lim,  # type: ignore[arg-type]
        thresholds=th, default_threshold=default, labels=labels or None, strata=strata,
    )
    # SCORES is streamed (one pass, flat memory; same report as monitor_fn on read_scores(SCORES))
    report = monitor_stream(scores, ref, settings, id_field=id_field, time_field=time_field, fmt=fmt, skip_bad_rows=skip_bad_rows)
    if html_path:
        _write_html(report, html_path)
    if as_json:
        data = report.model_dump(mode="json")
        data["alerts"] = report.alerts
        click.echo(json.dumps(data, indent=2))
    else:
        _print_report(report)
    if report.rows_skipped:
        from ._estimate import echo_skipped

        echo_skipped(report.rows_skipped, report.skipped_rows)
    if report.alerts or report.rows_skipped:
        sys.exit(EXIT_UNDECIDED)


def _is_verdict_log(path: str, fmt: str | None) -> bool:
    from ..classifiers._verdictlog import is_verdict_log

    return is_verdict_log(path, fmt)


def _monitor_verdicts(scores: str, reference: str, settings: Any, time_field: str, fmt: str | None) -> Any:
    from ..classifiers._monitor import parse_chunk
    from ..classifiers._verdictlog import monitor_verdicts, read_verdict_log

    fields = "no item_id, status, policy_versions, prompt_fingerprint"
    if not _is_verdict_log(scores, fmt):  # only with --verdicts: else SCORES was detected as one
        raise InputError(f"{scores}: not a cotmod verdict log ({fields}); --verdicts is for verdict logs: leave it out to monitor a score log")
    if not _is_verdict_log(reference, fmt):
        raise InputError(f"{reference}: not a cotmod verdict log ({fields}), but {scores} is one; compare like with like")
    kind, _ = parse_chunk(settings.chunk)
    kw: dict[str, Any] = {"strata": settings.strata, "time_field": time_field, "fmt": fmt}
    log = read_verdict_log(scores, require_timestamps=kind == "time", **kw)
    ref = read_verdict_log(reference, require_timestamps=kind == "time", **kw)
    for vlog, path in ((log, scores), (ref, reference)):
        _warn_missing_strata(path, {s: [r.strata[s] for r in vlog.rows] for s in settings.strata})
    return monitor_verdicts(log, ref, settings)


def _write_html(report: Any, path: str) -> None:
    from ..batch._store import os_error
    from ..classifiers._report import write_monitor_html

    try:
        write_monitor_html(report, path)
    except OSError as exc:
        err = os_error(Path(path), exc)
        if isinstance(err, ConfigError):  # a path problem: the option to change is --html, not --output
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}; choose another --html (or fix its directory's permissions)") from None
        raise err from None


def _finish(report: Any, html_path: str | None, as_json: bool) -> None:
    """Output a verdict-log report (HTML, JSON or the table); exit 1 on any alert."""
    if html_path:
        _write_html(report, html_path)
    if as_json:
        data = report.model_dump(mode="json")
        data["alerts"] = report.alerts
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(
            f"{report.verdicts} verdicts and {report.dead_letters} dead letters of failed items; "
            f"reference {report.reference_verdicts} verdicts and {report.reference_dead_letters} dead letters"
        )
        for note in report.notes:
            click.echo(f"note: {note}")
        _print_report(report)
    if report.alerts:
        sys.exit(EXIT_UNDECIDED)


def _g(v: float, spec: str) -> str:
    """A number, or '-' for NaN (a verdict log's value series has no flag rate)."""
    return "-" if math.isnan(v) else format(v, spec)


def _print_report(report: Any) -> None:
    if report.alert_method == "std":
        how = f"reference chunks' mean + {report.sigma:g} sd"
    elif report.alert_method == "p99":
        how = "reference chunks' 99th percentile"
    else:
        how = "constant limits " + ", ".join(f"{k} {v:g}" for k, v in (report.limits or {}).items())
    click.echo(f"{report.source} vs reference {report.reference}, chunks of {report.chunk}; alerts: {how}")
    for g in report.groups:
        head = f"\n{g.label}" + (f" [{g.stratum}]" if g.stratum else "") + f": {g.n} rows, reference {g.reference_n}"
        if g.ref_flag_rate is not None and not math.isnan(g.ref_flag_rate):
            head += f", threshold {g.threshold:g} (reference flag rate {g.ref_flag_rate:.3f})"
        click.echo(click.style(head, bold=True))
        if g.note:
            click.echo(f"  {g.note}")
            continue
        click.echo(f"  {'chunk':<22} {'n':>7} {'psi':>7} {'js':>6} {'ks':>6} {'ks_p':>8} {'wass':>6} {'flag':>6} {'diff [95% CI]':>24}  alerts")
        for c in g.chunks:
            name = c.start[:19] if c.start else f"#{c.index} (lines {c.first_line}-{c.last_line})"
            diff = "-" if math.isnan(c.flag_rate_diff) else f"{c.flag_rate_diff:+.3f} [{c.flag_rate_diff_ci95[0]:+.3f}, {c.flag_rate_diff_ci95[1]:+.3f}]"
            mark = click.style(", ".join(c.alerts), fg="red") if c.alerts else ("-" if not c.note else c.note)
            click.echo(
                f"  {name:<22} {c.n:>7} {c.psi:>7.4f} {c.js:>6.3f} {c.ks:>6.3f} {c.ks_p:>8.2g} {c.wasserstein:>6.3f} "
                f"{_g(c.flag_rate, '>6.3f'):>6} {diff:>24}  {mark}"
            )
    n = report.alerts
    click.echo(f"\n{n} chunk(s) with alerts" if n else "\nno alerts")


@cli.group(cls=_Group, context_settings=CONTEXT)
def classifier() -> None:
    """The classifier stream: thresholds per label and their false positives/negatives, from an ML classifier's score log."""


@classifier.command("tune", context_settings=CONTEXT)
@click.argument("scores", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Thresholds YAML to write.")
@click.option("--target-precision", type=FloatRange(0, 1), help="Operating threshold: highest recall with at least this precision.")
@click.option("--cost-fp", type=FloatRange(min=0), help="Cost of a false positive (with --cost-fn): minimum expected cost.")
@click.option("--cost-fn", type=FloatRange(min=0), help="Cost of a false negative.")
@click.option("--auto-precision", type=FloatRange(0, 1), default=0.99, show_default=True, help="Auto-action threshold: lowest reaching this precision.")
@click.option("--label-map", "label_map", multiple=True, help="LABEL=POLICY (repeatable): the policy each label enforces.")
@click.option("--guidelines", "-g", type=click.Path(exists=True), help="Policies (for the versions tuned for) [default: as for lint].")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file (for its guidelines).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Bootstrap seed.")
@_scores_options
@click.option("--json", "as_json", is_flag=True)
def classifier_tune(
    scores: str,
    output: str,
    target_precision: float | None,
    cost_fp: float | None,
    cost_fn: float | None,
    auto_precision: float,
    label_map: tuple[str, ...],
    guidelines: str | None,
    config_file: str | None,
    seed: int,
    labels: tuple[str, ...],
    strata: tuple[str, ...],
    id_field: str,
    time_field: str,
    fmt: str | None,
    as_json: bool,
) -> None:
    """Choose per-label thresholds on rows with ground truth, with bands auto-action / review / allow.

    Each label's operating point comes with precision and recall (95% bootstrap CIs). With
    --label-map, the file records each label's policy and the policy version it was tuned for;
    point enforcement.yaml's classifier.thresholds at it and `cotmod sync check` flags it when
    the policy moves. Exit 1 when a label gets no threshold (no positive rows with ground truth,
    or none reaching --target-precision): the file is written without it, and each is named.
    """
    from ..classifiers._scores import read_scores
    from ..classifiers._thresholds import choose_thresholds, write_classifier_thresholds

    if target_precision is None and (cost_fp is None or cost_fn is None):
        raise ConfigError("give --target-precision, or both --cost-fp and --cost-fn")
    lmap = _pairs(label_map, "--label-map", "LABEL=POLICY")
    versions: dict[str, str] = {}
    if lmap:
        from ..policy._lint import load_policies

        ps = load_policies([_policy_source(guidelines, config_file)])
        for lb, pid in lmap.items():
            if pid not in ps:
                raise ConfigError(f"--label-map {lb}={pid}: no policy {pid!r} (known: {', '.join(ps.ids)})")
            versions[pid] = ps[pid].version
    log = read_scores(scores, labels=labels or None, strata=strata, id_field=id_field, time_field=time_field, fmt=fmt)
    th = choose_thresholds(
        log, target_precision=target_precision, cost_fp=cost_fp, cost_fn=cost_fn, auto_precision=auto_precision,
        label_map=lmap, policy_versions=versions, seed=seed,
    )
    write_classifier_thresholds(th, output)
    missing = [(lb, op.note) for lb, op in th.labels.items() if op.review is None]
    if as_json:
        click.echo(json.dumps(th.model_dump(mode="json"), indent=2))
    else:
        _print_tune(th)
        click.echo(f"wrote {output}")
    if missing:
        for lb, note in missing:
            click.echo(f"{output}: label {lb} has no threshold ({note}): the thresholds file leaves it out", err=True)
        sys.exit(EXIT_UNDECIDED)


def _print_tune(th: Any) -> None:
    for lb, op in th.labels.items():
        pol = f" ({op.policy} {op.policy_version})" if op.policy else ""
        if not op.reachable:
            click.echo(f"{lb}{pol}: {op.note}")
            continue
        assert op.precision is not None and op.recall is not None
        auto = "none reaches the auto precision" if op.auto_action is None else f"{op.auto_action:.4f}"
        click.echo(
            f"{lb}{pol}: review >= {op.review:.4f} (precision {op.precision:.3f}{_ci(op.precision_ci95)}, "
            f"recall {op.recall:.3f}{_ci(op.recall_ci95)}, {op.n} rows with truth), auto_action >= {auto}; "
            f"bands: {op.bands.get('auto_action', 0)} auto, {op.bands.get('human_review', 0)} review, {op.bands.get('allow', 0)} allow"
        )


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


@classifier.command("errors", context_settings=CONTEXT)
@click.argument("scores", type=click.Path(exists=True, dir_okay=False))
@click.option("--thresholds", "thresholds_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Thresholds per label (cotmod classifier tune).")
@_scores_options
@click.option("--text-field", default="text", show_default=True, help="Field with the item's text, shown with each error.")
@click.option("--examples", "per_group", type=click.IntRange(min=0), default=5, show_default=True, help="Errors listed per group (most confident first).")
@click.option("--json", "as_json", is_flag=True)
def classifier_errors_cmd(
    scores: str,
    thresholds_path: str,
    labels: tuple[str, ...],
    strata: tuple[str, ...],
    id_field: str,
    time_field: str,
    fmt: str | None,
    text_field: str,
    per_group: int,
    as_json: bool,
) -> None:
    """False positives and negatives at the chosen thresholds, by score band and stratum.

    Uses the rows with ground truth; lists the most confident errors of each group first. Exit 0
    (errors are findings, not failures).
    """
    from ..classifiers._errors import classifier_errors, load_classifier_bands
    from ..classifiers._scores import read_scores

    bands = load_classifier_bands(thresholds_path)
    log = read_scores(scores, labels=labels or None, strata=strata, id_field=id_field, time_field=time_field, text_field=text_field, fmt=fmt)
    _warn_missing_strata(scores, log.strata)
    report = classifier_errors(log, bands, labels=labels or None, strata=strata, per_group=per_group)
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    for le in report.labels:
        auto = "none" if le.auto_action is None else f"{le.auto_action:.4f}"
        prec = "n/a" if le.precision is None else f"{le.precision:.3f}"
        rec = "n/a" if le.recall is None else f"{le.recall:.3f}"
        click.echo(click.style(
            f"{le.label}: review >= {le.review:.4f}, auto_action >= {auto}; {le.known} rows with truth ({le.unknown} without): "
            f"{le.fp} false positives, {le.fn} false negatives (precision {prec}, recall {rec})", bold=True,
        ))
        for g in le.groups:
            where = g.stratum or "all rows"
            click.echo(f"  {g.kind.upper()} {g.band:<12} {where:<24} {g.count:>7} ({g.share:.0%} of {g.kind.upper()}s)")
            for it in g.items:
                text = "" if not it.text else "  " + " ".join(it.text.split())[:80]
                click.echo(f"      {it.id} (line {it.line}) score {it.score:.4f}{text}")
