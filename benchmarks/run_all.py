"""Run the batch-runner and classifier-monitor benchmarks one after another and collect their figures.

    python benchmarks/run_all.py            # full size (several minutes)
    python benchmarks/run_all.py --quick    # small runs, a smoke test
    python benchmarks/run_all.py --only overhead resume

Each benchmark runs in its own process (one at a time, so they do not compete for the 2 cores);
its progress notes pass through to stderr and its last stdout line (one JSON object) is collected.
Prints one line per benchmark, then one JSON line: {"bench": "all", "quick": ..., "results": {...},
"failed": [...]}. Exits 1 if a benchmark crashed or printed no JSON; figures that miss their
targets are reported, not treated as failures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("overhead", "concurrency", "memory", "ratelimit", "resume", "monitor_scale", "drift")
TIMEOUT_QUICK = 180.0
TIMEOUT_FULL = 1800.0


def run_one(name: str, quick: bool, seed: int | None) -> tuple[dict[str, object] | None, float, str | None]:
    cmd = [sys.executable, str(HERE / f"bench_{name}.py")]
    if quick:
        cmd.append("--quick")
    if seed is not None:
        cmd += ["--seed", str(seed)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=TIMEOUT_QUICK if quick else TIMEOUT_FULL, check=False)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0, "timed out"
    elapsed = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0:
        return None, elapsed, f"exit {proc.returncode}"
    try:
        data = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return None, elapsed, "no JSON line"
    return data, elapsed, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small, fast runs (smoke test)")
    ap.add_argument("--only", nargs="+", choices=BENCHES, help="run only these")
    ap.add_argument("--seed", type=int, default=None, help="passed on to each benchmark")
    args = ap.parse_args()
    results: dict[str, object] = {}
    failed: list[str] = []
    for name in args.only or BENCHES:
        print(f"== {name}{' (quick)' if args.quick else ''}", file=sys.stderr, flush=True)
        data, elapsed, problem = run_one(name, args.quick, args.seed)
        if problem is not None:
            failed.append(name)
            print(f"{name}: FAILED ({problem}) after {elapsed:.1f}s", flush=True)
            continue
        results[name] = data
        print(f"{name}: {elapsed:.1f}s {json.dumps(data)}", flush=True)
    print(json.dumps({"bench": "all", "quick": args.quick, "results": results, "failed": failed}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
