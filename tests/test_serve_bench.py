"""benchmarks/bench_serve.py keeps working (quick mode; figures are not checked, only that the
overload run turned requests away with 429 and lost no audit-log line)."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT


def test_bench_serve_quick() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--quick"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["bench"] == "serve" and data["non_200_under_load"] == {}
    assert data["audit_lines"] == data["audit_lines_expected"]
    over = data["overload"]
    assert over["status_counts"].get("429", 0) > 0 and over["429_with_retry_after"] == over["status_counts"]["429"]
    assert over["other_errors"] == 0 and over["healthy_after"] and over["audit_lines_lost"] == 0
    assert over["verdicts_returned"] == over["status_counts"]["200"]
