"""Regression tests for defects found while documenting the file formats (docs/formats.md): each
failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cotmod import AsyncModerator, InputError
from cotmod.batch import export_batch
from cotmod.cli import cli
from cotmod.cli._app import EXIT_OK, EXIT_USAGE
from cotmod.engine import load_thresholds
from cotmod.evals import load_mapping, run_eval
from cotmod.testing import FakeBackend, FakeOpenAIServer, decision

from .test_run_cli import ENDPOINT, good, invoke, use_backend
from .test_runner import write_jsonl

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{review: high}", r"thresholds\.hate_speech\.review: expected a number from 0 to 1, got 'high'"),
        ("{review: 1.5}", r"thresholds\.hate_speech\.review: expected a number from 0 to 1"),
        ("{review: .nan}", r"thresholds\.hate_speech\.review: expected a number from 0 to 1"),
        ("{review: 0.8, auto_action: 0.5}", r"auto_action \(0\.5\) is below review \(0\.8\)"),
    ],
)
def test_bad_threshold_values_are_one_clear_line(tmp_path: Path, spec: str, message: str) -> None:
    f = tmp_path / "th.yaml"
    f.write_text(f"thresholds:\n  hate_speech: {spec}\n")
    with pytest.raises(InputError, match=message):
        load_thresholds(f)


def test_thresholds_header_names_a_real_way_to_apply_them(tmp_path: Path) -> None:
    """The header used to say 'cotmod run ... --thresholds', an option run does not have."""
    from cotmod.evals import Thresholds, write_thresholds
    from cotmod.evals._results import TuneMethod

    out = tmp_path / "th.yaml"
    write_thresholds(Thresholds(thresholds={}, evidence={}, method=TuneMethod(target_precision=0.9), run="runs/x", created_at="2026-11-25"), out)
    header = out.read_text().split("thresholds:", 1)[0]
    assert "cotmod run" not in header and 'thresholds = "THIS_FILE" in cotmod.toml' in header
    assert "--thresholds" not in (CliRunner().invoke(cli, ["run", "--help"]).output)


def test_escalation_route_that_is_not_a_mapping_is_a_usage_error(tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load((ROOT / "enforcement.yaml").read_text())
    first = next(iter(data["policies"].values()))
    first["escalation"][0] = "just-a-queue-name"
    broken = tmp_path / "enforcement.yaml"
    broken.write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(cli, ["sync", "check", str(broken), *ENDPOINT])
    assert r.exit_code == EXIT_USAGE, r.output
    assert "escalation[0]: expected a mapping" in r.output and "Traceback" not in r.output


def test_batch_reexport_replaces_its_dead_letters_and_names_duplicates(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "one"}\n{"id": "a", "text": "again"}\n{"id": "b", "text": ""}\n')
    req = tmp_path / "req.jsonl"
    mod = AsyncModerator(backend=FakeBackend())
    for _ in range(2):
        counts = export_batch(mod, inp, req, policies=["spam_scams"], model="gpt-4o-mini")
        assert counts["bad_rows"] == 2
    lines = [json.loads(x) for x in (tmp_path / "req.errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["error_type"]) for e in lines] == [("a", "DuplicateId"), ("b", "BadRow")]


def test_damaged_batch_index_is_one_clear_line(tmp_path: Path) -> None:
    from .test_batch import fake_provider

    inp = write_jsonl(tmp_path / "in.jsonl", 2)
    req = tmp_path / "req.jsonl"
    export_batch(AsyncModerator(backend=FakeBackend()), inp, req, policies=["spam_scams"], model="gpt-4o-mini")
    fake_provider(req, tmp_path / "res.jsonl")
    index = tmp_path / "req.jsonl.index.jsonl"
    index.write_text(index.read_text()[:-10] + "\n")  # the last line cut short
    r = CliRunner().invoke(
        cli, ["batch", "import", str(tmp_path / "res.jsonl"), "--requests", str(req), "-o", str(tmp_path / "v.jsonl"), "--model", "gpt-4o-mini", "--base-url", "http://127.0.0.1:9/v1"]
    )
    assert r.exit_code == EXIT_USAGE and "req.jsonl.index.jsonl:2: not an index line" in r.output


def test_duplicate_ids_do_not_count_as_undecided_first_run_or_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated id has a verdict (the first occurrence wins): the first run used to exit 1 and
    the resume 0 for the same input."""
    inp = write_jsonl(tmp_path / "in.jsonl", 3, extra=[json.dumps({"id": "p1", "text": "the same id again"})])
    out = tmp_path / "v.jsonl"
    use_backend(monkeypatch, good)
    for _ in range(2):
        r = invoke("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--json")
        data = json.loads(r.stdout)
        assert r.exit_code == EXIT_OK and data["undecided"] == 0, r.output
    assert data["duplicate_ids"] == 0 and data["resumed_skipped"] == 3
    first = json.loads(invoke("run", str(inp), "-o", str(tmp_path / "w.jsonl"), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--json").stdout)
    assert first["duplicate_ids"] == 1 and first["dead_lettered"] == 1 and first["undecided"] == 0


def test_retry_errors_keeps_the_record_of_duplicate_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", 2, extra=[json.dumps({"id": "p0", "text": "dup"}), json.dumps({"id": "x", "text": "fails"})])
    out = tmp_path / "v.jsonl"
    use_backend(monkeypatch, lambda req: "no verdict" if any("fails" in m["content"] for m in req.messages) else good(req))
    invoke("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache")
    errors = tmp_path / "v.errors.jsonl"
    before = {(e["id"], e["error_type"]) for e in map(json.loads, errors.read_text().splitlines())}
    assert ("p0", "DuplicateId") in before and any(i == "x" for i, _ in before)
    use_backend(monkeypatch, good)
    r = invoke("run", str(inp), "-o", str(out), *ENDPOINT, "-p", "spam_scams", "--no-cache", "--retry-errors", "--json")
    assert r.exit_code == EXIT_OK, r.output
    after = {(e["id"], e["error_type"]) for e in map(json.loads, errors.read_text().splitlines())}
    assert ("p0", "DuplicateId") in after  # a resume never deletes what was written


def test_refused_eval_resume_leaves_the_run_manifest_alone(tmp_path: Path) -> None:
    golden = tmp_path / "g.jsonl"
    golden.write_text("".join(json.dumps({"id": f"g{i}", "text": f"text {i}", "labels": {"spam": i % 2}}) + "\n" for i in range(4)))
    (tmp_path / "mapping.yaml").write_text("name: g\nlabels:\n  spam: [spam_scams]\n")
    mapping = tmp_path / "mapping.yaml"
    run = tmp_path / "run"
    with FakeOpenAIServer() as srv:
        run_eval(AsyncModerator(base_url=srv.base_url, model="model-a"), golden, mapping, run)
        before = (run / "manifest.json").read_text()
        assert json.loads(before)["complete"] is True
        with pytest.raises(Exception, match="different configuration"):
            run_eval(AsyncModerator(base_url=srv.base_url, model="model-b"), golden, mapping, run)
    assert (run / "manifest.json").read_text() == before
    assert load_mapping(mapping).name == "g"


def test_config_paths_expand_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cotmod import Settings

    home = tmp_path / "home"
    (home / "pol").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    cfg = tmp_path / "cotmod.toml"
    cfg.write_text('guidelines = "~/pol"\n')
    assert Settings.load(str(cfg)).guidelines == str(home / "pol")


def test_yaml_size_limit_message_matches_the_limit(tmp_path: Path) -> None:
    from cotmod._yamlfile import MAX_YAML_BYTES, read_yaml_mapping

    big = tmp_path / "mapping.yaml"
    big.write_text("a: 1\n" + "#" * (MAX_YAML_BYTES - 4))  # one byte over: 5 MiB + 1
    with pytest.raises(InputError, match=r"too large \(5,242,881 bytes; the limit is 5,242,880 bytes = 5 MiB\)"):
        read_yaml_mapping(big, "label mapping")


def test_fake_backend_decision_helper_is_what_the_cli_tests_use() -> None:
    # guards the helpers imported above: `good` must answer with a valid decision
    assert decision({"spam_scams": []})


def test_impact_refuses_guidelines_it_would_ignore(tmp_path: Path) -> None:
    """impact takes its policies from OLD and NEW; --guidelines was accepted and silently ignored."""
    g = ROOT / "benchmarks" / "goldsets" / "hatecheck" / "hatecheck.normalized.jsonl.gz"
    r = CliRunner().invoke(
        cli, ["impact", "guidelines", "guidelines", "--golden", str(g), "-o", str(tmp_path / "imp"), "--guidelines", str(ROOT / "guidelines"), *ENDPOINT]
    )
    assert r.exit_code == EXIT_USAGE and "--guidelines does not apply" in r.output
