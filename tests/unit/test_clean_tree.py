"""The session-end check of tests/conftest.py: a test run that writes into the checkout fails,
one that leaves it as it found it passes, whatever was there before the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFTEST = "from tests.support.clean_tree import pytest_sessionfinish, pytest_sessionstart\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (repo / "conftest.py").write_text(CONFTEST)
    (repo / "tracked.txt").write_text("v1\n")
    (repo / "edited-before.txt").write_text("v1\n")
    (repo / ".gitignore").write_text("*.db\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    # the operator's own work in progress, there before the run: never the run's fault
    (repo / "edited-before.txt").write_text("v2, uncommitted\n")
    (repo / "notes-before.txt").write_text("untracked\n")
    (repo / "mine.db").write_text("ignored\n")
    return repo


def session(repo: Path, test_body: str) -> subprocess.CompletedProcess[str]:
    (repo / "test_it.py").write_text(f"def test_it():\n    {test_body}\n")
    git(repo, "add", "test_it.py")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_it.py"],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_run_that_leaves_the_tree_alone_passes(repo: Path) -> None:
    proc = session(repo, "assert open('tracked.txt').read() == 'v1\\n'")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "changed the checkout" not in proc.stdout


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("open('flower-tasks.png', 'w').write('x')", "new during the run: ?? flower-tasks.png"),
        ("open('tracked.txt', 'w').write('v2')", "changed during the run:  M tracked.txt"),
        ("open('edited-before.txt', 'a').write('v3')", "changed during the run:  M edited-before"),
        ("open('demo.db', 'w').write('x')", "new during the run: !! demo.db"),
        (
            "import os; os.makedirs('demo/sub'); open('demo/sub/f', 'w').write('x')",
            "new during the run: ?? demo/sub/f",
        ),
    ],
)
def test_a_run_that_writes_into_the_tree_fails(repo: Path, body: str, line: str) -> None:
    proc = session(repo, body)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout  # the test itself passed: the session check failed it
    assert "the test run changed the checkout" in proc.stdout, proc.stdout
    assert line in proc.stdout, proc.stdout
