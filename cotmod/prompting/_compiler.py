"""Compile policies + an item into chat messages through Jinja templates in ``prompts/``.

* Jinja runs in a ``SandboxedEnvironment`` with ``StrictUndefined``: a template that uses a
  variable it is not given fails with :class:`TemplateError` naming the template and variable.
* The static part (instructions, policies, examples, output format) is the system message and
  comes first; the item text comes last in the user message, so servers reuse their prompt cache.
* User content is only ever a template *variable*: it is never parsed as template source, so
  ``{{ 7*7 }}`` in a post reaches the model verbatim. The content delimiters are escaped inside
  the content, so a post cannot close the data block and speak as the instructions.
* Every compiled prompt has a stable ``fingerprint``: a hash of the policies' content and versions,
  the template sources and the settings that shape the prompt and schema. It is the same for every
  item, goes into every verdict, and changes whenever a rule, template or setting changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from .._exceptions import InputError, TemplateError
from ..policy._model import PolicySet, bundled_dir
from ._decision import constrain_decisions, decision_schema
from ._tokens import count_tokens, truncate_to_tokens

__all__ = ["CompiledPrompt", "Compiler", "PromptTemplates", "default_prompts_dir"]

CONTENT_OPEN = "<<<CONTENT>>>"
CONTENT_CLOSE = "<<<END CONTENT>>>"
SYSTEM_TEMPLATE = "moderation.system.j2"
USER_TEMPLATE = "moderation.user.j2"
REASK_TEMPLATE = "reask.j2"
GENERIC_CHECKLIST = (
    "Say briefly what the content is and what it does (asks, states, quotes, reports, jokes).",
    "For each policy, name any VIOLATES rule the content meets, or say none does.",
    "Check whether a SAFE exception applies.",
    "Decide each policy from the cited rules.",
)
FINGERPRINT_VERSION = "2"  # 2: violates tied to rule_ids in the request schema


def default_prompts_dir() -> Path:
    return bundled_dir("prompts")


def escape_content(text: str) -> str:
    """Neutralise the data delimiters inside user content (everything else stays verbatim)."""
    return text.replace("<<<", "<\u200b<<").replace(">>>", ">>\u200b>")


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
            raise TemplateError(f"{self.directory / name}:{exc.lineno}: {exc.message}") from None
        return set(meta.find_undeclared_variables(ast))

    def render(self, name: str, **variables: Any) -> str:
        path = self.directory / name
        try:
            tmpl = self.env.get_template(name)
            return tmpl.render(**variables).strip()
        except jinja2.TemplateNotFound:
            raise TemplateError(f"{path}: template not found") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{path}:{exc.lineno}: {exc.message}") from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(
                f"{path}: {exc.message} (variables given: {', '.join(sorted(variables))})"
            ) from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"{path}: unsafe template operation: {exc}") from None


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

    @property
    def system(self) -> str:
        return self.messages[0]["content"]

    @property
    def user(self) -> str:
        return self.messages[-1]["content"]


class Compiler:
    """Compiles a policy set into prompts; the static part is rendered once and reused."""

    def __init__(
        self,
        policies: PolicySet,
        *,
        templates: PromptTemplates | None = None,
        max_steps: int = 6,
        max_item_tokens: int = 2000,
        schema_limits: bool = True,
        few_shot: bool = True,
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
        self.schema = decision_schema(policies, max_steps=max_steps, limits=schema_limits)
        # the limits (minItems/maxItems) are what lets the schema tie violates to rule_ids
        self.request_schema = constrain_decisions(self.schema) if schema_limits else self.schema
        self.schema_limits = schema_limits
        # Boundary examples as real user/assistant turns (single-policy prompts only: in a
        # combined prompt an example's label for the other policies is unknown).
        self.few_shot = few_shot and len(policies) == 1

    @cached_property
    def checklist(self) -> list[str]:
        ps = list(self.policies)
        return list(ps[0].checklist) if len(ps) == 1 else list(GENERIC_CHECKLIST)

    @cached_property
    def system_prompt(self) -> str:
        return self.templates.render(
            SYSTEM_TEMPLATE,
            policies=list(self.policies),
            checklist=self.checklist,
            max_steps=self.max_steps,
            content_open=CONTENT_OPEN,
            content_close=CONTENT_CLOSE,
        )

    @cached_property
    def system_tokens(self) -> int:
        return count_tokens(self.system_prompt) + sum(count_tokens(m["content"]) for m in self.example_turns)

    @cached_property
    def fingerprint(self) -> str:
        """Stable hash of everything that shapes the prompt and the expected output."""
        h = hashlib.sha256()
        blob = {
            "v": FINGERPRINT_VERSION,
            "policies": [[p.id, p.version, p.content_hash()] for p in self.policies],
            "templates": {
                n: hashlib.sha256(self.templates.source(n).encode()).hexdigest()
                for n in (SYSTEM_TEMPLATE, USER_TEMPLATE, REASK_TEMPLATE)
            },
            "settings": {
                "max_steps": self.max_steps,
                "max_item_tokens": self.max_item_tokens,
                "schema_limits": self.schema_limits,
                "few_shot": self.few_shot,
            },
        }
        h.update(json.dumps(blob, sort_keys=True).encode())
        return "fp-" + h.hexdigest()[:16]

    def _user_message(self, text: str, item_id: str, truncated: bool) -> str:
        return self.templates.render(
            USER_TEMPLATE,
            content=escape_content(text),
            item_id=item_id,
            truncated=truncated,
            content_open=CONTENT_OPEN,
            content_close=CONTENT_CLOSE,
        )

    @cached_property
    def example_turns(self) -> list[dict[str, str]]:
        """The policy's boundary examples as solved user/assistant turns (static prefix)."""
        if not self.few_shot:
            return []
        policy = next(iter(self.policies))
        turns: list[dict[str, str]] = []
        for i, ex in enumerate(policy.examples):
            violates = ex.decision == "violates"
            rules = [r for r in ex.rule_ids if r in policy.rule_ids]
            excs = [r for r in ex.rule_ids if r in policy.exception_ids]
            if violates:
                meets = f"It meets {', '.join(rules)}: " + "; ".join(policy.rule(r).title for r in rules) + "."
                exc_step = "No SAFE exception applies."
            else:
                meets = "It does not meet any VIOLATES rule."
                exc_step = (f"SAFE exception {', '.join(excs)} applies." if excs else "No exception is needed.")
            decision_step = "Decision: " + ("VIOLATES." if violates else "SAFE.")
            if ex.reasoning:
                steps = [s for s in ex.reasoning if not s.lower().startswith("decision")]
                reasoning = [*steps[: self.max_steps - 1], decision_step]
            else:
                reasoning = [ex.rationale, meets, exc_step, decision_step]
            answer: dict[str, Any] = {
                "reasoning": reasoning,
                "decisions": {
                    policy.id: {
                        "rationale": ex.rationale,
                        "rule_ids": rules,
                        "exception_ids": excs,
                        "violates": violates,
                        "confidence": 0.9,
                        **({"escalation_ids": []} if policy.escalation else {}),
                    }
                },
            }
            turns.append({"role": "user", "content": self._user_message(ex.text, f"example-{i + 1}", False)})
            turns.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
        return turns

    def compile(self, text: str, *, item_id: str = "item") -> CompiledPrompt:
        if not isinstance(text, str):
            raise InputError(f"item {item_id!r}: text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"item {item_id!r}: text is empty")
        kept, n_tokens = truncate_to_tokens(text, self.max_item_tokens)
        truncated = kept != text
        user = self._user_message(kept, item_id, truncated)
        messages = [
            {"role": "system", "content": self.system_prompt},
            *self.example_turns,
            {"role": "user", "content": user},
        ]
        return CompiledPrompt(
            messages=messages,
            schema=self.schema,
            output_schema=self.request_schema,
            fingerprint=self.fingerprint,
            policies=self.policies,
            item_tokens=n_tokens,
            kept_tokens=min(n_tokens, self.max_item_tokens),
            truncated=truncated,
            prompt_tokens=self.system_tokens + count_tokens(user),
        )

    def reask_message(self, error: str, attempt: int, max_attempts: int) -> str:
        return self.templates.render(REASK_TEMPLATE, error=error, attempt=attempt, max_attempts=max_attempts)
