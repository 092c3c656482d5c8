"""`cotmod moderate`, `cotmod run` and `cotmod batch import` through click: exit codes, single-item
failures dead-lettered, run-stopping failures, progress on stderr, Ctrl-C, option validation."""

from __future__ import annotations

import gzip
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cotmod import AsyncModerator, AuthenticationError, ChatRequest, ServerError
from cotmod._exceptions import CircuitOpenError, MalformedResponseError
from cotmod.batch._runner import Runner
from cotmod.cli import _moderate, _progress, cli
from cotmod.cli._app import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNDECIDED, EXIT_USAGE
from cotmod.testing import FakeBackend, FakeOpenAIServer, answer_for

from .test_batch import fake_provider
from .test_runner import ids_in, write_jsonl

ENDPOINT = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def use_backend(monkeypatch: pytest.MonkeyPatch, respond: Callable[[ChatRequest], Any]) -> FakeBackend:
    """Make the CLI's moderator talk to a FakeBackend answering with ``respond``."""
    fake = FakeBackend(default=respond)

    def make(settings: Any, cache: Any = None) -> AsyncModerator:
        return AsyncModerator(settings.guidelines, settings=settings, cache=cache, backend=fake)

    monkeypatch.setattr(_moderate, "_make_moderator", make)
    return fake


def item_text(req: ChatRequest) -> str:
    return str(req.messages[-1]["content"])


def good(req: ChatRequest) -> Any:
    return answer_for({"messages": req.messages, "response_format": {"type": "json_schema", "json_schema": {"schema": req.schema}}})


# -- moderate ----------------------------------------------------------------------------------------


def test_moderate_exits_1_on_an_error_verdict(tmp_path: Path) -> None:
    with FakeOpenAIServer(handler=lambda body: "not a verdict") as srv:
        r = invoke("moderate", "--base-url", srv.base_url, "--model", "m", "-p", "spam_scams", "--json", "hello")
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert json.loads(r.stdout)["status"] == "error"
    with FakeOpenAIServer() as srv:
        posts = tmp_path / "posts.jsonl.gz"
        posts.write_bytes(gzip.compress(b'{"id": "a", "text": "hello"}\n{"id": "b", "text": "VIOLATE me"}\n'))
        r = invoke("moderate", "--base-url", srv.base_url, "--model", "m", "-p", "spam_scams", "--json", "-f", str(posts))
    assert r.exit_code == EXIT_OK, r.output
    assert [json.loads(x)["item_id"] for x in r.stdout.splitlines()] == ["a", "b"]


def test_moderate_ctrl_c_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(req: ChatRequest) -> Any:
        raise KeyboardInterrupt

    use_backend(monkeypatch, interrupt)
    r = invoke("moderate", *ENDPOINT, "-p", "spam_scams", "hello")
    assert r.exit_code == EXIT_INTERRUPTED
    assert r.stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in r.output
    assert r.stdout == ""


def test_moderate_shows_progress_on_stderr_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_progress, "PLAIN_INTERVAL", 0.0)  # every update prints a plain line
    use_backend(monkeypatch, good)
    posts = tmp_path / "posts.txt"
    posts.write_text("one\ntwo\nthree VIOLATE\n")
    r = invoke("moderate", *ENDPOINT, "-p", "spam_scams", "-p", "hate_speech", "--json", "-f", str(posts))
    assert r.exit_code == EXIT_OK, r.output
    assert [json.loads(x)["item_id"] for x in r.stdout.splitlines()] == ["line-1", "line-2", "line-3"]
    assert "moderating 3 items × 2 policies: 1/3 items" in r.stderr and "done: 3/3 items" in r.stderr
    r = invoke("moderate", *ENDPOINT, "-p", "spam_scams", "--no-progress", "--json", "-f", str(posts))
    assert r.exit_code == EXIT_OK and "items" not in r.stderr


def test_moderate_says_it_is_starting_the_embedded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    use_backend(monkeypatch, good)
    r = invoke("moderate", "-p", "spam_scams", "--json", "hello")
    assert r.exit_code == EXIT_OK, r.output
    assert "starting the embedded model" in r.stderr and json.loads(r.stdout)["status"] == "ok"


def test_plain_progress_is_occasional() -> None:
    import io

    now = [0.0]
    buf = io.StringIO()
    with _progress.Reporter(rich=False, stream=buf, clock=lambda: now[0], interval=10.0) as rep:
        rep.note("starting the embedded model m")  # shown at once
        now[0] = 25.0
        rep.tick()  # still starting: a heartbeat line
        rep.begin(100, "moderating 100 items × 1 policy")
        for i in range(1, 101):
            now[0] += 0.5  # 50 s of items
            rep.show(i, 100)
    lines = buf.getvalue().splitlines()
    assert lines[:2] == ["cotmod: starting the embedded model m", "cotmod: starting the embedded model m, 25 s elapsed"]
    assert lines[2] == "cotmod: moderating 100 items × 1 policy: 20/100 items, 35 s elapsed"
    assert len(lines) == 2 + 5 + 1  # one line per 10 s of items, then the end
    assert lines[-1] == "cotmod: done: 100/100 items in 75 s"
    quiet = io.StringIO()
    with _progress.Reporter(rich=False, stream=quiet, clock=lambda: 0.0, interval=10.0) as rep:
        rep.begin(1, "moderating 1 item × 1 policy")
        rep.show(1, 1)
    assert quiet.getvalue() == ""  # a quick command prints no progress at all


# -- run ---------------------------------------------------------------------------------------------


def test_run_exit_codes_and_json_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 4)
    use_backend(monkeypatch, good)
    r = invoke("run", str(inp), "-o", str(tmp_path / "ok.jsonl"), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == EXIT_OK and data["undecided"] == 0 and data["exit_code"] == EXIT_OK

    # one bad row: exit 1, and again on a rerun that has nothing left to do
    bad = write_jsonl(tmp_path / "bad.jsonl", 3, extra=["{oops"])
    r = invoke("run", str(bad), "-o", str(tmp_path / "b.jsonl"), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == EXIT_UNDECIDED and (data["dead_lettered"], data["undecided"], data["exit_code"]) == (1, 1, 1)
    r = invoke("run", str(bad), "-o", str(tmp_path / "b.jsonl"), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == EXIT_UNDECIDED and data["processed"] == 0 and data["previously_dead_lettered"] == 1

    # every item fails: exit 1, not 0
    use_backend(monkeypatch, lambda req: "never a verdict")
    r = invoke("run", str(inp), "-o", str(tmp_path / "all.jsonl"), *ENDPOINT, "-p", "spam_scams", "--no-cache")
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert "4 items without a verdict" in r.stderr


def test_single_item_transport_failures_are_dead_lettered_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 6)

    def respond(req: ChatRequest) -> Any:
        if "post number 1\n" in item_text(req):
            raise MalformedResponseError("HTTP 200 with an HTML body (text/html), not a chat completion", status_code=200, attempts=3)
        if "post number 4\n" in item_text(req):
            raise ServerError("HTTP 502 after 3 attempts", status_code=502, attempts=3)
        return good(req)

    use_backend(monkeypatch, respond)
    out = tmp_path / "out.jsonl"
    r = invoke("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache", "-c", "1", "--json")
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert sorted(ids_in(out)) == ["p0", "p2", "p3", "p5"]
    errors = {e["id"]: e for e in map(json.loads, Runner.errors_path(out).read_text().splitlines())}
    assert {k: (v["error_type"], v["retryable"], v["attempts"]) for k, v in errors.items()} == {
        "p1": ("MalformedResponseError", True, 3),
        "p4": ("ServerError", True, 3),
    }
    # --retry-errors redoes them once the endpoint behaves
    use_backend(monkeypatch, good)
    r = invoke("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--retry-errors")
    assert r.exit_code == EXIT_OK, r.output
    assert sorted(ids_in(out)) == [f"p{i}" for i in range(6)]


@pytest.mark.skipif("fault" not in inspect.signature(FakeOpenAIServer).parameters, reason="FakeOpenAIServer has no fault injection yet")
def test_html_200_from_a_real_server_is_dead_lettered(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    with FakeOpenAIServer(fault="html", fault_first=1) as srv:  # type: ignore[call-arg]
        mod = AsyncModerator(base_url=srv.base_url, model="m", concurrency=1, max_transport_retries=0)
        s = Runner(mod).run_sync(inp, out, policies=["spam_scams"])
    assert s.processed == 3 and s.dead_lettered == 1
    assert len(ids_in(out)) == 3


@pytest.mark.parametrize(
    "fatal",
    [
        AuthenticationError("authentication failed (HTTP 401)", status_code=401),
        CircuitOpenError("circuit open: 5 failures in a row; not sending", failures=5, retry_in=30.0, retry_at=30.0),
    ],
)
def test_a_run_stopping_failure_exits_3_and_keeps_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fatal: Exception) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 8)
    calls = {"n": 0}

    def respond(req: ChatRequest) -> Any:
        calls["n"] += 1
        if calls["n"] > 3:
            raise fatal
        return good(req)

    use_backend(monkeypatch, respond)
    out = tmp_path / "out.jsonl"
    r = invoke("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache", "-c", "1")
    assert r.exit_code == EXIT_FAILURE, r.output
    assert type(fatal).__name__ in r.stderr and "are kept" in r.stderr and "Traceback" not in r.output
    assert len(ids_in(out)) == 3
    assert not Runner.errors_path(out).exists() or Runner.errors_path(out).read_text() == ""  # nothing dead-lettered
    use_backend(monkeypatch, good)
    r = invoke("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--json")
    assert r.exit_code == EXIT_OK and json.loads(r.stdout)["resumed_skipped"] == 3
    assert sorted(ids_in(out)) == [f"p{i}" for i in range(8)]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--rpm", "nan", "not a finite number"),
        ("--rpm", "inf", "not a finite number"),
        ("--tpm", "-inf", "not a finite number"),
        ("--rpm", "0", "must be > 0"),
        ("--price-in", "-1", "must be >= 0"),
        ("--price-out", "-0.5", "must be >= 0"),
        ("--price-out", "nan", "not a finite number"),
    ],
)
def test_run_rejects_non_finite_and_negative_numbers(tmp_path: Path, option: str, value: str, message: str) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 1)
    r = invoke("run", str(inp), "-o", str(tmp_path / "o.jsonl"), *ENDPOINT, option, value)
    assert r.exit_code == EXIT_USAGE and message in r.output and option in r.output
    assert not (tmp_path / "o.jsonl").exists()


# -- batch import --------------------------------------------------------------------------------------


def test_batch_import_honours_policy(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 2)
    req = tmp_path / "req.jsonl"
    common = ["--model", "gpt-4o-mini", "--base-url", "http://127.0.0.1:9/v1"]
    r = invoke("batch", "export", str(inp), "-o", str(req), "-p", "spam_scams", *common)
    assert r.exit_code == EXIT_OK, r.output
    fake_provider(req, tmp_path / "res.jsonl")
    out = tmp_path / "v.jsonl"
    r = invoke("batch", "import", str(tmp_path / "res.jsonl"), "--requests", str(req), "-o", str(out), "-p", "hate_speech", *common)
    assert r.exit_code == EXIT_USAGE and "does not match the policies" in r.output and "spam_scams" in r.output
    assert not out.exists()
    r = invoke("batch", "import", str(tmp_path / "res.jsonl"), "--requests", str(req), "-o", str(out), "-p", "spam_scams", *common)
    assert r.exit_code == EXIT_OK, r.output
    assert sorted(ids_in(out)) == ["p0", "p1"]


# -- walkthrough findings: --limit, concurrent runs, fixed bad rows, moderate --file ------------------


def test_run_limit_leaves_items_undecided_exit_1_and_says_how_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_jsonl(tmp_path / "lim.jsonl", 10)
    out = tmp_path / "vl.jsonl"
    use_backend(monkeypatch, good)
    args = ("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache")
    r = invoke(*args, "--limit", "3", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert (data["processed"], data["not_run"], data["undecided"], data["exit_code"]) == (3, 7, 7, EXIT_UNDECIDED)
    assert len(ids_in(out)) == 3
    r = invoke(*args, "--limit", "3")
    assert r.exit_code == EXIT_UNDECIDED
    assert "4 input items not run yet (--limit left them; rerun to resume)" in r.stderr and "Traceback" not in r.output
    r = invoke(*args, "--json")  # the rest: every item decided
    data = json.loads(r.stdout)
    assert r.exit_code == EXIT_OK and (data["processed"], data["not_run"], data["undecided"]) == (4, 0, 0)
    assert sorted(ids_in(out)) == sorted(f"p{i}" for i in range(10))
    # a limit that covers everything left is not a partial run
    r = invoke("run", str(inp), "-o", str(tmp_path / "all.jsonl"), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--limit", "10")
    assert r.exit_code == EXIT_OK, r.output


def test_a_second_run_on_an_output_being_written_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl
    import os

    inp = write_jsonl(tmp_path / "conc.jsonl", 5)
    out = tmp_path / "vcc.jsonl"
    use_backend(monkeypatch, good)
    # what another `cotmod run` on vcc.jsonl holds while it writes
    fd = os.open(tmp_path / "vcc.jsonl.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        r = invoke("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache")
        assert r.exit_code == EXIT_USAGE, r.output
        assert [x for x in r.stderr.splitlines() if not x.startswith("cotmod: ")] == [f"Error: ConfigError: another cotmod run (pid 4242) is writing {out}; wait for it to end, or write to another --output"]
        assert not out.exists() and "Traceback" not in r.output
    finally:
        os.close(fd)  # the other run ends: the lock goes with it
    r = invoke("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache")
    assert r.exit_code == EXIT_OK, r.output
    assert len(ids_in(out)) == 5
    assert not (tmp_path / "vcc.jsonl.lock").exists()  # a clean end removes the lock file


def test_a_resume_refuses_an_output_with_two_verdicts_for_one_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    use_backend(monkeypatch, good)
    args = ("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache")
    assert invoke(*args).exit_code == EXIT_OK
    lines = out.read_text().splitlines()
    first = [json.loads(x)["item_id"] for x in lines].index("p2") + 1
    damaged = "\n".join([*lines, lines[first - 1]]) + "\n"  # what two runs writing at once leave
    out.write_text(damaged)
    r = invoke(*args)
    assert r.exit_code == EXIT_USAGE, r.output
    assert f"{out}:5: a second verdict for id 'p2' (the first is on line {first}" in r.stderr
    assert "--overwrite" in r.stderr and "Traceback" not in r.output
    assert out.read_text() == damaged  # nothing deleted


def test_a_bad_row_fixed_in_the_input_is_decided_by_retry_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": ""}\n')
    out = tmp_path / "out.jsonl"
    errs = Runner.errors_path(out)
    use_backend(monkeypatch, good)
    args = ("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache")
    r = invoke(*args)
    assert r.exit_code == EXIT_UNDECIDED and ids_in(out) == ["a"]
    assert "--retry-errors redoes them, reading bad rows from" in r.stderr  # the hint says what --retry-errors does
    # still bad: --retry-errors reads it again and dead-letters it again, once
    r = invoke(*args, "--retry-errors", "--json")
    assert r.exit_code == EXIT_UNDECIDED and json.loads(r.stdout)["dead_lettered"] == 1
    assert [json.loads(x)["id"] for x in errs.read_text().splitlines()] == ["b"]
    # the user fixes the row: --retry-errors decides it
    inp.write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": "now with text"}\n')
    r = invoke(*args, "--retry-errors", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == EXIT_OK, r.output
    assert (data["processed"], data["undecided"]) == (1, 0)
    assert sorted(ids_in(out)) == ["a", "b"]
    assert errs.read_text() == ""
    r = invoke(*args, "--json")  # and a plain rerun agrees
    assert r.exit_code == EXIT_OK and json.loads(r.stdout)["resumed_skipped"] == 2


def test_run_dead_letters_a_csv_row_with_an_unterminated_quote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = tmp_path / "q.csv"
    q.write_text('id,text\n1,hello\n2,"he said hi\n3,row three\n4,row four\n5,row five VIOLATE\n')
    out = tmp_path / "out.jsonl"
    use_backend(monkeypatch, good)
    r = invoke("run", str(q), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == EXIT_UNDECIDED, r.output
    assert (data["input_rows"], data["processed"], data["dead_lettered"]) == (5, 4, 1)
    assert sorted(ids_in(out)) == ["1", "3", "4", "5"]
    [err] = [json.loads(x) for x in Runner.errors_path(out).read_text().splitlines()]
    assert err["id"] == "2" and err["error_type"] == "BadRow"
    assert err["message"].startswith(f"{q}:3: unterminated quote")


def test_moderate_file_refuses_a_repeated_id_like_run_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n{"id": "a", "text": "three"}\n')
    fake = use_backend(monkeypatch, good)
    r = invoke("moderate", *ENDPOINT, "-p", "spam_scams", "--json", "-f", str(dup))
    assert r.exit_code == EXIT_USAGE, r.output
    assert [x for x in r.stderr.splitlines() if not x.startswith("cotmod: ")] == [f"Error: InputError: {dup}:3: duplicate id 'a' (first on line 1); each item needs its own id"]
    assert r.stdout == "" and not fake.history


def test_moderate_help_example_file_exists() -> None:
    r = invoke("moderate", "--help")
    files = [w for line in r.output.splitlines() if "--file" in line and "cotmod moderate" in line for w in line.split() if w.endswith(".jsonl")]
    assert files and all((Path(__file__).parent.parent / f).is_file() for f in files), files


def test_retry_errors_decides_an_unreadable_row_fixed_under_its_own_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": "oops\n')  # unreadable: dead-lettered as line-2
    out = tmp_path / "out.jsonl"
    use_backend(monkeypatch, good)
    args = ("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--json")
    assert invoke(*args).exit_code == EXIT_UNDECIDED
    inp.write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": "oops, fixed"}\n')
    r = invoke(*args, "--retry-errors")
    data = json.loads(r.stdout)
    assert r.exit_code == EXIT_OK, r.output
    assert (data["processed"], data["undecided"]) == (1, 0) and sorted(ids_in(out)) == ["a", "b"]
