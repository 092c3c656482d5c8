"""Runner overhead: ``cotmod run`` (Runner API, in-process) vs a bare asyncio loop over the openai SDK.

Both sides hit the same instant fake server (delay 0) at the same concurrency with the same items,
and send the same request body (the messages and json_schema response_format cotmod renders for
policy spam_scams). The bare loop is an ``asyncio.Semaphore(C)`` over
``AsyncOpenAI.chat.completions.create`` that only ``json.loads`` the content; its prompts are
rendered before the clock starts. So ``ratio = runner / bare`` is the share of the bare loop's
throughput that the runner keeps, with everything cotmod adds (prompt compilation, rate/concurrency
limiters, validation, verdicts, the output file) counted as overhead. Target: ratio >= 0.9.

A second baseline, ``bare_post``, sends the same body through the SDK's low-level ``client.post``
(what cotmod's transport uses, skipping the SDK's per-request transform of the body); it is
reported as ``ratio_vs_post``. A third runner variant sets a tokens-per-minute cap so high it never
binds (``runner_tpm_items_per_s``, ``tpm_ratio`` = with / without), to show the cost of the
runner's per-request token accounting alone.

Rounds alternate runner / bare / bare_post after a warm-up; the figures are medians over rounds.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import _common as c

CONCURRENCY = 16
UNBINDING_TPM = 1e12  # a token cap that never binds: measures only the cost of token accounting


def runner_rate(base_url: str, inp: Path, out: Path, n: int, *, tpm: float | None = None) -> float:
    d = c.run_runner(base_url, inp, out, concurrency=CONCURRENCY, tpm=tpm)
    if d["processed"] != n or d["errors"] or d["dead_lettered"]:
        raise RuntimeError(f"runner: processed {d['processed']} of {n}, errors {d['errors']}, dead-lettered {d['dead_lettered']}")
    # the runner's own clock starts after setup (manifest, resume scan); the wall clock is fairer
    return n / d["wall_s"]


def main() -> None:
    args = c.parse_args(__doc__.split("\n\n")[0])
    n = 300 if args.quick else 3000
    rounds = 3
    with c.workdir("overhead") as tmp:
        inp = tmp / "items.jsonl"
        c.make_input(inp, n, seed=args.seed)
        warm = tmp / "warm.jsonl"
        c.make_input(warm, 50, seed=args.seed + 1)
        payloads = c.payloads_for(c.read_items(inp), CONCURRENCY)
        warm_payloads = c.payloads_for(c.read_items(warm), CONCURRENCY)
        runner_r: list[float] = []
        bare_r: list[float] = []
        post_r: list[float] = []
        tpm_r: list[float] = []
        with c.server(delay=0.0) as url:
            # warm-up: imports, tiktoken tables, connection setup paths
            c.run_runner(url, warm, tmp / "warm.out.jsonl", concurrency=CONCURRENCY)
            asyncio.run(c.bare_loop(url, warm_payloads, CONCURRENCY, low_level=False))
            asyncio.run(c.bare_loop(url, warm_payloads, CONCURRENCY, low_level=True))
            for i in range(rounds):
                runner_r.append(runner_rate(url, inp, tmp / f"out{i}.jsonl", n))
                bare_r.append(asyncio.run(c.bare_loop(url, payloads, CONCURRENCY, low_level=False)))
                post_r.append(asyncio.run(c.bare_loop(url, payloads, CONCURRENCY, low_level=True)))
                tpm_r.append(runner_rate(url, inp, tmp / f"tpm{i}.jsonl", n, tpm=UNBINDING_TPM))
                c.log(
                    f"round {i + 1}: runner {runner_r[-1]:.1f}/s  bare create {bare_r[-1]:.1f}/s  "
                    f"bare post {post_r[-1]:.1f}/s  runner with --tpm {tpm_r[-1]:.1f}/s"
                )
            stats = c.server_stats(url)
    runner = statistics.median(runner_r)
    bare = statistics.median(bare_r)
    post = statistics.median(post_r)
    tpm = statistics.median(tpm_r)
    c.emit(
        {
            "bench": "overhead",
            "quick": args.quick,
            "items": n,
            "concurrency": CONCURRENCY,
            "rounds": rounds,
            "runner_items_per_s": c.rnd(runner, 1),
            "openai_loop_items_per_s": c.rnd(bare, 1),
            "ratio": c.rnd(runner / bare),
            "openai_post_loop_items_per_s": c.rnd(post, 1),
            "ratio_vs_post": c.rnd(runner / post),
            "runner_tpm_items_per_s": c.rnd(tpm, 1),
            "tpm_ratio": c.rnd(tpm / runner),
            "target_ratio": 0.9,
            "server_requests": stats["requests"],
            "server_429": stats["throttled_429"],
        }
    )


if __name__ == "__main__":
    main()
