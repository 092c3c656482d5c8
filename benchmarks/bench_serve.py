"""cotmod serve against the fake backend: added latency, sustained throughput, overload.

The service runs in its own process (uvicorn, the app of ``cotmod serve`` with an audit log) with
an in-process :class:`cotmod.testing.FakeBackend` that answers after ``DELAY`` seconds, like a
fast model; this process is the client (one item per request, policy spam_scams). The library
baseline is an ``AsyncModerator`` with the same fake backend, called directly in this process,
measured in the same run (same items, same concurrency, same delay).

Two clients, both reported (``client`` in the output says which is which):

* **lean** (the headline figures): a minimal HTTP/1.1 keep-alive client on raw asyncio streams,
  one connection per concurrent client, sending what the openai client sends
  (``POST /v1/moderations`` with ``{"input", "model", "policies"}`` and a bearer header), reading
  the status line, headers and content-length body, and ``json.loads``-ing the body (a 200 must
  hold one result with ``flagged`` and the ``cotmod`` verdict). It costs ~0.1 ms of CPU a request,
  so on 2 cores it leaves the service its core;
* **openai**: the official ``openai`` client's ``moderations.create`` (``*_openai_client``
  figures). It costs ~1.5 ms of CPU a request in this process, about as much as the service
  spends on a request, and on 2 cores it competes with the service for CPU. It also makes one
  checked request before the clock starts (the response parses as OpenAI's moderation result).

* **Added latency**: p50/p99 of sequential requests through the service minus p50/p99 of
  sequential direct ``moderate`` calls (HTTP, JSON, auth-free admission, audit write and the
  client's own work included).
* **Throughput**: requests/s with ``CLIENTS`` concurrent clients against items/s of the library
  moderating the same number of items at the same concurrency; ``ratio`` = service / library
  (goal >= 0.8).
* **Overload**: a burst of ``BURST`` simultaneous requests at a service limited to 2 in progress
  and 2 waiting, with a slower model: counts of 200 and 429 (with Retry-After), anything else
  (must be 0), the service still healthy after, and audit-log lines == verdicts returned (none
  lost).

Prints one JSON line (``--out FILE`` also writes it to FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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


class LeanClient:
    """One HTTP/1.1 keep-alive connection on raw asyncio streams, one request at a time."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.head = (
            f"POST /v1/moderations HTTP/1.1\r\nhost: {host}:{port}\r\naccept: application/json\r\n"
            "content-type: application/json\r\nauthorization: Bearer none\r\ncontent-length: "
        ).encode()

    async def moderate(self, text: str) -> int:
        """POST one text; the status code (a 200's body is parsed and checked)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        body = json.dumps({"input": text, "model": "cotmod", "policies": [POLICY]}).encode()
        self.writer.write(self.head + b"%d\r\n\r\n" % len(body) + body)
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        data = json.loads(await self.reader.readexactly(length))
        if status == 200:
            (result,) = data["results"]
            assert isinstance(result["flagged"], bool) and result["cotmod"]["status"] == "ok", data
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.reader = self.writer = None


async def lean_latency(url: str, items: list[str]) -> list[float]:
    client = LeanClient(url)
    lat = []
    for t in items:
        t0 = time.perf_counter()
        status = await client.moderate(t)
        lat.append((time.perf_counter() - t0) * 1000)
        assert status == 200, status
    await client.close()
    return lat


async def lean_rate(url: str, items: list[str]) -> tuple[float, dict[int, int]]:
    statuses: dict[int, int] = {}
    queue = list(enumerate(items))

    async def worker() -> None:
        client = LeanClient(url)
        while queue:
            _, t = queue.pop()
            code = await client.moderate(t)
            statuses[code] = statuses.get(code, 0) + 1
        await client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    rate = len(items) / (time.perf_counter() - t0)
    return rate, statuses


def openai_check(url: str, text: str) -> None:
    """One request with the official client: the response is OpenAI's moderation result."""
    import openai

    with openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as client:
        r = client.moderations.create(input=text, model="cotmod", extra_body={"policies": [POLICY]})
    assert len(r.results) == 1 and isinstance(r.results[0].flagged, bool) and r.results[0].categories is not None


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


def _median_spread(values: list[float]) -> dict[str, Any]:
    return {"median": c.rnd(statistics.median(values), 1), "min": c.rnd(min(values), 1), "max": c.rnd(max(values), 1)}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small, fast run (smoke test)")
    ap.add_argument("--seed", type=int, default=1234, help="seed for inputs and random choices")
    ap.add_argument("--out", type=Path, help="also write the JSON line to this file")
    args = ap.parse_args()
    n = 300 if args.quick else 3000
    n_lat = 50 if args.quick else 500
    n_burst = 40 if args.quick else 200
    rounds = 1 if args.quick else 3
    items = texts(n, args.seed)
    with c.workdir("serve") as tmp:
        svc = Service(tmp, "main", delay=DELAY, max_concurrency=CONCURRENCY, max_queue=4 * CONCURRENCY)
        try:
            openai_check(svc.url, items[0])
            service_latency(svc.url, items[:20])  # warm-up
            asyncio.run(lean_latency(svc.url, items[:20]))
            asyncio.run(library(items[:50], 10))
            lib_lat: list[float] = []
            lib_rate: list[float] = []
            lean_lat: list[float] = []
            lean_rates: list[float] = []
            oai_lat: list[float] = []
            oai_rates: list[float] = []
            other: dict[int, int] = {}
            for i in range(rounds):
                lat, rate = asyncio.run(library(items, n_lat))
                lib_lat += lat
                lib_rate.append(rate)
                lean_lat += asyncio.run(lean_latency(svc.url, items[:n_lat]))
                r, statuses = asyncio.run(lean_rate(svc.url, items))
                lean_rates.append(r)
                oai_lat += service_latency(svc.url, items[:n_lat])
                r, statuses2 = asyncio.run(service_rate(svc.url, items))
                oai_rates.append(r)
                for k, v in [*statuses.items(), *statuses2.items()]:
                    if k != 200:
                        other[k] = other.get(k, 0) + v
                c.log(
                    f"round {i + 1}: library {lib_rate[-1]:.0f} items/s, service {lean_rates[-1]:.0f} req/s (lean client), "
                    f"{oai_rates[-1]:.0f} req/s (openai client)"
                )
        finally:
            svc.close()
        main_audit = c.count_lines(svc.audit)
        expected_main = 1 + 20 + 20 + rounds * 2 * (n_lat + n)
        over = Service(tmp, "overload", delay=0.05, max_concurrency=2, max_queue=2)
        try:
            statuses, retry_after, returned = asyncio.run(burst(over.url, items[:n_burst]))
            with urllib.request.urlopen(over.url + "/healthz", timeout=10) as resp:
                healthy_after = resp.status == 200
        finally:
            over.close()
        over_audit = c.count_lines(over.audit)
    lib_items = statistics.median(lib_rate)
    lean_items = statistics.median(lean_rates)
    oai_items = statistics.median(oai_rates)

    def lat_of(values: list[float]) -> dict[str, Any]:
        return {"p50": c.rnd(pct(values, 0.5), 2), "p99": c.rnd(pct(values, 0.99), 2)}

    def added(values: list[float]) -> dict[str, Any]:
        return {"p50": c.rnd(pct(values, 0.5) - pct(lib_lat, 0.5), 2), "p99": c.rnd(pct(values, 0.99) - pct(lib_lat, 0.99), 2)}

    figures = {
        "bench": "serve",
        "quick": args.quick,
        "model_delay_ms": DELAY * 1000,
        "concurrency": CONCURRENCY,
        "items": n,
        "rounds": rounds,
        "client": "lean: HTTP/1.1 keep-alive on raw asyncio streams, one connection per concurrent client, json.loads of each body",
        "latency_direct_ms": lat_of(lib_lat),
        "latency_service_ms": lat_of(lean_lat),
        "added_latency_ms": added(lean_lat),
        "library_items_per_s": c.rnd(lib_items, 1),
        "service_requests_per_s": c.rnd(lean_items, 1),
        "ratio": c.rnd(lean_items / lib_items),
        "target_ratio": 0.8,
        "rounds_library_items_per_s": _median_spread(lib_rate),
        "rounds_service_requests_per_s": _median_spread(lean_rates),
        "client_openai": "the official openai client (AsyncOpenAI / OpenAI moderations.create, max_retries=0)",
        "latency_service_openai_client_ms": lat_of(oai_lat),
        "added_latency_openai_client_ms": added(oai_lat),
        "service_requests_per_s_openai_client": c.rnd(oai_items, 1),
        "ratio_openai_client": c.rnd(oai_items / lib_items),
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
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures) + "\n")
    c.emit(figures)


if __name__ == "__main__":
    main()
