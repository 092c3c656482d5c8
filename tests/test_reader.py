"""One input reader: JSONL, CSV, text (and .gz of each), lone surrogates and bad bytes per row,
and items from an iterable or async iterable."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cotmod import AsyncModerator, InputError, Item
from cotmod.batch import RunSummary, read_items, read_records
from cotmod.batch._runner import Runner

from .test_runner import POLICIES, fake_backend, ids_in, runner, write_jsonl

SURROGATE_TEXT = '{"id": "s1", "text": "broken \\ud800 text"}'
SURROGATE_ID = '{"id": "bad\\udfff", "text": "fine text"}'


def test_a_lone_surrogate_is_a_row_problem_with_its_line(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(['{"id": "a", "text": "ok"}', SURROGATE_TEXT, SURROGATE_ID, '{"id": "b", "text": "ok too"}']) + "\n")
    rows = list(read_items(p))
    assert [(r.line, r.id, r.problem is None) for r in rows] == [(1, "a", True), (2, "s1", False), (3, "line-3", False), (4, "b", True)]
    assert "lone surrogate '\\ud800'" in (rows[1].problem or "")
    assert "the id 'bad\\udfff'" in (rows[2].problem or "")
    with pytest.raises(InputError, match=rf"^{p}:2: field 'text': lone surrogate"):
        list(read_records(p))


def test_a_lone_surrogate_is_dead_lettered_and_the_run_and_reruns_go_on(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 4, extra=[SURROGATE_TEXT, SURROGATE_ID, '{"id": "z", "text": "last"}'])
    out = tmp_path / "out.jsonl"
    s = runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    assert s.processed == 5 and s.dead_lettered == 2 and s.undecided == 2
    assert sorted(ids_in(out)) == ["p0", "p1", "p2", "p3", "z"]
    errors = [json.loads(x) for x in Runner.errors_path(out).read_text(encoding="utf-8").splitlines()]
    assert [(e["id"], e["line"], e["error_type"]) for e in errors] == [("s1", 5, "BadRow"), ("line-6", 6, "BadRow")]
    for f in (out, Runner.errors_path(out)):
        f.read_bytes().decode("utf-8")  # strictly valid UTF-8
    s = runner(fake_backend()).run_sync(inp, out, policies=POLICIES)
    assert s.processed == 0 and s.resumed_skipped == 7 and s.previously_dead_lettered == 2 and s.undecided == 2


def test_a_bad_byte_in_one_csv_row_costs_that_row_only(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_bytes(b"id,text\na,hello\nb,bad \xff byte\nc,world VIOLATE\n")
    rows = list(read_items(p))
    assert [(r.line, r.id, r.text) for r in rows] == [(2, "a", "hello"), (3, "b", None), (4, "c", "world VIOLATE")]
    assert rows[1].problem == "column 'text' is not valid UTF-8"
    out = tmp_path / "out.jsonl"
    s = runner(fake_backend()).run_sync(p, out, policies=POLICIES)
    assert s.processed == 2 and s.dead_lettered == 1
    assert json.loads(Runner.errors_path(out).read_text())["line"] == 3


def _csv_text() -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "text"])
    w.writerow(["a", "one, with comma"])
    w.writerow(["b", "two\nlines"])
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("in.jsonl", '{"id": "a", "text": "one"}\n\n{"id": "b", "text": "two"}\n'),
        ("in.csv", _csv_text()),
        ("in.txt", "one\n\ntwo\n"),
    ],
)
def test_gz_inputs_read_like_plain_ones(tmp_path: Path, name: str, content: str) -> None:
    plain = tmp_path / name
    plain.write_text(content, encoding="utf-8", newline="")
    gz = tmp_path / (name + ".gz")
    gz.write_bytes(gzip.compress(content.encode("utf-8")))
    want = [(r.line, r.id, r.text) for r in read_items(plain)]
    assert len(want) == 2
    assert [(r.line, r.id, r.text) for r in read_items(gz)] == want
    assert list(read_records(gz)) == list(read_records(plain))
    out = tmp_path / "out.jsonl"
    s = runner(fake_backend()).run_sync(gz, out, policies=["spam_scams"])
    assert s.processed == 2 and s.dead_lettered == 0


def test_a_damaged_gz_is_a_clear_error(tmp_path: Path) -> None:
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"id": "a", "text": "one"}\n' * 50)[:-20])
    with pytest.raises(InputError, match=rf"^{gz}:\d+: cannot read the file"):
        list(read_items(gz))


def test_runner_takes_an_iterable_of_items_and_dicts(tmp_path: Path) -> None:
    items = [
        Item("VIOLATE this", "i1", {"source": "forum"}),
        {"id": "i2", "text": "fine", "lang": "en"},
        {"id": "i3"},  # no text: dead-lettered
        "a bare string",
        Item("broken \ud800", "i5"),
    ]
    out = tmp_path / "out.jsonl"
    s = runner(fake_backend()).run_sync(items, out, policies=POLICIES)
    assert isinstance(s, RunSummary)
    assert s.processed == 3 and s.dead_lettered == 2 and s.undecided == 2
    assert sorted(ids_in(out)) == ["i1", "i2", "line-4"]
    errors = [json.loads(x) for x in Runner.errors_path(out).read_text().splitlines()]
    assert [(e["id"], e["line"], e["input"]) for e in errors] == [("i3", 3, "<items>"), ("i5", 5, "<items>")]
    # resumable like a file: the same items again make no call
    fake = fake_backend()
    s = runner(fake).run_sync(items, out, policies=POLICIES)
    assert s.processed == 0 and s.resumed_skipped == 5 and not fake.history


def test_runner_takes_an_async_iterable(tmp_path: Path) -> None:
    async def gen() -> AsyncIterator[dict[str, str]]:
        for i in range(5):
            await asyncio.sleep(0)
            yield {"id": f"a{i}", "text": f"post {i}"}

    async def go() -> RunSummary:
        mod = AsyncModerator(backend=fake_backend())
        return await Runner(mod, concurrency=2).run(gen(), tmp_path / "out.jsonl", policies=["spam_scams"])

    s = asyncio.run(go())
    assert s.processed == 5 and s.to_dict()["undecided"] == 0
    assert sorted(ids_in(tmp_path / "out.jsonl")) == [f"a{i}" for i in range(5)]


@pytest.mark.parametrize("name", ["posts.csv", "posts.jsonl", "posts.txt", "posts.csv.gz"])
def test_a_byte_order_mark_at_the_start_is_skipped(tmp_path: Path, name: str) -> None:
    """Excel's "CSV UTF-8" and Notepad start files with a UTF-8 BOM. It used to become part of the
    first CSV column name, so the 'id' column was not found and every row silently got a
    line-N id (exit 0), and the first JSONL line a bad row."""
    body = {
        "posts.csv": "id,text\np1,hello\np2,\"caf\u00e9, ok\"\n",
        "posts.csv.gz": "id,text\np1,hello\np2,\"caf\u00e9, ok\"\n",
        "posts.jsonl": '{"id": "p1", "text": "hello"}\n{"id": "p2", "text": "caf\u00e9, ok"}\n',
        "posts.txt": "hello\ncaf\u00e9, ok\n",
    }[name]
    data = b"\xef\xbb\xbf" + body.encode()
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    rows = list(read_items(p))
    assert [r.problem for r in rows] == [None, None]
    assert [r.text for r in rows] == ["hello", "caf\u00e9, ok"]
    if name != "posts.txt":
        assert [r.id for r in rows] == ["p1", "p2"]
        assert next(rec for _, rec in read_records(p)) == {"id": "p1", "text": "hello"}
    # a BOM anywhere but the start is content, as before
    assert "\ufeff" in next(iter(read_items(_bom_inside(tmp_path)))).text


def _bom_inside(tmp_path: Path) -> Path:
    p = tmp_path / "inside.txt"
    p.write_bytes("a \ufeff b\n".encode())
    return p


UNCLOSED = 'id,text\n1,hello\n2,"he said hi\n3,row three\n4,row four\n5,row five VIOLATE\n'


def test_an_unterminated_csv_quote_is_a_bad_row_not_a_merge(tmp_path: Path) -> None:
    q = tmp_path / "q.csv"
    q.write_text(UNCLOSED)
    rows = list(read_items(q))
    assert [(r.line, r.id, r.text) for r in rows] == [(2, "1", "hello"), (3, "2", None), (4, "3", "row three"), (5, "4", "row four"), (6, "5", "row five VIOLATE")]
    assert rows[1].problem is not None and rows[1].problem.startswith("unterminated quote")
    # the strict reader (golden sets) stops at it, naming the line the quote opens on
    with pytest.raises(InputError, match=r"q\.csv:3: unterminated quote"):
        list(read_records(q))


def test_a_malformed_csv_quote_is_a_bad_row_not_a_guess(tmp_path: Path) -> None:
    q = tmp_path / "q.csv"
    q.write_text('id,text\n1,"abc"def\n2,fine\n3,"two\nlines"\n')
    rows = list(read_items(q))
    assert [(r.id, r.text, r.problem is None) for r in rows] == [("line-2", None, False), ("2", "fine", True), ("3", "two\nlines", True)]
    with pytest.raises(InputError, match=r"q\.csv:2: unreadable CSV row"):
        list(read_records(q))
