"""Settings: endpoint, model and engine knobs, from arguments, environment or a config file.

Precedence: explicit arguments > environment variables > config file > defaults.

Environment: ``COTMOD_BASE_URL``, ``COTMOD_API_KEY`` (else ``OPENAI_API_KEY``), ``COTMOD_MODEL``,
``COTMOD_LOCAL_MODEL``, ``COTMOD_TIMEOUT`` (seconds per HTTP request), ``COTMOD_EVIDENCE`` (``1``/``0``:
grounded citations), ``COTMOD_CONFIG`` (path of a TOML config file), ``COTMOD_HOME`` (models, server state).

Config file (TOML, flat keys named like the fields of :class:`Settings`, plus ``api_key_env``):
``--config``/``config_file``, else ``$COTMOD_CONFIG``, else ``./cotmod.toml``, else
``$COTMOD_HOME/config.toml``. Unknown keys are an error naming the file. Relative paths in a
config file (``guidelines``, ``prompts``, ``thresholds``) are relative to the file's directory.

API keys and a ``cotmod.toml`` found in the current directory
-------------------------------------------------------------
A ``./cotmod.toml`` is picked up implicitly, so whoever controls the directory you run cotmod in
controls it (a cloned repository, a shared folder). The rule:

* The config file in use is always reported (the CLI prints ``cotmod: using config ./cotmod.toml``).
* An implicitly found ``./cotmod.toml`` may set the endpoint (``base_url``), but the API key from the
  environment (``COTMOD_API_KEY`` / ``OPENAI_API_KEY``) is **not** sent to an endpoint that this file
  introduced, unless the same file names the variable the key comes from
  (``api_key_env = "COTMOD_API_KEY"``): then the key is read from that variable. The key is sent as
  usual when the endpoint comes from the environment (``COTMOD_BASE_URL``) or an argument
  (``--base-url``), when the key itself is an argument (``--api-key``), and when the config file was
  chosen explicitly (``--config``, ``COTMOD_CONFIG``) or is the user's own
  ``$COTMOD_HOME/config.toml``.
* ``api_key_env`` in any config file: the key is read from that environment variable only.
* A literal ``api_key`` in a ``./cotmod.toml`` is used (it is that file's own key, not yours) but
  draws a warning: a key stored in a working directory ends up in version control.

What was decided is in :attr:`LoadedSettings.notices` (one line each; the CLI prints them on stderr).

Policy source
-------------
Where the policies come from when a caller names none (:func:`resolve_policy_source`):
``--guidelines`` > the config file's ``guidelines`` > ``./guidelines`` when that directory exists
> the starter pack shipped with cotmod. The CLI says which, on stderr.

With no ``base_url``, cotmod uses the embedded local backend (``local_model``), started on
127.0.0.1 on first use.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from ._exceptions import ConfigError, CotmodError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "LoadedSettings",
    "PolicySource",
    "Settings",
    "bundled_dir",
    "cotmod_home",
    "default_guidelines_dir",
    "resolve_policy_source",
]

DEFAULT_LOCAL_MODEL = "qwen2.5-coder-1.5b"
#: Environment variables an API key is read from, in order.
API_KEY_ENV = ("COTMOD_API_KEY", "OPENAI_API_KEY")
#: Config-file keys that are not settings.
CONFIG_ONLY_KEYS = ("api_key_env",)
#: Settings holding a path; relative values in a config file are relative to its directory.
PATH_SETTINGS = ("guidelines", "prompts", "thresholds", "cascade")

ConfigOrigin = Literal["argument", "environment", "cwd", "home"]


def bundled_dir(name: str) -> Path:
    """``name/`` (guidelines, prompts) of the source tree, or its copy inside the installed wheel."""
    here = Path(__file__).resolve().parent  # the cotmod package
    for cand in (here / "_bundled" / name, here.parent / name):
        if cand.is_dir():
            return cand
    return here.parent / name


def default_guidelines_dir() -> Path:
    """The starter pack: the bundled ``guidelines/``."""
    return bundled_dir("guidelines")


def cotmod_home() -> Path:
    env = os.environ.get("COTMOD_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("cotmod"))


def _check_url(value: str) -> str:
    """``value`` if it is an http(s) URL with a host, else ValueError naming it."""
    why = None
    if value != value.strip() or any(c.isspace() for c in value):
        why = "contains whitespace"
    else:
        try:
            parts = urlsplit(value)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            why = str(exc)
        else:
            if not parts.scheme:
                why = "no scheme (expected http:// or https://)"
            elif parts.scheme not in ("http", "https"):
                why = f"scheme {parts.scheme!r} (expected http or https)"
            elif not host:
                why = "no host"
    if why:
        raise ValueError(f"{value!r} is not a URL: {why}")
    return value


class Settings(BaseModel):
    """Everything that configures a moderator. Validated on construction: numbers must be
    finite (no nan/inf) and in range, ``base_url`` must be an http(s) URL with a host."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; None = embedded local model")
    api_key: SecretStr | None = Field(default=None, description="Never logged or shown")
    model: str | None = Field(default=None, description="Model name sent to the endpoint")
    extra_headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers (e.g. a gateway's routing header)"
    )
    local_model: str = Field(default=DEFAULT_LOCAL_MODEL, description="Embedded model (cotmod models list)")
    timeout: float = Field(default=120.0, gt=0, description="Seconds per HTTP request")
    max_transport_retries: int = Field(default=3, ge=0, le=20)
    max_reasks: int = Field(default=2, ge=0, le=10)
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=768, ge=16, description="Completion token cap per call")
    seed: int | None = 0
    logprobs: bool = Field(
        default=False, description="Ask for token log-probabilities; scores become P(violates=true)"
    )
    votes: int = Field(
        default=1,
        ge=1,
        le=25,
        description="Self-consistency: sample this many verdicts per policy call; the majority decides "
        "and score becomes the share of votes for violates",
    )
    vote_temperature: float = Field(
        default=0.7, gt=0, le=2, description="Sampling temperature of the votes (only when votes > 1)"
    )
    response_format: Literal["json_schema", "json_object", "text"] = "json_schema"
    strategy: Literal["per_policy", "combined"] = Field(
        default="per_policy", description="One call per policy (more precise) or all policies in one call"
    )
    max_steps: int = Field(default=6, ge=1, le=20, description="Maximum reasoning steps")
    max_item_tokens: int = Field(default=2000, ge=1, description="Longer items are truncated, visibly")
    schema_limits: bool = Field(
        default=True,
        description="maxLength/maxItems in the output schema, and violates tied to rule_ids (no rule cited: violates false)",
    )
    few_shot: bool = Field(default=True, description="Boundary examples as solved chat turns (per-policy prompts)")
    evidence: bool = Field(
        default=False,
        description="Grounded citations (opt-in): the model quotes the exact words meeting each cited rule and "
        "exception; quotes are located in the content (offsets in the verdict), ungrounded ones re-asked, then dropped",
    )
    decision_logic: bool = Field(
        default=False,
        description="Opt-in while it is measured (see README): policies that define decision logic (questions "
        "+ `when:` rules) are judged by answering their questions; the rules, violates, severity and action are "
        "derived in code. Off: every policy is judged in its rules form",
    )
    dynamic_examples: int = Field(
        default=0,
        ge=0,
        le=50,
        description="Per item, show only this many boundary examples, the most similar to the item "
        "(word TF-IDF; both decisions represented), after the cached policy text; 0 = all examples, static. "
        "Measured with the default 1.5B model (README): 29-47% fewer prompt tokens but lower recall, and more "
        "tokens computed per call where the server caches the prompt prefix",
    )
    triage: bool = Field(
        default=False,
        description="One cheap call first selects the policies plausibly at stake; only those get the "
        "per-policy call, the others are recorded as triaged out",
    )
    triage_max: int = Field(
        default=2,
        ge=1,
        le=50,
        description="With triage: the policies one item may be sent to at most (the most likely first)",
    )
    triage_threshold: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="With triage and logprobs: a policy is selected when the model's probability of answering "
        "'yes' for it is at least this (lower it to trade calls for recall; without logprobs the sampled "
        "yes/no decides)",
    )
    triage_min: int = Field(
        default=0,
        ge=0,
        le=50,
        description="With triage and logprobs: when fewer policies than this reach triage_threshold, the most "
        "probable make up the number (at most triage_max), so no item is left without a policy call; 0 = "
        "an item triage finds harmless gets no policy call",
    )
    triage_blend: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="With triage and logprobs: the weight of triage's probability that a policy is at stake in "
        "that policy's score, score = (1 - w) * the policy call's score + w * P(yes); a policy triaged out then "
        "scores w * P(yes). Ranks items better (AUPRC) for thresholds and review queues; 0 = the policy call's "
        "score alone. Sends nothing different and re-asks nothing: cached answers are re-scored",
    )
    concurrency: int = Field(default=4, ge=1, description="Maximum requests in flight")
    guidelines: str | None = Field(default=None, description="Directory or file of policies")
    prompts: str | None = Field(default=None, description="Directory of prompt templates")
    thresholds: str | None = Field(default=None, description="Thresholds file from cotmod tune")
    cascade: str | None = Field(
        default=None,
        description="Cascade file (cotmod classifier cascade): per policy, a classifier score below allow_below "
        "allows and at or above action_at enforces without an LLM call; the LLM decides the rest",
    )
    local_ctx: int = Field(default=8192, ge=512, description="Context size of the embedded server")
    local_threads: int = Field(default=0, ge=0, description="Threads of the embedded server (0 = all cores)")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings from a config file, the environment and ``overrides`` (highest).
        See the module docstring for which config file is used and when an API key is sent."""
        return cls.resolve(config_file, **overrides).settings

    @classmethod
    def resolve(cls, config_file: str | Path | None = None, **overrides: Any) -> LoadedSettings:
        """Like :meth:`load`, and say where things came from: the config file in use, the policy
        source, and notices (key withheld, key stored in a working directory)."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        found = _find_config(config_file)
        path, origin = found if found else (None, None)
        config: dict[str, Any] = _read_config(path) if path is not None else {}
        notices: list[str] = []
        if path is not None:
            notices.append(f"cotmod: using config {_show(path)}")
        key_env = config.pop("api_key_env", None)

        values: dict[str, Any] = dict(config)
        env: dict[str, Any] = {
            "base_url": os.environ.get("COTMOD_BASE_URL"),
            "model": os.environ.get("COTMOD_MODEL"),
            "local_model": os.environ.get("COTMOD_LOCAL_MODEL"),
        }
        timeout = os.environ.get("COTMOD_TIMEOUT")
        if timeout:
            try:
                env["timeout"] = float(timeout)
            except ValueError:
                raise ConfigError(f"COTMOD_TIMEOUT: {timeout!r} is not a number of seconds") from None
        values.update({k: v for k, v in env.items() if v})
        evidence = os.environ.get("COTMOD_EVIDENCE", "").strip().lower()
        if evidence:
            if evidence not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ConfigError(f"COTMOD_EVIDENCE: {evidence!r} is not a boolean (use 1 or 0)")
            values["evidence"] = evidence in ("1", "true", "yes", "on")
        for name in ("triage", "decision_logic"):
            raw = os.environ.get(f"COTMOD_{name.upper()}", "").strip().lower()
            if raw:
                if raw not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ConfigError(f"COTMOD_{name.upper()}: {raw!r} is not a boolean (use 1 or 0)")
                values[name] = raw in ("1", "true", "yes", "on")
        values.update(overrides)

        # The API key (see "API keys and a cotmod.toml found in the current directory").
        if "api_key" not in overrides:
            if key_env is not None:
                key = os.environ.get(key_env)
                if key:
                    values["api_key"] = key
                else:
                    values.pop("api_key", None)
                    notices.append(f"cotmod: {_show(path)} reads the API key from ${key_env}, which is not set")
            else:
                env_name = next((n for n in API_KEY_ENV if os.environ.get(n)), None)
                endpoint_from_cwd_file = (
                    origin == "cwd" and "base_url" in config and values.get("base_url") == config["base_url"]
                    and "base_url" not in overrides and not env["base_url"]
                )
                if env_name and "api_key" not in config:
                    if endpoint_from_cwd_file:
                        notices.append(
                            f"cotmod: not sending ${env_name} to {config['base_url']}: that endpoint comes from "
                            f"{_show(path)} in the current directory (to send it: --config {_show(path)}, "
                            f'api_key_env = "{env_name}" in that file, or --api-key)'
                        )
                    else:
                        values["api_key"] = os.environ[env_name]
        if origin == "cwd" and config.get("api_key"):
            notices.append(
                f"cotmod: warning: {_show(path)} stores an API key in plain text; prefer "
                'api_key_env = "NAME_OF_AN_ENV_VAR" (and keep keys out of version control)'
            )

        source = resolve_policy_source(overrides.get("guidelines"), config_file=path, _config=config)
        if source.origin in ("cwd", "config"):
            values["guidelines"] = str(source.path)
        try:
            settings = cls(**values)
        except ValidationError as exc:
            where = f" (config file {path})" if path else ""
            first = exc.errors()[0]
            name = ".".join(str(x) for x in first["loc"])
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"invalid setting {name}: {msg}{where}") from None
        notices += settings.warnings()
        return LoadedSettings(settings, path, origin, source, notices)

    def warnings(self) -> list[str]:
        """Settings that will not do what they seem to, one line each: ``triage_blend`` or
        ``triage_min`` without what they need, a thresholds file written for a classifier or tuned
        with another ``triage_blend``. :meth:`resolve` puts them in its notices; a
        :class:`~cotmod.Moderator` built from settings made by hand issues each as a
        :class:`~cotmod.CotmodWarning` (the library never prints)."""
        out: list[str] = []
        if self.triage_blend and not (self.triage and self.logprobs):
            out.append("cotmod: triage_blend has no effect without triage and logprobs (it blends triage's P(yes) "
                       "into the scores); add --triage --logprobs")
        out += _thresholds_notices(self)
        if self.triage and self.triage_min and not self.logprobs:
            out.append("cotmod: triage_min has no effect without logprobs (it ranks policies by P(yes)); "
                       "add --logprobs or logprobs = true")
        return out

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked: the API key, and the values of
        ``extra_headers`` (they can carry a key, e.g. Azure's ``api-key``; names are kept)."""
        data = self.model_dump()
        data["api_key"] = "***" if self.api_key else None
        data["extra_headers"] = {k: "***" for k in self.extra_headers}
        return data

    def __repr_args__(self) -> Any:
        # repr() and str() never show header values (Azure's ``api-key`` header is a key)
        for name, value in super().__repr_args__():
            if name == "extra_headers" and value:
                value = {k: "***" for k in value}
            yield name, value


@dataclass(frozen=True)
class PolicySource:
    """Where the policies come from, and why."""

    path: Path
    origin: Literal["argument", "config", "cwd", "starter pack"]
    files: int

    def describe(self) -> str:
        """One line, e.g. ``cotmod: policies from ./guidelines (12 files)``."""
        n = f"{self.files} file{'s' if self.files != 1 else ''}"
        if self.origin == "starter pack":
            return f"cotmod: policies from the starter pack ({n}; use --guidelines DIR for your own)"
        if self.origin == "config":
            return f"cotmod: policies from {_show(self.path)} (config file; {n})"
        return f"cotmod: policies from {_show(self.path)} ({n})"


@dataclass(frozen=True)
class LoadedSettings:
    """The result of :meth:`Settings.resolve`."""

    settings: Settings
    config_file: Path | None
    config_origin: ConfigOrigin | None
    policies: PolicySource
    notices: list[str] = field(default_factory=list)


def resolve_policy_source(
    explicit: str | Path | None = None,
    *,
    config_file: str | Path | None = None,
    _config: dict[str, Any] | None = None,
) -> PolicySource:
    """The policies to use: ``explicit`` > the config file's ``guidelines`` > ``./guidelines``
    when it is a directory > the starter pack. ``config_file`` None: the config file found by the
    usual rules (see the module docstring)."""
    if _config is None:
        found = _find_config(config_file)
        _config = _read_config(found[0]) if found else {}
    configured = _config.get("guidelines")
    origin: Literal["argument", "config", "cwd", "starter pack"]
    if explicit is not None:
        path, origin = Path(explicit), "argument"
    elif configured is not None:
        path, origin = Path(configured), "config"
        if not path.exists():
            where = f" (guidelines in {_show(Path(config_file))})" if config_file else ""
            raise ConfigError(f"policy directory or file not found: {path}{where}")
    elif Path("guidelines").is_dir():
        path, origin = Path("guidelines"), "cwd"
    else:
        path, origin = default_guidelines_dir(), "starter pack"
    if path.is_dir():
        files = len([q for q in path.iterdir() if q.suffix in (".yaml", ".yml")])
    else:
        files = 1 if path.exists() else 0
    return PolicySource(path, origin, files)


def _read_thresholds_file(path: str) -> dict[str, Any] | None:
    """The thresholds file as a mapping, or None when it cannot be read (the engine reports that)."""
    from ._yamlfile import read_yaml_mapping

    try:
        return read_yaml_mapping(Path(path), "thresholds file")
    except (CotmodError, OSError):
        return None


def classifier_thresholds_notice(path: str, data: dict[str, Any] | None = None) -> str | None:
    """A warning when a thresholds file given for the LLM's scores was written by ``cotmod
    classifier tune``: its ``thresholds`` are cut-offs on a classifier's scores, which mean nothing
    for the LLM's (the file carries them per policy for ``cotmod sync check``)."""
    data = _read_thresholds_file(path) if data is None else data
    if data is None or data.get("kind") != "classifier":
        return None
    return (f"cotmod: warning: {path} was written by cotmod classifier tune: its thresholds are cut-offs on a "
            "classifier's scores, and here they decide on the LLM's scores (choose LLM thresholds with cotmod tune)")


def _thresholds_notices(settings: Settings) -> list[str]:
    """Warnings about the thresholds file: written for a classifier, or tuned on scores blended
    with another ``triage_blend`` than this run's (``cotmod tune`` records it; a file without it
    was tuned on unblended scores)."""
    if not settings.thresholds:
        return []
    data = _read_thresholds_file(settings.thresholds)
    if data is None:
        return []
    out = []
    kind = classifier_thresholds_notice(settings.thresholds, data)
    if kind:
        out.append(kind)
    tuned = data.get("triage_blend") or 0.0
    if isinstance(tuned, bool) or not isinstance(tuned, (int, float)):
        return out
    used = settings.triage_blend if settings.triage and settings.logprobs else 0.0
    if not math.isclose(float(tuned), used, abs_tol=1e-9):
        out.append(f"cotmod: warning: {settings.thresholds} was tuned on scores with triage_blend {float(tuned):g}, and this "
                   f"run scores with triage_blend {used:g}: its thresholds may not mean what they did (tune again on scores "
                   f"like these, or set triage_blend = {float(tuned):g} with triage and logprobs)")
    return out


def _show(path: Path | None) -> str:
    if path is None:
        return "-"
    return str(path) if path.is_absolute() or str(path).startswith(".") else f"./{path}"


def _find_config(explicit: str | Path | None) -> tuple[Path, ConfigOrigin] | None:
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p, "argument"
    env = os.environ.get("COTMOD_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"COTMOD_CONFIG points to a missing file: {p}")
        return p, "environment"
    if Path("cotmod.toml").is_file():
        return Path("cotmod.toml"), "cwd"
    home = cotmod_home() / "config.toml"
    if home.is_file():
        return home, "home"
    return None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is not an error
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    known = set(Settings.model_fields) | set(CONFIG_ONLY_KEYS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    key_env = data.get("api_key_env")
    if key_env is not None and (not isinstance(key_env, str) or not key_env):
        raise ConfigError(f"{path}: api_key_env must be the name of an environment variable")
    for k in PATH_SETTINGS:
        v = data.get(k)
        if v is not None and not (isinstance(v, str) and v):
            raise ConfigError(f"{path}: {k} = {v!r}: expected a path (a non-empty string)")
        if isinstance(v, str) and v:
            expanded = Path(v).expanduser()  # "~/policies" means the user's home, as in a shell
            if expanded.is_absolute():
                data[k] = str(expanded)
            else:
                data[k] = str(path.parent / v) if str(path.parent) != "." else v
    for k, v in data.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{path}: {k} = {v}: not a finite number")
    return data
