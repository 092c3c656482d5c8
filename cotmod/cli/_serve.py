"""``cotmod serve``: the HTTP moderation service (see :mod:`cotmod.serve`).

Exit codes: 0 stopped cleanly (SIGINT/SIGTERM, after draining the requests in progress); 2 a
usage or configuration mistake (bad keys file, unknown policy in --category-name, a public host
without API keys, the extra not installed); 3 a runtime failure.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

import click

from .._exceptions import ConfigError
from ._app import CONTEXT, FloatRange, _endpoint_options, _notice, _settings, cli


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _category_names(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        pid, sep, name = v.partition("=")
        if not sep or not pid.strip() or not name.strip():
            raise click.BadParameter(f"{v!r}: expected POLICY=NAME, e.g. hate_speech=hate", param_hint="--category-name")
        out[pid.strip()] = name.strip()
    return out


@cli.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (a non-loopback address needs API keys).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--api-keys-file", type=click.Path(dir_okay=False), help="File of accepted bearer API keys, one a line ('#' comments).")
@click.option("--api-key-env", metavar="NAME", help="Environment variable holding accepted API key(s), separated by commas.")
@click.option("--audit-log", type=click.Path(dir_okay=False), help="Append every verdict to this JSONL file (the format of cotmod run output), with its request id.")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Moderation requests processed at once.")
@click.option("--max-queue", type=click.IntRange(min=0), default=16, show_default=True, help="Requests waiting for a slot at most; more get 429 with Retry-After.")
@click.option("--retry-after", type=click.IntRange(min=1), default=1, show_default=True, help="Seconds a 429 tells the client to wait.")
@click.option("--max-items", type=click.IntRange(min=1), default=64, show_default=True, help="Items per request (413 above).")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True, help="Request body size limit (413 above).")
@click.option("--max-text-chars", type=click.IntRange(min=1), default=32_000, show_default=True, help="Characters per item text (413 above).")
@click.option("--request-timeout", type=FloatRange(0, min_open=True), default=120.0, show_default=True, help="Seconds for one request, waiting included (504 after).")
@click.option("--drain-timeout", type=FloatRange(0, min_open=True), default=30.0, show_default=True, help="On SIGTERM/Ctrl-C, seconds to let requests in progress finish.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Model requests in flight at most, over all requests [default: settings, 4].")
@click.option("--category-name", "category_names", multiple=True, metavar="POLICY=NAME", help="Report POLICY under category NAME in /v1/moderations (repeatable), e.g. hate_speech=hate.")
@click.option("--evidence/--no-evidence", default=None, help="Grounded citations: the model quotes the words meeting each rule (highlighted in the playground) [default: settings, off].")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), help="Result cache file (SQLite): unchanged items are answered without a model call [default: no cache].")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="One line per request on stderr (method, path, status, duration, request id; never content or keys).")
@click.option("--playground/--no-playground", default=True, show_default=True, help="Serve the playground page at /.")
@_endpoint_options
def serve(
    host: str,
    port: int,
    api_keys_file: str | None,
    api_key_env: str | None,
    audit_log: str | None,
    max_concurrency: int,
    max_queue: int,
    retry_after: int,
    max_items: int,
    max_body_bytes: int,
    max_text_chars: int,
    request_timeout: float,
    drain_timeout: float,
    concurrency: int | None,
    category_names: tuple[str, ...],
    evidence: bool | None,
    cache_path: str | None,
    access_log: bool,
    playground: bool,
    policies: tuple[str, ...],
    **kw: Any,
) -> None:
    """Serve moderation over HTTP: an OpenAI-compatible POST /v1/moderations, full verdicts at
    POST /v1/verdicts, /healthz, /readyz, Prometheus /metrics and a playground page at /.

    Clients of OpenAI's Moderation API switch by base URL; categories are the policy ids (or the
    names given with --category-name). -p/--policy (repeatable) is the set of policies the service
    offers: requests may name only those (others get 400), /v1/policies and the playground list
    only those, and a request naming none is judged against all of them [default: every loaded
    policy]. With API keys (--api-keys-file, --api-key-env) every /v1 request needs
    'Authorization: Bearer KEY', and the playground page carries no policy until a key is typed.
    A torn last line of --audit-log (a kill mid-write) is repaired at start. Stops on Ctrl-C or SIGTERM after the requests in
    progress finish (--drain-timeout).

    \b
    Examples:
      cotmod serve --base-url http://127.0.0.1:8080/v1 -m qwen --audit-log verdicts.jsonl
      COTMOD_SERVE_KEYS=k1,k2 cotmod serve --host 0.0.0.0 --api-key-env COTMOD_SERVE_KEYS --category-name hate_speech=hate
      curl -s localhost:8000/v1/moderations -H 'content-type: application/json' -d '{"input": "some post"}'
    """
    try:
        from ..serve import ServeConfig, create_app, load_api_keys, run_server
    except ImportError as exc:
        raise ConfigError(f"cotmod serve needs the serve extra: pip install 'cotmod[serve]' ({exc})") from None
    keys = load_api_keys(api_keys_file, api_key_env)
    if not keys.enabled and not _loopback(host):
        raise click.UsageError(f"--host {host} is reachable from other machines: give API keys (--api-keys-file or --api-key-env)")
    if evidence is not None:
        kw["evidence"] = evidence
    settings = _settings(**kw)
    if concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    cache = None
    if cache_path is not None:
        from ..engine._cache import SqliteCache

        cache = SqliteCache(cache_path)
    config = ServeConfig(
        api_keys=keys,
        audit_log=Path(audit_log) if audit_log else None,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        retry_after=retry_after,
        max_items=max_items,
        max_body_bytes=max_body_bytes,
        max_text_chars=max_text_chars,
        request_timeout=request_timeout,
        category_names=_category_names(category_names),
        policies=list(policies) or None,
        playground=playground,
        access_log=access_log,
    )
    app = create_app(settings, config, cache=cache)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("cotmod.serve")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _notice(
        f"cotmod serve on http://{host}:{port} ({'API keys: ' + str(len(keys)) if keys.enabled else 'no API keys: loopback only'}"
        f"{', audit log ' + str(audit_log) if audit_log else ''})"
    )
    try:
        run_server(app, host, port, drain_timeout=drain_timeout)
    finally:
        root.removeHandler(handler)
        if cache is not None:
            cache.close()
