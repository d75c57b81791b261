"""The rehearsal provider: an OpenAI-compatible embeddings server with limits and faults.

``backfleet fake-provider`` serves it so a migration can be rehearsed end to end without
spending money, and tests use it in-process (:class:`RehearsalServer`). Standard library only.

Endpoints
---------
``POST /v1/embeddings``
    ``{"model", "input": str | [str], "dimensions"?, "encoding_format"?: "float"|"base64"}``.
    Requires ``Authorization: Bearer <anything>`` (401 otherwise). Vectors are deterministic:
    the local ``hash-ngrams`` embedder seeded by the requested model string, so two model
    names are two coordinate systems. The dimension is ``dimensions`` if sent, else the known
    size of an OpenAI model name (``KNOWN_DIMENSIONS``), else the server default (1536, the
    size of text-embedding-3-small). Tokens are billed like the provider would: exactly
    (cl100k) for OpenAI's embedding model names, else ``ceil(len(text) / 4)`` per input (at
    least 1) — what the client counts. Like OpenAI, an empty string, more than 2048 inputs,
    or token arrays are refused with 400.
``GET /admin/stats``, ``POST /admin/reset`` (counters and window), ``GET|POST /admin/faults``,
``POST /admin/limits`` (``{"rpm"?, "tpm"?}``), ``GET /health``. Admin needs no key.

Rate limits
-----------
RPM and TPM over a sliding window (60 s by default, configurable for tests). A request is
*accepted* when it fits in both; its tokens then count, even if a fault is injected after
(a real provider bills failed work too). Otherwise 429 with ``Retry-After`` (whole seconds,
rounded up), ``retry-after-ms`` (exact) and ``x-ratelimit-*`` headers. A request whose tokens
alone exceed the TPM can never fit: it is refused with 400 (split the batch). Every /v1
response carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; ``reset`` is the
time until the window is empty again, written like OpenAI (``"1.5s"``, ``"6m0s"``, ``"20ms"``).

Faults (``POST /admin/faults``, or at start)
--------------------------------------------
``{"latency_ms": 0, "latency_per_input_ms": 0, "probability": {"503": 0.1}, "next": {"429": 3},
"poison": ["POISON"], "timeout_seconds": 30, "retry_after_seconds": 1, "clear": false}``.
Kinds: ``FAULT_KINDS``. ``latency_per_input_ms`` is added per input (a slow self-hosted model).
Started with ``require_key=False`` (``--no-key``) requests need no Authorization header.
``probability`` replaces the whole map; ``next`` sets the pending count of the kinds it names
(pending counts are used before probabilities, in ``FAULT_KINDS`` order); ``clear`` resets all
faults before applying the rest. An injected 429 is answered before admission (not counted);
other faults after. ``timeout`` sleeps ``timeout_seconds`` before answering. A request with
any input containing a ``poison`` substring is refused with 400 (not counted).

Modules: ``window`` (the sliding RPM/TPM window), ``faults`` (injected failures), ``app``
(request handling, HTTP-agnostic), ``server`` (the stdlib HTTP server and :func:`serve`).
"""

from backfleet.rehearsal.app import DEFAULT_DIMENSION, KNOWN_DIMENSIONS, RehearsalApp, count_tokens
from backfleet.rehearsal.faults import FAULT_KINDS, BadRequest, Faults
from backfleet.rehearsal.server import DEFAULT_PORT, RehearsalServer, serve
from backfleet.rehearsal.window import SlidingWindow, format_reset

__all__ = [
    "DEFAULT_DIMENSION",
    "DEFAULT_PORT",
    "FAULT_KINDS",
    "KNOWN_DIMENSIONS",
    "BadRequest",
    "Faults",
    "RehearsalApp",
    "RehearsalServer",
    "SlidingWindow",
    "count_tokens",
    "format_reset",
    "serve",
]
