from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cotmod import AsyncModerator, ConfigError
from cotmod.backends._limits import AdaptiveLimiter, RateLimiter
from cotmod.batch._runner import Runner, read_items, repair_jsonl
from cotmod.engine._cache import MemoryCache, SqliteCache
from cotmod.testing import FakeBackend, FakeOpenAIServer, answer_for, decision

from .conftest import HATE_V, VERSIONS

POLICIES = ["hate_speech", "spam_scams"]


def write_jsonl(path: Path, n: int, *, extra: list[str] | None = None) -> Path:
    with path.open("w") as f:
        for i in range(n):
            text = ("VIOLATE " if i % 3 == 0 else "") + f"post number {i}"
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
        for line in extra or []:
            f.write(line + "\n")
    return path


def ids_in(path: Path) -> list[str]:
    return [json.loads(line)["item_id"] for line in path.read_text().splitlines()]


def fake_backend(**kw) -> FakeBackend:
    def respond(req):
        return decision({pid: (["HATE-1"] if pid == "hate_speech" else ["SCAM-1"]) if "VIOLATE" in req.messages[-1]["content"] else [] for pid in req.schema["properties"]["decisions"]["required"]})

    return FakeBackend(default=respond, **kw)


def runner(backend, cache=None, **kw) -> Runner:
    mod = AsyncModerator(backend=backend, cache=cache, concurrency=kw.pop("concurrency", 4))
    return Runner(mod, **kw)


def test_run_writes_one_verdict_per_item_and_dead_letters_bad_rows(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 30, extra=["{not json", json.dumps({"id": "p3", "text": "dup"}), json.dumps({"id": "e", "text": "  "}), json.dumps({"text": "no id VIOLATE"})])
    out = tmp_path / "out.jsonl"
    s = runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    assert s.processed == 31 and s.dead_lettered == 3
    got = ids_in(out)
    assert sorted(got) == sorted([f"p{i}" for i in range(30)] + ["line-34"])
    errors = [json.loads(x) for x in Runner.errors_path(out).read_text().splitlines()]
    assert {(e["error_type"], e["line"]) for e in errors} == {("BadRow", 31), ("DuplicateId", 32), ("BadRow", 33)}
    assert "invalid JSON" in errors[0]["message"] and str(inp) in errors[0]["message"]
    assert s.by_decision == {"violates": 11, "safe": 20}
    manifest = json.loads(Runner.manifest_path(out).read_text())
    assert manifest["policies"] == {"hate_speech": HATE_V, "spam_scams": VERSIONS["spam_scams"]}


def test_rerun_skips_done_and_refuses_other_config(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    fake = fake_backend()
    runner(fake).run_sync(inp, out, policies=POLICIES)
    calls = len(fake.history)
    s = runner(fake).run_sync(inp, out, policies=POLICIES)
    assert s.processed == 0 and s.resumed_skipped == 10 and len(fake.history) == calls
    with pytest.raises(ConfigError, match="different configuration"):
        runner(fake).run_sync(inp, out, policies=["hate_speech"])
    s = runner(fake).run_sync(inp, out, policies=["hate_speech"], overwrite=True)
    assert s.processed == 10 and len(ids_in(out)) == 10


def test_torn_last_line_is_repaired(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    runner(fake_backend()).run_sync(inp, out, policies=POLICIES, limit=3)
    with out.open("a") as f:
        f.write('{"item_id": "p5", "status": "ok", "reaso')  # killed mid-write
    s = runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    assert s.processed == 3
    assert sorted(ids_in(out)) == [f"p{i}" for i in range(6)]


def test_cache_hits_make_no_request_and_policy_edit_recomputes_only_it(tmp_path: Path, policy_dir: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 8)
    cache = SqliteCache(tmp_path / "cache.sqlite")
    fake = fake_backend()
    mod = AsyncModerator(policy_dir, backend=fake, cache=cache)
    Runner(mod).run_sync(inp, tmp_path / "a.jsonl", policies=POLICIES)
    assert len(fake.history) == 16
    s = Runner(AsyncModerator(policy_dir, backend=fake, cache=cache)).run_sync(inp, tmp_path / "b.jsonl", policies=POLICIES)
    assert len(fake.history) == 16 and s.cache_hits == 16 and s.processed == 8
    f = policy_dir / "spam_scams.yaml"
    f.write_text(f.read_text().replace("version: 1.1.0", "version: 1.2.0", 1))
    s = Runner(AsyncModerator(policy_dir, backend=fake, cache=cache)).run_sync(inp, tmp_path / "c.jsonl", policies=POLICIES)
    new_calls = fake.history[16:]
    assert len(new_calls) == 8 and s.cache_hits == 8
    assert all("spam_scams" in r.schema["properties"]["decisions"]["properties"] for r in new_calls)
    cache.close()


def test_invalid_output_goes_to_dead_letter_and_retry_errors(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    broken = {"p1", "p2"}

    def respond(req):
        if any(f"post number {i[1:]}\n" in m["content"] for m in req.messages for i in broken):
            return "I think it is fine"  # never valid JSON
        return decision({"spam_scams": []})

    fake = FakeBackend(default=respond)
    s = runner(fake).run_sync(inp, out, policies=["spam_scams"])
    assert s.errors == 2 and sorted(ids_in(out)) == ["p0", "p3", "p4"]
    errors = [json.loads(x) for x in Runner.errors_path(out).read_text().splitlines()]
    assert sorted(e["id"] for e in errors) == ["p1", "p2"]
    assert all(e["error_type"] == "ModelOutputError" and e["raw_output"] == "I think it is fine" and e["attempts"] == 3 for e in errors)
    # a plain rerun does not retry them
    assert runner(fake).run_sync(inp, out, policies=["spam_scams"]).processed == 0
    broken.clear()
    s = runner(fake).run_sync(inp, out, policies=["spam_scams"], retry_errors=True)
    assert s.processed == 2 and s.errors == 0
    assert sorted(ids_in(out)) == [f"p{i}" for i in range(5)]
    assert Runner.errors_path(out).read_text() == ""


def test_csv_and_parquet_inputs(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["post_id", "body"])
        w.writerow(["a", "hello, world"])
        w.writerow(["b", "multi\nline VIOLATE"])
        w.writerow(["", "no id"])
    rows = list(read_items(p, id_field="post_id", text_field="body"))
    assert [(r.id, r.text) for r in rows] == [("a", "hello, world"), ("b", "multi\nline VIOLATE"), ("line-5", "no id")]
    with pytest.raises(ConfigError, match=r"no column 'text' \(columns: post_id, body\)"):
        list(read_items(p))
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"pid": ["x", "y"], "content": ["hi", None]}), tmp_path / "in.parquet")
    rows = list(read_items(tmp_path / "in.parquet", id_field="pid", text_field="content"))
    assert rows[0].text == "hi" and rows[1].problem == "missing field 'content'"
    out = tmp_path / "out.jsonl"
    s = runner(fake_backend()).run_sync(tmp_path / "in.parquet", out, policies=["spam_scams"], id_field="pid", text_field="content")
    assert s.processed == 1 and s.dead_lettered == 1


def test_rate_limiter_rejects_a_zero_rate() -> None:
    # the spacing itself is tested with a fake clock in tests/test_limits.py
    with pytest.raises(ConfigError):
        RateLimiter(rpm=0)


async def test_adaptive_limiter_halves_on_429_and_recovers() -> None:
    lim = AdaptiveLimiter(8, cooldown=0.0)
    lim.throttled()
    assert lim.limit == 4
    lim.throttled()
    lim.throttled()
    lim.throttled()
    assert lim.limit == 1
    for _ in range(20):
        await lim.acquire()
        await lim.release(ok=True)
    assert 1 < lim.limit <= 8
    with pytest.raises(ConfigError):
        AdaptiveLimiter(0)


def test_injected_429s_and_5xx_are_retried_and_counted(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    with FakeOpenAIServer(fail_first=3, fail_status=429, retry_after=0.05) as srv:
        mod = AsyncModerator(base_url=srv.base_url, model="m", concurrency=2)
        s = Runner(mod).run_sync(inp, out, policies=["spam_scams"])
    assert s.processed == 6 and s.transport_retries == 3 and s.throttled >= 1
    with FakeOpenAIServer(fail_first=2, fail_status=503) as srv:
        mod = AsyncModerator(base_url=srv.base_url, model="m", concurrency=1, max_transport_retries=1)
        s = Runner(mod).run_sync(inp, tmp_path / "o2.jsonl", policies=["spam_scams"])
    # the first item exhausts its retries and is dead-lettered; the run goes on
    assert s.processed == 5 and s.errors == 1
    err = json.loads(Runner.errors_path(tmp_path / "o2.jsonl").read_text())
    assert err["error_type"] == "ServerError" and err["attempts"] == 2


def test_truncated_json_from_server_is_reasked(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 3)
    n = {"calls": 0}

    def handler(body):
        n["calls"] += 1
        good = json.dumps(answer_for(body))
        return good[: len(good) // 2] if n["calls"] == 1 else good

    with FakeOpenAIServer(handler=handler) as srv:
        mod = AsyncModerator(base_url=srv.base_url, model="m", concurrency=1)
        s = Runner(mod).run_sync(inp, tmp_path / "out.jsonl", policies=["spam_scams"])
    assert s.processed == 3 and s.reasks == 1 and s.errors == 0


def test_kill_minus_9_and_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    n = 150
    inp = write_jsonl(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "COTMOD_HOME": str(tmp_path / "home")}
    with FakeOpenAIServer(delay=0.01) as srv:
        cmd = [sys.executable, "-m", "cotmod", "run", str(inp), "-o", str(out), "--base-url", srv.base_url,
               "--model", "m", "-p", "spam_scams", "-c", "4", "--no-progress", "--no-cache"]
        for target in (20, 60, 100):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if out.exists() and out.read_bytes().count(b"\n") >= target:
                    break
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done = repair_jsonl(out)
            assert len(done) == len(ids_in(out))  # no duplicates so far
        final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    got = ids_in(out)
    assert len(got) == n and sorted(got) == sorted(f"p{i}" for i in range(n))


def test_memory_cache_round_trip() -> None:
    fake = fake_backend()
    cache = MemoryCache()
    mod = AsyncModerator(backend=fake, cache=cache)
    v1 = asyncio.run(mod.moderate("VIOLATE x", policies=["hate_speech"]))
    v2 = asyncio.run(mod.moderate("VIOLATE x", policies=["hate_speech"]))
    assert len(fake.history) == 1 and v2.cache_hits == 1 and v2.usage.total_tokens == 0
    assert v1.decisions == v2.decisions


def test_idset_matches_a_python_set() -> None:
    import random as _r

    from cotmod.batch._runner import IdSet

    rng = _r.Random(3)
    ref: set[int] = set()
    ids = IdSet()
    for _ in range(20000):
        k = rng.choice([0, 1, rng.getrandbits(64), rng.getrandbits(8)])
        ids.add(k)
        ref.add(k or 1)
    assert len(ids) == len(ref)
    assert all(k in ids for k in ref)
    assert sum(1 for _ in range(2000) if rng.getrandbits(64) in ids) <= 1  # collisions only by chance
    merged = ids | IdSet()
    assert len(merged) == len(ref)


def test_rate_limited_items_are_requeued_not_lost(tmp_path: Path, monkeypatch) -> None:
    import cotmod.batch._runner as runner_mod

    monkeypatch.setattr(runner_mod, "RATE_LIMIT_REQUEUES", 3)
    inp = write_jsonl(tmp_path / "in.jsonl", 4)
    with FakeOpenAIServer(fail_first=6, fail_status=429, retry_after=0.01) as srv:
        mod = AsyncModerator(base_url=srv.base_url, model="m", concurrency=1, max_transport_retries=1)
        s = Runner(mod).run_sync(inp, tmp_path / "out.jsonl", policies=["spam_scams"])
    assert s.processed == 4 and s.errors == 0 and s.dead_lettered == 0


def test_adaptive_limiter_keeps_cutting_under_sustained_429s() -> None:
    lim = AdaptiveLimiter(16, cooldown=0.02)
    lim.throttled()
    lim.throttled()  # same burst: one cut
    assert lim.limit == 8 and lim.cuts == 1
    for _ in range(3):
        time.sleep(0.025)
        lim.throttled()
        lim.throttled()
    assert lim.limit == 1 and lim.cuts == 4


def test_disk_full_is_a_clear_error_and_keeps_what_was_written(tmp_path: Path, monkeypatch) -> None:
    import errno

    import cotmod.batch._runner as runner_mod
    from cotmod import CotmodError

    inp = write_jsonl(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    real_write = os.write
    state = {"n": 0}

    def flaky_write(fd, data):
        if fd == state.get("fd"):
            state["n"] += 1
            if state["n"] > 4:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    real_init = runner_mod._Appender.__init__

    def init(self, path):
        real_init(self, path)
        if Path(path) == out:
            state["fd"] = self.fd

    monkeypatch.setattr(runner_mod._Appender, "__init__", init)
    monkeypatch.setattr(runner_mod.os, "write", flaky_write)
    with pytest.raises(CotmodError, match=r"No space left on device.*rerun the same command to resume"):
        runner(fake_backend(), concurrency=1).run_sync(inp, out, policies=["spam_scams"])
    assert len(ids_in(out)) == 4  # complete lines only
    monkeypatch.setattr(runner_mod.os, "write", real_write)
    s = runner(fake_backend()).run_sync(inp, out, policies=["spam_scams"])
    assert sorted(ids_in(out)) == sorted(f"p{i}" for i in range(10)) and s.resumed_skipped == 4


def test_two_runs_on_one_output_at_once_the_second_refuses(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out.jsonl"

    async def both() -> list:
        r1, r2 = runner(fake_backend(), concurrency=4), runner(fake_backend(), concurrency=4)
        return await asyncio.gather(r1.run(inp, out, policies=POLICIES), r2.run(inp, out, policies=POLICIES), return_exceptions=True)

    first, second = asyncio.run(both())
    assert first.processed == 12
    assert isinstance(second, ConfigError) and f"another cotmod run (pid {os.getpid()}) is writing {out}" in str(second)
    assert sorted(ids_in(out)) == sorted(f"p{i}" for i in range(12))  # 12 lines for 12 ids


def test_the_output_lock_goes_with_a_killed_process(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from cotmod.batch._store import OutputLock; "
         "OutputLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"another cotmod run \(pid {holder.pid}\) is writing"):
            runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    s = runner(fake_backend()).run_sync(inp, out, policies=POLICIES)  # the stale lock file does not stop it
    assert s.processed == 3 and s.undecided == 0


def test_limit_counts_the_file_items_it_left_as_undecided(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 10, extra=[json.dumps({"id": "p9", "text": "dup"}), "{bad"])
    out = tmp_path / "out.jsonl"
    s = runner(fake_backend()).run_sync(inp, out, policies=POLICIES, limit=3)
    # 7 good items and the bad row are left (the repeated p9 is not a new item)
    assert (s.processed, s.not_run, s.undecided, s.input_rows) == (3, 8, 8, 12)
    assert s.to_dict()["not_run"] == 8
    s = runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    assert (s.processed, s.not_run, s.resumed_skipped, s.dead_lettered) == (7, 0, 3, 2)
    # an iterable is not read past the limit (it may be endless): nothing is counted for it
    s = runner(fake_backend()).run_sync(iter(["a", "b", "c"]), tmp_path / "it.jsonl", policies=POLICIES, limit=1)
    assert (s.processed, s.not_run) == (1, 0)


def test_one_string_is_one_policy_or_path_and_a_sync_moderator_is_named(tmp_path: Path) -> None:
    """A single string where a list is expected was split into characters ("unknown policy 'h'",
    a lint report of files 'w', 'o', ...); Runner(Moderator(...)) failed later with an
    AttributeError about 'aclose', and concurrency=0 silently meant the default."""
    from cotmod import Moderator, lint_paths, load_policies
    from cotmod._config import default_guidelines_dir

    pack = str(default_guidelines_dir())
    assert load_policies(pack).ids == load_policies([pack]).ids
    assert not lint_paths(pack).errors and len(lint_paths(pack).policies) == len(load_policies(pack).ids)
    assert load_policies(pack).select("spam_scams").ids == ["spam_scams"]
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "hello"}\n')
    mod = AsyncModerator(backend=FakeBackend(default=lambda req: decision({"spam_scams": []})))
    summary = Runner(mod).run_sync(src, tmp_path / "out.jsonl", policies="spam_scams")
    assert summary.processed == 1
    assert [d["policy_id"] for d in json.loads((tmp_path / "out.jsonl").read_text())["decisions"]] == ["spam_scams"]
    with pytest.raises(TypeError, match="AsyncModerator"):
        Runner(Moderator(backend=FakeBackend()))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="concurrency"):
        Runner(mod, concurrency=0)
