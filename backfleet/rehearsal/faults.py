"""Injected latency and failures of the rehearsal provider."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

FAULT_KINDS = (
    "429",
    "500",
    "503",
    "timeout",
    "malformed",
    "wrong_count",
    "wrong_dimension",
    "nan",
)


class BadRequest(ValueError):
    """A request or admin body the server refuses with 400."""


@dataclass
class Faults:
    """Injected latency and failures; the JSON shape is in the package docstring."""

    latency_ms: float = 0.0
    #: added per input of a request (a slow self-hosted model: time grows with the batch)
    latency_per_input_ms: float = 0.0
    probability: dict[str, float] = field(default_factory=dict)
    next: dict[str, int] = field(default_factory=dict)
    poison: list[str] = field(default_factory=list)
    timeout_seconds: float = 30.0
    retry_after_seconds: float = 1.0

    def update(self, data: Json) -> None:
        """Apply an admin body; raises :class:`BadRequest` and changes nothing if invalid."""
        unknown = set(data) - {
            "latency_ms",
            "latency_per_input_ms",
            "probability",
            "next",
            "poison",
            "timeout_seconds",
            "retry_after_seconds",
            "clear",
        }
        if unknown:
            raise BadRequest(f"unknown fault settings: {', '.join(sorted(unknown))}")
        new = Faults() if data.get("clear") else Faults(**self.to_json())
        for key in ("latency_ms", "latency_per_input_ms", "timeout_seconds", "retry_after_seconds"):
            if key in data:
                setattr(new, key, _non_negative(data[key], key))
        if "probability" in data:
            new.probability = {
                kind: min(1.0, _non_negative(p, f"probability.{kind}"))
                for kind, p in _kinds(data["probability"], "probability").items()
            }
        if "next" in data:
            for kind, n in _kinds(data["next"], "next").items():
                new.next[kind] = int(_non_negative(n, f"next.{kind}"))
        if "poison" in data:
            poison = data["poison"]
            poison = [poison] if isinstance(poison, str) else poison
            if not isinstance(poison, list) or not all(isinstance(p, str) and p for p in poison):
                raise BadRequest("poison must be a non-empty string or a list of them")
            new.poison = list(poison)
        self.__dict__.update(new.__dict__)

    def draw(self, rng: random.Random) -> str | None:
        """The fault for the next request, if any: pending counts first, then chance."""
        for kind in FAULT_KINDS:
            if self.next.get(kind, 0) > 0:
                self.next[kind] -= 1
                return kind
        for kind in FAULT_KINDS:
            p = self.probability.get(kind, 0.0)
            if p > 0 and rng.random() < p:
                return kind
        return None

    def to_json(self) -> Json:
        return {
            "latency_ms": self.latency_ms,
            "latency_per_input_ms": self.latency_per_input_ms,
            "probability": dict(self.probability),
            "next": {k: v for k, v in self.next.items() if v > 0},
            "poison": list(self.poison),
            "timeout_seconds": self.timeout_seconds,
            "retry_after_seconds": self.retry_after_seconds,
        }


def _non_negative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise BadRequest(f"{name} must be a number >= 0")
    return float(value)


def _kinds(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{name} must be an object keyed by fault kind")
    bad = [k for k in value if k not in FAULT_KINDS]
    if bad:
        raise BadRequest(f"unknown fault kinds in {name}: {bad} (known: {', '.join(FAULT_KINDS)})")
    return value
