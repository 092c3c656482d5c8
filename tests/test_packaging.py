"""The wheel carries what the library needs at run time: py.typed, the policy schema, and the
starter pack and prompt templates (bundled, so an installed cotmod works outside the repo)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import ROOT


def test_wheel_contents(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("cotmod-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"cotmod/py.typed", "cotmod/schemas/policy.schema.json", "cotmod/__init__.py"} <= names
    for f in (ROOT / "guidelines").glob("*.yaml"):
        assert f"cotmod/_bundled/guidelines/{f.name}" in names
    for f in (ROOT / "prompts").glob("*.j2"):
        assert f"cotmod/_bundled/prompts/{f.name}" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
