"""The engine: policies + item -> compiled prompt -> model -> validated verdict.

:class:`AsyncModerator` does the work; :class:`Moderator` is its synchronous twin with the same
methods (it runs the async one on a private event-loop thread, so it also works inside a program
that already has a loop).

Re-asks (this layer) are separate from transport retries (:mod:`cotmod.backends._openai`): when the model's
output fails validation, the error is fed back to the model as a new user turn, at most
``max_reasks`` times. If the output is still invalid, the verdict has ``status="error"`` and keeps
the raw output; it is never counted as a decision. Usage of every attempt is summed.

Concurrency: at most :attr:`AsyncModerator.concurrency` model requests are in flight.
:meth:`AsyncModerator.moderate_many` returns verdicts in input order;
:meth:`AsyncModerator.moderate_stream` yields them as they finish.

Prefix warm-up (``warm_prefix=True``, the default, for every backend): requests are grouped by
prompt prefix (a policy group's static system and few-shot messages), and each group ramps up
like TCP slow start. The first request of a group goes alone; the others wait for its answer.
After that, a group may have at most one more request in flight than it has had answered
(``1 + answered``, up to :attr:`AsyncModerator.concurrency`), so its window grows by one per
answer and roughly doubles per round trip. A server with a prompt cache (llama.cpp, hosted APIs
with prefix caching) then computes the long shared prefix once, and a llama.cpp server, whose
slots each keep their own cache, has at most about one slot per group computing the prefix
while the warm slots answer: on a small machine, many slots prefilling a ~4k-token prefix at
once starved every request past the client timeout. When an answer needed transport retries
(or a request failed in transport), the server is overloaded: that group's window is halved.
Different policy groups ramp in parallel.

What it costs: a group reaches full concurrency only after about ``log2(concurrency)`` request
latencies, once per moderator (again after :meth:`AsyncModerator.aclose`, and after a halving);
a server with no cold-prefix problem (a large hosted API, a warm server) loses that much
throughput at the start of a run, which matters only for short runs.

Triage (``settings.triage``, opt-in): when more than one policy group is in play, one cheap call
first selects the policies plausibly at stake (:mod:`cotmod.prompting._triage`); only their groups
are called. It is cached, counted, limited and warmed like a group call (its prompt prefix ramps
like any other). The other policies get an ``allow`` decision marked ``triaged_out``; if triage
fails for the item (invalid output after the re-asks, or a transport failure of this call only),
every policy is judged and ``Verdict.triage.fallback`` says why. :meth:`AsyncModerator.triage`
makes that call alone for an item (evaluating a triage prompt without the per-policy calls).

Result cache: calls into a cache run on a dedicated thread, never on the event loop, unless the
cache declares ``blocking = False`` (:class:`~cotmod.engine.MemoryCache` does). One thread, so a
cache sees one call at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import threading
import time
import warnings
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .._config import Settings, default_guidelines_dir
from .._exceptions import (
    AuthenticationError,
    CircuitOpenError,
    ConfigError,
    CotmodWarning,
    EndpointUnreachableError,
    InputError,
    RateLimitedError,
    RequestTimeoutError,
    TransportError,
)
from .._verdict import ErrorInfo, PolicyDecision, Triage, Truncation, Usage, Verdict
from .._version import __version__
from ..backends._openai import Backend, ChatRequest, ChatResult, OpenAIBackend
from ..policy._lint import load_policies
from ..policy._model import Policy, PolicySet
from ..prompting._compiler import CompiledPrompt, Compiler, PromptTemplates
from ..prompting._decision import OutputInvalid, parse_decision, violates_probabilities
from ..prompting._logic import answer_distributions, violation_probability
from ..prompting._triage import (
    TRIAGE_SCHEMA_NAME,
    TriageCompiler,
    parse_triage,
    select_by_probability,
)
from ._cache import Cache, cache_key
from ._cascade import CascadeBand, Route, classifier_decision, item_score, load_cascade, route_for
from ._thresholds import apply_band, load_thresholds

__all__ = ["AsyncModerator", "GroupOutcome", "Item", "Moderator", "TriageOutcome"]

T = TypeVar("T")
B = TypeVar("B", bound=Backend)


@dataclass(frozen=True)
class Item:
    """One piece of content to moderate."""

    text: str
    id: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: str | Item | Mapping[str, Any], default_id: str = "item") -> Item:
        """``value`` as an :class:`Item`, checked before any model call: the text a ``str`` that
        encodes as UTF-8 (no lone surrogate), the id a ``str`` (a mapping's ``id`` may be any
        scalar and becomes its ``str``, ``0`` included; a missing or empty one is ``default_id``),
        the metadata a mapping. Anything else raises :class:`~cotmod.InputError`."""
        if isinstance(value, Item):
            item = value if value.id else Item(value.text, default_id, value.metadata)
        elif isinstance(value, str):
            item = Item(value, default_id)
        elif isinstance(value, Mapping):
            raw_id = value.get("id")
            item_id = default_id if raw_id is None or raw_id == "" else str(raw_id)
            if "text" not in value:
                raise InputError(f"item {item_id!r}: missing 'text'")
            meta = {k: v for k, v in value.items() if k not in ("id", "text")}
            item = Item(value["text"], item_id, meta)
        elif isinstance(value, bytes):
            raise InputError(f"item {default_id!r}: bytes given; decode the text to str first")
        else:
            raise InputError(f"item {default_id!r}: expected str, Item or mapping, got {type(value).__name__}")
        if not isinstance(item.id, str):
            raise InputError(f"item {item.id!r}: the id must be a str, got {type(item.id).__name__}")
        if not isinstance(item.text, str):
            raise InputError(f"item {item.id!r}: the text must be a str, got {type(item.text).__name__}")
        if not isinstance(item.metadata, Mapping):
            raise InputError(f"item {item.id!r}: metadata must be a mapping, got {type(item.metadata).__name__}")
        for what, value_ in (("text", item.text), ("id", item.id)):
            try:
                value_.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"item {item.id!r}: the {what} is not valid Unicode (a lone surrogate)") from None
        return item


def _check_metadata(item: Item) -> None:
    try:
        json.dumps(dict(item.metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"item {item.id!r}: metadata must be JSON-serialisable ({exc})") from None


def _policy_ids(policies: Sequence[str] | str | None) -> Sequence[str] | None:
    """``policies`` as given to the entry points: a single string is one policy id (not a
    sequence of one-letter ids)."""
    return [policies] if isinstance(policies, str) else policies


def _load_policy_set(policies: PolicySet | Iterable[Policy] | str | Path | None, settings: Settings) -> PolicySet:
    if isinstance(policies, PolicySet):
        return policies
    if isinstance(policies, (str, Path)):
        return load_policies([policies])
    if policies is not None:
        return PolicySet(policies)
    return load_policies([settings.guidelines or default_guidelines_dir()])


class _Ramp:
    """The slow-start window of one prompt prefix: how many of its requests may be in flight."""

    def __init__(self) -> None:
        self.window = 1
        self.in_flight = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self, cap: Callable[[], int]) -> None:
        while self.in_flight >= min(self.window, cap()):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)
        self.in_flight += 1

    def answered(self, transport_retries: int, cap: int) -> None:
        """A first answer came back: open the window by one, or halve it after retries."""
        if transport_retries:
            self.window = max(1, self.window // 2)
        else:
            self.window = min(max(cap, 1), self.window + 1)
        self._wake()

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        # every waiter re-checks the window in FIFO order; the ones that do not fit wait again
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


@dataclass
class GroupOutcome:
    """What the model answered for one policy group of one item (before thresholds).

    ``error`` is set when no valid answer was obtained; then ``reasoning`` and ``decisions`` are
    empty. :meth:`AsyncModerator.build_verdict` combines the outcomes of an item's groups.
    """

    reasoning: list[str]
    decisions: list[PolicyDecision]
    usage: Usage
    attempts: int
    retries: int
    reasks: int
    model: str
    error: ErrorInfo | None = None
    cached: bool = False


_Outcome = GroupOutcome  # the old private name (cotmod.batch used it)


@dataclass
class TriageOutcome:
    """What the triage call (``Settings.triage``) answered for one item.

    ``selected``: the policies to judge, in policy order. When triage failed (its output stayed
    invalid after the re-asks, or its call failed in transport for this item), ``fallback`` says
    why and ``selected`` is every policy in play: a failed triage never allows an item unjudged.
    ``scores`` (with ``logprobs``): the probability of "yes" per policy, by which ``selected``
    was chosen. ``answers``: the word the model answered per policy ("no" or "yes", in policy
    order), which with ``scores`` may differ from the selection; None after a fallback (and for
    an outcome cached before answers were recorded). ``attempts`` is 0 for an outcome from the
    cache (``cached``).
    """

    summary: str
    selected: list[str]
    usage: Usage
    attempts: int
    retries: int
    reasks: int
    model: str
    fallback: str | None = None
    raw_output: str | None = None
    cached: bool = False
    scores: dict[str, float] | None = None
    answers: dict[str, str] | None = None

    def record(self, policy_ids: Sequence[str]) -> Triage:
        """The verdict's :class:`~cotmod.Triage` record for the policies in play."""
        chosen = set(self.selected)
        return Triage(
            selected=[p for p in policy_ids if p in chosen],
            skipped=[p for p in policy_ids if p not in chosen],
            summary=self.summary,
            fallback=self.fallback,
            scores={p: self.scores[p] for p in policy_ids if p in self.scores} if self.scores else None,
        )


#: transport failures that would hit every call, not just this item's triage call: they are
#: raised (as they would be by the per-policy calls) instead of falling back to judging everything
_FATAL_FOR_TRIAGE = (AuthenticationError, CircuitOpenError, EndpointUnreachableError, RateLimitedError)


def _triage_fallback_on(exc: TransportError) -> bool:
    """A transport failure of the triage call that concerns this item only (5xx or a malformed
    body after the transport retries, a timeout): judge every policy instead."""
    return isinstance(exc, RequestTimeoutError) or not isinstance(exc, _FATAL_FOR_TRIAGE)


def triage_reason(policy_id: str, triage: TriageOutcome, threshold: float | None, max_policies: int) -> str:
    """Why triage left ``policy_id`` out, in the policy's own terms: its P(yes) against
    ``threshold`` (with logprobs), or the word triage answered for it, or the cap of
    ``max_policies`` judged per item; then the triage call's summary as context. The summary is
    one sentence for the whole item and can be wrong about it, so it is never the reason alone."""
    score = (triage.scores or {}).get(policy_id) if threshold is not None else None
    digits = 2
    while score is not None and threshold is not None and digits < 6 and f"{score:.{digits}f}" == f"{threshold:.{digits}f}" and score != threshold:
        digits += 1  # 0.299 against 0.3 must not read "0.30 is below the threshold 0.30"
    cap = f"at most {max_policies} polic{'y is' if max_policies == 1 else 'ies are'} judged per item (triage_max)"
    answer = (triage.answers or {}).get(policy_id)
    if score is not None and threshold is not None:
        if score < threshold:
            why = f"triage's probability that this policy is at stake, {score:.{digits}f}, is below the threshold {threshold:.{digits}f}."
        else:
            why = f"triage's probability {score:.{digits}f} reached the threshold {threshold:.{digits}f}, but {cap}, the most likely first."
    elif answer == "no":
        why = "triage answered that this policy is not at stake."
    elif answer == "yes":
        why = f"triage answered yes, but {cap}."
    else:
        why = "triage found this policy not at stake."
    summary = triage.summary.strip()
    return f"Triaged out: {why}" + (f" Triage's summary of the content: {summary}" if summary else "")


def _triaged_out(policy: Policy, reason: str) -> PolicyDecision:
    """The decision recorded for a policy triage found not at stake: allow, not judged."""
    return PolicyDecision(
        policy_id=policy.id,
        policy_version=policy.version,
        rationale=reason,
        violates=False,
        rule_ids=[],
        action="allow",
        escalate=False,
        confidence=1.0,
        score=0.0,
        triaged_out=True,
    )


def _looks_like_path(name: str) -> bool:
    """A file path rather than a model name ("org/model" names are not paths)."""
    return (
        name.lower().endswith(".gguf")
        or name.startswith(("/", "\\", "~", "./", "../"))
        or (len(name) > 2 and name[1] == ":" and name[2] in "/\\")
    )


def _model_label(reported: str | None, requested: str) -> str:
    """The model name a verdict records: the name the server reports (e.g. a dated snapshot of
    the requested model), except that a llama.cpp server reports the path of the GGUF file it
    loaded; then the requested name, or the file's stem (cotmod's model name) if that is a path
    too. A verdict never carries a filesystem path."""
    for name in (reported, requested):
        if name and not _looks_like_path(name):
            return name
    name = reported or requested
    stem = name.replace("\\", "/").rsplit("/", 1)[-1]
    return stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem


def blend_triage_score(decision: PolicyDecision, p_yes: float | None, weight: float) -> PolicyDecision:
    """``decision`` with triage's probability that its policy is at stake blended into its score
    (``Settings.triage_blend``): ``(1 - weight) * score + weight * p_yes``, ``score_source``
    ``"blend"``, the policy's own score kept in ``policy_score``. A policy triaged out had no call:
    its own score is 0, so it scores ``weight * p_yes``. Unchanged when ``weight`` is 0 or there is
    no P(yes) for the policy (triage off, without logprobs, or fallen back).

    Why: on three development samples of the ten-policy pipeline (Qwen2.5-Coder-1.5B), triage's
    P(yes) alone ranked harmful items as well as the policy calls' scores (item-level AUPRC 0.840
    against 0.812 pooled) and the two disagree on different items: their mean ranked better than
    either (0.872). Confirmed on a fresh sample: 0.777 → 0.820 (+0.043 [+0.002, +0.079]). It is a
    ranking, not a better choice of policy: triage's most probable policy is often the wrong one,
    so flags made by the blend blame the wrong policy more often. See docs/quality.md."""
    if not weight or p_yes is None:
        return decision
    own = float(decision.score)
    score = min(1.0, max(0.0, (1.0 - weight) * own + weight * float(p_yes)))
    return decision.model_copy(update={"score": score, "score_source": "blend", "policy_score": own})


def _with_logprob_scores(
    decisions: list[PolicyDecision], raw: str, logprobs: list[dict[str, Any]], policies: PolicySet | None = None
) -> list[PolicyDecision]:
    """Replace stated-confidence scores by P(violates=true) from token log-probabilities.

    Under decision logic (one policy, an ``answers`` object) the score is instead
    P(violates) under the model's uncertainty about each answer: the answers' probabilities read
    from the first token of each answer value, summed over the answer combinations whose derived
    decision violates (``score_source: "answers"``; see ``cotmod.prompting._logic``)."""
    if policies is not None and len(decisions) == 1 and decisions[0].answers:
        policy = policies[decisions[0].policy_id]
        dists = answer_distributions(policy, logprobs)
        if dists is None:
            return decisions
        p_violates = violation_probability(policy, dists)
        return [decisions[0].model_copy(update={"score": p_violates, "score_source": "answers"})]
    try:
        order = [str(pid) for pid in json.loads(raw)["decisions"]]
    except (ValueError, KeyError, TypeError):
        return decisions
    probs = violates_probabilities(order, logprobs)
    if probs is None:
        return decisions
    by_policy = dict(zip(order, probs, strict=True))
    out = []
    for d in decisions:
        p = by_policy.get(d.policy_id)
        out.append(d if p is None else d.model_copy(update={"score": float(p), "score_source": "logprobs"}))
    return out


class AsyncModerator:
    """Moderates items against policies through an OpenAI-compatible backend (async).

    ``policies``: a :class:`PolicySet`, policies, or a directory/file to load (default: the
    configured guidelines, else the starter pack). ``settings`` and/or keyword ``overrides``
    configure it (:class:`~cotmod.Settings`). ``backend``: any :class:`Backend` (default: one
    for ``settings.base_url``, or the embedded local model). ``cache``: a result cache (its
    calls run off the event loop). ``warm_prefix``: send the first request of each prompt
    prefix alone, then ramp that prefix's requests in flight up as answers come back, halving
    on transport trouble (slow start; see the module docstring).
    """

    def __init__(
        self,
        policies: PolicySet | Iterable[Policy] | str | Path | None = None,
        *,
        settings: Settings | None = None,
        backend: Backend | None = None,
        cache: Cache | None = None,
        warm_prefix: bool = True,
        **overrides: Any,
    ) -> None:
        self.cache = cache
        self.warm_prefix = warm_prefix
        if settings is not None and overrides:
            settings = settings.model_copy(update=overrides)
            settings = Settings.model_validate(settings.model_dump())
        self.settings = settings or Settings.load(**overrides)
        for line in self.settings.warnings():
            warnings.warn(line.removeprefix("cotmod: ").removeprefix("warning: "), CotmodWarning, stacklevel=2)
        self.policies = _load_policy_set(policies, self.settings)
        self.templates = PromptTemplates(self.settings.prompts)
        self.thresholds = load_thresholds(self.settings.thresholds)
        for pid in self.thresholds:
            if pid not in self.policies:
                raise ConfigError(f"{self.settings.thresholds}: thresholds for unknown policy {pid!r}")
        self.cascade = load_cascade(self.settings.cascade)
        for pid in self.cascade:
            if pid not in self.policies:
                raise ConfigError(f"{self.settings.cascade}: cascade.{pid}: unknown policy {pid!r}")
        self._backend = backend
        self._owns_backend = backend is None
        self._backend_lock: asyncio.Lock | None = None
        self._compilers: dict[tuple[str, ...], Compiler] = {}
        self._triage_compilers: dict[tuple[str, ...], TriageCompiler] = {}
        self._concurrency = self.settings.concurrency
        self._sem: asyncio.Semaphore | None = None
        self._ramps: dict[str, _Ramp] = {}
        self._cache_executor: ThreadPoolExecutor | None = None
        self._bound_loop: asyncio.AbstractEventLoop | None = None
        self._loop_guard: AsyncGenerator[None, None] | None = None

    # -- configuration -------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        if self._backend is not None:
            return self._backend.model_name
        return self.settings.model or self.settings.local_model

    @property
    def concurrency(self) -> int:
        """Model requests in flight at most, over all calls of this moderator (default:
        ``settings.concurrency``). Setting it applies to requests that start afterwards."""
        return self._concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        if value < 1:
            raise ConfigError(f"concurrency must be >= 1, got {value}")
        self._concurrency = value
        self._sem = None

    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self._concurrency)
        return self._sem

    def compiler(self, policy_ids: Sequence[str]) -> Compiler:
        key = tuple(policy_ids)
        comp = self._compilers.get(key)
        if comp is None:
            comp = Compiler(
                self.policies.select(key),
                templates=self.templates,
                max_steps=self.settings.max_steps,
                max_item_tokens=self.settings.max_item_tokens,
                schema_limits=self.settings.schema_limits,
                few_shot=self.settings.few_shot,
                sampling=self.sampling(),
                evidence=self.settings.evidence,
                decision_logic=self.settings.decision_logic,
                dynamic_examples=self.settings.dynamic_examples,
            )
            self._compilers[key] = comp
        return comp

    def policy_groups(self, policies: Sequence[str] | None = None) -> list[tuple[str, ...]]:
        """The policy groups an item is sent to the model in: one model call per group.

        Each group is a tuple of policy ids: one per policy with ``strategy="per_policy"``, one
        group of all of them with ``"combined"``. ``policies`` defaults to all loaded policies.
        """
        policies = _policy_ids(policies)
        ids = self.policies.select(policies).ids if policies is not None else self.policies.ids
        if not ids:
            raise InputError("no policies selected")
        if self.settings.strategy == "combined":
            return [tuple(ids)]
        return [(pid,) for pid in ids]

    _groups = policy_groups  # the old private name

    def triage_applies(self, policies: Sequence[str] | None = None) -> bool:
        """Triage runs for these policies: ``settings.triage`` is on and there is more than one
        policy group to choose from (with ``strategy="combined"`` triage is a no-op)."""
        return self.settings.triage and len(self.policy_groups(policies)) > 1

    def triage_compiler(self, policy_ids: Sequence[str]) -> TriageCompiler:
        """The compiler of the triage prompt listing these policies."""
        key = tuple(policy_ids)
        comp = self._triage_compilers.get(key)
        if comp is None:
            comp = TriageCompiler(
                self.policies.select(key),
                templates=self.templates,
                max_item_tokens=self.settings.max_item_tokens,
                schema_limits=self.settings.schema_limits,
                sampling=self.triage_sampling(),
                max_policies=self.settings.triage_max,
            )
            self._triage_compilers[key] = comp
        return comp

    def _triage_cache_key(self, text: str, policy_ids: Sequence[str], backend: Backend) -> str:
        """The result-cache key of a triage call: the item, the triage prompt's
        :attr:`~cotmod.prompting.TriageCompiler.prompt_fingerprint` (what the call sends, so an
        edit to a policy that the triage prompt does not show keeps its cached answers), the model
        and the sampling. With logprobs the threshold is left out: it does not change the prompt or
        the call, only which policies the recorded P(yes) select, and a cached answer is
        re-selected at the current threshold and ``triage_min`` (see :meth:`_triage`). So trying
        another threshold on items already triaged costs no triage call and compares thresholds on
        the same answers. (The verdict's fingerprint still covers the policies, threshold and
        floor.)"""
        sampling = self.triage_sampling()
        sampling.pop("triage_min", None)
        if sampling.pop("triage_threshold", None) is not None:
            sampling["triage_selection"] = "by_probability"
        fp = self.triage_compiler(policy_ids).prompt_fingerprint
        return cache_key(text, fp, backend.model_name, sampling)

    def fingerprint(self, policies: Sequence[str] | None = None) -> str:
        """The prompt fingerprint verdicts for these policies carry. With triage on (and more
        than one policy group) it covers the triage prompt too; with it off it is what it was
        before triage existed."""
        groups = self.policy_groups(policies)
        fps = [self.compiler(g).fingerprint for g in groups]
        if len(fps) == 1:
            return fps[0]
        parts = [self.settings.strategy, *fps]
        if self.settings.triage:  # more than one group here
            parts += ["triage", self.triage_compiler([pid for g in groups for pid in g]).fingerprint]
        h = hashlib.sha256(("|".join(parts)).encode()).hexdigest()
        return "fp-" + h[:16]

    def render(self, text: str, policies: Sequence[str] | None = None) -> list[CompiledPrompt]:
        """The exact prompts the model would receive for ``text`` (no model call): one per policy
        group, preceded by the triage prompt when triage applies (:meth:`triage_applies`)."""
        groups = self.policy_groups(policies)
        prompts = [self.compiler(g).compile(text) for g in groups]
        if self.triage_applies(policies):
            prompts.insert(0, self.triage_compiler([pid for g in groups for pid in g]).compile(text))
        return prompts

    async def _bind_to_loop(self) -> None:
        """State that belongs to an event loop (the concurrency semaphore, the warm-up windows,
        the connections of a backend the moderator made) is made anew on a new loop, e.g. a second
        ``asyncio.run``; and when the loop shuts down (the end of ``asyncio.run``: its
        ``shutdown_asyncgens``), a backend the moderator made is closed on it, so its connections
        are not left to be closed later on a closed loop ("Event loop is closed")."""
        loop = asyncio.get_running_loop()
        if self._bound_loop is loop:
            return
        if self._bound_loop is not None:
            self._sem = None
            self._ramps = {}
            self._backend_lock = None
            if self._owns_backend:
                self._backend = None  # closed when its loop shut down, or tied to a loop gone
        self._bound_loop = loop

        async def guard() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                if self._bound_loop is loop:
                    backend = self._backend if self._owns_backend else None
                    self._bound_loop = None
                    if backend is not None:
                        self._backend = None
                        with contextlib.suppress(Exception):
                            await backend.aclose()

        self._loop_guard = guard()
        await self._loop_guard.__anext__()  # started on this loop: finalised by its shutdown_asyncgens

    async def get_backend(self) -> Backend:
        """The backend calls go to; the embedded local server is started here when needed."""
        await self._bind_to_loop()
        if self._backend is not None:
            return self._backend
        if self._backend_lock is None:
            self._backend_lock = asyncio.Lock()
        async with self._backend_lock:
            if self._backend is None:
                s = self.settings
                if s.base_url:
                    if not s.model:
                        raise ConfigError("a model name is required with base_url (--model or COTMOD_MODEL)")
                    self._backend = OpenAIBackend(
                        base_url=s.base_url,
                        model=s.model,
                        api_key=s.api_key.get_secret_value() if s.api_key else None,
                        timeout=s.timeout,
                        max_retries=s.max_transport_retries,
                        extra_headers=s.extra_headers,
                    )
                else:
                    from ..backends._local import ensure_local_server

                    url = await asyncio.to_thread(
                        ensure_local_server, s.local_model, n_ctx=s.local_ctx, threads=s.local_threads
                    )
                    self._backend = OpenAIBackend(
                        base_url=url,
                        model=s.local_model,
                        timeout=max(s.timeout, 600.0),
                        max_retries=s.max_transport_retries,
                    )
        return self._backend

    _get_backend = get_backend  # the old private name

    @contextlib.asynccontextmanager
    async def wrapped_backend(self, wrap: Callable[[Backend], B]) -> AsyncIterator[B]:
        """Send every call through ``wrap(backend)`` inside the ``async with`` block.

        For load control around the moderator's own backend, e.g.
        ``async with mod.wrapped_backend(lambda b: LimitedBackend(b, rpm=60)) as limited: ...``.
        The wrapper is yielded; the original backend is restored on exit.
        """
        inner = await self.get_backend()
        outer = wrap(inner)
        self._backend = outer
        try:
            yield outer
        finally:
            if self._backend is outer:
                self._backend = inner

    # -- the work ------------------------------------------------------------------------------
    def request_for(
        self,
        prompt: CompiledPrompt,
        messages: list[dict[str, str]] | None = None,
        attempt: int = 1,
        vote: int | None = None,
    ) -> ChatRequest:
        """The request for a compiled prompt (live calls and Batch API export send the same).

        ``vote`` (0-based) marks a self-consistency sample: it is drawn at ``vote_temperature``
        with its own seed, so the k votes differ from each other but each is reproducible.
        """
        s = self.settings
        temperature, seed = s.temperature, s.seed
        if vote is not None:
            temperature = s.vote_temperature
            seed = None if s.seed is None else s.seed + vote
        return ChatRequest(
            messages=list(prompt.messages) if messages is None else messages,
            schema=prompt.output_schema,
            response_format=s.response_format,
            temperature=temperature,
            max_tokens=s.max_tokens,
            seed=seed,
            logprobs=s.logprobs,
            prompt_tokens=prompt.prompt_tokens + (attempt - 1) * (s.max_tokens + 64),
        )

    async def _decide(
        self,
        backend: Backend,
        prompt: CompiledPrompt,
        vote: int | None = None,
        on_first_answer: Callable[[int], None] | None = None,
    ) -> GroupOutcome:
        s = self.settings
        messages = list(prompt.messages)
        usage = Usage()
        retries = 0
        raw: str | None = None
        last_error = ""
        model = _model_label(None, backend.model_name)
        max_attempts = s.max_reasks + 1
        # evidence on: the last answer whose only fault was ungrounded citations, with those
        # citations dropped; used if the re-asks do not produce a fully grounded answer
        fallback: tuple[list[str], list[PolicyDecision]] | None = None
        for attempt in range(1, max_attempts + 1):
            result = await backend.complete(self.request_for(prompt, messages, attempt, vote))
            if attempt == 1 and on_first_answer is not None:
                on_first_answer(result.transport_retries)
            usage.add(result.usage)
            retries += result.transport_retries
            raw = result.text
            model = _model_label(result.model, backend.model_name)
            try:
                reasoning, decisions = self._parse(prompt, result, drop_ungrounded=prompt.evidence)
                if prompt.evidence and attempt < max_attempts:
                    fallback = (reasoning, decisions)
                    # raises, naming every ungrounded citation and quote, unless all are grounded
                    self._parse(prompt, result)
            except OutputInvalid as exc:
                last_error = str(exc)
                if attempt < max_attempts:
                    comp = self.compiler(prompt.policies.ids)
                    messages = [
                        *messages,
                        {"role": "assistant", "content": raw[:4000]},
                        {"role": "user", "content": comp.reask_message(last_error, attempt, max_attempts)},
                    ]
                continue
            return GroupOutcome(reasoning, decisions, usage, attempt, retries, attempt - 1, model)
        if fallback is not None:
            # the re-asks made things worse (invalid output): keep the best answer, minus the
            # citations it could not ground
            reasoning, decisions = fallback
            return GroupOutcome(reasoning, decisions, usage, max_attempts, retries, max_attempts - 1, model)
        return GroupOutcome(
            [],
            [],
            usage,
            max_attempts,
            retries,
            max_attempts - 1,
            model,
            ErrorInfo(
                type="ModelOutputError",
                message=f"invalid output after {max_attempts} attempt(s): {last_error}",
                raw_output=raw,
            ),
        )

    def _parse(
        self, prompt: CompiledPrompt, result: ChatResult, *, drop_ungrounded: bool = False
    ) -> tuple[list[str], list[PolicyDecision]]:
        """Validate one completion (raises ``OutputInvalid``). With evidence on, the quotes are
        grounded in the item text the prompt carries; ``drop_ungrounded`` drops the citations
        that are not (recorded in ``dropped``) instead of raising."""
        reasoning, decisions = parse_decision(
            result.text,
            prompt.policies,
            prompt.schema,
            finish_reason=result.finish_reason,
            content=prompt.content if prompt.evidence else None,
            drop_ungrounded=drop_ungrounded,
        )
        if self.settings.logprobs and result.logprobs:
            scored = _with_logprob_scores(decisions, result.text, result.logprobs, prompt.policies)
            # a decision whose rules were dropped is no longer the one the logprobs measured
            decisions = [
                d if any(c.id in self.policies[d.policy_id].rule_ids for c in d.dropped) else x
                for d, x in zip(decisions, scored, strict=True)
            ]
        return reasoning, decisions

    async def _call_model(
        self, backend: Backend, prompt: CompiledPrompt, sem: asyncio.Semaphore, vote: int | None = None
    ) -> GroupOutcome:
        """One model call (with its re-asks) under the concurrency limit and, with
        ``warm_prefix``, under its prompt prefix's slow-start window (see :meth:`_limited`)."""
        return await self._limited(backend, prompt, sem, lambda first: self._decide(backend, prompt, vote, first))

    async def _limited(
        self,
        backend: Backend,
        prompt: CompiledPrompt,
        sem: asyncio.Semaphore,
        call: Callable[[Callable[[int], None] | None], Awaitable[T]],
    ) -> T:
        """Run ``call(on_first_answer)`` (one model call with its re-asks) under the concurrency
        limit and, with ``warm_prefix``, under its prompt prefix's slow-start window (see the
        module docstring).

        The window opens by one when a call's first answer comes back without transport retries
        (its server slot now holds the prefix) and halves when it needed some, or when the call
        fails in transport. A call holds its place in the window until it returns (re-asks
        reuse the prefix). If the first call fails without an answer, the next waiting call
        warms instead.
        """
        if not self.warm_prefix:
            async with sem:
                return await call(None)
        key = f"{backend.model_name}\0{prompt.fingerprint}"
        ramp = self._ramps.get(key)
        if ramp is None:
            ramp = self._ramps[key] = _Ramp()
        await ramp.acquire(lambda: self._concurrency)
        try:
            async with sem:
                return await call(lambda retries: ramp.answered(retries, self._concurrency))
        except TransportError:
            ramp.answered(1, self._concurrency)
            raise
        finally:
            ramp.release()

    # -- triage --------------------------------------------------------------------------------
    def triage_sampling(self) -> dict[str, Any]:
        """What the triage call sends besides its messages (one call, no votes). With logprobs on,
        the call asks for them too and selects by ``triage_threshold`` (see :func:`parse_triage`)."""
        s = self.settings
        out: dict[str, Any] = {
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "seed": s.seed,
            "response_format": s.response_format,
        }
        if s.logprobs:
            out["logprobs"] = True
            out["triage_threshold"] = s.triage_threshold
            if s.triage_min:  # only when set, so the fingerprints of earlier runs stay as they were
                out["triage_min"] = s.triage_min
        return out

    def _triage_request(self, prompt: CompiledPrompt, messages: list[dict[str, str]], attempt: int) -> ChatRequest:
        return dataclasses.replace(
            self.request_for(prompt, messages, attempt), logprobs=self.settings.logprobs, schema_name=TRIAGE_SCHEMA_NAME
        )

    async def _triage_call(
        self, backend: Backend, prompt: CompiledPrompt, on_first_answer: Callable[[int], None] | None
    ) -> TriageOutcome:
        """The triage call with its re-asks (at most ``max_reasks``). Output that stays invalid
        gives the fallback outcome: every policy selected."""
        s = self.settings
        comp = self.triage_compiler(prompt.policies.ids)
        messages = list(prompt.messages)
        usage = Usage()
        retries = 0
        raw: str | None = None
        last_error = ""
        model = _model_label(None, backend.model_name)
        max_attempts = s.max_reasks + 1
        for attempt in range(1, max_attempts + 1):
            result = await backend.complete(self._triage_request(prompt, messages, attempt))
            if attempt == 1 and on_first_answer is not None:
                on_first_answer(result.transport_retries)
            usage.add(result.usage)
            retries += result.transport_retries
            raw = result.text
            model = _model_label(result.model, backend.model_name)
            try:
                answer = parse_triage(
                    result.text,
                    prompt.policies,
                    finish_reason=result.finish_reason,
                    max_policies=comp.max_policies,
                    logprobs=result.logprobs if s.logprobs else None,
                    threshold=s.triage_threshold if s.logprobs else None,
                    min_policies=s.triage_min if s.logprobs else 0,
                )
            except OutputInvalid as exc:
                last_error = str(exc)
                if attempt < max_attempts:
                    messages = [
                        *messages,
                        {"role": "assistant", "content": raw[:4000]},
                        {"role": "user", "content": comp.reask_message(last_error, attempt, max_attempts)},
                    ]
                continue
            return TriageOutcome(
                answer.summary,
                answer.policies,
                usage,
                attempt,
                retries,
                attempt - 1,
                model,
                scores=answer.scores,
                answers=dict(answer.answers),
            )
        return TriageOutcome(
            "",
            list(prompt.policies.ids),
            usage,
            max_attempts,
            retries,
            max_attempts - 1,
            model,
            fallback=f"invalid triage output after {max_attempts} attempt(s): {last_error}"[:2000],
            raw_output=raw,
        )

    async def _triage(self, item: Item, policy_ids: Sequence[str], backend: Backend, sem: asyncio.Semaphore) -> TriageOutcome:
        """Triage one item: from the result cache, else one call (under the same limits as the
        policy calls). A transport failure that concerns this item only falls back to judging
        every policy; one that would hit every call (authentication, an unreachable endpoint,
        an open circuit, rate limiting) is raised, as a policy call would raise it."""
        prompt = self.triage_compiler(policy_ids).compile(item.text, item_id=item.id)
        cache = self.cache
        key = None
        if cache is not None:
            key = self._triage_cache_key(item.text, policy_ids, backend)
            hit = await self._cache_call(cache.get, key)
            if hit is not None:
                selected = hit.get("policies")
                scores = hit.get("scores")
                answers = hit.get("answers")
                if self.settings.logprobs and isinstance(scores, dict) and all(p in scores for p in policy_ids):
                    # the same rule parse_triage applied, at the current threshold
                    selected = select_by_probability(
                        {p: float(scores[p]) for p in policy_ids},
                        self.settings.triage_threshold,
                        self.triage_compiler(policy_ids).max_policies,
                        self.settings.triage_min,
                    )
                if isinstance(selected, list) and all(p in policy_ids for p in selected):
                    chosen = set(selected)
                    return TriageOutcome(
                        str(hit.get("summary", "")),
                        [p for p in policy_ids if p in chosen],
                        Usage(),
                        0,
                        0,
                        0,
                        _model_label(str(hit.get("model", "")), backend.model_name),
                        cached=True,
                        scores={str(k): float(v) for k, v in scores.items()} if isinstance(scores, dict) else None,
                        answers={str(k): str(v) for k, v in answers.items()} if isinstance(answers, dict) else None,
                    )
        try:
            outcome = await self._limited(backend, prompt, sem, lambda first: self._triage_call(backend, prompt, first))
        except TransportError as exc:
            if not _triage_fallback_on(exc):
                raise
            return TriageOutcome(
                "",
                list(policy_ids),
                Usage(),
                0,
                max(0, exc.attempts - 1),
                0,
                _model_label(None, backend.model_name),
                fallback=f"triage call failed: {type(exc).__name__}: {exc}"[:2000],
            )
        if key is not None and cache is not None and outcome.fallback is None:
            await self._cache_call(
                cache.put,
                key,
                {
                    "summary": outcome.summary,
                    "policies": outcome.selected,
                    "model": outcome.model,
                    "scores": outcome.scores,
                    "answers": outcome.answers,
                },
            )
        return outcome

    async def triage(self, item: str | Item | Mapping[str, Any], policies: Sequence[str] | None = None) -> TriageOutcome:
        """The triage call alone for one item: exactly the call :meth:`moderate` makes first when
        triage applies (same prompt, sampling, re-asks, parsing, result cache and concurrency
        limits), without the per-policy calls. For trying a triage prompt or threshold on a
        sample quickly.

        ``policies`` (default: all loaded policies) are the policies triage chooses among; a
        cascade (``settings.cascade``) is not consulted. Returns the :class:`TriageOutcome`:
        ``selected``, ``summary``, ``answers``, ``scores`` (with ``logprobs``), ``attempts``,
        ``usage``, ``model``, ``cached``; as in :meth:`moderate`, output that stays invalid after
        the re-asks, or a transport failure that concerns this item only, gives a ``fallback``
        outcome selecting every policy. ``outcome.record(policy_ids)`` is the ``Verdict.triage``
        :meth:`moderate` would record.

        Raises :class:`~cotmod.ConfigError` when triage does not apply (:meth:`triage_applies`):
        ``settings.triage`` is off, or there is only one policy group to choose from (one policy,
        or ``strategy="combined"``).
        """
        if not self.settings.triage:
            raise ConfigError(
                "triage is off: turn it on (Settings(triage=True), --triage, COTMOD_TRIAGE=1) to triage an item"
            )
        groups = self.policy_groups(policies)
        if len(groups) < 2:
            why = f"strategy {self.settings.strategy!r} sends them in one call" if len(groups[0]) > 1 else "one policy"
            raise ConfigError(
                f"triage chooses among policy groups and there is only one here ({why}): select more than one "
                "policy, with strategy 'per_policy'"
            )
        it = Item.coerce(item)
        backend = await self.get_backend()
        return await self._triage(it, [pid for g in groups for pid in g], backend, self._semaphore())

    async def _cache_call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a cache method off the event loop (on the moderator's cache thread), unless the
        cache says it does not block (``blocking = False``, e.g. :class:`MemoryCache`)."""
        if not getattr(self.cache, "blocking", True):
            return fn(*args)
        if self._cache_executor is None:
            self._cache_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cotmod-cache")
        return await asyncio.get_running_loop().run_in_executor(self._cache_executor, functools.partial(fn, *args))

    async def moderate(
        self,
        item: str | Item | Mapping[str, Any],
        policies: Sequence[str] | None = None,
    ) -> Verdict:
        """Moderate one item against ``policies`` (default: all loaded policies).

        The item's ``metadata`` is copied into the verdict unchanged (it must be JSON-serialisable).

        With triage on (``settings.triage``) and more than one policy group, one triage call
        first selects the policies plausibly at stake; only their groups are called. The others
        get a decision ``allow`` marked ``triaged_out``, and ``Verdict.triage`` records the
        selection. If triage fails for the item, every policy is judged
        (``Verdict.triage.fallback`` says why).
        """
        it = Item.coerce(item)
        _check_metadata(it)
        groups = self.policy_groups(policies)
        prompts = [self.compiler(g).compile(it.text, item_id=it.id) for g in groups]
        backend = await self.get_backend()
        start = time.perf_counter()
        sem = self._semaphore()
        cache = self.cache
        routes = self.routes(it, [pid for g in groups for pid in g])
        # groups the LLM must judge: any of their policies routed to it (all, without a cascade)
        to_llm = [i for i, g in enumerate(groups) if any(routes.get(pid, ("llm", None))[0] == "llm" for pid in g)]
        triage: TriageOutcome | None = None
        triaged_ids = [pid for i in to_llm for pid in groups[i]]
        if self.settings.triage and len(to_llm) > 1:
            triage = await self._triage(it, triaged_ids, backend, sem)

        async def guarded(p: CompiledPrompt) -> GroupOutcome:
            key = self._cache_key(it.text, p, backend) if cache is not None else None
            if key is not None and cache is not None:
                hit = await self._cache_call(cache.get, key)
                if hit is not None:
                    return GroupOutcome(
                        list(hit["reasoning"]),
                        [PolicyDecision.model_validate(d) for d in hit["decisions"]],
                        Usage(),
                        0,
                        0,
                        0,
                        _model_label(str(hit["model"]), backend.model_name),
                        cached=True,
                    )
            if self.settings.votes > 1:
                outcome = await self._vote(backend, p, sem)
            else:
                outcome = await self._call_model(backend, p, sem)
            if key is not None and cache is not None and outcome.error is None:
                value = {
                    "reasoning": outcome.reasoning,
                    "decisions": [d.model_dump() for d in outcome.decisions],
                    "model": outcome.model,
                }
                await self._cache_call(cache.put, key, value)
            return outcome

        chosen = set(triage.selected) if triage is not None else None
        run = [i for i in to_llm if chosen is None or any(pid in chosen for pid in groups[i])]
        called: list[GroupOutcome] = list(await asyncio.gather(*(guarded(prompts[i]) for i in run)))
        outcomes: list[GroupOutcome] = []
        answers = dict(zip(run, called, strict=True))
        for i, g in enumerate(groups):
            if i in answers:
                outcomes.append(answers[i])
            elif i not in to_llm:  # the cascade's classifier settled every policy of the group
                outcomes.append(GroupOutcome([], [], Usage(), 0, 0, 0, _model_label(None, backend.model_name)))
            else:
                assert triage is not None
                threshold = self.settings.triage_threshold if self.settings.logprobs else None
                cap = self.triage_compiler(triaged_ids).max_policies
                decisions = [_triaged_out(self.policies[pid], triage_reason(pid, triage, threshold, cap)) for pid in g]
                outcomes.append(GroupOutcome([], decisions, Usage(), 0, 0, 0, triage.model))
        latency = (time.perf_counter() - start) * 1000
        return self.build_verdict(it, groups, prompts, outcomes, latency, triage=triage, routes=routes)

    def routes(self, item: Item, policy_ids: Sequence[str]) -> dict[str, tuple[Route, float | None]]:
        """With a cascade (``settings.cascade``): per policy of ``policy_ids`` bound in it, the
        route the item's classifier score gives (see :mod:`cotmod.engine._cascade`) and that
        score; ``{}`` without a cascade. A score that is not a number in [0, 1] raises
        :class:`~cotmod.InputError`."""
        out: dict[str, tuple[Route, float | None]] = {}
        for pid in policy_ids:
            band = self.cascade.get(pid)
            if band is not None:
                score = item_score(item.id, item.metadata, band.label)
                out[pid] = (route_for(score, band), score)
        return out

    async def _vote(self, backend: Backend, prompt: CompiledPrompt, sem: asyncio.Semaphore) -> GroupOutcome:
        """Self-consistency: ``votes`` sampled verdicts; the majority decides each policy.

        Each vote is one request (with its own re-asks) under the concurrency limit. A policy
        violates when more valid votes say so than not; a tie counts as violates, so that it
        reaches review rather than being allowed silently. The verdict keeps the reasoning and
        decision of the first vote on the majority side, with ``score`` = share of valid votes
        for violates and the tally in ``votes``. Votes that stay invalid are left out; if all
        are invalid the outcome is an error, as for a single call.
        """
        outcomes = list(
            await asyncio.gather(*(self._call_model(backend, prompt, sem, vote=i) for i in range(self.settings.votes)))
        )
        usage = Usage()
        for o in outcomes:
            usage.add(o.usage)
        attempts = sum(o.attempts for o in outcomes)
        retries = sum(o.retries for o in outcomes)
        reasks = sum(o.reasks for o in outcomes)
        valid = [o for o in outcomes if o.error is None]
        if not valid:
            first = outcomes[0]
            return GroupOutcome([], [], usage, attempts, retries, reasks, first.model, first.error)
        decisions: list[PolicyDecision] = []
        reasoning: list[str] = []
        by_policy = [{d.policy_id: d for d in o.decisions} for o in valid]
        for j, pid in enumerate(prompt.policies.ids):
            ayes = sum(1 for ds in by_policy if ds[pid].violates)
            violates = 2 * ayes >= len(valid)
            k = next(i for i, ds in enumerate(by_policy) if ds[pid].violates == violates)
            if j == 0:
                reasoning = valid[k].reasoning
            d = by_policy[k][pid]
            decisions.append(
                d.model_copy(update={"score": ayes / len(valid), "score_source": "votes", "votes": [ayes, len(valid) - ayes]})
            )
        return GroupOutcome(reasoning, decisions, usage, attempts, retries, reasks, valid[0].model)

    def sampling(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "seed": s.seed,
            "response_format": s.response_format,
            "logprobs": s.logprobs,
        }
        if s.votes > 1:  # only then, so single-call cache keys and manifests stay as they were
            out.update(votes=s.votes, vote_temperature=s.vote_temperature)
        return out

    def _cache_key(self, text: str, prompt: CompiledPrompt, backend: Backend) -> str:
        return cache_key(text, prompt.fingerprint, backend.model_name, self.sampling())

    def outcome_from_output(self, prompt: CompiledPrompt, result: ChatResult) -> GroupOutcome:
        """Validate one model output obtained elsewhere (e.g. a provider Batch API result)
        exactly like a live answer, without re-asking: an invalid output gives an outcome with
        a ``ModelOutputError``."""
        model = _model_label(result.model, self.model_name)
        try:
            # no re-ask here: ungrounded citations (evidence on) are dropped at once
            reasoning, decisions = self._parse(prompt, result, drop_ungrounded=True)
        except OutputInvalid as exc:
            error = ErrorInfo(type="ModelOutputError", message=f"invalid output (no re-ask): {exc}", raw_output=result.text)
            return GroupOutcome([], [], result.usage, 1, result.transport_retries, 0, model, error)
        return GroupOutcome(reasoning, decisions, result.usage, 1, result.transport_retries, 0, model)

    def build_verdict(
        self,
        item: Item,
        groups: Sequence[Sequence[str]],
        prompts: Sequence[CompiledPrompt],
        outcomes: Sequence[GroupOutcome],
        latency_ms: float = 0.0,
        *,
        triage: TriageOutcome | None = None,
        routes: Mapping[str, tuple[Route, float | None]] | None = None,
    ) -> Verdict:
        """The verdict for ``item`` from the outcomes of its policy groups (same order as
        :meth:`policy_groups`), with thresholds applied. ``prompts`` are the compiled prompts
        of those groups; only their truncation is read. Used by :meth:`moderate` and by code
        that obtains model outputs itself (the provider Batch API import).

        ``triage``: the item's triage outcome, if triage ran; its usage, attempts, retries,
        re-asks and cache hit are counted, and it becomes ``Verdict.triage``. The outcomes of
        triaged-out groups carry their ``triaged_out`` decisions (thresholds do not apply to
        them: they were not judged; with ``triage_blend`` their score is triage's judgment,
        ``triage_blend`` × P(yes), and thresholds apply to it). With ``triage_blend``, every
        policy's score is blended with triage's P(yes) before thresholds (:func:`blend_triage_score`).

        ``routes``: the cascade's route per policy (:meth:`routes`); a policy the classifier
        settled gets the classifier's decision (whatever its group's outcome holds, which may be
        nothing), the others record route ``llm`` and their classifier score."""
        routes = routes or {}
        usage = Usage()
        reasoning: list[str] = []
        decisions: list[PolicyDecision] = []
        errors = [o.error for o in outcomes if o.error is not None]
        for g, o in zip(groups, outcomes, strict=True):
            usage.add(o.usage)
            prefix = f"[{g[0]}] " if len(groups) > 1 else ""
            reasoning.extend(prefix + r for r in o.reasoning)
            by_id = {d.policy_id: d for d in o.decisions}
            for pid in g:
                route, score = routes.get(pid, ("llm", None))
                if route != "llm":
                    assert score is not None
                    decisions.append(classifier_decision(self.policies[pid], self.cascade[pid], score, route))
                    continue
                d = by_id.get(pid)
                if d is None:
                    continue  # an error outcome has no decisions
                if triage is not None and triage.scores is not None:
                    d = blend_triage_score(d, triage.scores.get(pid), self.settings.triage_blend)
                th = self.thresholds.get(pid)
                # a policy triaged out was not judged: no band, unless its blended score is triage's judgment
                d = apply_band(d, self.policies[pid], th) if th and (not d.triaged_out or d.score_source == "blend") else d
                if pid in routes and not d.triaged_out:
                    d = d.model_copy(update={"route": "llm", "classifier_score": score})
                decisions.append(d)
        if triage is not None:
            usage.add(triage.usage)
        ids = [pid for g in groups for pid in g]
        ok = not errors
        error = None
        if errors:
            error = ErrorInfo(
                type=errors[0].type,
                message="; ".join(e.message for e in errors)[:2000],
                raw_output=errors[0].raw_output,
            )
        truncated = None
        if prompts[0].truncated:
            truncated = Truncation(item_tokens=prompts[0].item_tokens, kept_tokens=prompts[0].kept_tokens)
        actions = [d.action for d in decisions]
        from ..policy._model import ACTIONS

        return Verdict(
            item_id=item.id,
            status="ok" if ok else "error",
            reasoning=reasoning,
            decisions=decisions,
            violates=any(d.violates for d in decisions) if ok else None,
            action=max(actions, key=ACTIONS.index) if ok and actions else None,
            escalate=any(d.escalate for d in decisions) if ok else None,
            policy_versions={pid: self.policies[pid].version for pid in ids},
            prompt_fingerprint=self.fingerprint(ids),
            model=outcomes[0].model if outcomes else _model_label(None, self.model_name),
            usage=usage,
            latency_ms=round(latency_ms, 2),
            attempts=sum(o.attempts for o in outcomes) + (triage.attempts if triage else 0),
            transport_retries=sum(o.retries for o in outcomes) + (triage.retries if triage else 0),
            reasks=sum(o.reasks for o in outcomes) + (triage.reasks if triage else 0),
            cache_hits=sum(1 for o in outcomes if o.cached) + (1 if triage and triage.cached else 0),
            truncated=truncated,
            error=error,
            triage=triage.record(ids) if triage is not None else None,
            metadata=dict(item.metadata),
            cotmod_version=__version__,
        )

    _verdict = build_verdict  # the old private name

    async def moderate_many(
        self,
        items: Iterable[str | Item | Mapping[str, Any]],
        policies: Sequence[str] | None = None,
    ) -> list[Verdict]:
        """Moderate several items concurrently; verdicts in the order of ``items``.

        At most :attr:`concurrency` model requests are in flight. An item without an id gets its
        position (``"0"``, ``"1"``, ...). To get verdicts as they finish, use :meth:`moderate_stream`.
        """
        coerced = [Item.coerce(x, default_id=str(i)) for i, x in enumerate(items)]
        return list(await asyncio.gather(*(self.moderate(it, policies) for it in coerced)))

    async def moderate_stream(
        self,
        items: Iterable[str | Item | Mapping[str, Any]] | AsyncIterable[str | Item | Mapping[str, Any]],
        policies: Sequence[str] | None = None,
        *,
        concurrency: int | None = None,
    ) -> AsyncGenerator[Verdict, None]:
        """Moderate items and yield each verdict as soon as it is ready (completion order).

        ``items`` (an iterable, or an async iterable such as an async generator) is read lazily: at most ``concurrency`` items (default :attr:`concurrency`)
        are being moderated at a time, and model requests stay bounded by :attr:`concurrency`.
        Ids default to the item's position, as in :meth:`moderate_many`. If an item fails (a bad
        item, a transport error), no further items are started, the items in progress finish
        and are yielded, then the first error is raised. Leaving the loop early cancels the
        items in progress.
        """
        limit = self._concurrency if concurrency is None else concurrency
        if limit < 1:
            raise ConfigError(f"concurrency must be >= 1, got {limit}")
        if isinstance(items, AsyncIterable):
            aiter_ = items.__aiter__()
            count = 0

            async def next_item() -> tuple[int, Any] | None:
                nonlocal count
                try:
                    value = await aiter_.__anext__()
                except StopAsyncIteration:
                    return None
                count += 1
                return count - 1, value
        else:
            source = iter(enumerate(items))

            async def next_item() -> tuple[int, Any] | None:
                return next(source, None)

        pending: set[asyncio.Future[Verdict]] = set()
        failure: BaseException | None = None
        try:
            while True:
                while failure is None and len(pending) < limit:
                    nxt = await next_item()
                    if nxt is None:
                        break
                    try:
                        item = Item.coerce(nxt[1], default_id=str(nxt[0]))
                    except InputError as exc:
                        failure = exc
                        break
                    pending.add(asyncio.ensure_future(self.moderate(item, policies)))
                if not pending:
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    err = task.exception()
                    if err is not None:
                        failure = failure or err
                    else:
                        yield task.result()
            if failure is not None:
                raise failure
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Close connections. A backend the moderator created itself is re-created on next use."""
        if self._backend is not None:
            await self._backend.aclose()
            if self._owns_backend:
                self._backend = None
        self._backend_lock = None
        self._sem = None
        # waiters belong to the loop they were used on; the next use may be on another loop
        self._ramps = {}
        if self._cache_executor is not None:
            self._cache_executor.shutdown(wait=True)
            self._cache_executor = None

    async def __aenter__(self) -> AsyncModerator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Portal:
    """A private event loop on a daemon thread, for the sync API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cotmod-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class Moderator:
    """The synchronous twin of :class:`AsyncModerator`, with the same methods and parameters
    (``close`` for ``aclose``; ``moderate_stream`` is a plain generator)."""

    def __init__(
        self,
        policies: PolicySet | Iterable[Policy] | str | Path | None = None,
        *,
        settings: Settings | None = None,
        backend: Backend | None = None,
        cache: Cache | None = None,
        warm_prefix: bool = True,
        **overrides: Any,
    ) -> None:
        self._async = AsyncModerator(
            policies, settings=settings, backend=backend, cache=cache, warm_prefix=warm_prefix, **overrides
        )
        self._portal: _Portal | None = None

    @property
    def settings(self) -> Settings:
        return self._async.settings

    @property
    def policies(self) -> PolicySet:
        return self._async.policies

    @property
    def model_name(self) -> str:
        return self._async.model_name

    @property
    def cascade(self) -> dict[str, CascadeBand]:
        return self._async.cascade

    def routes(self, item: Item, policy_ids: Sequence[str]) -> dict[str, tuple[Route, float | None]]:
        return self._async.routes(item, policy_ids)

    @property
    def concurrency(self) -> int:
        return self._async.concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        self._async.concurrency = value

    def _call(self, coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
        if self._portal is None:
            self._portal = _Portal()
        return self._portal.call(coro)

    def compiler(self, policy_ids: Sequence[str]) -> Compiler:
        return self._async.compiler(policy_ids)

    def policy_groups(self, policies: Sequence[str] | None = None) -> list[tuple[str, ...]]:
        return self._async.policy_groups(policies)

    def fingerprint(self, policies: Sequence[str] | None = None) -> str:
        return self._async.fingerprint(policies)

    def triage_applies(self, policies: Sequence[str] | None = None) -> bool:
        return self._async.triage_applies(policies)

    def triage_compiler(self, policy_ids: Sequence[str]) -> TriageCompiler:
        return self._async.triage_compiler(policy_ids)

    def triage_sampling(self) -> dict[str, Any]:
        return self._async.triage_sampling()

    def render(self, text: str, policies: Sequence[str] | None = None) -> list[CompiledPrompt]:
        return self._async.render(text, policies)

    def sampling(self) -> dict[str, Any]:
        return self._async.sampling()

    def request_for(
        self,
        prompt: CompiledPrompt,
        messages: list[dict[str, str]] | None = None,
        attempt: int = 1,
        vote: int | None = None,
    ) -> ChatRequest:
        return self._async.request_for(prompt, messages, attempt, vote)

    def get_backend(self) -> Backend:
        return self._call(self._async.get_backend())

    @contextlib.contextmanager
    def wrapped_backend(self, wrap: Callable[[Backend], B]) -> Iterator[B]:
        """See :meth:`AsyncModerator.wrapped_backend`."""
        inner = self.get_backend()
        outer = wrap(inner)
        self._async._backend = outer
        try:
            yield outer
        finally:
            if self._async._backend is outer:
                self._async._backend = inner

    def outcome_from_output(self, prompt: CompiledPrompt, result: ChatResult) -> GroupOutcome:
        return self._async.outcome_from_output(prompt, result)

    def build_verdict(
        self,
        item: Item,
        groups: Sequence[Sequence[str]],
        prompts: Sequence[CompiledPrompt],
        outcomes: Sequence[GroupOutcome],
        latency_ms: float = 0.0,
        *,
        triage: TriageOutcome | None = None,
        routes: Mapping[str, tuple[Route, float | None]] | None = None,
    ) -> Verdict:
        return self._async.build_verdict(item, groups, prompts, outcomes, latency_ms, triage=triage, routes=routes)

    def moderate(self, item: str | Item | Mapping[str, Any], policies: Sequence[str] | None = None) -> Verdict:
        return self._call(self._async.moderate(item, policies))

    def triage(self, item: str | Item | Mapping[str, Any], policies: Sequence[str] | None = None) -> TriageOutcome:
        """See :meth:`AsyncModerator.triage`."""
        return self._call(self._async.triage(item, policies))

    def moderate_many(
        self, items: Iterable[str | Item | Mapping[str, Any]], policies: Sequence[str] | None = None
    ) -> list[Verdict]:
        return self._call(self._async.moderate_many(items, policies))

    def moderate_stream(
        self,
        items: Iterable[str | Item | Mapping[str, Any]] | AsyncIterable[str | Item | Mapping[str, Any]],
        policies: Sequence[str] | None = None,
        *,
        concurrency: int | None = None,
    ) -> Iterator[Verdict]:
        """See :meth:`AsyncModerator.moderate_stream` (a plain generator here)."""
        stream = self._async.moderate_stream(items, policies, concurrency=concurrency)
        try:
            while True:
                try:
                    verdict = self._call(stream.__anext__())
                except StopAsyncIteration:
                    return
                yield verdict
        finally:
            self._call(stream.aclose())

    def close(self) -> None:
        if self._portal is not None:
            self._portal.call(self._async.aclose())
            self._portal.stop()
            self._portal = None

    def __enter__(self) -> Moderator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
