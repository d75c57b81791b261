"""BatchWriter: a batch's checkpoint commits only after its own upsert, in order; errors stick."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from backfleet.errors import LeaseLost, VectorStoreUnavailable
from workers.pipeline import BatchWriter


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.lock = threading.Lock()

    def step(
        self, name: str, delay: float = 0.0, error: Exception | None = None
    ) -> Callable[[], None]:
        def run() -> None:
            time.sleep(delay)
            if error is not None:
                with self.lock:
                    self.events.append(f"{name}!")
                raise error
            with self.lock:
                self.events.append(name)

        return run


@pytest.mark.parametrize("background", [True, False])
def test_each_advance_follows_its_own_upsert_and_advances_stay_in_order(background: bool) -> None:
    log = Log()
    with BatchWriter(background=background) as writer:
        for i in range(6):
            # slow commits, fast upserts: commits queue up behind each other
            writer.submit(log.step(f"u{i}", 0.005), log.step(f"a{i}", 0.02))
        writer.flush()
    ups = [e for e in log.events if e.startswith("u")]
    advs = [e for e in log.events if e.startswith("a")]
    assert ups == [f"u{i}" for i in range(6)] and advs == [f"a{i}" for i in range(6)]
    for i in range(6):
        assert log.events.index(f"u{i}") < log.events.index(f"a{i}")


def test_submit_returns_while_the_batch_is_written() -> None:
    log = Log()
    with BatchWriter(background=True) as writer:
        started = time.monotonic()
        writer.submit(log.step("u0", 0.3), log.step("a0"))
        assert time.monotonic() - started < 0.2  # the caller embeds the next batch meanwhile
        assert writer.flush() is True
        assert writer.flush() is False
    assert log.events == ["u0", "a0"]


def test_a_failed_upsert_skips_its_advance_and_every_later_batch() -> None:
    log = Log()
    writer = BatchWriter(background=True)
    writer.submit(log.step("u0"), log.step("a0"))
    writer.submit(log.step("u1", error=VectorStoreUnavailable("milvus down")), log.step("a1"))
    with pytest.raises(VectorStoreUnavailable):
        writer.submit(log.step("u2"), log.step("a2"))
        writer.submit(log.step("u3"), log.step("a3"))
        writer.flush()
    writer.__exit__(VectorStoreUnavailable, None, None)
    assert "a1" not in log.events and "u2" not in log.events and "u3" not in log.events
    assert log.events[:2] == ["u0", "a0"] or log.events[:2] == ["u0", "u1!"]


def test_a_lost_lease_at_commit_is_raised_and_stops_later_commits() -> None:
    log = Log()
    writer = BatchWriter(background=True)
    writer.submit(log.step("u0"), log.step("a0", error=LeaseLost("lease lost")))
    with pytest.raises(LeaseLost):
        for i in range(1, 5):
            writer.submit(log.step(f"u{i}", 0.01), log.step(f"a{i}"))
        writer.flush()
    writer.__exit__(LeaseLost, None, None)
    assert not [e for e in log.events if e.startswith("a") and e != "a0!"]


def test_leaving_on_an_error_still_commits_what_was_upserted() -> None:
    log = Log()
    with (
        pytest.raises(RuntimeError, match="embedding failed"),
        BatchWriter(background=True) as writer,
    ):
        writer.submit(log.step("u0", 0.1), log.step("a0", 0.1))
        raise RuntimeError("embedding failed")
    assert log.events == ["u0", "a0"]


def test_no_threads_are_left_behind() -> None:
    before = {t.name for t in threading.enumerate()}
    with BatchWriter(background=True) as writer:
        writer.submit(lambda: None, lambda: None)
    after = {t.name for t in threading.enumerate()}
    assert not {n for n in after - before if "batch-upsert" in n or "checkpoint-commit" in n}
