"""Prompt tokens per policy call, static (every example) vs ``dynamic_examples = 3``, for the policy calls
the runs in this directory made (each item's triage-selected policies), counted with cotmod's token counter
on the compiled prompts: the whole prompt and the part after the static prefix (what a server's prompt
cache cannot reuse). For hatecheck (one call per item, no triage) also the server-reported usage.

    python benchmarks/results/quality-qwen1.5b-v1.6-dev2031-dynamic/tokens.py > tokens.json
"""

from __future__ import annotations

import json
import statistics as st
import sys
from pathlib import Path
from typing import Any

from cotmod import AsyncModerator, Settings


def jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main(out: Path) -> dict[str, Any]:
    mods = {k: AsyncModerator(settings=Settings(decision_logic=True, dynamic_examples=n)) for k, n in (("new", 0), ("dyn3", 3))}
    res: dict[str, Any] = {}
    for set_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        vf = set_dir / "new" / "run" / "verdicts.jsonl"
        if not vf.exists():
            continue
        texts = {r["id"]: r["text"] for r in jsonl(set_dir / "sample.jsonl")}
        calls = [
            (v["item_id"], d["policy_id"])
            for v in jsonl(vf)
            if v.get("status") == "ok"
            for d in v["decisions"]
            if not (d.get("rationale") or "").startswith("Triaged out")
        ]
        row: dict[str, Any] = {"policy_calls": len(calls), "items": len(texts)}
        for k, mod in mods.items():
            tot, tail = [], []
            for iid, pid in calls:
                comp = mod.compiler([pid])
                p = comp.compile(texts[iid], item_id=iid)
                tot.append(p.prompt_tokens)
                tail.append(p.prompt_tokens - comp.system_tokens)
            row[k] = {"prompt_per_call": round(st.mean(tot), 1), "after_prefix_per_call": round(st.mean(tail), 1)}
            f = set_dir / k / "run" / "verdicts.jsonl"
            if set_dir.name == "hatecheck" and f.exists():
                vs = jsonl(f)
                row[k]["server"] = {
                    "prompt": round(st.mean(v["usage"]["prompt_tokens"] for v in vs), 1),
                    "uncached": round(st.mean(v["usage"]["prompt_tokens"] - v["usage"].get("cached_prompt_tokens", 0) for v in vs), 1),
                    "latency_s_median": round(st.median(v["latency_ms"] for v in vs) / 1000, 1),
                    "n": len(vs),
                }
        res[set_dir.name] = row
    return res


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent), indent=1))
