"""Compile policies + an item into chat messages through Jinja templates in ``prompts/``.

* Jinja runs in a ``SandboxedEnvironment`` with ``StrictUndefined``. Any template failure (a
  syntax error, a variable it is not given, an undefined filter or attribute, a runtime error
  such as a division by zero) is a :class:`TemplateError` with one line: ``file:line: what``.
* The static prefix (the system message and the few-shot example turns) comes first and is
  byte-identical for every item; the item text comes last in the user message, so servers reuse
  their prompt cache.
* User content is only ever a template *variable*: it is never parsed as template source, so
  ``{{ 7*7 }}`` in a post reaches the model verbatim. It sits between two boundary lines,
  ``<<<CONTENT-<id>>>>`` and ``<<<END CONTENT-<id>>>>``, whose ``<id>`` is drawn at random for
  each compiled prompt (16 hex digits from :mod:`secrets`) and redrawn if the content contains it.
  A post therefore cannot close its data block: it cannot know the boundary. The user message
  names its boundary lines; the system message describes them only generically.
* Every compiled prompt has a stable ``fingerprint``: a hash of what is actually sent apart from
  the item, namely the rendered static prefix, the rendered item and re-ask wording (with a
  placeholder item), the template sources, the decision schema and the request schema, the prompt
  settings and the sampling settings the caller passes (``Compiler(sampling=...)``). It is the
  same for every item, goes into every verdict and the result cache key, and changes whenever a
  rule, template, Python-built prompt text, schema or setting changes.
* ``evidence=True`` (opt-in, off by default) asks for grounded citations: the decision schema
  gains ``evidence`` (per cited rule and exception, the exact words of the content), the system
  message ends with the instruction of ``evidence.j2`` (the bundled one when a custom prompts
  directory has none), and the solved examples quote their content. With it off, every prompt,
  schema and fingerprint is byte-identical to what it was before the option existed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import secrets
import traceback
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from .._config import bundled_dir
from .._exceptions import InputError, TemplateError
from ..policy._model import Example, Policy, PolicySet
from ._decision import MAX_QUOTE_CHARS, constrain_decisions, decision_schema
from ._logic import MAX_ANSWER_QUOTE_CHARS, example_logic_answer, logic_request_schema, logic_schema
from ._tokens import count_tokens, token_counter_name, truncate_to_tokens

__all__ = ["CompiledPrompt", "Compiler", "PromptTemplates", "boundary_lines", "content_boundary", "default_prompts_dir"]

SYSTEM_TEMPLATE = "moderation.system.j2"
USER_TEMPLATE = "moderation.user.j2"
REASK_TEMPLATE = "reask.j2"
#: appended to the system message when evidence is on (not part of the fingerprint otherwise)
EVIDENCE_TEMPLATE = "evidence.j2"
#: the system message of a policy judged by its decision logic (questions + `when:` rules)
LOGIC_TEMPLATE = "logic.system.j2"
#: the content boundary lines; ``{}`` is the per-prompt boundary ID (see :func:`content_boundary`)
CONTENT_OPEN_FORMAT = "<<<CONTENT-{}>>>"
CONTENT_CLOSE_FORMAT = "<<<END CONTENT-{}>>>"
BOUNDARY_BYTES = 8  # 16 hex digits
GENERIC_CHECKLIST = (
    "Say briefly what the content is and what it does (asks, states, quotes, reports, jokes).",
    "For each policy, name any VIOLATES rule the content meets, or say none does.",
    "Check whether a SAFE exception applies.",
    "Decide each policy from the cited rules.",
)
# Wording of the solved example turns built in Python (part of the fingerprint: it is sent).
EXAMPLE_MEETS = "It meets {ids}: {titles}."
EXAMPLE_MEETS_NONE = "It does not meet any VIOLATES rule."
EXAMPLE_NO_EXCEPTION = "No SAFE exception applies."
EXAMPLE_EXCEPTION = "SAFE exception {ids} applies."
EXAMPLE_NO_EXCEPTION_NEEDED = "No exception is needed."
EXAMPLE_DECISION = {True: "Decision: VIOLATES.", False: "Decision: SAFE."}
EXAMPLE_CONFIDENCE = 0.9
# 3: the fingerprint hashes the rendered prefix, schemas and sampling; random content boundaries
# 2: violates tied to rule_ids in the request schema
FINGERPRINT_VERSION = "3"
# the placeholder item the fingerprint renders the per-item and re-ask messages with
_PROBE_TEXT = "<item text>"
_PROBE_BOUNDARY = "0" * (2 * BOUNDARY_BYTES)
_MAX_DRAWS = 100


def hash_fingerprint(blob: Mapping[str, Any]) -> str:
    """The ``fp-`` fingerprint of a JSON-able description of what a prompt sends (canonical JSON,
    SHA-256, 16 hex digits): shared by the policy and triage compilers."""
    h = hashlib.sha256(json.dumps(blob, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    return "fp-" + h.hexdigest()[:16]


def default_prompts_dir() -> Path:
    return bundled_dir("prompts")


def _random_token() -> str:
    return secrets.token_hex(BOUNDARY_BYTES)


def content_boundary(text: str, draw: Callable[[], str] | None = None) -> str:
    """A boundary ID for ``text``: ``draw()`` (default: 16 random hex digits from :mod:`secrets`),
    drawn again while the text contains it.

    The check is case-insensitive and also runs on the NFKC form of the text, so neither
    upper-case hex nor Unicode look-alike digits (e.g. full-width) can spell the boundary.
    """
    draw = draw or _random_token
    folded = text.casefold()
    normal = unicodedata.normalize("NFKC", text).casefold()
    for _ in range(_MAX_DRAWS):
        token = draw()
        t = token.casefold()
        if t and t not in folded and t not in normal:
            return token
    raise RuntimeError(f"could not draw a content boundary absent from the text in {_MAX_DRAWS} tries")


def boundary_lines(boundary: str) -> tuple[str, str]:
    """The opening and closing lines around the content for a boundary ID."""
    return CONTENT_OPEN_FORMAT.format(boundary), CONTENT_CLOSE_FORMAT.format(boundary)


def _derived_draw(text: str) -> Callable[[], str]:
    """Deterministic boundary IDs for trusted text in the static prefix (the few-shot examples):
    the prefix must be byte-identical for every item."""
    counter = 0

    def draw() -> str:
        nonlocal counter
        counter += 1
        return hashlib.sha256(f"{counter}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[: 2 * BOUNDARY_BYTES]

    return draw


_WORD = re.compile(r"\w+", re.UNICODE)


def _terms(text: str) -> list[str]:
    """Lower-cased words and adjacent word pairs (for example similarity)."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def _tfidf(terms: list[str], idf: Mapping[str, float]) -> dict[str, float]:
    vec: dict[str, float] = {}
    for t in terms:
        if t in idf:
            vec[t] = vec.get(t, 0.0) + idf[t]
    return vec


def _cosine(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(v * b.get(t, 0.0) for t, v in a.items())
    na = math.sqrt(sum(v * v for v in a.values()))
    nb = math.sqrt(sum(v * v for v in b.values()))
    return dot / (na * nb) if na and nb else 0.0


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class PromptTemplates:
    """The Jinja templates of a prompts directory, sandboxed and strict."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_prompts_dir()
        if not self.directory.is_dir():
            raise TemplateError(f"{self.directory}: prompts directory not found")
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.directory)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        # JSON string literal without HTML escaping (Jinja's tojson escapes quotes as \u0027).
        self.env.filters["jsonstr"] = lambda v: json.dumps(v, ensure_ascii=False)

    def source(self, name: str) -> str:
        path = self.directory / name
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TemplateError(f"{path}: template not found") from None
        except UnicodeDecodeError as exc:
            raise TemplateError(f"{path}: not valid UTF-8 ({exc.reason})") from None

    def variables(self, name: str) -> set[str]:
        """The variables a template uses (what a caller must provide)."""
        try:
            ast = self.env.parse(self.source(name))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{self.directory / name}:{exc.lineno}: {_one_line(exc.message or str(exc))}") from None
        return set(meta.find_undeclared_variables(ast))

    def _where(self, exc: BaseException, default: Path) -> str:
        """``file:line`` of the innermost template frame of a render-time error (Jinja maps its
        compiled code back to template files and lines), else the template's path."""
        root = self.directory.resolve()
        where = str(default)
        for frame in traceback.extract_tb(exc.__traceback__):
            try:
                inside = Path(frame.filename).resolve().is_relative_to(root)
            except (OSError, ValueError):
                inside = False
            if inside:
                where = f"{frame.filename}:{frame.lineno}"
        return where

    def render(self, name: str, **variables: Any) -> str:
        """Render a template; every failure is a one-line :class:`TemplateError` ``file:line: what``."""
        path = self.directory / name
        try:
            tmpl = self.env.get_template(name)
            return tmpl.render(**variables).strip()
        except jinja2.TemplateNotFound as exc:
            if exc.name in (None, name):
                raise TemplateError(f"{path}: template not found") from None
            raise TemplateError(f"{self._where(exc, path)}: template {exc.name!r} not found in {self.directory}") from None
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or str(path)
            raise TemplateError(f"{where}:{exc.lineno}: {_one_line(exc.message or str(exc))}") from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(
                f"{self._where(exc, path)}: {_one_line(exc.message or str(exc))} "
                f"(variables given: {', '.join(sorted(variables))})"
            ) from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"{self._where(exc, path)}: unsafe template operation: {_one_line(str(exc))}") from None
        except jinja2.TemplateError as exc:  # e.g. "No filter named 'x' found."
            raise TemplateError(f"{self._where(exc, path)}: {_one_line(exc.message or str(exc))}") from None
        except RecursionError:
            raise TemplateError(f"{path}: the template recurses too deeply") from None
        except Exception as exc:  # a runtime error in the template's own expressions (1/0, 'a' + 1, ...)
            raise TemplateError(f"{self._where(exc, path)}: {_one_line(str(exc) or 'error')} ({type(exc).__name__})") from None


@dataclass(frozen=True)
class CompiledPrompt:
    """The messages for one item, plus everything needed to validate the answer."""

    messages: list[dict[str, str]]
    schema: dict[str, Any]  # validates the answer
    #: sent to the server as response_format: ``schema`` with violates tied to rule_ids (see
    #: ``constrain_decisions``) when the compiler uses schema limits, else ``schema`` itself
    output_schema: dict[str, Any]
    fingerprint: str
    policies: PolicySet
    item_tokens: int
    kept_tokens: int
    truncated: bool
    prompt_tokens: int = field(default=0)
    #: the random ID of this prompt's content boundary lines (see :func:`boundary_lines`)
    boundary: str = field(default="")
    #: the item text as sent (the kept part when truncated): evidence quotes are grounded in it
    content: str = field(default="")
    #: the compiler asked for evidence quotes (grounded citations)
    evidence: bool = field(default=False)

    @property
    def system(self) -> str:
        return self.messages[0]["content"]

    @property
    def user(self) -> str:
        return self.messages[-1]["content"]


def example_quote(text: str) -> str:
    """The words a solved example quotes as evidence: its first line, cut at a word boundary to
    fit the quote limit (the examples have no finer span to show)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text.strip())
    if len(line) <= MAX_QUOTE_CHARS:
        return line
    cut = line[:MAX_QUOTE_CHARS]
    return cut[: cut.rfind(" ")].rstrip() if " " in cut else cut


def example_answer(policy: Policy, ex: Example, max_steps: int, evidence: bool = False) -> dict[str, Any]:
    """The solved answer of a boundary example, as the assistant turn shows it."""
    violates = ex.decision == "violates"
    rules = [r for r in ex.rule_ids if r in policy.rule_ids]
    excs = [r for r in ex.rule_ids if r in policy.exception_ids]
    if violates:
        meets = EXAMPLE_MEETS.format(ids=", ".join(rules), titles="; ".join(policy.rule(r).title for r in rules))
        exc_step = EXAMPLE_NO_EXCEPTION
    else:
        meets = EXAMPLE_MEETS_NONE
        exc_step = EXAMPLE_EXCEPTION.format(ids=", ".join(excs)) if excs else EXAMPLE_NO_EXCEPTION_NEEDED
    decision_step = EXAMPLE_DECISION[violates]
    if ex.reasoning:
        steps = [s for s in ex.reasoning if not s.lower().startswith("decision")]
        reasoning = [*steps[: max_steps - 1], decision_step]
    else:
        reasoning = [ex.rationale, meets, exc_step, decision_step]
    quotes = {"evidence": [{"id": i, "quote": example_quote(ex.text)} for i in [*rules, *excs]]} if evidence else {}
    return {
        "reasoning": reasoning,
        "decisions": {
            policy.id: {
                "rationale": ex.rationale,
                "rule_ids": rules,
                "exception_ids": excs,
                **quotes,
                "violates": violates,
                "confidence": EXAMPLE_CONFIDENCE,
                **({"escalation_ids": []} if policy.escalation else {}),
            }
        },
    }


class Compiler:
    """Compiles a policy set into prompts; the static prefix is rendered once and reused.

    ``sampling`` is what the caller sends with every request besides the messages (temperature,
    max_tokens, seed, logprobs, votes, response_format ...); it only feeds the fingerprint.
    """

    def __init__(
        self,
        policies: PolicySet,
        *,
        templates: PromptTemplates | None = None,
        max_steps: int = 6,
        max_item_tokens: int = 2000,
        schema_limits: bool = True,
        few_shot: bool = True,
        sampling: Mapping[str, Any] | None = None,
        evidence: bool = False,
        decision_logic: bool = False,
        dynamic_examples: int = 0,
    ) -> None:
        if len(policies) == 0:
            raise InputError("no policies selected")
        if max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if max_item_tokens < 1:
            raise ValueError("max_item_tokens must be >= 1")
        self.policies = policies
        self.templates = templates or PromptTemplates()
        self.max_steps = max_steps
        self.max_item_tokens = max_item_tokens
        self.evidence = evidence
        first = next(iter(policies))
        #: judged by decision logic: one policy with questions, and the option on
        self.logic = decision_logic and len(policies) == 1 and first.has_logic
        if self.logic:
            self.schema = logic_schema(first, limits=schema_limits)
            self.request_schema = logic_request_schema(first, self.schema) if schema_limits else self.schema
        else:
            self.schema = decision_schema(policies, max_steps=max_steps, limits=schema_limits, evidence=evidence)
            # the limits (minItems/maxItems) are what lets the schema tie violates to rule_ids
            self.request_schema = constrain_decisions(self.schema) if schema_limits else self.schema
        self.schema_limits = schema_limits
        # Boundary examples as real user/assistant turns (single-policy prompts only: in a
        # combined prompt an example's label for the other policies is unknown).
        self.few_shot = few_shot and len(policies) == 1
        if dynamic_examples < 0:
            raise ValueError("dynamic_examples must be >= 0")
        #: per item, only this many boundary examples (the most similar to the item) follow the
        #: cached system message; 0 = every example, in the static prefix
        self.dynamic_examples = dynamic_examples if self.few_shot else 0
        self.sampling: dict[str, Any] = dict(sampling or {})

    @cached_property
    def checklist(self) -> list[str]:
        ps = list(self.policies)
        return list(ps[0].checklist) if len(ps) == 1 else list(GENERIC_CHECKLIST)

    @property
    def grounded(self) -> bool:
        """Answers carry quotes that are grounded in the content (evidence on, or decision logic)."""
        return self.evidence or self.logic

    @cached_property
    def system_prompt(self) -> str:
        if self.logic:
            policy = next(iter(self.policies))
            return self._logic_templates.render(
                LOGIC_TEMPLATE,
                policy=policy,
                questions=list(policy.questions),
                max_quote_chars=MAX_ANSWER_QUOTE_CHARS,
            )
        prompt = self.templates.render(
            SYSTEM_TEMPLATE,
            policies=list(self.policies),
            checklist=self.checklist,
            max_steps=self.max_steps,
        )
        if self.evidence:
            prompt += "\n\n" + self._evidence_templates.render(EVIDENCE_TEMPLATE, max_quote_chars=MAX_QUOTE_CHARS)
        return prompt

    @cached_property
    def _evidence_templates(self) -> PromptTemplates:
        """Where ``evidence.j2`` comes from: the prompts directory, else the bundled one (a
        custom prompts directory written before the option existed has none)."""
        if (self.templates.directory / EVIDENCE_TEMPLATE).is_file():
            return self.templates
        return PromptTemplates()

    @cached_property
    def _logic_templates(self) -> PromptTemplates:
        """Where ``logic.system.j2`` comes from: the prompts directory, else the bundled one."""
        if (self.templates.directory / LOGIC_TEMPLATE).is_file():
            return self.templates
        return PromptTemplates()

    @cached_property
    def prefix_messages(self) -> list[dict[str, str]]:
        """Every message before the item (system, few-shot turns): the same for every item."""
        if self.dynamic_examples:
            return [{"role": "system", "content": self.system_prompt}]
        return [{"role": "system", "content": self.system_prompt}, *self.example_turns]

    @cached_property
    def system_tokens(self) -> int:
        return sum(count_tokens(m["content"]) for m in self.prefix_messages)

    @cached_property
    def fingerprint(self) -> str:
        """Stable hash of everything sent besides the item, and of the expected output."""
        blob: dict[str, Any] = {
            "v": FINGERPRINT_VERSION,
            "policies": [[p.id, p.version, p.content_hash()] for p in self.policies],
            "templates": {
                n: hashlib.sha256(self.templates.source(n).encode()).hexdigest()
                for n in (SYSTEM_TEMPLATE, USER_TEMPLATE, REASK_TEMPLATE)
            },
            "prefix": self.prefix_messages,
            **({"example_pool": self.example_turns} if self.dynamic_examples else {}),
            "item": [self._user_message(_PROBE_TEXT, "item", t, _PROBE_BOUNDARY) for t in (False, True)],
            "reask": self.reask_message("<error>", 2, 3),
            "schema": self.schema,
            "request_schema": self.request_schema,
            "settings": {
                "max_steps": self.max_steps,
                "max_item_tokens": self.max_item_tokens,
                "schema_limits": self.schema_limits,
                "few_shot": self.few_shot,
                "token_counter": token_counter_name(),  # decides where long items are cut
                **({"dynamic_examples": self.dynamic_examples} if self.dynamic_examples else {}),
            },
            "sampling": self.sampling,
        }
        if self.evidence:  # only then, so fingerprints with evidence off stay as they were
            blob["templates"][EVIDENCE_TEMPLATE] = hashlib.sha256(
                self._evidence_templates.source(EVIDENCE_TEMPLATE).encode()
            ).hexdigest()
            blob["settings"]["evidence"] = True
        if self.logic:
            blob["templates"][LOGIC_TEMPLATE] = hashlib.sha256(
                self._logic_templates.source(LOGIC_TEMPLATE).encode()
            ).hexdigest()
            blob["settings"]["decision_logic"] = True
        return hash_fingerprint(blob)

    def _user_message(self, text: str, item_id: str, truncated: bool, boundary: str) -> str:
        content_open, content_close = boundary_lines(boundary)
        return self.templates.render(
            USER_TEMPLATE,
            content=text,
            item_id=item_id,
            truncated=truncated,
            boundary=boundary,
            content_open=content_open,
            content_close=content_close,
        )

    @cached_property
    def example_turns(self) -> list[dict[str, str]]:
        """The policy's boundary examples as solved user/assistant turns (static prefix).

        Their content is trusted policy text, so their boundaries are derived from it rather
        than random: the prefix stays byte-identical across items and runs."""
        if not self.few_shot:
            return []
        policy = next(iter(self.policies))
        turns: list[dict[str, str]] = []
        for i, ex in enumerate(policy.examples):
            if self.logic and not ex.answers:
                continue  # an example without answers cannot show the questions being answered
            boundary = content_boundary(ex.text, _derived_draw(ex.text))
            if self.logic:
                answer = example_logic_answer(policy, ex, EXAMPLE_CONFIDENCE)
            elif self.evidence:
                answer = example_answer(policy, ex, self.max_steps, evidence=True)
            else:
                answer = example_answer(policy, ex, self.max_steps)
            turns.append({"role": "user", "content": self._user_message(ex.text, f"example-{i + 1}", False, boundary)})
            turns.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
        return turns

    def compile(self, text: str, *, item_id: str = "item") -> CompiledPrompt:
        """The messages for one item. Each call draws a fresh random content boundary."""
        if not isinstance(text, str):
            raise InputError(f"item {item_id!r}: text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"item {item_id!r}: text is empty")
        kept, n_tokens = truncate_to_tokens(text, self.max_item_tokens)
        truncated = kept != text
        boundary = content_boundary(kept)
        user = self._user_message(kept, item_id, truncated, boundary)
        shown: list[dict[str, str]] = []
        if self.dynamic_examples:
            turns = self.example_turns
            for i in self.nearest_examples(kept):
                shown.extend(turns[2 * i : 2 * i + 2])
        messages = [*self.prefix_messages, *shown, {"role": "user", "content": user}]
        return CompiledPrompt(
            messages=messages,
            schema=self.schema,
            output_schema=self.request_schema,
            fingerprint=self.fingerprint,
            policies=self.policies,
            item_tokens=n_tokens,
            kept_tokens=min(n_tokens, self.max_item_tokens),
            truncated=truncated,
            prompt_tokens=self.system_tokens + sum(count_tokens(m["content"]) for m in shown) + count_tokens(user),
            boundary=boundary,
            content=kept,
            evidence=self.grounded,
        )

    @cached_property
    def _example_index(self) -> tuple[list[int], list[dict[str, float]], list[str], dict[str, float]]:
        """(positions of the examples among the example turns, their TF-IDF vectors, their
        decisions, the idf of every term)."""
        policy = next(iter(self.policies))
        idx = [i for i, ex in enumerate(policy.examples) if not (self.logic and not ex.answers)]
        docs = [_terms(policy.examples[i].text) for i in idx]
        n = len(docs)
        df: dict[str, int] = {}
        for d in docs:
            for t in set(d):
                df[t] = df.get(t, 0) + 1
        idf = {t: math.log((1 + n) / (1 + c)) + 1.0 for t, c in df.items()}
        vecs = [_tfidf(d, idf) for d in docs]
        return list(range(len(idx))), vecs, [policy.examples[i].decision for i in idx], idf

    def nearest_examples(self, text: str) -> list[int]:
        """Positions (in :attr:`example_turns` pairs) of the ``dynamic_examples`` boundary examples
        most similar to ``text``, in their original order: cosine similarity of word and word-pair
        TF-IDF vectors (idf over the examples), ties broken by order. With two or more to show, the
        most similar example of each decision (violates, safe) is always included, so the model
        sees both sides of the boundary."""
        positions, vecs, decisions, idf = self._example_index
        k = min(self.dynamic_examples, len(positions))
        if k == 0:
            return []
        q = _tfidf(_terms(text), idf)
        sims = [_cosine(q, v) for v in vecs]
        ranked = sorted(positions, key=lambda i: (-sims[i], i))
        chosen: list[int] = []
        if k >= 2:
            for side in ("violates", "safe"):
                best = next((i for i in ranked if decisions[i] == side), None)
                if best is not None:
                    chosen.append(best)
        for i in ranked:
            if len(chosen) >= k:
                break
            if i not in chosen:
                chosen.append(i)
        return sorted(chosen[:k])

    def reask_message(self, error: str, attempt: int, max_attempts: int) -> str:
        return self.templates.render(REASK_TEMPLATE, error=error, attempt=attempt, max_attempts=max_attempts)
