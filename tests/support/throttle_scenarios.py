"""Scripted provider feedback for the adaptive factor, on a simulated clock (no sleeping).

Both the pure algorithm (``aimd_rate_limited`` / ``aimd_recover``) and the Lua scripts in Redis
(``FleetThrottle(clock=…)``) are driven through the same events, so the unit and integration
tests check one property the same way.
"""

from __future__ import annotations

from collections.abc import Callable

#: (time, "429" with its Retry-After, or "ask": a worker asks for a request, and it succeeds)
Event = tuple[float, str, float]


def burst_then_healthy(
    factor_of: Callable[[], float],
    report: Callable[[Event], None],
    *,
    burst_seconds: float = 10.0,
    retry_after: float = 1.0,
    workers: int = 4,
    ask_every: float = 0.25,
    healthy_seconds: float = 30.0,
    start: float = 1000.0,
) -> tuple[float, list[tuple[float, float]]]:
    """A provider that refuses everything for ``burst_seconds``, then accepts everything.

    During the burst, each time the cool-down ends all ``workers`` send and all get a 429 (the
    first answers the rate, the others were in flight with it). Afterwards a worker asks every
    ``ask_every`` seconds (an acquire poll; granted or not, then a success). Returns the factor
    when the burst ends, and ``(seconds since the last 429, factor)`` after each ask up to
    ``healthy_seconds`` after the last 429.
    """
    t = last_429 = start
    while t <= start + burst_seconds:
        for w in range(workers):
            report((t + 0.01 * w, "429", retry_after))
        last_429 = t + 0.01 * (workers - 1)
        t = last_429 + retry_after  # the fleet waits out the cool-down, then sends again
    after_burst = factor_of()
    trace: list[tuple[float, float]] = []
    while t - last_429 <= healthy_seconds:
        report((t, "ask", 0.0))
        trace.append((t - last_429, factor_of()))
        t += ask_every
    return after_burst, trace
