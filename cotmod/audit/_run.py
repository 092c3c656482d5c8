"""Running an audit: the plan's sampled items re-judged by the auditor through the batch runner.

The audit output is a ``cotmod run`` verdict file (resumable, cached, cost counted, with its
``.errors.jsonl`` and ``.manifest.json``); each item is judged on the policies whose sample it is
in. ``<output>.audit.json`` ties the output to its plan (the plan's sha256): an output written for
another plan, or with other policy versions than the plan's, is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError, InputError
from .._verdict import Verdict
from ..batch._store import errors_path, write_json_atomic
from ._plan import AuditPlan

__all__ = ["audit_link_path", "check_audit_output", "check_auditor_policies", "read_audit", "run_audit", "run_audit_async"]


def audit_link_path(output: Path) -> Path:
    return output.with_name(output.name + ".audit.json")


def check_auditor_policies(plan: AuditPlan, versions: dict[str, str]) -> None:
    """The auditor's policies must be the plan's, at the plan's versions."""
    for pid, ver in plan.policies.items():
        if pid not in versions:
            raise ConfigError(f"the plan audits policy {pid!r}, which the auditor's guidelines lack ({', '.join(sorted(versions))})")
        if versions[pid] != ver:
            raise ConfigError(
                f"the plan was made for {pid} {ver}, the auditor's guidelines have {pid} {versions[pid]}; "
                "make a new plan (cotmod audit plan) for the current policy version"
            )


def check_audit_output(plan: AuditPlan, output: Path, *, overwrite: bool = False) -> None:
    """Refuse an audit output that belongs to another plan (or to no plan)."""
    link = audit_link_path(output)
    has = (output.exists() and output.stat().st_size > 0) or (errors_path(output).exists() and errors_path(output).stat().st_size > 0)
    if overwrite or not has:
        return
    if not link.exists():
        raise ConfigError(f"{output} exists but is not an audit output (no {link.name}); choose another output or pass --overwrite")
    try:
        old = json.loads(link.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{link}: unreadable ({exc})") from None
    if old.get("plan_sha256") != plan.sha256:
        raise ConfigError(
            f"{output} holds an audit of another plan ({old.get('plan_path')}, sha256 {str(old.get('plan_sha256'))[:12]}…, "
            f"this plan {str(plan.sha256)[:12]}…); refusing to mix audits. Write to another output, or pass --overwrite"
        )


def _write_link(plan: AuditPlan, output: Path, model: str) -> None:
    write_json_atomic(
        audit_link_path(output),
        {"plan_path": plan.path, "plan_sha256": plan.sha256, "policies": plan.policies, "auditor_model": model},
    )


async def run_audit_async(
    plan: AuditPlan,
    moderator: Any,
    output: str | Path,
    *,
    concurrency: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    retry_errors: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    on_progress: Callable[[Any, int | None], None] | None = None,
) -> Any:
    """Judge the plan's items with ``moderator`` (an :class:`~cotmod.AsyncModerator`) into
    ``output``; returns the runner's :class:`~cotmod.RunSummary`. Does not close the moderator."""
    from ..batch._runner import Runner

    out = Path(output)
    check_auditor_policies(plan, {pid: moderator.policies[pid].version for pid in moderator.policies.ids})
    check_audit_output(plan, out, overwrite=overwrite)
    runner = Runner(moderator, concurrency=concurrency, rpm=rpm, tpm=tpm, price_in=price_in, price_out=price_out)
    rows = [{"id": it.id, "text": it.text, "policies": it.policies} for it in plan.items]
    summary = await runner.run(
        rows, out, policies=list(plan.policies), policies_field="policies", retry_errors=retry_errors,
        overwrite=overwrite, limit=limit, on_progress=on_progress,
    )
    _write_link(plan, out, moderator.model_name)
    # an item the runner took but that has neither verdict nor dead letter cannot happen; items
    # beyond --limit stay to be run: the report counts them as not audited
    summary.input_rows = len(rows) if summary.input_rows == 0 else summary.input_rows
    return summary


def run_audit(
    plan: AuditPlan,
    moderator: Any,
    output: str | Path,
    *,
    concurrency: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    retry_errors: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    on_progress: Callable[[Any, int | None], None] | None = None,
) -> Any:
    """The blocking twin of :func:`run_audit_async` (same parameters), on a fresh event loop;
    closes the moderator's connections after, like :meth:`cotmod.Runner.run_sync`."""
    import asyncio

    async def go() -> Any:
        try:
            return await run_audit_async(
                plan, moderator, output, concurrency=concurrency, rpm=rpm, tpm=tpm, price_in=price_in,
                price_out=price_out, retry_errors=retry_errors, overwrite=overwrite, limit=limit, on_progress=on_progress,
            )
        finally:
            await moderator.aclose()

    return asyncio.run(go())


def read_audit(plan: AuditPlan, output: str | Path) -> tuple[dict[str, Verdict], dict[str, str], str]:
    """(verdicts by id, auditor failures by id: error message, auditor model) of an audit output
    made for ``plan``; refuses an output of another plan or policy version."""
    out = Path(output)
    if not out.is_file():
        raise InputError(f"audit output not found: {out}")
    link = audit_link_path(out)
    if not link.exists():
        raise ConfigError(f"{out}: not an audit output (no {link.name}: write it with cotmod audit run)")
    try:
        meta = json.loads(link.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{link}: unreadable ({exc})") from None
    if meta.get("plan_sha256") != plan.sha256:
        old_path, old_sha = meta.get("plan_path"), str(meta.get("plan_sha256"))[:12]
        same = old_path is not None and Path(str(old_path)).resolve() == Path(str(plan.path)).resolve()
        why = (
            f"{plan.path} changed since the audit (sha256 {old_sha}… when audited, {str(plan.sha256)[:12]}… now; "
            "was it re-planned?); give the plan the audit was run from, or run the audit again"
            if same
            else f"run from {old_path} (sha256 {old_sha}…), this plan is {plan.path} (sha256 {str(plan.sha256)[:12]}…); "
            "give the plan it was run from"
        )
        raise ConfigError(f"{out} is the audit of another plan: {why}")
    from ..batch._store import read_dead_letters

    want = {it.id: it for it in plan.items}
    verdicts: dict[str, Verdict] = {}
    with out.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                v = Verdict.model_validate_json(raw)
            except ValueError as exc:
                if not raw.endswith(b"\n"):
                    continue  # a torn final line (the run was killed): the resume repairs it
                raise InputError(f"{out}:{n}: not a verdict ({str(exc).splitlines()[0]})") from None
            if v.item_id not in want:
                raise InputError(f"{out}:{n}: id {v.item_id!r} is not in the plan")
            for pid in want[v.item_id].policies:
                ver = v.policy_versions.get(pid)
                if ver is not None and ver != plan.policies[pid]:
                    raise ConfigError(f"{out}:{n}: judged with {pid} {ver}, the plan is for {plan.policies[pid]}")
            verdicts[v.item_id] = v
    failures: dict[str, str] = {}
    for entry in read_dead_letters(errors_path(out)):
        if entry.id not in verdicts:
            try:
                msg = json.loads(entry.raw).get("message", "")
            except ValueError:
                msg = ""
            failures[entry.id] = str(msg)
    return verdicts, failures, str(meta.get("auditor_model") or "")
