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
    assert not any(n.endswith("enforcement.yaml") for n in names)  # a manifest is not a policy
    # requires-python is >=3.10 and tomllib is 3.11+: the wheel must pull tomli in on 3.10
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines() if line.startswith("Requires-Dist: tomli")]
    assert len(requires) == 1 and "python_version < '3.11'" in requires[0].replace('"', "'")
