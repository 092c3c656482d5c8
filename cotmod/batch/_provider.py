"""The asynchronous (provider Batch API) path: export requests, import results as verdicts.

``export_batch`` writes an OpenAI Batch API input file (one ``POST /v1/chat/completions`` request
per item and policy group, ``custom_id = "<group>:<item id>"``), an index of the items, and the same
manifest ``cotmod run`` writes. ``import_batch`` reads the provider's output file, validates every
answer exactly like a live one (schema + cross-checks), and appends verdicts to an output that
``cotmod run`` can later resume or ``--retry-errors`` on (invalid answers are dead-lettered: a batch
cannot re-ask). The policies and templates must not have changed in between: the fingerprint in
the manifest is checked. Self-consistency votes and triage run live only: both are refused here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError, InputError
from .._verdict import ErrorInfo, Usage
from ..backends._openai import ChatResult, OpenAIBackend
from ..backends._pricing import price_for
from ..engine._moderator import AsyncModerator, GroupOutcome, Item
from ..prompting._compiler import CompiledPrompt
from ._reader import read_items
from ._runner import Runner, RunSummary
from ._store import Appender, OutputLock, digest, read_manifest, repair_jsonl, write_json_atomic

__all__ = ["export_batch", "import_batch"]


def _index_path(requests: Path) -> Path:
    return requests.with_name(requests.name + ".index.jsonl")


def export_batch(
    moderator: AsyncModerator,
    input_path: str | Path,
    requests_path: str | Path,
    *,
    policies: list[str] | None = None,
    id_field: str = "id",
    text_field: str = "text",
    fmt: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Write the Batch API request file; returns counts. Bad rows go to ``<requests>.errors.jsonl``."""
    if moderator.settings.votes > 1:
        raise ConfigError("batch export sends one request per policy call; self-consistency votes > 1 run live only (cotmod run --votes)")
    _refuse_triage(moderator, policies, "export")
    req_path = Path(requests_path)
    model_name = model or moderator.settings.model or moderator.model_name
    groups = moderator.policy_groups(policies)
    manifest = Runner(moderator).manifest(policies)
    manifest["model"] = model_name
    manifest["groups"] = [list(g) for g in groups]
    wire = OpenAIBackend(base_url="http://127.0.0.1/v1", model=model_name)
    seen: set[int] = set()
    counts = {"items": 0, "requests": 0, "bad_rows": 0}
    tmp_req, tmp_idx = req_path.with_suffix(".tmp"), _index_path(req_path).with_suffix(".tmp")
    # one export, one dead-letter file: a re-export replaces it instead of appending duplicates
    Runner.errors_path(req_path).unlink(missing_ok=True)
    errors = Appender(Runner.errors_path(req_path))
    try:
        with tmp_req.open("w", encoding="utf-8") as rf, tmp_idx.open("w", encoding="utf-8") as xf:
            for row in read_items(input_path, id_field=id_field, text_field=text_field, fmt=fmt):
                d = digest(row.id)
                duplicate = row.problem is None and d in seen
                problem = row.problem or (f"duplicate id {row.id!r}" if duplicate else None)
                seen.add(d)
                if problem is not None:
                    etype = "DuplicateId" if duplicate else "BadRow"  # the names cotmod run uses
                    errors.write({"id": row.id, "line": row.line, "error_type": etype, "message": f"{input_path}:{row.line}: {problem}", "retryable": False})
                    counts["bad_rows"] += 1
                    continue
                assert row.text is not None
                prompts = [moderator.compiler(g).compile(row.text, item_id=row.id) for g in groups]
                for gi, p in enumerate(prompts):
                    body = wire._payload(moderator.request_for(p))
                    rf.write(json.dumps({"custom_id": f"{gi}:{row.id}", "method": "POST", "url": "/v1/chat/completions", "body": body}, ensure_ascii=False) + "\n")
                    counts["requests"] += 1
                xf.write(json.dumps({"id": row.id, "line": row.line, "item_tokens": prompts[0].item_tokens, "truncated": prompts[0].truncated}) + "\n")
                counts["items"] += 1
    finally:
        errors.close()
    os.replace(tmp_req, req_path)
    os.replace(tmp_idx, _index_path(req_path))
    write_json_atomic(Runner.manifest_path(req_path), manifest)
    return counts


def _refuse_triage(moderator: AsyncModerator, policies: list[str] | None, what: str) -> None:
    """Triage decides per item which policy calls to make after a first call; a batch sends every
    call at once, so it cannot triage."""
    if moderator.triage_applies(policies):
        raise ConfigError(
            f"batch {what} sends every policy call at once; triage (a first call choosing which policy calls "
            "to make) runs live only (cotmod run --triage): turn it off (--no-triage, COTMOD_TRIAGE=0)"
        )
    if moderator.cascade:
        raise ConfigError(
            f"batch {what} sends every item to the model; a cascade (classifier scores deciding which items "
            "need the LLM) runs live only (cotmod run --cascade): run without the cascade file"
        )


def _read_results(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{n}: not valid UTF-8 (byte {exc.start + 1} of the line)") from None
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict) or obj.get("custom_id") is None:
                raise InputError(f"{path}:{n}: not a Batch API result line (needs custom_id)")
            out[str(obj["custom_id"])] = obj
    return out


def _index(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InputError(f"{path}:{n}: not an index line written by cotmod batch export; export again") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{n}: not an index line written by cotmod batch export; export again")
            yield obj


def import_batch(
    moderator: AsyncModerator,
    results_path: str | Path,
    requests_path: str | Path,
    output_path: str | Path,
    *,
    policies: list[str] | None = None,
) -> RunSummary:
    """Turn a Batch API output file into verdicts (appended to ``output_path``, resumable).

    ``policies``, if given, must be the policies the requests were exported for (in any order);
    a mismatch is a :class:`~cotmod.ConfigError` (the answers cover exactly the exported ones).
    """
    req_path, out = Path(requests_path), Path(output_path)
    mpath = Runner.manifest_path(req_path)
    if not mpath.exists() or not _index_path(req_path).exists():
        raise ConfigError(f"{req_path}: missing {mpath.name} or index; export it with cotmod batch export")
    manifest = read_manifest(mpath, req_path)
    assert manifest is not None
    try:
        groups = [tuple(str(p) for p in g) for g in manifest["groups"]]
    except (KeyError, TypeError):
        raise InputError(f"{mpath}: no 'groups' list; it was not written by cotmod batch export, export again") from None
    exported = [pid for g in groups for pid in g]
    if policies and set(policies) != set(exported):
        raise ConfigError(
            f"--policy {' '.join(policies)} does not match the policies {req_path} was exported for "
            f"({', '.join(exported)}); import with those, or without --policy"
        )
    policies = exported
    _refuse_triage(moderator, policies, "import")
    current = Runner(moderator).manifest(policies)
    if current["prompt_fingerprint"] != manifest["prompt_fingerprint"] or current["policies"] != manifest["policies"]:
        raise ConfigError(
            f"the policies or templates changed since {req_path} was exported "
            f"(fingerprint {manifest['prompt_fingerprint']} then, {current['prompt_fingerprint']} now); export again"
        )
    # what produced these answers is the export's configuration (model, sampling)
    run_manifest = {k: manifest.get(k, current[k]) for k in current}
    runner = Runner(moderator)
    # the output manifest: same shape as cotmod run's, so run --retry-errors can continue it
    with OutputLock(out):  # no other run or import writes it meanwhile
        written = any(p.exists() and p.stat().st_size > 0 for p in (out, runner.errors_path(out)))
        old = read_manifest(Runner.manifest_path(out), out)
        if written and old is None:
            raise ConfigError(f"{out} exists but was not written by cotmod (no {Runner.manifest_path(out).name}); choose another output")
        if written and old is not None:
            diffs = [k for k in run_manifest if old.get(k) != run_manifest[k]]
            if diffs:
                raise ConfigError(f"{out} holds verdicts from a different configuration ({', '.join(diffs)} differ)")
        results = _read_results(Path(results_path))
        decided = repair_jsonl(out, unique=True)
        failed = repair_jsonl(runner.errors_path(out))
        done = decided | failed  # dead-lettered ids count as done
        write_json_atomic(Runner.manifest_path(out), run_manifest)
        writer = Appender(out)
        try:
            dead = Appender(runner.errors_path(out))
        except BaseException:
            writer.close()
            raise
        summary = RunSummary(output=str(out))
        summary.price_in, summary.price_out = price_for(str(manifest["model"]))
        compilers = [moderator.compiler(g) for g in groups]
        try:
            for entry in _index(_index_path(req_path)):
                item_id = str(entry["id"])
                summary.input_rows += 1
                d = digest(item_id)
                if d in done:
                    summary.resumed_skipped += 1
                    if d not in decided:
                        summary.previously_dead_lettered += 1
                    continue
                outcomes: list[GroupOutcome] = []
                missing = False
                prompts = [c.compile("x", item_id=item_id) for c in compilers]
                for gi, prompt in enumerate(prompts):
                    res = results.get(f"{gi}:{item_id}")
                    if res is None:
                        missing = True
                        break
                    outcomes.append(_outcome_from_result(moderator, res, prompt, str(manifest["model"])))
                line = int(entry.get("line", 0))
                if missing:
                    dead.write({"id": item_id, "line": line, "error_type": "MissingResult", "message": "no result for this item in the batch output", "retryable": True})
                    summary.dead_lettered += 1
                    continue
                if entry.get("truncated"):
                    prompts = [
                        dataclasses.replace(p, item_tokens=int(entry["item_tokens"]), kept_tokens=moderator.settings.max_item_tokens, truncated=True)
                        for p in prompts
                    ]
                v = moderator.build_verdict(Item("x", item_id), groups, prompts, outcomes, 0.0)
                summary.add(v)
                if v.status == "ok":
                    writer.write(v.model_dump_json())
                else:
                    dead.write(
                        {
                            "id": item_id,
                            "line": line,
                            "error_type": v.error.type if v.error else "ModelOutputError",
                            "message": v.error.message if v.error else "invalid output",
                            "raw_output": v.error.raw_output if v.error else None,
                            "attempts": v.attempts,
                            "retryable": True,
                        }
                    )
                    summary.dead_lettered += 1
        finally:
            writer.close()
            dead.close()
        return summary


def _outcome_from_result(moderator: AsyncModerator, res: dict[str, Any], prompt: CompiledPrompt, model: str) -> GroupOutcome:
    response = res.get("response") or {}
    body = response.get("body") if isinstance(response, dict) else None
    if not isinstance(response, dict) or not isinstance(body or {}, dict):
        what = "response" if not isinstance(response, dict) else "response.body"
        return GroupOutcome([], [], Usage(), 1, 0, 0, model, ErrorInfo(type="BatchRequestError", message=f"malformed result: {what} is not an object"))
    body = body or {}
    status = response.get("status_code")
    if res.get("error") or status != 200:
        msg = json.dumps(res.get("error") or body.get("error") or {"status_code": status})[:500]
        return GroupOutcome([], [], Usage(), 1, 0, 0, model, ErrorInfo(type="BatchRequestError", message=msg))
    u = body.get("usage")
    u = u if isinstance(u, dict) else {}
    usage = Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        total_tokens=int(u.get("total_tokens") or 0),
    )
    try:
        choice = body["choices"][0]
        raw = choice["message"].get("content") or ""
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return GroupOutcome([], [], usage, 1, 0, 0, model, ErrorInfo(type="BatchRequestError", message="result has no choices"))
    result = ChatResult(text=str(raw), finish_reason=finish, usage=usage, model=str(body.get("model") or model))
    outcome = moderator.outcome_from_output(prompt, result)
    if outcome.error is not None:
        outcome.error = ErrorInfo(
            type=outcome.error.type, message=f"invalid output (batch, no re-ask): {outcome.error.message}", raw_output=outcome.error.raw_output
        )
    return outcome
