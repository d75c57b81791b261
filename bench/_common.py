"""Helpers shared by the overhead, latency, growth and profile benchmarks (not a benchmark)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return (
        f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.machine()}, "
        f"Python {platform.python_version()}, loadavg {loadavg()}"
    )


def write_json(path: Path, results: list[Any]) -> None:
    """The machine, the command line and every result (dataclasses), for later comparison."""
    data = {"machine": machine(), "argv": sys.argv, "results": [asdict(r) for r in results]}
    path.write_text(json.dumps(data, indent=2))


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def seed_sql(pg_url: str, n: int, *, table: str = "documents", short: bool = False) -> float:
    """Fill ``table`` (the corpus schema: id, topic, text, updated_at) with ``n`` rows in SQL.

    One ``INSERT … SELECT generate_series`` (then the primary key), so 10M rows take a minute,
    not an hour of Python. Texts are 6 to 13 hex words (~310 characters, about the synthetic
    corpus's size); ``short`` makes them ``document <n>`` (for planning benchmarks).
    Returns the seconds it took.
    """
    import psycopg

    from backfleet.corpus import source_table
    from backfleet.db.session import make_engine

    engine = make_engine(pg_url)
    tbl = source_table(table)
    tbl.drop(engine, checkfirst=True)
    engine.dispose()
    text = (
        "'document ' || g"
        if short
        else "(SELECT string_agg(md5((g * 16 + k)::text), ' ') "
        "FROM generate_series(1, 6 + g % 8) k)"
    )
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE UNLOGGED TABLE {table} (id integer NOT NULL, topic varchar(32), "
            "text text, updated_at timestamptz)"
        )
        conn.execute(
            f"INSERT INTO {table} SELECT g, 'topic' || (g % 12), {text}, now() "
            f"FROM generate_series(1, {int(n)}) g"
        )
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        conn.execute(f"ANALYZE {table}")
    return time.monotonic() - started


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}").exists() else []:
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


@dataclass
class RssSampler:
    """Samples the RSS of process trees on a thread: ``(seconds, {pid: KiB})`` rows."""

    roots: list[int]
    interval: float = 2.0
    samples: list[tuple[float, dict[int, int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            snap = {p: rss_kib(p) for r in self.roots for p in descendants(r)}
            alive = {p: k for p, k in snap.items() if k}
            self.samples.append((time.monotonic() - self._t0, alive))
            if self._stop.wait(self.interval):
                return

    def summary(self) -> dict[str, Any]:
        """Per process: RSS (MiB) at the first sample, its peak and the last sample."""
        per: dict[int, list[tuple[float, int]]] = {}
        for t, snap in self.samples:
            for p, k in snap.items():
                per.setdefault(p, []).append((t, k))
        return {
            str(p): {
                "first_mib": round(v[0][1] / 1024, 1),
                "peak_mib": round(max(k for _, k in v) / 1024, 1),
                "last_mib": round(v[-1][1] / 1024, 1),
                "samples": len(v),
            }
            for p, v in per.items()
        }

    def series(self, pid: int, points: int = 12) -> list[tuple[float, float]]:
        """About ``points`` evenly spaced ``(seconds, MiB)`` samples of one process."""
        rows = [(t, snap[pid] / 1024) for t, snap in self.samples if pid in snap]
        if len(rows) <= points:
            return [(round(t, 1), round(m, 1)) for t, m in rows]
        step = (len(rows) - 1) / (points - 1)
        return [
            (round(rows[round(i * step)][0], 1), round(rows[round(i * step)][1], 1))
            for i in range(points)
        ]


def wait_for_log(logdir: Path, needle: str, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sum(
            p.read_text(errors="replace").count(needle) for p in logdir.glob("worker-*.log")
        )
        if found >= count:
            return True
        time.sleep(0.3)
    return False


def _milvus_pids() -> list[int]:
    """The milvus engine's processes (one milvus-server per machine: the lock sees to it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"milvus run standalone" in cmd or b"milvus-lite" in cmd:
            pids.append(int(proc.name))
    return pids


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def wait_milvus_quiet(max_wait: float = 180.0, below: float = 0.15, every: float = 3.0) -> float:
    """Wait until Milvus uses less than ``below`` of a core (index builds and compactions of
    the previous run would otherwise slow the next one down). Returns the seconds waited."""
    pids = _milvus_pids()
    if not pids:
        return 0.0
    hz = os.sysconf("SC_CLK_TCK")
    started = time.monotonic()
    while time.monotonic() - started < max_wait:
        a = _cpu_ticks(pids)
        time.sleep(every)
        if (_cpu_ticks(pids) - a) / hz / every < below:
            break
    return time.monotonic() - started
