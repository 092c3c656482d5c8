"""The benchmark scripts must keep working: run them all in --quick mode (figures not checked:
timing targets live in benchmarks/, never in tests)."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT


def test_benchmarks_run_quick() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["failed"] == []
    results = summary["results"]
    assert set(results) == {"overhead", "concurrency", "memory", "ratelimit", "resume", "monitor_scale", "drift"}
    resume = results["resume"]
    assert resume["duplicates"] == 0 and resume["missing"] == 0
