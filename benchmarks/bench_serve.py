"""cotmod serve against the fake backend: added latency, sustained throughput, overload.

The service runs in its own process (uvicorn, the app of ``cotmod serve`` with an audit log) with
an in-process :class:`cotmod.testing.FakeBackend` that answers after ``DELAY`` seconds, like a
fast model; this process is the client (the official ``openai`` client's
``moderations.create``, one item per request, policy spam_scams). The library baseline is an
``AsyncModerator`` with the same fake backend, called directly in this process.

* **Added latency**: p50/p99 of sequential requests through the service minus p50/p99 of
  sequential direct ``moderate`` calls (HTTP, JSON, auth-free admission, audit write included).
* **Throughput**: requests/s with ``CLIENTS`` concurrent clients against items/s of the library
  moderating the same number of items at the same concurrency; ``ratio`` = service / library
  (goal >= 0.8).
* **Overload**: a burst of ``BURST`` simultaneous requests at a service limited to 2 in progress
  and 2 waiting, with a slower model: counts of 200 and 429 (with Retry-After), anything else
  (must be 0), the service still healthy after, and audit-log lines == verdicts returned (none
  lost).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import _common as c

POLICY = "spam_scams"
DELAY = 0.005
CONCURRENCY = 16  # model calls in flight (both sides) and concurrent clients
CLIENTS = CONCURRENCY


def _answer(request: Any) -> dict[str, Any]:
    from cotmod.testing import decision

    pids = list(request.schema["properties"]["decisions"]["properties"])
    return decision({p: [] for p in pids})


def _settings() -> Any:
    from cotmod._config import Settings

    return Settings(guidelines=None, concurrency=CONCURRENCY)


def child(argv: list[str]) -> None:
    """The service process: serve until stdin closes, write the port to --port-file."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--audit", required=True)
    ap.add_argument("--delay", type=float, required=True)
    ap.add_argument("--max-concurrency", type=int, required=True)
    ap.add_argument("--max-queue", type=int, required=True)
    a = ap.parse_args(argv)
    from cotmod.serve import ServeConfig, ServerThread, create_app
    from cotmod.testing import FakeBackend

    cfg = ServeConfig(audit_log=Path(a.audit), max_concurrency=a.max_concurrency, max_queue=a.max_queue, access_log=False)
    app = create_app(_settings(), cfg, backend=FakeBackend(default=_answer, delay=a.delay))
    with ServerThread(app) as srv:
        Path(a.port_file).write_text(str(srv.port))
        sys.stdin.read()


class Service:
    def __init__(self, tmp: Path, name: str, *, delay: float, max_concurrency: int, max_queue: int) -> None:
        self.audit = tmp / f"{name}.audit.jsonl"
        port_file = tmp / f"{name}.port"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", "--port-file", str(port_file), "--audit", str(self.audit),
             "--delay", str(delay), "--max-concurrency", str(max_concurrency), "--max-queue", str(max_queue)],
            stdin=subprocess.PIPE, env=c.child_env(),
        )
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text()}"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def texts(n: int, seed: int) -> list[str]:
    import random

    r = random.Random(seed)
    return [" ".join(r.choices(c.WORDS, k=r.randint(6, 24))) for _ in range(n)]


async def library(items: list[str], n_lat: int) -> tuple[list[float], float]:
    """Direct calls: sequential latencies (ms), then items/s at CONCURRENCY."""
    from cotmod import AsyncModerator
    from cotmod.testing import FakeBackend

    mod = AsyncModerator(settings=_settings(), backend=FakeBackend(default=_answer, delay=DELAY))
    lat = []
    for t in items[:n_lat]:
        t0 = time.perf_counter()
        await mod.moderate(t, [POLICY])
        lat.append((time.perf_counter() - t0) * 1000)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int, t: str) -> None:
        async with sem:
            await mod.moderate({"id": str(i), "text": t}, [POLICY])

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, t) for i, t in enumerate(items)))
    rate = len(items) / (time.perf_counter() - t0)
    await mod.aclose()
    return lat, rate


def service_latency(url: str, items: list[str]) -> list[float]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    lat = []
    for t in items:
        t0 = time.perf_counter()
        client.moderations.create(input=t, model="cotmod", extra_body={"policies": [POLICY]})
        lat.append((time.perf_counter() - t0) * 1000)
    client.close()
    return lat


async def service_rate(url: str, items: list[str]) -> tuple[float, dict[int, int]]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    statuses: dict[int, int] = {}
    queue = list(enumerate(items))

    async def worker() -> None:
        while queue:
            _, t = queue.pop()
            try:
                await client.moderations.create(input=t, model="cotmod", extra_body={"policies": [POLICY]})
                code = 200
            except openai.APIStatusError as exc:
                code = exc.status_code
            statuses[code] = statuses.get(code, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    rate = len(items) / (time.perf_counter() - t0)
    await client.close()
    return rate, statuses


async def burst(url: str, items: list[str]) -> tuple[dict[int, int], int, int]:
    """All at once; returns status counts, 429s carrying Retry-After, verdicts returned."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    statuses: dict[int, int] = {}
    retry_after = 0
    verdicts = 0

    async def one(t: str) -> None:
        nonlocal retry_after, verdicts
        try:
            r = await client.moderations.create(input=t, model="cotmod", extra_body={"policies": [POLICY]})
            code = 200
            verdicts += len(r.results)
        except openai.APIStatusError as exc:
            code = exc.status_code
            retry_after += int(code == 429 and bool(exc.response.headers.get("retry-after")))
        except openai.APIConnectionError:
            code = -1
        statuses[code] = statuses.get(code, 0) + 1

    await asyncio.gather(*(one(t) for t in items))
    await client.close()
    return statuses, retry_after, verdicts


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    args = c.parse_args(__doc__.split("\n\n")[0])
    n = 300 if args.quick else 3000
    n_lat = 50 if args.quick else 500
    n_burst = 40 if args.quick else 200
    rounds = 1 if args.quick else 3
    items = texts(n, args.seed)
    with c.workdir("serve") as tmp:
        svc = Service(tmp, "main", delay=DELAY, max_concurrency=CONCURRENCY, max_queue=4 * CONCURRENCY)
        try:
            service_latency(svc.url, items[:20])  # warm-up
            asyncio.run(library(items[:50], 10))
            lib_lat: list[float] = []
            srv_lat: list[float] = []
            lib_rate: list[float] = []
            srv_rate: list[float] = []
            other: dict[int, int] = {}
            for i in range(rounds):
                lat, rate = asyncio.run(library(items, n_lat))
                lib_lat += lat
                lib_rate.append(rate)
                srv_lat += service_latency(svc.url, items[:n_lat])
                r, statuses = asyncio.run(service_rate(svc.url, items))
                srv_rate.append(r)
                for k, v in statuses.items():
                    if k != 200:
                        other[k] = other.get(k, 0) + v
                c.log(f"round {i + 1}: library {lib_rate[-1]:.0f} items/s, service {srv_rate[-1]:.0f} req/s")
        finally:
            svc.close()
        main_audit = c.count_lines(svc.audit)
        expected_main = 20 + rounds * (n_lat + n)
        over = Service(tmp, "overload", delay=0.05, max_concurrency=2, max_queue=2)
        try:
            statuses, retry_after, returned = asyncio.run(burst(over.url, items[:n_burst]))
            with urllib.request.urlopen(over.url + "/healthz", timeout=10) as resp:
                healthy_after = resp.status == 200
        finally:
            over.close()
        over_audit = c.count_lines(over.audit)
    lib_items = statistics.median(lib_rate)
    srv_items = statistics.median(srv_rate)
    c.emit(
        {
            "bench": "serve",
            "quick": args.quick,
            "model_delay_ms": DELAY * 1000,
            "concurrency": CONCURRENCY,
            "latency_direct_ms": {"p50": c.rnd(pct(lib_lat, 0.5), 2), "p99": c.rnd(pct(lib_lat, 0.99), 2)},
            "latency_service_ms": {"p50": c.rnd(pct(srv_lat, 0.5), 2), "p99": c.rnd(pct(srv_lat, 0.99), 2)},
            "added_latency_ms": {
                "p50": c.rnd(pct(srv_lat, 0.5) - pct(lib_lat, 0.5), 2),
                "p99": c.rnd(pct(srv_lat, 0.99) - pct(lib_lat, 0.99), 2),
            },
            "library_items_per_s": c.rnd(lib_items, 1),
            "service_requests_per_s": c.rnd(srv_items, 1),
            "ratio": c.rnd(srv_items / lib_items),
            "target_ratio": 0.8,
            "non_200_under_load": other,
            "audit_lines": main_audit,
            "audit_lines_expected": expected_main,
            "overload": {
                "burst": n_burst,
                "max_concurrency": 2,
                "max_queue": 2,
                "status_counts": {str(k): v for k, v in sorted(statuses.items())},
                "429_with_retry_after": retry_after,
                "other_errors": sum(v for k, v in statuses.items() if k not in (200, 429)),
                "healthy_after": healthy_after,
                "verdicts_returned": returned,
                "audit_lines": over_audit,
                "audit_lines_lost": returned - over_audit,
            },
        }
    )


if __name__ == "__main__":
    main()
