"""The one parser of OpenAI-style rate-limit headers (``x-ratelimit-*``, ``Retry-After``).

Used by the throttles (:meth:`~backfleet.throttle.base.Throttle.observe_headers`) and by the
OpenAI-compatible embedder (the cool-down of a 429).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

_DURATION_RE = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:h|ms|us|µs|μs|ns|m|s))+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|μs|ns|m|s)")
_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}


def parse_duration(value: object) -> float | None:
    """Seconds in a Go-style duration (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1m30.5s"``).

    A bare non-negative number is taken as seconds. Anything else gives ``None``.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    try:
        plain = float(text)
    except ValueError:
        pass
    else:
        return plain if math.isfinite(plain) and plain >= 0 else None
    if not _DURATION_RE.fullmatch(text):
        return None
    total = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART_RE.findall(text)
    )
    return total if math.isfinite(total) else None


def parse_count(value: object) -> int | None:
    """A non-negative whole number from a header value (``"59"``, ``"59.0"``), else ``None``."""
    if not isinstance(value, str):
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0 or number != int(number):
        return None
    return int(number)


@dataclass(frozen=True)
class RateLimitInfo:
    """What OpenAI-style ``x-ratelimit-*`` headers said; ``None`` where absent or malformed."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)


_COUNT_HEADERS = {
    "x-ratelimit-remaining-requests": "remaining_requests",
    "x-ratelimit-remaining-tokens": "remaining_tokens",
    "x-ratelimit-limit-requests": "limit_requests",
    "x-ratelimit-limit-tokens": "limit_tokens",
}
_DURATION_HEADERS = {
    "x-ratelimit-reset-requests": "reset_requests",
    "x-ratelimit-reset-tokens": "reset_tokens",
}


def parse_rate_limit_headers(headers: Mapping[str, str]) -> tuple[RateLimitInfo, list[str]]:
    """Parse the rate-limit headers (names case-insensitive); also name the malformed ones."""
    found: dict[str, Any] = {}
    bad: list[str] = []
    for raw_name, raw_value in headers.items():
        name = str(raw_name).strip().lower()
        value: int | float | None
        if name in _COUNT_HEADERS:
            field_name, value = _COUNT_HEADERS[name], parse_count(raw_value)
        elif name in _DURATION_HEADERS:
            field_name, value = _DURATION_HEADERS[name], parse_duration(raw_value)
        else:
            continue
        if value is None:
            bad.append(name)
        elif field_name.startswith("limit") and value == 0:
            bad.append(name)  # a limit of zero is nonsense; never throttle to a standstill on it
        else:
            found[field_name] = value
    return RateLimitInfo(**found), sorted(bad)


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP-date).

    ``headers`` may be any case-insensitive mapping or a dict with lower-cased keys.
    Returns ``None`` when no usable advice is present.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
        return max(0.0, seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
