"""Upsert requests built column by column, the vectors as one float32 buffer.

``MilvusClient.upsert`` takes rows (one dict per document) and packs them value by value into
the request it sends: for 256 rows of 384 dimensions that is ~12 ms of CPU here, the largest
single cost of a worker at low dimensions (docs/benchmarks.md, §4). The request itself is
column-based anyway (``milvus.UpsertRequest``: one ``FieldData`` per field), and a float vector
field is a packed ``repeated float`` whose wire bytes are exactly the matrix's little-endian
float32 bytes. :func:`build_upsert` builds that request directly from the columns (~0.1 ms):
byte for byte the request pymilvus builds from the same rows (tests/unit/vectorstore/
test_request.py compares them).

:class:`ColumnSender` sends it through pymilvus's own connection (``GrpcHandler.upsert`` with
``upsert_param``), so the retries on RPC failures, the status check and the timestamp that
session-consistent reads wait for are pymilvus's. That needs two members pymilvus does not
document (``MilvusClient._get_connection`` and ``_generate_call_context``, present from 2.4 to
3.0): :func:`column_sender` returns ``None`` where they are missing, and a client-side refusal
of the prebuilt request (:class:`ColumnsUnsupported`) makes the caller fall back to rows for
good. Either way the same rows arrive in Milvus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: the schema every generation has (backfleet/vectorstore/store.py), in its order
ID, VECTOR, MODEL, TEXT_HASH, EMBEDDED_AT = "id", "vector", "model", "text_hash", "embedded_at"
#: the wire tag of ``FloatArray.data`` (field 1, length-delimited: packed)
_PACKED_FLOATS = b"\x0a"


class ColumnsUnsupported(Exception):
    """This pymilvus cannot send a prebuilt request; use ``MilvusClient.upsert`` with rows."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def build_upsert(
    collection: str,
    ids: Sequence[int | str],
    matrix: np.ndarray[Any, Any],
    tag: str,
    text_hashes: Sequence[str],
    embedded_at_ms: int,
) -> Any:
    """A ``milvus.UpsertRequest`` of ``len(ids)`` rows (the caller checked the lengths)."""
    from pymilvus import DataType
    from pymilvus.grpc_gen import milvus_pb2

    n = len(ids)
    request = milvus_pb2.UpsertRequest(collection_name=collection, num_rows=n)
    str_ids = bool(n) and isinstance(ids[0], str)
    field = request.fields_data.add(
        field_name=ID, type=DataType.VARCHAR if str_ids else DataType.INT64
    )
    if str_ids:
        field.scalars.string_data.data.extend(ids)
    else:
        field.scalars.long_data.data.extend(ids)
    field = request.fields_data.add(field_name=VECTOR, type=DataType.FLOAT_VECTOR)
    field.vectors.dim = int(matrix.shape[1])
    raw = np.ascontiguousarray(matrix, dtype="<f4").tobytes()
    field.vectors.float_vector.MergeFromString(_PACKED_FLOATS + _varint(len(raw)) + raw)
    field = request.fields_data.add(field_name=MODEL, type=DataType.VARCHAR)
    field.scalars.string_data.data.extend([tag] * n)
    field = request.fields_data.add(field_name=TEXT_HASH, type=DataType.VARCHAR)
    field.scalars.string_data.data.extend(text_hashes)
    field = request.fields_data.add(field_name=EMBEDDED_AT, type=DataType.INT64)
    field.scalars.long_data.data.extend([embedded_at_ms] * n)
    return request


#: handed to ``GrpcHandler.upsert`` so that it does not describe the collection first: the
#: request is complete, its field list is not read
_SCHEMA_GIVEN: dict[str, list[Any]] = {"fields": []}


class ColumnSender:
    """Send prebuilt upsert requests on a MilvusClient's connection."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def send(self, request: Any, timeout: float) -> int:
        """Upsert; returns Milvus's ``upsert_count``. Raises :class:`ColumnsUnsupported` when
        pymilvus refuses the prebuilt request before sending it."""
        from pymilvus.exceptions import ParamError

        try:
            conn = self.client._get_connection()
            context = self.client._generate_call_context()
        except (AttributeError, TypeError) as exc:
            raise ColumnsUnsupported(f"{type(exc).__name__}: {exc}") from exc
        try:
            result = conn.upsert(
                request.collection_name,
                [],
                timeout=timeout,
                context=context,
                upsert_param=request,
                schema=_SCHEMA_GIVEN,
            )
        except (AttributeError, TypeError, ParamError) as exc:
            raise ColumnsUnsupported(f"{type(exc).__name__}: {exc}") from exc
        return int(result.upsert_count)


def column_sender(client: Any) -> ColumnSender | None:
    """A sender for this client, or ``None`` where its pymilvus lacks what it uses."""
    try:
        from pymilvus.grpc_gen import milvus_pb2
    except ImportError:
        return None
    if not hasattr(milvus_pb2, "UpsertRequest"):
        return None
    if not (hasattr(client, "_get_connection") and hasattr(client, "_generate_call_context")):
        return None
    return ColumnSender(client)
