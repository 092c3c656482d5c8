from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDELINES = ROOT / "guidelines"


@pytest.fixture(autouse=True)
def _no_ambient_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's endpoint or key by accident."""
    for var in ("COTMOD_BASE_URL", "COTMOD_API_KEY", "OPENAI_API_KEY", "COTMOD_MODEL", "COTMOD_CONFIG"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A writable copy of the starter pack."""
    dest = tmp_path / "guidelines"
    shutil.copytree(GUIDELINES, dest)
    return dest


def e2e_model() -> str:
    return os.environ.get("COTMOD_TEST_MODEL", "smollm2-135m")
