"""Read-ahead: iterate a blocking iterator one item ahead, in a background thread.

The range pipeline reads keyset batch N+1 from the source while batch N is embedded and
upserted, so the source read (a database round trip and row decoding) costs no wall time
when the provider or Milvus is the slower stage. At most ``depth`` items wait, so memory
stays bounded; errors raised by the reader surface, unchanged, at the consumer's next
``next()``; closing the read-ahead (or leaving its ``with`` block) stops the reader.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"


class ReadAhead(Generic[T]):
    """Pulls from ``items`` in a daemon thread, keeping up to ``depth`` items ready."""

    def __init__(self, items: Iterator[T], *, depth: int = 1, name: str = "read-ahead") -> None:
        if depth < 1:
            raise ValueError("read-ahead depth must be at least 1")
        self._items = items
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # handed to the consumer, which decides
            self._put((_ERROR, exc))
        finally:
            # a generator left early gives back what it holds (a connection) now, here
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def _put(self, message: tuple[str, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> ReadAhead[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == _ITEM:
            return value  # type: ignore[return-value]
        self._done = True
        if kind == _ERROR:
            assert isinstance(value, BaseException)
            raise value
        raise StopIteration

    def close(self, timeout: float = 5.0) -> None:
        """Stop the reader; an item it is reading is finished and dropped."""
        self._done = True
        self._stop.set()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
