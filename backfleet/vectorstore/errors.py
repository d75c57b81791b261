"""Convert pymilvus and gRPC errors once, where Milvus is called."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from backfleet.errors import VectorStoreError, VectorStoreUnavailable

T = TypeVar("T")

#: pymilvus error codes that mean "try again later": unexpected/RPC failure (1), cannot
#: connect (2), rate limited (8).
_RETRYABLE_CODES = {1, 2, 8}


def _is_unavailable(exc: BaseException) -> bool:
    import grpc
    from pymilvus.exceptions import (
        ConnectError,
        ConnectionNotExistException,
        MilvusException,
        MilvusUnavailableException,
    )

    if isinstance(
        exc,
        ConnectError | MilvusUnavailableException | ConnectionNotExistException | grpc.RpcError,
    ):
        return True
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    return isinstance(exc, MilvusException) and getattr(exc, "code", None) in _RETRYABLE_CODES


@contextmanager
def milvus_errors(what: str) -> Iterator[None]:
    """Re-raise Milvus failures as :class:`VectorStoreUnavailable` or :class:`VectorStoreError`."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except (MilvusException, TimeoutError, ConnectionError) as exc:
        detail = getattr(exc, "message", None) or str(exc)
        detail = str(detail).strip().splitlines()[0][:300] if detail else type(exc).__name__
        if _is_unavailable(exc):
            raise VectorStoreUnavailable(f"Milvus unavailable during {what}: {detail}") from exc
        raise VectorStoreError(f"Milvus refused {what}: {detail}") from exc
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.RpcError):
            raise VectorStoreUnavailable(f"Milvus unavailable during {what}: {exc}") from exc
        raise


def call(what: str, fn: Callable[[], T]) -> T:
    with milvus_errors(what):
        return fn()
