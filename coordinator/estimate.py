"""What a migration will cost before it starts: tokens, money and time, from the real corpus.

* **Tokens** are counted on a sample of real documents (up to :data:`SAMPLE_DOCS`, spread
  over the id space) with the model's own counter — exact ``cl100k_base`` for OpenAI's
  models, the local model's counter — and scaled to the corpus by characters. A model without
  an exact counter (a self-hosted model behind an OpenAI-compatible server) is calibrated by
  what the probe requests were billed (``usage.total_tokens``).
* **Time** is whichever binds: the rate limit (requests at ``throttle.rpm``, tokens at
  ``throttle.tpm``) or the provider's throughput, measured by a few real requests of sample
  documents (through the fleet throttle and the retry layer) and multiplied by the fleet's
  task slots (``backfill.expected_concurrency``, at most one per range). Local models are not
  rate limited: their time at the rate limit is shown, but only throughput binds them.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

from backfleet.embedding.base import Embedder
from backfleet.embedding.retry import call_provider
from backfleet.embedding.tokens import EstimatingCounter
from backfleet.errors import BackfleetError
from backfleet.limits import NullThrottle, Throttle
from backfleet.logs import get_logger
from backfleet.settings import Settings
from backfleet.source import Source

log = get_logger("backfleet.estimate")

#: documents read to count tokens (the whole corpus when it is smaller)
SAMPLE_DOCS = 1000
#: the sample is spread over this many slices of the id space
STRATA = 250
#: probe requests: one small warm-up, then this many of up to batch_size documents
PROBE_REQUESTS = 2
PROBE_WARMUP_DOCS = 8
#: a probe request is sized to take at most this long (and half the request timeout)
PROBE_REQUEST_SECONDS = 5.0


@dataclass(frozen=True)
class Probe:
    """What a few real requests measured (``error``: why the probe could not finish)."""

    requests: int = 0
    docs: int = 0
    seconds: float = 0.0
    billed_tokens: int = 0
    chars: int = 0
    docs_per_request: int = 0
    error: str | None = None

    @property
    def docs_per_second(self) -> float | None:
        """Throughput of one request slot (the warm-up request excluded)."""
        if self.error is not None or self.docs == 0 or self.seconds <= 0:
            return None
        return self.docs / self.seconds


@dataclass(frozen=True)
class Estimate:
    tokens: int
    tokens_method: str
    sample_docs: int
    minutes: float
    minutes_rate_limit: float
    minutes_throughput: float | None
    binding: str
    concurrency: int
    probe: Probe | None
    notes: tuple[str, ...] = ()


def sample_texts(
    source: Source, docs: int, size: int = SAMPLE_DOCS, split: list[str] | None = None
) -> list[str]:
    """Up to ``size`` real texts spread over the id space (every text when the corpus is small):
    the first few documents of each of :data:`STRATA` equal slices (keyset reads). ``split``:
    the plan's range bounds, used as the slices when there are enough of them."""
    if docs <= size:
        return [d.text or "" for b in source.iter_batches(None, None, None, 2000) for d in b]
    strata = min(STRATA, size)
    per = math.ceil(size / strata)
    if split is not None and len(split) + 1 >= strata:  # no second quantile query
        step = (len(split) + 1) / strata
        points = [split[math.floor(i * step) - 1] for i in range(1, strata)]
    else:
        points = [Source.encode_id(p) for p in source.split_points(max(1, docs // strata))]
    bounds: list[str | None] = [None, *points, None]
    texts: list[str] = []
    for lo, hi in itertools.pairwise(bounds):
        texts += [d.text or "" for d in source.batch(lo, hi, None, per)]
    return texts[:size]


def probe(
    embedder: Embedder,
    throttle: Throttle,
    texts: list[str],
    batch_size: int,
    timeout_seconds: float | None,
) -> Probe:
    """A warm-up request, then :data:`PROBE_REQUESTS` requests sized to finish quickly."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        return Probe(error="no text to probe with")
    requests = docs = billed = chars = 0
    seconds = 0.0
    size = 0
    try:
        warm = texts[:PROBE_WARMUP_DOCS]
        started = time.monotonic()
        result = call_provider(embedder, throttle, warm, max_attempts=3, max_wait=10)
        per_doc = max(1e-6, (time.monotonic() - started) / len(warm))
        requests, billed, chars = 1, result.tokens, sum(map(len, warm))
        budget = PROBE_REQUEST_SECONDS
        if timeout_seconds:
            budget = min(budget, timeout_seconds / 2)
        size = max(1, min(batch_size, len(texts), math.floor(budget / per_doc)))
        for i in range(PROBE_REQUESTS):
            start = (PROBE_WARMUP_DOCS + i * size) % len(texts)
            batch = (texts[start:] + texts[:start])[:size]
            started = time.monotonic()
            result = call_provider(embedder, throttle, batch, max_attempts=3, max_wait=10)
            seconds += time.monotonic() - started
            requests += 1
            docs += len(batch)
            billed += result.tokens
            chars += sum(map(len, batch))
    except BackfleetError as exc:
        log.warning("plan_probe_failed", error=str(exc), requests=requests)
        return Probe(requests, docs, seconds, billed, chars, size, error=str(exc))
    return Probe(requests, docs, seconds, billed, chars, size)


def estimate(
    settings: Settings,
    source: Source,
    embedder: Embedder,
    *,
    label: str,
    docs: int,
    chars: int,
    ranges: int,
    with_probe: bool = True,
    throttle: Throttle | None = None,
    split: list[str] | None = None,
) -> Estimate:
    """Tokens, time and what binds it, for migrating ``docs`` documents to ``label``."""
    cfg = settings.backfill
    model = settings.model(label)
    texts = sample_texts(source, docs, split=split)
    measured: Probe | None = None
    if with_probe:
        measured = probe(
            embedder,
            throttle or NullThrottle(),
            texts,
            cfg.batch_size,
            getattr(embedder, "timeout_seconds", None),
        )
    sample_chars = sum(map(len, texts))
    estimating = isinstance(getattr(embedder, "token_counter", None), EstimatingCounter)
    if estimating and measured is not None and measured.error is None and measured.chars:
        per_char = measured.billed_tokens / measured.chars
        method = f"billed by the provider for {measured.requests} probe requests"
    elif estimating:
        per_char = 1 / cfg.avg_chars_per_token
        method = f"{cfg.avg_chars_per_token:g} characters per token (no exact counter, no probe)"
    else:
        sample_tokens = sum(embedder.count_tokens(t) for t in texts)
        per_char = sample_tokens / sample_chars if sample_chars else 0.0
        method = f"exact counter on {len(texts):,} sample documents"
    tokens = math.ceil(chars * per_char)

    requests = math.ceil(docs / cfg.batch_size)
    minutes_rate_limit = max(tokens / settings.throttle.tpm, requests / settings.throttle.rpm)
    rate_binding = (
        "TPM limit"
        if tokens / settings.throttle.tpm >= requests / settings.throttle.rpm
        else "RPM limit"
    )
    concurrency = max(1, min(cfg.expected_concurrency, ranges))
    minutes_throughput = None
    per_slot = measured.docs_per_second if measured is not None else None
    if per_slot:
        minutes_throughput = docs / (per_slot * concurrency) / 60
    limited = model.provider != "local"  # local models run unthrottled
    candidates = [(minutes_rate_limit, rate_binding)] if limited else []
    if minutes_throughput is not None:
        candidates.append((minutes_throughput, "measured throughput"))
    if candidates:
        minutes, binding = max(candidates)
    else:
        minutes, binding = 0.0, ""  # a local model, not probed: nothing to estimate from
    notes: list[str] = []
    if per_slot and model.provider != "local" and cfg.batch_size / per_slot > model.timeout_seconds:
        notes.append(
            f"one request of {cfg.batch_size} documents takes ~{cfg.batch_size / per_slot:,.0f} s, "
            f"over models.{label}.timeout_seconds = {model.timeout_seconds:g}: workers split "
            "such requests; lower backfill.batch_size to avoid the timeouts"
        )
    if measured is not None and measured.error is not None:
        notes.append(f"probe failed ({measured.error}): time from the rate limit only")
    return Estimate(
        tokens=tokens,
        tokens_method=method,
        sample_docs=len(texts),
        minutes=minutes,
        minutes_rate_limit=minutes_rate_limit,
        minutes_throughput=minutes_throughput,
        binding=binding,
        concurrency=concurrency,
        probe=measured,
        notes=tuple(notes),
    )
