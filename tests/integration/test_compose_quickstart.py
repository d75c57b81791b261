"""The README's compose quickstart, followed literally, against this machine's real services.

Docker is not needed: `docker-compose config` resolves docker-compose.yml offline exactly as
`docker compose up` would (interpolation, defaults, volumes). The test then starts the
`migrate`, `worker` and `coordinator` commands as local processes with exactly the environment
and the mounted files the resolved file gives their containers, and runs the README's host
commands (`backfleet init`, `db upgrade`, `plan`, `start`, `status`, `reconcile`) with the
environment the README gives the operator: none beyond the `backfleet.toml` that `init` wrote.

What stands in for Docker, and nothing else:
- a compose service name as seen from a container (`postgres:5432`, `redis:6379`,
  `milvus:19530`) and the same service as published on the host (`127.0.0.1:5432`, ...) are
  rewritten to this machine's services: host, port and database only. The compose Postgres's
  database `backfleet` becomes a fresh test database, Redis database 0 becomes a private one,
  Milvus becomes the shared test server. User and password are kept and checked against the
  compose Postgres's (this machine's Postgres trusts local connections and would not notice);
- a bind-mounted file is a symlink at a temporary path standing for the container path, and a
  container variable whose value is that container path (BACKFLEET_CONFIG) names the symlink;
- a port a container listens on inside its own network namespace and does not publish
  (`supervise --metrics-port 9108`) becomes a free local port;
- the processes run from an empty directory (the image's WORKDIR), so a `backfleet.toml`
  lying around cannot stand in for the mounted one; PATH and PYTHONPATH are added.

Anything the README's environment leaves pointing elsewhere (the wrong database, another
password, a file that is not mounted) therefore fails here as it would for an operator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from backfleet.corpus import seed_source
from backfleet.db.session import make_engine
from tests.support.fleet import wait_for
from tests.support.services import REDIS_URL, free_port, postgres_database, redis_db_url

yaml = pytest.importorskip("yaml")

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "backfleet"
DOCS = 2000
TABLE = "articles"  # the operator's corpus is not called "documents"
REDIS_DB = 14
BACKFLEET_SERVICES = ("migrate", "worker", "coordinator")


def _base_env() -> dict[str, str]:
    """What any process here gets from the machine: PATH, HOME and the tree under test."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _compose_config(workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (scripts/ensure-test-tools.sh installs it)")
    proc = subprocess.run(
        [tool, "-f", str(workdir / "docker-compose.yml"), "config"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert isinstance(data, dict)
    return data


class Machine:
    """Compose service addresses (in containers and as published) → this machine's services."""

    def __init__(self, services: dict[str, Any], test_db_url: str, milvus_uri: str) -> None:
        pg_env = services["postgres"]["environment"]
        self.pg_user = str(pg_env.get("POSTGRES_USER") or "postgres")
        self.pg_password = str(pg_env["POSTGRES_PASSWORD"])
        self.pg_db = str(pg_env.get("POSTGRES_DB") or self.pg_user)
        test = urlsplit(test_db_url)
        redis = urlsplit(REDIS_URL)
        milvus = urlsplit(milvus_uri)
        real = {
            "postgres": (f"{test.hostname}:{test.port or 5432}", {f"/{self.pg_db}": test.path}),
            "redis": (f"{redis.hostname}:{redis.port or 6379}", {"/0": f"/{REDIS_DB}"}),
            "milvus": (f"{milvus.hostname}:{milvus.port or 19530}", {"": "", "/": "/"}),
        }
        #: (host, port) → (real host:port, {path: real path})
        self.addresses: dict[tuple[str, int], tuple[str, dict[str, str]]] = {}
        for name, (netloc, paths) in real.items():
            service = services[name]
            for published in service.get("ports", []):
                host, port, target = _published(published)
                self.addresses[(name, target)] = (netloc, paths)
                self.addresses[(host, port)] = (netloc, paths)

    def url(self, value: str, where: str) -> str:
        """The same URL pointing at this machine's service; a URL to anything else fails."""
        parts = urlsplit(value)
        assert parts.hostname and parts.port, f"{where} = {value!r}: no host and port"
        key = (parts.hostname, parts.port)
        assert key in self.addresses, (
            f"{where} = {value!r} points at {parts.hostname}:{parts.port}, "
            f"not at a compose service (known: {sorted(self.addresses)})"
        )
        netloc, paths = self.addresses[key]
        assert parts.path in paths, (
            f"{where} = {value!r} names {parts.path!r}, the compose service has {sorted(paths)}"
        )
        if parts.scheme.startswith("postgresql"):
            assert (parts.username, parts.password) == (self.pg_user, self.pg_password), (
                f"{where} = {value!r}: not the compose Postgres's user and password"
            )
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(
            (parts.scheme, userinfo + netloc, paths[parts.path], parts.query, parts.fragment)
        )


def _published(entry: Any) -> tuple[str, int, int]:
    """(host address, host port, container port) of one `ports` entry of the resolved file."""
    if isinstance(entry, dict):
        return (
            str(entry.get("host_ip") or "0.0.0.0"),
            int(entry["published"]),
            int(entry["target"]),
        )
    text = str(entry).split("/", 1)[0]
    host, port, target = (
        text.rsplit(":", 2) if text.count(":") == 2 else ("0.0.0.0", *text.split(":"))
    )
    return host, int(port), int(target)


def _looks_like_url(value: str) -> bool:
    return "://" in value


class Container:
    """One compose service's command run here with its container's environment and files."""

    def __init__(self, name: str, service: dict[str, Any], machine: Machine, root: Path) -> None:
        self.name = name
        self.root = root / f"container-{name}"
        workdir = self.root / "home" / "backfleet"
        workdir.mkdir(parents=True)
        self.workdir = workdir
        mounts: dict[str, str] = {}
        for volume in service.get("volumes", []):
            source, target = _bind(volume)
            local = self.root / target.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.symlink_to(source)
            mounts[target] = str(local)
        env = _base_env()
        for key, value in (service.get("environment") or {}).items():
            if value is None:  # key-only: the host environment of compose had none
                continue
            value = str(value)
            if value in mounts:
                value = mounts[value]
            elif _looks_like_url(value):
                value = machine.url(value, f"{name}: {key}")
            env[key] = value
        self.env = env
        self.command = _local_ports([str(word) for word in service["command"]])
        self.log = self.root / "output.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(BIN), *self.command],
            cwd=self.workdir,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), *self.command],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        import signal
        from contextlib import suppress

        if self.proc is None or self.proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def output(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ---\n{text[-4000:]}"


def _bind(volume: Any) -> tuple[str, str]:
    if isinstance(volume, dict):
        assert volume.get("type") == "bind", volume
        return str(volume["source"]), str(volume["target"])
    source, target = str(volume).split(":")[:2]
    return source, target


def _local_ports(command: list[str]) -> list[str]:
    """A port the container listens on and does not publish: any free one here."""
    words = list(command)
    for i, word in enumerate(words[:-1]):
        if word == "--metrics-port":
            words[i + 1] = str(free_port())
    return words


def _host(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """A host command of the README, with the environment the README gives the operator."""
    return subprocess.run(
        [str(BIN), *args],
        cwd=cwd,
        env=_base_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the example backfleet.toml has no single line {old!r}"
    return text.replace(old, new)


@pytest.fixture
def test_db() -> Iterator[str]:
    with postgres_database("bfcompose") as url:
        yield url


def test_readme_quickstart_finishes_a_migration(
    test_db: str, milvus_uri: str, tmp_path: Path
) -> None:
    redis_db_url(REDIS_DB)  # empty it
    operator = tmp_path / "clone"
    operator.mkdir()
    shutil.copy(ROOT / "docker-compose.yml", operator / "docker-compose.yml")
    # the operator's corpus, in the compose Postgres (the source the containers default to)
    seed_source(make_engine(test_db), DOCS, table=TABLE)
    alias = f"qs_{uuid.uuid4().hex[:8]}"  # the Milvus server is shared with other test runs

    # `backfleet init`, then `$EDITOR backfleet.toml` as the README says: the source table,
    # the alias, a limit
    init = _host(["init"], operator)
    assert init.returncode == 0, init.stderr
    toml_path = operator / "backfleet.toml"
    text = toml_path.read_text()
    text = _edit(text, 'table = "documents"', f'table = "{TABLE}"')
    text = _edit(text, 'alias = "documents"', f'alias = "{alias}"')
    text = _edit(text, "range_size = 5000 ", "range_size = 500 ")

    # the compose file as `docker compose up` resolves it in the operator's directory
    compose = _compose_config(operator, _base_env())
    services = compose["services"]
    machine = Machine(services, test_db, milvus_uri)

    # this machine instead of the published ports: host, port and database of each URL
    settings = tomllib.loads(text)
    for where, value in [
        ("database_url", settings["database_url"]),
        ("broker_url", settings["broker_url"]),
        ("redis_url", settings["redis_url"]),
        ("milvus_uri", settings["milvus_uri"]),
        ("source.url", settings["source"]["url"]),
    ]:
        text = text.replace(f'"{value}"', f'"{machine.url(value, "backfleet.toml: " + where)}"')
    toml_path.write_text(text)

    containers = {
        name: Container(name, services[name], machine, tmp_path) for name in BACKFLEET_SERVICES
    }
    try:
        upgrade = _host(["db", "upgrade"], operator)
        assert upgrade.returncode == 0, upgrade.stderr
        plan = _host(["plan", "--json"], operator)
        assert plan.returncode == 0, plan.stderr
        report = json.loads(plan.stdout)
        assert report["docs"] == DOCS and report["ranges"] == DOCS // 500
        start = _host(["start"], operator)
        assert start.returncode == 0, start.stderr

        # `docker compose up -d coordinator worker`: migrate runs first, once, and succeeds
        migrate = containers["migrate"].run()
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        containers["coordinator"].start()
        containers["worker"].start()

        def logs() -> str:
            st = _host(["status"], operator)
            return "\n".join([st.stdout, st.stderr, *(c.output() for c in containers.values())])

        def done() -> bool:
            for c in containers.values():
                if c.proc is not None:
                    assert c.proc.poll() is None, f"{c.name} exited\n{logs()}"
            st = _host(["status", "--json"], operator)
            assert st.returncode == 0, st.stderr
            data = json.loads(st.stdout)
            assert not data["ranges"].get("failed"), logs()
            return bool(data["ranges"].get("done") == report["ranges"])

        wait_for(done, 180, "the quickstart's migration to finish", interval=2, on_timeout=logs)

        reconcile = _host(["reconcile", "--json"], operator)
        assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
        assert json.loads(reconcile.stdout)["clean"] is True
        for c in ("worker", "coordinator"):
            proc = containers[c].proc
            assert proc is not None and proc.poll() is None, logs()
    finally:
        for c in containers.values():
            c.stop()
        _drop_collections(milvus_uri, alias)


def _drop_collections(milvus_uri: str, alias: str) -> None:
    """Drop what this test created (its alias is unique), nothing else."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_uri, timeout=30)
    try:
        for name in client.list_collections():
            if name.startswith(f"{alias}__"):
                client.drop_collection(name)
    finally:
        client.close()


def _refusal(container: Container) -> str:
    """The container's command exits 2 at once with one `error:` line (what `docker logs` shows)."""
    proc = subprocess.Popen(
        [str(BIN), *container.command],
        cwd=container.workdir,
        env=container.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        container.proc = proc
        container.stop()
        raise AssertionError(f"{container.name} did not refuse to start") from None
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_containers_refuse_to_start_without_a_config_that_serves_the_target(
    tmp_path: Path,
) -> None:
    """No backfleet.toml, a directory in its place, or no model for target_model: exit 2."""
    redis_db_url(REDIS_DB)
    operator = tmp_path / "clone"
    operator.mkdir()
    shutil.copy(ROOT / "docker-compose.yml", operator / "docker-compose.yml")
    services = _compose_config(operator, _base_env())["services"]
    # nothing is connected to: each container must refuse before it reaches a service
    machine = Machine(
        services, "postgresql+psycopg://postgres@127.0.0.1:5432/bfnone", "http://127.0.0.1:1"
    )
    toml_path = operator / "backfleet.toml"
    for name in BACKFLEET_SERVICES:
        volumes = services[name]["volumes"]
        # the long syntax: Docker refuses a missing source instead of creating a directory
        assert volumes == [
            {
                "type": "bind",
                "source": str(toml_path),
                "target": "/etc/backfleet/backfleet.toml",
                "read_only": True,
            }
        ], volumes

    worker = Container("worker", services["worker"], machine, tmp_path / "missing")
    line = _refusal(worker)
    assert "config file" in line and "does not exist" in line and "backfleet init" in line

    toml_path.mkdir()  # what Docker makes of a missing file mounted with the short syntax
    line = _refusal(Container("worker", services["worker"], machine, tmp_path / "dir"))
    assert "is a directory" in line and "backfleet init" in line, line
    toml_path.rmdir()

    assert _host(["init"], operator).returncode == 0
    text = toml_path.read_text()
    toml_path.write_text(_edit(text, 'target_model = "local-v2"', 'target_model = "openai-large"'))
    for name in ("worker", "coordinator"):
        line = _refusal(Container(name, services[name], machine, tmp_path / "nomodel"))
        assert "unknown model label 'openai-large'" in line, line
