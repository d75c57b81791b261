"""The test run leaves the checkout as it found it: nothing tracked changes and nothing new
appears (screenshots, backfleet.toml, logs, demo/ …). tests/conftest.py takes a snapshot when
the session starts and fails the session when the tree differs at its end; what was already
there before the run is compared by size and modification time, so it never counts against
the run unless the run changed it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

#: written by every Python or tool run; never the suite's output
CACHES = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv", ".hypothesis"}
)

Snapshot = dict[str, tuple[str, str]]
_BEFORE = pytest.StashKey["Snapshot | None"]()


def _digest(path: Path) -> str:
    """Size and mtime of a file, or of every file under a directory."""
    if path.is_symlink() or not path.exists():
        return "-"
    if path.is_file():
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    parts = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and not CACHES.intersection(p.relative_to(path).parts):
            st = p.stat()
            parts.append(f"{p.relative_to(path)}={st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def snapshot(root: Path) -> Snapshot | None:
    """``path -> (git status, digest)`` of every changed, untracked or ignored path, or None
    when ``root`` is not a git checkout (or git is missing)."""
    try:
        proc = subprocess.run(
            [
                "git",
                "status",
                "--porcelain=v1",
                "-z",
                "--untracked-files=all",
                "--ignored=matching",
            ],
            cwd=root,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    entries = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
    state: Snapshot = {}
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        code, name = entry[:2], entry[3:]
        if code[0] in "RC":  # a rename's source path follows; it is not a path of the tree
            i += 1
        if CACHES.intersection(Path(name.rstrip("/")).parts) or name.endswith(".egg-info/"):
            continue
        state[name] = (code, _digest(root / name))
    return state


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What the run changed, one line per path: ``status path``."""
    lines = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            lines.append(f"restored or removed during the run: {before[name][0]} {name}")
        elif name not in before:
            new = after[name][0] in ("??", "!!")
            lines.append(f"{'new' if new else 'changed'} during the run: {after[name][0]} {name}")
        elif before[name] != after[name]:
            lines.append(f"changed during the run: {after[name][0]} {name}")
    return lines


# --- the session hooks (tests/conftest.py imports them) -------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    session.stash[_BEFORE] = snapshot(session.config.rootpath)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when it left the checkout different from how it found it."""
    root = session.config.rootpath
    before = session.stash.get(_BEFORE, None)
    after = snapshot(root) if before is not None else None
    if before is None or after is None:
        return  # not a git checkout
    changed = changes(before, after)
    if not changed:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    write = print
    if reporter is not None:
        reporter.write("\n")
        write = reporter.write_line
    write(f"FAILED: the test run changed the checkout {root} (tests write under tmp_path):")
    for line in changed:
        write(f"  {line}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
