"""One exception tree for backfleet.

Every error is either ``Retryable`` (the same call may succeed later: a 429, a 5xx, a
service outage) or ``Permanent`` (retrying cannot help: bad configuration, a rejected
input, a model mismatch). Retry decisions are made on these types, never on message text.
Messages name what is wrong and the setting to fix; they never contain secrets.
"""

from __future__ import annotations


class BackfleetError(Exception):
    """Base of every error backfleet raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (fix: {self.hint})"
        return self.message


class Retryable(BackfleetError):
    """A failure that may go away by itself; retry with backoff."""


class Permanent(BackfleetError):
    """A failure that retrying cannot fix."""


# --- configuration and input -------------------------------------------------------------


class ConfigError(Permanent):
    """A setting is missing or invalid."""


class SourceError(Permanent):
    """The source table or one of its columns is missing or unusable."""


class SourceDataError(SourceError):
    """A source row holds a value that cannot be read (bytes that are not UTF-8)."""


class PlanError(Permanent):
    """The planner cannot build ranges for this source."""


class MigrationStateError(Permanent):
    """An operation is not allowed in the migration's current state."""


class NotFound(Permanent):
    """A migration, range or generation that was named does not exist."""


class GoldenSetError(Permanent):
    """A golden query file is malformed (the message names the line) or names unknown ids."""


class GateClosed(MigrationStateError):
    """A cutover gate (clean reconcile, GO evaluation, holdover) is not satisfied."""


# --- services ----------------------------------------------------------------------------


class ServiceUnavailable(Retryable):
    """Postgres, Redis, Milvus or the broker could not be reached."""


class DatabaseUnavailable(ServiceUnavailable):
    """The checkpoint or source database could not be reached."""


class VectorStoreUnavailable(ServiceUnavailable):
    """Milvus could not be reached or timed out."""


class BrokerUnavailable(ServiceUnavailable):
    """The Celery broker (Redis) could not be reached."""


class VectorStoreError(Permanent):
    """Milvus refused an operation for a reason retrying cannot fix."""


# --- models and generations -------------------------------------------------------------


class ModelMismatch(Permanent):
    """A vector or embedder does not belong to the generation it would be written to."""


class SourceMismatch(Permanent):
    """A worker's configured source is not the one the migration was planned on."""


class LeaseLost(Permanent):
    """This worker no longer holds the range's lease (expired and taken over): stop writing."""


# --- provider ----------------------------------------------------------------------------


class ProviderError(BackfleetError):
    """Base for embedding-provider failures."""


class ProviderRetryable(ProviderError, Retryable):
    """A provider failure worth retrying: 5xx, timeout, connection error."""


class ProviderTimeout(ProviderRetryable):
    """The provider did not answer within the request timeout (a smaller request may)."""


class ProviderRateLimited(ProviderRetryable):
    """The provider answered 429; ``retry_after`` is its advice in seconds, if any."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class ProviderRejected(ProviderError, Permanent):
    """The provider refused the request (4xx other than 429): retrying the same input fails."""


class InvalidEmbedding(ProviderError, Permanent):
    """The response was malformed: wrong count, wrong dimension, or non-finite values."""

    def __init__(self, message: str, *, bad_indexes: list[int] | None = None) -> None:
        super().__init__(message)
        self.bad_indexes = bad_indexes or []
