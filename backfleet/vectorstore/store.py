"""The Milvus connection: generations by name, aliases, collection listing."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import ModelMismatch, NotFound, VectorStoreError
from backfleet.settings import redact_url
from backfleet.vectorstore.errors import call, milvus_errors
from backfleet.vectorstore.generation import (
    OWNER,
    PROP_ALIAS,
    PROP_ID_TYPE,
    PROP_MODEL,
    PROP_OWNER,
    STR_ID_MAX,
    TIMEOUT,
    Generation,
    parse_generation_name,
)


def _quiet_pymilvus() -> None:
    """pymilvus logs every RPC error with a traceback on its own handlers (configured at its
    import); backfleet converts each failure once and logs it as an event instead."""
    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def generation_schema(id_type: str, dimension: int, description: str = "") -> Any:
    """The fields every generation has (``id``, ``vector``, ``model``, ``text_hash``,
    ``embedded_at``), as a pymilvus ``CollectionSchema``."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(
        auto_id=False, enable_dynamic_field=False, description=description
    )
    if id_type == "int":
        schema.add_field("id", DataType.INT64, is_primary=True)
    else:
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=STR_ID_MAX)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field("model", DataType.VARCHAR, max_length=256)
    schema.add_field("text_hash", DataType.VARCHAR, max_length=64)
    schema.add_field("embedded_at", DataType.INT64)
    return schema


class VectorStore:
    """One Milvus (server URI or Milvus Lite path)."""

    def __init__(self, uri: str, token: str | None = None) -> None:
        from pymilvus import MilvusClient

        _quiet_pymilvus()
        if "://" not in uri:
            # a Milvus Lite path: its gRPC server runs in this process and logs a traceback for
            # each RPC it does not implement (AllocTimestamp), which pymilvus then works around
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        self.uri = uri
        with milvus_errors(f"connect to {redact_url(uri)}"):
            self.client: Any = MilvusClient(uri=uri, token=token or "", timeout=TIMEOUT)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection is not worth raising
            self.client.close()

    # --- generations --------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        return list(call("list collections", lambda: self.client.list_collections()))

    def has(self, name: str) -> bool:
        return bool(call(f"has_collection {name}", lambda: self.client.has_collection(name)))

    def generations(self, alias: str) -> list[tuple[int, str]]:
        """``(N, name)`` of every generation of ``alias`` in Milvus, by N."""
        found = []
        for name in self.list_collections():
            parsed = parse_generation_name(name)
            if parsed and parsed[0] == alias:
                found.append((parsed[2], name))
        return sorted(found)

    def next_generation_number(self, alias: str, taken: set[int] | None = None) -> int:
        numbers = {n for n, _ in self.generations(alias)} | (taken or set())
        return max(numbers, default=0) + 1

    def create_generation(
        self,
        name: str,
        alias: str,
        identity: ModelIdentity,
        id_type: str,
        index_type: str = "HNSW",
    ) -> Generation:
        """Create the collection, or open it if it exists with the same model (idempotent)."""
        if self.has(name):
            gen = self.open_generation(name)
            gen.require_model(identity)
            return gen
        marks = {
            PROP_OWNER: OWNER,
            PROP_MODEL: identity.to_json(),
            PROP_ALIAS: alias,
            PROP_ID_TYPE: id_type,
        }
        # the identity goes into the description too: it is written with the collection
        # itself, and milvus-server 2.3 can lose altered properties across a restart
        schema = generation_schema(id_type, identity.dimension, json.dumps(marks))
        index = self.client.prepare_index_params()
        params: dict[str, Any] = {"M": 16, "efConstruction": 128} if index_type == "HNSW" else {}
        if index_type == "IVF_FLAT":
            params = {"nlist": 128}
        index.add_index(
            field_name="vector", index_type=index_type, metric_type=identity.metric, params=params
        )
        call(
            f"create collection {name}",
            lambda: self.client.create_collection(
                name, schema=schema, index_params=index, consistency_level="Strong"
            ),
        )
        call(
            f"set properties of {name}",
            lambda: self.client.alter_collection_properties(
                name,
                properties=marks,
            ),
        )
        return Generation(self.client, name, identity, id_type)

    def describe(self, name: str) -> dict[str, Any]:
        if not self.has(name):
            raise NotFound(f"Milvus collection {name!r} does not exist")
        return dict(call(f"describe {name}", lambda: self.client.describe_collection(name)))

    @staticmethod
    def marks(desc: dict[str, Any]) -> dict[str, str]:
        """backfleet's marks of a collection: its properties, else its description."""
        props = {str(k): str(v) for k, v in (desc.get("properties") or {}).items()}
        if PROP_MODEL in props:
            return props
        try:
            described = json.loads(desc.get("description") or "{}")
        except ValueError:
            return props
        if isinstance(described, dict):
            return {str(k): str(v) for k, v in described.items()}
        return props

    def is_generation(self, name: str) -> bool:
        """Whether ``name`` is a collection backfleet created (it may serve an alias without)."""
        marks = self.marks(self.describe(name))
        return bool(marks.get(PROP_OWNER) == OWNER and PROP_MODEL in marks)

    def open_generation(self, name: str) -> Generation:
        """Open a backfleet-owned collection; refuse foreign ones."""
        desc = self.describe(name)
        props = self.marks(desc)
        if props.get(PROP_OWNER) != OWNER or PROP_MODEL not in props:
            raise VectorStoreError(
                f"collection {name!r} is not a backfleet generation (no {PROP_MODEL} property)",
                hint="point the alias at a generation backfleet created, "
                "or audit it with `backfleet audit`",
            )
        identity = ModelIdentity.from_json(props[PROP_MODEL])
        id_type = props.get(PROP_ID_TYPE, "int")
        return Generation(self.client, name, identity, id_type)

    def open_for_model(self, name: str, identity: ModelIdentity) -> Generation:
        gen = self.open_generation(name)
        if gen.identity != identity:
            raise ModelMismatch(
                f"generation {name} is bound to {gen.identity.tag}, not {identity.tag}"
            )
        return gen

    def drop(self, name: str) -> None:
        call(f"drop {name}", lambda: self.client.drop_collection(name))

    # --- aliases ------------------------------------------------------------------------

    def resolve_alias(self, alias: str) -> str | None:
        """The collection an alias points at, or ``None`` when the alias does not exist."""
        listed = call("list aliases", lambda: self.client.list_aliases())
        if alias not in list(listed.get("aliases") or []):
            return None
        desc = call(f"describe alias {alias}", lambda: self.client.describe_alias(alias))
        name = desc.get("collection_name")
        return str(name) if name else None

    def point_alias(self, alias: str, collection: str) -> None:
        """Atomically point ``alias`` at ``collection`` (create or alter)."""
        if self.resolve_alias(alias) is None:
            call(f"create alias {alias}", lambda: self.client.create_alias(collection, alias))
        else:
            call(f"alter alias {alias}", lambda: self.client.alter_alias(collection, alias))
