"""Policy authoring: ``lint``, ``render``, ``schema``, ``diff`` and the labeling ``guide``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ._app import (
    CONTEXT,
    EXIT_UNDECIDED,
    _check_text,
    _endpoint_options,
    _Group,
    _notice,
    _policy_source,
    _settings,
    cli,
)


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file (for its guidelines).")
def lint(paths: tuple[str, ...], as_json: bool, strict: bool, config_file: str | None) -> None:
    """Check policy files against the schema and semantic rules (default: the config's
    guidelines, else ./guidelines, else the starter pack).

    Prints FILE:LINE: FIELD: MESSAGE for every problem; exits 1 on any error.
    """
    from ..policy._lint import lint_paths

    report = lint_paths(list(paths) or [_policy_source(None, config_file)])
    failed = bool(report.errors or (strict and report.warnings))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for e in report.errors:
            click.echo(click.style("error ", fg="red") + str(e))
        for w in report.warnings:
            click.echo(click.style("warning ", fg="yellow") + str(w))
        status = "FAILED" if failed else "ok"
        invalid = len(report.invalid_files)
        click.echo(
            f"{status}: {len(report.files)} file(s), {len(report.policies)} valid polic(ies)"
            + (f", {invalid} invalid file(s)" if invalid else "")
            + f", {len(report.errors)} error(s), {len(report.warnings)} warning(s)"
        )
    if failed:
        sys.exit(EXIT_UNDECIDED)


@cli.command(context_settings=CONTEXT)
@click.argument("text", default="<example content>")
@click.option("--json", "as_json", is_flag=True, help="Print messages, schema and counts as JSON.")
@click.option("--vars", "show_vars", is_flag=True, help="List the variables each template uses.")
@_endpoint_options
def render(text: str, as_json: bool, show_vars: bool, policies: tuple[str, ...], **kw: Any) -> None:
    """Show exactly the prompt(s) the model receives for TEXT, with token counts."""
    from ..engine._moderator import AsyncModerator
    from ..prompting._compiler import REASK_TEMPLATE, SYSTEM_TEMPLATE, USER_TEMPLATE
    from ..prompting._tokens import count_tokens, token_counter_name

    settings = _settings(**kw)
    mod = AsyncModerator(settings.guidelines, settings=settings)
    prompts = mod.render(_check_text(text, "TEXT"), list(policies) or None)
    if show_vars:
        used = {name: sorted(mod.templates.variables(name)) for name in (SYSTEM_TEMPLATE, USER_TEMPLATE, REASK_TEMPLATE)}
        if as_json:
            click.echo(json.dumps(used, indent=2))
            return
        for name, names in used.items():
            click.echo(f"{name}: {', '.join(names)}")
        return
    triage = mod.triage_applies(list(policies) or None)  # then the first prompt is the triage prompt
    out: list[dict[str, Any]] = []
    for i, p in enumerate(prompts):
        per_message = [count_tokens(m["content"]) for m in p.messages]
        by_role: dict[str, int] = {}
        for m, n in zip(p.messages, per_message, strict=True):
            by_role[m["role"]] = by_role.get(m["role"], 0) + n
        out.append(
            {
                **({"triage": True} if triage and i == 0 else {}),
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
        kind = "triage: " if o.get("triage") else ""
        click.echo(click.style(f"=== {kind}{', '.join(f'{k} {v}' for k, v in o['policies'].items())}  fingerprint {o['fingerprint']}", bold=True))
        for m, n in zip(o["messages"], o["message_tokens"], strict=True):
            click.echo(click.style(f"--- {m['role']} ({n} tokens, {token_counter_name()})", fg="cyan"))
            click.echo(m["content"])
        if o["truncated"]:
            click.echo(click.style("(item truncated to the token budget)", fg="yellow"))


@cli.command(context_settings=CONTEXT)
@click.argument("which", type=click.Choice(["verdict", "policy", "decision"]))
@click.option("--policy", "-p", "policies", multiple=True, help="For 'decision': the policies (default: all).")
@click.option("--guidelines", "-g", type=click.Path(exists=True), help="For 'decision': policy directory or file [default: as for lint].")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file (for its guidelines).")
def schema(which: str, policies: tuple[str, ...], guidelines: str | None, config_file: str | None) -> None:
    """Print a JSON Schema: the verdict cotmod returns, the policy file format, or the model's
    decision output for some policies."""
    from .._verdict import verdict_json_schema
    from ..policy._lint import load_policies
    from ..policy._model import policy_json_schema
    from ..prompting._decision import decision_schema

    if which == "verdict":
        data = verdict_json_schema()
    elif which == "policy":
        data = policy_json_schema()
    else:
        ps = load_policies([_policy_source(guidelines, config_file)])
        data = decision_schema(ps.select(list(policies) or None))
    click.echo(json.dumps(data, indent=2))


def _load_bundles(old: str, new: str, repo: str, config_file: str | None, *, announce_config: bool = True) -> tuple[Any, str, Any, str, str | None]:
    """The policy bundles OLD and NEW of ``diff`` and ``impact``: ``(old, old label, new, new label,
    why)``. A bare git revision (``REV``) means that revision's copy of the path the other argument
    names, else of the policy directory in use (the config's guidelines, else ./guidelines), else of
    ``guidelines``; ``why`` says which (None when neither argument is a bare revision)."""
    from .._config import _find_config, _show, resolve_policy_source
    from ..governance._diff import is_bare_revision, load_bundle, revision_subdir

    def in_use() -> tuple[Path, str, bool] | None:
        found = _find_config(config_file)
        if found and announce_config:
            _notice(f"cotmod: using config {_show(found[0])}")
        source = resolve_policy_source(None, config_file=config_file)
        if source.origin == "config":
            return source.path, f"{_show(source.path)} (guidelines in {_show(found[0]) if found else 'the config file'})", True
        if source.origin == "cwd":
            return source.path, _show(source.path), False
        return None

    why = None
    subdir = "guidelines"
    if is_bare_revision(old) or is_bare_revision(new):
        subdir, why = revision_subdir(old, new, repo=repo, in_use=in_use)
        why = f"a bare revision means its copy of {subdir or 'the repository root'}: {why}"
    a, label_a = load_bundle(old, repo=repo, subdir=subdir)
    b, label_b = load_bundle(new, repo=repo, subdir=subdir)
    return a, label_a, b, label_b, why


@cli.command(context_settings=CONTEXT)
@click.argument("old")
@click.argument("new")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option("--repo", default=".", show_default=True, help="Git repository for revision arguments.")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file (for its guidelines).")
def diff(old: str, new: str, fmt: str, repo: str, config_file: str | None) -> None:
    """Semantic diff of two policy bundles: directories, or git revisions (REV or REV:path).

    A bare REV means that revision's copy of the other argument's directory, else of the policy
    directory in use (the config's guidelines, else ./guidelines); stderr says which.

    Rules, exceptions, definitions, severities/actions, escalation and examples are compared by
    stable ID; version bumps are checked (a changed policy with an unchanged version, a version
    that goes down, or a removed rule without a major bump, is an error: exit 1).

    \b
    Examples:
      cotmod diff HEAD~1 HEAD
      cotmod diff old_guidelines/ guidelines/ --format markdown > CHANGELOG-policies.md
    """
    from ..governance._diff import changelog_markdown, diff_policies

    a, label_a, b, label_b, why = _load_bundles(old, new, repo, config_file)
    _notice(f"cotmod: comparing {label_a} with {label_b}" + (f" ({why})" if why else ""))
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
            if d.status == "removed":
                head = f"{d.policy_id}: removed (was {d.old_version})"
            elif d.status == "added":
                head = f"{d.policy_id}: added ({d.new_version})"
            else:
                head = f"{d.policy_id}: {d.status} {d.old_version} -> {d.new_version}"
            click.echo(click.style(head, bold=True) + (f" (needs {d.required_bump})" if d.required_bump else ""))
            for c in d.changes:
                click.echo(f"  {c.kind:<28} {c.detail}")
        for e in errors:
            click.echo(click.style("error ", fg="red") + e)
        if not any(d.status != "unchanged" for d in diffs):
            click.echo("no changes")
    if errors:
        sys.exit(EXIT_UNDECIDED)


@cli.group(cls=_Group, context_settings=CONTEXT)
def guide() -> None:
    """The human labeling guide, compiled from the same policy files as the prompts."""


@guide.command("export", context_settings=CONTEXT)
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File to write [default: stdout].")
@click.option("--guidelines", "-g", type=click.Path(exists=True), help="Policy directory or file.")
@click.option("--policy", "-p", "policies", multiple=True, help="Policy id (repeatable) [default: all].")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file (for its guidelines).")
def guide_export(fmt: str, output: str | None, guidelines: str | None, policies: tuple[str, ...], config_file: str | None) -> None:
    """Export the reviewers' guide: definitions, rules, exceptions, examples, decision flow,
    severity → action and escalation tables, with versions and a fingerprint. Policies: as for
    lint (--guidelines, else the config's, else ./guidelines, else the starter pack)."""
    from ..governance._guide import guide_html, guide_markdown
    from ..policy._lint import load_policies

    ps = load_policies([_policy_source(guidelines, config_file)]).select(list(policies) or None)
    text = guide_html(ps) if fmt == "html" else guide_markdown(ps)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)
