"""Change management: ``sync`` (the enforcement manifest) and ``impact``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ._app import (
    CONTEXT,
    EXIT_UNDECIDED,
    _endpoint_options,
    _Group,
    _notice,
    _settings,
    cli,
)


@cli.group(cls=_Group, context_settings=CONTEXT)
def sync() -> None:
    """Keep every enforcement pathway bound to the current policy versions (enforcement.yaml)."""


@sync.command("check", context_settings=CONTEXT)
@click.argument("manifest", type=click.Path(dir_okay=False), default="enforcement.yaml")
@click.option("--json", "as_json", is_flag=True)
@_endpoint_options
def sync_check(manifest: str, as_json: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """List pathways bound to an old policy version or prompt fingerprint; exit 1 if any.

    -p restricts the check to those policies' bindings (the shared labeling guide is then not checked)."""
    from ..engine._moderator import AsyncModerator
    from ..governance._sync import check_manifest

    settings = _settings(**kw)
    findings = check_manifest(manifest, AsyncModerator(settings.guidelines, settings=settings), list(policies) or None)
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        for f in findings:
            click.echo(click.style("stale ", fg="red") + str(f))
        click.echo("in sync" if not findings else f"{len(findings)} stale binding(s)")
    if findings:
        sys.exit(EXIT_UNDECIDED)


@sync.command("update", context_settings=CONTEXT)
@click.argument("manifest", type=click.Path(dir_okay=False), default="enforcement.yaml")
@click.option("--create", is_flag=True, help="Create the manifest if it does not exist.")
@_endpoint_options
def sync_update(manifest: str, create: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Regenerate what can be derived (versions, fingerprints, guide, criterion routes) and say
    what needs a human; exit 1 while something does.

    -p restricts the update to those policies' bindings (the shared labeling guide is then left alone)."""
    from ..engine._moderator import AsyncModerator
    from ..governance._sync import update_manifest

    settings = _settings(**kw)
    mod = AsyncModerator(settings.guidelines, settings=settings)
    done, remaining = update_manifest(manifest, mod, create=create, policies=list(policies) or None)
    for d in done:
        click.echo(click.style("updated ", fg="green") + d)
    for f in remaining:
        click.echo(click.style("needs a human ", fg="yellow") + str(f))
    if not done and not remaining:
        click.echo("already in sync")
    if remaining:
        sys.exit(EXIT_UNDECIDED)


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
    set and a production sample; metric deltas with significance, and the decisions that flip.

    OLD and NEW are directories or git revisions (REV or REV:path); a bare REV means that
    revision's copy of the other argument's directory, else of the policy directory in use (as
    for diff). Exit 1 when items of the golden set or the sample got no verdict on either side.

    -p previews only those policies (their labels in the golden set, their decisions in the sample)."""
    from .._config import cotmod_home
    from ..engine._cache import SqliteCache
    from ..governance._impact import impact as impact_fn
    from ._policies import _load_bundles

    if kw.get("guidelines"):
        raise click.UsageError("impact compares the policy bundles OLD and NEW; --guidelines does not apply here")
    config_file = kw.get("config_file")
    settings = _settings(announce_policies=False, **kw)  # the policies are OLD and NEW (said below)
    a, label_a, b, label_b, why = _load_bundles(old, new, repo, config_file, announce_config=False)
    _notice(f"cotmod: policies from {label_a} (old) and {label_b} (new)" + (f" ({why})" if why else ""))
    mapping_file = Path(mapping_path) if mapping_path else Path(golden).parent / "mapping.yaml"
    cache = SqliteCache(cotmod_home() / "cache.sqlite")
    try:
        res = impact_fn(
            a, b, settings=settings, cache=cache, golden=golden, mapping=mapping_file, work_dir=work_dir,
            sample=sample, limit=limit, policies=list(policies) or None,
        )
    finally:
        cache.close()
    code = EXIT_UNDECIDED if res["undecided"] else 0
    if as_json:
        click.echo(json.dumps({**res, "exit_code": code}, indent=2))
        if code:
            sys.exit(code)
        return
    calls = res["model_calls"]
    g_calls = res["golden"]["model_calls"]
    line = f"changed policies: {', '.join(res['changed_policies']) or 'none'}; model calls old/new: {calls['old']}/{calls['new']}"
    if "sample" in res:
        s_calls = res["sample"]["model_calls"]
        line += f" (golden set {g_calls['old']}/{g_calls['new']}, sample {s_calls['old']}/{s_calls['new']})"
    click.echo(line)
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
    for part, what in (("golden", "golden set"), ("sample", "production sample")):
        sec = res.get(part) or {}
        und, errs = sec.get("undecided") or {}, sec.get("errors") or {}
        if not any(und.values()):
            continue
        files = ", ".join(sec["error_files"][k] for k in ("old", "new") if und[k])
        click.echo(
            click.style("undecided ", fg="red")
            + f"{what}: {und['old']} item(s) without a verdict under OLD ({errs['old']} error verdict(s)), "
            f"{und['new']} under NEW ({errs['new']} error verdict(s)); left out of the comparison (see {files})"
        )
    if code:
        sys.exit(code)
