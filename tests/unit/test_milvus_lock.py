"""A test session waiting for the machine's milvus-server lock says who holds it and for how
long it will wait, instead of blocking silently (tests/support/services.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import services
from tests.support.services import MilvusServer, lock_wait_seconds

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from pathlib import Path
from tests.support.services import take_machine_lock

lock = take_machine_lock(Path(sys.argv[1]), wait=0)
print("holding", flush=True)
time.sleep(120)
"""


def test_waiting_session_names_the_holder_and_its_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "milvus-server.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), "--session=holder-of-the-lock"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    server = MilvusServer("server")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        recorded = path.read_text()
        assert f"pid {holder.pid}" in recorded and "holder-of-the-lock" in recorded

        monkeypatch.setattr(services, "LOCK_PATH", path)
        with pytest.raises(RuntimeError) as failed:
            server._lock_machine(wait=1.5)
        said = capfd.readouterr().err
        # said once at the start of the wait: who holds it, since when, how long we wait
        assert f"pid {holder.pid}" in said and "holder-of-the-lock" in said, said
        assert "at most 1.5 s" in said and "BACKFLEET_TEST_MILVUS_LOCK_WAIT" in said, said
        assert "BACKFLEET_TEST_MILVUS_URI" in said, said
        assert f"pid {holder.pid}" in str(failed.value) and str(path) in str(failed.value)
        # the waiter never overwrote the holder's record
        assert path.read_text() == recorded
    finally:
        holder.kill()
        holder.wait()
        server.close()
        shutil.rmtree(server.dir, ignore_errors=True)


def test_the_wait_is_a_setting() -> None:
    assert lock_wait_seconds({}) == 1800
    assert lock_wait_seconds({"BACKFLEET_TEST_MILVUS_LOCK_WAIT": "45"}) == 45
