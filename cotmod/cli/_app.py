"""The ``cotmod`` command line: the group, shared options and helpers. Library errors become one
clear line here, and only here (exit 2 for user mistakes, 3 for runtime failures); user mistakes
never print a traceback (set COTMOD_DEBUG=1 to see one). Which config file and which policies are
in use is said on stderr, so stdout stays clean for --json."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .._exceptions import CotmodError, InputError, UserError

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# Exit codes (documented in README "Exit codes"; tests/test_cli.py checks each one).
EXIT_OK = 0  # every item decided (or: the check passed)
EXIT_UNDECIDED = 1  # the command ran, but some items got error verdicts or were dead-lettered
#                     (or: a check found problems: lint errors, sync drift, a compare regression)
EXIT_USAGE = 2  # a usage, configuration, policy or input mistake: fix the command or the files
EXIT_FAILURE = 3  # a runtime failure stopped the command (endpoint unreachable, auth, model missing)
EXIT_INTERRUPTED = 130  # Ctrl-C


class FloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and infinities: ``--sigma nan`` would make
    every comparison false (no alert could fire, exit 0), ``--target-precision nan`` a thresholds
    file with no threshold. Every float option of the CLI uses it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if isinstance(rv, float) and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


class _CotmodClickError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares a class default


class _Group(click.Group):
    """Turns cotmod errors into clean CLI errors at the boundary: one line, a distinct exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CotmodError as exc:
            if os.environ.get("COTMOD_DEBUG"):
                raise
            code = EXIT_USAGE if isinstance(exc, UserError) else EXIT_FAILURE
            raise _CotmodClickError(f"{type(exc).__name__}: {exc}", code) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            raise
        except OSError as exc:  # a file the user named cannot be read or written (-o into a missing directory, ...)
            if os.environ.get("COTMOD_DEBUG"):
                raise
            user_side = isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError))
            what = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
            raise _CotmodClickError(f"{type(exc).__name__}: {what}", EXIT_USAGE if user_side else EXIT_FAILURE) from None


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="cotmod", prog_name="cotmod")
def cli() -> None:
    """cotmod: chain-of-thought content moderation.

    Policies in guidelines/ (YAML) compile into prompts; an LLM (an OpenAI-compatible endpoint,
    or the embedded local model) returns schema-valid verdicts with its reasoning.

    \b
    Endpoint: --base-url/--model/--api-key, or COTMOD_BASE_URL, COTMOD_MODEL, COTMOD_API_KEY,
    or a cotmod.toml. With no endpoint the embedded model runs on 127.0.0.1.
    Policies: --guidelines, else the config's guidelines, else ./guidelines, else the starter pack.
    """
    import warnings

    from .._exceptions import CotmodWarning

    # the settings' warnings were printed as notices when the settings were resolved; the
    # engine's CotmodWarning for the same lines would print them twice
    warnings.filterwarnings("ignore", category=CotmodWarning)


def _endpoint_options(f: F) -> F:
    opts = [
        click.option(
            "--guidelines",
            "-g",
            type=click.Path(exists=True),
            help="Policy directory or file [default: the config's guidelines, else ./guidelines, else the starter pack].",
        ),
        click.option("--policy", "-p", "policies", multiple=True, help="Policy id to apply (repeatable) [default: all]."),
        click.option("--base-url", envvar="COTMOD_BASE_URL", help="OpenAI-compatible endpoint (default: embedded local model)."),
        click.option("--model", "-m", envvar="COTMOD_MODEL", help="Model name at the endpoint."),
        # No envvar here: Settings reads COTMOD_API_KEY itself and decides whether an endpoint from a
        # ./cotmod.toml may receive it (see cotmod._config).
        click.option("--api-key", help="API key (prefer the COTMOD_API_KEY env var)."),
        click.option("--timeout", type=FloatRange(min=0, min_open=True), default=None, help="Seconds per HTTP request (env COTMOD_TIMEOUT) [default: 120]."),
        click.option("--local-model", help="Embedded model to use when no endpoint is set (see: cotmod models list)."),
        click.option("--strategy", type=click.Choice(["per_policy", "combined"]), help="One call per policy, or all in one call."),
        click.option("--logprobs/--no-logprobs", default=None, help="Score decisions by token log-probabilities (servers that return them)."),
        click.option(
            "--votes",
            type=click.IntRange(1, 25),
            default=None,
            help="Self-consistency: sample K verdicts per policy call (at --vote-temperature); the majority decides and the score is the vote share.",
        ),
        click.option("--vote-temperature", type=FloatRange(0, 2, min_open=True), default=None, help="Sampling temperature of the votes [default: 0.7]."),
        click.option(
            "--triage/--no-triage",
            default=None,
            help="One cheap call first selects the policies plausibly at stake; only those get their policy call, "
            "the others are recorded as triaged out (env COTMOD_TRIAGE) [default: off].",
        ),
        click.option(
            "--triage-max",
            type=click.IntRange(1, 50),
            default=None,
            help="With --triage: the policies one item may be sent to at most, the most likely first [default: 2].",
        ),
        click.option(
            "--triage-threshold",
            type=FloatRange(0.0, 1.0),
            default=None,
            help="With --triage and --logprobs: select a policy when the triage call's probability of 'yes' for it "
            "is at least this; lower trades calls for recall [default: 0.3].",
        ),
        click.option(
            "--triage-min",
            type=click.IntRange(0, 50),
            default=None,
            help="With --triage and --logprobs: send every item to at least this many policies, the most likely "
            "first, even when none reaches --triage-threshold [default: 0].",
        ),
        click.option(
            "--triage-blend",
            type=FloatRange(0.0, 1.0),
            default=None,
            help="With --triage and --logprobs: blend triage's probability that a policy is at stake into its score "
            "with this weight (0.5: the mean); ranks items better for thresholds and review queues [default: 0, off].",
        ),
        click.option(
            "--decision-logic/--no-decision-logic",
            default=None,
            help="Judge policies that define questions by their decision logic (env COTMOD_DECISION_LOGIC) [default: off, "
            "the rules form].",
        ),
        click.option(
            "--dynamic-examples",
            type=click.IntRange(0, 50),
            default=None,
            help="Per item, show only the N boundary examples most similar to it, after the cached policy text [default: 0 = all, static].",
        ),
        click.option(
            "--cascade",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="Cascade file (cotmod classifier cascade): the items' classifier scores (scores.LABEL or score_LABEL) "
            "allow or enforce without an LLM call outside the uncertain band; each decision records its route.",
        ),
        click.option("--config", "config_file", type=click.Path(), help="TOML config file."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


class FiniteFloat(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2; the floor is 8.1
    """A finite float (``nan`` and ``inf`` are usage errors), at least ``min`` (or above it when
    ``min_open``)."""

    name = "number"

    def __init__(self, min: float = 0.0, *, min_open: bool = False) -> None:
        self.min = min
        self.min_open = min_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            f = float(value)
        else:
            try:
                f = float(str(value))
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(f):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if f < self.min or (self.min_open and f == self.min):
            self.fail(f"{value!r} must be {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        return f


def _runner_options(
    *,
    spend: bool = True,
    retry_help: str = "Reprocess only the items in <output>.errors.jsonl.",
    overwrite_help: str = "Discard an existing output (and its errors/manifest) first.",
    json_help: str = "Print the summary as JSON.",
) -> Callable[[F], F]:
    """The batch runner's options, shared by every command that runs items through it (``run``,
    ``audit run``, ``classifier explain``): concurrency, rate caps, retry/overwrite, (with
    ``spend``) a limit and prices, the result cache, ``--json`` and progress."""
    opts = [
        click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Maximum requests in flight [default: settings, 4]."),
        click.option("--rpm", type=FiniteFloat(0, min_open=True), help="Requests-per-minute cap."),
        click.option("--tpm", type=FiniteFloat(0, min_open=True), help="Tokens-per-minute cap."),
        click.option("--retry-errors", is_flag=True, help=retry_help),
        click.option("--overwrite", is_flag=True, help=overwrite_help),
    ]
    if spend:
        opts += [
            click.option("--limit", type=click.IntRange(min=1), help="Process at most N new items."),
            click.option("--price-in", type=FiniteFloat(0), help="USD per 1M input tokens (default: built-in table)."),
            click.option("--price-out", type=FiniteFloat(0), help="USD per 1M output tokens."),
        ]
    opts += [
        click.option("--cache", "cache_path", type=click.Path(dir_okay=False), help="Result cache file [default: $COTMOD_HOME/cache.sqlite]."),
        click.option("--no-cache", is_flag=True, help="Do not read or write the result cache."),
        click.option("--json", "as_json", is_flag=True, help=json_help),
        click.option("--progress/--no-progress", default=None, help="Progress on stderr [default: a bar when a terminal]."),
    ]

    def deco(f: F) -> F:
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


def _notice(line: str) -> None:
    """One informational line on stderr (stdout stays clean for --json)."""
    click.echo(line, err=True)


def _settings(*, announce_policies: bool = True, **kw: Any) -> Any:
    """Settings from the shared options; says on stderr which config file and (unless the command
    takes its policies from elsewhere, like ``impact``) which policies are used."""
    from .._config import Settings

    config_file = kw.pop("config_file", None)
    loaded = Settings.resolve(config_file, **{k: v for k, v in kw.items() if v is not None})
    for line in loaded.notices:
        _notice(line)
    if announce_policies and loaded.policies.origin != "argument":
        _notice(loaded.policies.describe())
    return loaded.settings


def _policy_source(explicit: str | None, config_file: str | None = None) -> Path:
    """The policies for commands without endpoint options (lint, guide export): the same rule as
    :func:`_settings` (--guidelines > config > ./guidelines > the starter pack), said on stderr."""
    from .._config import _find_config, _show, resolve_policy_source

    found = _find_config(config_file) if explicit is None else None  # the config is read for its guidelines
    if found:
        _notice(f"cotmod: using config {_show(found[0])}")
    source = resolve_policy_source(explicit, config_file=config_file)
    if source.origin != "argument":
        _notice(source.describe())
    return source.path


def _check_text(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: text is not valid UTF-8") from None
    return text


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
    if v.triage is not None:
        t = v.triage
        if t.fallback:
            click.echo(click.style(f"  triage failed, every policy judged: {t.fallback}", fg="yellow"))
        else:
            skipped = ", ".join(t.skipped) or "none"
            click.echo(click.style(f"  triage: judged {', '.join(t.selected) or 'none'}; triaged out {skipped}", dim=True))
    for step in v.reasoning:
        click.echo(click.style(f"    · {step}", dim=True))
    if v.truncated:
        click.echo(click.style(f"  (item truncated: {v.truncated.kept_tokens} of {v.truncated.item_tokens} tokens judged)", fg="yellow"))


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



T = TypeVar("T")


def _drive_run(
    work: Callable[[Callable[[Any, int | None], None] | None], Awaitable[T]],
    *,
    moderator: Any,
    cache: Any,
    show: bool,
    written_to: str,
    what: str = "run",
    as_json: bool = False,
) -> T:
    """Run ``work(on_progress)`` (a batch-runner job) to the end, with a progress bar when
    ``show``; close the moderator and the result cache after. When a runtime failure stops it, say
    on stderr that what was written to ``written_to`` is kept and the same command resumes."""
    import asyncio

    async def go() -> T:
        try:
            if not show:
                return await work(None)
            from ._progress import RunProgress

            with RunProgress() as bar:
                return await work(bar.update)
        finally:
            await moderator.aclose()

    try:
        return asyncio.run(go())
    except CotmodError as exc:
        if not isinstance(exc, UserError):
            click.echo(f"cotmod: the {what} stopped; verdicts already written to {written_to} are kept: rerun the same command to resume", err=True)
        if as_json:  # --json callers still get one JSON object on stdout, with the exit code the command ends with
            code = EXIT_USAGE if isinstance(exc, UserError) else EXIT_FAILURE
            click.echo(json.dumps({"output": written_to, "stopped": True, "error": {"type": type(exc).__name__, "message": str(exc)},
                                   "exit_code": code}, indent=2))
        raise
    finally:
        if cache is not None:
            cache.close()


def _finish_run(summary: Any, as_json: bool, undecided_note: str | None = None) -> None:
    """Print a run summary (``--json`` or the table) carrying its exit code, then exit with it:
    EXIT_UNDECIDED when some items got no verdict (``undecided_note`` then goes to stderr)."""
    data = summary.to_dict()
    code = EXIT_UNDECIDED if summary.undecided else EXIT_OK
    data["exit_code"] = code
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_summary(data)
        if summary.undecided and undecided_note:
            click.echo(undecided_note, err=True)
    if code != EXIT_OK:
        click.get_current_context().exit(code)

def main() -> None:
    import signal

    # SIGTERM exits normally so cleanup (stopping an embedded server) runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cli(prog_name="cotmod")


if __name__ == "__main__":  # pragma: no cover
    main()
