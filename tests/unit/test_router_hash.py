"""The Router's canary share: within ±2 points of P over 10,000 keys, sticky per key."""

from __future__ import annotations

import pytest

from backfleet.router import BUCKETS, bucket, in_canary

KEYS = [f"user-{i}" for i in range(10_000)]


@pytest.mark.parametrize("percent", [1, 5, 25, 50, 90])
def test_share_within_two_points(percent: float) -> None:
    share = 100 * sum(in_canary(k, percent) for k in KEYS) / len(KEYS)
    assert abs(share - percent) <= 2, share


def test_sticky_and_monotonic() -> None:
    first = [in_canary(k, 25) for k in KEYS]
    assert first == [in_canary(k, 25) for k in KEYS]  # same answer every time
    five = {k for k in KEYS if in_canary(k, 5)}
    twenty_five = {k for k in KEYS if in_canary(k, 25)}
    assert five <= twenty_five  # raising the share keeps the keys already in it
    assert not any(in_canary(k, 0) for k in KEYS)
    assert all(in_canary(k, 100) for k in KEYS)


def test_bucket_is_stable_across_processes() -> None:
    # sha256, not hash(): the same key lands in the same bucket in every process
    assert (
        bucket("user-42")
        == int.from_bytes(__import__("hashlib").sha256(b"user-42").digest()[:8], "big") % BUCKETS
    )
    assert 0 <= bucket("") < BUCKETS
