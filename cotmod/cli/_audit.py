"""``cotmod audit``: a stronger model audits production decisions (plan, run, report, export,
labels, history).

Exit codes: 0 done; 1 ``run``: some sampled items got no auditor verdict (listed in the errors
file; ``--retry-errors``) or were left by ``--limit`` (rerun to resume), ``report``: some sampled
items have neither an auditor decision nor a human label (counted in the report), ``export``: some
sampled items have no auditor decision (the task is written, with a warning), ``labels``: the file
holds no label; 2 a usage, configuration or input mistake (bad decisions or labels file, an audit
output of another plan or policy version, an existing plan or task file without ``--overwrite``,
a history or golden file of another kind); 3 a runtime failure stopped the run (verdicts written
so far are kept: rerun to resume).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .._exceptions import ConfigError, InputError
from ._app import (
    CONTEXT,
    EXIT_OK,
    EXIT_UNDECIDED,
    FloatRange,
    _drive_run,
    _endpoint_options,
    _finish_run,
    _notice,
    _policy_source,
    _runner_options,
    _settings,
    cli,
)


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        if "=" not in v:
            raise click.UsageError(f"{option} {v!r}: expected NAME=VALUE")
        k, _, x = v.partition("=")
        out[k.strip()] = x.strip()
    return out


def _when(at: Any) -> str:
    """A history record's ISO time to the second, in UTC ("2026-11-27 16:04:31 UTC")."""
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(str(at))
    except ValueError:
        return str(at)[:25]
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if t.tzinfo is not None else "")


def _refuse_existing(output: str, overwrite: bool, what: str) -> None:
    """Refuse to replace a non-empty ``output`` (``what`` it may hold) unless ``--overwrite``."""
    p = Path(output)
    if not overwrite and p.is_file() and p.stat().st_size > 0:
        raise ConfigError(f"{output} exists ({what}); choose another --output, or pass --overwrite to replace it")


@cli.group(context_settings=CONTEXT)
def audit() -> None:
    """Audit production decisions with a stronger model: plan a stratified sample, re-judge it,
    report agreement and production's precision/recall with confidence intervals, adjudicate.

    \b
    cotmod audit plan decisions.jsonl -o plan.jsonl --budget 400 --strata language
    cotmod audit run plan.jsonl -o audit.jsonl --base-url ... --model big-model --votes 5
    cotmod audit report plan.jsonl audit.jsonl --html audit.html --history audits.jsonl
    cotmod audit export plan.jsonl audit.jsonl -o task.csv --control 50
    cotmod audit report plan.jsonl audit.jsonl --labels task-labelled.csv --append-golden gold.jsonl
    cotmod audit history audits.jsonl
    """


@audit.command("plan", context_settings=CONTEXT)
@click.argument("decisions", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Plan file (JSONL) to write.")
@click.option("--items", type=click.Path(exists=True, dir_okay=False), help="The texts by id (the run's input; needed for cotmod verdicts).")
@click.option("--policy", "-p", "policies", multiple=True, help="Audit only this policy (repeatable) [default: every decided policy].")
@click.option("--label-policy", multiple=True, help="LABEL=POLICY (repeatable): the policy a decisions file's label enforces.")
@click.option("--threshold", multiple=True, help="NAME=T (repeatable): a score >= T flags when a row has a score but no decision.")
@click.option("--strata", "strata_fields", multiple=True, help="Field to stratify by as well (repeatable), e.g. language.")
@click.option("--score-bands", default="0.25,0.5,0.75", show_default=True, help="Score cut points of the score bands (without production bands).")
@click.option("--allocation", type=click.Choice(["oversample", "proportional", "neyman"]), default="oversample", show_default=True, help="How the sample is spread over the strata.")
@click.option("--nonflagged-share", type=FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True, help="oversample: the sample's share from the non-flagged side.")
@click.option("--half-width", type=FloatRange(0, 1, min_open=True, max_open=True), help="Target 95% CI half-width [default: 0.05 unless --size].")
@click.option("--size", type=click.IntRange(min=1), help="Sample size per policy (instead of --half-width).")
@click.option("--budget", type=click.IntRange(min=1), help="At most this many sampled items over every policy.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--guidelines", "-g", type=click.Path(exists=True), help="The auditor's policies [default: as for lint].")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file (for its guidelines).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan's strata as JSON.")
@click.option("--overwrite", is_flag=True, help="Replace an existing plan (an audit run from it then no longer matches any plan).")
def audit_plan(
    decisions: str, output: str, items: str | None, policies: tuple[str, ...], label_policy: tuple[str, ...], threshold: tuple[str, ...],
    strata_fields: tuple[str, ...], score_bands: str, allocation: str, nonflagged_share: float, half_width: float | None,
    size: int | None, budget: int | None, seed: int, id_field: str, text_field: str, guidelines: str | None, config_file: str | None,
    as_json: bool, overwrite: bool,
) -> None:
    """Plan an audit of DECISIONS: a seeded stratified sample over decision × policy × score band
    (× --strata fields); each sampled item carries its stratum, N_h and inclusion probability.

    Refuses an existing non-empty --output unless --overwrite: a new plan (even with the same
    seed) has another sha256, so an audit run from the old one could no longer be reported."""
    from ..audit import load_decisions, make_plan
    from ..policy import load_policies

    _refuse_existing(output, overwrite, "an audit run from the plan it holds would no longer match a new one")
    ps = load_policies([_policy_source(guidelines, config_file)])
    versions = {p.id: p.version for p in ps}
    try:
        ths = {k: float(v) for k, v in _pairs(threshold, "--threshold").items()}
    except ValueError as exc:
        raise click.UsageError(f"--threshold: not a number: {exc}") from None
    try:
        bands = [float(x) for x in score_bands.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"--score-bands {score_bands!r}: expected numbers separated by commas, e.g. 0.25,0.5,0.75") from None
    dec = load_decisions(
        decisions, versions, items=items, label_policy=_pairs(label_policy, "--label-policy"), thresholds=ths,
        strata_fields=strata_fields, id_field=id_field, text_field=text_field,
    )
    if dec.undecided:
        _notice(f"{len(dec.undecided)} error verdict(s) in {decisions} (no production decision) are not in the population")
    for f in strata_fields:
        if all(it.fields.get(f) == "(missing)" for it in dec.items):
            _notice(f"warning: --strata {f}: no row of {decisions} has a field {f!r}; every item is in its '(missing)' stratum")
    plan = make_plan(
        dec, versions, policies=list(policies) or None, strata_fields=strata_fields, score_bands=bands, allocation=allocation,
        size=size, half_width=half_width, budget=budget, nonflagged_share=nonflagged_share, seed=seed,
    )
    digest = plan.write(output)
    if as_json:
        click.echo(json.dumps({"plan": output, "sha256": digest, "items": len(plan.items),
                               "strata": {pid: [vars(s) for s in ss] for pid, ss in plan.strata.items()}}, indent=2))
        return
    click.echo(f"plan: {output} ({len(plan.items)} items, seed {seed}, {allocation}; sha256 {digest[:12]}…)")
    for pid, ss in plan.strata.items():
        pop = plan.header["population"][pid]
        click.echo(click.style(f"{pid} {plan.policies[pid]}: population {pop['N']}, flagged {pop['flagged']}, sample {sum(s.n for s in ss)}", bold=True))
        for s in ss:
            click.echo(f"  {s.key:<50} N_h {s.N:>7}  n_h {s.n:>5}  inclusion {s.inclusion:.4f}")


@audit.command("run", context_settings=CONTEXT)
@click.argument("plan_path", metavar="PLAN", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Auditor verdicts JSONL (resumable).")
@_runner_options(overwrite_help="Discard an existing output first.")
@_endpoint_options
def audit_run(
    plan_path: str, output: str, concurrency: int | None, rpm: float | None, tpm: float | None, retry_errors: bool, overwrite: bool,
    limit: int | None, price_in: float | None, price_out: float | None, cache_path: str | None, no_cache: bool, as_json: bool,
    progress: bool | None, policies: tuple[str, ...], **kw: Any,
) -> None:
    """Re-judge PLAN's sampled items with the auditor configuration (endpoint, model, --votes,
    the current policy versions) through the batch runner: cached, resumable, cost counted.

    Refuses an output made from another plan, and guidelines whose policy versions differ from
    the plan's. Exits 1 when some items got no auditor verdict: failed ones (--retry-errors), or
    ones --limit left (rerun to resume)."""

    from .._config import cotmod_home
    from ..audit import read_audit, read_plan, run_audit_async
    from ..engine._cache import SqliteCache
    from . import _moderate

    if policies:
        raise click.UsageError("the plan names the policies to audit; -p does not apply to audit run")
    plan = read_plan(plan_path)
    settings = _settings(**kw)
    if concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    cache = None if no_cache else SqliteCache(cache_path or cotmod_home() / "cache.sqlite")
    mod = _moderate._make_moderator(settings, cache)
    show = progress if progress is not None else (sys.stderr.isatty() and not as_json)

    kwargs: dict[str, Any] = {"rpm": rpm, "tpm": tpm, "price_in": price_in, "price_out": price_out,
                              "retry_errors": retry_errors, "overwrite": overwrite, "limit": limit}
    summary = _drive_run(
        lambda on_progress: run_audit_async(plan, mod, output, on_progress=on_progress, **kwargs),
        moderator=mod, cache=cache, show=show, written_to=output, what="audit", as_json=as_json,
    )
    verdicts, failures, _model = read_audit(plan, output)
    not_run = sum(1 for it in plan.items if it.id not in verdicts and it.id not in failures)
    notes = []
    if summary.undecided:
        notes.append(f"{summary.undecided} sampled item(s) without an auditor verdict (--retry-errors redoes the retryable ones)")
    if not_run:
        notes.append(f"{not_run} sampled item(s) not run yet (--limit left them; rerun to resume)")
    _finish_run(_AuditRunSummary(summary, not_run), as_json, "; ".join(notes))


class _AuditRunSummary:
    """A run summary whose ``undecided`` also counts the plan items not run yet (``--limit``)."""

    def __init__(self, summary: Any, not_run: int) -> None:
        self.summary, self.not_run = summary, not_run

    @property
    def undecided(self) -> int:
        return int(self.summary.undecided) + self.not_run

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = self.summary.to_dict()
        data["not_run"] = self.not_run
        data["undecided"] = self.undecided
        return data


_control_options = [
    click.option("--control", "control", type=click.IntRange(min=0), default=None,
                 help="The control sample size given to audit export --control [default: the labels file's control column count, else 50]."),
    click.option("--control-seed", type=click.IntRange(min=0), default=None, help="The seed given to audit export --seed [default: the plan's]."),
]


def _with_control_options(f: Any) -> Any:
    for opt in reversed(_control_options):
        f = opt(f)
    return f


def _fmt(iv: Any) -> str:
    if iv is None or iv.value is None:
        return "-" if iv is None else f"- ({iv.reason})"
    if iv.low is None:
        return f"{iv.value:.3f}"
    return f"{iv.value:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def _print_report(report: Any) -> None:
    for p in report.policies:
        click.echo(click.style(f"{p.policy} {p.version}", bold=True) + f"  population {p.population}, flag rate {p.flag_rate:.3f} (census)")
        click.echo(f"  audited {p.audited} of {p.planned} sampled; auditor errors {p.auditor_errors}; not audited {p.not_audited}; human labels {p.human_labels} (control {p.control_labels})")
        click.echo(f"  agreement {_fmt(p.agreement)}   kappa {_fmt(p.kappa)}")
        if p.auditor_vs_human is not None:
            click.echo(f"  auditor vs human kappa {_fmt(p.auditor_vs_human)}; on the control sample {_fmt(p.auditor_vs_human_control)}")
        for kind, est in p.estimates.items():
            mark = "*" if kind == p.headline else " "
            click.echo(f" {mark}{kind:<8} precision {_fmt(est.precision)}  recall {_fmt(est.recall)}  prevalence {_fmt(est.prevalence)}")
        for fname, vals in p.by_field.items():
            for val, kinds in vals.items():
                est = kinds["auditor"]
                click.echo(f"  {fname}={val}: precision {_fmt(est.precision)}  recall {_fmt(est.recall)}  prevalence {_fmt(est.prevalence)}")
        click.echo(f"  disagreements: {len(p.disagreements)}")
        for dg in p.disagreements[:10]:
            click.echo(
                f"    {dg.id}: production {'violates' if dg.production_flagged else 'safe'} ({', '.join(dg.production_rules) or '-'}), "
                f"auditor {'violates' if dg.auditor_violates else 'safe'} ({', '.join(dg.auditor_rules) or '-'}): {dg.auditor_rationale[:100]}"
            )
        if len(p.disagreements) > 10:
            click.echo(f"    ... {len(p.disagreements) - 10} more (--json or --html lists them all)")


@audit.command("report", context_settings=CONTEXT)
@click.argument("plan_path", metavar="PLAN", type=click.Path(exists=True, dir_okay=False))
@click.argument("audit_path", metavar="AUDIT", type=click.Path(exists=True, dir_okay=False))
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False), help="Human labels (the exported task, labelled: CSV, JSONL or Label Studio JSON).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Also write a self-contained HTML report.")
@click.option("--history", "history_path", type=click.Path(dir_okay=False), help="Append the headline numbers to this audit history (JSONL).")
@click.option("--append-golden", "golden_path", type=click.Path(dir_okay=False), help="Append the human-labelled items to this golden set (JSONL) with provenance.")
@_with_control_options
def audit_report(plan_path: str, audit_path: str, labels_path: str | None, as_json: bool, html_path: str | None,
                 history_path: str | None, golden_path: str | None, control: int | None, control_seed: int | None) -> None:
    """Agreement (percent agreement and Cohen's kappa, both estimated for the whole population:
    a sample that oversamples flagged items shows more disagreements than the population has) and
    design-weighted estimates of production's precision,
    recall, flag rate and prevalence with 95% CIs per policy and stratum field, and the
    disagreements. With --labels: human labels as truth where present and prediction-powered
    estimates. Exits 1 when some sampled items have no auditor decision nor human label."""
    from ..audit import (
        append_golden,
        append_history,
        build_report,
        read_audit,
        read_labels,
        read_plan,
        write_audit_html,
    )
    from ..audit._adjudicate import check_golden_target
    from ..audit._report import check_history_target

    plan = read_plan(plan_path)
    verdicts, failures, model = read_audit(plan, audit_path)
    notices: list[str] = []
    labels = read_labels(labels_path, plan, control=control, control_seed=control_seed, notices=notices) if labels_path else []
    for line in notices:
        _notice(line)
    if golden_path and not labels:
        raise click.UsageError("--append-golden needs --labels (the adjudicated items)")
    # refuse a history or golden file of another kind before writing anything
    if history_path:
        check_history_target(history_path)
    if golden_path:
        check_golden_target(golden_path)
    report = build_report(plan, verdicts, failures, labels=labels, auditor_model=model)
    data = report.to_dict()
    code = EXIT_UNDECIDED if report.undecided else EXIT_OK
    data["exit_code"] = code
    if html_path:
        write_audit_html(html_path, data)
        _notice(f"HTML report: {html_path}")
    if history_path:
        append_history(history_path, report)
        _notice(f"history: appended to {history_path}")
    if golden_path:
        added, present = append_golden(golden_path, plan, labels, auditor_model=model, labels_path=str(labels_path))
        _notice(f"golden set {golden_path}: {added} item(s) appended, {present} already there")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_report(report)
    if code != EXIT_OK:
        click.echo(f"{report.undecided} sampled item-policy pair(s) without an auditor decision (auditor errors or not yet run)", err=True)
        click.get_current_context().exit(code)


@audit.command("export", context_settings=CONTEXT)
@click.argument("plan_path", metavar="PLAN", type=click.Path(exists=True, dir_okay=False))
@click.argument("audit_path", metavar="AUDIT", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Task file: .csv, .jsonl or .json (Label Studio import).")
@click.option("--control", type=click.IntRange(min=0), default=50, show_default=True, help="Random control items per policy (stratified, seeded).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Control sample seed [default: the plan's].")
@click.option("--overwrite", is_flag=True, help="Replace an existing task file (its labels are lost).")
def audit_export(plan_path: str, audit_path: str, output: str, control: int, seed: int | None, overwrite: bool) -> None:
    """Write the labeling task: the disagreement queue plus a random control sample, pointing to
    the labeling guide of the plan's policy versions (cotmod guide export -p POLICY).

    Refuses an existing non-empty --output (it may hold labels) unless --overwrite. Exits 1 when
    some sampled items have no auditor decision (their disagreements cannot be queued yet)."""
    from ..audit import export_task, read_audit, read_plan

    _refuse_existing(output, overwrite, "it may be a task already being labelled")
    plan = read_plan(plan_path)
    verdicts, _failures, _model = read_audit(plan, audit_path)
    counts = export_task(plan, verdicts, output, control=control, seed=seed)
    click.echo(
        f"task: {output}: {counts['disagreement']} disagreement(s), {counts['control']} control item(s) "
        f"({counts['control_and_disagreement']} disagreements are also in the control sample); fill 'label' with violates or safe"
    )
    if counts["undecided"]:
        click.echo(
            f"warning: {counts['undecided']} sampled item-policy pair(s) without an auditor decision (auditor errors or not yet run) "
            "are missing from the disagreement queue; finish the audit (cotmod audit run, --retry-errors) and export again",
            err=True,
        )
        click.get_current_context().exit(EXIT_UNDECIDED)


@audit.command("labels", context_settings=CONTEXT)
@click.argument("plan_path", metavar="PLAN", type=click.Path(exists=True, dir_okay=False))
@click.argument("labels_path", metavar="LABELS", type=click.Path(exists=True, dir_okay=False))
@_with_control_options
def audit_labels(plan_path: str, labels_path: str, control: int | None, control_seed: int | None) -> None:
    """Check a labels file against PLAN (unknown ids or values, a missing label column, a control
    column that disagrees with the plan's control sample are errors) and count its labels.
    Exits 1 when the file holds no label at all."""
    from ..audit import read_labels, read_plan

    plan = read_plan(plan_path)
    notices: list[str] = []
    labels = read_labels(labels_path, plan, control=control, control_seed=control_seed, notices=notices)
    for line in notices:
        _notice(line)
    by = {pid: sum(1 for lab in labels if lab.policy == pid) for pid in plan.policies}
    ctl = {pid: sum(1 for lab in labels if lab.policy == pid and lab.control) for pid in plan.policies}
    for pid in plan.policies:
        click.echo(f"{pid}: {by[pid]} label(s), {ctl[pid]} in the control sample")
    if not labels:
        click.echo(f"{labels_path}: no labels (every 'label' is blank): fill it with violates or safe", err=True)
        click.get_current_context().exit(EXIT_UNDECIDED)


@audit.command("history", context_settings=CONTEXT)
@click.argument("history_path", metavar="HISTORY", type=click.Path(exists=True, dir_okay=False))
@click.option("--policy", "-p", "policies", multiple=True, help="Only this policy (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON lines.")
def audit_history(history_path: str, policies: tuple[str, ...], as_json: bool) -> None:
    """The trend across audits: per policy, each audit's precision, recall, prevalence, kappa."""
    from ..audit import read_history

    hist = read_history(history_path)
    if not hist:
        raise InputError(f"{history_path}: empty history")
    if as_json:
        for h in hist:
            click.echo(json.dumps(h))
        return
    names = sorted({pid for h in hist for pid in h["policies"]})
    unknown = [pid for pid in policies if pid not in names]
    if unknown:
        raise InputError(f"{history_path}: no audit of {', '.join(map(repr, unknown))} in this history (audited: {', '.join(names)})")
    for pid in names:
        if policies and pid not in policies:
            continue
        click.echo(click.style(pid, bold=True))
        click.echo(f"  {'audited at':<26} {'version':<8} {'truth':<8} {'n':>5}  {'precision':<22} {'recall':<22} {'kappa':<8}")
        for h in hist:
            p = h["policies"].get(pid)
            if p is None:
                continue

            def f(iv: Any) -> str:
                if not iv or iv.get("value") is None:
                    return "-"
                if iv.get("low") is None:
                    return f"{iv['value']:.3f}"
                return f"{iv['value']:.3f} [{iv['low']:.2f}, {iv['high']:.2f}]"

            k = p.get("kappa") or {}
            kv = "-" if k.get("value") is None else f"{k['value']:.3f}"
            click.echo(f"  {_when(h['at']):<26} {p['version']:<8} {p['truth']:<8} {p['audited']:>5}  {f(p.get('precision')):<22} {f(p.get('recall')):<22} {kv:<8}")


