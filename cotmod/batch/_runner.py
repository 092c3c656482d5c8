"""The batch runner: stream items through the engine into a verdict file, resumably.

The items come from a file (JSONL, CSV, Parquet or text, ``.gz`` too; see :mod:`._reader`) or from
any iterable or async iterable of :class:`~cotmod.Item`, ``{"id", "text"[, metadata...]}`` dicts or
strings (for services and Ray).

Guarantees
----------
* **Exactly one verdict per input id**, however often the run is killed (Ctrl-C, ``kill -9``)
  and restarted: the output is append-only JSONL, each verdict written with one ``write`` call;
  on restart a torn final line is repaired and ids already present (or already dead-lettered)
  are skipped. Any other unreadable line of the output stops the run (``FILE:LINE: ...``) and
  nothing is deleted.
* **Nothing silently dropped**: unreadable rows (with their line number), rows whose text or id
  is not valid Unicode (a lone surrogate), duplicate ids, empty texts, invalid model output and
  transport failures of single items go to ``<output>.errors.jsonl`` with the error type,
  message, raw output and attempts, and the run goes on; ``retry_errors`` reprocesses exactly
  those (a bad row is read again from the input, so a row fixed since then is decided; a
  duplicate id is not redone). Only failures that would hit every item (authentication, an unreachable endpoint, an
  open circuit breaker, a missing local model) stop the run; everything written is kept.
* **No mixed verdicts**: ``<output>.manifest.json`` records the policies, prompt fingerprint,
  model and sampling; a run whose configuration differs refuses to append to that output (also
  when the output holds only dead letters).
* **Flat memory**: the input is streamed through a bounded queue; only 8-byte digests of seen
  ids are kept.

Id rule: a row without an id gets ``line-N`` (its 1-based line or row number, or position in an
iterable). A duplicate id is dead-lettered (the first occurrence wins).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeAlias

from .._exceptions import (
    AuthenticationError,
    CircuitOpenError,
    ConfigError,
    EndpointUnreachableError,
    InputError,
    ModelNotAvailableError,
    RateLimitedError,
    RequestTimeoutError,
    TransportError,
)
from .._verdict import Verdict
from .._version import __version__
from ..backends._limits import LimitedBackend
from ..backends._pricing import price_for
from ..engine._cascade import score_fields
from ..engine._moderator import AsyncModerator, Item
from ._reader import Row, _bad_text, count_rows, detect_format, read_items, row_from_record
from ._store import (
    Appender,
    IdSet,
    OutputLock,
    digest,
    errors_path,
    manifest_path,
    os_error,
    read_dead_letters,
    read_manifest,
    repair_jsonl,
    write_json_atomic,
)

__all__ = [
    "IdSet",
    "ItemSource",
    "LimitedBackend",
    "Row",
    "RunSummary",
    "Runner",
    "count_rows",
    "detect_format",
    "is_fatal",
    "read_items",
    "repair_jsonl",
]

# old private names, kept for code that imports them from here
_digest = digest
_Appender = Appender

LATENCY_SAMPLE = 10_000
_RNG = random.Random(0)
RATE_LIMIT_REQUEUES = 6
#: manifest keys written only when their setting is on: a run resumed with it off differs too
_OPTIONAL_MANIFEST_KEYS = ("cascade", "triage_blend")

ItemLike: TypeAlias = "Item | Mapping[str, Any] | str"
#: What :meth:`Runner.run` reads items from: a file path, or an (async) iterable of items.
ItemSource: TypeAlias = "str | os.PathLike[str] | Iterable[ItemLike] | AsyncIterable[ItemLike]"


def is_fatal(exc: BaseException) -> bool:
    """Errors that would hit every item: they stop a run (what was written is kept). Any other
    transport failure concerns one item, which is dead-lettered (retryable)."""
    if isinstance(exc, RequestTimeoutError):
        return False  # one slow item; a dead endpoint opens the circuit breaker instead
    return isinstance(exc, (AuthenticationError, EndpointUnreachableError, CircuitOpenError, ModelNotAvailableError, ConfigError))


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@dataclass
class RunSummary:
    """What a run did. ``to_dict()`` is what ``cotmod run --json`` prints.

    ``undecided`` is the number of input items without a verdict when the run ended: those
    dead-lettered by this run (``dead_lettered``: bad rows, error verdicts, transport failures,
    and duplicate ids, which are counted there but not as undecided since their id has a verdict:
    ``duplicate_ids``) plus those dead-lettered by an earlier run and not retried
    (``previously_dead_lettered``) plus, for a file input, the items a ``limit`` left unread
    (``not_run``: a rerun resumes them; an iterable source is not read past the limit, so its
    items left are not counted). ``cotmod run`` exits 1 when it is not 0.
    """

    output: str
    input_rows: int = 0
    processed: int = 0
    resumed_skipped: int = 0
    errors: int = 0
    dead_lettered: int = 0
    duplicate_ids: int = 0
    previously_dead_lettered: int = 0
    not_run: int = 0
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
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # a uniform reservoir sample
    latencies_seen: int = field(default=0, repr=False)
    price_in: float | None = None
    price_out: float | None = None

    @property
    def undecided(self) -> int:
        return self.dead_lettered - self.duplicate_ids + self.previously_dead_lettered + self.not_run

    @property
    def cost_usd(self) -> float | None:
        if self.price_in is None or self.price_out is None:
            return None
        return round((self.prompt_tokens * self.price_in + self.completion_tokens * self.price_out) / 1e6, 6)

    @property
    def items_per_s(self) -> float | None:
        return round(self.processed / self.elapsed_s, 3) if self.elapsed_s > 0 else None

    def latency_percentile(self, q: float) -> float | None:
        """Latency (ms) at quantile ``q`` of the model-call items (exact up to 10k items, then sampled)."""
        return _percentile(sorted(self.latencies_ms), q)

    def add(self, v: Verdict) -> None:
        self.processed += 1
        self.prompt_tokens += v.usage.prompt_tokens
        self.completion_tokens += v.usage.completion_tokens
        self.transport_retries += v.transport_retries
        self.reasks += v.reasks
        self.cache_hits += v.cache_hits
        self.model_calls += v.attempts
        if v.attempts > 0 or v.status == "error":  # a model call was made (not all from the cache)
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
        self.latencies_seen += 1
        if len(self.latencies_ms) < LATENCY_SAMPLE:
            self.latencies_ms.append(ms)
        else:
            j = _RNG.randrange(self.latencies_seen)
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
            "duplicate_ids": self.duplicate_ids,
            "previously_dead_lettered": self.previously_dead_lettered,
            "not_run": self.not_run,
            "undecided": self.undecided,
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
            "items_per_s": self.items_per_s,
            "by_decision": dict(self.by_decision),
            "by_action": dict(self.by_action),
            "by_policy": {k: dict(v) for k, v in self.by_policy.items()},
            "error_types": dict(self.error_types),
        }


def _row_from_obj(n: int, obj: Any, id_field: str, text_field: str, policies_field: str | None) -> Row:
    """One item of an iterable source as a :class:`Row` (``line`` is its 1-based position)."""
    if isinstance(obj, Item):
        rid = obj.id or f"line-{n}"
        if _bad_text(rid):
            return Row(n, f"line-{n}", None, f"the id {rid!a}: {_bad_text(rid)}")
        rec: dict[str, Any] = {"id": rid, "text": obj.text}
        return row_from_record(n, rec, metadata=obj.metadata)
    if isinstance(obj, str):
        return row_from_record(n, {"text": obj})
    if isinstance(obj, Mapping):
        meta = {k: v for k, v in obj.items() if k not in (id_field, text_field, policies_field)}
        return row_from_record(n, obj, id_field=id_field, text_field=text_field, policies_field=policies_field, metadata=meta)
    return Row(n, f"line-{n}", None, f"expected an Item, a mapping with {text_field!r} or a str, got {type(obj).__name__}")


async def _iter_rows(
    source: ItemSource,
    *,
    id_field: str,
    text_field: str,
    fmt: str | None,
    policies_field: str | None,
    metadata_fields: Sequence[str] = (),
) -> AsyncIterator[Row]:
    if isinstance(source, (str, os.PathLike)):
        rows = read_items(
            Path(source), id_field=id_field, text_field=text_field, fmt=fmt, policies_field=policies_field,
            metadata_fields=metadata_fields,
        )
        for i, row in enumerate(rows):
            yield row
            if i % 256 == 255:
                await asyncio.sleep(0)
    elif isinstance(source, AsyncIterable):
        n = 0
        async for obj in source:
            n += 1
            yield _row_from_obj(n, obj, id_field, text_field, policies_field)
    else:
        for n, obj in enumerate(source, start=1):
            yield _row_from_obj(n, obj, id_field, text_field, policies_field)
            if n % 256 == 0:
                await asyncio.sleep(0)


def _finite(name: str, value: float | None, *, positive: bool = True) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return value


class Runner:
    """Runs an :class:`AsyncModerator` over a file or an iterable of items into a verdict file.
    ``run`` is async; ``run_sync`` blocks."""

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
        if not isinstance(moderator, AsyncModerator):
            hint = " (use Runner(AsyncModerator(...)); Moderator is the sync twin)" if type(moderator).__name__ == "Moderator" else ""
            raise TypeError(f"Runner needs an AsyncModerator, got {type(moderator).__name__}{hint}")
        self.moderator = moderator
        self.concurrency = moderator.settings.concurrency if concurrency is None else concurrency
        if self.concurrency < 1:
            raise ConfigError("concurrency must be >= 1")
        self.rpm = _finite("rpm", rpm)
        self.tpm = _finite("tpm", tpm)
        self.price_in = _finite("price_in", price_in, positive=False)
        self.price_out = _finite("price_out", price_out, positive=False)

    # -- paths -----------------------------------------------------------------------------------
    @staticmethod
    def errors_path(output: Path) -> Path:
        return errors_path(output)

    @staticmethod
    def manifest_path(output: Path) -> Path:
        return manifest_path(output)

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
            **({"cascade": {pid: b.model_dump() for pid, b in m.cascade.items()}} if m.cascade else {}),
            # only when set, so that runs written before it existed resume as they were
            **({"triage_blend": m.settings.triage_blend} if m.settings.triage_blend else {}),
        }

    @staticmethod
    def _has_content(path: Path) -> bool:
        return path.exists() and path.stat().st_size > 0

    def check_resumable(self, output: str | Path, policies: list[str] | None = None) -> None:
        """Raise :class:`ConfigError` when ``output`` holds verdicts this runner may not append
        to (written by another configuration, or not by cotmod); reads only. What :meth:`run`
        checks first, for callers that write files of their own beside the output before the run
        (``cotmod eval``): a refused run then leaves them untouched."""
        self._check_manifest(Path(output), self.manifest(policies), overwrite=False)

    def _check_manifest(self, output: Path, manifest: dict[str, Any], overwrite: bool) -> None:
        """Refuse to append to an output written with another configuration (checked whenever the
        output or its errors file holds anything), then record this run's configuration."""
        mpath = self.manifest_path(output)
        if overwrite:
            for p in (output, self.errors_path(output), mpath):
                try:
                    p.unlink(missing_ok=True)
                except OSError as exc:
                    raise os_error(p, exc, "remove") from None
        written = self._has_content(output) or self._has_content(self.errors_path(output))
        old = read_manifest(mpath, output)
        if written:
            if old is None:
                raise ConfigError(
                    f"{output} exists but was not written by cotmod run (no {mpath.name}); "
                    "choose another output or pass --overwrite"
                )
            # an optional key the old run had and this one lacks (a cascade or a blend switched off) differs too
            diffs = [k for k in manifest if old.get(k) != manifest[k]] + [
                k for k in _OPTIONAL_MANIFEST_KEYS if k in old and k not in manifest
            ]
            if diffs:
                raise ConfigError(
                    f"{output} holds verdicts from a different configuration ({', '.join(diffs)} differ: "
                    f"{old.get(diffs[0])!r} vs {manifest.get(diffs[0])!r}); refusing to mix verdicts. "
                    "Write to another output, or pass --overwrite to start over"
                )

    def _write_manifest(self, output: Path, manifest: dict[str, Any]) -> None:
        body = {**manifest, "cotmod_version": __version__, "updated_at": datetime.now(timezone.utc).isoformat()}
        write_json_atomic(self.manifest_path(output), body)

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
        source: ItemSource,
        output_path: str | Path,
        *,
        policies: str | list[str] | None = None,
        id_field: str = "id",
        text_field: str = "text",
        fmt: str | None = None,
        retry_errors: bool = False,
        overwrite: bool = False,
        limit: int | None = None,
        on_progress: Callable[[RunSummary, int | None], None] | None = None,
        policies_field: str | None = None,
    ) -> RunSummary:
        """Moderate every item of ``source`` into ``output_path``; returns a :class:`RunSummary`.

        ``source`` is a file path (JSONL, CSV, Parquet or text; ``.gz`` too), or an iterable or
        async iterable of :class:`~cotmod.Item`, mappings (``id_field``/``text_field``, other keys
        become metadata; ``policies_field`` selects policies per item) or strings. Raises
        :class:`~cotmod.CotmodError` when a failure that would hit every item stops the run
        (what was written is kept: rerun to resume).
        """
        if isinstance(policies, str):
            policies = [policies]  # one policy id, not its characters
        out = Path(output_path)
        inp = Path(source) if isinstance(source, (str, os.PathLike)) else None
        if inp is not None:
            if not inp.is_file():
                raise ConfigError(f"input file not found: {inp}")
            detect_format(inp, fmt)  # fail fast on an unknown extension
            if inp.resolve() == out.resolve():
                raise ConfigError("the output must not be the input file")
        if out.is_dir():
            raise ConfigError(f"cannot write {out}: it is a directory; give a file name")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(out.parent, exc, "create the output directory") from None
        with OutputLock(out):  # a second run on this output refuses to start
            mod = self.moderator
            if policies:
                mod.policies.select(policies)
            manifest = self.manifest(policies)
            self._check_manifest(out, manifest, overwrite)
            errors_file = self.errors_path(out)

            done = repair_jsonl(out, unique=True)
            dead_letters = read_dead_letters(errors_file)
            retry_ids = IdSet()
            failed_before = IdSet()  # dead-lettered earlier, still without a verdict, not retried now
            kept_errors: list[str] = []
            for entry in dead_letters:
                d = digest(entry.id)
                if d in done:
                    # the id has a verdict (a repeated id, or a failure decided later): nothing to
                    # retry, but the record stays (a resume never deletes what was written)
                    kept_errors.append(entry.raw)
                    continue
                if retry_errors and (entry.retryable or entry.input_error):
                    # a bad input row is read again: the user may have fixed it since
                    retry_ids.add(d)
                else:
                    kept_errors.append(entry.raw)
                    failed_before.add(d)
                    if not retry_errors:
                        done.add(d)
            self._write_manifest(out, manifest)
            if retry_errors and len(dead_letters) != len(kept_errors):
                # rewrite the dead-letter file with only what is not being retried
                tmp = errors_file.with_name(errors_file.name + ".tmp")
                try:
                    tmp.write_text("".join(line + "\n" for line in kept_errors), encoding="utf-8")
                    os.replace(tmp, errors_file)
                except OSError as exc:
                    tmp.unlink(missing_ok=True)
                    raise os_error(errors_file, exc) from None
            summary = RunSummary(output=str(out))

            summary.price_in, summary.price_out = (
                (self.price_in, self.price_out) if self.price_in is not None and self.price_out is not None else price_for(mod.model_name)
            )
            total = count_rows(inp, fmt) if inp is not None else None
            where = str(inp) if inp is not None else "<items>"
            writer = Appender(out)
            try:
                dead = Appender(errors_file)
            except BaseException:
                writer.close()
                raise
            seen = IdSet()
            queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=self.concurrency * 4)
            fatal: list[BaseException] = []
            start = time.perf_counter()
            workers_n = self.concurrency

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
                        "input": where,
                        "at": datetime.now(timezone.utc).isoformat(),
                    }
                )
                summary.dead_lettered += 1
                if etype == "DuplicateId":
                    summary.duplicate_ids += 1

            def progress() -> None:
                summary.elapsed_s = time.perf_counter() - start
                summary.throttled = limited.throttles
                if on_progress is not None:
                    on_progress(summary, total)

            async def produce() -> None:
                count = 0
                limited = False  # the limit is reached: the rest of a file is only counted (not_run)
                try:
                    async for row in _iter_rows(
                        source, id_field=id_field, text_field=text_field, fmt=fmt, policies_field=policies_field,
                        metadata_fields=score_fields(mod.cascade) if mod.cascade else (),
                    ):
                        if fatal:
                            break
                        summary.input_rows += 1
                        d = digest(row.id)
                        if retry_errors:
                            # redo the dead letters being retried, and rows that have neither a verdict nor a
                            # dead letter (e.g. a bad row fixed under another id, or a row added to the input)
                            kept = d in failed_before and d not in retry_ids
                            if d in done or kept or (d in seen and d in failed_before):
                                if d not in seen:
                                    if d in done:
                                        summary.resumed_skipped += 1
                                    else:
                                        summary.previously_dead_lettered += 1
                                    seen.add(d)
                                continue
                        elif d in done:
                            # already decided or dead-lettered (a repeated id was dead-lettered then)
                            if d not in seen:
                                summary.resumed_skipped += 1
                                if d in failed_before:
                                    summary.previously_dead_lettered += 1
                                seen.add(d)
                            continue
                        if limited:
                            if d not in seen:
                                seen.add(d)
                                summary.not_run += 1
                            continue
                        if d in seen:
                            dead_letter(row, "DuplicateId", f"line {row.line}: duplicate id {row.id!r} (the first occurrence wins)", retryable=False)
                            progress()
                            continue
                        seen.add(d)
                        if row.problem is not None:
                            dead_letter(row, "BadRow", f"{where}:{row.line}: {row.problem}", retryable=False)
                            progress()
                            continue
                        await queue.put(row)
                        count += 1
                        if limit is not None and count >= limit:
                            if inp is None:
                                break  # an iterable may be endless, or consumed by reading it
                            limited = True
                except Exception as exc:  # an unreadable input file (not a row): stop, keep what was written
                    fatal.append(exc)
                # not in a finally: a cancelled run must not wait here for workers that are gone
                for _ in range(workers_n):
                    await queue.put(None)

            async def moderate_row(row: Row) -> Verdict:
                assert row.text is not None
                item = Item(row.text, row.id, row.metadata)
                for requeue in range(RATE_LIMIT_REQUEUES + 1):
                    try:
                        return await mod.moderate(item, row.policies or policies)
                    except RateLimitedError:
                        # the server keeps saying 429: back off (the limiter has already cut
                        # concurrency) and try the item again before giving up on it
                        if requeue == RATE_LIMIT_REQUEUES:
                            raise
                        await asyncio.sleep(min(30.0, 0.5 * 2**requeue) * (1 + random.random()))
                raise AssertionError("unreachable")

            async def work() -> None:
                while True:
                    row = await queue.get()
                    if row is None:
                        return
                    if fatal:
                        continue
                    try:
                        await handle(row)
                    except Exception as exc:  # e.g. the disk is full: stop, keep what was written
                        fatal.append(exc)

            async def handle(row: Row) -> None:
                """Moderate one row into a verdict or a dead letter; raises only what stops the run."""
                try:
                    v = await moderate_row(row)
                except TransportError as exc:
                    if is_fatal(exc):
                        fatal.append(exc)
                        return
                    # one item's failure after the transport's retries (5xx, an HTML or cut-off
                    # body, a timeout): dead-letter it (retryable) and go on
                    dead_letter(row, type(exc).__name__, str(exc), attempts=exc.attempts)
                    summary.errors += 1
                    summary.error_types[type(exc).__name__] += 1
                    progress()
                    return
                except InputError as exc:
                    dead_letter(row, "InputError", str(exc), retryable=False)
                    progress()
                    return
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
                progress()

            try:
                async with mod.wrapped_backend(
                    lambda b: LimitedBackend(b, concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm)
                ) as limited:
                    # the adaptive limiter bounds requests in flight; the engine's own bound must not be lower
                    old_concurrency = mod.concurrency
                    mod.concurrency = self.concurrency * max(1, len(mod.policy_groups(policies)))
                    try:
                        await asyncio.gather(produce(), *(work() for _ in range(workers_n)))
                    finally:
                        mod.concurrency = old_concurrency
                        summary.throttled = limited.throttles
            finally:
                writer.close()
                dead.close()
                summary.elapsed_s = time.perf_counter() - start
            if fatal:
                raise fatal[0]
            return summary
