"""Triage asked one policy at a time (PLAN.txt).

    python perpolicy.py ask --dev SEED --out DIR      ten one-token requests per item (starts the local model);
                                                     DIR/answers.jsonl in bench_triage's shape, selected at 0.3
    python perpolicy.py apply RUN_DIR T OUT_DIR      re-selected at threshold T (at most 2) -> OUT_DIR/answers.jsonl

then ``bench_triage.py ... --out DIR --baseline SHIPPED_DIR --measure-only`` measures it. The answers carry the shipped
triage's prompt fingerprint (so --measure-only takes them); ``perpolicy_fp`` is this prompt's own.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
import bench_quality as bq
from openai import AsyncOpenAI

from cotmod import AsyncModerator
from cotmod.policy import load_policies
from cotmod.prompting import select_by_probability
from cotmod.prompting._compiler import boundary_lines, content_boundary
from cotmod.prompting._tokens import truncate_to_tokens

REPO = Path(__file__).resolve().parents[3]
SETS = ("jigsaw_toxic", "sms_spam", "ailuminate_demo", "xstest")
MODEL = "qwen2.5-coder-1.5b"
OUTPUT = """# Output
You are asked about ONE policy at a time: the question after the content names it. Answer with one word: "yes" if \
this content plausibly violates that policy and should be checked in detail, else "no". Most content gets "no" for \
every policy."""


def system_message(shipped: str) -> str:
    """The shipped triage system message with its output section replaced."""
    head, sep, _ = shipped.partition("# Output")
    if not sep:
        raise SystemExit("the shipped triage system message has no '# Output' section")
    return head + OUTPUT


def user_message(text: str, policy_id: str, title: str, boundary: str | None = None) -> str:
    """The item between boundary lines, then the question; one ``boundary`` for all ten questions of an item keeps
    their prefix identical up to the question (the server's prompt cache)."""
    kept, _ = truncate_to_tokens(text, 2000)
    open_, close = boundary_lines(boundary or content_boundary(kept))
    return (f"The content starts after the line {open_} and ends only at the line {close}.\n{open_}\n{kept}\n{close}\n\n"
            f"Policy: {policy_id} ({title}). Could this content plausibly violate {policy_id}? Answer yes or no.")


def p_yes(choice: Any) -> float | None:
    """P(yes) from the first generated token's top log-probabilities (renormalised over yes and no)."""
    content = (choice.logprobs.content or []) if choice.logprobs else []
    if not content:
        return None
    yes = no = 0.0
    for cand in content[0].top_logprobs:
        head = cand.token.strip().lstrip('"').lower()[:1]
        if head == "y":
            yes += math.exp(cand.logprob)
        elif head == "n":
            no += math.exp(cand.logprob)
    return round(yes / (yes + no), 4) if yes + no > 0 else None


async def ask(args: argparse.Namespace) -> None:
    from cotmod.backends._local import ensure_local_server

    guidelines = str(REPO / "guidelines")
    policies = list(load_policies([guidelines]))
    pids = [p.id for p in policies]
    base_url = ensure_local_server(MODEL, n_parallel=2)
    async with AsyncModerator(guidelines, base_url=base_url, model=MODEL, triage=True, triage_max=2, logprobs=True,
                              triage_threshold=0.3, concurrency=2, timeout=600, warm_prefix=False) as mod:  # as bench_triage
        shipped_compiler = mod.triage_compiler(pids)
        shipped_fp = shipped_compiler.fingerprint
        system = system_message(shipped_compiler.system_prompt)
    own_fp = "pp-" + hashlib.sha256((system + OUTPUT).encode()).hexdigest()[:16]
    client = AsyncOpenAI(base_url=base_url, api_key="local")
    samples = bq.benchmark_sample(list(SETS), {**bq.DEFAULT_N, **dict.fromkeys(SETS, 24)}, 2026, args.dev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "answers.jsonl"
    done = {json.loads(line)["id"] for line in path.read_text().splitlines()} if path.exists() else set()
    rows = [bq.golden_row(name, r) for name in SETS for r in samples[name]]
    todo = [r for r in rows if r["id"] not in done]
    sem = asyncio.Semaphore(1)  # one item at a time: with two, the slots alternate and the item is not reused
    lock = asyncio.Lock()

    async def one(row: dict[str, Any], fh: Any) -> None:
        async with sem:
            t0 = time.perf_counter()
            scores: dict[str, float] = {}
            missing = []
            boundary = content_boundary(truncate_to_tokens(row["text"], 2000)[0])
            for pol in policies:  # in sequence: the ten requests share the prefix up to the item
                resp = await client.chat.completions.create(
                    model=MODEL, temperature=0, max_tokens=1, logprobs=True, top_logprobs=10,
                    messages=[{"role": "system", "content": system},
                              {"role": "user", "content": user_message(row["text"], pol.id, pol.title, boundary)}])
                p = p_yes(resp.choices[0])
                if p is None:
                    missing.append(pol.id)
                scores[pol.id] = p if p is not None else 0.0
            s = time.perf_counter() - t0
        sel = select_by_probability(scores, 0.3, 2)
        rec = {"id": row["id"], "selected": [p for p in pids if p in sel], "yes": sum(v >= 0.5 for v in scores.values()),
               "scores": scores, "summary": "", "attempts": len(policies), "s": s, "fp": shipped_fp,
               "perpolicy_fp": own_fp, "no_yes_no_token": missing}
        async with lock:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()

    with path.open("a", encoding="utf-8") as fh:
        tasks = [asyncio.create_task(one(r, fh)) for r in todo]
        for i, t in enumerate(asyncio.as_completed(tasks), start=1):
            await t
            if i % 8 == 0:
                print(f"{i}/{len(todo)} items", file=sys.stderr, flush=True)


def apply(run: Path, threshold: float, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (run / "answers.jsonl").open(encoding="utf-8") as f, (out_dir / "answers.jsonl").open("w", encoding="utf-8") as w:
        for a in map(json.loads, f):
            order = list(a["scores"])
            sel = select_by_probability(a["scores"], threshold, 2)
            w.write(json.dumps({**a, "selected": [p for p in order if p in sel], "yes": sum(v >= threshold for v in a["scores"].values()),
                                "selected_at": threshold}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ask")
    a.add_argument("--dev", type=int, required=True)
    a.add_argument("--out", required=True)
    b = sub.add_parser("apply")
    b.add_argument("run")
    b.add_argument("threshold", type=float)
    b.add_argument("out")
    args = ap.parse_args()
    if args.cmd == "ask":
        asyncio.run(ask(args))
    else:
        apply(Path(args.run), args.threshold, Path(args.out))


if __name__ == "__main__":
    main()
