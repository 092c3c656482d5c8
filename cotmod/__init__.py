"""cotmod: chain-of-thought content moderation.

Policies (YAML data) compile into Jinja prompts; an OpenAI-compatible LLM reasons step by step and
returns a schema-validated verdict per item.

>>> import cotmod
>>> policies = cotmod.load_policies()          # the starter pack in guidelines/
>>> "hate_speech" in policies
True
"""

from ._config import Settings
from ._exceptions import (
    AuthenticationError,
    CircuitOpenError,
    ConfigError,
    CotmodError,
    EndpointUnreachableError,
    InputError,
    LintIssue,
    MalformedResponseError,
    ModelNotAvailableError,
    ModelOutputError,
    PolicyError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TemplateError,
    TransportError,
    UserError,
)
from ._verdict import PolicyDecision, Usage, Verdict, verdict_json_schema
from ._version import __version__
from .backends._openai import Backend, ChatRequest, ChatResult, OpenAIBackend
from .engine._moderator import AsyncModerator, Item, Moderator
from .policy._lint import LintReport, lint_paths, load_policies
from .policy._model import Policy, PolicySet
from .prompting._compiler import CompiledPrompt, Compiler, PromptTemplates
from .prompting._decision import decision_schema

__all__ = [
    "AsyncModerator",
    "AuthenticationError",
    "Backend",
    "ChatRequest",
    "ChatResult",
    "CircuitOpenError",
    "CompiledPrompt",
    "Compiler",
    "ConfigError",
    "CotmodError",
    "EndpointUnreachableError",
    "InputError",
    "Item",
    "LintIssue",
    "LintReport",
    "MalformedResponseError",
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
    "RequestTimeoutError",
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
