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
    summaries = [v for v in namespace.values() if isinstance(v, cotmod.RunSummary)]
    assert verdicts or summaries, "each README example should leave its verdict or run summary in a variable"
    for v in verdicts:
        assert v.status == "ok", f"README block {index} produced an error verdict: {v.error}"
    for summary in summaries:
        assert summary.processed > 0 and summary.undecided == 0, summary.to_dict()


def test_readme_public_api_table_is_cotmod_all() -> None:
    """The README's public-API table names exactly what ``import cotmod`` exports."""
    section = README.split("**The public API**", 1)[1]
    start = section.index("| for | names |")
    rows = []
    for line in section[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[2])  # the names column
    named = set(re.findall(r"`([A-Za-z_]+)`", "\n".join(rows)))
    exported = set(cotmod.__all__) - {"__version__"}
    assert exported - named == set(), "exported but not in the README table"
    assert named - exported == set(), "in the README table but not exported"


def test_formats_settings_table_is_every_setting() -> None:
    """docs/formats.md's cotmod.toml table names every ``Settings`` field and config-only key
    (eight settings were missing from it once), and nothing else."""
    from cotmod._config import CONFIG_ONLY_KEYS, Settings

    doc = (ROOT / "docs" / "formats.md").read_text()
    section = doc.split("Keys (`Settings` in `cotmod/_config.py`):", 1)[1]
    start = section.index("| key | type | default |")
    keys = []
    for line in section[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        keys.append(line.split("|")[1].strip().strip("`"))
    assert set(keys) == set(Settings.model_fields) | set(CONFIG_ONLY_KEYS)
    assert len(keys) == len(set(keys))
