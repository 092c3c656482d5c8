"""Moderating: ``cotmod moderate`` (a text or a file) and ``cotmod run`` (a batch, resumable)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .._exceptions import InputError
from ._app import (
    CONTEXT,
    _check_text,
    _endpoint_options,
    _print_summary,
    _print_verdict,
    _read_items,
    _settings,
    cli,
)


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
    from ..engine._moderator import Moderator

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

    from .._config import cotmod_home
    from ..batch._runner import Runner
    from ..engine._cache import SqliteCache
    from ..engine._moderator import AsyncModerator

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
