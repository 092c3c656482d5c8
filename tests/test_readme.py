"""Executed docs: every ```python block of README.md runs, and the two commands at the top are
the ones .ci/run uses."""

from __future__ import annotations

import re

import pytest

import cotmod

from .conftest import ROOT, e2e_model

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_has_the_two_commands_at_the_top() -> None:
    bash = re.findall(r"```bash\n(.*?)```", README, re.S)
    run_cmd, test_cmd = bash[0].strip(), bash[1].strip()
    assert "cotmod moderate" in run_cmd and "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci, "the README's test command must be what .ci/run runs"


@pytest.mark.e2e
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_blocks_run(index: int, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("COTMOD_LOCAL_MODEL", e2e_model())
    namespace: dict[str, object] = {}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    assert capsys.readouterr().out.strip()
    # Every verdict the example produced was decided: an error verdict would print too, so the
    # printed output alone cannot tell a working example from a broken one.
    verdicts = [v for v in namespace.values() if isinstance(v, cotmod.Verdict)]
    assert verdicts, "each README example should leave its verdict in a variable"
    for v in verdicts:
        assert v.status == "ok", f"README block {index} produced an error verdict: {v.error}"
