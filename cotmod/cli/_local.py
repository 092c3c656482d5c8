"""The embedded local model: ``models`` and ``local serve``."""

from __future__ import annotations

import json

import click

from ._app import (
    CONTEXT,
    _Group,
    cli,
)


@cli.group(cls=_Group, context_settings=CONTEXT)
def models() -> None:
    """Packaged local models (GGUF inside PyPI wheels) for the embedded backend."""


@models.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json: bool) -> None:
    """List the packaged models and whether each is installed."""
    from ..backends._local import MODELS, describe

    rows = [describe(n) for n in MODELS]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from .._config import DEFAULT_LOCAL_MODEL

    for r in rows:
        mark = "installed" if r["installed"] else "-"
        default = " (default)" if r["name"] == DEFAULT_LOCAL_MODEL else ""
        click.echo(f"{r['name']:<22} {r['size'] / 1e6:>7.0f} MB  {mark:<9} {r['title']}{default}: {r['notes']}")


@models.command("pull", context_settings=CONTEXT)
@click.argument("name", required=False)
@click.option("--force", is_flag=True, help="Download again even if installed.")
def models_pull(name: str | None, force: bool) -> None:
    """Download, assemble and sha256-verify a packaged model (default: the default model)."""
    from .._config import DEFAULT_LOCAL_MODEL
    from ..backends._local import pull_model, spec

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
    from .._config import DEFAULT_LOCAL_MODEL
    from ..backends._local import clear_state, free_port, server_params, verify_model, write_state
    from ..backends._serve import serve

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
