"""BatchWriter: a batch's checkpoint commits right after its own upsert, one batch at a time;
an error stops everything after it."""

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
    # strictly u0 a0 u1 a1 ...: never two batches upserted and not committed (the contract:
    # a crash repeats at most one batch)
    assert log.events == [e for i in range(6) for e in (f"u{i}", f"a{i}")]


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
    assert log.events == ["u0", "a0", "u1!"]


def test_a_lost_lease_at_commit_is_raised_and_stops_later_commits() -> None:
    log = Log()
    writer = BatchWriter(background=True)
    writer.submit(log.step("u0"), log.step("a0", error=LeaseLost("lease lost")))
    with pytest.raises(LeaseLost):
        for i in range(1, 5):
            writer.submit(log.step(f"u{i}", 0.01), log.step(f"a{i}"))
        writer.flush()
    writer.__exit__(LeaseLost, None, None)
    assert log.events == ["u0", "a0!"]


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
    assert not {n for n in after - before if "batch-writer" in n}
