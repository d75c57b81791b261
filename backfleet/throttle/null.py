"""A throttle that never waits: for the in-process demo and tests without Redis."""

from __future__ import annotations

from collections.abc import Mapping

from backfleet.throttle.algorithm import positive_int as _positive_int
from backfleet.throttle.base import Decision, ThrottleStatus


class NullThrottle:
    """A throttle that never waits: for the in-process demo and tests without Redis."""

    counts_tokens = False

    def __init__(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self.wait_seconds_total = 0.0
        self._rpm, self._tpm = rpm, tpm
        self._paused = False

    def acquire(self, tokens: int) -> float:
        return 0.0

    def try_acquire(self, tokens: int) -> Decision:
        return Decision(granted=True, reason="granted", wait=0.0)

    def ensure_limits(self, rpm: int, tpm: int) -> bool:
        written = self._rpm is None
        if written:
            self._rpm = _positive_int("throttle.rpm", rpm)
            self._tpm = _positive_int("throttle.tpm", tpm)
        return written

    def set_limits(self, rpm: int | None = None, tpm: int | None = None) -> None:
        if rpm is not None:
            self._rpm = _positive_int("throttle.rpm", rpm)
        if tpm is not None:
            self._tpm = _positive_int("throttle.tpm", tpm)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def limits(self) -> ThrottleStatus:
        return ThrottleStatus(
            key="null",
            rpm=self._rpm,
            tpm=self._tpm,
            paused=self._paused,
            factor=1.0,
            cooldown_remaining=0.0,
        )

    def report_rate_limited(self, retry_after: float | None = None) -> None:
        return None

    def report_success(self) -> None:
        return None

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        return None
