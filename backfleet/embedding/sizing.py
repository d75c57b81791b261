"""Request sizing for slow models: after a request times out, later ones carry fewer inputs.

A slow self-hosted model (a few documents per second) cannot embed ``backfill.batch_size``
documents within ``timeout_seconds``: the request that timed out is split in two (the caller
does that), and the :class:`RequestSizer` remembers the size that failed, so this process's
next requests start below it instead of timing out again. It grows back (doubling) when a
request at the cap took under a quarter of the timeout, so a passing slowdown costs little.
One sizer per model (:func:`sizer_for`), shared by the threads of a worker process.
"""

from __future__ import annotations

import threading

from backfleet.logs import get_logger

log = get_logger("backfleet.sizing")


class RequestSizer:
    """The most inputs one request of a model may carry now (``None``: no cap)."""

    def __init__(self, timeout_seconds: float | None) -> None:
        self.timeout_seconds = timeout_seconds
        self.cap: int | None = None
        self._lock = threading.Lock()

    def limit(self, n: int) -> int:
        """How many of ``n`` inputs to send in one request."""
        cap = self.cap
        return n if cap is None else max(1, min(n, cap))

    def timed_out(self, n: int) -> None:
        """A request of ``n`` inputs timed out: cap later requests at half of it."""
        with self._lock:
            cap = max(1, n // 2)
            if self.cap is None or cap < self.cap:
                self.cap = cap
        log.warning("request_timed_out_split", inputs=n, cap=self.cap, timeout=self.timeout_seconds)

    def succeeded(self, n: int, seconds: float) -> None:
        """A request of ``n`` inputs took ``seconds``: grow the cap if it was well within."""
        timeout = self.timeout_seconds
        with self._lock:
            if self.cap is None or n < self.cap or timeout is None or seconds >= timeout / 4:
                return
            self.cap *= 2
        log.info("request_cap_raised", cap=self.cap, seconds=round(seconds, 3))


_SIZERS: dict[str, RequestSizer] = {}
_SIZERS_LOCK = threading.Lock()


def sizer_for(key: str, timeout_seconds: float | None) -> RequestSizer:
    """The process-wide sizer of one model (by its tag)."""
    with _SIZERS_LOCK:
        sizer = _SIZERS.get(key)
        if sizer is None:
            sizer = _SIZERS[key] = RequestSizer(timeout_seconds)
        return sizer
