"""Settings: which config file is used, when an API key may be sent, validation of numbers and
URLs, and where the policies come from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from cotmod._config import Settings, default_guidelines_dir, resolve_policy_source
from cotmod._exceptions import ConfigError
from cotmod.cli import cli
from cotmod.testing import FakeOpenAIServer

KEY = "sk-ENV-secret-1234"


def moderate(*extra: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["moderate", "-p", "spam_scams", "--json", *extra, "hello"])
    return r.exit_code, r.stdout, r.stderr


def sent_keys(srv: FakeOpenAIServer) -> list[str | None]:
    assert srv.auth_headers, "the server got no request"
    return srv.auth_headers


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cwd_config_endpoint_does_not_get_the_environment_key(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COTMOD_API_KEY", KEY)
    with FakeOpenAIServer() as srv:
        (cwd / "cotmod.toml").write_text(f'base_url = "{srv.base_url}"\nmodel = "m"\n')
        code, out, err = moderate()
        assert code == 0, err
        assert json.loads(out)["status"] == "ok"
        assert all(KEY not in (h or "") for h in sent_keys(srv))
    assert "cotmod: using config ./cotmod.toml" in err
    assert "not sending $COTMOD_API_KEY" in err and KEY not in err


def test_openai_api_key_is_withheld_too(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAIServer() as srv:
        (cwd / "cotmod.toml").write_text(f'base_url = "{srv.base_url}"\nmodel = "m"\n')
        assert moderate()[0] == 0
        assert all(KEY not in (h or "") for h in sent_keys(srv))


@pytest.mark.parametrize("how", ["api_key_env", "--config", "COTMOD_CONFIG", "env endpoint", "--base-url", "--api-key"])
def test_the_key_is_sent_when_the_rule_allows_it(cwd: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setenv("COTMOD_API_KEY", KEY)
    with FakeOpenAIServer() as srv:
        toml = f'base_url = "{srv.base_url}"\nmodel = "m"\n'
        extra: list[str] = []
        if how == "api_key_env":
            monkeypatch.setenv("MY_KEY", KEY)
            monkeypatch.delenv("COTMOD_API_KEY")
            toml += 'api_key_env = "MY_KEY"\n'
        elif how == "--config":
            extra = ["--config", "cotmod.toml"]
        elif how == "COTMOD_CONFIG":
            monkeypatch.setenv("COTMOD_CONFIG", "cotmod.toml")
        elif how == "env endpoint":
            monkeypatch.setenv("COTMOD_BASE_URL", srv.base_url)
        elif how == "--base-url":
            extra = ["--base-url", srv.base_url]
        else:
            monkeypatch.delenv("COTMOD_API_KEY")
            extra = ["--api-key", KEY]
        (cwd / "cotmod.toml").write_text(toml)
        code, _, err = moderate(*extra)
        assert code == 0, err
        assert sent_keys(srv) == [f"Bearer {KEY}"]
        assert "not sending" not in err


def test_home_config_is_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("COTMOD_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    home = Path(os.environ["COTMOD_HOME"])
    with FakeOpenAIServer() as srv:
        (home / "config.toml").write_text(f'base_url = "{srv.base_url}"\nmodel = "m"\n')
        code, _, err = moderate()
        assert code == 0 and sent_keys(srv) == [f"Bearer {KEY}"]
    assert f"using config {home / 'config.toml'}" in err


def test_literal_key_in_cwd_config_warns(cwd: Path) -> None:
    with FakeOpenAIServer() as srv:
        (cwd / "cotmod.toml").write_text(f'base_url = "{srv.base_url}"\nmodel = "m"\napi_key = "sk-file-key-99"\n')
        code, _, err = moderate()
        assert code == 0 and sent_keys(srv) == ["Bearer sk-file-key-99"]
    assert "stores an API key in plain text" in err and "sk-file-key-99" not in err


def test_missing_api_key_env_is_said(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COTMOD_API_KEY", KEY)
    (cwd / "cotmod.toml").write_text('base_url = "http://127.0.0.1:9/v1"\napi_key_env = "NOT_SET_ANYWHERE"\n')
    loaded = Settings.resolve()
    assert loaded.settings.api_key is None and loaded.config_origin == "cwd"
    assert any("$NOT_SET_ANYWHERE" in n for n in loaded.notices)


def test_timeout_option_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load(timeout=5.5).timeout == 5.5
    monkeypatch.setenv("COTMOD_TIMEOUT", "7")
    assert Settings.load().timeout == 7.0
    assert Settings.load(timeout=3).timeout == 3.0  # the option wins over the environment
    monkeypatch.setenv("COTMOD_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="COTMOD_TIMEOUT"):
        Settings.load()
    monkeypatch.delenv("COTMOD_TIMEOUT")
    for bad in ("0", "-1", "nan", "inf"):
        r = CliRunner().invoke(cli, ["moderate", "--base-url", "http://127.0.0.1:9/v1", "--timeout", bad, "hi"])
        assert r.exit_code == 2 and "timeout" in r.output and "Traceback" not in r.output, (bad, r.output)


@pytest.mark.parametrize("field", ["timeout", "temperature", "vote_temperature"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_numbers_must_be_finite_and_in_range(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"invalid setting {field}"):
        Settings.load(**{field: value})


def test_non_finite_number_in_config_file_names_file_and_key(cwd: Path) -> None:
    (cwd / "cotmod.toml").write_text("timeout = nan\n")
    with pytest.raises(ConfigError, match=r"cotmod\.toml: timeout = nan: not a finite number"):
        Settings.load()


@pytest.mark.parametrize("line", ["guidelines = 5", 'guidelines = ["a"]', 'guidelines = ""', "prompts = true", "thresholds = 0.5"])
def test_a_path_setting_that_is_not_a_path_names_file_and_key(cwd: Path, line: str) -> None:
    """guidelines = 5 used to crash lint / render / guide export with a TypeError traceback."""
    (cwd / "cotmod.toml").write_text(line + "\n")
    key = line.split(" ")[0]
    with pytest.raises(ConfigError, match=rf"cotmod\.toml: {key} = .*: expected a path"):
        Settings.load()
    with pytest.raises(ConfigError, match="expected a path"):
        resolve_policy_source()
    for args in (["lint"], ["render", "-p", "spam_scams", "hi"], ["guide", "export"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and "expected a path" in r.stderr and "Traceback" not in r.output, (args, r.output)


def test_a_config_file_with_a_byte_order_mark_is_read(cwd: Path) -> None:
    (cwd / "cotmod.toml").write_bytes("\ufefftimeout = 12\n".encode())
    assert Settings.load().timeout == 12


@pytest.mark.parametrize(
    "url", ["localhost:8000/v1", "127.0.0.1:8000", "ftp://host/v1", "http://", "http:///v1", " http://h/v1", "http://h /v1", "http://h:99999/v1"]
)
def test_malformed_base_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="not a URL") as exc:
        Settings.load(base_url=url)
    assert repr(url) in str(exc.value)
    r = CliRunner().invoke(cli, ["moderate", "--base-url", url, "--model", "m", "-p", "spam_scams", "hi"])
    assert r.exit_code == 2 and "not a URL" in r.output and "unreachable" not in r.output


def test_good_urls() -> None:
    for url in ("http://127.0.0.1:8000/v1", "https://api.openai.com/v1", "http://[::1]:8080/v1"):
        assert Settings.load(base_url=url).base_url == url


def test_policy_source_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_policy_source().origin == "starter pack"
    assert resolve_policy_source().path == default_guidelines_dir()
    (tmp_path / "guidelines").mkdir()
    (tmp_path / "guidelines" / "a.yaml").write_text("x: 1\n")
    src = resolve_policy_source()
    assert (src.origin, src.path, src.files) == ("cwd", Path("guidelines"), 1)
    assert src.describe() == "cotmod: policies from ./guidelines (1 file)"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pols").mkdir()
    (tmp_path / "conf" / "cotmod.toml").write_text('guidelines = "pols"\n')  # relative to the config file
    monkeypatch.setenv("COTMOD_CONFIG", str(tmp_path / "conf" / "cotmod.toml"))
    src = resolve_policy_source()
    assert (src.origin, src.path) == ("config", tmp_path / "conf" / "pols")
    assert Settings.load().guidelines == str(tmp_path / "conf" / "pols")
    (tmp_path / "conf" / "cotmod.toml").write_text('guidelines = "pols"\ncascade = "cascade.yaml"\n')
    assert Settings.load().cascade == str(tmp_path / "conf" / "cascade.yaml")  # every path setting, cascade too
    (tmp_path / "conf" / "cotmod.toml").write_text('guidelines = "pols"\n')
    assert resolve_policy_source("elsewhere").origin == "argument"
    (tmp_path / "conf" / "cotmod.toml").write_text('guidelines = "missing"\n')
    with pytest.raises(ConfigError, match="not found"):
        Settings.load()


def test_settings_load_uses_cwd_guidelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.load().guidelines is None  # the starter pack
    (tmp_path / "guidelines").mkdir()
    assert Settings.load().guidelines == "guidelines"
    assert Settings.load(guidelines="x").guidelines == "x"
