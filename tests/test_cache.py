"""The SQLite result cache shared between processes: no transaction is held open between writes
(another process can write while this one is idle, and sees its entries at once), closing a
moderator loses no entry, and a lock that cannot be taken is one clean CotmodError (one CLI line),
never sqlite3's exception."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cotmod import ConfigError, CotmodError, Moderator, Settings
from cotmod.cli import cli
from cotmod.engine import SqliteCache
from cotmod.testing import FakeBackend, FakeOpenAIServer, decision

from .conftest import GUIDELINES


def _safe(request: Any) -> dict[str, Any]:
    return decision({p: [] for p in request.schema["properties"]["decisions"]["properties"]})


def _count_elsewhere(path: Path) -> int:
    """The entries another process sees in the cache file."""
    code = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1], timeout=5).execute('SELECT COUNT(*) FROM decisions').fetchone()[0])"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout)


def test_an_idle_process_holds_no_lock_and_its_entries_are_visible_at_once(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    a = SqliteCache(path)
    a.put("k1", {"reasoning": [], "decisions": [], "model": "m"})
    # A is idle now. Before: its write stayed uncommitted (batched), so another process saw
    # nothing and could not write for as long as A stayed idle ("database is locked" after 30 s)
    assert _count_elsewhere(path) == 1
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], timeout=2, isolation_level=None)\n"
        "db.execute(\"INSERT INTO decisions (key, value, created) VALUES ('k2', '{\\\"x\\\": 1}', 0)\")\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert a.get("k2") == {"x": 1} and len(a) == 2
    a.close()
    a.close()  # idempotent


def test_a_moderator_closed_with_a_cache_passed_in_loses_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = SqliteCache(path)
    with Moderator(backend=FakeBackend(default=_safe), settings=Settings(decision_logic=False), cache=cache) as m:
        v = m.moderate("hello there", policies=["spam_scams"])
    assert v.status == "ok"
    # the cache is the caller's (still open): its entry is on disk for every other process
    assert _count_elsewhere(path) == 1
    with Moderator(backend=FakeBackend(), settings=Settings(decision_logic=False), cache=SqliteCache(path)) as m:
        again = m.moderate("hello there", policies=["spam_scams"])  # a backend with nothing to say: from the cache
    assert again.cache_hits == 1
    cache.close()


def test_a_lock_that_cannot_be_taken_is_a_cotmod_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = SqliteCache(path, timeout=0.2)
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, and never finishing
    try:
        with pytest.raises(CotmodError) as err:
            cache.put("k", {"reasoning": [], "decisions": [], "model": "m"})
        assert not isinstance(err.value, sqlite3.Error) and err.value.__cause__ is None
        assert str(path) in str(err.value) and "locked" in str(err.value)
        assert cache.get("k") is None  # readers are never blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    cache.put("k", {"reasoning": [], "decisions": [], "model": "m"})  # the lock is free again
    assert len(cache) == 1
    cache.close()


def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a cache\n" * 100)
    with pytest.raises(ConfigError, match=r"notes\.txt.*not a usable cotmod cache"):
        SqliteCache(path)
    assert path.read_text().startswith("these are my notes")


def test_cli_run_on_a_locked_cache_prints_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert SqliteCache.__init__.__kwdefaults__ is not None
    monkeypatch.setitem(SqliteCache.__init__.__kwdefaults__, "timeout", 0.3)
    cache_file = tmp_path / "cache.sqlite"
    SqliteCache(cache_file).close()
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": str(i), "text": f"post {i}"}) + "\n" for i in range(3)))
    holder = sqlite3.connect(str(cache_file), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with FakeOpenAIServer() as srv:
            r = CliRunner().invoke(
                cli,
                ["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--cache", str(cache_file), "-p", "spam_scams",
                 "--base-url", srv.base_url, "--model", "m", "--guidelines", str(GUIDELINES)],
            )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output and not isinstance(r.exception, sqlite3.Error)
    assert f"result cache {cache_file}: another process kept it locked" in r.output
