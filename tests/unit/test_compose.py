"""docker-compose.yml: the services operators rely on, scalable workers, no secrets in the file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from backfleet.settings import EXAMPLE_TOML, Settings, SourceSettings, load_settings

try:
    import yaml
except ImportError:  # PyYAML is not a dependency of backfleet
    yaml = None

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")

STATE_SERVICES = ("postgres", "redis", "etcd", "minio", "milvus")
BACKFLEET_SERVICES = ("migrate", "worker", "coordinator")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert yaml is not None
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _words(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return command.split()
    return [word for part in command for word in str(part).split()]


def test_no_secret_literals_in_the_file() -> None:
    text = COMPOSE.read_text()
    assert "sk-" not in text
    assert "FLOWER_BASIC_AUTH:-" not in text
    assert "OPENAI_API_KEY:-" not in text
    assert "basic_auth=" not in text


@needs_yaml
def test_services_exist(services: dict[str, dict[str, Any]]) -> None:
    for name in (*STATE_SERVICES, *BACKFLEET_SERVICES, "flower"):
        assert name in services, name


@needs_yaml
def test_worker_is_scalable(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "build" in worker
    assert _words(worker["command"])[:1] == ["worker"]
    depends = worker["depends_on"]
    for name in ("postgres", "redis", "milvus"):
        assert depends[name]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


@needs_yaml
def test_state_services_have_health_checks_and_volumes(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in STATE_SERVICES:
        assert "healthcheck" in services[name], name
        assert services[name].get("volumes"), name
    assert "pg_isready" in " ".join(_words(services["postgres"]["healthcheck"]["test"]))
    assert "http://localhost:9091/healthz" in services["milvus"]["healthcheck"]["test"]
    milvus = services["milvus"]
    assert _words(milvus["command"]) == ["milvus", "run", "standalone"]
    assert set(milvus["environment"]) >= {"ETCD_ENDPOINTS", "MINIO_ADDRESS"}
    assert any("19530" in str(port) for port in milvus["ports"])


@needs_yaml
def test_redis_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    words = _words(services["redis"]["command"])
    assert words[words.index("--maxmemory-policy") + 1] == "noeviction"
    assert words[words.index("--appendonly") + 1] == "yes"


@needs_yaml
def test_flower_basic_auth_comes_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    flower = services["flower"]
    value = flower["environment"]["FLOWER_BASIC_AUTH"]
    # Either key-only (passed through from the host) or an interpolation without a default.
    assert value is None or (value.startswith("${FLOWER_BASIC_AUTH") and ":-" not in value)
    words = _words(flower["command"])
    assert "flower" in words
    assert "--enable_events=True" in words
    assert any("5555" in str(port) for port in flower["ports"])


@needs_yaml
def test_one_shot_migration_and_a_running_coordinator(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate = services["migrate"]
    assert _words(migrate["command"]) == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    coordinator = services["coordinator"]
    assert "profiles" not in coordinator
    assert _words(coordinator["command"])[0] == "supervise"
    assert coordinator["restart"] == "unless-stopped"


@needs_yaml
def test_backfleet_environment_names_real_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    nested = {"source": SourceSettings.model_fields}
    for name in BACKFLEET_SERVICES:
        env = services[name]["environment"]
        assert env["OPENAI_API_KEY"] is None, "the key is passed through, never written here"
        assert env["BACKFLEET_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["BACKFLEET_MILVUS_URI"] == "http://milvus:19530"
        for key in env:
            if not key.startswith("BACKFLEET_") or key == "BACKFLEET_CONFIG":
                continue
            path = key.removeprefix("BACKFLEET_").lower().split("__")
            assert path[0] in Settings.model_fields, key
            if len(path) > 1:
                assert path[1] in nested[path[0]], key


_DEFAULT_RE = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")


def _defaults(value: str) -> str:
    """A value as compose resolves it with none of its variables set."""
    return _DEFAULT_RE.sub(lambda m: m.group(1), value)


@needs_yaml
def test_backfleet_services_mount_the_host_cli_config(
    services: dict[str, dict[str, Any]],
) -> None:
    """./backfleet.toml by default, long syntax: a missing file is an error, not a directory."""
    for name in BACKFLEET_SERVICES:
        service = services[name]
        assert service["volumes"] == [
            {
                "type": "bind",
                "source": "${BACKFLEET_TOML:-./backfleet.toml}",
                "target": "/etc/backfleet/backfleet.toml",
                "read_only": True,
            }
        ], name
        assert service["environment"]["BACKFLEET_CONFIG"] == "/etc/backfleet/backfleet.toml"


@needs_yaml
def test_init_template_reaches_the_compose_services_from_the_host(
    tmp_path: Path, services: dict[str, dict[str, Any]]
) -> None:
    """`backfleet init` writes the URLs of the compose services as published on the host."""
    toml = tmp_path / "backfleet.toml"
    toml.write_text(EXAMPLE_TOML)
    host = load_settings(toml, environ={})
    pg = services["postgres"]["environment"]
    published = {
        name: _defaults(str(services[name]["ports"][0])).rsplit(":", 1)[0]
        for name in ("postgres", "redis", "milvus")
    }
    for url in (host.database_url, host.source.url):
        parts = urlsplit(url)
        assert f"{parts.hostname}:{parts.port}" == published["postgres"], url
        assert parts.path == "/" + pg["POSTGRES_DB"], url
        assert parts.username == pg["POSTGRES_USER"], url
        assert parts.password == _defaults(pg["POSTGRES_PASSWORD"]), url
    for url in (host.broker_url, host.redis_url):
        assert urlsplit(url).netloc == published["redis"], url
    assert urlsplit(host.milvus_uri).netloc == published["milvus"]
    # the containers' own URLs name the same database (by service name), password included
    env = services["worker"]["environment"]
    for key in ("BACKFLEET_DATABASE_URL", "BACKFLEET_SOURCE__URL"):
        parts = urlsplit(_defaults(env[key]))
        assert (parts.hostname, parts.port, parts.path) == ("postgres", 5432, "/backfleet"), key
        assert parts.password == _defaults(pg["POSTGRES_PASSWORD"]), key


def _compose_commands() -> list[list[str]]:
    commands = []
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            commands.append(["docker", "compose"])
    return commands


@pytest.mark.parametrize("profile", [[], ["--profile", "supervise"]], ids=["default", "supervise"])
def test_compose_tool_accepts_the_file(profile: list[str]) -> None:
    commands = _compose_commands()
    if not commands:
        pytest.skip("neither docker-compose nor `docker compose` is on PATH")
    for command in commands:
        result = subprocess.run(
            [*command, "-f", str(COMPOSE), *profile, "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, (command, result.stderr)
