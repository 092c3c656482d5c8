"""A custom template that fails while rendering is one TemplateError line: file:line: what."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cotmod import Compiler, PromptTemplates, TemplateError, load_policies
from cotmod._config import default_guidelines_dir
from cotmod.cli import cli

from .conftest import ROOT


@pytest.fixture(scope="module")
def policies():
    return load_policies([default_guidelines_dir()])


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    dest = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", dest)
    return dest


def _append(path: Path, *lines: str) -> int:
    """Append lines to a template; return the (1-based) line number of the first one."""
    text = path.read_text().rstrip("\n")
    path.write_text(text + "\n" + "\n".join(lines) + "\n")
    return text.count("\n") + 2


def _error(policies, prompts: Path, text: str = "hello") -> str:
    comp = Compiler(policies.select(["hate_speech"]), templates=PromptTemplates(prompts))
    with pytest.raises(TemplateError) as info:
        comp.compile(text)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("template", "line", "what"),
    [
        ("moderation.system.j2", "{{ max_steps / 0 }}", "division by zero (ZeroDivisionError)"),
        ("moderation.system.j2", "{% if policies %}{{ max_steps | no_such_filter }}{% endif %}", "No filter named 'no_such_filter'"),
        ("moderation.system.j2", "{{ policies[0].no_such_field }}", "has no attribute 'no_such_field'"),
        ("moderation.system.j2", "{% for p in policies %}{{ p.rules[99] }}{% endfor %}", "has no element 99"),
        ("moderation.user.j2", "{{ content + 1 }}", "TypeError"),
        ("moderation.user.j2", "{{ platform_name }}", "'platform_name' is undefined"),
    ],
)
def test_runtime_error_names_file_line_and_cause(policies, prompts: Path, template: str, line: str, what: str) -> None:
    lineno = _append(prompts / template, "", line)
    message = _error(policies, prompts)
    assert message.startswith(f"{prompts / template}:{lineno + 1}: "), message
    assert what in message


def test_error_in_an_included_template_names_that_file(policies, prompts: Path) -> None:
    (prompts / "footer.j2").write_text("fine\nstill fine\n{{ 1 // 0 }}\n")
    _append(prompts / "moderation.system.j2", '{% include "footer.j2" %}')
    message = _error(policies, prompts)
    assert message.startswith(f"{prompts / 'footer.j2'}:3: ") and "ZeroDivisionError" in message
    (prompts / "moderation.system.j2").write_text('line\n{% include "nowhere.j2" %}\n')
    message = _error(policies, prompts)
    assert message.startswith(f"{prompts / 'moderation.system.j2'}:2: ") and "'nowhere.j2' not found" in message


def test_reask_template_errors_too(policies, prompts: Path) -> None:
    (prompts / "reask.j2").write_text("Your reply was invalid: {{ error }}\n{{ attempt / (max_attempts - max_attempts) }}\n")
    comp = Compiler(policies.select(["hate_speech"]), templates=PromptTemplates(prompts))
    with pytest.raises(TemplateError, match=r"reask\.j2:2: division by zero"):
        comp.reask_message("bad json", 1, 3)


def test_cli_render_reports_one_line_and_exits_2(prompts: Path, tmp_path: Path) -> None:
    lineno = _append(prompts / "moderation.system.j2", "{{ max_steps / 0 }}")
    config = tmp_path / "cotmod.toml"
    config.write_text(f'prompts = "{prompts.as_posix()}"\n')
    result = CliRunner().invoke(cli, ["render", "--config", str(config), "-p", "hate_speech", "hello"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    error_lines = [ln for ln in result.output.splitlines() if "TemplateError" in ln]
    assert len(error_lines) == 1 and f"moderation.system.j2:{lineno}: division by zero" in error_lines[0]
