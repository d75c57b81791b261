"""Real services for integration tests: Postgres databases, Redis, a Milvus server, workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import psycopg
import redis

PG_ADMIN = os.environ.get("BACKFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BACKFLEET_TEST_REDIS", "redis://127.0.0.1:6379")
VENV_BIN = Path(sys.executable).parent
LOCK_PATH = Path(tempfile.gettempdir()) / "backfleet-milvus-server.lock"

#: `milvus-server`, except that its port check binds with SO_REUSEADDR. The wrapper reserves
#: each port with a plain bind first and, when that fails, silently moves to the next port; a
#: restart on the same port (the chaos suite's Milvus outage) then lands elsewhere while the
#: old port's connections sit in TIME_WAIT. The Go server itself binds with SO_REUSEADDR.
MILVUS_SERVER_LAUNCHER = """
import socket, sys
import milvus

def try_bind_port(self, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None

milvus.MilvusServerConfig.try_bind_port = try_bind_port
sys.argv[0] = "milvus-server"
sys.exit(milvus.main())
"""


#: how long a test session waits for another session's milvus-server (seconds)
LOCK_WAIT_DEFAULT = 1800.0
LOCK_REPORT_EVERY = 60.0


def lock_wait_seconds(env: Mapping[str, str] | None = None) -> float:
    """``BACKFLEET_TEST_MILVUS_LOCK_WAIT``: the longest wait for the machine's Milvus lock."""
    raw = (os.environ if env is None else env).get("BACKFLEET_TEST_MILVUS_LOCK_WAIT")
    return float(raw) if raw else LOCK_WAIT_DEFAULT


def say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _holder(lock: IO[str]) -> str:
    lock.seek(0)
    text = " ".join(lock.read().split())
    return text or "an unknown process (the lock file records no holder)"


def take_machine_lock(
    path: Path,
    wait: float,
    notify: Callable[[str], None] = say,
    report_every: float = LOCK_REPORT_EVERY,
) -> IO[str]:
    """Take the exclusive lock at ``path`` and record this process in it (pid, command line,
    start time). While another process holds it, say who and for how long at most this one
    waits, once and then every ``report_every`` seconds; past ``wait``, raise."""
    import fcntl

    lock = open(path, "a+")  # noqa: SIM115 - held by the caller; never truncates a holder's record
    started = time.monotonic()
    next_report = started
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            now = time.monotonic()
            if now - started >= wait:
                holder = _holder(lock)
                lock.close()
                raise RuntimeError(
                    f"another test session holds the milvus-server lock {path} after "
                    f"{wait:g} s: {holder} (fix: wait for it, raise "
                    "BACKFLEET_TEST_MILVUS_LOCK_WAIT, or use a running Milvus with "
                    "BACKFLEET_TEST_MILVUS_URI)"
                ) from None
            if now >= next_report:
                first = next_report == started
                notify(
                    f"backfleet tests: {'waiting' if first else 'still waiting'} for the "
                    f"machine's milvus-server lock {path} ({now - started:.0f} s of at most "
                    f"{wait:g} s, BACKFLEET_TEST_MILVUS_LOCK_WAIT), held by {_holder(lock)}; "
                    "BACKFLEET_TEST_MILVUS_URI=<uri> uses a running Milvus instead"
                )
                next_report = now + report_every
            time.sleep(min(1.0, max(0.05, wait / 20)))
    lock.seek(0)
    lock.truncate()
    since = datetime.now(UTC).isoformat(timespec="seconds")
    lock.write(f"pid {os.getpid()} ({' '.join(sys.argv)}) in {os.getcwd()} since {since}\n")
    lock.flush()
    return lock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@contextmanager
def postgres_database(prefix: str = "bftest") -> Iterator[str]:
    """A fresh Postgres database; yields its SQLAlchemy URL and drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_db_url(db: int) -> str:
    url = f"{REDIS_URL}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


class MilvusServer:
    """The real Milvus engine (`milvus-server`, 2.3.5) as a subprocess; or `milvus-lite server`."""

    def __init__(self, kind: str = "server", notify: Callable[[str], None] = say) -> None:
        self.kind = kind
        self.notify = notify
        self.dir = Path(tempfile.mkdtemp(prefix=f"bf-milvus-{kind}-"))
        # never the default 19530: milvus-server silently moves to the next port when the
        # default is busy (even in TIME_WAIT), but fails loudly on an explicit one
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        """Start and wait until it answers; on failure nothing is left running.

        milvus-server's embedded etcd always listens on 2379/2380, so only one runs per machine:
        a second test session waits for the first one's server to stop (a file lock).
        """
        if self.kind == "server":
            self._lock_machine(wait=lock_wait_seconds())
        try:
            self._start(timeout)
        except BaseException:
            self.close()
            raise

    def _lock_machine(self, wait: float) -> None:
        self._lock: IO[str] | None = take_machine_lock(LOCK_PATH, wait, self.notify)
        if port_open(2379):
            raise RuntimeError(
                "port 2379 is taken (a milvus-server or etcd not started by the tests runs here); "
                "stop it, or point the tests at it with BACKFLEET_TEST_MILVUS_URI"
            )

    def _start(self, timeout: float) -> None:
        if self.kind == "server":
            cmd = [
                sys.executable,
                "-c",
                MILVUS_SERVER_LAUNCHER,
                "--data",
                str(self.dir / "data"),
                "--proxy-port",
                str(self.port),
            ]
        else:
            cmd = [
                str(VENV_BIN / "milvus-lite"),
                "server",
                "--data-dir",
                str(self.dir / "data"),
                "--port",
                str(self.port),
            ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        from pymilvus import MilvusClient

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"milvus {self.kind} exited: {self.log_path.read_text()[-2000:]}"
                )
            if port_open(self.port):
                try:
                    client = MilvusClient(uri=self.uri, timeout=5)
                    client.list_collections()
                    client.close()
                    return
                except Exception:
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"milvus {self.kind} not ready after {timeout}s; log {self.log_path}")

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL the whole process group (milvus-server lingers after TERM)."""
        if self.proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        # milvus-server spawns its engine in the same session; wait until the port is free
        deadline = time.monotonic() + 15
        while (port_open(self.port) or port_open(2379)) and time.monotonic() < deadline:
            time.sleep(0.2)

    def outage(self, seconds: float) -> None:
        """Stop the server for ``seconds``, then start it again on the same port and data."""
        self.stop()
        time.sleep(seconds)
        self._start(120.0)

    def close(self) -> None:
        """Stop the server and let the next test session start one."""
        self.stop()
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None


class WorkerFleet:
    """Real `backfleet worker` processes (Celery), configured through BACKFLEET_* variables."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = {**os.environ, **env}
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 1, *, concurrency: int = 1, pool: str = "prefork") -> None:
        for _ in range(n):
            idx = len(self.procs)
            log = open(self.logdir / f"worker-{idx}.log", "ab")  # noqa: SIM115
            proc = subprocess.Popen(
                [
                    str(VENV_BIN / "backfleet"),
                    "worker",
                    "--concurrency",
                    str(concurrency),
                    "--pool",
                    pool,
                    "--name",
                    f"bftest-{idx}-{uuid.uuid4().hex[:6]}@%h",
                    "--loglevel",
                    "INFO",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs.append(proc)

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.logdir.glob("worker-*.log"))
        )


REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


def restart_redis(down_seconds: float = 2.0) -> None:
    """Shut the machine's Redis down (it keeps nothing on disk) and start it again."""
    subprocess.run(
        ["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True, timeout=30
    )
    time.sleep(down_seconds)
    Path("/var/lib/redis").mkdir(parents=True, exist_ok=True)
    Path("/var/log/redis").mkdir(parents=True, exist_ok=True)
    subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(f"{REDIS_URL}/0").ping():
                return
        except redis.RedisError:
            time.sleep(0.3)
    raise RuntimeError("redis did not come back")


def kill_postgres_backends(dbname: str) -> int:
    """Terminate every connection to ``dbname`` (what a Postgres restart does to clients)."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)
