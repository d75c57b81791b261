"""Request handling of the rehearsal provider: validation, limits, faults, counters.

HTTP-agnostic: :class:`RehearsalApp` turns a request into a :class:`Response`; the server
module only moves bytes.
"""

from __future__ import annotations

import base64
import json
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backfleet.embedding.local import HashingEmbedder
from backfleet.rehearsal.faults import BadRequest, Faults, Json
from backfleet.rehearsal.window import SlidingWindow

DEFAULT_DIMENSION = 1536
MAX_INPUTS = 2048
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


def count_tokens(text: str, model: str | None = None) -> int:
    """Billed tokens of one input: exact cl100k counts for OpenAI's embedding model names
    (as the real provider bills them), else ``ceil(len / 4)``; at least 1."""
    if model is not None:
        from backfleet.embedding.tokens import uses_cl100k

        if uses_cl100k("openai", model):
            return max(1, int(_cl100k().count(text)))
    return max(1, math.ceil(len(text) / 4))


def _cl100k() -> Any:
    from backfleet.embedding.tokens import counter_for

    return counter_for("openai", "text-embedding-3-small")


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (latency, timeout fault)


def json_response(status: int, data: object, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(data).encode(), dict(headers or {}))


def error_response(status: int, message: str, kind: str, code: str | None = None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json_response(status, body)


@dataclass
class Stats:
    requests: int = 0
    accepted: int = 0
    rate_limited: int = 0  # 429 from the window
    injected_429: int = 0
    tokens_accepted: int = 0
    unauthorized: int = 0
    #: requests that came without an Authorization header (accepted when no key is required)
    keyless: int = 0
    bad_requests: int = 0
    poisoned: int = 0
    faults: dict[str, int] = field(default_factory=dict)


class RehearsalApp:
    """Request handling, limits, faults and counters, behind one lock."""

    def __init__(
        self,
        *,
        rpm: int = 3000,
        tpm: int = 1_000_000,
        window_seconds: float = 60.0,
        default_dimension: int = DEFAULT_DIMENSION,
        faults: Json | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        require_key: bool = True,
    ) -> None:
        #: False: a request without a bearer token is served (TEI, vLLM, Ollama need none)
        self.require_key = require_key
        self.window = SlidingWindow(rpm, tpm, window_seconds, clock)
        self.default_dimension = default_dimension
        self.faults = Faults()
        if faults:
            self.faults.update(faults)
        self.stats = Stats()
        _cl100k().count("warm up")  # load the vocabulary now, not inside the first request
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._embedders: dict[tuple[str, int], HashingEmbedder] = {}

    # admin

    def stats_json(self) -> Json:
        with self._lock:
            requests, tokens, _ = self.window.usage()
            s = self.stats
            return {
                "requests": s.requests,
                "accepted": s.accepted,
                "429s": s.rate_limited + s.injected_429,
                "rate_limited": s.rate_limited,
                "injected_429": s.injected_429,
                "tokens_accepted": s.tokens_accepted,
                "unauthorized": s.unauthorized,
                "keyless": s.keyless,
                "bad_requests": s.bad_requests,
                "poisoned": s.poisoned,
                "faults": dict(s.faults),
                "max_requests_in_window": self.window.max_requests,
                "max_tokens_in_window": self.window.max_tokens,
                "requests_in_window": requests,
                "tokens_in_window": tokens,
                "rpm": self.window.rpm,
                "tpm": self.window.tpm,
                "window_seconds": self.window.window,
            }

    def reset(self) -> None:
        with self._lock:
            self.stats = Stats()
            self.window.clear()

    def set_faults(self, data: Json) -> Json:
        with self._lock:
            self.faults.update(data)
            return self.faults.to_json()

    def faults_json(self) -> Json:
        with self._lock:
            return self.faults.to_json()

    def rate_headers(self) -> dict[str, str]:
        with self._lock:
            return self.window.headers()

    def set_limits(self, data: Json) -> Json:
        rpm = data.get("rpm", self.window.rpm)
        tpm = data.get("tpm", self.window.tpm)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (rpm, tpm)):
            raise BadRequest("rpm and tpm must be positive integers")
        with self._lock:
            self.window.rpm, self.window.tpm = rpm, tpm
        return {"rpm": rpm, "tpm": tpm}

    # embeddings

    def embeddings(self, authorization: str | None, raw: bytes) -> Response:
        """Answer one ``POST /v1/embeddings``; the caller adds the rate-limit headers."""
        with self._lock:
            self.stats.requests += 1
        scheme, _, token = (authorization or "").partition(" ")
        if authorization is None and not self.require_key:
            with self._lock:
                self.stats.keyless += 1
        elif scheme.lower() != "bearer" or not token.strip():
            with self._lock:
                self.stats.unauthorized += 1
            return error_response(
                401, "Missing bearer token.", "invalid_request_error", "invalid_api_key"
            )
        try:
            model, texts, dimension, encoding = self._parse(raw)
        except BadRequest as exc:
            with self._lock:
                self.stats.bad_requests += 1
            return error_response(400, str(exc), "invalid_request_error")
        tokens = sum(count_tokens(t, model) for t in texts)
        with self._lock:
            latency = (
                self.faults.latency_ms + self.faults.latency_per_input_ms * len(texts)
            ) / 1000.0
            poisoned = [i for i, t in enumerate(texts) if any(p in t for p in self.faults.poison)]
            if poisoned:
                self.stats.poisoned += 1
                response = error_response(
                    400, f"input {poisoned[0]} is rejected", "invalid_request_error"
                )
                response.delay = latency
                return response
            if tokens > self.window.tpm:
                self.stats.bad_requests += 1
                msg = f"request too large: {tokens} tokens, limit {self.window.tpm} per minute"
                response = error_response(400, msg, "invalid_request_error", "request_too_large")
                response.delay = latency
                return response
            decision = self.window.check(tokens)
            if not decision.ok:
                self.stats.rate_limited += 1
                msg = (
                    f"Rate limit reached ({decision.reason}); "
                    f"retry after {decision.retry_after:.3f}s"
                )
                response = error_response(429, msg, "requests", "rate_limit_exceeded")
                response.headers.update(_retry_after_headers(decision.retry_after))
                response.delay = latency
                return response
            fault = self.faults.draw(self._rng)
            if fault is not None:
                self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
            if fault == "429":
                self.stats.injected_429 += 1
                wait = self.faults.retry_after_seconds
                response = error_response(
                    429, "Rate limit reached (injected)", "requests", "rate_limit_exceeded"
                )
                response.headers.update(_retry_after_headers(wait))
                response.delay = latency
                return response
            self.window.admit(tokens)
            self.stats.accepted += 1
            self.stats.tokens_accepted += tokens
            timeout = self.faults.timeout_seconds
        response = self._answer(fault, model, texts, dimension, encoding, tokens)
        response.delay = latency + (timeout if fault == "timeout" else 0.0)
        return response

    def _parse(self, raw: bytes) -> tuple[str, list[str], int, str]:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' must be a non-empty string")
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest("'input' must be a string or a non-empty list of strings")
        if len(texts) > MAX_INPUTS:
            raise BadRequest(f"'input' holds {len(texts)} items, at most {MAX_INPUTS} allowed")
        empty = [i for i, t in enumerate(texts) if not t]
        if empty:
            raise BadRequest(f"input {empty[0]} is an empty string")
        dimension = body.get("dimensions")
        if dimension is None:
            dimension = KNOWN_DIMENSIONS.get(model, self.default_dimension)
        if (
            isinstance(dimension, bool)
            or not isinstance(dimension, int)
            or not 2 <= dimension <= 32768
        ):
            raise BadRequest("'dimensions' must be an integer between 2 and 32768")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest("'encoding_format' must be 'float' or 'base64'")
        return model, texts, dimension, encoding

    def _embedder(self, model: str, dimension: int) -> HashingEmbedder:
        key = (model, dimension)
        with self._lock:
            embedder = self._embedders.get(key)
            if embedder is None:
                embedder = HashingEmbedder("hash-ngrams", model, dimension)
                self._embedders[key] = embedder
            return embedder

    def _answer(
        self,
        fault: str | None,
        model: str,
        texts: list[str],
        dimension: int,
        encoding: str,
        tokens: int,
    ) -> Response:
        if fault == "500" or fault == "503":
            status = int(fault)
            message = (
                "The server had an error while processing your request."
                if status == 500
                else "The engine is currently overloaded, please try again later."
            )
            return error_response(status, message, "server_error")
        vectors = self._embedder(model, dimension).embed(texts).vectors
        if fault == "wrong_count":
            vectors = vectors[:-1]
        elif fault == "wrong_dimension":
            vectors = vectors[:, :-1]
        elif fault == "nan":
            vectors = vectors.copy()
            vectors[0, 0] = np.nan
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": (
                    base64.b64encode(row.astype("<f4").tobytes()).decode()
                    if encoding == "base64"
                    else row.tolist()
                ),
            }
            for i, row in enumerate(vectors)
        ]
        body = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        encoded = json.dumps(body).encode()
        if fault == "malformed":
            encoded = encoded[: max(1, len(encoded) // 2)]
        return Response(200, encoded)


def _retry_after_headers(seconds: float) -> dict[str, str]:
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
    }
