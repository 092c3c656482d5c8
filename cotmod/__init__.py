"""cotmod: chain-of-thought content moderation.

Policies (YAML data) compile into Jinja prompts; an OpenAI-compatible LLM reasons step by step and
returns a schema-validated verdict per item.

>>> import cotmod
>>> policies = cotmod.load_policies()          # the starter pack in guidelines/
>>> "hate_speech" in policies
True
"""

from ._client import Backend, ChatRequest, ChatResult, OpenAIBackend
from ._compiler import CompiledPrompt, Compiler, PromptTemplates
from ._config import Settings
from ._engine import AsyncModerator, Item, Moderator
from ._exceptions import (
    AuthenticationError,
    ConfigError,
    CotmodError,
    EndpointUnreachableError,
    InputError,
    LintIssue,
    ModelNotAvailableError,
    ModelOutputError,
    PolicyError,
    RateLimitedError,
    ServerError,
    TemplateError,
    TransportError,
    UserError,
)
from ._lint import LintReport, lint_paths, load_policies
from ._policy import Policy, PolicySet
from ._verdict import PolicyDecision, Usage, Verdict, decision_schema, verdict_json_schema
from ._version import __version__

__all__ = [
    "AsyncModerator",
    "AuthenticationError",
    "Backend",
    "ChatRequest",
    "ChatResult",
    "CompiledPrompt",
    "Compiler",
    "ConfigError",
    "CotmodError",
    "EndpointUnreachableError",
    "InputError",
    "Item",
    "LintIssue",
    "LintReport",
    "ModelNotAvailableError",
    "ModelOutputError",
    "Moderator",
    "OpenAIBackend",
    "Policy",
    "PolicyDecision",
    "PolicyError",
    "PolicySet",
    "PromptTemplates",
    "RateLimitedError",
    "ServerError",
    "Settings",
    "TemplateError",
    "TransportError",
    "Usage",
    "UserError",
    "Verdict",
    "__version__",
    "decision_schema",
    "lint_paths",
    "load_policies",
    "verdict_json_schema",
]
