"""Settings: endpoint, model and engine knobs, from arguments, environment or a config file.

Precedence: explicit arguments > environment variables > config file > defaults.

Environment: ``COTMOD_BASE_URL``, ``COTMOD_API_KEY`` (else ``OPENAI_API_KEY``), ``COTMOD_MODEL``,
``COTMOD_LOCAL_MODEL``, ``COTMOD_CONFIG`` (path of a TOML config file), ``COTMOD_HOME`` (models, server state).
Config file (TOML, flat keys named like the fields of :class:`Settings`): ``$COTMOD_CONFIG``, else
``./cotmod.toml``, else ``$COTMOD_HOME/config.toml``. Unknown keys are an error naming the file.

With no ``base_url``, cotmod uses the embedded local backend (``local_model``), started on
127.0.0.1 on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from ._exceptions import ConfigError

__all__ = ["Settings", "cotmod_home"]

DEFAULT_LOCAL_MODEL = "qwen2.5-coder-1.5b"


def cotmod_home() -> Path:
    env = os.environ.get("COTMOD_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("cotmod"))


class Settings(BaseModel):
    """Everything that configures a moderator. Validated on construction."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

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
    concurrency: int = Field(default=4, ge=1, description="Maximum requests in flight")
    guidelines: str | None = Field(default=None, description="Directory or file of policies")
    prompts: str | None = Field(default=None, description="Directory of prompt templates")
    thresholds: str | None = Field(default=None, description="Thresholds file from cotmod tune")
    local_ctx: int = Field(default=8192, ge=512, description="Context size of the embedded server")
    local_threads: int = Field(default=0, ge=0, description="Threads of the embedded server (0 = all cores)")

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings from a config file, the environment and ``overrides`` (highest)."""
        values: dict[str, Any] = {}
        path = _config_path(config_file)
        if path is not None:
            values.update(_read_config(path))
        env = {
            "base_url": os.environ.get("COTMOD_BASE_URL"),
            "api_key": os.environ.get("COTMOD_API_KEY") or os.environ.get("OPENAI_API_KEY"),
            "model": os.environ.get("COTMOD_MODEL"),
            "local_model": os.environ.get("COTMOD_LOCAL_MODEL"),
        }
        values.update({k: v for k, v in env.items() if v})
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            where = f" (config file {path})" if path else ""
            first = exc.errors()[0]
            field = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"invalid setting {field}: {first['msg']}{where}") from None

    def redacted(self) -> dict[str, Any]:
        data = self.model_dump()
        data["api_key"] = "***" if self.api_key else None
        return data


def _config_path(explicit: str | Path | None) -> Path | None:
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    env = os.environ.get("COTMOD_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"COTMOD_CONFIG points to a missing file: {p}")
        return p
    for cand in (Path("cotmod.toml"), cotmod_home() / "config.toml"):
        if cand.is_file():
            return cand
    return None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    known = set(Settings.model_fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return data
