"""The throttle's pure algorithm (``backfleet/throttle/algorithm.py``): clamping, capacities,
and the adaptive factor on a simulated clock."""

from __future__ import annotations

import pytest

from backfleet.errors import ConfigError
from backfleet.throttle import (
    AimdPolicy,
    AimdState,
    aimd_rate_limited,
    aimd_recover,
    bucket_capacity,
    clamp_retry_after,
)
from tests.support.throttle_scenarios import Event, burst_then_healthy


def test_clamp_retry_after() -> None:
    assert clamp_retry_after(None, default=5.0, maximum=300.0) == (5.0, False)
    assert clamp_retry_after(2.5, default=5.0, maximum=300.0) == (2.5, False)
    assert clamp_retry_after(86400.0, default=5.0, maximum=300.0) == (300.0, True)
    assert clamp_retry_after(float("inf"), default=5.0, maximum=300.0) == (300.0, True)
    assert clamp_retry_after(-1.0, default=5.0, maximum=300.0) == (0.0, True)
    assert clamp_retry_after(float("nan"), default=5.0, maximum=300.0) == (5.0, True)


def test_bucket_capacity_is_a_burst_never_below_one() -> None:
    assert bucket_capacity(600, 2.0) == 20.0
    assert bucket_capacity(1_000_000, 2.0) == pytest.approx(33333.33, rel=1e-6)
    assert bucket_capacity(6, 2.0) == 1.0


# --- the adaptive factor (pure algorithm, simulated clock) --------------------------------


class _Model:
    """The pure AIMD functions on a simulated clock."""

    def __init__(self, policy: AimdPolicy | None = None) -> None:
        self.policy = policy or AimdPolicy()
        self.state = AimdState()

    def report(self, event: Event) -> None:
        now, kind, retry_after = event
        if kind == "429":
            self.state = aimd_rate_limited(self.state, now, retry_after, self.policy)
        else:
            self.state = aimd_recover(self.state, now, self.policy)

    def factor(self) -> float:
        return self.state.factor


def test_a_429_burst_drops_the_factor_and_it_is_back_within_30s() -> None:
    # the chaos run: 0.10 after a burst, only 0.39 two and a half minutes later
    model = _Model()
    after_burst, trace = burst_then_healthy(model.factor, model.report)
    assert after_burst == pytest.approx(0.1)  # ten cuts of 0.7: the floor
    assert [f for t, f in trace if t <= 30.0][-1] >= 0.95, trace
    assert [f for t, f in trace if t <= 20.0][-1] >= 0.9  # linear: 0.9 in recovery_seconds
    assert max(f for t, f in trace if t <= 1.0) == pytest.approx(0.1)  # no climb in cool-down


@pytest.mark.parametrize("ask_every", [0.05, 1.0, 5.0, 10.0])
def test_recovery_does_not_depend_on_how_often_the_fleet_asks(ask_every: float) -> None:
    model = _Model()
    _, trace = burst_then_healthy(model.factor, model.report, ask_every=ask_every)
    assert [f for t, f in trace if t <= 30.0][-1] >= 0.95, (ask_every, trace)


def test_concurrent_429s_of_one_burst_cut_the_rate_once() -> None:
    model = _Model()
    for w in range(8):
        model.report((100.0 + 0.05 * w, "429", 5.0))
    assert model.factor() == pytest.approx(0.7)
    # a request sent before the cut, answered 429 two seconds later (inside the cool-down)
    model.report((102.0, "429", 5.0))
    assert model.factor() == pytest.approx(0.7)
    assert model.state.cool_until == pytest.approx(107.0)
    # after the cool-down a fresh request is refused: that is a new signal, cut again
    model.report((107.5, "429", 5.0))
    assert model.factor() == pytest.approx(0.49)


def test_no_climb_during_a_cooldown_and_the_floor_holds() -> None:
    model = _Model()
    t = 0.0
    for _ in range(20):
        model.report((t, "429", 1.0))
        t += 1.0
    assert model.factor() == pytest.approx(0.1)  # the floor
    model.report((t - 0.5, "ok", 0.0))  # inside the last cool-down
    assert model.factor() == pytest.approx(0.1)


def test_the_climb_is_linear_in_time_and_capped_at_one() -> None:
    policy = AimdPolicy(recovery_seconds=20.0)
    model = _Model(policy)
    model.report((0.0, "429", 2.0))  # 0.7, cool-down until 2.0
    model.report((2.5, "ok", 0.0))  # within recovery_interval of the cool-down's end: no write
    assert model.factor() == pytest.approx(0.7)
    model.report((3.5, "ok", 0.0))  # 1.5 s of an 0.9-per-20-s climb
    assert model.factor() == pytest.approx(0.7 + 0.9 * 1.5 / 20)
    model.report((3.9, "ok", 0.0))
    assert model.factor() == pytest.approx(0.7 + 0.9 * 1.5 / 20)
    model.report((8.0, "ok", 0.0))  # the time since the last climb is credited, not lost
    assert model.factor() == pytest.approx(0.7 + 0.9 * 6.0 / 20)
    model.report((1000.0, "ok", 0.0))
    assert model.factor() == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"decrease": 1.0}, {"decrease": 0.0}, {"min_factor": 0.0}, {"recovery_seconds": 0.0}],
)
def test_aimd_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="AIMD"):
        AimdPolicy(**kwargs)
