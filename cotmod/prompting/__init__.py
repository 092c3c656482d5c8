"""Prompting: policies + item -> chat messages (Jinja), the decision schema, parsing the answer."""

from ._compiler import (
    CompiledPrompt,
    Compiler,
    PromptTemplates,
    boundary_lines,
    content_boundary,
    default_prompts_dir,
)
from ._decision import OutputInvalid, constrain_decisions, decision_schema, parse_decision
from ._tokens import count_tokens, token_counter_name, truncate_to_tokens
from ._triage import (
    TriageAnswer,
    TriageCompiler,
    parse_triage,
    select_by_probability,
    triage_schema,
)

__all__ = [
    "CompiledPrompt",
    "Compiler",
    "OutputInvalid",
    "PromptTemplates",
    "TriageAnswer",
    "TriageCompiler",
    "boundary_lines",
    "constrain_decisions",
    "content_boundary",
    "count_tokens",
    "decision_schema",
    "default_prompts_dir",
    "parse_decision",
    "parse_triage",
    "select_by_probability",
    "token_counter_name",
    "triage_schema",
    "truncate_to_tokens",
]
