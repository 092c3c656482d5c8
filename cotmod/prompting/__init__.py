"""Prompting: policies + item -> chat messages (Jinja), the decision schema, parsing the answer."""

from ._compiler import CompiledPrompt, Compiler, PromptTemplates, default_prompts_dir
from ._decision import OutputInvalid, constrain_decisions, decision_schema, parse_decision
from ._tokens import count_tokens, token_counter_name, truncate_to_tokens

__all__ = [
    "CompiledPrompt",
    "Compiler",
    "OutputInvalid",
    "PromptTemplates",
    "constrain_decisions",
    "count_tokens",
    "decision_schema",
    "default_prompts_dir",
    "parse_decision",
    "token_counter_name",
    "truncate_to_tokens",
]
