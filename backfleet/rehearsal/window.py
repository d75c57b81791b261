"""The sliding RPM/TPM window of the rehearsal provider."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


@dataclass(frozen=True)
class Decision:
    ok: bool
    retry_after: float = 0.0
    reason: str = ""


class SlidingWindow:
    """Accepted requests and tokens over the last ``window_seconds``; not thread-safe."""

    def __init__(
        self,
        rpm: int,
        tpm: int,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rpm < 1 or tpm < 1 or window_seconds <= 0:
            raise ValueError("rpm, tpm and window_seconds must be positive")
        self.rpm = rpm
        self.tpm = tpm
        self.window = window_seconds
        self.clock = clock
        self._entries: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self.max_requests = 0
        self.max_tokens = 0

    def _prune(self, now: float) -> None:
        while self._entries and self._entries[0][0] <= now - self.window:
            _, tokens = self._entries.popleft()
            self._tokens -= tokens

    def check(self, tokens: int) -> Decision:
        """Would a request of ``tokens`` fit now? If not, how long until it would."""
        now = self.clock()
        self._prune(now)
        wait = 0.0
        reasons: list[str] = []
        if len(self._entries) + 1 > self.rpm:
            oldest_needed = self._entries[len(self._entries) - self.rpm][0]
            wait = max(wait, oldest_needed + self.window - now)
            reasons.append("requests")
        if self._tokens + tokens > self.tpm:
            to_free = self._tokens + tokens - self.tpm
            freed = 0
            for ts, entry_tokens in self._entries:
                freed += entry_tokens
                if freed >= to_free:
                    wait = max(wait, ts + self.window - now)
                    break
            reasons.append("tokens")
        if reasons:
            return Decision(ok=False, retry_after=max(wait, 0.001), reason="+".join(reasons))
        return Decision(ok=True)

    def admit(self, tokens: int) -> None:
        now = self.clock()
        self._prune(now)
        self._entries.append((now, tokens))
        self._tokens += tokens
        self.max_requests = max(self.max_requests, len(self._entries))
        self.max_tokens = max(self.max_tokens, self._tokens)

    def usage(self) -> tuple[int, int, float]:
        """Requests and tokens in the window now, and seconds until it is empty."""
        now = self.clock()
        self._prune(now)
        reset = self._entries[-1][0] + self.window - now if self._entries else 0.0
        return len(self._entries), self._tokens, reset

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0
        self.max_requests = 0
        self.max_tokens = 0

    def headers(self) -> dict[str, str]:
        requests, tokens, reset = self.usage()
        per_minute = 60.0 / self.window  # the limit headers are per minute, like OpenAI's
        return {
            "x-ratelimit-limit-requests": str(round(self.rpm * per_minute)),
            "x-ratelimit-remaining-requests": str(max(0, self.rpm - requests)),
            "x-ratelimit-reset-requests": format_reset(reset),
            "x-ratelimit-limit-tokens": str(round(self.tpm * per_minute)),
            "x-ratelimit-remaining-tokens": str(max(0, self.tpm - tokens)),
            "x-ratelimit-reset-tokens": format_reset(reset),
        }
