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
    CotmodWarning,
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
from ._verdict import (
    Answer,
    DroppedCitation,
    ErrorInfo,
    Evidence,
    PolicyDecision,
    Triage,
    Usage,
    Verdict,
    verdict_json_schema,
)
from ._version import __version__
from .backends import Backend, ChatRequest, ChatResult, LimitedBackend, OpenAIBackend
from .batch import Runner, RunSummary, read_items
from .engine import AsyncModerator, Item, MemoryCache, Moderator, SqliteCache
from .evals import (
    Comparison,
    EvalResult,
    LabelMetrics,
    Thresholds,
    compare,
    compute_metrics,
    load_golden,
    load_mapping,
    run_eval,
    tune,
)
from .policy import LintReport, Policy, PolicySet, lint_paths, load_policies
from .prompting import CompiledPrompt, Compiler, PromptTemplates, decision_schema

__all__ = [  # noqa: RUF022  (grouped by purpose, as in the README)
    # moderate
    "AsyncModerator",
    "Item",
    "Moderator",
    "Settings",
    "Verdict",
    "PolicyDecision",
    "Evidence",
    "DroppedCitation",
    "Answer",
    "Triage",
    "ErrorInfo",
    "Usage",
    "verdict_json_schema",
    # policies and prompts
    "Policy",
    "PolicySet",
    "load_policies",
    "lint_paths",
    "LintReport",
    "LintIssue",
    "Compiler",
    "CompiledPrompt",
    "PromptTemplates",
    "decision_schema",
    # backends and caches
    "Backend",
    "OpenAIBackend",
    "ChatRequest",
    "ChatResult",
    "LimitedBackend",
    "SqliteCache",
    "MemoryCache",
    # at scale
    "Runner",
    "RunSummary",
    "read_items",
    # evals
    "run_eval",
    "compute_metrics",
    "EvalResult",
    "LabelMetrics",
    "tune",
    "Thresholds",
    "compare",
    "Comparison",
    "load_golden",
    "load_mapping",
    # errors
    "CotmodError",
    "CotmodWarning",
    "UserError",
    "PolicyError",
    "TemplateError",
    "ConfigError",
    "InputError",
    "ModelNotAvailableError",
    "TransportError",
    "EndpointUnreachableError",
    "RequestTimeoutError",
    "AuthenticationError",
    "RateLimitedError",
    "ServerError",
    "MalformedResponseError",
    "CircuitOpenError",
    "ModelOutputError",
    "__version__",
]
