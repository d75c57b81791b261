"""One settings object for every entry point.

Read once (environment ``BACKFLEET_*`` with ``__`` for nesting, then ``backfleet.toml``),
then passed down. Library code never reads the environment itself; the only exception is
resolving API keys, which happens here, at load time, from a named variable or a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from backfleet.errors import ConfigError

ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ModelSettings(BaseModel):
    """One embedding model the fleet can use, by label (``[models.<label>]``)."""

    provider: Literal["local", "openai"] = "local"
    name: str = "hash-words"
    version: str = "1"
    dimension: int = Field(default=256, gt=0, le=32768)
    metric: Literal["COSINE", "IP", "L2"] = "COSINE"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: Path | None = None
    #: false: the endpoint needs no key (a self-hosted TEI, vLLM, Ollama): none is read or
    #: sent. Explicit only, and only with a base_url (the official API always needs one).
    requires_api_key: bool = True
    send_dimensions: bool = False
    timeout_seconds: float = Field(default=30.0, gt=0)
    price_per_million_tokens: float = Field(default=0.0, ge=0)
    max_inputs_per_request: int = Field(default=2048, gt=0)
    max_request_tokens: int = Field(default=300_000, gt=0)
    max_input_tokens: int = Field(default=8192, gt=0)
    oversize_policy: Literal["truncate", "reject"] = "truncate"
    _api_key: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _keyless_needs_base_url(self) -> ModelSettings:
        if not self.requires_api_key and self.provider == "openai" and not self.base_url:
            raise ValueError(
                "requires_api_key = false needs a base_url (the official OpenAI API needs a key)"
            )
        return self

    @property
    def api_key(self) -> SecretStr | None:
        return self._api_key

    def resolve_api_key(self, environ: dict[str, str]) -> None:
        """Load the key from the file or the named variable; never log or store it."""
        if self.provider == "local" or not self.requires_api_key:
            return
        if self.api_key_file is not None:
            try:
                self._api_key = SecretStr(self.api_key_file.read_text().strip())
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the API key file {self.api_key_file}: {exc.strerror}",
                    hint="set models.<label>.api_key_file to a readable file",
                ) from None
            return
        value = environ.get(self.api_key_env)
        if value:
            self._api_key = SecretStr(value)


class SourceSettings(BaseModel):
    """The corpus: a SQL table read through SQLAlchemy."""

    url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    table: str = "documents"
    id_column: str = "id"
    text_column: str = "text"
    updated_at_column: str | None = None


class BackfillSettings(BaseModel):
    range_size: int = Field(default=5000, gt=0)
    batch_size: int = Field(default=256, gt=0, le=16384)
    #: while a batch is embedded and upserted, read the next one and commit the previous
    #: one's checkpoint in the background (false: one step after the other)
    overlap: bool = True
    lease_seconds: float = Field(default=120.0, gt=1)
    heartbeat_seconds: float = Field(default=20.0, gt=0)
    max_attempts: int = Field(default=5, gt=0)
    visibility_timeout_seconds: float = Field(default=21600.0, gt=0)
    reap_interval_seconds: float = Field(default=10.0, gt=0)
    #: spending cap in USD for a new migration (None: no cap); `backfleet budget` changes it
    budget_usd: float | None = Field(default=None, gt=0)
    resend_after_seconds: float = Field(default=120.0, gt=0)
    queue: str = "backfleet"
    index_type: Literal["HNSW", "FLAT", "IVF_FLAT", "AUTOINDEX"] = "HNSW"
    avg_chars_per_token: float = Field(default=4.0, gt=0)
    #: task slots of the whole fleet (workers × --concurrency): `plan` multiplies the
    #: throughput it measures by this (at most one slot per range) to estimate the time
    expected_concurrency: int = Field(default=2, gt=0)


class ThrottleSettings(BaseModel):
    rpm: int = Field(default=3000, gt=0)
    tpm: int = Field(default=1_000_000, gt=0)


class CutoverSettings(BaseModel):
    """Proof and switch: eval tolerances, the holdover before finalize, the Router's refresh."""

    #: how far the shadow may fall below live on each golden-set metric and still be GO
    max_recall_drop: float = Field(default=0.02, ge=0, le=1)
    max_ndcg_drop: float = Field(default=0.02, ge=0, le=1)
    max_mrr_drop: float = Field(default=0.02, ge=0, le=1)
    #: the shadow's index search must find this share of the exact top k
    min_index_recall: float = Field(default=0.95, ge=0, le=1)
    #: fewer judged queries than this is NO-GO (too few to decide on)
    min_queries: int = Field(default=20, gt=0)
    recall_k: int = Field(default=10, gt=0, le=1000)
    index_recall_sample: int = Field(default=50, gt=0)
    #: exact search scans at most this many rows (an id slice beyond it)
    exact_scan_max_rows: int = Field(default=200_000, gt=0)
    #: the old generation is kept this long after the alias swap before finalize may drop it
    holdover_hours: float = Field(default=72.0, ge=0)
    #: how often a Router re-reads the canary share and the alias
    router_refresh_seconds: float = Field(default=5.0, gt=0)
    #: HNSW search breadth (``ef``, raised to k when below) of eval's and the Router's searches:
    #: Milvus's default is about k, which missed 5-26 % of the exact top 10 (benchmarks.md)
    search_ef: int = Field(default=256, gt=0, le=32768)
    #: IVF_FLAT clusters searched (of nlist 128) by the same searches
    search_nprobe: int = Field(default=32, gt=0, le=65536)


class CatchupSettings(BaseModel):
    """Catch-up passes and dual write: what bypassed dual write reaches the shadow."""

    #: a pass that finds fewer changes than this (updated + created + deleted) is "settled"
    threshold: int = Field(default=10, ge=1)
    #: `backfleet catchup` stops after this many passes, settled or not
    max_passes: int = Field(default=5, gt=0)
    #: clock margin: a document counts as changed if updated_at > (read time - this)
    skew_seconds: float = Field(default=300.0, ge=0)
    #: without source.updated_at_column a pass hash-compares at most this many documents;
    #: a larger corpus is swept over several passes (settled needs one whole clean sweep)
    hash_scan_max_docs: int = Field(default=1_000_000, gt=0)
    #: rows per read while scanning the source and the shadow
    hash_scan_batch: int = Field(default=2000, gt=0, le=16384)
    #: new ids past the last range's end become a new range (run by the fleet) from this many
    new_range_min_docs: int = Field(default=1000, gt=0)
    #: how long a pass waits for the fleet to finish new ranges
    wait_timeout_seconds: float = Field(default=3600.0, gt=0)
    #: dual write when the live collection is not a backfleet generation (model unknown):
    #: "refuse" raises; "skip" writes the shadow only (the application keeps its own write)
    foreign_live: Literal["refuse", "skip"] = "refuse"


def _default_models() -> dict[str, ModelSettings]:
    return {
        "local-v1": ModelSettings(provider="local", name="hash-words", version="1", dimension=256),
        "local-v2": ModelSettings(provider="local", name="hash-ngrams", version="2", dimension=384),
    }


class Settings(BaseSettings):
    """Everything an entry point needs; built once by :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="BACKFLEET_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    broker_url: str = "redis://127.0.0.1:6379/0"
    redis_url: str = "redis://127.0.0.1:6379/0"
    milvus_uri: str = "http://127.0.0.1:19530"
    milvus_token: SecretStr | None = None
    alias: str = "documents"
    target_model: str = "local-v2"
    source: SourceSettings = Field(default_factory=SourceSettings)
    models: dict[str, ModelSettings] = Field(default_factory=_default_models)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)
    throttle: ThrottleSettings = Field(default_factory=ThrottleSettings)
    cutover: CutoverSettings = Field(default_factory=CutoverSettings)
    catchup: CatchupSettings = Field(default_factory=CatchupSettings)
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    @field_validator("alias")
    @classmethod
    def _alias_ok(cls, value: str) -> str:
        if not ALIAS_RE.match(value):
            raise ValueError("must start with a letter or _ and hold only letters, digits, _")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _LOADING.get("path")
        environ = _LOADING.get("environ")
        if isinstance(environ, dict):
            env_settings = _GivenEnvSource(settings_cls, environ)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    def model(self, label: str | None = None) -> ModelSettings:
        """The model settings by label (default: ``target_model``)."""
        key = label or self.target_model
        try:
            return self.models[key]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(
                f"unknown model label {key!r} (known: {known})",
                hint="add a [models.<label>] table to backfleet.toml or fix target_model",
            ) from None

    def public_snapshot(self) -> dict[str, Any]:
        """Settings as stored with a migration: no secrets, no credentials in URLs."""
        data = self.model_dump(mode="json", exclude={"milvus_token"})
        for key in ("database_url", "broker_url", "redis_url", "milvus_uri"):
            data[key] = redact_url(str(data[key]))
        data["source"]["url"] = redact_url(str(data["source"]["url"]))
        return data


#: What the settings being loaded read (set by :func:`load_settings` for one call).
_LOADING: dict[str, Any] = {"path": None, "environ": None}


class _GivenEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: dict[str, str]) -> None:
        self._given = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        case_sensitive = self.case_sensitive
        return {(k if case_sensitive else k.lower()): v for k, v in self._given.items()}


URL_PASSWORD_RE = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/:@]+:)(?P<pw>[^@/]*)@")


def redact_url(url: str) -> str:
    """Replace the password of a URL by ``***``."""
    return URL_PASSWORD_RE.sub(lambda m: f"{m.group('head')}***@", url)


def load_settings(
    config_path: Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings once: environment over ``backfleet.toml`` over defaults."""
    env = dict(os.environ if environ is None else environ)
    path = config_path
    if path is None and env.get("BACKFLEET_CONFIG"):
        path = Path(env["BACKFLEET_CONFIG"])
    if path is None and Path("backfleet.toml").exists():
        path = Path("backfleet.toml")
    if path is not None and not path.exists():
        raise ConfigError(f"config file {path} does not exist", hint="run `backfleet init`")
    if path is not None and not path.is_file():
        # e.g. what Docker creates in place of a missing bind-mounted file: never read as empty
        raise ConfigError(
            f"config file {path} is a directory, not a file",
            hint="remove it and run `backfleet init`, or point BACKFLEET_CONFIG at the file",
        )
    _LOADING["path"] = path
    _LOADING["environ"] = env
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"invalid setting {where}: {first['msg']}",
            hint=f"fix {where} in {path or 'the environment'} "
            f"(env BACKFLEET_{where.upper().replace('.', '__')})",
        ) from None
    except Exception as exc:  # malformed TOML
        raise ConfigError(f"cannot read settings from {path}: {exc}") from None
    finally:
        _LOADING["path"] = None
        _LOADING["environ"] = None
    for model in settings.models.values():
        model.resolve_api_key(env)
    return settings


EXAMPLE_TOML = """\
# backfleet.toml — every setting can also come from the environment:
# BACKFLEET_<NAME>, with __ between nested names (BACKFLEET_SOURCE__TABLE=docs).
# Secrets (API keys, the Milvus token) never go in this file: name a variable or a file.

# The URLs below are this clone's docker-compose.yml services as published on this host
# (database `backfleet`, password `postgres`: for local use only; with another
# POSTGRES_PASSWORD keep it out of this file and set BACKFLEET_DATABASE_URL and
# BACKFLEET_SOURCE__URL in the host's environment). The compose containers read this same
# file (./backfleet.toml, mounted read-only) and get their own URLs (postgres:5432,
# redis:6379, milvus:19530) from docker-compose.yml; the environment wins over this file.
# Checkpoint database (Postgres in production; the demo uses SQLite).
database_url = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/backfleet"
# Celery broker and the fleet-wide rate limiter.
broker_url = "redis://127.0.0.1:6379/0"
redis_url = "redis://127.0.0.1:6379/0"
# Milvus (standalone or cluster). Token: BACKFLEET_MILVUS_TOKEN in the environment.
milvus_uri = "http://127.0.0.1:19530"
# The alias applications query; generations are named <alias>__<model>__g<N>.
alias = "documents"
# The model label a new migration moves to (one of [models.*]).
target_model = "local-v2"

[source]
# The corpus: any SQLAlchemy URL; the table needs an id (integer or text) and a text column.
# Here: the compose Postgres. The containers read the corpus at SOURCE_URL (default: this
# same database as they see it); a corpus elsewhere needs both this url and SOURCE_URL.
url = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/backfleet"
table = "documents"
id_column = "id"
text_column = "text"
# Optional: lets catch-up find documents edited during the run.
# updated_at_column = "updated_at"

[backfill]
range_size = 5000        # documents per range (the unit of work, lease and checkpoint)
batch_size = 256         # documents per embedding request
overlap = true           # read the next batch / commit the last checkpoint meanwhile
lease_seconds = 120      # a range lease expires unless renewed by heartbeats
heartbeat_seconds = 20
max_attempts = 5         # per range, then `failed` with the error kept
index_type = "HNSW"
# budget_usd = 50.0      # the fleet pauses before spend would exceed it (`backfleet budget`)
reap_interval_seconds = 10   # `backfleet supervise`: how often it looks for lost work
resend_after_seconds = 120   # re-send a pending range's task when its last one is this old
expected_concurrency = 2     # task slots in the fleet (workers × --concurrency), for `plan`

[throttle]
rpm = 3000               # fleet-wide requests per minute
tpm = 1000000            # fleet-wide tokens per minute

[cutover]
max_ndcg_drop = 0.02     # eval: GO if the shadow loses at most this much nDCG@10 (and recall, MRR)
min_index_recall = 0.95  # eval: the shadow's index search must find 95% of the exact top k
holdover_hours = 72      # finalize drops the old generation only this long after the swap

[catchup]
threshold = 10           # settled when a catch-up pass finds fewer changes than this
max_passes = 5           # `backfleet catchup` stops after this many passes
skew_seconds = 300       # clock margin between workers, coordinator and source database

[models.local-v1]
provider = "local"       # deterministic feature hashing, no network
name = "hash-words"
version = "1"
dimension = 256

[models.local-v2]
provider = "local"
name = "hash-ngrams"
version = "2"
dimension = 384

# [models.openai-small]
# provider = "openai"
# name = "text-embedding-3-small"
# version = "2024-01"
# dimension = 1536
# base_url = "https://api.openai.com/v1"   # or `backfleet fake-provider` to rehearse
# api_key_env = "OPENAI_API_KEY"            # or api_key_file = "/run/secrets/openai"
# requires_api_key = false                  # a self-hosted endpoint that needs no key
# timeout_seconds = 30                      # per request; slow models: docs/operations.md
# price_per_million_tokens = 0.02
# max_inputs_per_request = 2048             # the provider's per-request limits
# max_request_tokens = 300000
# max_input_tokens = 8192
# oversize_policy = "truncate"              # or "reject" (to dead letters)
"""
