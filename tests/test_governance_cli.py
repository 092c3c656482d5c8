"""`cotmod diff` and `cotmod impact` in a policy repository: which directory a bare git revision
means (the config's guidelines, or the directory named beside it), what they say on stderr, and
impact's exit code when items were left undecided."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cotmod.cli import cli
from cotmod.testing import FakeOpenAIServer, answer_for

from .conftest import GUIDELINES, VERSIONS

SPAM_V = VERSIONS["spam_scams"]
_major, _minor, _patch = SPAM_V.split(".")
SPAM_PATCH = f"{_major}.{_minor}.{int(_patch) + 1}"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True, capture_output=True)


def edit(f: Path, old: str, new: str) -> None:
    text = f.read_text()
    assert old in text, old
    f.write_text(text.replace(old, new, 1))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A policy repository whose cotmod.toml keeps the policies under pol/ (not guidelines/):
    commit 1 the starter hate_speech and spam_scams, commit 2 a patch of spam_scams."""
    root = tmp_path / "repo"
    (root / "pol").mkdir(parents=True)
    for name in ("hate_speech", "spam_scams"):
        shutil.copy(GUIDELINES / f"{name}.yaml", root / "pol")
    (root / "cotmod.toml").write_text('guidelines = "pol"\n')
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "v1")
    spam = root / "pol" / "spam_scams.yaml"
    edit(spam, f"version: {SPAM_V}", f"version: {SPAM_PATCH}")
    edit(spam, "seek", "look for")
    git(root, "commit", "-qam", "v2")
    return root


def test_diff_bare_revisions_use_the_configs_guidelines(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    r = run("diff", "HEAD~1", "HEAD")
    assert r.exit_code == 0, r.output
    assert f"spam_scams: changed {SPAM_V} -> {SPAM_PATCH}" in r.stdout
    assert "cotmod: using config ./cotmod.toml" in r.stderr
    assert "comparing HEAD~1:pol with HEAD:pol" in r.stderr
    # a bare revision beside a directory means that revision's copy of the directory
    r = run("diff", "HEAD~1", "pol", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["old"] == "HEAD~1:pol" and "comparing HEAD~1:pol with pol" in r.stderr
    # from a subdirectory, with the config named: its guidelines, relative to the repository root
    (repo / "sub").mkdir()
    monkeypatch.chdir(repo / "sub")
    r = run("diff", "HEAD~1", "HEAD", "--config", "../cotmod.toml")
    assert r.exit_code == 0, r.output
    assert "comparing HEAD~1:pol with HEAD:pol" in r.stderr and "using config ../cotmod.toml" in r.stderr


def test_diff_config_guidelines_outside_the_repository_is_one_clear_error(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(repo / "pol", elsewhere)
    (repo / "cotmod.toml").write_text(f'guidelines = "{elsewhere}"\n')
    monkeypatch.chdir(repo)
    r = run("diff", "HEAD~1", "HEAD")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "is not inside the git repository" in r.output and "REV:PATH" in r.output


def test_diff_removed_policy_has_no_dangling_arrow(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        d.mkdir()
        shutil.copy(GUIDELINES / "hate_speech.yaml", d)
    shutil.copy(GUIDELINES / "spam_scams.yaml", old)
    r = run("diff", str(old), str(new))
    assert r.exit_code == 0, r.output
    assert f"spam_scams: removed (was {SPAM_V})" in r.stdout and "->" not in r.stdout
    r = run("diff", str(new), str(old))
    assert f"spam_scams: added ({SPAM_V})" in r.stdout and "->" not in r.stdout


def _golden(tmp_path: Path, texts: list[tuple[str, int]]) -> Path:
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"id": f"g{i}", "text": t, "labels": {"harm": y}}) + "\n" for i, (t, y) in enumerate(texts)))
    (tmp_path / "mapping.yaml").write_text("labels:\n  harm: {policies: [hate_speech, spam_scams]}\n")
    return gold


def _handler(body: dict) -> object:
    if any("BROKEN" in str(m["content"]) for m in body["messages"]):
        return "this is not the JSON the schema asks for"  # every re-ask too: an error verdict
    return answer_for(body)


def test_impact_bare_revision_uses_the_directory_given_and_says_so(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gold = _golden(tmp_path, [("VIOLATE a", 1), ("calm b", 0)])
    monkeypatch.chdir(repo)
    with FakeOpenAIServer(handler=_handler) as srv:
        r = run("impact", "HEAD~1", "pol", "--golden", str(gold), "-o", str(tmp_path / "imp"), "--base-url", srv.base_url, "--model", "m")
    assert r.exit_code == 0, r.output
    assert "cotmod: policies from HEAD~1:pol (old) and pol (new)" in r.stderr
    assert "cotmod: using config ./cotmod.toml" in r.stderr
    assert "changed policies: spam_scams" in r.stdout and "undecided" not in r.stdout


def _two_bundles(tmp_path: Path) -> tuple[Path, Path]:
    """OLD and NEW policy directories (hate_speech, spam_scams); NEW rewords spam_scams with a
    patch bump."""
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        d.mkdir()
        for name in ("hate_speech", "spam_scams"):
            shutil.copy(GUIDELINES / f"{name}.yaml", d)
    edit(new / "spam_scams.yaml", f"version: {SPAM_V}", f"version: {SPAM_PATCH}")
    edit(new / "spam_scams.yaml", "seek", "look for")
    return old, new


def test_impact_with_error_verdicts_names_them_per_side_and_exits_1(tmp_path: Path) -> None:
    old, new = _two_bundles(tmp_path)
    gold = _golden(tmp_path, [("VIOLATE a", 1), ("calm b", 0), ("BROKEN c", 1)])
    sample = tmp_path / "prod.jsonl"
    sample.write_text("".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(["VIOLATE x", "BROKEN y", "calm z"])))
    args = ["impact", str(old), str(new), "--golden", str(gold), "--sample", str(sample), "--base-url", "http://x", "--model", "m"]
    with FakeOpenAIServer(handler=_handler) as srv:
        args[args.index("http://x")] = srv.base_url
        r = run(*args, "-o", str(tmp_path / "imp"))
        rj = run(*args, "-o", str(tmp_path / "imp2"), "--json")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert "undecided golden set: 1 item(s) without a verdict under OLD (1 error verdict(s)), 1 under NEW (1 error verdict(s))" in r.stdout
    assert "undecided production sample: 1 item(s) without a verdict under OLD (1 error verdict(s)), 1 under NEW" in r.stdout
    # model calls are counted honestly: the golden set and the sample, each named
    assert "model calls old/new:" in r.stdout and "(golden set " in r.stdout and ", sample " in r.stdout
    assert rj.exit_code == 1
    data = json.loads(rj.stdout)
    assert data["exit_code"] == 1 and data["undecided"] == 4
    assert data["golden"]["undecided"] == {"old": 1, "new": 1} and data["sample"]["undecided"] == {"old": 1, "new": 1}
    for side in ("old", "new"):
        assert data["model_calls"][side] == data["golden"]["model_calls"][side] + data["sample"]["model_calls"][side]
    assert data["sample"]["model_calls"]["new"] > 0
    assert data["sample"]["items"] == 2  # the items decided on both sides


def test_a_second_impact_into_one_directory_after_another_edit_is_not_refused(tmp_path: Path) -> None:
    """impact's old/ and new/ runs start over on every call (the cache keeps unchanged decisions
    free), like its sample runs: a second impact into the same DIR after the policy changed again
    was refused by the run store ("holds verdicts from a different configuration ... --overwrite",
    an option impact does not have)."""
    old, new = _two_bundles(tmp_path)
    gold = _golden(tmp_path, [("VIOLATE a", 1), ("calm b", 0)])
    with FakeOpenAIServer(handler=_handler) as srv:
        args = ["impact", str(old), str(new), "--golden", str(gold), "-o", str(tmp_path / "imp"), "--base-url", srv.base_url, "--model", "m"]
        first = run(*args)
        assert first.exit_code == 0, first.output
        edit(new / "spam_scams.yaml", "look for", "search for")
        r = run(*args, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["changed_policies"] == ["spam_scams"]
    assert json.loads((tmp_path / "imp" / "new" / "manifest.json").read_text())["complete"] is True
