"""Token counting: exact ``cl100k_base`` for OpenAI embedding models, else a calibrated estimate.

The exact counter uses ``toktok`` (package ``toktok-rs``), whose vocabularies are compiled
into its extension module: counting never reads a data file, a cache directory or the
network, so it works the same on an air-gapped server. Its counts are tiktoken's,
id for id (checked in ``tests/unit/embedding/test_tokens.py``).

For any other model the :class:`EstimatingCounter` starts at 4 characters per token and
learns the real ratio from the ``usage.total_tokens`` each response bills
(:meth:`EstimatingCounter.observe`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import toktok

CL100K = "cl100k_base"
#: OpenAI embedding models tokenized with ``cl100k_base``.
CL100K_MODELS = frozenset({"text-embedding-ada-002"})
CL100K_PREFIXES = ("text-embedding-3-",)
#: Larger than any text's token count: ``toktok.truncate`` with it only counts.
_NO_LIMIT = 2**63 - 1


@runtime_checkable
class TokenCounter(Protocol):
    """Counts and cuts texts in the tokens a provider bills and limits."""

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` (on a character boundary) within ``max_tokens``."""
        ...


def _check_limit(max_tokens: int) -> None:
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")


class Cl100kCounter:
    """Exact ``cl100k_base`` counts, offline. Stateless and thread-safe; share one."""

    encoding = CL100K

    def __init__(self, *, threads: int = 1) -> None:
        # threads for count_many: 1 keeps a prefork worker to its own core; 0 uses all cores
        self._threads = threads

    def __repr__(self) -> str:
        return f"Cl100kCounter(threads={self._threads})"

    def count(self, text: str) -> int:
        # truncate() counts the whole text in one pass and skips batch_count's thread setup
        _, total = toktok.truncate(text, _NO_LIMIT, CL100K)
        return int(total)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [int(n) for n in toktok.batch_count(list(texts), CL100K, threads=self._threads)]

    def truncate(self, text: str, max_tokens: int) -> str:
        _check_limit(max_tokens)
        kept, total = toktok.truncate(text, max_tokens, CL100K)
        if int(total) <= max_tokens:
            return text
        cut = str(kept)
        # BPE is not prefix-stable in general: re-count the cut and shrink until it fits
        while cut and (over := self.count(cut) - max_tokens) > 0:
            cut = str(toktok.truncate(cut, max(0, max_tokens - over), CL100K)[0])
        return cut


class EstimatingCounter:
    """``ceil(chars / ratio)`` tokens, the characters-per-token ratio learned from billing.

    :meth:`observe` folds each response's billed tokens into an exponential moving average
    of the ratio (weight ``alpha``); every observation is clamped to ``[min_ratio,
    max_ratio]`` so one odd response cannot swing the estimate far. Thread-safe.
    """

    def __init__(
        self,
        *,
        chars_per_token: float = 4.0,
        alpha: float = 0.2,
        min_ratio: float = 0.5,
        max_ratio: float = 12.0,
    ) -> None:
        if not 0 < min_ratio <= chars_per_token <= max_ratio:
            raise ValueError(
                f"need 0 < min_ratio <= chars_per_token <= max_ratio, got "
                f"{min_ratio}, {chars_per_token}, {max_ratio}"
            )
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self._ratio = chars_per_token
        self._alpha = alpha
        self._min = min_ratio
        self._max = max_ratio
        self._observations = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EstimatingCounter(chars_per_token={self._ratio:.3f})"

    @property
    def chars_per_token(self) -> float:
        return self._ratio

    @property
    def observations(self) -> int:
        return self._observations

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self._ratio)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        ratio = self._ratio
        return [math.ceil(len(t) / ratio) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        _check_limit(max_tokens)
        if self.count(text) <= max_tokens:
            return text
        ratio = self._ratio
        keep = math.floor(max_tokens * ratio)  # estimates max_tokens, bar float rounding
        while keep > 0 and math.ceil(keep / ratio) > max_tokens:
            keep -= 1
        return text[:keep]

    def observe(self, texts: Sequence[str], billed_tokens: int) -> None:
        """Learn from one response: ``texts`` were billed ``billed_tokens`` tokens in all."""
        chars = sum(len(t) for t in texts)
        if billed_tokens <= 0 or chars <= 0:
            return
        observed = min(self._max, max(self._min, chars / billed_tokens))
        with self._lock:
            self._ratio += self._alpha * (observed - self._ratio)
            self._observations += 1


_CL100K = Cl100kCounter()


def uses_cl100k(provider: str, model_name: str) -> bool:
    """Whether ``model_name`` at ``provider`` is tokenized with ``cl100k_base``."""
    return provider == "openai" and (
        model_name in CL100K_MODELS or model_name.startswith(CL100K_PREFIXES)
    )


def counter_for(provider: str, model_name: str) -> TokenCounter:
    """The shared exact counter for OpenAI cl100k models, else a new estimating counter."""
    if uses_cl100k(provider, model_name):
        return _CL100K
    return EstimatingCounter()
