"""Ray Data scale-out: items/s with 1, 2 and 4 actors, and the overhead against ``cotmod run``.

The fake server (benchmarks/fakeserver.py, its own process) answers after 0.1 s, so the work is
I/O-bound and scales on 2 cores: each actor keeps ``C`` requests in flight (its moderator's
concurrency, default 4), so ``k`` actors give at most ``k * C / 0.1`` items/s (one policy, one
call per item). Ray runs in local mode (``ray.init(num_cpus=2)``).

Per actor count: the job's wall time (``moderate_to``: resume read, Ray plan, actor start-up,
the moderation, the Parquet write, the re-read) and the steady rate (first to last verdict's
``created_at``, which leaves out the start-up). ``scaling_efficiency_k = rate_k / (k * rate_1)``
(goal >= 0.9 at 4 actors), from both. Then the Runner (``cotmod run``'s engine, in this process)
on the same items at concurrency ``C`` and ``4C``: ``overhead_1 = 1 - ray_1 / runner_C`` and
``overhead_4 = 1 - ray_4 / runner_4C``, on wall rates and on steady rates (a negative overhead:
Ray was faster). ``actors<k>_fixed_s``: the job's fixed cost (wall minus the steady-rate time):
on 2 cores, starting k actor processes (Ray worker, cotmod imports, policies) is CPU-bound, so it
grows with k; on a cluster the nodes start their actors in parallel.
Prints one JSON line (progress on stderr). ``--quick``: few items, for the smoke test.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import _common as c

DELAY = 0.1
ACTORS = (1, 2, 4)


def steady_rate(out: Path) -> float | None:
    """Verdicts per second between the first and the last verdict written (start-up excluded)."""
    import pyarrow.parquet as pq

    stamps = sorted(datetime.fromisoformat(s).timestamp() for s in pq.read_table(out, columns=["created_at"]).column(0).to_pylist())
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return None
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small, fast run (smoke test)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--items", type=int, default=None, help="items per configuration (default 1600; --quick 48)")
    ap.add_argument("--concurrency", type=int, default=4, help="model requests in flight per actor")
    args = ap.parse_args()
    n = args.items or (48 if args.quick else 1600)
    conc = args.concurrency
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from cotmod import Settings
    from cotmod.integrations.ray import moderate_to

    result: dict[str, Any] = {"bench": "ray", "quick": args.quick, "server_delay_s": DELAY, "items": n, "concurrency_per_actor": conc}
    with c.workdir("ray") as tmp:
        inp = tmp / "items.jsonl"
        c.make_input(inp, n, seed=args.seed)
        records = [{"id": i, "text": t} for i, t in c.read_items(inp)]
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        result["ray_init_s"] = c.rnd(time.perf_counter() - t0)
        result["ray_version"] = ray.__version__
        try:
            with c.server(delay=DELAY) as url:
                settings = Settings(base_url=url, model="m", concurrency=conc, decision_logic=False)
                # warm-up: imports, actor code, tokenizer tables (not measured)
                moderate_to(ray.data.from_items(records[:16]), str(tmp / "warm"), settings=settings, select=[c.POLICY], actors=1)
                wall: dict[int, float] = {}
                steady: dict[int, float | None] = {}
                for k in ACTORS:
                    out = tmp / f"out{k}"
                    t = time.perf_counter()
                    s = moderate_to(ray.data.from_items(records), str(out), settings=settings, select=[c.POLICY], actors=k)
                    elapsed = time.perf_counter() - t
                    if s.written != n or s.errors:
                        raise RuntimeError(f"{k} actors: wrote {s.written} of {n}, errors {s.error_types}")
                    wall[k] = n / elapsed
                    steady[k] = steady_rate(out)
                    ideal = k * conc / DELAY
                    c.log(f"{k} actor(s): {n} items in {elapsed:.2f}s = {wall[k]:.1f}/s wall, "
                          f"{steady[k] or 0:.1f}/s steady (ideal {ideal:.0f}/s)")
                    result[f"actors{k}_wall_s"] = c.rnd(elapsed)
                    result[f"actors{k}_items_per_s"] = c.rnd(wall[k], 1)
                    result[f"actors{k}_steady_items_per_s"] = c.rnd(steady[k], 1)
                    result[f"actors{k}_ideal_items_per_s"] = ideal
                    # fixed cost of the job: actor start-up (imports, policies), plan, reads, write
                    result[f"actors{k}_fixed_s"] = c.rnd(elapsed - (n - 1) / steady[k]) if steady[k] else None
                for k in ACTORS[1:]:
                    result[f"scaling_efficiency_{k}"] = c.rnd(wall[k] / (k * wall[1]))
                    s1, sk = steady[1], steady[k]
                    result[f"scaling_efficiency_{k}_steady"] = c.rnd(sk / (k * s1)) if s1 and sk else None
                runner: dict[int, float] = {}
                for cc in (conc, ACTORS[-1] * conc):
                    d = c.run_runner(url, inp, tmp / f"runner{cc}.jsonl", concurrency=cc)
                    if d["processed"] != n or d["errors"] or d["dead_lettered"]:
                        raise RuntimeError(f"runner c={cc}: processed {d['processed']} of {n}")
                    runner[cc] = n / d["wall_s"]
                    c.log(f"cotmod run (Runner) c={cc}: {n} items in {d['wall_s']:.2f}s = {runner[cc]:.1f}/s")
                    result[f"runner_c{cc}_items_per_s"] = c.rnd(runner[cc], 1)
                result["overhead_1_actor_vs_runner"] = c.rnd(1 - wall[1] / runner[conc])
                result["overhead_4_actors_vs_runner"] = c.rnd(1 - wall[ACTORS[-1]] / runner[ACTORS[-1] * conc])
                s1, s4 = steady[1], steady[ACTORS[-1]]
                result["overhead_1_actor_vs_runner_steady"] = c.rnd(1 - s1 / runner[conc]) if s1 else None
                result["overhead_4_actors_vs_runner_steady"] = c.rnd(1 - s4 / runner[ACTORS[-1] * conc]) if s4 else None
                result["scaling_goal_met"] = bool(
                    max(result["scaling_efficiency_4"] or 0, result["scaling_efficiency_4_steady"] or 0) >= 0.9
                )
        finally:
            ray.shutdown()
    c.emit(result)


if __name__ == "__main__":
    main()
