"""Request packing: split a batch of texts into provider requests within the provider's limits.

A provider refuses a whole request when one input is over its per-input token limit, or
when the request has too many inputs or tokens. :func:`pack` makes every request fit:
an over-limit input is truncated (``policy="truncate"``) or left out with a reason
(``policy="reject"``), and never fails the others. The caller records both per document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import structlog

from backfleet.embedding.tokens import TokenCounter
from backfleet.errors import ConfigError
from backfleet.settings import ModelSettings

OversizePolicy = Literal["truncate", "reject"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PackLimits:
    """One provider's request limits (OpenAI's embeddings endpoint by default)."""

    max_inputs: int = 2048
    max_request_tokens: int = 300_000
    max_input_tokens: int = 8192

    def __post_init__(self) -> None:
        for name in ("max_inputs", "max_request_tokens", "max_input_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_input_tokens > self.max_request_tokens:
            raise ConfigError(
                f"max_input_tokens ({self.max_input_tokens}) is larger than "
                f"max_request_tokens ({self.max_request_tokens}): one input could never be sent",
                hint="lower models.<label>.max_input_tokens or raise max_request_tokens",
            )

    @classmethod
    def from_settings(cls, model: ModelSettings) -> PackLimits:
        return cls(
            max_inputs=model.max_inputs_per_request,
            max_request_tokens=model.max_request_tokens,
            max_input_tokens=model.max_input_tokens,
        )


@dataclass(frozen=True)
class PackResult:
    """Requests as index lists into ``texts``, in input order."""

    #: indexes into ``texts``, each list one request within the limits
    requests: list[list[int]]
    #: the texts to send, same length and order as the input; truncated ones are cut
    texts: list[str]
    #: tokens of each request (sum over its inputs, after truncation)
    request_tokens: list[int]
    #: tokens of each text after truncation (the original count for a rejected one)
    input_tokens: list[int]
    #: indexes whose text was truncated to ``max_input_tokens``
    truncated: list[int] = field(default_factory=list)
    #: indexes left out of every request, with the reason
    rejected: list[tuple[int, str]] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.request_tokens)

    def request_texts(self, request: int) -> list[str]:
        """The texts of request number ``request``, in order."""
        return [self.texts[i] for i in self.requests[request]]


def pack(
    texts: Sequence[str],
    counter: TokenCounter,
    limits: PackLimits,
    policy: OversizePolicy = "truncate",
) -> PackResult:
    """Group ``texts`` into requests, greedily in order, each within ``limits``."""
    if policy not in ("truncate", "reject"):
        raise ConfigError(f"unknown oversize policy {policy!r}", hint="use truncate or reject")
    out = list(texts)
    counts = counter.count_many(out)
    truncated: list[int] = []
    rejected: list[tuple[int, str]] = []
    requests: list[list[int]] = []
    request_tokens: list[int] = []
    current: list[int] = []
    current_tokens = 0
    for index, tokens in enumerate(counts):
        if tokens > limits.max_input_tokens:
            if policy == "reject":
                rejected.append(
                    (index, f"input has {tokens} tokens, limit {limits.max_input_tokens}")
                )
                continue
            out[index] = counter.truncate(out[index], limits.max_input_tokens)
            tokens = counts[index] = counter.count(out[index])
            truncated.append(index)
        if current and (
            len(current) >= limits.max_inputs or current_tokens + tokens > limits.max_request_tokens
        ):
            requests.append(current)
            request_tokens.append(current_tokens)
            current, current_tokens = [], 0
        current.append(index)
        current_tokens += tokens
    if current:
        requests.append(current)
        request_tokens.append(current_tokens)
    if truncated or rejected:
        log.info(
            "oversize_inputs",
            policy=policy,
            truncated=len(truncated),
            rejected=len(rejected),
            limit=limits.max_input_tokens,
        )
    return PackResult(
        requests=requests,
        texts=out,
        request_tokens=request_tokens,
        input_tokens=counts,
        truncated=truncated,
        rejected=rejected,
    )
