"""Shared helpers for the benchmarks: the fake server process, input files, the runner, output.

Everything runs on 127.0.0.1. The fake server (benchmarks/fakeserver.py) runs as its own process
and exits by itself if its parent dies (it watches its stdin) or after ``max_seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
FAKESERVER = HERE / "fakeserver.py"
POLICY = "spam_scams"


def cotmod_exe() -> str:
    """The ``cotmod`` console script beside this interpreter (the venv's), else on PATH."""
    beside = Path(PYTHON).with_name("cotmod")
    if beside.exists():
        return str(beside)
    found = shutil.which("cotmod")
    if found is None:
        raise SystemExit("cannot find the cotmod command")
    return found


# -- arguments and output ---------------------------------------------------------------------------
def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a small, fast run (smoke test)")
    ap.add_argument("--seed", type=int, default=1234, help="seed for inputs and random choices")
    return ap.parse_args(argv)


def log(msg: str) -> None:
    """Progress notes go to stderr; stdout ends with exactly one JSON line."""
    print(msg, file=sys.stderr, flush=True)


def emit(figures: dict[str, Any]) -> None:
    print(json.dumps(figures, sort_keys=False), flush=True)


def run_cmd(cmd: list[str], ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run a command (logged to stderr), capturing its output; exit with its output when its code
    is not in ``ok``."""
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, text=True, capture_output=True)
    if proc.returncode not in ok:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return proc


def rnd(x: float | None, n: int = 3) -> float | None:
    return None if x is None else round(x, n)


# -- isolation --------------------------------------------------------------------------------------
@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temp directory that is also COTMOD_HOME, with no cotmod/OpenAI settings leaking in."""
    tmp = Path(tempfile.mkdtemp(prefix=f"cotmod-bench-{prefix}-"))
    saved = dict(os.environ)
    try:
        for k in list(os.environ):
            if k.startswith("COTMOD_") or k.startswith("OPENAI_"):
                del os.environ[k]
        os.environ["COTMOD_HOME"] = str(tmp / "home")
        yield tmp
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


def child_env() -> dict[str, str]:
    """The environment for a ``cotmod run`` subprocess (call inside :func:`workdir`)."""
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


# -- the fake server --------------------------------------------------------------------------------
def start_server(
    *,
    delay: float = 0.0,
    max_concurrency: int | None = None,
    rpm_limit: float | None = None,
    rpm_window: float | None = None,
    max_seconds: float = 900.0,
    timeout: float = 20.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start benchmarks/fakeserver.py; return (process, base_url) once it prints READY."""
    cmd = [PYTHON, str(FAKESERVER), "--port", "0", "--delay", str(delay), "--max-seconds", str(max_seconds), "--watch-stdin"]
    if max_concurrency is not None:
        cmd += ["--max-concurrency", str(max_concurrency)]
    if rpm_limit is not None:
        cmd += ["--rpm-limit", str(rpm_limit)]
    if rpm_window is not None:
        cmd += ["--rpm-window", str(rpm_window)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    result: list[str] = []

    def read_ready() -> None:
        assert proc.stdout is not None
        result.append(proc.stdout.readline().decode().strip())

    t = threading.Thread(target=read_ready, daemon=True)
    t.start()
    t.join(timeout)
    line = result[0] if result else ""
    if not line.startswith("READY "):
        stop(proc)
        raise RuntimeError(f"fake server did not start (got {line!r})")
    base_url = line.split(" ", 1)[1]
    wait_healthy(base_url)
    return proc, base_url


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started by :func:`start_server` (terminate, then kill)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()


@contextlib.contextmanager
def server(**opts: Any) -> Iterator[str]:
    proc, base_url = start_server(**opts)
    try:
        yield base_url
    finally:
        stop(proc)


def _get(url: str, timeout: float = 10.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # 127.0.0.1 only
        return json.loads(resp.read())


def wait_healthy(base_url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(base_url + "/health", timeout=2.0)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def server_stats(base_url: str) -> dict[str, Any]:
    return _get(base_url + "/stats")


# -- inputs -----------------------------------------------------------------------------------------
SENTENCES = (
    "hello team the meeting moved to thursday please bring the slides and the budget numbers",
    "congratulations you won a free cruise click here to claim your prize before midnight",
    "great photo from the hike yesterday the view from the ridge was amazing see you soon",
    "limited offer cheap watches best price buy now reply stop to unsubscribe call this number",
)
WORDS = [w for s in SENTENCES for w in s.split()]


def make_input(path: Path, n: int, *, seed: int = 0, flag_every: int = 10) -> list[str]:
    """Write n JSONL items ({"id", "text"}, short texts; every ``flag_every``-th says VIOLATE,
    which the fake server answers with a violation). Returns the ids in order."""
    r = random.Random(seed)
    ids = []
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            rid = f"item-{i:07d}"
            words = r.choices(WORDS, k=r.randint(6, 24))
            if flag_every and i % flag_every == 0:
                words.append("VIOLATE")
            f.write(json.dumps({"id": rid, "text": " ".join(words)}) + "\n")
            ids.append(rid)
    return ids


def read_items(path: Path) -> list[tuple[str, str]]:
    """(id, text) pairs of a file written by :func:`make_input`."""
    with path.open(encoding="utf-8") as f:
        return [(obj["id"], obj["text"]) for obj in (json.loads(line) for line in f if line.strip())]


# -- the runner -------------------------------------------------------------------------------------
def make_moderator(base_url: str, concurrency: int) -> Any:
    from cotmod import AsyncModerator

    return AsyncModerator(base_url=base_url, model="m", concurrency=concurrency)


def run_runner(
    base_url: str,
    inp: Path,
    out: Path,
    *,
    concurrency: int,
    rpm: float | None = None,
    tpm: float | None = None,
    policies: list[str] | None = None,
) -> dict[str, Any]:
    """One ``cotmod run`` through the Runner API in this process (no cache, fresh output);
    returns the summary dict plus the wall time measured around it."""
    from cotmod.batch._runner import Runner

    mod = make_moderator(base_url, concurrency)
    runner = Runner(mod, concurrency=concurrency, rpm=rpm, tpm=tpm)
    t0 = time.perf_counter()
    summary = runner.run_sync(inp, out, policies=policies or [POLICY], overwrite=True)
    wall = time.perf_counter() - t0
    data = summary.to_dict()
    data["wall_s"] = wall
    return data


def cotmod_run_cmd(base_url: str, inp: Path, out: Path, *, concurrency: int, extra: list[str] | None = None) -> list[str]:
    """The ``cotmod run`` command line the subprocess benchmarks use."""
    return [
        cotmod_exe(), "run", str(inp), "-o", str(out),
        "--base-url", base_url, "--model", "m", "--policy", POLICY,
        "-c", str(concurrency), "--no-cache", "--no-progress", "--json",
        *(extra or []),
    ]


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))



# -- the bare-SDK baseline ----------------------------------------------------------------------------
def payloads_for(items: list[tuple[str, str]], concurrency: int) -> list[dict[str, Any]]:
    """The request bodies cotmod sends for these items (same messages, schema and sampling).

    ``AsyncModerator.render(text, [policy])`` renders with the placeholder id "item"; the runner
    puts the item's own id in the user message, so the same compiler is called with it."""
    mod = make_moderator("http://127.0.0.1:9/v1", concurrency)
    s = mod.settings
    # the last (item) message differs between calls: each draws its own random content boundary
    if items and mod.render(items[0][1], [POLICY])[0].messages[:-1] != mod.compiler((POLICY,)).compile(items[0][1]).messages[:-1]:
        raise RuntimeError("render() and the compiler disagree; update this benchmark")
    out = []
    for rid, text in items:
        prompt = mod.compiler((POLICY,)).compile(text, item_id=rid)
        body: dict[str, Any] = {
            "model": "m",
            "messages": prompt.messages,
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "cotmod_decision", "schema": prompt.schema, "strict": True},
            },
        }
        if s.seed is not None:
            body["seed"] = s.seed
        out.append(body)
    return out


async def bare_loop(base_url: str, payloads: list[dict[str, Any]], concurrency: int, *, low_level: bool) -> float:
    """items/s of a plain semaphore-bounded loop over the openai SDK."""
    import openai
    from openai.types.chat import ChatCompletion

    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(body: dict[str, Any]) -> None:
        nonlocal ok
        async with sem:
            if low_level:
                resp = await client.post("/chat/completions", cast_to=ChatCompletion, body=body)
            else:
                resp = await client.chat.completions.create(**body)
            json.loads(resp.choices[0].message.content or "")
            ok += 1

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in payloads))
        elapsed = time.perf_counter() - t0
    finally:
        await client.close()
    if ok != len(payloads):
        raise RuntimeError(f"bare loop: {ok} of {len(payloads)} succeeded")
    return len(payloads) / elapsed
