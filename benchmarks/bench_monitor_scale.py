"""Scale of cotmod monitor: one streaming pass over a big Parquet score log, in flat memory.

    python benchmarks/bench_monitor_scale.py                 # 10M rows x 5 labels (and 1M, for memory)
    python benchmarks/bench_monitor_scale.py --rows 200000   # smaller
    python benchmarks/bench_monitor_scale.py --quick         # smoke test

Generates (seeded) a Parquet score log of --rows rows (native timestamps, 5 score columns, one
stratum) and a reference of --reference-rows rows, then, each in its own process so that peak RSS
is its own: the cotmod pass (``monitor_stream``: every label, chunks of --chunk rows, PSI, JS,
KS, Wasserstein, flag-rate test, reference-spread limits) and a plain numpy pass over the same
data (read the same columns with pyarrow, ``np.histogram`` per label and chunk). The cotmod pass
also runs on the first tenth of the rows: flat memory means the same peak RSS for both. Prints
rows/s, the ratio and peak RSS; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ("spam", "hate", "violence", "sexual", "self_harm")


def _generate(path: Path, rows: int, seed: int, shift: float = 0.0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    t0 = 1793491200  # 2026-11-01T00:00:00Z
    step = 1_000_000
    writer: pq.ParquetWriter | None = None
    for start in range(0, rows, step):
        n = min(step, rows - start)
        cols: dict[str, object] = {
            "id": pa.array(np.arange(start, start + n).astype(str)),
            "timestamp": pa.array((t0 + (start + np.arange(n)) * 0.0864).astype("datetime64[ms]"), type=pa.timestamp("ms", tz="UTC")),
            "surface": pa.array(np.where(rng.random(n) < 0.5, "sms", "app")),
        }
        for i, lb in enumerate(LABELS):
            cols[f"score_{lb}"] = pa.array(rng.beta(1.2 + 0.2 * i + shift, 6.0, n).astype(np.float32))
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table, row_group_size=250_000)
    assert writer is not None
    writer.close()


def _read_reference(path: Path) -> object:
    from cotmod.classifiers import ScoreLog
    from cotmod.classifiers._stream import iter_score_batches

    batches = list(iter_score_batches(path, strata=["surface"]))
    n = sum(len(b) for b in batches)
    return ScoreLog(
        path=str(path), labels=LABELS, ids=[""] * n, lines=np.concatenate([b.lines for b in batches]),
        scores={lb: np.concatenate([b.scores[lb] for b in batches]) for lb in LABELS},
        truth={lb: np.full(n, -1, dtype=np.int8) for lb in LABELS},
        strata={"surface": list(np.concatenate([b.strata["surface"] for b in batches]))},
    )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(mode: str, path: Path, ref_path: Path, chunk: int) -> None:
    """One pass in this process; prints one JSON line."""
    import pyarrow.parquet as pq

    from cotmod.classifiers import MonitorSettings, monitor_stream

    rows = pq.ParquetFile(str(path)).metadata.num_rows
    if mode == "cotmod":
        t = time.perf_counter()
        ref = _read_reference(ref_path)
        ref_s = time.perf_counter() - t
        t = time.perf_counter()
        rep = monitor_stream(path, ref, MonitorSettings(chunk=chunk))  # type: ignore[arg-type]
        secs = time.perf_counter() - t
        out = {"rows": rep.rows, "seconds": secs, "reference_seconds": ref_s, "chunks": sum(len(g.chunks) for g in rep.groups), "alerts": rep.alerts}
    else:
        ref = pq.read_table(str(ref_path), columns=[f"score_{lb}" for lb in LABELS])
        edges = {lb: np.unique(np.quantile(ref.column(f"score_{lb}").to_numpy(), np.linspace(0, 1, 11))) for lb in LABELS}
        del ref
        t = time.perf_counter()
        pf = pq.ParquetFile(str(path))
        buf: dict[str, list[np.ndarray]] = {lb: [] for lb in LABELS}
        have = 0
        hists = 0

        def close(parts: dict[str, list[np.ndarray]]) -> int:
            for lb in LABELS:
                np.histogram(np.concatenate(parts[lb]), bins=edges[lb])
            return len(LABELS)

        def batches() -> Iterator[Any]:  # row group by row group, as monitor_stream reads (flat memory)
            for g in range(pf.num_row_groups):
                yield from pf.read_row_group(g, columns=["timestamp", *(f"score_{lb}" for lb in LABELS)]).to_batches(max_chunksize=65536)

        for b in batches():
            cols = {lb: b.column(f"score_{lb}").to_numpy() for lb in LABELS}
            i = 0
            while i < b.num_rows:
                take = min(chunk - have, b.num_rows - i)
                for lb in LABELS:
                    buf[lb].append(cols[lb][i : i + take])
                have += take
                i += take
                if have == chunk:
                    hists += close(buf)
                    buf = {lb: [] for lb in LABELS}
                    have = 0
        if have:
            hists += close(buf)
        secs = time.perf_counter() - t
        out = {"rows": rows, "seconds": secs, "histograms": hists}
    out["peak_rss_mb"] = _peak_mb()
    print(json.dumps(out), flush=True)


def _run(mode: str, path: Path, ref: Path, chunk: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", mode, str(path), str(ref), str(chunk)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} pass failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--reference-rows", type=int, default=None, help="[default: 10 chunks]")
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="a small, fast run (smoke test)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.chunk = 20_000, 1_000
    ref_rows = args.reference_rows or 10 * args.chunk
    with tempfile.TemporaryDirectory(prefix="cotmod-bench-scale-") as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        big, small, ref = d / "scores.parquet", d / "scores_tenth.parquet", d / "reference.parquet"
        _generate(big, args.rows, args.seed, shift=0.05)
        _generate(small, max(args.rows // 10, args.chunk), args.seed, shift=0.05)
        _generate(ref, ref_rows, args.seed + 1)
        print(f"generated {args.rows:,} + {max(args.rows // 10, args.chunk):,} rows x {len(LABELS)} labels and a reference of {ref_rows:,} "
              f"in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
        cot = _run("cotmod", big, ref, args.chunk)
        base = _run("numpy", big, ref, args.chunk)
        tenth = _run("cotmod", small, ref, args.chunk)
    cot_rps, np_rps = cot["rows"] / cot["seconds"], base["rows"] / base["seconds"]
    print(f"rows {int(cot['rows']):,} x {len(LABELS)} labels, chunks of {args.chunk:,} rows, reference {ref_rows:,} rows")
    print(f"  cotmod monitor_stream: {cot['seconds']:8.1f} s  {cot_rps:12,.0f} rows/s  peak RSS {cot['peak_rss_mb']:7.0f} MB "
          f"({int(cot['chunks'])} chunk statistics, {int(cot['alerts'])} alerts; reference read {cot['reference_seconds']:.1f} s)")
    print(f"  plain numpy pass:      {base['seconds']:8.1f} s  {np_rps:12,.0f} rows/s  peak RSS {base['peak_rss_mb']:7.0f} MB")
    print(f"  ratio numpy/cotmod: {np_rps / cot_rps:.1f}x")
    print(f"  flat memory: cotmod peak RSS {tenth['peak_rss_mb']:.0f} MB on {int(tenth['rows']):,} rows vs {cot['peak_rss_mb']:.0f} MB on {int(cot['rows']):,} rows")
    print(json.dumps({
        "bench": "monitor_scale", "rows": int(cot["rows"]), "labels": len(LABELS), "chunk": args.chunk, "reference_rows": ref_rows,
        "cotmod_rows_per_s": round(cot_rps), "numpy_rows_per_s": round(np_rps), "ratio": round(np_rps / cot_rps, 2),
        "cotmod_peak_rss_mb": round(cot["peak_rss_mb"]), "numpy_peak_rss_mb": round(base["peak_rss_mb"]),
        "cotmod_peak_rss_mb_tenth": round(tenth["peak_rss_mb"]), "tenth_rows": int(tenth["rows"]),
    }), flush=True)


if __name__ == "__main__":
    main()
