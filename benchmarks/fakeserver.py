"""A fast OpenAI-compatible chat-completions server for benchmarks, on raw asyncio streams.

Run as its own process (so its CPU does not compete with the event loop being measured)::

    python benchmarks/fakeserver.py --port 0 --delay 0.1 --max-concurrency 8 --rpm-limit 1200

It prints ``READY http://127.0.0.1:PORT/v1`` on stdout once it listens, and serves on
127.0.0.1 only:

* ``POST /v1/chat/completions``: after ``--delay`` seconds (``asyncio.sleep``), a
  ``chat.completion`` whose content is :func:`cotmod.testing.answer_for` of the request (usage
  included). With ``--max-concurrency N`` a request arriving while N are in flight gets 429
  (``retry-after: 0.1``). With ``--rpm-limit X`` a request that would make more than
  ``X * W / 60`` accepted requests in the sliding ``W``-second window (``--rpm-window``,
  default 60) gets 429.
* ``GET /health`` (or ``/v1/health``): 200.
* ``GET /stats`` (or ``/v1/stats``): JSON counters (requests, 429s, peak in-flight, the peak
  number of accepted requests in any 1 s and 10 s window, first/last accepted times).

HTTP/1.1 with keep-alive, request line + headers + content-length (or chunked) bodies; nothing
more. It stops by itself after ``--max-seconds`` (default 1800), on SIGTERM/SIGINT, and, with
``--watch-stdin``, when its stdin closes (its parent died).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from bisect import bisect_left
from collections import deque
from typing import Any

from cotmod.testing import answer_for

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error"}
MAX_TIMES = 2_000_000  # accepted-request timestamps kept for the peak-window figures


class FakeServer:
    def __init__(self, *, delay: float, max_concurrency: int | None, rpm_limit: float | None, rpm_window: float) -> None:
        self.delay = delay
        self.max_concurrency = max_concurrency
        self.rpm_limit = rpm_limit
        self.rpm_window = rpm_window
        self.window_cap = None if rpm_limit is None else max(1, int(rpm_limit * rpm_window / 60.0))
        self.window: deque[float] = deque()
        self.times: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.ok = 0
        self.throttled_concurrency = 0
        self.throttled_rpm = 0
        self.bad = 0
        self.connections = 0
        self.started = time.monotonic()

    # -- stats -------------------------------------------------------------------------------------
    def _peak(self, seconds: float) -> int:
        t = self.times
        best = 0
        for i, x in enumerate(t):
            j = bisect_left(t, x + seconds, lo=i)
            best = max(best, j - i)
        return best

    def stats(self) -> dict[str, Any]:
        t = self.times
        span = (t[-1] - t[0]) if len(t) > 1 else 0.0
        return {
            "requests": self.requests,
            "ok": self.ok,
            "throttled_429": self.throttled_concurrency + self.throttled_rpm,
            "throttled_concurrency": self.throttled_concurrency,
            "throttled_rpm": self.throttled_rpm,
            "bad_requests": self.bad,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "connections": self.connections,
            "accepted": len(t),
            "accepted_span_s": round(span, 4),
            "accepted_per_min": round((len(t) - 1) / span * 60.0, 3) if span > 0 else None,
            "peak_1s": self._peak(1.0),
            "peak_10s": self._peak(10.0),
            "delay": self.delay,
            "max_concurrency": self.max_concurrency,
            "rpm_limit": self.rpm_limit,
            "rpm_window_s": self.rpm_window,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }

    # -- admission ---------------------------------------------------------------------------------
    def _admit(self) -> tuple[int, float] | None:
        """None if the request may proceed; else (status, retry_after)."""
        if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
            self.throttled_concurrency += 1
            return 429, 0.1
        now = time.monotonic()
        if self.window_cap is not None:
            w = self.window
            while w and w[0] <= now - self.rpm_window:
                w.popleft()
            if len(w) >= self.window_cap:
                self.throttled_rpm += 1
                return 429, max(0.05, w[0] + self.rpm_window - now)
            w.append(now)
        if len(self.times) < MAX_TIMES:
            self.times.append(now)
        return None

    # -- HTTP --------------------------------------------------------------------------------------
    @staticmethod
    def _response(status: int, payload: Any, extra: dict[str, str] | None = None, *, close: bool = False) -> bytes:
        body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        head = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close" if close else "connection: keep-alive",
        ]
        for k, v in (extra or {}).items():
            head.append(f"{k}: {v}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    writer.write(self._response(400, {"error": {"message": "bad request line"}}, close=True))
                    await writer.drain()
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if not line:
                        continue
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                try:
                    body = await self._read_body(reader, headers)
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                data = await self.route(method, target.split("?", 1)[0], body, close)
                writer.write(data)
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers, up to the empty line
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return b"".join(parts)
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
        n = int(headers.get("content-length", "0") or 0)
        return await reader.readexactly(n) if n else b""

    async def route(self, method: str, path: str, body: bytes, close: bool) -> bytes:
        if path.startswith("/v1/"):
            path = path[3:]
        if method == "GET" and path == "/health":
            return self._response(200, {"status": "ok"}, close=close)
        if method == "GET" and path == "/stats":
            return self._response(200, self.stats(), close=close)
        if path != "/chat/completions":
            return self._response(404, {"error": {"message": f"no route {path}"}}, close=close)
        if method != "POST":
            return self._response(405, {"error": {"message": "use POST"}}, close=close)
        self.requests += 1
        refused = self._admit()
        if refused is not None:
            status, retry_after = refused
            return self._response(
                status,
                {"error": {"message": "rate limited (fake server)", "type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}},
                {"retry-after": f"{retry_after:.3g}"},
                close=close,
            )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            try:
                req = json.loads(body)
                text = json.dumps(answer_for(req), separators=(",", ":"))
            except Exception as exc:  # a malformed request is the client's problem: say so
                self.bad += 1
                return self._response(400, {"error": {"message": f"bad request: {type(exc).__name__}: {exc}"}}, close=close)
            self.ok += 1
            prompt_tokens = max(1, len(body) // 4)
            completion_tokens = max(1, len(text) // 4)
            return self._response(
                200,
                {
                    "id": f"chatcmpl-{self.requests}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": req.get("model", "fake"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
                },
                close=close,
            )
        finally:
            self.in_flight -= 1


async def serve(args: argparse.Namespace) -> None:
    fs = FakeServer(delay=args.delay, max_concurrency=args.max_concurrency, rpm_limit=args.rpm_limit, rpm_window=args.rpm_window)
    server = await asyncio.start_server(fs.handle, "127.0.0.1", args.port, limit=1 << 22, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"READY http://127.0.0.1:{port}/v1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.watch_stdin:

        def watch() -> None:
            with contextlib.suppress(Exception):
                while sys.stdin.buffer.read(4096):
                    pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch, daemon=True).start()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    server.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    ap.add_argument("--max-concurrency", type=int, default=None, help="429 beyond this many in flight")
    ap.add_argument("--rpm-limit", type=float, default=None, help="429 above this many requests per minute")
    ap.add_argument("--rpm-window", type=float, default=60.0, help="sliding window (s) for --rpm-limit")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="exit after this long")
    ap.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    args = ap.parse_args(argv)
    asyncio.run(serve(args))
    sys.stdout.flush()
    # exit without joining the stdin-watching thread (it may be blocked in a read)
    os._exit(0)


if __name__ == "__main__":
    main()
