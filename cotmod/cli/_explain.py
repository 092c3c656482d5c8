"""``cotmod classifier explain``: a classifier's false positives and negatives explained by cotmod's
verdict on the mapped policy, grouped by the rule or exception that decides them.

Exit codes: 0 every sampled error got a verdict; 1 some got none (error verdicts, failed
requests: listed, and sent again with --retry-errors); 2 a usage, configuration or input mistake;
3 a runtime failure stopped the run (verdicts written so far are kept: rerun to resume).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from .._exceptions import ConfigError, InputError
from ._app import (
    CONTEXT,
    EXIT_OK,
    EXIT_UNDECIDED,
    _drive_run,
    _endpoint_options,
    _notice,
    _runner_options,
    _settings,
)
from ._monitor import _drop_options, _pairs, classifier


def _default_run_dir(scores: str) -> Path:
    name = Path(scores).name
    stem = re.sub(r"(\.(jsonl|csv|parquet|json|txt))?(\.gz)?$", "", name, flags=re.I) or "scores"
    return Path(f"cotmod-explain-{stem}")


def _label_policy(
    pairs: tuple[str, ...], manifest: str | None, thresholds_path: str, log_labels: tuple[str, ...]
) -> dict[str, str]:
    """Label -> policy: --label-policy over the manifest's label maps; without either, the
    thresholds file's label_map (written by classifier tune --label-map)."""
    from .._yamlfile import read_yaml_mapping
    from ..classifiers._explain import load_label_map

    given = _pairs(pairs, "--label-policy", "LABEL=POLICY")
    if manifest:
        mapped = load_label_map(manifest)
        present = {lb: pid for lb, pid in mapped.items() if lb in log_labels}
        if not present and not given:
            raise InputError(
                f"{manifest}: none of its mapped labels ({', '.join(mapped) or 'none'}) is in the score log "
                f"(labels: {', '.join(log_labels)})"
            )
        skipped = [lb for lb in mapped if lb not in log_labels]
        if skipped:
            _notice(f"{manifest}: label(s) {', '.join(skipped)} not in the score log, left out")
        return {**present, **given}
    if given:
        return given
    data = read_yaml_mapping(Path(thresholds_path), "classifier thresholds file")
    lmap = data.get("label_map")
    if isinstance(lmap, dict) and lmap:
        _notice(f"labels mapped to policies by {thresholds_path}'s label_map")
        return {str(k): str(v) for k, v in lmap.items()}
    raise click.UsageError("give --manifest ENFORCEMENT.yaml or --label-policy LABEL=POLICY (the policy each label enforces)")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _describe(kind: str, g: Any) -> str:
    crit = f"{g.criterion} ({g.title})" if g.title else (g.criterion or "")
    if g.outcome == "violates":
        what = f"violates {crit}".rstrip()
        return what + (": policy agrees, likely a label error or a policy/label disagreement" if kind == "fp" else ": the classifier missed it")
    if g.outcome == "exception":
        return f"allowed by exception {crit}" + (": policy also allows, likely label noise" if kind == "fn" else "")
    return "no rule applies" + (": policy also allows, likely label noise" if kind == "fn" else "")


def _print(report: Any) -> None:
    for le in report.labels:
        auto = "" if le.auto_action is None else f", auto_action >= {le.auto_action:.4f}"
        click.echo(click.style(f"{le.label} -> {le.policy} {le.policy_version} (review >= {le.review:.4f}{auto})", bold=True))
        for ke in (le.fp, le.fn):
            name = ke.kind.upper() + "s"
            head = f"{le.label}: {ke.errors} {name}"
            notes = []
            if ke.no_text:
                notes.append(f"{ke.no_text} without text, not explainable")
            if ke.unlisted:
                notes.append(f"{ke.unlisted} not listed by the error report")
            if notes:
                head += f" ({'; '.join(notes)})"
            if not ke.sampled:
                click.echo(f"  {head}: nothing to explain")
                continue
            head += f", sampled {ke.sampled}"
            if ke.undecided:
                shown = ", ".join(ke.undecided_ids[:5]) + (" ..." if len(ke.undecided_ids) > 5 else "")
                head += click.style(f", {ke.undecided} without a verdict ({shown})", fg="yellow")
            click.echo(f"  {head}")
            if not ke.decided:
                continue
            lo, hi = ke.violates_ci95
            says = "policy says they violate (likely label errors)" if ke.kind == "fp" else "policy says they violate (the classifier missed them)"
            click.echo(f"    {says}: {ke.violates} of {ke.decided}, {_pct(ke.violates_share)} [{_pct(lo)}, {_pct(hi)}]")
            for g in ke.groups:
                eg = ", ".join(g.example_ids)
                click.echo(f"    {_pct(g.share):>4} [{_pct(g.ci95[0])}, {_pct(g.ci95[1])}] {g.count:>4}  {_describe(ke.kind, g)}; e.g. {eg}")


def _nothing_to_explain(report: Any) -> str | None:
    """The line saying why nothing was sampled, when no label has an error to explain."""
    if any(ke.sampled for le in report.labels for ke in (le.fp, le.fn)):
        return None
    why = []
    for le in report.labels:
        if not le.known:
            why.append(f"{le.label}: no ground truth in the score log (label_{le.label} or labels.{le.label})")
        else:
            why.append(f"{le.label}: {le.fp.errors} FPs and {le.fn.errors} FNs at review >= {le.review:.4f} on {le.known} rows with ground truth")
    return f"no false positives or negatives to explain ({'; '.join(why)})"


@classifier.command("explain", context_settings=CONTEXT)
@_drop_options("cascade")  # the policy's own verdict on each error, never one routed by the classifier's scores
@click.argument("scores", type=click.Path(exists=True, dir_okay=False))
@click.option("--thresholds", "thresholds_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Thresholds per label (cotmod classifier tune).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), help="Enforcement manifest: each policy's classifier.label_map says which labels it covers.")
@click.option("--label-policy", "label_policy", multiple=True, help="LABEL=POLICY (repeatable): the policy a label enforces (over the manifest's).")
@click.option("--label", "-l", "labels", multiple=True, help="Explain only this label (repeatable) [default: every mapped label].")
@click.option("--sample", "sample", type=click.IntRange(min=1), default=50, show_default=True, help="Errors sampled per label and kind (FP, FN).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Sampling seed (the same seed gives the same sample).")
@click.option("--output", "-o", "run_dir", type=click.Path(file_okay=False), help="Run directory: verdicts (resumable) and report.json [default: ./cotmod-explain-<SCORES name>].")
@click.option("--id-field", default="id", show_default=True)
@click.option("--time-field", default="timestamp", show_default=True)
@click.option("--text-field", default="text", show_default=True, help="Field with the item's text (the verdict needs it).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), help="Input format [default: from the extension].")
@_runner_options(
    spend=False,
    retry_help="Send again the sampled items that got no verdict in an earlier run.",
    overwrite_help="Discard the run directory's earlier verdicts first.",
    json_help="Print the report as JSON.",
)
@_endpoint_options
def classifier_explain(
    scores: str,
    thresholds_path: str,
    manifest: str | None,
    label_policy: tuple[str, ...],
    labels: tuple[str, ...],
    sample: int,
    seed: int,
    run_dir: str | None,
    id_field: str,
    time_field: str,
    text_field: str,
    fmt: str | None,
    concurrency: int | None,
    rpm: float | None,
    tpm: float | None,
    retry_errors: bool,
    overwrite: bool,
    cache_path: str | None,
    no_cache: bool,
    as_json: bool,
    progress: bool | None,
    policies: tuple[str, ...],
    **kw: Any,
) -> None:
    """Explain a classifier's false positives and negatives with the policy each label enforces.

    A seeded sample of each label's errors (at its review threshold) gets cotmod's verdict on
    the mapped policy, grouped by what decides it: a rule the item violates (for a false
    positive: the policy agrees with the classifier, a likely label error; for a false negative:
    the classifier missed it), an exception that allows it, or no rule. Each group: its share of
    the decided items with a Wilson 95% CI, and example ids. Errors without text are counted as
    not explainable; items without a verdict are listed, never dropped.

    Labels map to policies by --label-policy, --manifest (classifier.label_map), or else the
    thresholds file's label_map; -p keeps only labels mapped to those policies. Resumable: run
    the same command again and only items without a verdict are sent.

    \b
    Examples:
      cotmod classifier explain scores.jsonl --thresholds th.yaml --label-policy spam=spam_scams
      cotmod classifier explain scores.jsonl --thresholds th.yaml --manifest enforcement.yaml --sample 100 -o rca/
    """
    from .._config import cotmod_home
    from ..classifiers._errors import load_classifier_bands
    from ..classifiers._explain import check_explain_args, explain_errors_async
    from ..classifiers._scores import read_scores
    from ..engine._cache import SqliteCache
    from . import _moderate

    bands = load_classifier_bands(thresholds_path)
    log = read_scores(scores, id_field=id_field, time_field=time_field, text_field=text_field, fmt=fmt)
    lmap = _label_policy(label_policy, manifest, thresholds_path, log.labels)
    if labels:
        unknown = [lb for lb in labels if lb not in lmap]
        if unknown:
            raise ConfigError(f"--label {unknown[0]}: not mapped to a policy (mapped: {', '.join(lmap) or 'none'})")
        lmap = {lb: lmap[lb] for lb in labels}
    settings = _settings(**kw)
    # a cascade (from the config) would decide items by the classifier's scores, not the policy
    update: dict[str, Any] = {"cascade": None}
    if concurrency is not None:
        update["concurrency"] = concurrency
    settings = settings.model_copy(update=update)
    cache = None if no_cache else SqliteCache(cache_path or cotmod_home() / "cache.sqlite")
    mod = _moderate._make_moderator(settings, cache)
    if policies:
        mod.policies.select(list(policies))  # fails on an unknown id
        lmap = {lb: pid for lb, pid in lmap.items() if pid in policies}
        if not lmap:
            raise ConfigError(f"-p {', '.join(policies)}: no label is mapped to these policies")
    check_explain_args(log, bands, moderator=mod, label_policy=lmap, sample=sample)  # before saying what runs
    out = Path(run_dir) if run_dir else _default_run_dir(scores)
    _notice(f"explaining {', '.join(f'{lb} ({pid})' for lb, pid in lmap.items())}; verdicts in {out}/ (rerun the same command to resume)")
    show = progress if progress is not None else (sys.stderr.isatty() and not as_json)

    kwargs: dict[str, Any] = {
        "moderator": mod, "label_policy": lmap, "sample": sample, "seed": seed, "run_dir": out,
        "rpm": rpm, "tpm": tpm, "retry_errors": retry_errors, "overwrite": overwrite,
    }

    def work(on_progress: Any) -> Any:
        progress_ = None if on_progress is None else (lambda _pid, s, n: on_progress(s, n))
        return explain_errors_async(log, bands, on_progress=progress_, **kwargs)

    report = _drive_run(work, moderator=mod, cache=cache, show=show, written_to=f"{out}/", as_json=as_json)
    code = EXIT_UNDECIDED if report.undecided else EXIT_OK
    nothing = _nothing_to_explain(report)
    if as_json:
        data = report.model_dump(mode="json")
        data["undecided"] = report.undecided
        data["exit_code"] = code
        click.echo(json.dumps(data, indent=2))
        if nothing:
            _notice(f"{nothing}; report.json in {out}/")
    elif nothing:
        click.echo(f"{nothing}; report.json in {out}/")
    else:
        _print(report)
        click.echo(f"verdicts and report.json in {out}/")
    if report.undecided:
        click.echo(
            f"{report.undecided} sampled item(s) without a verdict (see {out}/verdicts-*.errors.jsonl; --retry-errors sends them again)",
            err=True,
        )
        click.get_current_context().exit(code)
