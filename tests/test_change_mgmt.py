from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cotmod import AsyncModerator, InputError, load_policies
from cotmod._config import Settings
from cotmod.cli import cli
from cotmod.engine._cache import MemoryCache
from cotmod.governance._diff import diff_policies, load_bundle
from cotmod.governance._guide import guide_fingerprint, guide_html, guide_markdown
from cotmod.governance._impact import impact
from cotmod.governance._sync import check_manifest, update_manifest
from cotmod.testing import FakeBackend, decision, offered_rule_ids

from .conftest import GUIDELINES, HATE_V, VERSIONS

_major, _minor, _ = HATE_V.split(".")
MINOR_UP = f"{_major}.{int(_minor) + 1}.0"  # a minor bump of the shipped hate_speech version


def edit(d: Path, name: str, old: str, new: str, count: int = 1) -> None:
    f = d / f"{name}.yaml"
    text = f.read_text()
    assert old in text, old
    f.write_text(text.replace(old, new, count))


def kinds(diffs, pid="hate_speech") -> list[str]:
    return sorted(c.kind for d in diffs if d.policy_id == pid for c in d.changes)


def test_diff_each_change_kind_and_version_rules(policy_dir: Path) -> None:
    old = load_policies([GUIDELINES])
    edit(policy_dir, "hate_speech", f"version: {HATE_V}", "version: 9.0.0")
    edit(policy_dir, "hate_speech", "denies their humanity", "denies that they are human")  # reworded
    edit(
        policy_dir,
        "hate_speech",
        "    severity: medium\n    when: {target: protected_group, attack: inferiority}\n  - id: HATE-4",
        "    severity: high\n    when: {target: protected_group, attack: inferiority}\n  - id: HATE-4",
    )  # HATE-3 stricter
    edit(policy_dir, "hate_speech", "HATE-S5", "HATE-S6", -1)  # exception removed + added
    edit(policy_dir, "hate_speech", "    action: limit_reach", "    action: remove")  # tier action stricter
    edit(policy_dir, "hate_speech", "    queue: hate-speech-specialists", "    queue: hate-review")  # escalation changed
    edit(policy_dir, "hate_speech", "disability or serious disease", "disability, age or serious disease")  # definition
    edit(policy_dir, "hate_speech", "I think the doctrine", "I really think the doctrine")  # example removed+added
    edit(policy_dir, "hate_speech", "  - Decide. Cite only", "  - Decide carefully. Cite only")  # checklist
    diffs = diff_policies(old, load_policies([policy_dir]))
    assert sorted(set(kinds(diffs))) == sorted([
        "rule.reworded", "rule.severity_changed", "exception.removed", "exception.added",
        "severity.action_changed", "escalation.changed", "definition.changed",
        "example.removed", "example.added", "example.changed", "checklist.changed",
    ])
    hate = next(d for d in diffs if d.policy_id == "hate_speech")
    assert hate.required_bump == "major" and hate.errors == []  # 9.0.0 is a major bump
    assert all(d.status == "unchanged" for d in diffs if d.policy_id != "hate_speech")


def test_diff_sees_decision_logic_changes(policy_dir: Path) -> None:
    """A changed question, allowed answer or `when` changes what the engine derives (and the
    fingerprint): it is a change that needs a version bump, not "no changes"."""
    old = load_policies([GUIDELINES])
    edit(policy_dir, "hate_speech", "Whose view is that attack?", "Whose opinion is that attack?")
    edit(policy_dir, "hate_speech", "when: {target: protected_group, attack: slur}", "when: {target: protected_group, attack: [slur, contempt]}")
    edit(policy_dir, "hate_speech", "when: {voice: reports}", "when: {voice: [reports, reclaims]}")
    edit(policy_dir, "hate_speech", "deported, or kept from jobs", "deported, or barred from jobs")
    diffs = diff_policies(old, load_policies([policy_dir]))
    assert kinds(diffs) == ["exception.when_changed", "question.answers_reworded", "question.reworded", "rule.when_changed"]
    hate = next(d for d in diffs if d.policy_id == "hate_speech")
    assert hate.required_bump == "minor"
    assert hate.errors == [f"hate_speech: content changed but version is still {HATE_V} (needs a minor bump)"]
    r = CliRunner().invoke(cli, ["diff", str(GUIDELINES), str(policy_dir)])
    assert r.exit_code == 1 and "rule.when_changed" in r.output


def test_diff_weighs_order_and_equivalent_when() -> None:
    """Reordering changes the prompt and fingerprint but not what the policy decides: a patch,
    never "unchanged"; a `when` written another way with the same meaning is not a when change;
    a version bump alone is no content change."""
    from cotmod.policy import PolicySet

    hate = load_policies([GUIDELINES])["hate_speech"]
    base = PolicySet([hate])

    def changes(**update: Any) -> list[tuple[str, str]]:
        return [(c.kind, c.needs) for d in diff_policies(base, PolicySet([hate.model_copy(update=update)])) for c in d.changes]

    assert changes(version="9.0.0") == []
    assert changes(questions=list(reversed(hate.questions))) == [("content.changed", "patch")]
    assert changes(severities=list(reversed(hate.severities))) == [("content.changed", "patch")]
    q = hate.questions[0]
    assert changes(questions=[q.model_copy(update={"answers": list(reversed(q.answers))}), *hate.questions[1:]]) == [
        ("question.answers_reworded", "patch")
    ]
    fewer = q.model_copy(update={"answers": q.answers[:-1]})
    assert changes(questions=[fewer, *hate.questions[1:]]) == [("question.answers_changed", "minor")]
    rule = next(r for r in hate.rules if r.when)
    as_lists = {k: [v] if isinstance(v, str) else list(reversed(v)) for k, v in rule.when.items()}
    same = [rule.model_copy(update={"when": as_lists}) if r is rule else r for r in hate.rules]
    assert ("rule.when_changed", "minor") not in changes(rules=same)


def test_version_bump_errors(policy_dir: Path) -> None:
    old = load_policies([GUIDELINES])
    edit(policy_dir, "spam_scams", "version: 1.1.0", "version: 1.1.1")
    f = policy_dir / "spam_scams.yaml"
    data = yaml.safe_load(f.read_text())
    removed = data["rules"].pop()["id"]  # a removed rule needs a major bump
    data["examples"] = [e for e in data["examples"] if removed not in e["rule_ids"]]
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    edit(policy_dir, "self_harm", "seek", "look for")  # content change, version unchanged
    new = load_policies([policy_dir])
    diffs = {d.policy_id: d for d in diff_policies(old, new)}
    assert any("needs major" in e for e in diffs["spam_scams"].errors)
    assert any(f"version is still {VERSIONS['self_harm']}" in e for e in diffs["self_harm"].errors)
    r = CliRunner().invoke(cli, ["diff", str(GUIDELINES), str(policy_dir)])
    assert r.exit_code == 1 and "rule.removed" in r.output and "needs major" in r.output


def test_a_version_that_goes_down_is_an_error_even_without_content_change(policy_dir: Path) -> None:
    spam_v = VERSIONS["spam_scams"]
    major, minor, patch = (int(x) for x in spam_v.split("."))
    lower = f"{major}.{minor - 1}.0" if minor else f"{major - 1}.9.0" if major else f"0.0.{patch - 1}"
    edit(policy_dir, "spam_scams", f"version: {spam_v}", f"version: {lower}")  # nothing else changed
    d = {x.policy_id: x for x in diff_policies(load_policies([GUIDELINES]), load_policies([policy_dir]))}["spam_scams"]
    assert d.changes == [] and d.errors == [f"spam_scams: version went from {spam_v} to {lower} (must increase)"]
    r = CliRunner().invoke(cli, ["diff", str(GUIDELINES), str(policy_dir)])
    assert r.exit_code == 1 and "must increase" in r.output


def test_diff_git_revisions_and_bad_revision(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "guidelines").mkdir(parents=True)
    src = (GUIDELINES / "hate_speech.yaml").read_text()
    (repo / "guidelines" / "hate_speech.yaml").write_text(src)
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    (repo / "guidelines" / "hate_speech.yaml").write_text(src.replace(f"version: {HATE_V}", f"version: {MINOR_UP}").replace("HATE-S5", "HATE-S9"))
    subprocess.run([*git, "commit", "-qam", "v2"], check=True)
    a, la = load_bundle("HEAD~1", repo=repo)
    b, lb = load_bundle("HEAD", repo=repo)
    assert lb == "HEAD:guidelines"
    assert la == "HEAD~1:guidelines"
    d = diff_policies(a, b)[0]
    assert {c.kind for c in d.changes} == {"exception.removed", "exception.added", "example.changed"}
    assert any("needs major" in e for e in d.errors)  # removing an exception needs major
    r = CliRunner().invoke(cli, ["diff", "HEAD~1", "HEAD", "--repo", str(repo), "--format", "markdown"])
    assert f"## hate_speech: {HATE_V} → {MINOR_UP}" in r.output and "exception.removed" in r.output
    with pytest.raises(InputError, match="neither a directory nor a git revision"):
        load_bundle("no-such-rev", repo=repo)


def test_guide_contains_every_rule_and_example() -> None:
    ps = load_policies([GUIDELINES])
    md, page = guide_markdown(ps), guide_html(ps)
    for p in ps:
        for r in p.rules:
            assert r.id in md and r.description in md and r.id in page
        for e in p.exceptions:
            assert e.id in md
        for ex in p.examples:
            assert ex.text in md
            for step in ex.reasoning or []:  # reviewers see the same worked steps as the model
                assert step in md and html.escape(step) in page
        if p.questions:  # decision logic: the questions and answer table are the decision flow
            for q in p.questions:
                assert q.ask in md and html.escape(q.ask) in page
                for a in q.answers:
                    assert f"`{a.value}`: {a.meaning}" in md
        else:
            for step in p.checklist:
                assert step in md
        assert f"{p.id}` v{p.version}" in md
    assert guide_fingerprint(ps) in md and guide_fingerprint(ps) in page
    r = CliRunner().invoke(cli, ["guide", "export", "--format", "html", "-p", "self_harm"])
    assert r.exit_code == 0 and "<html" in r.output and "SH-1" in r.output and "HATE-1" not in r.output


def make_manifest(tmp_path: Path, policy_dir: Path) -> tuple[Path, AsyncModerator]:
    mod = AsyncModerator(policy_dir, backend=FakeBackend())
    m = tmp_path / "enforcement.yaml"
    m.write_text(yaml.safe_dump({"guide": {"path": "guide.md"}, "policies": {}}))
    done, remaining = update_manifest(m, mod)
    assert any(d.startswith("guide: exported") for d in done)
    # every escalating tier needs a queue chosen by a human
    assert remaining and all(f.fix == "human" for f in remaining)
    data = yaml.safe_load(m.read_text())
    for pid, spec in data["policies"].items():
        for tier in mod.policies[pid].severities:
            if tier.escalate:
                spec["escalation"].append({"severity": tier.id, "queue": f"{pid}-urgent", "sla_hours": 1})
    (tmp_path / "th.yaml").write_text(yaml.safe_dump({"policies": {"hate_speech": HATE_V}, "thresholds": {"hate_speech": {"review": 0.5}}}))
    data["policies"]["hate_speech"]["classifier"] = {"label_map": {"hateful": "hate_speech"}, "thresholds": "th.yaml"}
    m.write_text(yaml.safe_dump(data, sort_keys=False))
    assert check_manifest(m, mod) == []
    return m, mod


def test_sync_check_catches_each_stale_pathway(tmp_path: Path, policy_dir: Path) -> None:
    m, _ = make_manifest(tmp_path, policy_dir)
    r = CliRunner().invoke(cli, ["sync", "check", str(m), "-g", str(policy_dir)])
    assert r.exit_code == 0 and "in sync" in r.output
    # change hate_speech: new version, reworded rule, tier renamed, a criterion removed
    edit(policy_dir, "hate_speech", f"version: {HATE_V}", "version: 9.0.0")
    edit(policy_dir, "hate_speech", "denies their humanity", "denies that they are human")
    f = policy_dir / "hate_speech.yaml"
    data = yaml.safe_load(f.read_text())
    data["escalation"] = data["escalation"][:1]
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    mod = AsyncModerator(policy_dir, backend=FakeBackend())
    found = {(x.policy, x.pathway, x.fix) for x in check_manifest(m, mod)}
    assert ("hate_speech", "version", "auto") in found
    assert ("hate_speech", "llm", "auto") in found
    assert ("hate_speech", "classifier", "human") in found  # thresholds tuned for the old version
    assert ("hate_speech", "escalation", "auto") in found  # route of the removed HATE-X2
    assert ("*", "guide", "auto") in found
    r = CliRunner().invoke(cli, ["sync", "check", str(m), "-g", str(policy_dir), "--json"])
    assert r.exit_code == 1 and {x["pathway"] for x in json.loads(r.stdout)} >= {"version", "llm", "classifier", "guide", "escalation"}
    r = CliRunner().invoke(cli, ["sync", "update", str(m), "-g", str(policy_dir)])
    assert r.exit_code == 1  # thresholds still need a human
    assert f"version {HATE_V} -> 9.0.0" in r.output and "needs a human" in r.output and "re-run cotmod eval" in r.output
    left = check_manifest(m, mod)
    assert [(x.pathway, x.fix) for x in left] == [("classifier", "human")]
    assert "denies that they are human" in (tmp_path / "guide.md").read_text()


def test_manifest_errors(tmp_path: Path, policy_dir: Path) -> None:
    m, mod = make_manifest(tmp_path, policy_dir)
    data = yaml.safe_load(m.read_text())
    data["policies"]["no_such_policy"] = {"version": "1.0.0"}
    data["policies"]["hate_speech"]["classifier"]["thresholds"] = "missing.yaml"
    m.write_text(yaml.safe_dump(data))
    found = {(x.policy, x.field) for x in check_manifest(m, mod)}
    assert ("no_such_policy", "policies.no_such_policy") in found
    assert ("hate_speech", "policies.hate_speech.classifier.thresholds") in found
    with pytest.raises(InputError, match="not found"):
        check_manifest(tmp_path / "nope.yaml", mod)


@pytest.mark.parametrize(
    ("edit_manifest", "message"),
    [
        (lambda d: d["policies"].update(hate_speech="1.2.0"), r"policies\.hate_speech: expected a mapping"),
        (lambda d: d["policies"]["hate_speech"].update(llm=True), r"policies\.hate_speech\.llm: expected a mapping .* got True"),
        (lambda d: d["policies"]["hate_speech"].update(classifier="thr.yaml"), r"policies\.hate_speech\.classifier: expected a mapping"),
        (lambda d: d["policies"]["hate_speech"]["classifier"].update(label_map=["a", "b"]), r"classifier\.label_map: expected a mapping"),
        (lambda d: d["policies"]["hate_speech"]["classifier"].update(thresholds=5), r"classifier\.thresholds: expected a file path, got 5"),
        (lambda d: d.update(guide="docs/x.md"), r"guide: expected a mapping"),
        (lambda d: d.update(guide={"path": 5}), r"guide\.path: expected a string, got 5"),
    ],
)
def test_a_manifest_entry_of_the_wrong_type_is_one_clear_error(
    tmp_path: Path, policy_dir: Path, edit_manifest: Any, message: str
) -> None:
    """Hand edits of the wrong type name the manifest and the field, in check and update alike
    (they used to crash with AttributeError / TypeError), and the CLI exits 2 without a traceback."""
    m, mod = make_manifest(tmp_path, policy_dir)
    data = yaml.safe_load(m.read_text())
    edit_manifest(data)
    m.write_text(yaml.safe_dump(data))
    for run in (lambda: check_manifest(m, mod), lambda: update_manifest(m, mod)):
        with pytest.raises(InputError, match=message) as info:
            run()
        assert str(info.value).startswith(str(m))
    res = CliRunner().invoke(cli, ["sync", "check", str(m), "-g", str(policy_dir)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert re.search(message, res.output)


@pytest.mark.parametrize(
    ("edit_manifest", "message"),
    [
        (lambda d: d["policies"]["hate_speech"].update(bogus=1), r":\d+: policies\.hate_speech: unknown key 'bogus' \(known: version, llm, classifier, escalation\)"),
        (lambda d: d["policies"]["spam_scams"].update(escalaton=[]), r":\d+: policies\.spam_scams: unknown key 'escalaton' .*did you mean 'escalation'"),
        (lambda d: d.update(polices={}), r":\d+: unknown key 'polices' \(known: guide, policies\)"),
        (lambda d: d["guide"].update(pth="x.md"), r":\d+: guide: unknown key 'pth'"),
        (lambda d: d["policies"]["hate_speech"]["llm"].update(fingerprnt="fp-1"), r":\d+: policies\.hate_speech\.llm: unknown key 'fingerprnt'"),
        (lambda d: d["policies"]["hate_speech"]["classifier"].update(treshold="t.yaml"), r":\d+: policies\.hate_speech\.classifier: unknown key 'treshold'"),
        (lambda d: d["policies"]["hate_speech"]["escalation"][0].update(que="q"), r":\d+: policies\.hate_speech\.escalation\[0\]: unknown key 'que'"),
    ],
)
def test_an_unknown_manifest_key_is_an_error_naming_file_line_and_key(
    tmp_path: Path, policy_dir: Path, edit_manifest: Any, message: str
) -> None:
    """enforcement.yaml is a closed format (docs/formats.md section 7): a typo is not ignored."""
    m, mod = make_manifest(tmp_path, policy_dir)
    data = yaml.safe_load(m.read_text())
    edit_manifest(data)
    m.write_text(yaml.safe_dump(data, sort_keys=False))
    for run in (lambda: check_manifest(m, mod), lambda: update_manifest(m, mod)):
        with pytest.raises(InputError, match=message) as info:
            run()
        line = int(str(info.value).removeprefix(f"{m}:").split(":", 1)[0])
        key = re.search(r"unknown key '(\w+)'", str(info.value)).group(1)
        assert m.read_text().splitlines()[line - 1].lstrip(" -").startswith(f"{key}:")
    res = CliRunner().invoke(cli, ["sync", "check", str(m), "-g", str(policy_dir)])
    assert res.exit_code == 2 and "Traceback" not in res.output and re.search(message, res.output)


def test_impact_recomputes_only_changed_policies(tmp_path: Path, policy_dir: Path) -> None:
    gold = tmp_path / "gold.jsonl"
    rows = [("VIOLATE a", 1), ("calm b", 0), ("borderline c", 1), ("VIOLATE d", 0)]
    gold.write_text("".join(json.dumps({"id": f"g{i}", "text": t, "labels": {"harm": y}}) + "\n" for i, (t, y) in enumerate(rows)))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("labels:\n  harm: {policies: [hate_speech, spam_scams]}\n")
    old = load_policies([policy_dir])
    edit(policy_dir, "hate_speech", f"version: {HATE_V}", "version: 9.1.0")
    edit(policy_dir, "hate_speech", "HATE-7", "HATE-8", -1)
    new = load_policies([policy_dir])

    def respond(req):
        pid = next(iter(req.schema["properties"]["decisions"]["properties"]))
        text = req.messages[-1]["content"]
        newer = "HATE-8" in offered_rule_ids(req.schema, pid)
        hit = "VIOLATE" in text or (newer and "borderline" in text)
        rule = {"hate_speech": "HATE-1", "spam_scams": "SCAM-1"}[pid]
        return decision({pid: [rule] if hit and (pid == "hate_speech" or "VIOLATE" in text) else []})

    fake = FakeBackend(default=respond)
    sample = tmp_path / "prod.jsonl"
    sample.write_text(json.dumps({"id": "s1", "text": "borderline post"}) + "\n" + json.dumps({"id": "s2", "text": "calm"}) + "\n")
    res = impact(old, new, settings=Settings(decision_logic=False), cache=MemoryCache(), golden=gold, mapping=mapping, work_dir=tmp_path / "imp", sample=sample, backend=fake)
    assert res["changed_policies"] == ["hate_speech"]
    calls = res["golden"]["model_calls"]
    assert calls["old"] == 8 and calls["new"] == 4  # spam_scams came from the cache
    cmp = res["golden"]["comparison"]["labels"]["harm"]
    assert [f["id"] for f in cmp["flipped"]] == ["g2"] and cmp["flipped"][0]["new_rules"] == ["HATE-1"]
    assert cmp["metrics"]["recall"]["delta"] == pytest.approx(0.5)
    assert [(f["id"], f["before"], f["after"]) for f in res["sample"]["flipped"]] == [("s1", False, True)]


def test_broken_yaml_files_are_clear_errors(tmp_path: Path, policy_dir: Path) -> None:
    from cotmod.engine._thresholds import load_thresholds
    from cotmod.evals._golden import load_mapping

    m, mod = make_manifest(tmp_path, policy_dir)
    (tmp_path / "th.yaml").write_text("thresholds: [unclosed\n")
    with pytest.raises(InputError, match=r"th\.yaml:2: invalid YAML"):
        check_manifest(m, mod)
    with pytest.raises(InputError, match=r"th\.yaml:2: invalid YAML"):
        load_thresholds(tmp_path / "th.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(InputError, match="expected a mapping at the top level of the label mapping"):
        load_mapping(tmp_path / "list.yaml")
    with pytest.raises(InputError, match="thresholds file not found"):
        load_thresholds(tmp_path / "nope.yaml")


def test_sync_policy_option_restricts_check_and_update(tmp_path: Path, policy_dir: Path) -> None:
    m, _ = make_manifest(tmp_path, policy_dir)
    edit(policy_dir, "hate_speech", f"version: {HATE_V}", "version: 9.0.0")
    edit(policy_dir, "hate_speech", "denies their humanity", "denies that they are human")
    edit(policy_dir, "spam_scams", "version: 1.1.0", "version: 1.1.1")
    edit(policy_dir, "spam_scams", "seek", "look for", -1)

    def check(*pols: str) -> tuple[int, list[dict]]:
        args = ["sync", "check", str(m), "-g", str(policy_dir), "--json"]
        for p in pols:
            args += ["-p", p]
        r = CliRunner().invoke(cli, args)
        return r.exit_code, json.loads(r.stdout) if r.exit_code in (0, 1) else []

    code, found = check("self_harm")
    assert code == 0 and found == []  # self_harm did not change; the other policies are not checked
    code, found = check("hate_speech")
    assert code == 1 and {x["policy"] for x in found} == {"hate_speech"}  # no spam_scams, no guide
    r = CliRunner().invoke(cli, ["sync", "check", str(m), "-g", str(policy_dir), "-p", "nope"])
    assert r.exit_code == 2 and "unknown policy 'nope'" in r.output
    guide_before = (tmp_path / "guide.md").read_text()
    r = CliRunner().invoke(cli, ["sync", "update", str(m), "-g", str(policy_dir), "-p", "spam_scams"])
    assert r.exit_code == 0, r.output
    assert "spam_scams: version 1.1.0 -> 1.1.1" in r.stdout and "hate_speech" not in r.stdout
    data = yaml.safe_load(m.read_text())
    assert data["policies"]["spam_scams"]["version"] == "1.1.1"
    assert data["policies"]["hate_speech"]["version"] == HATE_V  # left alone
    assert (tmp_path / "guide.md").read_text() == guide_before
    assert check("spam_scams") == (0, [])
    code, found = check()
    assert code == 1 and {x["policy"] for x in found} == {"hate_speech", "*"}


def test_impact_policy_option_previews_only_those_policies(tmp_path: Path, policy_dir: Path) -> None:
    gold = tmp_path / "gold.jsonl"
    rows = [("VIOLATE a", 1), ("calm b", 0), ("borderline c", 1), ("VIOLATE d", 0)]
    gold.write_text("".join(json.dumps({"id": f"g{i}", "text": t, "labels": {"harm": y}}) + "\n" for i, (t, y) in enumerate(rows)))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("labels:\n  harm: {policies: [hate_speech, spam_scams]}\n")
    old = load_policies([policy_dir])
    edit(policy_dir, "hate_speech", f"version: {HATE_V}", "version: 9.1.0")
    edit(policy_dir, "hate_speech", "HATE-7", "HATE-8", -1)
    new = load_policies([policy_dir])
    asked: list[str] = []

    def respond(req):
        pid = next(iter(req.schema["properties"]["decisions"]["properties"]))
        asked.append(pid)
        return decision({pid: []})

    def run(pols, work):
        return impact(old, new, settings=Settings(decision_logic=False), cache=MemoryCache(), golden=gold, mapping=mapping,
                      work_dir=tmp_path / work, backend=FakeBackend(default=respond), policies=pols)

    res = run(["spam_scams"], "a")
    assert res["changed_policies"] == [] and set(asked) == {"spam_scams"}
    assert res["golden"]["model_calls"] == {"old": 4, "new": 0}  # the new run came from the cache
    asked.clear()
    res = run(["hate_speech"], "b")
    assert res["changed_policies"] == ["hate_speech"] and set(asked) == {"hate_speech"}
    assert res["golden"]["model_calls"] == {"old": 4, "new": 4}
    from cotmod._exceptions import ConfigError

    with pytest.raises(ConfigError, match="unknown policy"):
        run(["nope"], "c")


def test_shipped_enforcement_manifest_is_in_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """enforcement.yaml binds every starter policy (version, prompt fingerprint, escalation routes,
    the labeling guide). Regenerate it with `cotmod sync update enforcement.yaml` whenever a policy,
    a prompt template or the prompt fingerprint computation changes; .ci/run checks it too."""
    from .conftest import ROOT

    manifest = ROOT / "enforcement.yaml"
    monkeypatch.delenv("COTMOD_DECISION_LOGIC")  # the shipped defaults
    mod = AsyncModerator(GUIDELINES, backend=FakeBackend())
    assert [str(f) for f in check_manifest(manifest, mod)] == []
    data = yaml.safe_load(manifest.read_text())
    assert set(data["policies"]) == set(VERSIONS) and (ROOT / data["guide"]["path"]).is_file()
