"""cotmod.integrations.ray: Ray Data in local mode on 2 CPUs against a fake OpenAI server on
127.0.0.1 (and, marked e2e, once against the real embedded model)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")

from cotmod import ConfigError, Settings, Verdict  # noqa: E402
from cotmod.integrations.ray import moderate_dataset, moderate_to, read_done_ids  # noqa: E402
from cotmod.testing import FakeOpenAIServer, answer_for, item_content  # noqa: E402

from .conftest import GUIDELINES, e2e_model  # noqa: E402

# Ray's own deprecation notices (e.g. DataContext's use_push_based_shuffle) are not ours to fail on
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray", "ignore::FutureWarning:ray")

POLICIES = ["spam_scams", "hate_speech"]


@pytest.fixture(scope="module", autouse=True)
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray instance for the module (2 CPUs). Its workers inherit this environment,
    so it is cleaned like the per-test one (no developer endpoint, key or cache)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("COTMOD_BASE_URL", "COTMOD_API_KEY", "OPENAI_API_KEY", "COTMOD_MODEL", "COTMOD_CONFIG"):
            mp.delenv(var, raising=False)
        mp.setenv("COTMOD_HOME", str(tmp_path_factory.mktemp("ray-cotmod-home")))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            yield
        finally:
            ray.shutdown()


def handler(body: dict[str, Any]) -> Any:
    """Answers like the fake server (VIOLATE in the text -> the first rule); BREAK -> output
    that is not JSON; EXPLODE -> the server drops the connection (a transport failure)."""
    text = item_content(body)
    if "BREAK" in text:
        return "not json at all"
    if "EXPLODE" in text:
        raise RuntimeError("the server fails on this item")
    return answer_for(body)


def settings(server: FakeOpenAIServer, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "base_url": server.base_url, "model": "fake", "max_reasks": 0, "max_transport_retries": 0,
        "concurrency": 4, "decision_logic": False, "guidelines": str(GUIDELINES),
    }
    return Settings(**{**base, **kw})


def items(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": f"i{i}", "text": f"{'VIOLATE' if i % 3 == 0 else 'hello'} message {i}", "source": "forum", "score": i / 100}
        for i in range(start, start + n)
    ]


def rows(out: Path, fmt: str = "parquet") -> list[dict[str, Any]]:
    if fmt == "parquet":
        return list(pq.read_table(out).to_pylist())
    found: list[dict[str, Any]] = []
    for f in sorted(out.rglob("*.json")):
        found.extend(json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
    return found


def test_every_item_gets_a_verdict_row_and_failed_rows_are_error_verdicts(tmp_path: Path) -> None:
    bad = [
        {"id": "broken", "text": "BREAK this", "source": "forum", "score": 0.5},
        {"id": "dropped", "text": "EXPLODE this", "source": "forum", "score": 0.5},
        {"id": "no-text", "text": None, "source": "forum", "score": 0.5},
    ]
    good = items(12)
    ds = ray.data.from_items(good[:6] + bad + good[6:])
    out = tmp_path / "verdicts"
    with FakeOpenAIServer(handler=handler) as server:
        summary = moderate_to(ds, out, settings=settings(server), select=POLICIES, actors=2, batch_size=4)
    got = rows(out)
    assert sorted(r["item_id"] for r in got) == sorted(x["id"] for x in good + bad)  # one row each
    by_id = {r["item_id"]: r for r in got}
    for x in good:
        r = by_id[x["id"]]
        v = Verdict.model_validate_json(r["verdict_json"])
        flagged = x["text"].startswith("VIOLATE")
        assert r["status"] == v.status == "ok"
        assert r["violates"] is flagged and r["spam_scams__violates"] is flagged and r["hate_speech__violates"] is flagged
        assert r["spam_scams__action"] == v.decision("spam_scams").action
        assert r["spam_scams__rule_ids"] == v.decision("spam_scams").rule_ids and bool(r["spam_scams__rule_ids"]) is flagged
        assert v.metadata == {"source": "forum", "score": x["score"]}  # other columns are the metadata
        assert r["prompt_fingerprint"] == v.prompt_fingerprint
    errors = {i: (by_id[i]["status"], by_id[i]["error_type"]) for i in ("broken", "dropped", "no-text")}
    assert errors == {
        "broken": ("error", "ModelOutputError"),
        "dropped": ("error", "EndpointUnreachableError"),
        "no-text": ("error", "InputError"),
    }
    assert by_id["no-text"]["violates"] is None and by_id["no-text"]["spam_scams__violates"] is None
    assert "'text' must be a string" in by_id["no-text"]["error_message"]
    assert (summary.written, summary.ok, summary.errors, summary.previously_done) == (15, 12, 3, 0)
    assert summary.error_types == {"ModelOutputError": 1, "EndpointUnreachableError": 1, "InputError": 1}


def test_rerun_skips_ids_already_in_the_output_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "verdicts"
    with FakeOpenAIServer() as server:
        s = settings(server)
        first = moderate_to(ray.data.from_items(items(10)), out, settings=s, select=["spam_scams"], actors=1)
        calls_first = server.requests
        # the job is run again over a larger input (as after a stop half-way)
        second = moderate_to(ray.data.from_items(items(16)), out, settings=s, select=["spam_scams"], actors=2)
        calls_second = server.requests - calls_first
    got = rows(out)
    ids = [r["item_id"] for r in got]
    assert sorted(ids) == sorted(f"i{i}" for i in range(16)) and len(ids) == len(set(ids))
    assert (first.written, second.written, second.previously_done, second.total_rows) == (10, 6, 10, 16)
    assert (calls_first, calls_second) == (10, 6)  # one policy: one model call per new item only
    assert read_done_ids(out) == set(ids)


def test_jsonl_output_and_retry_errors(tmp_path: Path) -> None:
    out = tmp_path / "verdicts-jsonl"
    data = [*items(5), {"id": "flaky", "text": "BREAK once", "source": "forum", "score": 0.1}]
    fixed = {"on": False}

    def sometimes(body: dict[str, Any]) -> Any:
        return answer_for(body) if fixed["on"] else handler(body)

    with FakeOpenAIServer(handler=sometimes) as server:
        s = settings(server)
        first = moderate_to(ray.data.from_items(data), out, format="jsonl", settings=s, select=["spam_scams"], actors=1)
        assert (first.ok, first.errors) == (5, 1)
        again = moderate_to(ray.data.from_items(data), out, format="jsonl", settings=s, select=["spam_scams"], actors=1)
        assert again.written == 0  # an error row counts as done unless retry_errors
        fixed["on"] = True
        retried = moderate_to(
            ray.data.from_items(data), out, format="jsonl", settings=s, select=["spam_scams"], actors=1, retry_errors=True
        )
    assert (retried.written, retried.ok, retried.previously_done) == (1, 1, 5)
    got = rows(out, "jsonl")
    flaky = sorted(r["status"] for r in got if r["item_id"] == "flaky")
    assert flaky == ["error", "ok"]  # the old error row stays; the retry added the ok row
    assert len(got) == 7 and all(Verdict.model_validate_json(r["verdict_json"]).item_id == r["item_id"] for r in got)
    assert read_done_ids(out, "jsonl", retry_errors=True) == {f"i{i}" for i in range(5)} | {"flaky"}


def test_each_actor_keeps_its_moderators_concurrency(tmp_path: Path) -> None:
    """Async actors run several batches at once (batch_size=1 here), and the moderator's own
    limit still bounds the model requests in flight per actor."""
    lock = threading.Lock()
    reached = threading.Event()
    state = {"now": 0, "max": 0, "seen": 0}
    limit = 3

    def counting(body: dict[str, Any]) -> Any:
        with lock:
            state["seen"] += 1
            if state["seen"] <= 2:  # the prefix warm-up: first alone, then two (window 1 + answered)
                return answer_for(body)
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            if state["now"] >= limit:
                reached.set()
        reached.wait(timeout=3)  # hold the request until the limit is reached once (or give up)
        with lock:
            state["now"] -= 1
        return answer_for(body)

    with FakeOpenAIServer(handler=counting) as server:
        ds = moderate_dataset(
            ray.data.from_items(items(12)), settings=settings(server), select=["spam_scams"],
            actors=1, concurrency=limit, batch_size=1,
        )
        got = ds.take_all()
    assert len(got) == 12 and all(r["status"] == "ok" for r in got)
    assert state["max"] == limit  # several batches at once, never more than the moderator allows


def test_an_output_of_another_prompt_configuration_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "verdicts"
    with FakeOpenAIServer() as server:
        s = settings(server)
        moderate_to(ray.data.from_items(items(3)), out, settings=s, select=["spam_scams"], actors=1)
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(ConfigError, match="another prompt configuration"):
            moderate_to(ray.data.from_items(items(3)), out, settings=s, select=["hate_speech"], actors=1)
        assert sorted(p.name for p in out.iterdir()) == before  # nothing written, nothing removed
        replaced = moderate_to(
            ray.data.from_items(items(3)), out, settings=s, select=["hate_speech"], actors=1, overwrite=True
        )
    assert replaced.total_rows == 3 and {r["hate_speech__violates"] is not None for r in rows(out)} == {True}


def test_resume_reads_a_torn_last_jsonl_line_as_not_done(tmp_path: Path) -> None:
    out = tmp_path / "verdicts"
    out.mkdir()
    line = json.dumps({"item_id": "a", "status": "ok", "prompt_fingerprint": "fp", "error_type": None})
    (out / "part-1.json").write_text(line + "\n" + '{"item_id": "b", "stat')
    assert read_done_ids(out, "jsonl") == {"a"}  # "b" is moderated again
    (out / "part-2.json").write_text("garbage\n" + line + "\n")
    with pytest.raises(ConfigError, match=r"part-2\.json:1: not a verdict row"):
        read_done_ids(out, "jsonl")


@pytest.mark.e2e
def test_with_the_real_local_model(tmp_path: Path) -> None:
    from cotmod.backends._local import ensure_local_server, model_path

    name = e2e_model()
    if not model_path(name).is_file():
        pytest.fail(f"the e2e model is not installed; run: cotmod models pull {name}")
    url = ensure_local_server(name)
    s = Settings(base_url=url, model=name, max_reasks=1, concurrency=2, decision_logic=False, guidelines=str(GUIDELINES))
    data = [
        {"id": "spam", "text": "Congratulations! You won a prize, text WIN to 80086"},
        {"id": "lunch", "text": "See you at lunch tomorrow"},
    ]
    out = tmp_path / "verdicts"
    summary = moderate_to(ray.data.from_items(data), out, settings=s, select=["spam_scams"], actors=1)
    got = {r["item_id"]: r for r in rows(out)}
    assert set(got) == {"spam", "lunch"} and summary.written == 2
    for r in got.values():
        v = Verdict.model_validate_json(r["verdict_json"])
        assert v.usage.prompt_tokens > 0 or v.status == "error"
        if v.status == "ok":  # a tiny model may fail validation: then an explicit error row
            assert r["spam_scams__action"] == v.decision("spam_scams").action
        else:
            assert r["error_type"] and v.error is not None
    assert os.listdir(out)
