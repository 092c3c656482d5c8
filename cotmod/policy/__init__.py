"""Policies as data: the policy model, loading and linting guideline files."""

from ._lint import LintReport, lint_paths, load_policies, load_policy_file
from ._model import ACTIONS, Policy, PolicySet, policy_json_schema

__all__ = ["ACTIONS", "LintReport", "Policy", "PolicySet", "lint_paths", "load_policies", "load_policy_file", "policy_json_schema"]
