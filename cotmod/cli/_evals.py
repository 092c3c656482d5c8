"""Golden-set evaluation: ``eval``, ``report``, ``tune`` and ``compare``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._app import (
    CONTEXT,
    EXIT_UNDECIDED,
    FloatRange,
    _endpoint_options,
    _settings,
    cli,
)

if TYPE_CHECKING:
    from ..evals._results import EvalResult


def _write_reports(result: EvalResult, run_dir: Path, as_json: bool) -> None:
    """Save metrics.json and report.html of ``result``, then print the table (or the JSON)."""
    from ..evals._harness import write_metrics
    from ..evals._report import text_table, write_report

    metrics_path = write_metrics(result, run_dir)
    report_path = write_report(result, run_dir)
    if as_json:
        # per-item records (predictions, attribution flags) stay in metrics.json
        click.echo(json.dumps(result.model_dump(mode="json", exclude={"predictions", "item_flags"}), indent=2))
    else:
        click.echo(text_table(result))
        click.echo(f"\nreport: {report_path}  metrics: {metrics_path}")


@cli.command("eval", context_settings=CONTEXT)
@click.argument("golden", type=click.Path(exists=True, dir_okay=False))
@click.option("--mapping", "-M", "mapping_path", type=click.Path(exists=True, dir_okay=False), help="Label mapping YAML [default: mapping.yaml beside GOLDEN].")
@click.option("--output", "-o", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory (e.g. runs/NAME); resumable.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1))
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N items with known labels, in file order (no sampling).")
@click.option("--sample", type=click.IntRange(min=1), help="A seeded random sample of N items with known labels (--seed), kept in file order.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--thresholds", "thresholds_path", type=click.Path(exists=True, dir_okay=False), help="Score thresholds (cotmod tune) to decide with.")
@click.option("--overwrite", is_flag=True, help="Start over: discard the run directory's verdicts, dead letters, items, metrics and report first.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
@_endpoint_options
def eval_cmd(golden: str, mapping_path: str | None, run_dir: str, concurrency: int | None, limit: int | None, sample: int | None, seed: int, thresholds_path: str | None, overwrite: bool, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Run GOLDEN (JSONL/CSV with expected labels) through the engine and measure it.

    Predictions go through the batch runner (cached, resumable) into the run directory with a
    manifest; metrics per label and rule with 95% bootstrap CIs, AUPRC/ROC-AUC, calibration and
    root-cause analysis go to metrics.json, report.html and the terminal.

    With -p/--policy only those policies are evaluated: each label keeps the selected ones of
    its policies; labels none of them decides are left out. Exits 1 (metrics still written) when
    some items were not decided (error verdicts).

    A run directory holding verdicts of another configuration (policies, prompt, model,
    sampling) or golden set is refused (exit 2) and left untouched: use another --output, or
    --overwrite to start over. A label whose decided items are all positive (or all negative)
    is warned about: its precision (or recall) is meaningless.
    """
    from .._config import cotmod_home
    from ..engine._cache import SqliteCache
    from ..engine._moderator import AsyncModerator
    from ..evals._harness import run_eval

    mapping_file = Path(mapping_path) if mapping_path else Path(golden).parent / "mapping.yaml"
    if not mapping_file.exists():
        raise click.UsageError(f"no --mapping given and {mapping_file} does not exist")
    settings = _settings(**kw)
    if concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    cache = SqliteCache(cotmod_home() / "cache.sqlite")
    try:
        mod = AsyncModerator(settings.guidelines, settings=settings, cache=cache)
        show = sys.stderr.isatty() and not as_json
        if show:
            from ._progress import RunProgress

            with RunProgress() as bar:
                run_eval(mod, golden, mapping_file, run_dir, policies=policies, limit=limit, on_progress=bar.update, overwrite=overwrite,
                         sample=sample, seed=seed)
        else:
            run_eval(mod, golden, mapping_file, run_dir, policies=policies, limit=limit, overwrite=overwrite, sample=sample, seed=seed)
    finally:
        cache.close()
    result = _metrics(run_dir, thresholds_path)
    _write_reports(result, Path(run_dir), as_json)
    _one_class_warnings("eval", result)
    _exit_if_unfinished("eval", result)


def _one_class_warnings(command: str, result: EvalResult) -> None:
    """A warning per label whose decided items are all of one class (precision or recall mean nothing)."""
    from ..evals._report import one_class_notes

    for line in one_class_notes(result):
        click.echo(f"cotmod {command}: warning: {line}", err=True)


def _exit_if_unfinished(command: str, result: EvalResult) -> None:
    """Exit 1 (after everything was written) when the run has items without a verdict (error
    verdicts, or not judged yet) or never finished, saying so on stderr."""
    from ..evals._report import unfinished_note

    note = unfinished_note(result)
    if note:
        click.echo(f"cotmod {command}: {note}", err=True)
        sys.exit(EXIT_UNDECIDED)


def _metrics(run_dir: str, thresholds_path: str | None) -> Any:
    """A run's metrics, decided by the thresholds file when given, with a notice naming the
    policies it has thresholds for that the run did not judge (they change nothing: a typo, or a
    file tuned for other policies); the run's policies come from the manifest the metrics read."""
    from .._config import classifier_thresholds_notice
    from ..engine._thresholds import load_thresholds
    from ..evals._harness import compute_metrics

    thresholds = load_thresholds(thresholds_path)
    kind_notice = classifier_thresholds_notice(thresholds_path) if thresholds_path else None
    if kind_notice:
        click.echo(kind_notice, err=True)
    result = compute_metrics(run_dir, thresholds=thresholds)
    judged = result.manifest.policies
    unused = sorted(pid for pid in thresholds if pid not in judged)
    if unused:
        click.echo(f"cotmod: notice: {thresholds_path} has thresholds for {', '.join(unused)}, which this run did not judge "
                   f"(it judged {', '.join(sorted(judged)) or 'no policy'}): they change nothing", err=True)
    return result


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--thresholds", "thresholds_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def report(run_dir: str, thresholds_path: str | None, as_json: bool) -> None:
    """Recompute metrics and the HTML report of a run directory (no model calls).

    Exits 1 (metrics.json and report.html still written, the table still printed) when the run
    has items without a verdict (error verdicts, or not judged yet: an incomplete run); the
    metrics then cover only the decided items.
    """
    result = _metrics(run_dir, thresholds_path)
    _write_reports(result, Path(run_dir), as_json)
    _one_class_warnings("report", result)
    _exit_if_unfinished("report", result)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Thresholds YAML to write.")
@click.option("--target-precision", type=FloatRange(0, 1), help="Review threshold: lowest reaching this precision.")
@click.option("--cost-fp", type=FloatRange(min=0), help="Cost of a false positive (with --cost-fn).")
@click.option("--cost-fn", type=FloatRange(min=0), help="Cost of a false negative.")
@click.option("--auto-precision", type=FloatRange(0, 1), default=0.99, show_default=True, help="Auto-action threshold: lowest reaching this precision.")
@click.option("--json", "as_json", is_flag=True)
def tune(run_dir: str, output: str, target_precision: float | None, cost_fp: float | None, cost_fn: float | None, auto_precision: float, as_json: bool) -> None:
    """Choose per-policy score thresholds from a run, with bands auto-action / review / allow.

    Each label's operating point is shown with its precision and recall (95% bootstrap CIs);
    the file records the policy versions it was tuned for. The run directory is only read.
    Apply them with `cotmod run/moderate --config` (thresholds = "FILE") or `cotmod eval --thresholds`.

    Exit 1 (the file is still written) when a label gets no threshold (none reaching
    --target-precision, or its decided items are all of one class, so a threshold would mean
    nothing): each is named and left out. Exit 1 too when the run has items without a verdict
    (error verdicts, or not judged yet): the thresholds then rest on the decided items only.
    """
    from ..evals._compare import tune as tune_fn
    from ..evals._compare import write_thresholds
    from ..evals._harness import compute_metrics

    # the predictions and scores are all tune needs: no metric CIs, and metrics.json is left as is
    result = compute_metrics(run_dir, bootstrap_rounds=0)
    data = tune_fn(result, target_precision=target_precision, cost_fp=cost_fp, cost_fn=cost_fn, auto_precision=auto_precision)
    write_thresholds(data, output)
    if as_json:
        click.echo(json.dumps(data.model_dump(mode="json"), indent=2))
    else:
        for label, ev in data.evidence.items():
            if not ev.reachable:
                click.echo(f"{label}: {ev.note}")
            else:
                click.echo(
                    f"{label}: review >= {_fmt_opt(ev.review)} (precision {ev.precision:.3f}{_fmt_ci(ev.precision_ci95)}, "
                    f"recall {ev.recall:.3f}{_fmt_ci(ev.recall_ci95)}), auto_action >= {_fmt_opt(ev.auto_action)}"
                )
        click.echo(f"wrote {output}")
    failed = False
    for label, ev in data.evidence.items():
        if ev.review is not None:
            continue
        failed = True
        pols = result.labels[label].policies
        left = [pid for pid in pols if pid not in data.thresholds]
        where = (
            f"the thresholds file leaves out {', '.join(left)}" if left
            else f"its policies ({', '.join(pols)}) take other labels' thresholds"
        )
        click.echo(f"{output}: label {label} has no threshold ({ev.note}): {where}", err=True)
    if result.undecided:
        failed = True
        click.echo(
            f"cotmod tune: warning: {run_dir}: {result.undecided} of {result.items} items not decided ({result.errors} error "
            f"verdicts, {result.missing} not judged yet): the thresholds were chosen on the "
            f"{result.items - result.undecided} decided items only",
            err=True,
        )
    elif result.manifest.complete is False:
        failed = True
        click.echo(f"cotmod tune: warning: {run_dir}: the run did not finish (manifest.json: complete is false)", err=True)
    if failed:
        sys.exit(EXIT_UNDECIDED)


def _fmt_opt(v: float | None) -> str:
    return "none reaches the auto precision" if v is None else f"{v:.3f}"


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _fmt_delta_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"


@cli.command(context_settings=CONTEXT)
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--fail-on",
    multiple=True,
    help="Regression rule, e.g. 'precision drop > 2' (points; any label) or 'benign_no_flag drop > 2' "
    "(attribution: benign_no_flag, harmful_flagged, own_policy; triage: triage_own_policy_reached, "
    "triage_benign_none); exit 1 if met.",
)
@click.option("--json", "as_json", is_flag=True)
def compare(run_a: str, run_b: str, fail_on: tuple[str, ...], as_json: bool) -> None:
    """Compare two runs on the same golden set: deltas B−A with 95% CIs, McNemar, flipped items,
    the attribution figures (benign items with no flag, policies blamed per harmful item,
    per-policy attribution precision) and, when both runs triaged, triage's reach (harmful items
    sent to one of their own policies, benign items sent to none), with paired-bootstrap CIs.

    Every figure is paired on the items both runs decided (n). Items a run left undecided
    (error verdicts, or not judged yet: an interrupted run) are counted per run on stderr and
    in --json (a_coverage, b_coverage).

    Exit 1 when a --fail-on rule is met, when a rule cannot be measured on these runs, or when
    either run has undecided items (a gate does not pass on part of a run); all three are the
    same exit code 1 and are all reported, regressions first. Exit 0 only when none applies;
    exit 2 for a usage mistake (a bad rule, runs of different golden sets)."""
    from ..evals._compare import compare_runs

    data = compare_runs(run_a, run_b, fail_on=list(fail_on))
    if as_json:
        click.echo(json.dumps(data.model_dump(mode="json"), indent=2))
    else:
        click.echo(f"A {run_a} ({data.a_manifest['prompt_fingerprint']})  vs  B {run_b} ({data.b_manifest['prompt_fingerprint']})")
        click.echo(f"paired on the {data.n_paired} items both runs decided")
        for label, e in data.labels.items():
            click.echo(f"{label} (n={e.n_paired}, McNemar p={e.mcnemar.p_value:.4f}, {len(e.flipped)} flipped)")
            for metric, d in e.metrics.items():
                click.echo(f"  {metric:<9} {d.a:.3f} -> {d.b:.3f}  delta {d.delta:+.3f}{_fmt_delta_ci(d.ci95)}")
        if data.attribution is not None:
            at = data.attribution
            click.echo(f"attribution (n={at.n_paired}: {at.harmful} harmful, {at.benign} benign)")
            for metric, d in at.metrics.items():
                click.echo(f"  {metric:<22} {d.a:.3f} -> {d.b:.3f}  delta {d.delta:+.3f}{_fmt_delta_ci(d.ci95)}")
            moved = {pid: d for pid, d in at.per_policy_precision.items() if d.delta}
            if moved:
                click.echo(
                    "  attribution precision: "
                    + ", ".join(f"{pid} {d.a:.3f} -> {d.b:.3f} ({d.delta:+.3f}{_fmt_delta_ci(d.ci95)})" for pid, d in moved.items())
                )
        if data.triage is not None:
            tr = data.triage
            click.echo(f"triage reach (n={tr.n_paired} triaged in both: {tr.harmful} harmful, {tr.benign} benign)")
            for metric, d in tr.metrics.items():
                click.echo(f"  {metric:<24} {d.a:.3f} -> {d.b:.3f}  delta {d.delta:+.3f}{_fmt_delta_ci(d.ci95)}")
            for side, ids in (("A", tr.reached_a_only), ("B", tr.reached_b_only)):
                if ids:
                    more = f" (+{len(ids) - 10} more)" if len(ids) > 10 else ""
                    click.echo(f"  own policy reached by {side} only: {len(ids)} ({', '.join(ids[:10])}{more})")
        for f in data.failures:
            click.echo(click.style("REGRESSION ", fg="red") + f)
    for rule in data.unmeasured:
        click.echo(f"cotmod compare: --fail-on {rule}: not measurable on these runs, so the gate does not pass", err=True)
    for side, path, cov in (("A", run_a, data.a_coverage), ("B", run_b, data.b_coverage)):
        if cov is None or cov.decided_all:
            continue
        what = (
            f"{cov.undecided} of {cov.items} items not decided ({cov.errors} error verdicts, {cov.missing} not judged yet)"
            if cov.undecided else "the run did not finish (manifest.json: complete is false)"
        )
        click.echo(
            f"cotmod compare: {side} {path}: {what}: the figures cover only the {data.n_paired} items both runs decided, "
            "so the comparison does not pass",
            err=True,
        )
    if not data.ok:
        sys.exit(EXIT_UNDECIDED)
