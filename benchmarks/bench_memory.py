"""Flat memory: peak RSS of ``cotmod run`` for a small and a 10x larger input.

Each measurement is one ``cotmod run`` subprocess (concurrency 32, --no-cache, against the
instant fake server); its peak RSS is read with ``os.wait4`` on that one child, so no two runs'
maxima mix (ru_maxrss of exactly that process, in KiB on Linux). Sizes: 10k and 100k items
(--quick: 1k and 10k). ``ratio = peak RSS at the large size / peak RSS at the small size``.
Target: ratio <= 1.1 (the input is streamed; the runner keeps only id digests and per-item
latencies, so growth should be small). Also reported: the growth in KiB per 1000 extra items.
Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import _common as c

CONCURRENCY = 32


def main() -> None:
    args = c.parse_args(__doc__.split("\n\n")[0])
    small, large = (1_000, 10_000) if args.quick else (10_000, 100_000)
    result: dict[str, Any] = {"bench": "memory", "quick": args.quick, "concurrency": CONCURRENCY}
    rss: dict[int, int] = {}
    with c.workdir("memory") as tmp, c.server(delay=0.0) as url:
        for n in (small, large):
            inp = tmp / f"items{n}.jsonl"
            c.make_input(inp, n, seed=args.seed)
            d = run_one(url, inp, tmp / f"out{n}.jsonl", n)
            rss[n] = d["maxrss_kib"]
            c.log(f"{n} items: peak RSS {d['maxrss_kib'] / 1024:.1f} MiB, {d['items_per_s']} items/s, {d['wall_s']:.1f}s")
            result[f"items_{n}"] = n
            result[f"rss_mib_{n}"] = c.rnd(d["maxrss_kib"] / 1024, 1)
            result[f"items_per_s_{n}"] = d["items_per_s"]
    result["small"] = small
    result["large"] = large
    result["rss_small_mib"] = c.rnd(rss[small] / 1024, 1)
    result["rss_large_mib"] = c.rnd(rss[large] / 1024, 1)
    result["ratio"] = c.rnd(rss[large] / rss[small])
    result["growth_kib_per_1000_items"] = c.rnd((rss[large] - rss[small]) / ((large - small) / 1000), 1)
    result["target_ratio"] = 1.1
    c.emit(result)


def run_one(base_url: str, inp: Path, out: Path, n: int) -> dict[str, Any]:
    """Run ``cotmod run`` as one child and reap it with os.wait4 to get its own ru_maxrss."""
    cmd = c.cotmod_run_cmd(base_url, inp, out, concurrency=CONCURRENCY)
    timeout = max(120.0, n / 50.0)  # far above any plausible run time; the run stops by itself
    out_path = out.with_suffix(".stdout")
    err_path = out.with_suffix(".stderr")
    t0 = time.perf_counter()
    with out_path.open("wb") as fo, err_path.open("wb") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=c.child_env(), cwd=out.parent)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise RuntimeError(f"cotmod run with {n} items did not finish in {timeout:.0f}s")
            time.sleep(0.05)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"cotmod run failed ({proc.returncode}): {err_path.read_text()[-2000:]}")
    summary = json.loads(out_path.read_text())
    if summary["processed"] != n or summary["errors"] or summary["dead_lettered"]:
        raise RuntimeError(f"{n} items: processed {summary['processed']}, errors {summary['errors']}")
    return {"maxrss_kib": usage.ru_maxrss, "items_per_s": summary["items_per_s"], "wall_s": wall}


if __name__ == "__main__":
    main()
