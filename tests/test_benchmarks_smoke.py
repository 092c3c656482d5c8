"""The benchmark scripts must keep working: run them in --quick mode (figures not checked:
timing targets live in benchmarks/, never in tests). bench_drift and bench_monitor_scale are run
at smaller sizes by tests/test_classifiers_monitor.py, so they are not run twice here."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT


def test_benchmarks_run_quick() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
         "--only", "overhead", "concurrency", "memory", "ratelimit", "resume"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["failed"] == []
    results = summary["results"]
    assert set(results) == {"overhead", "concurrency", "memory", "ratelimit", "resume"}
    resume = results["resume"]
    assert resume["duplicates"] == 0 and resume["missing"] == 0
