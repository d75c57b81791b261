"""`backfleet demo` as a new operator runs it: twice into one directory, or into a temporary one."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance
BIN = Path(sys.executable).parent / "backfleet"
ROOT = Path(__file__).resolve().parents[2]
#: the demo needs no servers: point every service setting at nothing
NO_SERVERS = {
    "BACKFLEET_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
    "BACKFLEET_BROKER_URL": "redis://127.0.0.1:1/0",
}


def demo(
    args: list[str], cwd: Path, tmpdir: Path | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **NO_SERVERS, **(extra_env or {})}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [str(BIN), "demo", "--docs", "200", *args],
        env=env,
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=300,
    )


def test_second_run_into_the_same_dir_starts_fresh(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    for attempt in (1, 2):
        proc = demo(["--dir", str(work)], tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, (attempt, out[-4000:])
        assert "Traceback" not in out
        assert "demo finished" in out
        # its own files are kept in --dir, and the second run did not add to the first's
        assert (work / "checkpoints.db").exists() and (work / ".backfleet-demo").exists()
        assert "source: 200 documents" in out
        assert "reconcile #1: clean" in out, (attempt, out[-3000:])


def test_dir_with_foreign_files_is_refused_in_one_line(tmp_path: Path) -> None:
    work = tmp_path / "mine"
    work.mkdir()
    (work / "milvus.db").mkdir()  # not the demo's: no marker file
    (work / "notes.txt").write_text("keep me")
    proc = demo(["--dir", str(work)], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert str(work) in lines[0] and "--dir" in lines[0]
    assert (work / "notes.txt").read_text() == "keep me" and (work / "milvus.db").is_dir()


def test_temporary_dir_is_removed_at_the_end_unless_kept(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = demo([], tmp_path, tmpdir=tmp)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert list(tmp.iterdir()) == [], sorted(str(p) for p in tmp.rglob("*"))[:20]
    assert "removed at the end" in out
    assert list(tmp_path.iterdir()) == [tmp]  # nothing written into the current directory

    kept = demo(["--keep"], tmp_path, tmpdir=tmp)
    out = kept.stdout + kept.stderr
    assert kept.returncode == 0, out[-4000:]
    (left,) = list(tmp.iterdir())
    assert (left / "checkpoints.db").exists()
    assert f"files kept in {left}" in " ".join(out.split())


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: list[str]) -> set[str]:
    """The distributions ``names`` need, transitively (markers ignored: over-approximated)."""
    seen: set[str] = set()
    todo = [_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in reqs if "extra ==" not in r]
    return seen


def dev_only_modules() -> set[str]:
    """Top-level modules that only the dev extras bring (not the runtime dependencies)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _closure(project["dependencies"])
    dev_only = _closure(project["optional-dependencies"]["dev"]) - runtime
    return {
        module
        for module, dists in metadata.packages_distributions().items()
        if dists and all(_name(d) in dev_only for d in dists)
    }


BLOCKER = """
import sys

BLOCKED = set({modules!r})


class DevExtrasBlocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} comes only with the dev extras")
        return None


sys.meta_path.insert(0, DevExtrasBlocked())
"""


def test_demo_needs_nothing_from_the_dev_extras(tmp_path: Path) -> None:
    """`make demo` installs only the runtime package: the demo must run without the dev extras."""
    blocked = dev_only_modules()
    assert {"pytest", "yaml", "mypy", "milvus"} <= blocked, sorted(blocked)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(modules=sorted(blocked)))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", str(ROOT))])}
    probe = subprocess.run(
        [sys.executable, "-c", "import yaml"], env={**os.environ, **env}, capture_output=True
    )
    assert probe.returncode != 0 and b"dev extras" in probe.stderr  # the blocker works
    proc = demo(["--dir", str(tmp_path / "demo")], tmp_path, extra_env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "demo finished" in out
