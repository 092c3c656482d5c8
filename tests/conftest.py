from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDELINES = ROOT / "guidelines"
# the starter pack's current policy versions (tests edit and compare against these, not literals)
VERSIONS = {p.stem: p.read_text().split("\nversion: ", 1)[1].split("\n", 1)[0].strip() for p in GUIDELINES.glob("*.yaml")}
HATE_V = VERSIONS["hate_speech"]


from cotmod._config import cotmod_home  # noqa: E402

REAL_HOME = cotmod_home()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never pick up a developer's endpoint, key, config or cache by accident. They get a
    fresh COTMOD_HOME that shares only the pulled models (read-only use)."""
    for var in ("COTMOD_BASE_URL", "COTMOD_API_KEY", "OPENAI_API_KEY", "COTMOD_MODEL", "COTMOD_CONFIG", "COTMOD_LOCAL_MODEL"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path_factory.mktemp("cotmod-home")
    if (REAL_HOME / "models").is_dir():
        (home / "models").symlink_to(REAL_HOME / "models")
    monkeypatch.setenv("COTMOD_HOME", str(home))
    # The suite's scripted answers are in the rules form (the default); decision logic (opt-in)
    # is tested on its own in test_logic.py, which turns it on.
    monkeypatch.setenv("COTMOD_DECISION_LOGIC", "0")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A writable copy of the starter pack."""
    dest = tmp_path / "guidelines"
    shutil.copytree(GUIDELINES, dest)
    return dest


def e2e_model() -> str:
    return os.environ.get("COTMOD_TEST_MODEL", "smollm2-135m")
