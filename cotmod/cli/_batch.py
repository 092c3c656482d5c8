"""The provider Batch API: ``batch export`` and ``batch import``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ._app import (
    CONTEXT,
    EXIT_UNDECIDED,
    _endpoint_options,
    _finish_run,
    _Group,
    _settings,
    cli,
)


@cli.group(cls=_Group, context_settings=CONTEXT)
def batch() -> None:
    """The provider Batch API path (asynchronous, typically half the price)."""


@batch.command("export", context_settings=CONTEXT)
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Batch API request file (JSONL).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "text"]), help="Input format [default: from the extension; .gz is looked through].")
@click.option("--id-field", default="id", show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_endpoint_options
def batch_export(input_path: str, output: str, fmt: str | None, id_field: str, text_field: str, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Write an OpenAI Batch API input file for INPUT (one request per item and policy).

    Upload it with your provider; then run `cotmod batch import`.
    """
    from ..batch._provider import export_batch
    from ..engine._moderator import AsyncModerator

    settings = _settings(**kw)
    mod = AsyncModerator(settings.guidelines, settings=settings)
    counts = export_batch(mod, input_path, output, policies=list(policies) or None, id_field=id_field, text_field=text_field, fmt=fmt, model=settings.model)
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(f"{output}: {counts['requests']} requests for {counts['items']} items ({counts['bad_rows']} bad rows dead-lettered)")
    if counts["bad_rows"]:
        # Those rows will never get a verdict from this batch: not everything was handed on.
        sys.exit(EXIT_UNDECIDED)


@batch.command("import", context_settings=CONTEXT)
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.option("--requests", "requests_path", required=True, type=click.Path(exists=True, dir_okay=False), help="The file batch export wrote.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Verdicts JSONL (appended).")
@click.option("--json", "as_json", is_flag=True)
@_endpoint_options
def batch_import(results: str, requests_path: str, output: str, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Validate a Batch API output file RESULTS into verdicts, like live ones.

    Invalid answers go to <output>.errors.jsonl; `cotmod run INPUT -o OUTPUT --retry-errors`
    can then redo them live. --policy, if given, must name the policies the requests were
    exported for. Exits 1 if some items got no verdict.
    """
    from ..batch._provider import import_batch
    from ..engine._moderator import AsyncModerator

    settings = _settings(**kw)
    mod = AsyncModerator(settings.guidelines, settings=settings)
    summary = import_batch(mod, results, requests_path, output, policies=list(policies) or None)
    _finish_run(summary, as_json)
