"""Settings: environment over TOML, clear errors, secrets kept out of snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

from backfleet.errors import ConfigError
from backfleet.settings import EXAMPLE_TOML, load_settings, redact_url


def test_example_toml_loads(tmp_path: Path) -> None:
    path = tmp_path / "backfleet.toml"
    path.write_text(EXAMPLE_TOML)
    s = load_settings(path, environ={})
    assert s.alias == "documents"
    assert s.model("local-v2").dimension == 384


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "backfleet.toml"
    path.write_text(EXAMPLE_TOML)
    monkeypatch.setenv("BACKFLEET_SOURCE__TABLE", "articles")
    monkeypatch.setenv("BACKFLEET_BACKFILL__BATCH_SIZE", "64")
    s = load_settings(path)
    assert s.source.table == "articles"
    assert s.backfill.batch_size == 64


def test_bad_value_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text("[backfill]\nbatch_size = -3\n")
    with pytest.raises(ConfigError, match=r"backfill\.batch_size.*BACKFLEET_BACKFILL__BATCH_SIZE"):
        load_settings(path, environ={})


def test_unknown_model_label(tmp_path: Path) -> None:
    s = load_settings(None, environ={})
    with pytest.raises(ConfigError, match="unknown model label 'nope'"):
        s.model("nope")


def test_api_key_from_env_or_file_never_in_snapshot(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("sk-from-file-123\n")
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        "[models.a]\nprovider='openai'\nname='m'\ndimension=8\napi_key_env='MY_KEY'\n"
        f"[models.b]\nprovider='openai'\nname='m'\ndimension=8\napi_key_file='{keyfile}'\n"
    )
    s = load_settings(
        cfg,
        environ={"MY_KEY": "sk-env-456", "BACKFLEET_DATABASE_URL": "postgresql://u:hunter2@h/db"},
    )
    assert (
        s.model("a").api_key is not None and s.model("a").api_key.get_secret_value() == "sk-env-456"
    )
    assert (
        s.model("b").api_key is not None
        and s.model("b").api_key.get_secret_value() == "sk-from-file-123"
    )
    text = repr(s) + str(s.public_snapshot()) + repr(s.model("a"))
    for secret in ("sk-env-456", "sk-from-file-123", "hunter2"):
        assert secret not in str(s.public_snapshot())
    assert "sk-env-456" not in text and "sk-from-file-123" not in text


def test_unreadable_key_file(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        f"[models.a]\nprovider='openai'\nname='m'\ndimension=8\napi_key_file='{tmp_path}/missing'\n"
    )
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        load_settings(cfg, environ={})


def test_redact_url() -> None:
    assert (
        redact_url("postgresql+psycopg://me:s3cret@db:5432/x")
        == "postgresql+psycopg://me:***@db:5432/x"
    )
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_bad_alias(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="alias"):
        load_settings(None, environ={"BACKFLEET_ALIAS": "bad-alias!"})
