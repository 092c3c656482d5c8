"""Concurrency efficiency: does the runner keep ``C`` requests in flight against a slow server?

The fake server answers after 0.1 s, so ``C`` requests in flight give at most ``C / 0.1`` items/s.
The runner (Runner API, in-process, no cache) runs at concurrency 8 and 32 over 50 rounds' worth
of items (400 and 1600; --quick: 20 rounds, 160 and 640).
``efficiency = achieved items/s / (C / 0.1)``, with achieved items/s over the wall time of the run.
Target: efficiency >= 0.95 at each concurrency. Also reported: the server's peak requests in flight,
and the same efficiency for a bare loop over the openai SDK's ``client.post`` with the same
request bodies (``bare_efficiency``), which separates what the runner loses from what the SDK and
this 2-core machine lose anyway.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio

import _common as c

DELAY = 0.1
LEVELS = (8, 32)


def main() -> None:
    args = c.parse_args(__doc__.split("\n\n")[0])
    rounds = 20 if args.quick else 50
    result: dict[str, object] = {"bench": "concurrency", "quick": args.quick, "server_delay_s": DELAY}
    with c.workdir("concurrency") as tmp:
        warm = tmp / "warm.jsonl"
        c.make_input(warm, 16, seed=args.seed + 1)
        with c.server(delay=DELAY) as url:
            c.run_runner(url, warm, tmp / "warm.out.jsonl", concurrency=8)  # imports, tokenizer tables
            for conc in LEVELS:
                n = conc * rounds
                inp = tmp / f"items{conc}.jsonl"
                c.make_input(inp, n, seed=args.seed)
                before = c.server_stats(url)
                d = c.run_runner(url, inp, tmp / f"out{conc}.jsonl", concurrency=conc)
                after = c.server_stats(url)
                if d["processed"] != n or d["errors"] or d["dead_lettered"]:
                    raise RuntimeError(f"c={conc}: processed {d['processed']} of {n}, errors {d['errors']}")
                rate = n / d["wall_s"]
                ideal = conc / DELAY
                eff = rate / ideal
                bare = asyncio.run(c.bare_loop(url, c.payloads_for(c.read_items(inp), conc), conc, low_level=True))
                c.log(
                    f"concurrency {conc}: {n} items in {d['wall_s']:.2f}s = {rate:.1f}/s, ideal {ideal:.0f}/s, "
                    f"efficiency {eff:.3f} (bare SDK loop {bare:.1f}/s, {bare / ideal:.3f})"
                )
                result[f"c{conc}_items"] = n
                result[f"c{conc}_items_per_s"] = c.rnd(rate, 1)
                result[f"c{conc}_ideal_items_per_s"] = ideal
                result[f"c{conc}_efficiency"] = c.rnd(eff)
                result[f"c{conc}_server_requests"] = after["requests"] - before["requests"]
                result[f"c{conc}_server_max_in_flight"] = after["max_in_flight"]
                result[f"c{conc}_p50_latency_ms"] = c.rnd(d["latency_ms"]["p50"], 1)
                result[f"c{conc}_bare_items_per_s"] = c.rnd(bare, 1)
                result[f"c{conc}_bare_efficiency"] = c.rnd(bare / ideal)
    result["min_efficiency"] = min(result[f"c{k}_efficiency"] for k in LEVELS)  # type: ignore[type-var]
    result["target_efficiency"] = 0.95
    c.emit(result)


if __name__ == "__main__":
    main()
