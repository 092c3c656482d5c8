"""Rate limits: does ``--rpm`` hold a cap without 429s, and does the runner ride out 429s?

Phase 1 (rpm): the fake server refuses (429) requests over ``--rpm-limit 1200`` in a sliding
60 s window; the runner (Runner API, in-process, concurrency 16) runs with ``rpm=1200`` over
20 s worth of items (400; --quick: 8 s, 160). Figures: the achieved rate (runner side, items over
its elapsed time; and server side, accepted requests over the span first..last) against the cap,
as ``deviation = achieved / cap - 1`` (target: |deviation| <= 0.05), the 429s the server sent
(target: 0), and the peak accepted requests in any 1 s / 10 s window against the cap for that
window (a burst shows up here even when it stays under the 60 s window).

Phase 2 (adaptive concurrency): the server admits at most 4 requests in flight (429 with
``retry-after: 0.1`` beyond), answering after 0.05 s; the runner runs at concurrency 16 with no
rpm cap. Figures: the server's 429 count, the runner's throttle count, whether the run completed
(every item written or dead-lettered, no exception), how many items were dead-lettered, the
throughput against the server's capacity (4 / 0.05 s = 80 items/s), and the adaptive limiter's
final state (read by wrapping ``cotmod.batch._runner.LimitedBackend`` in this process; cotmod itself
is unchanged).
Prints one JSON line.
"""

from __future__ import annotations

from typing import Any

import _common as c

RPM = 1200.0
P2_SERVER_CONCURRENCY = 4
P2_DELAY = 0.05
P2_RUNNER_CONCURRENCY = 16


def _record_limiters() -> list[Any]:
    """Wrap the runner's LimitedBackend so the benchmark can read its final state."""
    import cotmod.batch._runner as runner_mod

    made: list[Any] = []
    base = runner_mod.LimitedBackend
    if getattr(base, "_bench_recording", False):
        return made

    class Recording(base):  # type: ignore[misc, valid-type]
        _bench_recording = True

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            made.append(self)

    runner_mod.LimitedBackend = Recording  # type: ignore[misc]
    return made


def phase_rpm(tmp: Any, quick: bool, seed: int) -> dict[str, Any]:
    seconds = 8 if quick else 20
    n = int(RPM / 60 * seconds)
    inp = tmp / "rpm.jsonl"
    c.make_input(inp, n, seed=seed)
    with c.server(delay=0.0, rpm_limit=RPM) as url:
        d = c.run_runner(url, inp, tmp / "rpm.out.jsonl", concurrency=16, rpm=RPM)
        st = c.server_stats(url)
    runner_rpm = d["processed"] / d["elapsed_s"] * 60 if d["elapsed_s"] else None
    server_rpm = st["accepted_per_min"]
    out = {
        "rpm_cap": RPM,
        "rpm_items": n,
        "rpm_processed": d["processed"],
        "rpm_elapsed_s": c.rnd(d["elapsed_s"], 2),
        "rpm_achieved_runner": c.rnd(runner_rpm, 1),
        "rpm_achieved_server": c.rnd(server_rpm, 1),
        "rpm_deviation_runner": c.rnd(runner_rpm / RPM - 1 if runner_rpm else None, 4),
        "rpm_deviation_server": c.rnd(server_rpm / RPM - 1 if server_rpm else None, 4),
        "rpm_server_429": st["throttled_429"],
        "rpm_runner_throttled": d["throttled_429"],
        "rpm_peak_1s": st["peak_1s"],
        "rpm_peak_1s_cap": RPM / 60,
        "rpm_peak_10s": st["peak_10s"],
        "rpm_peak_10s_cap": RPM / 6,
    }
    c.log(
        f"phase 1: {d['processed']}/{n} items in {d['elapsed_s']:.2f}s; {runner_rpm:.1f}/min (runner), "
        f"{server_rpm}/min (server), cap {RPM:.0f}; 429s {st['throttled_429']}; peak 1s {st['peak_1s']} (cap {RPM / 60:.0f})"
    )
    return out


def phase_adaptive(tmp: Any, quick: bool, seed: int) -> dict[str, Any]:
    n = 120 if quick else 400
    inp = tmp / "adaptive.jsonl"
    c.make_input(inp, n, seed=seed + 7)
    limiters = _record_limiters()
    completed = True
    problem = None
    d: dict[str, Any] = {}
    with c.server(delay=P2_DELAY, max_concurrency=P2_SERVER_CONCURRENCY) as url:
        try:
            d = c.run_runner(url, inp, tmp / "adaptive.out.jsonl", concurrency=P2_RUNNER_CONCURRENCY)
        except Exception as exc:  # the figure is whether it completes; report, don't crash
            completed = False
            problem = f"{type(exc).__name__}: {exc}"[:300]
        st = c.server_stats(url)
    lim = limiters[-1] if limiters else None
    out_file = tmp / "adaptive.out.jsonl"
    written = c.count_lines(out_file)
    dead = c.count_lines(out_file.with_suffix(".errors.jsonl"))
    accounted = written + dead
    capacity = P2_SERVER_CONCURRENCY / P2_DELAY
    rate = n / d["wall_s"] if d.get("wall_s") else None
    out: dict[str, Any] = {
        "adaptive_items": n,
        "adaptive_completed": completed and accounted == n,
        "adaptive_written": written,
        "adaptive_dead_lettered": dead,
        "adaptive_error_types": d.get("error_types"),
        "adaptive_server_429": st["throttled_429"],
        "adaptive_server_requests": st["requests"],
        "adaptive_429_share": c.rnd(st["throttled_429"] / st["requests"] if st["requests"] else None),
        "adaptive_runner_throttled": d.get("throttled_429"),
        "adaptive_transport_retries": d.get("transport_retries"),
        "adaptive_items_per_s": c.rnd(rate, 1),
        "adaptive_capacity_items_per_s": capacity,
        "adaptive_efficiency": c.rnd(rate / capacity if rate else None),
        "adaptive_server_max_in_flight": st["max_in_flight"],
        "limiter_final": None
        if lim is None
        else {
            "maximum": lim.adaptive.maximum,
            "limit": round(lim.adaptive.limit, 3),
            "min_seen": lim.adaptive.min_seen,
            "cuts": lim.adaptive.cuts,
            "throttles": lim.throttles,
        },
    }
    if problem:
        out["adaptive_problem"] = problem
    c.log(
        f"phase 2: completed={out['adaptive_completed']} written {written}/{n}, dead-lettered {dead}, "
        f"server 429s {st['throttled_429']} of {st['requests']} requests, {rate or 0:.1f} items/s (capacity {capacity:.0f}); "
        f"limiter {out['limiter_final']}"
    )
    return out


def main() -> None:
    args = c.parse_args(__doc__.split("\n\n")[0])
    result: dict[str, Any] = {"bench": "ratelimit", "quick": args.quick}
    with c.workdir("ratelimit") as tmp:
        result.update(phase_rpm(tmp, args.quick, args.seed))
        result.update(phase_adaptive(tmp, args.quick, args.seed))
    result["target_abs_deviation"] = 0.05
    result["target_rpm_429"] = 0
    c.emit(result)


if __name__ == "__main__":
    main()
