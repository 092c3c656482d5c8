"""Ray Data scale-out: a ``ray.data.Dataset`` of items in, a dataset of verdict rows out.

:func:`moderate_dataset` maps the items through a pool of Ray actors
(``map_batches(..., compute=ActorPoolStrategy(...))``); each actor holds one
:class:`~cotmod.AsyncModerator`, built in the actor from a picklable recipe (policies + settings,
or your factory). The actor's ``__call__`` is async, so Ray Data runs several batches of one actor
concurrently on the actor's event loop, and the moderator's own limit (``concurrency``) bounds the
model requests in flight per actor over all of them: ``actors x concurrency`` requests at most.
Ray runs one task per actor at a time unless told otherwise; the pool lets each actor run enough
tasks at once to keep its ``concurrency`` requests busy (:func:`calls_per_actor`).

Every item becomes exactly one row (:func:`verdict_schema`): a failure of one item (bad row,
invalid model output, a transport failure, even an unreachable endpoint) is an error verdict row
(``status == "error"``, ``error_type``, ``error_message``), never a failed job.

:func:`moderate_to` adds what a job needs: it reads the ids already in the output (a directory of
Parquet or JSONL files), moderates only the other items, and appends new files. Re-running after
a crash or a stop skips what was written. It refuses an output written with another prompt
configuration (the prompt fingerprint differs) unless ``overwrite=True``.

Rows are flat so Parquet and JSONL hold them: ``item_id``, ``status``, ``violates``, ``action``,
``escalate``, ``error_type``, ``error_message``, ``model``, ``prompt_fingerprint``,
``latency_ms``, ``prompt_tokens``, ``completion_tokens``, ``cache_hits``, ``created_at``, then per
policy ``<policy>__violates``, ``__action``, ``__score``, ``__severity``, ``__escalate``,
``__band``, ``__rule_ids`` (a list of strings), and ``verdict_json``: the full
:class:`~cotmod.Verdict` as JSON (``Verdict.model_validate_json`` reads it back).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import decimal
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._config import Settings
from .._exceptions import ConfigError, RateLimitedError
from .._verdict import ErrorInfo, Verdict
from .._version import __version__
from ..engine._cache import Cache, SqliteCache
from ..engine._moderator import AsyncModerator, Item, _model_label
from ..policy._model import Policy, PolicySet

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "ModerateBatch",
    "ModeratorSpec",
    "RayRunSummary",
    "moderate_dataset",
    "moderate_to",
    "read_done_ids",
    "verdict_row",
    "verdict_schema",
]

Format = Literal["parquet", "jsonl"]

#: a 429 that outlasts the transport's retries: the item is tried again this often, with backoff
RATE_LIMIT_REQUEUES = 6
#: columns every verdict row has, before the per-policy columns
BASE_COLUMNS = (
    "item_id",
    "status",
    "violates",
    "action",
    "escalate",
    "error_type",
    "error_message",
    "model",
    "prompt_fingerprint",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "cache_hits",
    "created_at",
)
POLICY_FIELDS = ("violates", "action", "score", "severity", "escalate", "band", "rule_ids")


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(
            "cotmod.integrations.ray needs Ray Data: pip install 'cotmod[ray]'"
        ) from None
    return ray


def _pa() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise ConfigError("cotmod.integrations.ray needs pyarrow: pip install 'cotmod[ray]'") from None
    return pyarrow


# -- the moderator each actor builds -------------------------------------------------------------
@dataclass(frozen=True)
class ModeratorSpec:
    """How each actor builds its :class:`~cotmod.AsyncModerator` (pickled to the actors).

    ``factory``: a picklable zero-argument callable returning the moderator (for a custom
    backend); otherwise ``AsyncModerator(policies, settings=settings)``. ``cache``: a SQLite
    result-cache file opened by each actor on its own node (actors of one node share it; on a
    cluster each node has its own unless the path is on storage every node sees). ``concurrency``:
    model requests in flight per actor (default: the moderator's, i.e. ``settings.concurrency``).
    """

    policies: PolicySet | str | None = None
    settings: Settings | None = None
    factory: Callable[[], AsyncModerator] | None = None
    cache: str | None = None
    concurrency: int | None = None

    def build(self) -> AsyncModerator:
        if self.factory is not None:
            mod = self.factory()
            if not isinstance(mod, AsyncModerator):
                raise ConfigError(f"moderator factory returned {type(mod).__name__}, not an AsyncModerator")
            if self.cache is not None and mod.cache is None:
                mod.cache = SqliteCache(self.cache)
        else:
            cache: Cache | None = SqliteCache(self.cache) if self.cache is not None else None
            mod = AsyncModerator(self.policies, settings=self.settings, cache=cache)
        if self.concurrency is not None:
            mod.concurrency = self.concurrency
        return mod


def _spec(
    policies: PolicySet | Iterable[Policy] | str | Path | None,
    settings: Settings | None,
    moderator_factory: Callable[[], AsyncModerator] | None,
    cache: str | Path | None,
    concurrency: int | None,
) -> ModeratorSpec:
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
    if moderator_factory is not None and (policies is not None or settings is not None):
        raise ConfigError("give either moderator_factory or policies/settings, not both")
    pol: PolicySet | str | None
    if policies is None or isinstance(policies, PolicySet):
        pol = policies
    elif isinstance(policies, (str, Path)):
        pol = str(policies)
    else:
        pol = PolicySet(policies)
    return ModeratorSpec(pol, settings, moderator_factory, str(cache) if cache is not None else None, concurrency)


# -- verdict rows ----------------------------------------------------------------------------------
def verdict_schema(policy_ids: Sequence[str]) -> pa.Schema:
    """The Arrow schema of the verdict rows for ``policy_ids`` (see the module docstring)."""
    pa = _pa()
    fields = [
        ("item_id", pa.string()),
        ("status", pa.string()),
        ("violates", pa.bool_()),
        ("action", pa.string()),
        ("escalate", pa.bool_()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("model", pa.string()),
        ("prompt_fingerprint", pa.string()),
        ("latency_ms", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cache_hits", pa.int64()),
        ("created_at", pa.string()),
    ]
    types = {
        "violates": pa.bool_(),
        "action": pa.string(),
        "score": pa.float64(),
        "severity": pa.string(),
        "escalate": pa.bool_(),
        "band": pa.string(),
        "rule_ids": pa.list_(pa.string()),
    }
    for pid in policy_ids:
        fields.extend((f"{pid}__{name}", types[name]) for name in POLICY_FIELDS)
    fields.append(("verdict_json", pa.string()))
    return pa.schema(fields)


def verdict_row(v: Verdict, policy_ids: Sequence[str]) -> dict[str, Any]:
    """One verdict as a flat row of :func:`verdict_schema` (per-policy fields are null for a
    policy without a decision, e.g. in an error verdict)."""
    row: dict[str, Any] = {
        "item_id": v.item_id,
        "status": v.status,
        "violates": v.violates,
        "action": v.action,
        "escalate": v.escalate,
        "error_type": v.error.type if v.error else None,
        "error_message": v.error.message if v.error else None,
        "model": v.model,
        "prompt_fingerprint": v.prompt_fingerprint,
        "latency_ms": v.latency_ms,
        "prompt_tokens": v.usage.prompt_tokens,
        "completion_tokens": v.usage.completion_tokens,
        "cache_hits": v.cache_hits,
        "created_at": v.created_at,
    }
    by_policy = {d.policy_id: d for d in v.decisions}
    for pid in policy_ids:
        d = by_policy.get(pid)
        row[f"{pid}__violates"] = d.violates if d else None
        row[f"{pid}__action"] = d.action if d else None
        row[f"{pid}__score"] = d.score if d else None
        row[f"{pid}__severity"] = d.severity if d else None
        row[f"{pid}__escalate"] = d.escalate if d else None
        row[f"{pid}__band"] = d.band if d else None
        row[f"{pid}__rule_ids"] = list(d.rule_ids) if d else None
    row["verdict_json"] = v.model_dump_json()
    return row


def _plain(value: Any) -> Any:
    """A column value as JSON-ready data (Arrow hands over dates, decimals, bytes...)."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(x) for x in value]
    if hasattr(value, "item") and callable(value.item):  # a numpy scalar
        return _plain(value.item())
    return value


# -- the actor -------------------------------------------------------------------------------------
class ModerateBatch:
    """The Ray Data callable class: one :class:`~cotmod.AsyncModerator` per actor; each batch
    (a ``pyarrow.Table`` of items) becomes a table of verdict rows, one per item not skipped."""

    def __init__(
        self,
        spec: ModeratorSpec,
        policy_ids: Sequence[str],
        id_column: str = "id",
        text_column: str = "text",
        metadata_columns: Sequence[str] | None = None,
        skip_ids: Any = None,
    ) -> None:
        self.moderator = spec.build()
        self.policy_ids = list(policy_ids)
        self.id_column = id_column
        self.text_column = text_column
        self.metadata_columns = list(metadata_columns) if metadata_columns is not None else None
        self.skip_ids = skip_ids  # a pyarrow string array (compact; one copy per actor) or None
        self.schema = verdict_schema(self.policy_ids)
        self.fingerprint = self.moderator.fingerprint(self.policy_ids)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        pa = _pa()
        import pyarrow.compute as pc

        if self.skip_ids is not None and len(self.skip_ids) and self.id_column in batch.column_names:
            ids = pc.cast(batch.column(self.id_column), pa.string(), safe=False)
            batch = batch.filter(pc.invert(pc.fill_null(pc.is_in(ids, value_set=self.skip_ids), False)))
        rows = batch.to_pylist()
        verdicts = await asyncio.gather(*(self._one(row) for row in rows))
        return pa.Table.from_pylist([verdict_row(v, self.policy_ids) for v in verdicts], schema=self.schema)

    def _item(self, row: Mapping[str, Any]) -> tuple[str, Item | str, dict[str, Any]]:
        """(id, item or the problem with the row, metadata) for one input row."""
        raw_id = row.get(self.id_column)
        rid = "" if raw_id is None else str(_plain(raw_id))
        names = self.metadata_columns if self.metadata_columns is not None else [
            k for k in row if k not in (self.id_column, self.text_column)
        ]
        meta = {k: _plain(row.get(k)) for k in names}
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return rid, f"metadata is not JSON-serialisable ({exc})", {}
        if self.id_column not in row:
            return rid, f"no {self.id_column!r} column", meta
        if raw_id is None or rid == "":
            return rid, f"the {self.id_column!r} is empty", meta
        text = row.get(self.text_column, None)
        if self.text_column not in row:
            return rid, f"no {self.text_column!r} column", meta
        if not isinstance(text, str):
            what = "null" if text is None else type(text).__name__
            return rid, f"{self.text_column!r} must be a string, got {what}", meta
        return rid, Item(text, rid, meta), meta

    async def _one(self, row: Mapping[str, Any]) -> Verdict:
        mod = self.moderator
        rid, item, meta = self._item(row)
        if isinstance(item, str):
            return self._error(rid, "InputError", f"item {rid!r}: {item}", meta)
        for requeue in range(RATE_LIMIT_REQUEUES + 1):
            try:
                return await mod.moderate(item, self.policy_ids)
            except RateLimitedError as exc:
                if requeue == RATE_LIMIT_REQUEUES:
                    return self._error(rid, type(exc).__name__, str(exc), meta)
                await asyncio.sleep(min(30.0, 0.5 * 2**requeue) * (1 + random.random()))
            except Exception as exc:  # one item's failure is its error verdict, never the job's
                return self._error(rid, type(exc).__name__, str(exc) or repr(exc), meta)
        raise AssertionError("unreachable")

    def _error(self, item_id: str, etype: str, message: str, meta: Mapping[str, Any]) -> Verdict:
        mod = self.moderator
        return Verdict(
            item_id=item_id,
            status="error",
            violates=None,
            action=None,
            escalate=None,
            policy_versions={pid: mod.policies[pid].version for pid in self.policy_ids},
            prompt_fingerprint=self.fingerprint,
            model=_model_label(None, mod.model_name),
            error=ErrorInfo(type=etype, message=message[:2000]),
            metadata=dict(meta),
            cotmod_version=__version__,
        )


def _policy_ids(spec: ModeratorSpec, policies: Sequence[str] | None) -> tuple[list[str], str, int]:
    """The policies to judge, their prompt fingerprint and the per-actor request limit (from a
    moderator built on the driver, which opens no connection)."""
    mod = spec.build()
    ids = list(mod.policies.select(list(policies)).ids) if policies else list(mod.policies.ids)
    return ids, mod.fingerprint(ids), mod.concurrency


def calls_per_actor(concurrency: int, batch_size: int) -> int:
    """Ray Data tasks run at once on one actor: enough batches in flight to keep ``concurrency``
    model requests busy (twice what it takes, so the next batch is ready when one finishes),
    at least 2, at most 64. Ray runs one task per actor at a time by default, so without this
    an actor whose input blocks are small would have a single small batch in flight."""
    return max(2, min(64, 2 * math.ceil(concurrency / batch_size)))


def _actor_pool(actors: int | tuple[int, int], calls: int) -> Any:
    ray = _ray()
    extra = {"max_concurrent_calls_per_actor": calls, "max_tasks_in_flight_per_actor": calls}
    if isinstance(actors, int):
        if actors < 1:
            raise ConfigError(f"actors must be >= 1, got {actors}")
        return ray.data.ActorPoolStrategy(size=actors, **extra)
    lo, hi = actors
    if lo < 1 or hi < lo:
        raise ConfigError(f"actors must be (min, max) with 1 <= min <= max, got {actors}")
    return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi, **extra)


def moderate_dataset(
    ds: Any,
    *,
    policies: PolicySet | Iterable[Policy] | str | Path | None = None,
    settings: Settings | None = None,
    moderator_factory: Callable[[], AsyncModerator] | None = None,
    select: Sequence[str] | None = None,
    id_column: str = "id",
    text_column: str = "text",
    metadata_columns: Sequence[str] | None = None,
    actors: int | tuple[int, int] = 2,
    concurrency: int | None = None,
    batch_size: int = 16,
    num_cpus: float = 0.25,
    cache: str | Path | None = None,
    skip_ids: Iterable[str] | None = None,
) -> Any:
    """Moderate a ``ray.data.Dataset`` of items into a (lazy) dataset of verdict rows.

    Items: ``id_column`` and ``text_column``; the other columns (or ``metadata_columns``) are the
    item's metadata, copied into the verdict (a cascade reads its classifier scores from there).
    The moderator: ``policies`` + ``settings`` (both picklable; the policies default to
    ``settings.guidelines`` or the starter pack) or a picklable ``moderator_factory``;
    ``select``: the policy ids to judge (default: all). ``actors``: a fixed pool size or
    ``(min, max)`` to autoscale; ``concurrency``: model requests in flight per actor (default
    ``settings.concurrency``). ``num_cpus`` per actor: the work is I/O-bound, and a pool that
    reserves every CPU starves the tasks that read the input (the job then hangs), so keep
    ``actors x num_cpus`` below the cluster's CPUs. ``cache``: a SQLite result-cache file per
    node. ``skip_ids``: ids to leave out (what :func:`moderate_to` uses to resume).

    Returns the dataset of rows of :func:`verdict_schema`; nothing runs until you consume or
    write it. Each item gives one row; a failed item gives an error row, never a failed job.
    """
    _ray()
    pa = _pa()
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not num_cpus >= 0:
        raise ConfigError(f"num_cpus must be >= 0, got {num_cpus}")
    spec = _spec(policies, settings, moderator_factory, cache, concurrency)
    ids, _, limit = _policy_ids(spec, select)
    skip = pa.array(sorted(set(skip_ids)), type=pa.string()) if skip_ids is not None else None
    return ds.map_batches(
        ModerateBatch,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=_actor_pool(actors, calls_per_actor(limit, batch_size)),
        num_cpus=num_cpus,
        fn_constructor_kwargs={
            "spec": spec,
            "policy_ids": ids,
            "id_column": id_column,
            "text_column": text_column,
            "metadata_columns": list(metadata_columns) if metadata_columns is not None else None,
            "skip_ids": skip,
        },
    )


# -- output: resume and write -----------------------------------------------------------------------
def _fs(output: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in output:
        fs, root = pafs.FileSystem.from_uri(output)
        return fs, str(root)
    return pafs.LocalFileSystem(), os.path.abspath(output)


def _data_files(fs: Any, root: str, fmt: Format) -> list[str]:
    import pyarrow.fs as pafs

    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"{root}: the output must be a directory (Ray writes one file per block)")
    exts = (".parquet",) if fmt == "parquet" else (".json", ".jsonl")
    files = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(
        f.path for f in files
        if f.type == pafs.FileType.File and f.path.endswith(exts) and not Path(f.path).name.startswith((".", "_"))
    )


@dataclass
class _Existing:
    """What an output directory holds: per id, whether one of its rows is ok, and the counts."""

    ok_ids: set[str] = field(default_factory=set)
    error_ids: set[str] = field(default_factory=set)
    fingerprints: set[str] = field(default_factory=set)
    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    error_types: Counter[str] = field(default_factory=Counter)


def _read_existing(output: str, fmt: Format) -> _Existing:
    fs, root = _fs(output)
    out = _Existing()
    for path in _data_files(fs, root, fmt):
        for item_id, status, fingerprint, etype in _read_rows(fs, path, fmt):
            out.rows += 1
            out.statuses[status] += 1
            out.fingerprints.add(fingerprint)
            if status == "ok":
                out.ok_ids.add(item_id)
            else:
                out.error_ids.add(item_id)
                out.error_types[etype or "error"] += 1
    return out


def _read_rows(fs: Any, path: str, fmt: Format) -> Iterable[tuple[str, str, str, str | None]]:
    cols = ["item_id", "status", "prompt_fingerprint", "error_type"]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            with fs.open_input_file(path) as f:
                table = pq.read_table(f, columns=cols)
        except Exception as exc:
            raise ConfigError(
                f"{path}: cannot read this verdict file ({exc}); move it out of the output directory "
                "(its items are then moderated again)"
            ) from None
        yield from zip(*(table.column(c).to_pylist() for c in cols), strict=True)
        return
    with fs.open_input_stream(path) as f:
        lines = f.read().decode("utf-8", "surrogateescape").split("\n")
    last = len(lines) - 1
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            yield str(obj["item_id"]), str(obj["status"]), str(obj["prompt_fingerprint"]), obj.get("error_type")
        except (ValueError, KeyError, TypeError) as exc:
            if n - 1 == last:
                continue  # a torn last line (a write cut off): its item is moderated again
            raise ConfigError(f"{path}:{n}: not a verdict row ({exc})") from None


def read_done_ids(output: str | Path, format: Format = "parquet", *, retry_errors: bool = False) -> set[str]:
    """The ids an output directory already holds a verdict row for (with ``retry_errors``: only
    those with an ``ok`` row, so items that got only error rows are moderated again)."""
    ex = _read_existing(str(output), _check_format(format))
    return set(ex.ok_ids) if retry_errors else ex.ok_ids | ex.error_ids


def _check_format(fmt: str) -> Format:
    if fmt == "parquet":
        return "parquet"
    if fmt in ("jsonl", "json"):
        return "jsonl"
    raise ConfigError(f"format must be 'parquet' or 'jsonl', got {fmt!r}")


@dataclass
class RayRunSummary:
    """What :func:`moderate_to` did. ``written``: verdict rows this run added (``ok`` +
    ``errors``); ``previously_done``: ids the output held before (skipped);
    ``error_types``: this run's error rows by type. ``total_rows``: rows in the output now."""

    output: str
    format: Format
    written: int = 0
    ok: int = 0
    errors: int = 0
    previously_done: int = 0
    total_rows: int = 0
    error_types: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def items_per_s(self) -> float | None:
        return round(self.written / self.elapsed_s, 3) if self.elapsed_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "format": self.format,
            "written": self.written,
            "ok": self.ok,
            "errors": self.errors,
            "previously_done": self.previously_done,
            "total_rows": self.total_rows,
            "error_types": dict(self.error_types),
            "elapsed_s": round(self.elapsed_s, 3),
            "items_per_s": self.items_per_s,
        }


def moderate_to(
    ds: Any,
    output: str | Path,
    *,
    format: Format = "parquet",
    retry_errors: bool = False,
    overwrite: bool = False,
    policies: PolicySet | Iterable[Policy] | str | Path | None = None,
    settings: Settings | None = None,
    moderator_factory: Callable[[], AsyncModerator] | None = None,
    select: Sequence[str] | None = None,
    id_column: str = "id",
    text_column: str = "text",
    metadata_columns: Sequence[str] | None = None,
    actors: int | tuple[int, int] = 2,
    concurrency: int | None = None,
    batch_size: int = 16,
    num_cpus: float = 0.25,
    cache: str | Path | None = None,
) -> RayRunSummary:
    """Moderate ``ds`` into the directory ``output`` (Parquet, or JSONL: ``*.json`` files of JSON
    lines), resumably; returns a :class:`RayRunSummary`. Blocks until the job is done.

    Ids already in the output are skipped (with ``retry_errors``: only ids with an ``ok`` row;
    the old error rows stay, so an id may then have an error row and a later row: take its
    ``ok`` row). New rows go into new files; nothing written is rewritten. An output holding rows
    of another prompt configuration (policies, versions, templates or prompt settings: the prompt
    fingerprint) is refused unless ``overwrite=True``, which replaces the output. Input ids must be
    unique (a repeated id gets one row per occurrence). The other arguments are those of
    :func:`moderate_dataset`.
    """
    ray = _ray()
    fmt = _check_format(format)
    out = str(output)
    spec = _spec(policies, settings, moderator_factory, cache, concurrency)
    ids, fingerprint, _ = _policy_ids(spec, select)
    start = time.perf_counter()
    before = _Existing() if overwrite else _read_existing(out, fmt)
    other = sorted(before.fingerprints - {fingerprint})
    if other:
        raise ConfigError(
            f"{out} holds verdicts of another prompt configuration (fingerprint {other[0]} vs "
            f"{fingerprint}); refusing to mix verdicts. Write to another output, or pass overwrite=True"
        )
    done = before.ok_ids if retry_errors else before.ok_ids | before.error_ids
    verdicts = moderate_dataset(
        ds,
        moderator_factory=spec.factory,
        policies=spec.policies if spec.factory is None else None,
        settings=spec.settings if spec.factory is None else None,
        select=ids,
        id_column=id_column,
        text_column=text_column,
        metadata_columns=metadata_columns,
        actors=actors,
        concurrency=concurrency,
        batch_size=batch_size,
        num_cpus=num_cpus,
        cache=cache,
        skip_ids=done,
    )
    mode = ray.data.SaveMode.OVERWRITE if overwrite else ray.data.SaveMode.APPEND
    if fmt == "parquet":
        verdicts.write_parquet(out, mode=mode)
    else:
        verdicts.write_json(out, mode=mode, force_ascii=False)
    after = _read_existing(out, fmt)
    summary = RayRunSummary(output=out, format=fmt, previously_done=len(done), total_rows=after.rows)
    summary.written = after.rows - before.rows
    summary.ok = after.statuses["ok"] - before.statuses["ok"]
    summary.errors = summary.written - summary.ok
    summary.error_types = {k: n for k, n in (after.error_types - before.error_types).items() if n > 0}
    summary.elapsed_s = time.perf_counter() - start
    return summary
