"""Column-built upsert requests: the same bytes pymilvus builds from rows, and a fallback."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pymilvus.client.prepare import Prepare
from pymilvus.exceptions import ParamError
from pymilvus.grpc_gen import schema_pb2

from backfleet.embedding.local import HashingEmbedder
from backfleet.vectorstore import generation as generation_module
from backfleet.vectorstore.generation import Generation
from backfleet.vectorstore.request import (
    ColumnSender,
    ColumnsUnsupported,
    build_upsert,
    column_sender,
)
from backfleet.vectorstore.store import generation_schema


def fields_info(id_type: str, dim: int) -> list[dict[str, Any]]:
    """The fields as Milvus describes a generation (the schema store.py creates)."""
    return [dict(f) for f in generation_schema(id_type, dim).to_dict()["fields"]]


def rows_request(
    ids: list[Any], matrix: np.ndarray[Any, Any], id_type: str, hashes: list[str]
) -> Any:
    rows = [
        {"id": i, "vector": v, "model": "m:v1:3", "text_hash": h, "embedded_at": 1_700_000}
        for i, v, h in zip(ids, matrix, hashes, strict=True)
    ]
    return Prepare.row_upsert_param(
        "gen", rows, "", fields_info(id_type, matrix.shape[1]), [], enable_dynamic=False
    )


@pytest.mark.parametrize("id_type", ["int", "str"])
@pytest.mark.parametrize(("n", "dim"), [(1, 3), (7, 16), (256, 384), (64, 1536)])
def test_the_request_is_byte_for_byte_what_pymilvus_builds_from_rows(
    id_type: str, n: int, dim: int
) -> None:
    rng = np.random.default_rng(n * dim)
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    ids: list[Any] = (
        list(range(10, 10 + n)) if id_type == "int" else [f"doc-é-{i}" for i in range(n)]
    )
    hashes = [f"{i:064x}" for i in range(n)]
    ours = build_upsert("gen", ids, matrix, "m:v1:3", hashes, 1_700_000)
    theirs = rows_request(ids, matrix, id_type, hashes)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )
    assert ours.num_rows == n


def test_vectors_arrive_as_the_float32_values_whatever_the_input_layout() -> None:
    base = np.arange(12, dtype=np.float64).reshape(3, 4) / 7  # float64, C order
    fortran = np.asfortranarray(base)
    for matrix in (base, fortran, base.astype(">f4"), base[:, :]):
        request = build_upsert("gen", [1, 2, 3], matrix, "t", ["a", "b", "c"], 5)
        field = request.fields_data[1]
        assert field.vectors.dim == 4
        got = np.asarray(field.vectors.float_vector.data, dtype=np.float32).reshape(3, 4)
        assert np.array_equal(got, base.astype(np.float32))
    # the wire form of the field is a packed repeated float of exactly those bytes
    wire = schema_pb2.FloatArray(data=base.astype(np.float32).ravel().tolist())
    assert (
        request.fields_data[1].vectors.float_vector.SerializeToString() == wire.SerializeToString()
    )


class NoPrivates:
    """A client without the members the column path needs (another pymilvus)."""

    def __init__(self) -> None:
        self.rows: list[list[dict[str, Any]]] = []

    def upsert(self, name: str, rows: list[dict[str, Any]], timeout: float) -> dict[str, int]:
        self.rows.append(rows)
        return {"upsert_count": len(rows)}


class Conn:
    def __init__(self, error: Exception | None, count: int | None = None) -> None:
        self.error = error
        self.count = count
        self.requests: list[Any] = []

    def upsert(self, name: str, entities: list[Any], **kwargs: Any) -> Any:
        if self.error is not None:
            raise self.error
        request = kwargs["upsert_param"]
        self.requests.append(request)
        assert entities == [] and name == request.collection_name

        class Result:
            upsert_count = request.num_rows if self.count is None else self.count

        return Result()


class WithPrivates(NoPrivates):
    def __init__(self, conn: Conn) -> None:
        super().__init__()
        self.conn = conn

    def _get_connection(self) -> Conn:
        return self.conn

    def _generate_call_context(self) -> object:
        return object()


IDENTITY = HashingEmbedder("hash-words", "1", 4).identity


@pytest.fixture(autouse=True)
def _columns_usable() -> Any:
    generation_module._columns["usable"] = True
    yield
    generation_module._columns["usable"] = True


def upsert(client: Any, n: int = 3) -> int:
    gen = Generation(client, "gen", IDENTITY, "int")
    return gen.upsert(list(range(n)), np.ones((n, 4), np.float32), ["h"] * n, IDENTITY)


def test_a_client_without_the_connection_members_gets_rows() -> None:
    client = NoPrivates()
    assert column_sender(client) is None
    assert upsert(client) == 3
    assert [r["id"] for r in client.rows[0]] == [0, 1, 2]


def test_columns_are_sent_when_the_client_has_them() -> None:
    conn = Conn(None)
    client = WithPrivates(conn)
    assert isinstance(column_sender(client), ColumnSender)
    assert upsert(client) == 3
    assert client.rows == [] and conn.requests[0].num_rows == 3


@pytest.mark.parametrize("error", [TypeError("unexpected keyword"), ParamError(message="no rows")])
def test_a_refused_prebuilt_request_falls_back_to_rows_for_good(error: Exception) -> None:
    conn = Conn(error)
    client = WithPrivates(conn)
    with pytest.raises(ColumnsUnsupported):
        ColumnSender(client).send(build_upsert("gen", [1], np.ones((1, 4)), "t", ["h"], 1), 1.0)
    assert upsert(client) == 3  # the same batch, as rows
    assert upsert(client) == 3
    assert len(client.rows) == 2 and generation_module._columns["usable"] is False


def test_fewer_rows_acknowledged_than_sent_is_an_error() -> None:
    from backfleet.errors import VectorStoreError

    client = WithPrivates(Conn(None, count=2))
    with pytest.raises(VectorStoreError, match="acknowledged 2 of 3"):
        upsert(client)
