"""The ``cotmod`` command line. Library errors become one clear line and exit code 1 here, and
only here; user mistakes never print a traceback (set COTMOD_DEBUG=1 to see one)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from ._exceptions import CotmodError, InputError

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns cotmod errors into clean CLI errors at the boundary."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CotmodError as exc:
            if os.environ.get("COTMOD_DEBUG"):
                raise
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="cotmod", prog_name="cotmod")
def cli() -> None:
    """cotmod: chain-of-thought content moderation.

    Policies in guidelines/ (YAML) compile into prompts; an LLM (an OpenAI-compatible endpoint,
    or the embedded local model) returns schema-valid verdicts with its reasoning.

    \b
    Endpoint: --base-url/--model/--api-key, or COTMOD_BASE_URL, COTMOD_MODEL, COTMOD_API_KEY,
    or a cotmod.toml. With no endpoint the embedded model runs on 127.0.0.1.
    """


def _endpoint_options(f: F) -> F:
    opts = [
        click.option("--guidelines", "-g", type=click.Path(exists=True), help="Policy directory or file [default: the starter pack]."),
        click.option("--policy", "-p", "policies", multiple=True, help="Policy id to apply (repeatable) [default: all]."),
        click.option("--base-url", envvar="COTMOD_BASE_URL", help="OpenAI-compatible endpoint (default: embedded local model)."),
        click.option("--model", "-m", envvar="COTMOD_MODEL", help="Model name at the endpoint."),
        click.option("--api-key", envvar="COTMOD_API_KEY", help="API key (prefer the COTMOD_API_KEY env var)."),
        click.option("--local-model", help="Embedded model to use when no endpoint is set (see: cotmod models list)."),
        click.option("--strategy", type=click.Choice(["per_policy", "combined"]), help="One call per policy, or all in one call."),
        click.option("--logprobs/--no-logprobs", default=None, help="Score decisions by token log-probabilities (servers that return them)."),
        click.option(
            "--votes",
            type=click.IntRange(1, 25),
            default=None,
            help="Self-consistency: sample K verdicts per policy call (at --vote-temperature); the majority decides and the score is the vote share.",
        ),
        click.option("--vote-temperature", type=click.FloatRange(0, 2, min_open=True), default=None, help="Sampling temperature of the votes [default: 0.7]."),
        click.option("--config", "config_file", type=click.Path(), help="TOML config file."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _settings(**kw: Any) -> Any:
    from ._config import Settings

    config_file = kw.pop("config_file", None)
    return Settings.load(config_file, **{k: v for k, v in kw.items() if v is not None})


def _check_text(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: text is not valid UTF-8") from None
    return text


def _read_items(path: str) -> Iterator[dict[str, Any]]:
    """Items from a text file (one per line) or JSONL (objects with id and text)."""
    p = Path(path)
    is_jsonl = p.suffix in (".jsonl", ".ndjson")
    with p.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{n}: not valid UTF-8 (byte {exc.start})") from None
            if not line.strip():
                continue
            if is_jsonl or (line.lstrip().startswith("{") and p.suffix != ".txt"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or "text" not in obj:
                    raise InputError(f"{path}:{n}: expected an object with a 'text' field")
                if not isinstance(obj["text"], str):
                    raise InputError(f"{path}:{n}: field 'text' must be a string")
                yield {"id": str(obj.get("id", n)), "text": obj["text"]}
            else:
                yield {"id": str(n), "text": line}


def _print_verdict(v: Any) -> None:
    head = click.style(v.item_id, bold=True)
    if v.status != "ok":
        click.echo(f"{head}  " + click.style("ERROR", fg="red", bold=True) + f"  {v.error.message if v.error else ''}")
        return
    label = click.style("VIOLATES", fg="red", bold=True) if v.violates else click.style("SAFE", fg="green", bold=True)
    esc = click.style("  escalate", fg="yellow") if v.escalate else ""
    click.echo(f"{head}  {label}  action={v.action}{esc}  ({v.latency_ms / 1000:.1f}s, {v.usage.total_tokens} tokens)")
    for d in v.decisions:
        if d.violates:
            click.echo(f"  - {d.policy_id} {d.policy_version}: {', '.join(d.rule_ids)} severity={d.severity} -> {d.action} (confidence {d.confidence:.2f})")
            click.echo(f"    {d.rationale}")
    for step in v.reasoning:
        click.echo(click.style(f"    · {step}", dim=True))
    if v.truncated:
        click.echo(click.style(f"  (item truncated: {v.truncated.kept_tokens} of {v.truncated.item_tokens} tokens judged)", fg="yellow"))


@cli.command(context_settings=CONTEXT)
@click.argument("text", required=False)
@click.option("--file", "-f", "file_", type=click.Path(exists=True, dir_okay=False), help="Text file (one item per line) or JSONL with id/text.")
@click.option("--json", "as_json", is_flag=True, help="Print verdicts as JSON (one object per line).")
@_endpoint_options
def moderate(text: str | None, file_: str | None, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Moderate TEXT (or each item of --file) and print the verdicts.

    \b
    Examples:
      cotmod moderate "How do I kill a Python process?"
      cotmod moderate -p hate_speech -p violent_threats --json "some post"
      cotmod moderate --file examples/posts.jsonl
    """
    from ._engine import Moderator

    if (text is None) == (file_ is None):
        raise click.UsageError("give either TEXT or --file")
    if text is not None:
        items = [{"id": "text", "text": _check_text(text, "TEXT")}]
    else:
        assert file_ is not None
        items = list(_read_items(file_))
        if not items:
            raise InputError(f"{file_}: no items")
    settings = _settings(**kw)
    with Moderator(settings.guidelines, settings=settings) as mod:
        sel = list(policies) or None
        mod.policies.select(sel)  # fail fast on unknown ids
        show_progress = len(items) > 1 and not as_json and sys.stderr.isatty()
        for it in items:
            verdict = mod.moderate(it, policies=sel)
            if as_json:
                click.echo(verdict.model_dump_json())
            else:
                _print_verdict(verdict)
        if show_progress:
            click.echo(f"{len(items)} items", err=True)


@cli.command(context_settings=CONTEXT)
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Verdicts JSONL (appended; resumable).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "text"]), help="Input format [default: from the extension].")
@click.option("--id-field", default="id", show_default=True, help="Column/field holding the item id.")
@click.option("--text-field", default="text", show_default=True, help="Column/field holding the text.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Maximum requests in flight [default: settings, 4].")
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="Requests-per-minute cap.")
@click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="Tokens-per-minute cap.")
@click.option("--retry-errors", is_flag=True, help="Reprocess only the items in <output>.errors.jsonl.")
@click.option("--overwrite", is_flag=True, help="Discard an existing output (and its errors/manifest) first.")
@click.option("--limit", type=click.IntRange(min=1), help="Process at most N new items.")
@click.option("--price-in", type=float, help="USD per 1M input tokens (default: built-in table).")
@click.option("--price-out", type=float, help="USD per 1M output tokens.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), help="Result cache file [default: $COTMOD_HOME/cache.sqlite].")
@click.option("--no-cache", is_flag=True, help="Do not read or write the result cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when a terminal].")
@_endpoint_options
def run(
    input_path: str,
    output: str,
    fmt: str | None,
    id_field: str,
    text_field: str,
    concurrency: int | None,
    rpm: float | None,
    tpm: float | None,
    retry_errors: bool,
    overwrite: bool,
    limit: int | None,
    price_in: float | None,
    price_out: float | None,
    cache_path: str | None,
    no_cache: bool,
    as_json: bool,
    progress: bool | None,
    policies: tuple[str, ...],
    **kw: Any,
) -> None:
    """Moderate every item of INPUT (JSONL, CSV, Parquet or text) into a verdict file, at scale.

    Resumable: kill it at any time and run the same command again; the output keeps exactly one
    verdict per input id. Failures go to <output>.errors.jsonl (see --retry-errors). Unchanged
    items are served from the result cache without a model call.

    \b
    Examples:
      cotmod run posts.jsonl -o verdicts.jsonl -p hate_speech -c 8 --rpm 600
      cotmod run posts.csv --text-field body --id-field post_id -o out.jsonl --json
    """
    import asyncio

    from ._cache import SqliteCache
    from ._config import cotmod_home
    from ._engine import AsyncModerator
    from ._runner import Runner

    settings = _settings(**kw)
    if concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    cache = None if no_cache else SqliteCache(cache_path or cotmod_home() / "cache.sqlite")
    mod = AsyncModerator(settings.guidelines, settings=settings, cache=cache)
    runner = Runner(mod, rpm=rpm, tpm=tpm, price_in=price_in, price_out=price_out)
    show = progress if progress is not None else (sys.stderr.isatty() and not as_json)

    async def go() -> Any:
        try:
            if not show:
                return await runner.run(
                    input_path, output, policies=list(policies) or None, id_field=id_field, text_field=text_field,
                    fmt=fmt, retry_errors=retry_errors, overwrite=overwrite, limit=limit,
                )
            from ._progress import RunProgress

            with RunProgress() as bar:
                return await runner.run(
                    input_path, output, policies=list(policies) or None, id_field=id_field, text_field=text_field,
                    fmt=fmt, retry_errors=retry_errors, overwrite=overwrite, limit=limit, on_progress=bar.update,
                )
        finally:
            await mod.aclose()

    try:
        summary = asyncio.run(go())
    finally:
        if cache is not None:
            cache.close()
    data = summary.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _print_summary(data)


def _print_summary(d: dict[str, Any]) -> None:
    lat = d["latency_ms"]
    cost = "unknown price" if d["cost_usd"] is None else f"${d['cost_usd']:.4f}"

    def fmt_ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    click.echo(f"output: {d['output']}")
    click.echo(
        f"processed {d['processed']} (resumed past {d['resumed_skipped']}), errors {d['errors']}, "
        f"dead-lettered {d['dead_lettered']}, cache hits {d['cache_hits']}, {d['items_per_s'] or 0:.2f} items/s"
    )
    click.echo(f"decisions: {d['by_decision']}  actions: {d['by_action']}")
    for pid, counts in d["by_policy"].items():
        click.echo(f"  {pid}: {counts}")
    click.echo(
        f"tokens in/out {d['tokens']['prompt']}/{d['tokens']['completion']}, cost {cost}; latency ms "
        f"p50 {fmt_ms(lat['p50'])} p95 {fmt_ms(lat['p95'])} p99 {fmt_ms(lat['p99'])}; transport retries "
        f"{d['transport_retries']}, re-asks {d['reasks']}, 429s {d['throttled_429']}"
    )


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def lint(paths: tuple[str, ...], as_json: bool, strict: bool) -> None:
    """Check policy files (default: the starter pack) against the schema and semantic rules.

    Prints FILE:LINE: FIELD: MESSAGE for every problem; exits 1 on any error.
    """
    from ._lint import lint_paths
    from ._policy import default_guidelines_dir

    report = lint_paths(list(paths) or [default_guidelines_dir()])
    failed = bool(report.errors or (strict and report.warnings))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for e in report.errors:
            click.echo(click.style("error ", fg="red") + str(e))
        for w in report.warnings:
            click.echo(click.style("warning ", fg="yellow") + str(w))
        status = "FAILED" if failed else "ok"
        click.echo(
            f"{status}: {len(report.files)} file(s), {len(report.policies)} valid polic(ies), "
            f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
        )
    if failed:
        sys.exit(1)


@cli.command(context_settings=CONTEXT)
@click.argument("text", default="<example content>")
@click.option("--json", "as_json", is_flag=True, help="Print messages, schema and counts as JSON.")
@click.option("--vars", "show_vars", is_flag=True, help="List the variables each template uses.")
@_endpoint_options
def render(text: str, as_json: bool, show_vars: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Show exactly the prompt(s) the model receives for TEXT, with token counts."""
    from ._compiler import REASK_TEMPLATE, SYSTEM_TEMPLATE, USER_TEMPLATE
    from ._engine import AsyncModerator
    from ._tokens import count_tokens, token_counter_name

    settings = _settings(**kw)
    mod = AsyncModerator(settings.guidelines, settings=settings)
    prompts = mod.render(_check_text(text, "TEXT"), list(policies) or None)
    if show_vars:
        for name in (SYSTEM_TEMPLATE, USER_TEMPLATE, REASK_TEMPLATE):
            click.echo(f"{name}: {', '.join(sorted(mod.templates.variables(name)))}")
        return
    out: list[dict[str, Any]] = []
    for p in prompts:
        per_message = [count_tokens(m["content"]) for m in p.messages]
        by_role: dict[str, int] = {}
        for m, n in zip(p.messages, per_message, strict=True):
            by_role[m["role"]] = by_role.get(m["role"], 0) + n
        out.append(
            {
                "policies": p.policies.versions(),
                "fingerprint": p.fingerprint,
                "messages": p.messages,
                "tokens": by_role,  # per role, summed over that role's messages (few-shot turns included)
                "message_tokens": per_message,
                "truncated": p.truncated,
                "output_schema": p.output_schema,
            }
        )
    if as_json:
        click.echo(json.dumps({"token_counter": token_counter_name(), "prompts": out}, indent=2, ensure_ascii=False))
        return
    for o in out:
        click.echo(click.style(f"=== {', '.join(f'{k} {v}' for k, v in o['policies'].items())}  fingerprint {o['fingerprint']}", bold=True))
        for m, n in zip(o["messages"], o["message_tokens"], strict=True):
            click.echo(click.style(f"--- {m['role']} ({n} tokens, {token_counter_name()})", fg="cyan"))
            click.echo(m["content"])
        if o["truncated"]:
            click.echo(click.style("(item truncated to the token budget)", fg="yellow"))


@cli.command(context_settings=CONTEXT)
@click.argument("which", type=click.Choice(["verdict", "policy", "decision"]))
@click.option("--policy", "-p", "policies", multiple=True, help="For 'decision': the policies (default: all).")
def schema(which: str, policies: tuple[str, ...]) -> None:
    """Print a JSON Schema: the verdict cotmod returns, the policy file format, or the model's
    decision output for some policies."""
    from ._lint import default_policies
    from ._policy import policy_json_schema
    from ._verdict import decision_schema, verdict_json_schema

    if which == "verdict":
        data = verdict_json_schema()
    elif which == "policy":
        data = policy_json_schema()
    else:
        data = decision_schema(default_policies().select(list(policies) or None))
    click.echo(json.dumps(data, indent=2))


def _write_reports(metrics: dict[str, Any], run_dir: Path, as_json: bool) -> None:
    from ._report import html_report, text_table

    (run_dir / "report.html").write_text(html_report(metrics), encoding="utf-8")
    if as_json:
        click.echo(json.dumps({k: v for k, v in metrics.items() if k != "predictions"}, indent=2))
    else:
        click.echo(text_table(metrics))
        click.echo(f"\nreport: {run_dir / 'report.html'}  metrics: {run_dir / 'metrics.json'}")


@cli.command("eval", context_settings=CONTEXT)
@click.argument("golden", type=click.Path(exists=True, dir_okay=False))
@click.option("--mapping", "-M", "mapping_path", type=click.Path(exists=True, dir_okay=False), help="Label mapping YAML [default: mapping.yaml beside GOLDEN].")
@click.option("--output", "-o", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory (e.g. runs/NAME); resumable.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1))
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N items with known labels.")
@click.option("--thresholds", "thresholds_path", type=click.Path(exists=True, dir_okay=False), help="Score thresholds (cotmod tune) to decide with.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
@_endpoint_options
def eval_cmd(golden: str, mapping_path: str | None, run_dir: str, concurrency: int | None, limit: int | None, thresholds_path: str | None, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Run GOLDEN (JSONL/CSV with expected labels) through the engine and measure it.

    Predictions go through the batch runner (cached, resumable) into the run directory with a
    manifest; metrics per label and rule with 95% bootstrap CIs, AUPRC/ROC-AUC, calibration and
    root-cause analysis go to metrics.json, report.html and the terminal.
    """
    from ._cache import SqliteCache
    from ._config import cotmod_home
    from ._engine import AsyncModerator
    from ._eval import compute_metrics, run_eval
    from ._thresholds import load_thresholds

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
                run_eval(mod, golden, mapping_file, run_dir, limit=limit, on_progress=bar.update)
        else:
            run_eval(mod, golden, mapping_file, run_dir, limit=limit)
    finally:
        cache.close()
    metrics = compute_metrics(run_dir, thresholds=load_thresholds(thresholds_path))
    _write_reports(metrics, Path(run_dir), as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--thresholds", "thresholds_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def report(run_dir: str, thresholds_path: str | None, as_json: bool) -> None:
    """Recompute metrics and the HTML report of a run directory (no model calls)."""
    from ._eval import compute_metrics
    from ._thresholds import load_thresholds

    metrics = compute_metrics(run_dir, thresholds=load_thresholds(thresholds_path))
    _write_reports(metrics, Path(run_dir), as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Thresholds YAML to write.")
@click.option("--target-precision", type=click.FloatRange(0, 1), help="Review threshold: lowest reaching this precision.")
@click.option("--cost-fp", type=click.FloatRange(min=0), help="Cost of a false positive (with --cost-fn).")
@click.option("--cost-fn", type=click.FloatRange(min=0), help="Cost of a false negative.")
@click.option("--auto-precision", type=click.FloatRange(0, 1), default=0.99, show_default=True, help="Auto-action threshold: lowest reaching this precision.")
@click.option("--json", "as_json", is_flag=True)
def tune(run_dir: str, output: str, target_precision: float | None, cost_fp: float | None, cost_fn: float | None, auto_precision: float, as_json: bool) -> None:
    """Choose per-policy score thresholds from a run, with bands auto-action / review / allow.

    Apply them with `cotmod run/moderate --config` (thresholds = "FILE") or `cotmod eval --thresholds`.
    """
    from ._compare import tune as tune_fn
    from ._compare import write_thresholds
    from ._eval import compute_metrics

    metrics = compute_metrics(run_dir, bootstrap_rounds=0)
    data = tune_fn(metrics, target_precision=target_precision, cost_fp=cost_fp, cost_fn=cost_fn, auto_precision=auto_precision)
    write_thresholds(data, output)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for label, ev in data["evidence"].items():
        if ev.get("reachable") is False:
            click.echo(f"{label}: {ev['note']}")
        else:
            click.echo(f"{label}: review >= {ev['review']:.3f} (precision {ev['precision']:.3f}, recall {ev['recall']:.3f}), auto_action >= {_fmt_opt(ev['auto_action'])}")
    click.echo(f"wrote {output}")


def _fmt_opt(v: float | None) -> str:
    return "none reaches the auto precision" if v is None else f"{v:.3f}"


@cli.command(context_settings=CONTEXT)
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("--fail-on", multiple=True, help="Regression rule, e.g. 'precision drop > 2' (points); exit 1 if met.")
@click.option("--json", "as_json", is_flag=True)
def compare(run_a: str, run_b: str, fail_on: tuple[str, ...], as_json: bool) -> None:
    """Compare two runs on the same golden set: deltas B−A with 95% CIs, McNemar, flipped items."""
    from ._compare import compare_runs

    data = compare_runs(run_a, run_b, fail_on=list(fail_on))
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"A {run_a} ({data['a_manifest']['prompt_fingerprint']})  vs  B {run_b} ({data['b_manifest']['prompt_fingerprint']})")
        for label, e in data["labels"].items():
            click.echo(f"{label} (n={e['n_paired']}, McNemar p={e['mcnemar']['p_value']:.4f}, {len(e['flipped'])} flipped)")
            for metric, d in e["metrics"].items():
                ci = d["ci95"]
                ci_s = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
                click.echo(f"  {metric:<9} {d['a']:.3f} -> {d['b']:.3f}  delta {d['delta']:+.3f}{ci_s}")
        for f in data["failures"]:
            click.echo(click.style("REGRESSION ", fg="red") + f)
    if data["failures"]:
        sys.exit(1)


@cli.command(context_settings=CONTEXT)
@click.argument("old")
@click.argument("new")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option("--repo", default=".", show_default=True, help="Git repository for revision arguments.")
def diff(old: str, new: str, fmt: str, repo: str) -> None:
    """Semantic diff of two policy bundles: directories, or git revisions (REV or REV:path).

    Rules, exceptions, definitions, severities/actions, escalation and examples are compared by
    stable ID; version bumps are checked (a changed policy with an unchanged version, or a removed
    rule without a major bump, is an error: exit 1).

    \b
    Examples:
      cotmod diff HEAD~1 HEAD
      cotmod diff old_guidelines/ guidelines/ --format markdown > CHANGELOG-policies.md
    """
    from ._diff import changelog_markdown, diff_policies, load_bundle

    a, label_a = load_bundle(old, repo=repo)
    b, label_b = load_bundle(new, repo=repo)
    diffs = diff_policies(a, b)
    errors = [e for d in diffs for e in d.errors]
    if fmt == "json":
        click.echo(json.dumps({"old": label_a, "new": label_b, "policies": [d.to_dict() for d in diffs], "errors": errors}, indent=2))
    elif fmt == "markdown":
        click.echo(changelog_markdown(diffs, label_a, label_b))
    else:
        for d in diffs:
            if d.status == "unchanged":
                continue
            click.echo(click.style(f"{d.policy_id}: {d.status} {d.old_version or ''} -> {d.new_version or ''}", bold=True) + (f" (needs {d.required_bump})" if d.required_bump else ""))
            for c in d.changes:
                click.echo(f"  {c.kind:<28} {c.detail}")
        for e in errors:
            click.echo(click.style("error ", fg="red") + e)
        if not any(d.status != "unchanged" for d in diffs):
            click.echo("no changes")
    if errors:
        sys.exit(1)


@cli.group(cls=_Group, context_settings=CONTEXT)
def guide() -> None:
    """The human labeling guide, compiled from the same policy files as the prompts."""


@guide.command("export", context_settings=CONTEXT)
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File to write [default: stdout].")
@click.option("--guidelines", "-g", type=click.Path(exists=True), help="Policy directory or file.")
@click.option("--policy", "-p", "policies", multiple=True, help="Policy id (repeatable) [default: all].")
def guide_export(fmt: str, output: str | None, guidelines: str | None, policies: tuple[str, ...]) -> None:
    """Export the reviewers' guide: definitions, rules, exceptions, examples, decision flow,
    severity → action and escalation tables, with versions and a fingerprint."""
    from ._guide import guide_html, guide_markdown
    from ._lint import load_policies
    from ._policy import default_guidelines_dir

    ps = load_policies([guidelines or default_guidelines_dir()]).select(list(policies) or None)
    text = guide_html(ps) if fmt == "html" else guide_markdown(ps)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)


@cli.group(cls=_Group, context_settings=CONTEXT)
def sync() -> None:
    """Keep every enforcement pathway bound to the current policy versions (enforcement.yaml)."""


@sync.command("check", context_settings=CONTEXT)
@click.argument("manifest", type=click.Path(dir_okay=False), default="enforcement.yaml")
@click.option("--json", "as_json", is_flag=True)
@_endpoint_options
def sync_check(manifest: str, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """List pathways bound to an old policy version or prompt fingerprint; exit 1 if any."""
    from ._engine import AsyncModerator
    from ._sync import check_manifest

    settings = _settings(**kw)
    findings = check_manifest(manifest, AsyncModerator(settings.guidelines, settings=settings))
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        for f in findings:
            click.echo(click.style("stale ", fg="red") + str(f))
        click.echo("in sync" if not findings else f"{len(findings)} stale binding(s)")
    if findings:
        sys.exit(1)


@sync.command("update", context_settings=CONTEXT)
@click.argument("manifest", type=click.Path(dir_okay=False), default="enforcement.yaml")
@click.option("--create", is_flag=True, help="Create the manifest if it does not exist.")
@_endpoint_options
def sync_update(manifest: str, create: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Regenerate what can be derived (versions, fingerprints, guide, criterion routes) and say
    what needs a human; exit 1 while something does."""
    from ._engine import AsyncModerator
    from ._sync import update_manifest

    settings = _settings(**kw)
    done, remaining = update_manifest(manifest, AsyncModerator(settings.guidelines, settings=settings), create=create)
    for d in done:
        click.echo(click.style("updated ", fg="green") + d)
    for f in remaining:
        click.echo(click.style("needs a human ", fg="yellow") + str(f))
    if not done and not remaining:
        click.echo("already in sync")
    if remaining:
        sys.exit(1)


@cli.command(context_settings=CONTEXT)
@click.argument("old")
@click.argument("new")
@click.option("--golden", required=True, type=click.Path(exists=True, dir_okay=False), help="Golden set.")
@click.option("--mapping", "-M", "mapping_path", type=click.Path(exists=True, dir_okay=False), help="Label mapping [default: beside GOLDEN].")
@click.option("--sample", type=click.Path(exists=True, dir_okay=False), help="Unlabelled production sample (JSONL/CSV/Parquet).")
@click.option("--output", "-o", "work_dir", required=True, type=click.Path(file_okay=False), help="Directory for the runs and impact.json.")
@click.option("--limit", type=click.IntRange(min=1))
@click.option("--repo", default=".", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_endpoint_options
def impact(old: str, new: str, golden: str, mapping_path: str | None, sample: str | None, work_dir: str, limit: int | None, repo: str, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Preview a policy change: re-run only the changed policies (the rest is cached) on a golden
    set and a production sample; metric deltas with significance, and the decisions that flip."""
    from ._cache import SqliteCache
    from ._config import cotmod_home
    from ._diff import load_bundle
    from ._impact import impact as impact_fn

    a, _ = load_bundle(old, repo=repo)
    b, _ = load_bundle(new, repo=repo)
    mapping_file = Path(mapping_path) if mapping_path else Path(golden).parent / "mapping.yaml"
    settings = _settings(**kw)
    cache = SqliteCache(cotmod_home() / "cache.sqlite")
    try:
        res = impact_fn(a, b, settings=settings, cache=cache, golden=golden, mapping=mapping_file, work_dir=work_dir, sample=sample, limit=limit)
    finally:
        cache.close()
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"changed policies: {', '.join(res['changed_policies']) or 'none'}; model calls old/new: {res['golden']['model_calls']}")
    for e in res["version_errors"]:
        click.echo(click.style("version error ", fg="red") + e)
    for label, e in res["golden"]["comparison"]["labels"].items():
        click.echo(f"{label}: McNemar p={e['mcnemar']['p_value']:.4f}, {len(e['flipped'])} flipped")
        for metric, d in e["metrics"].items():
            click.echo(f"  {metric:<9} {d['a']:.3f} -> {d['b']:.3f} ({d['delta']:+.3f})")
        for f in e["flipped"][:20]:
            click.echo(f"  flip {f['id']}: gold {f['y']} {f['a']} -> {f['b']} {', '.join(f['new_rules'])} {' | '.join(f['new_rationale'])[:160]}")
    if "sample" in res:
        s = res["sample"]
        click.echo(f"production sample: {len(s['flipped'])} decisions flip on {s['items']} items ({100 * s['flip_rate']:.1f}%)")
        for f in s["flipped"][:20]:
            click.echo(f"  {f['id']} {f['policy']}: {f['before']} -> {f['after']} {', '.join(f['rules'])} {f['rationale'][:160]}")


@cli.group(cls=_Group, context_settings=CONTEXT)
def batch() -> None:
    """The provider Batch API path (asynchronous, typically half the price)."""


@batch.command("export", context_settings=CONTEXT)
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Batch API request file (JSONL).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "text"]))
@click.option("--id-field", default="id", show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_endpoint_options
def batch_export(input_path: str, output: str, fmt: str | None, id_field: str, text_field: str, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Write an OpenAI Batch API input file for INPUT (one request per item and policy).

    Upload it with your provider; then run `cotmod batch import`.
    """
    from ._batch import export_batch
    from ._engine import AsyncModerator

    settings = _settings(**kw)
    mod = AsyncModerator(settings.guidelines, settings=settings)
    counts = export_batch(mod, input_path, output, policies=list(policies) or None, id_field=id_field, text_field=text_field, fmt=fmt, model=settings.model)
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(f"{output}: {counts['requests']} requests for {counts['items']} items ({counts['bad_rows']} bad rows dead-lettered)")


@batch.command("import", context_settings=CONTEXT)
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.option("--requests", "requests_path", required=True, type=click.Path(exists=True, dir_okay=False), help="The file batch export wrote.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Verdicts JSONL (appended).")
@click.option("--json", "as_json", is_flag=True)
@_endpoint_options
def batch_import(results: str, requests_path: str, output: str, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Validate a Batch API output file RESULTS into verdicts, like live ones.

    Invalid answers go to <output>.errors.jsonl; `cotmod run INPUT -o OUTPUT --retry-errors`
    can then redo them live.
    """
    from ._batch import import_batch
    from ._engine import AsyncModerator

    settings = _settings(**kw)
    mod = AsyncModerator(settings.guidelines, settings=settings)
    summary = import_batch(mod, results, requests_path, output)
    data = summary.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_summary(data)


@cli.group(cls=_Group, context_settings=CONTEXT)
def models() -> None:
    """Packaged local models (GGUF inside PyPI wheels) for the embedded backend."""


@models.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json: bool) -> None:
    """List the packaged models and whether each is installed."""
    from ._local import MODELS, describe

    rows = [describe(n) for n in MODELS]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from ._config import DEFAULT_LOCAL_MODEL

    for r in rows:
        mark = "installed" if r["installed"] else "-"
        default = " (default)" if r["name"] == DEFAULT_LOCAL_MODEL else ""
        click.echo(f"{r['name']:<22} {r['size'] / 1e6:>7.0f} MB  {mark:<9} {r['title']}{default}: {r['notes']}")


@models.command("pull", context_settings=CONTEXT)
@click.argument("name", required=False)
@click.option("--force", is_flag=True, help="Download again even if installed.")
def models_pull(name: str | None, force: bool) -> None:
    """Download, assemble and sha256-verify a packaged model (default: the default model)."""
    from ._config import DEFAULT_LOCAL_MODEL
    from ._local import pull_model, spec

    name = name or DEFAULT_LOCAL_MODEL
    s = spec(name)
    click.echo(f"pulling {name} ({s.size / 1e6:.0f} MB from {len(s.packages)} package(s))...", err=True)
    path = pull_model(name, force=force)
    click.echo(f"{name}: verified sha256 {s.sha256[:12]}… -> {path}")


@cli.group(cls=_Group, context_settings=CONTEXT)
def local() -> None:
    """Run the embedded llama.cpp server yourself."""


@local.command("serve", context_settings=CONTEXT)
@click.option("--model", "name", default=None, help="Packaged model name [default: the default model].")
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1 [default: a free one].")
@click.option("--ctx", type=int, default=8192, show_default=True, help="Context tokens per slot.")
@click.option("--parallel", type=int, default=2, show_default=True, help="Parallel slots.")
@click.option("--threads", type=int, default=0, help="CPU threads [default: all cores].")
def local_serve(name: str | None, port: int, ctx: int, parallel: int, threads: int) -> None:
    """Serve a packaged model on 127.0.0.1 in the foreground (Ctrl-C stops it).

    Other cotmod processes reuse it automatically; or point any OpenAI client at the printed URL.
    """
    from ._config import DEFAULT_LOCAL_MODEL
    from ._local import clear_state, free_port, server_params, verify_model, write_state
    from ._serve import serve

    name = name or DEFAULT_LOCAL_MODEL
    if parallel < 1:
        raise click.BadParameter("must be >= 1", param_hint="--parallel")
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        raise click.ClickException("xllamacpp is not installed: pip install 'cotmod[local]'") from None
    path = verify_model(name)
    params = server_params(path, port or free_port(), ctx, threads, parallel)

    def ready(url: str) -> None:
        write_state(name, url)
        click.echo(f"serving {name} at {url} (Ctrl-C to stop)", err=True)

    try:
        serve(params, ready)
    finally:
        clear_state(name)


def main() -> None:
    import signal

    # SIGTERM exits normally so cleanup (stopping an embedded server) runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cli(prog_name="cotmod")


if __name__ == "__main__":  # pragma: no cover
    main()
