"""The benchmark scripts must keep working: run them in --quick mode (figures not checked:
timing targets live in benchmarks/, never in tests). bench_drift and bench_monitor_scale are run
at smaller sizes by tests/test_classifiers_monitor.py, so they are not run twice here.

The five run as two ``run_all.py`` processes side by side (the machine has two cores and the
suite is serial): their figures are not looked at, only that each script runs and reports."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT

GROUPS = (("memory", "ratelimit"), ("overhead", "concurrency", "resume"))


def test_benchmarks_run_quick() -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--only", *group],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for group in GROUPS
    ]
    results: dict[str, dict] = {}
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-2000:]
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert summary["failed"] == []
        results.update(summary["results"])
    assert set(results) == {"overhead", "concurrency", "memory", "ratelimit", "resume"}
    resume = results["resume"]
    assert resume["duplicates"] == 0 and resume["missing"] == 0
