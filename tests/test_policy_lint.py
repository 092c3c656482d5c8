from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cotmod import PolicyError, lint_paths, load_policies
from cotmod.policy._model import policy_json_schema

from .conftest import GUIDELINES, HATE_V, ROOT

HATE = (GUIDELINES / "hate_speech.yaml").read_text()


def write(tmp_path: Path, text: str, name: str = "hate_speech.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def codes(report) -> list[str]:
    return [e.code for e in report.errors]


def test_starter_pack_is_clean_and_complete() -> None:
    report = lint_paths([GUIDELINES])
    assert report.ok, [str(e) for e in report.errors]
    assert report.warnings == []
    policies = load_policies([GUIDELINES])
    assert len(policies) >= 8
    for p in policies:
        assert len(p.rules) + len(p.exceptions) >= 6, p.id
        assert len(p.exceptions) >= 1, p.id
        assert len(p.examples) >= 6, p.id
        assert {e.decision for e in p.examples} == {"violates", "safe"}, p.id
        assert p.checklist


def test_shipped_schema_matches_the_model() -> None:
    shipped = json.loads((ROOT / "cotmod" / "schemas" / "policy.schema.json").read_text())
    assert shipped == policy_json_schema()


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    p = write(tmp_path, HATE.replace("title: Hate speech", "title: [unclosed", 1))
    report = lint_paths([p])
    assert codes(report) == ["yaml"]
    err = report.errors[0]
    assert err.file == str(p) and err.line is not None and err.line >= 4


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, HATE.replace(f"version: {HATE_V}", f"version: {HATE_V}\nversion: 1.0.1", 1))
    report = lint_paths([p])
    assert codes(report) == ["yaml"]
    assert "duplicate key 'version'" in report.errors[0].message
    assert report.errors[0].line == 5


def test_unknown_field_names_file_line_and_field(tmp_path: Path) -> None:
    text = HATE.replace("    severity: critical\n", "    severity: critical\n    severty: high\n", 1)
    p = write(tmp_path, text)
    report = lint_paths([p])
    assert codes(report) == ["unknown-field"]
    err = report.errors[0]
    assert err.field == "rules[1]" and "severty" in err.message
    line_of_rule = text.splitlines().index("  - id: HATE-2") + 1
    assert err.line == line_of_rule
    assert str(err).startswith(f"{p}:{line_of_rule}: rules[1]:")


def test_missing_required_section(tmp_path: Path) -> None:
    data = yaml.safe_load(HATE)
    del data["checklist"]
    p = write(tmp_path, yaml.safe_dump(data, sort_keys=False))
    report = lint_paths([p])
    assert codes(report) == ["missing-field"]
    assert "checklist" in report.errors[0].message


def test_bad_version_and_bad_rule_id(tmp_path: Path) -> None:
    text = HATE.replace(f"version: {HATE_V}", "version: one", 1).replace("- id: HATE-3", "- id: hate3", 1)
    report = lint_paths([write(tmp_path, text)])
    fields = sorted(e.field for e in report.errors)
    assert fields == ["rules[2].id", "version"]


def test_an_unquoted_version_says_to_quote_it(tmp_path: Path) -> None:
    text = HATE.replace(f"version: {HATE_V}", "version: 1.1", 1)
    report = lint_paths([write(tmp_path, text)])
    [e] = report.errors
    assert e.field == "version" and e.line == text.splitlines().index("version: 1.1") + 1
    assert "1.1 is not of type 'string'" in e.message and 'quote it' in e.message and 'version: "1.1.0"' in e.message


def test_semantic_errors(tmp_path: Path) -> None:
    text = (
        HATE.replace("- id: HATE-3", "- id: HATE-1", 1)  # duplicate rule id
        .replace("severity: low\n", "severity: extreme\n", 1)  # unknown severity tier
        .replace("rule_ids: [HATE-S5]", "rule_ids: [HATE-99]", 1)  # unknown rule cited
        .replace("rule_ids: [HATE-S3]", "rule_ids: [HATE-2]", 1)  # safe example citing a VIOLATES rule
    )
    report = lint_paths([write(tmp_path, text)])
    # renaming HATE-3 also leaves an example citing the now unknown HATE-3
    assert sorted(codes(report)) == sorted(["duplicate-id", "unknown-severity", "unknown-rule", "unknown-rule", "example-rule"])
    dup = next(e for e in report.errors if e.code == "duplicate-id")
    lines = text.splitlines()
    second = lines.index("  - id: HATE-1", lines.index("  - id: HATE-1") + 1)
    assert dup.field == "rules[2].id" and dup.line == second + 1


def test_action_rules(tmp_path: Path) -> None:
    # critical (last tier) milder than high -> action-order; a tier with 'allow' -> action
    text = HATE.replace("action: remove_and_report", "action: label", 1).replace("action: limit_reach", "action: allow", 1)
    report = lint_paths([write(tmp_path, text)])
    assert sorted(codes(report)) == ["action", "action-order"]


def test_violates_example_without_rules(tmp_path: Path) -> None:
    text = HATE.replace("rule_ids: [HATE-1]\n", "rule_ids: []\n", 1)
    report = lint_paths([write(tmp_path, text)])
    assert codes(report) == ["example-rule"]


def test_duplicate_policy_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path, HATE)
    write(tmp_path, HATE, name="other.yaml")
    report = lint_paths([tmp_path])
    assert "duplicate-policy" in codes(report)
    assert any(w.code == "file-name" for w in report.warnings)
    dup = next(e for e in report.errors if e.code == "duplicate-policy")
    id_line = next(n for n, line in enumerate(HATE.splitlines(), start=1) if line.startswith("id:"))
    assert dup.line == id_line  # the line of 'id:', not line 1


def test_non_utf8_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_bytes(b"id: x\ntitle: \xff\xfe\n")
    (tmp_path / "empty.yaml").write_text("")
    report = lint_paths([tmp_path])
    assert sorted(codes(report)) == ["encoding", "structure"]
    enc = next(e for e in report.errors if e.code == "encoding")
    assert enc.line == 2


def test_load_policies_raises_with_every_issue(tmp_path: Path) -> None:
    text = HATE.replace(f"version: {HATE_V}", "version: x", 1).replace("title: Hate speech", "title: ''", 1)
    with pytest.raises(PolicyError) as ei:
        load_policies([write(tmp_path, text)])
    assert len(ei.value.issues) == 2
    assert str(tmp_path / "hate_speech.yaml") in str(ei.value)


def billion_laughs() -> str:
    """A few hundred bytes that expand to 9**9 strings when every alias is followed."""
    doc = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    prev = "a"
    for name in "bcdefghi":
        doc += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return doc


def test_alias_bomb_is_refused_with_file_and_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cotmod.cli import cli

    bomb = write(tmp_path, billion_laughs())
    assert len(bomb.read_bytes()) < 1000
    report = lint_paths([bomb])  # returns at once instead of exhausting memory
    assert codes(report) == ["yaml-guard"]
    assert str(report.errors[0]).startswith(f"{bomb}:2: document expands to more than")
    r = CliRunner().invoke(cli, ["lint", str(bomb)])
    assert r.exit_code == 1 and f"{bomb}:2:" in r.output and "alias" in r.output
    recursive = write(tmp_path, "id: &x [1, *x]\n", "loop.yaml")
    assert "recursive alias" in str(lint_paths([recursive]).errors[0])
    deep = write(tmp_path, "id: " + "[" * 20000 + "]" * 20000 + "\n", "deep.yaml")
    assert "nesting too deep" in str(lint_paths([deep]).errors[0])


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    data = yaml.safe_load(HATE)
    text = HATE.replace("\nsummary: ", "\nsummary: &s ", 1) + "definitions_note_unused: *s\n"
    assert "&s" in text
    report = lint_paths([write(tmp_path, text)])
    assert codes(report) == ["unknown-field"]  # the alias itself is fine; the extra key is not
    assert data["summary"]


def test_oversized_policy_file_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "hate_speech.yaml"
    big.write_text(HATE + "#" * (5 * 1024 * 1024) + "\n")
    report = lint_paths([big])
    assert codes(report) == ["too-large"] and str(report.errors[0]).startswith(f"{big}: too large")


def test_policy_with_errors_is_not_counted_as_valid(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cotmod.cli import cli

    bad = write(tmp_path, HATE.replace("  - id: HATE-3", "  - id: HATE-1"))  # parses, but a semantic error
    report = lint_paths([bad])
    assert report.policies == [] and report.invalid_files == [str(bad)]
    r = CliRunner().invoke(cli, ["lint", str(bad), str(GUIDELINES / "spam_scams.yaml")])
    assert r.exit_code == 1
    assert "FAILED: 2 file(s), 1 valid polic(ies), 1 invalid file(s), 2 error(s)" in r.stdout
    data = json.loads(CliRunner().invoke(cli, ["lint", "--json", str(bad)]).stdout)
    assert data["policies"] == {} and data["invalid_files"] == [str(bad)]


def test_yaml_mapping_files_are_guarded(tmp_path: Path) -> None:
    from cotmod._exceptions import InputError
    from cotmod._yamlfile import read_yaml_mapping

    p = tmp_path / "mapping.yaml"
    p.write_text(billion_laughs())
    with pytest.raises(InputError, match=r"mapping\.yaml:2: document expands"):
        read_yaml_mapping(p, "label mapping")
    p.write_text("labels: {}\n" + "#" * (5 * 1024 * 1024 + 1))
    with pytest.raises(InputError, match=r"mapping\.yaml: too large"):
        read_yaml_mapping(p, "label mapping")
    p.write_text("x: &v [1, 2]\ny: *v\n")
    assert read_yaml_mapping(p, "label mapping") == {"x": [1, 2], "y": [1, 2]}


def test_a_value_outside_a_choice_of_types_says_what_is_allowed(tmp_path: Path) -> None:
    """JSON Schema's anyOf message ("-5 is not valid under any of the given schemas") did not say
    what a valid value is."""
    text = (GUIDELINES / "spam_scams.yaml").read_text()
    assert "sla_hours: 12" in text
    report = lint_paths([write(tmp_path, text.replace("sla_hours: 12", "sla_hours: -5", 1), name="spam_scams.yaml")])
    err = next(e for e in report.errors if e.field.endswith("sla_hours"))
    assert err.message == "-5 is not allowed here: expected a number > 0 or null (or leave it out)"
    assert err.line == text.splitlines().index(next(x for x in text.splitlines() if "sla_hours: 12" in x)) + 1
