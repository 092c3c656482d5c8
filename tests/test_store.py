"""The run store: resume never deletes verdicts, the manifest is always checked, and file-system
failures are one clear error."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cotmod import ConfigError, CotmodError, InputError
from cotmod.batch import _store
from cotmod.batch._runner import Runner
from cotmod.cli import cli
from cotmod.testing import FakeBackend

from .test_runner import POLICIES, fake_backend, ids_in, runner, write_jsonl


def _done_run(tmp_path: Path, n: int = 6, limit: int | None = None) -> tuple[Path, Path]:
    inp = write_jsonl(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    runner(fake_backend()).run_sync(inp, out, policies=POLICIES, limit=limit)
    return inp, out


@pytest.mark.parametrize("damage", ["blank", "edited", "not_utf8", "no_id"])
def test_an_unreadable_line_in_the_middle_stops_the_resume_and_deletes_nothing(tmp_path: Path, damage: str) -> None:
    inp, out = _done_run(tmp_path, limit=4)
    lines = out.read_bytes().splitlines(keepends=True)
    bad = {
        "blank": b"\n",
        "edited": lines[1][: len(lines[1]) // 2] + b"\n",
        "not_utf8": b'{"item_id": "p1\xff"}\n',
        "no_id": b'{"status": "ok"}\n',
    }[damage]
    lines[1] = bad
    out.write_bytes(b"".join(lines))
    before = out.read_bytes()
    with pytest.raises(InputError, match=rf"^{out}:2: .*Nothing was deleted"):
        runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    assert out.read_bytes() == before  # not cut at the bad line


def test_a_torn_final_line_that_still_parses_is_kept(tmp_path: Path) -> None:
    inp, out = _done_run(tmp_path, limit=3)
    data = out.read_bytes()
    out.write_bytes(data[:-1])  # the newline of the last verdict did not make it
    s = runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    assert s.resumed_skipped == 3 and s.processed == 3
    assert sorted(ids_in(out)) == [f"p{i}" for i in range(6)]


def test_unreadable_dead_letter_line_stops_too(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 3, extra=["{not json", "{also not"])
    out = tmp_path / "out.jsonl"
    runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    errs = Runner.errors_path(out)
    errs.write_bytes(b"\n" + errs.read_bytes())
    with pytest.raises(InputError, match=rf"^{errs}:1: blank line"):
        runner(fake_backend()).run_sync(inp, out, policies=POLICIES)


def test_an_output_holding_only_dead_letters_is_checked_against_the_config(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n')
    out = tmp_path / "out.jsonl"
    s = runner(FakeBackend(default="never valid")).run_sync(inp, out, policies=["spam_scams"])
    assert s.errors == 2 and (not out.exists() or out.read_text() == "")
    manifest = Runner.manifest_path(out).read_text()
    with pytest.raises(ConfigError, match="different configuration"):
        runner(fake_backend()).run_sync(inp, out, policies=["hate_speech"])
    assert Runner.manifest_path(out).read_text() == manifest  # not rewritten


def test_a_corrupt_manifest_is_one_clear_error(tmp_path: Path) -> None:
    inp, out = _done_run(tmp_path, n=2)
    mpath = Runner.manifest_path(out)
    mpath.write_text('{"policies": {"hate_speech": ')
    with pytest.raises(InputError, match=rf"^{mpath}: corrupt manifest \(invalid JSON at line 1.*--overwrite"):
        runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    r = CliRunner().invoke(cli, ["run", str(inp), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "-p", "spam_scams", "--no-cache"])
    assert r.exit_code == 2 and "corrupt manifest" in r.output and "--overwrite" in r.output
    assert "Traceback" not in r.output and sum("corrupt manifest" in line for line in r.stderr.splitlines()) == 1
    s = runner(fake_backend()).run_sync(inp, out, policies=POLICIES, overwrite=True)
    assert s.processed == 2


def test_disk_full_writing_the_manifest_leaves_no_tmp_and_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp, out = _done_run(tmp_path, n=2)
    mpath = Runner.manifest_path(out)
    before = mpath.read_bytes()
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(_store.os, "write", full)
    with pytest.raises(CotmodError, match=r"cannot write .*manifest\.json: No space left on device; nothing was changed") as info:
        runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    assert not isinstance(info.value, ConfigError)  # a runtime failure (exit 3), not a usage error
    assert mpath.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unwritable_output_path_is_one_clean_line(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 2)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "sub" / "out.jsonl"  # its "directory" is a file: cannot be created
    with pytest.raises(ConfigError, match=r"cannot create the output directory"):
        runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    r = CliRunner().invoke(cli, ["run", str(inp), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "-p", "spam_scams", "--no-cache"])
    assert r.exit_code == 2 and "cannot create the output directory" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["run", str(inp), "-o", str(tmp_path), "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "-p", "spam_scams", "--no-cache"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_an_output_without_permission_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    real_open = os.open

    def denied(path: str, *a: object, **kw: object) -> int:
        if str(path) == str(out):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_store.os, "open", denied)
    with pytest.raises(ConfigError, match=rf"cannot open {out}: Permission denied"):
        runner(fake_backend()).run_sync(inp, out, policies=POLICIES)


def test_dead_letters_are_valid_json_lines(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 1, extra=["{bad"])
    out = tmp_path / "out.jsonl"
    runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    entries = _store.read_dead_letters(Runner.errors_path(out))
    assert [(e.line, e.id, e.retryable) for e in entries] == [(1, "line-2", False)]  # line of the errors file
    entry = json.loads(entries[0].raw)
    assert entry["error_type"] == "BadRow" and entry["line"] == 2  # line of the input


def test_repair_jsonl_unique_names_a_repeated_verdict_and_deletes_nothing(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    text = '{"item_id": "a"}\n{"item_id": "b"}\n{"item_id": "a"}\n{"item_id": "b"}\n'
    p.write_text(text)
    assert len(_store.repair_jsonl(p)) == 2  # a dead-letter file may repeat ids
    with pytest.raises(InputError, match=r"out\.jsonl:3: a second verdict for id 'a' \(the first is on line 1; 2 such line"):
        _store.repair_jsonl(p, unique=True)
    assert p.read_text() == text


def test_the_output_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with _store.OutputLock(out):
        assert (tmp_path / "out.jsonl.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(ConfigError, match="another cotmod run"):
            _store.OutputLock(out).acquire()
    assert not (tmp_path / "out.jsonl.lock").exists()
    with _store.OutputLock(out):  # free again
        pass
