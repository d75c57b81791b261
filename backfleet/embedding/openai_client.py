"""The OpenAI-compatible embedder: the ``openai`` SDK, errors converted once, here.

The SDK's own retries are off (``max_retries=0``): the one retry layer is
:func:`backfleet.embedding.retry.call_with_retries` around one :meth:`OpenAIEmbedder.embed`.

Error conversion:

* 429 -> :class:`ProviderRateLimited` with ``retry_after`` from ``retry-after-ms`` or
  ``Retry-After`` (seconds or an HTTP-date);
* 5xx, 408, 409, timeouts, connection errors -> :class:`ProviderRetryable`;
* any other 4xx -> :class:`ProviderRejected` (the same input fails again);
* a malformed body, a wrong count or dimension, non-finite values -> :class:`InvalidEmbedding`.

Messages name the base URL and the model, never the API key.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from functools import cached_property
from typing import Any

import numpy as np
import openai
import structlog

from backfleet.embedding.base import EmbedResult, Matrix, validate_vectors
from backfleet.embedding.identity import PROBE_TEXTS, ModelIdentity, fingerprint_vectors
from backfleet.embedding.tokens import EstimatingCounter, counter_for
from backfleet.errors import (
    ConfigError,
    InvalidEmbedding,
    ProviderRateLimited,
    ProviderRejected,
    ProviderRetryable,
    ProviderTimeout,
)
from backfleet.settings import ModelSettings, redact_url
from backfleet.throttle.headers import parse_retry_after

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Statuses below 500 that are still worth retrying (the SDK's own choice too).
RETRYABLE_4XX = frozenset({408, 409})
_KEY_LIKE_RE = re.compile(r"\b(sk-|Bearer\s+)[A-Za-z0-9_\-*.]{4,}", re.IGNORECASE)
_MAX_DETAIL = 300

log = structlog.get_logger(__name__)


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: one per 4 characters, rounded up (at least 1).

    A stand-in for exact cl100k counting; the rehearsal provider bills the same way.
    """
    return max(1, math.ceil(len(text) / 4))


class OpenAIEmbedder:
    """An :class:`~backfleet.embedding.base.Embedder` for any OpenAI-compatible endpoint."""

    provider = "openai"

    def __init__(self, model: ModelSettings, *, label: str | None = None) -> None:
        where = f"models.{label or '<label>'}"
        key = model.api_key
        keyless = not model.requires_api_key
        if not keyless and (key is None or not key.get_secret_value()):
            source = (
                f"the file {model.api_key_file} is empty"
                if model.api_key_file is not None
                else f"the variable {model.api_key_env} is unset or empty"
            )
            raise ConfigError(
                f"no API key for model {model.name!r}: {source}",
                hint=f"set {model.api_key_env} or {where}.api_key_env / {where}.api_key_file; "
                f"an endpoint that needs no key: {where}.requires_api_key = false",
            )
        self.name = model.name
        self.version = model.version
        self.dimension = model.dimension
        self.metric = model.metric
        self.max_inputs = model.max_inputs_per_request
        #: seconds one request may take (the SDK's timeout); requests are sized to fit it
        self.timeout_seconds = model.timeout_seconds
        #: exact cl100k for OpenAI's embedding models, a billing-calibrated estimate otherwise
        self.token_counter = counter_for(self.provider, model.name)
        self._send_dimensions = model.send_dimensions
        self._base_url = model.base_url or DEFAULT_BASE_URL
        self._public_url = redact_url(self._base_url)
        self._where = where
        self._key = None if keyless else key  # a SecretStr: its repr and str are masked
        #: keyless: the SDK wants some key, but no Authorization header is ever sent
        self._auth: dict[str, Any] = {"Authorization": openai.Omit()} if keyless else {}
        self._client = openai.OpenAI(
            base_url=self._base_url,
            api_key=key.get_secret_value() if key is not None and not keyless else "no-key",
            max_retries=0,
            timeout=model.timeout_seconds,
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbedder(model={self.name!r}, version={self.version!r}, "
            f"dimension={self.dimension}, base_url={self._public_url!r})"
        )

    # --- the Embedder protocol --------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return self.token_counter.count(text)

    @cached_property
    def identity(self) -> ModelIdentity:
        """The model identity; the fingerprint costs one call on first access (cached).

        Workers establish it first through the fleet throttle and the retry layer
        (:func:`backfleet.embedding.probe.establish_identity`).
        """
        return self.identity_from_probe(self.embed(list(PROBE_TEXTS)).vectors)

    def identity_from_probe(self, probe: Matrix) -> ModelIdentity:
        """The identity whose fingerprint is of ``probe`` (the vectors of PROBE_TEXTS); cached."""
        identity = ModelIdentity(
            provider=self.provider,
            name=self.name,
            version=self.version,
            dimension=self.dimension,
            metric=self.metric,
            fingerprint=fingerprint_vectors(probe.tolist()),
        )
        self.__dict__["identity"] = identity  # what the cached_property returns from now on
        return identity

    def embed(self, texts: list[str]) -> EmbedResult:
        """One provider call for ``texts``; raises a converted error on failure."""
        if not texts:
            return EmbedResult(vectors=np.empty((0, self.dimension), dtype=np.float32), tokens=0)
        if len(texts) > self.max_inputs:
            raise ConfigError(
                f"{len(texts)} inputs in one request to {self._public_url} for model "
                f"{self.name!r}, the limit is {self.max_inputs}",
                hint=f"lower backfill.batch_size or raise {self._where}.max_inputs_per_request",
            )
        started = time.monotonic()
        extra: dict[str, Any] = {"dimensions": self.dimension} if self._send_dimensions else {}
        try:
            raw = self._client.embeddings.with_raw_response.create(
                model=self.name,
                input=texts,
                encoding_format="float",
                extra_headers=self._auth or None,
                **extra,
            )
            status = raw.status_code
            headers = {k.lower(): v for k, v in raw.headers.items()}
            content = raw.content
        except openai.APIError as exc:
            raise self._convert(exc) from exc
        vectors, tokens = self._parse(content, len(texts))
        if tokens is None:
            tokens = sum(self.token_counter.count_many(texts))
        elif isinstance(self.token_counter, EstimatingCounter):
            self.token_counter.observe(texts, tokens)
        log.debug(
            "provider_call",
            model=self.name,
            status=status,
            n=len(texts),
            tokens=tokens,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return EmbedResult(vectors=vectors, tokens=tokens, headers=headers)

    # --- conversion ----------------------------------------------------------------------

    def _what(self) -> str:
        return f"{self._public_url} (model {self.name!r})"

    def _redact(self, text: str) -> str:
        if self._key is not None:
            text = text.replace(self._key.get_secret_value(), "***")
        text = _KEY_LIKE_RE.sub(lambda m: f"{m.group(1)}***", text)
        return text[:_MAX_DETAIL]

    def _detail(self, exc: openai.APIStatusError) -> str:
        body = exc.body
        message: object = None
        if isinstance(body, dict):
            error = body.get("error", body)
            message = error.get("message") if isinstance(error, dict) else error
        if not message:
            message = exc.response.reason_phrase
        return self._redact(str(message))

    def _convert(self, exc: openai.APIError) -> Exception:
        if isinstance(exc, openai.APITimeoutError):
            log.info("provider_error", kind="timeout", model=self.name)
            return ProviderTimeout(
                f"{self._what()} did not answer within {self.timeout_seconds:g} s",
                hint=f"raise {self._where}.timeout_seconds or lower backfill.batch_size",
            )
        if isinstance(exc, openai.APIConnectionError):
            log.info("provider_error", kind="connection", model=self.name)
            return ProviderRetryable(f"cannot reach {self._what()}")
        if isinstance(exc, openai.APIResponseValidationError):
            return InvalidEmbedding(f"{self._what()} answered a body the SDK could not read")
        if not isinstance(exc, openai.APIStatusError):
            return ProviderRetryable(f"{self._what()} failed: {type(exc).__name__}")
        status = exc.status_code
        detail = self._detail(exc)
        log.info("provider_error", kind="status", status=status, model=self.name)
        if status == 429:
            retry_after = parse_retry_after(exc.response.headers)
            return ProviderRateLimited(
                f"{self._what()} answered 429 (rate limited): {detail}", retry_after=retry_after
            )
        if status >= 500 or status in RETRYABLE_4XX:
            return ProviderRetryable(f"{self._what()} answered {status}: {detail}")
        hint = None
        if status in (401, 403):
            hint = f"check the key named by {self._where}.api_key_env / api_key_file"
        elif status == 404:
            hint = f"check {self._where}.name and {self._where}.base_url"
        return ProviderRejected(
            f"{self._what()} rejected the request ({status}): {detail}", hint=hint
        )

    def _parse(self, content: bytes, expected: int) -> tuple[Matrix, int | None]:
        """Vectors in input order (by ``index``) and the billed tokens, validated."""
        try:
            body = json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEmbedding(f"{self._what()} answered malformed JSON") from exc
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise InvalidEmbedding(f"{self._what()} answered a body without a data list")
        rows: dict[int, list[float]] = {}
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            embedding = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(index, int) or index in rows:
                raise InvalidEmbedding(f"{self._what()} answered a missing or repeated index")
            rows[index] = self._row(embedding)
        if sorted(rows) != list(range(len(rows))):
            raise InvalidEmbedding(f"{self._what()} answered indexes that are not 0..n-1")
        ordered = [rows[i] for i in range(len(rows))]
        if len({len(r) for r in ordered}) > 1:
            raise InvalidEmbedding(f"{self._what()} answered vectors of different dimensions")
        width = len(ordered[0]) if ordered else self.dimension
        vectors: Matrix = np.asarray(ordered, dtype=np.float32).reshape(len(ordered), width)
        try:
            validate_vectors(vectors, expected, self.dimension)
        except InvalidEmbedding as exc:  # same error, with the provider and model named
            raise InvalidEmbedding(
                f"{self._what()}: {exc.message}", bad_indexes=exc.bad_indexes
            ) from None
        return vectors, self._tokens(body.get("usage"))

    def _row(self, embedding: object) -> list[float]:
        if isinstance(embedding, str):  # base64 float32, if a server ignores encoding_format
            try:
                decoded = np.frombuffer(base64.b64decode(embedding), dtype="<f4")
            except ValueError as exc:
                raise InvalidEmbedding(f"{self._what()} answered a bad base64 vector") from exc
            return [float(x) for x in decoded]
        if not isinstance(embedding, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in embedding
        ):
            raise InvalidEmbedding(f"{self._what()} answered a vector that is not a number list")
        return [float(x) for x in embedding]

    @staticmethod
    def _tokens(usage: object) -> int | None:
        if not isinstance(usage, dict):
            return None
        for key in ("total_tokens", "prompt_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None
