"""Impact preview of a policy change, before shipping it.

Runs the golden set (and optionally an unlabelled production sample) under the OLD and the NEW
policy bundles with one shared result cache: decisions of unchanged policies have the same prompt
fingerprint, so they come from the cache and only the changed policies reach the model. Reports
metric deltas with the harness's paired comparison (bootstrap CIs, McNemar) and every decision that
flips, with the new rationale.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._config import Settings
from .._exceptions import ConfigError, InputError
from ..batch._runner import Runner
from ..engine._cache import Cache
from ..engine._moderator import AsyncModerator
from ..evals._compare import compare
from ..evals._harness import compute_metrics, run_eval, write_metrics
from ..policy._model import PolicySet
from ._diff import diff_policies

__all__ = ["impact"]


def _verdicts(path: Path) -> dict[str, dict[str, Any]]:
    """Verdicts by item id; a torn last line (a killed write) is skipped, any other bad line is
    an InputError naming it."""
    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        for n, line in enumerate(lines, start=1):
            if not line:
                continue
            try:
                v = json.loads(line)
                out[str(v["item_id"])] = v
            except (json.JSONDecodeError, KeyError, TypeError):
                if n == len(lines):  # no trailing newline: a torn final write
                    continue
                raise InputError(f"{path}:{n}: not a verdict line") from None
    return out


def impact(
    old: PolicySet,
    new: PolicySet,
    *,
    settings: Settings,
    cache: Cache,
    golden: str | Path,
    mapping: str | Path,
    work_dir: str | Path,
    sample: str | Path | None = None,
    limit: int | None = None,
    backend: Any = None,
    policies: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``policies``: preview only these policies (``cotmod impact -p``); None = every policy."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    diffs = diff_policies(old, new)
    if policies:
        for pid in policies:
            if pid not in new and pid not in old:
                known = ", ".join(sorted(set(new.ids) | set(old.ids)))
                raise ConfigError(f"--policy {pid!r}: unknown policy (known: {known})")
        diffs = [d for d in diffs if d.policy_id in policies]
    changed = [d.policy_id for d in diffs if d.policy_id in new and d.status in ("changed", "added")]
    result: dict[str, Any] = {
        "changed_policies": changed,
        "diff": [d.to_dict() for d in diffs if d.status != "unchanged"],
        "version_errors": [e for d in diffs for e in d.errors],
    }

    def moderator(policies: PolicySet) -> AsyncModerator:
        return AsyncModerator(policies, settings=settings, cache=cache, backend=backend)

    calls: dict[str, int] = {}
    measured = {}
    for name, bundle in (("old", old), ("new", new)):
        only = [p for p in policies if p in bundle] if policies else None
        # each impact starts over in its directory, as the sample runs do (the shared cache makes an
        # unchanged decision free): a second impact into DIR after another edit is not refused
        _, summary = run_eval(moderator(bundle), golden, mapping, work / name, limit=limit, policies=only, overwrite=True)
        calls[name] = summary.model_calls
        measured[name] = compute_metrics(work / name)
        write_metrics(measured[name])
    cmp = compare(measured["old"], measured["new"]).model_dump(mode="json")
    new_verdicts = _verdicts(work / "new" / "verdicts.jsonl")
    for label in cmp["labels"].values():
        for f in label["flipped"]:
            v = new_verdicts.get(f["id"], {})
            f["new_rationale"] = [d["rationale"] for d in v.get("decisions", []) if d["policy_id"] in changed]
            f["new_rules"] = [r for d in v.get("decisions", []) if d["policy_id"] in changed for r in d["rule_ids"]]
    result["golden"] = {
        "comparison": cmp,  # paired on the items decided on both sides
        "model_calls": calls,
        # items of the golden set without a verdict (error verdicts, or never written), per side
        "undecided": {k: m.errors + m.missing for k, m in measured.items()},
        "errors": {k: m.errors for k, m in measured.items()},
        "error_files": {k: str(Runner.errors_path(work / k / "verdicts.jsonl")) for k in measured},
    }

    if sample is not None and changed:
        flips: list[dict[str, Any]] = []
        outs = {}
        sample_calls = {"old": 0, "new": 0}
        sample_undecided = {"old": 0, "new": 0}
        sample_errors = {"old": 0, "new": 0}
        for name, bundle in (("old", old), ("new", new)):
            pols = [p for p in changed if p in bundle]
            if not pols:
                continue
            out = work / f"sample-{name}.jsonl"
            summary = Runner(moderator(bundle)).run_sync(sample, out, policies=pols, overwrite=True)
            sample_calls[name] = summary.model_calls
            sample_undecided[name] = summary.undecided
            sample_errors[name] = summary.errors
            outs[name] = _verdicts(out)
        a, b = outs.get("old", {}), outs.get("new", {})
        for item_id, vb in b.items():
            if "old" in outs and item_id not in a:
                continue  # undecided under OLD (counted there): no decision to flip from
            va = a.get(item_id)
            for d in vb["decisions"]:
                before = next((x for x in (va or {}).get("decisions", []) if x["policy_id"] == d["policy_id"]), None)
                if before is None or before["violates"] != d["violates"]:
                    flips.append(
                        {
                            "id": item_id,
                            "policy": d["policy_id"],
                            "before": None if before is None else before["violates"],
                            "after": d["violates"],
                            "rules": d["rule_ids"],
                            "rationale": d["rationale"],
                        }
                    )
        compared = [i for i in b if "old" not in outs or i in a]
        result["sample"] = {
            "items": len(compared),  # decided on both sides (under NEW only when OLD has none of the changed policies)
            "flipped": flips,
            "flip_rate": len({f["id"] for f in flips}) / len(compared) if compared else 0.0,
            "model_calls": sample_calls,
            "undecided": sample_undecided,
            "errors": sample_errors,
            "error_files": {k: str(Runner.errors_path(work / f"sample-{k}.jsonl")) for k in ("old", "new")},
        }
    sample_calls_ = result.get("sample", {}).get("model_calls", {"old": 0, "new": 0})
    result["model_calls"] = {k: calls[k] + sample_calls_[k] for k in ("old", "new")}  # golden set + sample
    result["undecided"] = sum(result["golden"]["undecided"].values()) + sum(result.get("sample", {}).get("undecided", {}).values())
    (work / "impact.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result
