"""Crash-resume: kill -9 ``cotmod run`` five times mid-run, resume each time, then check the output.

``cotmod run ... -c 8 --no-cache --no-progress`` runs as a subprocess over 5000 items (--quick:
1000) against the fake server answering after 5 ms. Before each of 5 kills the benchmark waits
until the output file holds more than a random target number of lines (targets drawn with
``random.Random(seed)``, increasing, between 5% and 85% of the items), sleeps a further random
0-20 ms, then sends SIGKILL and starts the same command again. After the last kill the run is
left to finish. Then the output must hold exactly one verdict per input id: the figures are
duplicates, missing ids, torn (unparsable or unterminated) lines and unexpected ids, all with
target 0. A kill rarely tears a line (each verdict is one small append ``write``), so after the
third kill, if the kill left none, a torn last line is simulated by appending half a line without
its newline; the resume must cut it off. Also reported: how many kills left a torn last line,
the final run's exit code and the items processed per attempt.
Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common as c

KILLS = 5
CONCURRENCY = 8
DELAY = 0.005
INJECT_AFTER = 2  # after the 3rd kill, simulate a torn last line if the kill did not leave one
RUN_TIMEOUT = 300.0  # per attempt; far above any plausible run time


def tail_is_torn(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def inject_torn_tail(path: Path) -> int:
    """Append the first half of the last verdict line, without its newline (as a write cut short
    by a crash would leave it). Returns the bytes appended."""
    with path.open("rb") as f:
        lines = f.read().splitlines()
    if not lines:
        return 0
    half = lines[-1][: max(1, len(lines[-1]) // 2)]
    with path.open("ab") as f:
        f.write(half)
    return len(half)


def wait_for_lines(proc: subprocess.Popen[bytes], path: Path, target: int, deadline: float) -> int:
    """Poll until ``path`` has more than ``target`` lines, the process ends, or the deadline."""
    while True:
        n = c.count_lines(path)
        if n > target or proc.poll() is not None or time.monotonic() > deadline:
            return n
        time.sleep(0.005)


def check_output(out: Path, errors: Path, ids: list[str]) -> dict[str, Any]:
    seen: Counter[str] = Counter()
    torn = 0
    with out.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                torn += 1
                continue
            try:
                obj = json.loads(raw)
                seen[str(obj["item_id"])] += 1
            except (ValueError, KeyError, TypeError):
                torn += 1
    dead: set[str] = set()
    if errors.exists():
        with errors.open("rb") as f:
            for raw in f:
                try:
                    dead.add(str(json.loads(raw)["id"]))
                except (ValueError, KeyError, TypeError):
                    torn += 1
    expected = set(ids)
    return {
        "final_lines": sum(seen.values()),
        "distinct_ids": len(seen),
        "duplicates": sum(n - 1 for n in seen.values() if n > 1),
        "missing": len(expected - set(seen) - dead),
        "unexpected": len(set(seen) - expected),
        "torn_lines": torn,
        "dead_lettered": len(dead),
    }


def main() -> None:
    args = c.parse_args(__doc__.split("\n\n")[0])
    n = 1000 if args.quick else 5000
    rng = random.Random(args.seed)
    targets = sorted(rng.sample(range(int(n * 0.05), int(n * 0.85)), KILLS))
    kills: list[dict[str, Any]] = []
    with c.workdir("resume") as tmp, c.server(delay=DELAY) as url:
        inp = tmp / "items.jsonl"
        ids = c.make_input(inp, n, seed=args.seed)
        out = tmp / "verdicts.jsonl"
        errors = out.with_suffix(".errors.jsonl")
        cmd = c.cotmod_run_cmd(url, inp, out, concurrency=CONCURRENCY)
        finished_early = False
        injected = 0
        t_start = time.perf_counter()
        for i, target in enumerate(targets):
            before = c.count_lines(out)
            with (tmp / f"attempt{i + 1}.stderr").open("wb") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=c.child_env(), cwd=tmp)
            wait_for_lines(proc, out, target, time.monotonic() + RUN_TIMEOUT)
            if proc.poll() is not None:
                finished_early = True
                c.log(f"attempt {i + 1}: the run ended (exit {proc.returncode}) before reaching {target} lines")
                break
            time.sleep(rng.uniform(0.0, 0.02))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            torn = tail_is_torn(out)
            lines = c.count_lines(out)
            kills.append({"target": target, "lines_at_kill": lines, "new_in_attempt": lines - before, "torn_tail": torn})
            c.log(f"kill {i + 1}: target {target}, {lines} lines in the output (+{lines - before}), torn tail: {torn}")
            if i == INJECT_AFTER and not torn:
                injected = inject_torn_tail(out)
                c.log(f"  injected a torn last line ({injected} bytes) to exercise the repair on resume")
        before = c.count_lines(out)
        final = subprocess.run(cmd, capture_output=True, env=c.child_env(), cwd=tmp, timeout=RUN_TIMEOUT, check=False)
        elapsed = time.perf_counter() - t_start
        summary: dict[str, Any] = {}
        if final.returncode == 0:
            summary = json.loads(final.stdout)
        else:
            c.log(f"final run failed ({final.returncode}): {final.stderr.decode(errors='replace')[-2000:]}")
        check = check_output(out, errors, ids)
    c.log(
        f"final run: exit {final.returncode}, processed {summary.get('processed')} more, resumed past "
        f"{summary.get('resumed_skipped')}; {check}"
    )
    ok = check["duplicates"] == 0 and check["missing"] == 0 and check["torn_lines"] == 0 and check["unexpected"] == 0
    c.emit(
        {
            "bench": "resume",
            "quick": args.quick,
            "items": n,
            "seed": args.seed,
            "kills": len(kills),
            "kills_with_torn_tail": sum(1 for k in kills if k["torn_tail"]),
            "injected_torn_tail_bytes": injected,
            "finished_early": finished_early,
            "kill_points": [k["lines_at_kill"] for k in kills],
            "final_exit_code": final.returncode,
            "final_processed": summary.get("processed"),
            "final_resumed_skipped": summary.get("resumed_skipped"),
            "final_new_lines": check["final_lines"] - before if final.returncode == 0 else None,
            "final_count": check["final_lines"],
            "distinct_ids": check["distinct_ids"],
            "duplicates": check["duplicates"],
            "missing": check["missing"],
            "torn_lines": check["torn_lines"],
            "unexpected_ids": check["unexpected"],
            "dead_lettered": check["dead_lettered"],
            "exactly_once": ok,
            "elapsed_s": c.rnd(elapsed, 2),
        }
    )


if __name__ == "__main__":
    main()
