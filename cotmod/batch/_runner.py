"""The batch runner: stream items from a file through the engine into a verdict file, resumably.

Guarantees
----------
* **Exactly one verdict per input id**, however often the run is killed (Ctrl-C, ``kill -9``)
  and restarted: the output is append-only JSONL, each verdict written with one ``write`` call;
  on restart a torn last line is cut off, and ids already present (or already dead-lettered)
  are skipped.
* **Nothing silently dropped**: unreadable rows (with their line number), duplicate ids, empty
  texts, invalid model output and transport failures go to ``<output>.errors.jsonl`` with the
  error type, message, raw output and attempts; ``retry_errors`` reprocesses exactly those.
* **No mixed verdicts**: ``<output>.manifest.json`` records the policies, prompt fingerprint,
  model and sampling; a run whose configuration differs refuses to append to that output.
* **Flat memory**: the input is streamed (JSONL, CSV, Parquet in batches) through a bounded queue;
  only 8-byte digests of seen ids are kept.

Id rule: a row without an id gets ``line-N`` (its 1-based line or row number). A duplicate id is
dead-lettered (the first occurrence wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._exceptions import (
    AuthenticationError,
    ConfigError,
    CotmodError,
    EndpointUnreachableError,
    InputError,
    RateLimitedError,
    TransportError,
)
from .._verdict import Verdict
from .._version import __version__
from ..backends._limits import LimitedBackend
from ..backends._pricing import price_for
from ..engine._moderator import AsyncModerator, Item

__all__ = ["RunSummary", "Runner", "read_items"]

csv.field_size_limit(1 << 30)
LATENCY_SAMPLE = 10_000
_RNG = random.Random(0)
RATE_LIMIT_REQUEUES = 6


@dataclass
class Row:
    """One input row: an item, or the reason it cannot be one."""

    line: int
    id: str
    text: str | None
    problem: str | None = None
    policies: list[str] | None = None


class IdSet:
    """A set of 64-bit id digests in a numpy open-addressing table: ~16 bytes per id instead of
    ~80 for a Python set of ints, so memory stays flat-ish for millions of ids."""

    def __init__(self, capacity: int = 1024) -> None:
        import numpy as np

        self._np = np
        cap = 1 << max(10, (capacity * 2 - 1).bit_length())
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def _slot(self, key: int) -> int:
        keys = self._keys
        mask = len(keys) - 1
        i = (key * 0x9E3779B97F4A7C15 >> 17) & mask
        while True:
            k = int(keys[i])
            if k == 0 or k == key:
                return int(i)
            i = (i + 1) & mask

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        key = key or 1
        return int(self._keys[self._slot(key)]) == key

    def add(self, key: int) -> None:
        key = key or 1
        i = self._slot(key)
        if int(self._keys[i]) == key:
            return
        self._keys[i] = key
        self._n += 1
        if self._n * 2 > len(self._keys):
            old = self._keys[self._keys != 0]
            self._keys = self._np.zeros(len(self._keys) * 2, dtype=self._np.uint64)
            self._n = 0
            for k in old.tolist():
                self.add(int(k))

    def __ior__(self, other: IdSet) -> IdSet:
        for k in other._keys[other._keys != 0].tolist():
            self.add(int(k))
        return self

    def __or__(self, other: IdSet) -> IdSet:
        out = IdSet(len(self) + len(other))
        out |= self
        out |= other
        return out


def _digest(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    mapping = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".txt": "text"}
    if suffix not in mapping:
        raise ConfigError(f"{path}: cannot tell the format from the extension; pass --format jsonl|csv|parquet|text")
    return mapping[suffix]


def read_items(
    path: str | Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    fmt: str | None = None,
    policies_field: str | None = None,
) -> Iterator[Row]:
    """Stream rows from JSONL, CSV, Parquet or plain text (one item per line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"input file not found: {p}")
    kind = detect_format(p, fmt)
    if kind == "jsonl":
        yield from _read_jsonl(p, id_field, text_field, policies_field)
    elif kind == "csv":
        yield from _read_csv(p, id_field, text_field)
    elif kind == "parquet":
        yield from _read_parquet(p, id_field, text_field)
    elif kind == "text":
        yield from _read_text(p)
    else:
        raise ConfigError(f"unknown input format {kind!r} (jsonl, csv, parquet, text)")


def _row(line: int, raw_id: Any, text: Any, text_field: str) -> Row:
    rid = str(raw_id) if raw_id not in (None, "") else f"line-{line}"
    if text is None:
        return Row(line, rid, None, f"missing field {text_field!r}")
    if not isinstance(text, str):
        return Row(line, rid, None, f"field {text_field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        return Row(line, rid, None, "empty text")
    return Row(line, rid, text)


def _read_jsonl(p: Path, id_field: str, text_field: str, policies_field: str | None = None) -> Iterator[Row]:
    with p.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield Row(n, f"line-{n}", None, f"not valid UTF-8 (byte {exc.start})")
                continue
            except json.JSONDecodeError as exc:
                yield Row(n, f"line-{n}", None, f"invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(obj, dict):
                yield Row(n, f"line-{n}", None, "expected a JSON object")
                continue
            row = _row(n, obj.get(id_field), obj.get(text_field), text_field)
            if policies_field is not None and row.problem is None:
                pol = obj.get(policies_field)
                if pol is not None:
                    if not isinstance(pol, list) or not all(isinstance(x, str) for x in pol) or not pol:
                        row = Row(n, row.id, None, f"field {policies_field!r} must be a non-empty list of policy ids")
                    else:
                        row.policies = pol
            yield row


def _read_csv(p: Path, id_field: str, text_field: str) -> Iterator[Row]:
    with p.open("r", encoding="utf-8", newline="", errors="strict") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames or []
        except UnicodeDecodeError as exc:
            raise InputError(f"{p}: header is not valid UTF-8 ({exc.reason})") from None
        if text_field not in header:
            raise ConfigError(f"{p}: no column {text_field!r} (columns: {', '.join(header) or 'none'}); use --text-field")
        has_id = id_field in header
        n = 1
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise InputError(f"{p}: after line {reader.line_num}: not valid UTF-8 ({exc.reason})") from None
            except csv.Error as exc:
                yield Row(reader.line_num, f"line-{reader.line_num}", None, f"unreadable CSV row: {exc}")
                continue
            n += 1
            if None in rec:
                yield Row(reader.line_num, str(rec.get(id_field) or f"line-{reader.line_num}"), None, "row has more fields than the header")
                continue
            yield _row(reader.line_num, rec.get(id_field) if has_id else None, rec.get(text_field), text_field)


def _read_parquet(p: Path, id_field: str, text_field: str) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet input needs pyarrow: pip install 'cotmod[parquet]'") from None
    pf = pq.ParquetFile(str(p))
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ConfigError(f"{p}: no column {text_field!r} (columns: {', '.join(names)}); use --text-field")
    cols = [text_field] + ([id_field] if id_field in names else [])
    row = 0
    for batch in pf.iter_batches(batch_size=2048, columns=cols):
        texts = batch.column(text_field).to_pylist()
        ids = batch.column(id_field).to_pylist() if id_field in names else [None] * len(texts)
        for rid, text in zip(ids, texts, strict=True):
            row += 1
            yield _row(row, rid, text, text_field)


def _read_text(p: Path) -> Iterator[Row]:
    with p.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield Row(n, f"line-{n}", None, f"not valid UTF-8 (byte {exc.start})")
                continue
            if line.strip():
                yield Row(n, f"line-{n}", line)


def count_rows(path: Path, fmt: str | None) -> int | None:
    """A cheap total for the progress bar (None if unknown)."""
    try:
        kind = detect_format(path, fmt)
        if kind == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(str(path)).metadata.num_rows)
        with path.open("rb") as f:
            n = sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
        return max(n - 1, 0) if kind == "csv" else n
    except Exception:
        return None


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@dataclass
class RunSummary:
    """What a run did. ``to_dict()`` is what ``cotmod run --json`` prints."""

    output: str
    input_rows: int = 0
    processed: int = 0
    resumed_skipped: int = 0
    errors: int = 0
    dead_lettered: int = 0
    cache_hits: int = 0
    model_calls: int = 0
    transport_retries: int = 0
    reasks: int = 0
    throttled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    by_decision: Counter[str] = field(default_factory=Counter)
    by_action: Counter[str] = field(default_factory=Counter)
    by_policy: dict[str, Counter[str]] = field(default_factory=dict)
    error_types: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # a uniform reservoir sample
    _lat_seen: int = 0
    price_in: float | None = None
    price_out: float | None = None

    @property
    def cost_usd(self) -> float | None:
        if self.price_in is None or self.price_out is None:
            return None
        return round((self.prompt_tokens * self.price_in + self.completion_tokens * self.price_out) / 1e6, 6)

    def add(self, v: Verdict) -> None:
        self.processed += 1
        self.prompt_tokens += v.usage.prompt_tokens
        self.completion_tokens += v.usage.completion_tokens
        self.transport_retries += v.transport_retries
        self.reasks += v.reasks
        self.cache_hits += v.cache_hits
        self.model_calls += v.attempts
        if v.cache_hits < len(v.policy_versions) or v.status == "error":
            self._add_latency(v.latency_ms)
        if v.status != "ok":
            self.errors += 1
            self.error_types[v.error.type if v.error else "error"] += 1
            return
        self.by_decision["violates" if v.violates else "safe"] += 1
        self.by_action[v.action or "allow"] += 1
        for d in v.decisions:
            self.by_policy.setdefault(d.policy_id, Counter())["violates" if d.violates else "safe"] += 1

    def _add_latency(self, ms: float) -> None:
        """Reservoir sampling (Algorithm R): exact percentiles up to 10k items, flat memory after."""
        self._lat_seen += 1
        if len(self.latencies_ms) < LATENCY_SAMPLE:
            self.latencies_ms.append(ms)
        else:
            j = _RNG.randrange(self._lat_seen)
            if j < LATENCY_SAMPLE:
                self.latencies_ms[j] = ms

    def to_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "output": self.output,
            "input_rows": self.input_rows,
            "processed": self.processed,
            "resumed_skipped": self.resumed_skipped,
            "errors": self.errors,
            "dead_lettered": self.dead_lettered,
            "cache_hits": self.cache_hits,
            "model_calls": self.model_calls,
            "transport_retries": self.transport_retries,
            "reasks": self.reasks,
            "throttled_429": self.throttled,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "cost_usd": self.cost_usd,
            "latency_ms": {
                "p50": _percentile(lat, 0.5),
                "p95": _percentile(lat, 0.95),
                "p99": _percentile(lat, 0.99),
            },
            "elapsed_s": round(self.elapsed_s, 3),
            "items_per_s": round(self.processed / self.elapsed_s, 3) if self.elapsed_s > 0 else None,
            "by_decision": dict(self.by_decision),
            "by_action": dict(self.by_action),
            "by_policy": {k: dict(v) for k, v in self.by_policy.items()},
            "error_types": dict(self.error_types),
        }


class _Appender:
    """Append whole lines with one write() each; refuse nothing silently (disk full → error)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, obj: dict[str, Any] | str) -> None:
        line = (obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)) + "\n"
        data = line.encode("utf-8", "surrogatepass")
        try:
            n = os.write(self.fd, data)
            if n != len(data):
                raise OSError(f"short write ({n} of {len(data)} bytes)")
        except OSError as exc:
            raise CotmodError(
                f"cannot write to {self.path}: {exc.strerror or exc}; verdicts already written are kept, "
                "free space and rerun the same command to resume"
            ) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        os.close(self.fd)


def repair_jsonl(path: Path) -> IdSet:
    """Cut a torn last line (a kill during a write) and return digests of the ids present."""
    ids = IdSet()
    if not path.exists():
        return ids
    good_end = 0
    with path.open("rb") as f:
        offset = 0
        for raw in f:
            end = offset + len(raw)
            if raw.endswith(b"\n"):
                try:
                    obj = json.loads(raw)
                    rid = obj.get("item_id", obj.get("id"))
                    if rid is not None:
                        ids.add(_digest(str(rid)))
                    good_end = end
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                    break
            offset = end
    if good_end != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_end)
    return ids


class Runner:
    """Runs an :class:`AsyncModerator` over a file. ``run`` is async; ``run_sync`` blocks."""

    def __init__(
        self,
        moderator: AsyncModerator,
        *,
        concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        price_in: float | None = None,
        price_out: float | None = None,
    ) -> None:
        self.moderator = moderator
        self.concurrency = concurrency or moderator.settings.concurrency
        if self.concurrency < 1:
            raise ConfigError("concurrency must be >= 1")
        self.rpm = rpm
        self.tpm = tpm
        self.price_in = price_in
        self.price_out = price_out

    # -- paths -----------------------------------------------------------------------------------
    @staticmethod
    def errors_path(output: Path) -> Path:
        return output.with_name(output.name + ".errors.jsonl") if output.suffix != ".jsonl" else output.with_suffix(".errors.jsonl")

    @staticmethod
    def manifest_path(output: Path) -> Path:
        return output.with_name(output.name + ".manifest.json")

    def manifest(self, policies: list[str] | None) -> dict[str, Any]:
        m = self.moderator
        ids = m.policies.select(policies).ids if policies else m.policies.ids
        return {
            "policies": {pid: m.policies[pid].version for pid in ids},
            "prompt_fingerprint": m.fingerprint(ids),
            "model": m.model_name,
            "strategy": m.settings.strategy,
            "sampling": m.sampling(),
            "thresholds": m.thresholds,
        }

    def _check_manifest(self, output: Path, manifest: dict[str, Any], overwrite: bool) -> None:
        mpath = self.manifest_path(output)
        if overwrite:
            for p in (output, self.errors_path(output), mpath):
                p.unlink(missing_ok=True)
        if output.exists() and output.stat().st_size > 0:
            if not mpath.exists():
                raise ConfigError(
                    f"{output} exists but was not written by cotmod run (no {mpath.name}); "
                    "choose another output or pass --overwrite"
                )
            old = json.loads(mpath.read_text())
            diffs = [k for k in manifest if old.get(k) != manifest[k]]
            if diffs:
                raise ConfigError(
                    f"{output} holds verdicts from a different configuration ({', '.join(diffs)} differ: "
                    f"{old.get(diffs[0])!r} vs {manifest[diffs[0]]!r}); refusing to mix verdicts. "
                    "Write to another output, or pass --overwrite to start over"
                )
        body = {**manifest, "cotmod_version": __version__, "updated_at": datetime.now(timezone.utc).isoformat()}
        tmp = mpath.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2))
        os.replace(tmp, mpath)

    # -- the run ---------------------------------------------------------------------------------
    def run_sync(self, *args: Any, **kwargs: Any) -> RunSummary:
        """Blocking :meth:`run` on a fresh event loop; closes the moderator's connections after."""

        async def go() -> RunSummary:
            try:
                return await self.run(*args, **kwargs)
            finally:
                await self.moderator.aclose()

        return asyncio.run(go())

    async def run(
        self,
        input_path: str | Path,
        output_path: str | Path,
        *,
        policies: list[str] | None = None,
        id_field: str = "id",
        text_field: str = "text",
        fmt: str | None = None,
        retry_errors: bool = False,
        overwrite: bool = False,
        limit: int | None = None,
        on_progress: Callable[[RunSummary, int | None], None] | None = None,
        policies_field: str | None = None,
    ) -> RunSummary:
        inp, out = Path(input_path), Path(output_path)
        if inp.resolve() == out.resolve():
            raise ConfigError("the output must not be the input file")
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        mod = self.moderator
        if policies:
            mod.policies.select(policies)
        manifest = self.manifest(policies)
        self._check_manifest(out, manifest, overwrite)
        errors_file = self.errors_path(out)

        done = repair_jsonl(out)
        retry_ids = IdSet()
        kept_errors: list[str] = []
        if errors_file.exists():
            repair_jsonl(errors_file)
            with errors_file.open("rb") as f:
                for raw in f:
                    entry = json.loads(raw)
                    d = _digest(str(entry.get("id")))
                    if retry_errors and entry.get("retryable", True) and d not in done:
                        retry_ids.add(d)
                    elif d not in done:
                        kept_errors.append(raw.decode().rstrip("\n"))
                        done.add(d)
            if retry_errors:
                # rewrite the dead-letter file with only what is not being retried
                tmp = errors_file.with_suffix(".tmp")
                tmp.write_text("".join(line + "\n" for line in kept_errors))
                os.replace(tmp, errors_file)
        if retry_errors and not retry_ids:
            summary = RunSummary(output=str(out))
            return summary

        summary = RunSummary(output=str(out))
        summary.price_in, summary.price_out = (
            (self.price_in, self.price_out) if self.price_in is not None and self.price_out is not None else price_for(mod.model_name)
        )
        total = count_rows(inp, fmt)
        backend = await mod._get_backend()
        limited = LimitedBackend(backend, concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm)
        mod._backend = limited
        # the adaptive limiter bounds requests in flight; the engine's own bound must not be lower
        mod._sem = asyncio.Semaphore(self.concurrency * max(1, len(mod._groups(policies))))
        writer = _Appender(out)
        dead = _Appender(errors_file)
        seen = IdSet()
        queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=self.concurrency * 4)
        fatal: list[BaseException] = []
        start = time.perf_counter()

        def dead_letter(row: Row, etype: str, message: str, *, raw: str | None = None, attempts: int = 0, retryable: bool = True) -> None:
            dead.write(
                {
                    "id": row.id,
                    "line": row.line,
                    "error_type": etype,
                    "message": message,
                    "raw_output": raw,
                    "attempts": attempts,
                    "retryable": retryable,
                    "input": str(inp),
                    "at": datetime.now(timezone.utc).isoformat(),
                }
            )
            summary.dead_lettered += 1

        async def produce() -> None:
            count = 0
            for row in read_items(inp, id_field=id_field, text_field=text_field, fmt=fmt, policies_field=policies_field):
                if fatal:
                    break
                summary.input_rows += 1
                d = _digest(row.id)
                if retry_errors:
                    if d not in retry_ids or d in seen:
                        continue
                elif d in done:
                    summary.resumed_skipped += 1
                    seen.add(d)
                    continue
                if d in seen:
                    dead_letter(row, "DuplicateId", f"line {row.line}: duplicate id {row.id!r} (the first occurrence wins)", retryable=False)
                    continue
                seen.add(d)
                if row.problem is not None:
                    dead_letter(row, "BadRow", f"{inp}:{row.line}: {row.problem}", retryable=False)
                    continue
                await queue.put(row)
                count += 1
                if limit is not None and count >= limit:
                    break
                if count % 256 == 0:
                    await asyncio.sleep(0)
            for _ in range(workers_n):
                await queue.put(None)

        async def work() -> None:
            while True:
                row = await queue.get()
                if row is None:
                    return
                if fatal:
                    continue
                assert row.text is not None
                try:
                    v = None
                    for requeue in range(RATE_LIMIT_REQUEUES + 1):
                        try:
                            v = await mod.moderate(Item(row.text, row.id), row.policies or policies)
                            break
                        except RateLimitedError:
                            # the server keeps saying 429: back off (the limiter has already cut
                            # concurrency) and try the item again before giving up on it
                            if requeue == RATE_LIMIT_REQUEUES:
                                raise
                            await asyncio.sleep(min(30.0, 0.5 * 2**requeue) * (1 + random.random()))
                    assert v is not None
                except (AuthenticationError, EndpointUnreachableError, ConfigError) as exc:
                    fatal.append(exc)
                    continue
                except TransportError as exc:
                    dead_letter(row, type(exc).__name__, str(exc), attempts=exc.attempts)
                    summary.errors += 1
                    summary.error_types[type(exc).__name__] += 1
                    continue
                except InputError as exc:
                    dead_letter(row, "InputError", str(exc), retryable=False)
                    continue
                summary.add(v)
                if v.status == "ok":
                    writer.write(v.model_dump_json())
                else:
                    dead_letter(
                        row,
                        v.error.type if v.error else "ModelOutputError",
                        v.error.message if v.error else "invalid output",
                        raw=v.error.raw_output if v.error else None,
                        attempts=v.attempts,
                    )
                summary.elapsed_s = time.perf_counter() - start
                summary.throttled = limited.throttles
                if on_progress is not None:
                    on_progress(summary, total)

        workers_n = self.concurrency
        try:
            await asyncio.gather(produce(), *(work() for _ in range(workers_n)))
        finally:
            writer.close()
            dead.close()
            mod._backend = backend
            summary.elapsed_s = time.perf_counter() - start
            summary.throttled = limited.throttles
        if fatal:
            raise fatal[0]
        return summary
