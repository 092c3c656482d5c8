"""Moderating: ``cotmod moderate`` (a text or a file) and ``cotmod run`` (a batch, resumable).

Exit codes: 0 every item decided; 1 some item got an error verdict or was dead-lettered (``run``
also counts items dead-lettered by an earlier run and not retried, and items ``--limit`` left);
2 a usage, configuration or input mistake; 3 a runtime failure stopped the command (verdicts
written so far are kept); 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .._exceptions import InputError, UserError
from ._app import (
    CONTEXT,
    EXIT_UNDECIDED,
    _check_text,
    _drive_run,
    _endpoint_options,
    _finish_run,
    _print_verdict,
    _runner_options,
    _settings,
    cli,
)


def _make_moderator(settings: Any, cache: Any = None) -> Any:
    """The moderator the commands use (tests replace it to inject a fake backend)."""
    from ..engine._moderator import AsyncModerator

    return AsyncModerator(settings.guidelines, settings=settings, cache=cache)


def _file_items(path: str, fmt: str | None, metadata_fields: list[str] | None = None) -> list[Any]:
    """The items of ``--file`` through the batch reader; a bad row, or a repeated id (which ``run``
    dead-letters), is one clear error. ``metadata_fields``: fields kept as item metadata (a
    cascade's classifier scores)."""
    from ..batch._reader import detect_format, read_items
    from ..engine._moderator import Item

    try:
        kind = detect_format(path, fmt)
    except UserError:
        kind = "text"  # moderate --file takes any text file, one item per line
    items = []
    first_line: dict[str, int] = {}
    for row in read_items(path, fmt=kind, metadata_fields=metadata_fields or ()):
        if row.id in first_line:
            raise InputError(
                f"{path}:{row.line}: duplicate id {row.id!r} (first on line {first_line[row.id]}); each item needs its own id"
            )
        first_line[row.id] = row.line
        if row.problem is not None or row.text is None:
            raise InputError(f"{path}:{row.line}: {row.problem}")
        items.append(Item(row.text, row.id, row.metadata))
    if not items:
        raise InputError(f"{path}: no items")
    return items


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _cascade_notice(mod: Any, selected: list[str] | None) -> None:
    """A cascade binds policies this run does not judge (``-p``): say that it changes nothing."""
    if mod.cascade and selected and not set(mod.cascade) & set(selected):
        click.echo(f"cotmod: notice: the cascade {mod.settings.cascade} binds {', '.join(sorted(mod.cascade))}, none of "
                   f"which this run judges ({', '.join(selected)}): it changes nothing", err=True)


@cli.command(context_settings=CONTEXT)
@click.argument("text", required=False)
@click.option("--file", "-f", "file_", type=click.Path(exists=True, dir_okay=False), help="Items: JSONL (id/text), CSV, Parquet or text (one per line); .gz too.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "text"]), help="Format of --file [default: from the extension, else text].")
@click.option("--json", "as_json", is_flag=True, help="Print verdicts as JSON (one object per line).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress on stderr (a bar on a terminal, occasional lines otherwise).")
@_endpoint_options
def moderate(text: str | None, file_: str | None, fmt: str | None, as_json: bool, progress: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Moderate TEXT (or each item of --file) and print the verdicts.

    Exits 1 if any verdict is an error verdict (the model gave no valid answer).

    \b
    Examples:
      cotmod moderate "How do I kill a Python process?"
      cotmod moderate -p hate_speech -p violent_threats --json "some post"
      cotmod moderate --file docs/examples/posts.jsonl
    """
    import asyncio
    import contextlib
    import io

    from ..engine._moderator import Item
    from ._progress import Reporter

    if (text is None) == (file_ is None):
        raise click.UsageError("give either TEXT or --file")
    if text is not None:
        _check_text(text, "TEXT")
    settings = _settings(**kw)
    mod = _make_moderator(settings)
    if text is not None:
        items = [Item(text, "text")]
    else:
        assert file_ is not None
        from ..engine._cascade import score_fields

        items = _file_items(file_, fmt, score_fields(mod.cascade) if mod.cascade else None)
    sel = list(policies) or None
    n_policies = len(mod.policies.select(sel).ids) if sel else len(mod.policies.ids)  # fail fast on unknown ids
    _cascade_notice(mod, sel)
    failed = 0

    async def go(rep: Reporter) -> None:
        nonlocal failed
        heartbeat: asyncio.Task[None] | None = None

        async def beat() -> None:
            while True:
                await asyncio.sleep(1.0)
                rep.tick()

        try:
            heartbeat = asyncio.create_task(beat())
            if not settings.base_url:
                rep.note(f"starting the embedded model {settings.local_model} (the first start can take minutes)")
                t0 = rep.elapsed()
                await mod.get_backend()
                rep.note(f"embedded model ready ({rep.elapsed() - t0:.0f} s)")
            rep.begin(len(items), f"moderating {_plural(len(items), 'item')} × {n_policies} {'policy' if n_policies == 1 else 'policies'}")
            for i, it in enumerate(items, start=1):
                verdict = await mod.moderate(it, sel)
                if verdict.status != "ok":
                    failed += 1
                if as_json:
                    click.echo(verdict.model_dump_json())
                else:
                    _print_verdict(verdict)
                rep.show(i, len(items), f"{failed} error verdict(s)" if failed else "")
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            await mod.aclose()

    stream = None if progress else io.StringIO()
    with Reporter(stream=stream, rich=None if progress else False) as rep:
        asyncio.run(go(rep))
    if failed:
        click.echo(f"{_plural(failed, 'item')} of {len(items)} not decided (error verdicts)", err=True)
        click.get_current_context().exit(EXIT_UNDECIDED)


@cli.command(context_settings=CONTEXT)
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Verdicts JSONL (appended; resumable).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "text"]), help="Input format [default: from the extension; .gz is looked through].")
@click.option("--id-field", default="id", show_default=True, help="Column/field holding the item id.")
@click.option("--text-field", default="text", show_default=True, help="Column/field holding the text.")
@_runner_options()
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
    """Moderate every item of INPUT (JSONL, CSV, Parquet or text; .gz too) into a verdict file, at scale.

    Resumable: kill it at any time and run the same command again; the output keeps exactly one
    verdict per input id. Items that get no verdict (bad rows, error verdicts, failures of single
    requests) go to <output>.errors.jsonl and the run goes on (see --retry-errors). Unchanged
    items are served from the result cache without a model call.

    Exits 0 when every item has a verdict, 1 when some have none (dead-lettered, now or by an
    earlier run, or not run yet because --limit stopped the run: rerun to continue), 3 when a
    failure that hits every item (authentication, unreachable endpoint, open circuit breaker)
    stopped the run; verdicts written so far are kept either way. A second run on the same
    OUTPUT refuses to start while one is writing it.

    \b
    Examples:
      cotmod run posts.jsonl -o verdicts.jsonl -p hate_speech -c 8 --rpm 600
      cotmod run posts.csv.gz --text-field body --id-field post_id -o out.jsonl --json
    """
    import sys

    from .._config import cotmod_home
    from ..batch._runner import Runner
    from ..engine._cache import SqliteCache

    settings = _settings(**kw)
    if concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    cache = None if no_cache else SqliteCache(cache_path or cotmod_home() / "cache.sqlite")
    mod = _make_moderator(settings, cache)
    _cascade_notice(mod, list(policies) or None)
    runner = Runner(mod, rpm=rpm, tpm=tpm, price_in=price_in, price_out=price_out)
    show = progress if progress is not None else (sys.stderr.isatty() and not as_json)

    kwargs: dict[str, Any] = {
        "policies": list(policies) or None,
        "id_field": id_field,
        "text_field": text_field,
        "fmt": fmt,
        "retry_errors": retry_errors,
        "overwrite": overwrite,
        "limit": limit,
    }
    summary = _drive_run(
        lambda on_progress: runner.run(input_path, output, on_progress=on_progress, **kwargs),
        moderator=mod, cache=cache, show=show, written_to=output, as_json=as_json,
    )
    notes = []
    failed = summary.undecided - summary.not_run
    if failed:
        notes.append(
            f"{_plural(failed, 'item')} without a verdict (see {runner.errors_path(Path(output))}; --retry-errors "
            f"redoes them, reading bad rows from {input_path} again: fix those first)"
        )
    if summary.not_run:
        notes.append(f"{_plural(summary.not_run, 'input item')} not run yet (--limit left them; rerun to resume)")
    _finish_run(summary, as_json, "; ".join(notes))
