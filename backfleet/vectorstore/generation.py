"""A generation: one Milvus collection bound to exactly one model."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from backfleet.embedding.base import Matrix
from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import ModelMismatch, VectorStoreError
from backfleet.logs import get_logger
from backfleet.vectorstore.errors import call
from backfleet.vectorstore.request import ColumnsUnsupported, build_upsert, column_sender

PROP_OWNER = "backfleet.owner"
PROP_MODEL = "backfleet.model"
PROP_ALIAS = "backfleet.alias"
PROP_ID_TYPE = "backfleet.id_type"
OWNER = "backfleet"

GEN_RE = re.compile(r"^(?P<alias>[A-Za-z_][A-Za-z0-9_]*?)__(?P<slug>[a-z0-9_]+)__g(?P<n>\d+)$")
STR_ID_MAX = 512
TIMEOUT = 60.0
#: Milvus's answer to a read of a collection that is not loaded (e.g. after a restart)
NOT_LOADED = 101
T = TypeVar("T")
log = get_logger("backfleet.vectorstore")
#: cleared (for the process) when pymilvus refuses a prebuilt request: rows from then on
_columns = {"usable": True}


def generation_name(alias: str, identity: ModelIdentity, number: int) -> str:
    """``<alias>__<model_slug>__g<N>``."""
    return f"{alias}__{identity.slug}__g{number}"


def parse_generation_name(name: str) -> tuple[str, str, int] | None:
    m = GEN_RE.match(name)
    if not m:
        return None
    return m.group("alias"), m.group("slug"), int(m.group("n"))


def id_literal(value: int | str) -> str:
    """A value as a Milvus filter literal (strings JSON-escaped)."""
    if isinstance(value, int):
        return str(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def range_filter(lo: int | str | None, hi: int | str | None) -> str:
    parts = []
    if lo is not None:
        parts.append(f"id >= {id_literal(lo)}")
    if hi is not None:
        parts.append(f"id < {id_literal(hi)}")
    return " and ".join(parts)


class Generation:
    """Write and read one backfleet-owned collection, refusing vectors of another model."""

    def __init__(self, client: Any, name: str, identity: ModelIdentity, id_type: str) -> None:
        self.client = client
        self.name = name
        self.identity = identity
        self.id_type = id_type
        self._sender = column_sender(client)

    def __repr__(self) -> str:
        return f"Generation({self.name!r}, model={self.identity.tag!r})"

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        """A read; a collection released by a Milvus restart is loaded again, then re-read."""
        try:
            return call(what, fn)
        except VectorStoreError as exc:
            if getattr(exc.__cause__, "code", None) != NOT_LOADED:
                raise
        call(f"load {self.name}", lambda: self.client.load_collection(self.name, timeout=TIMEOUT))
        return call(what, fn)

    def require_model(self, identity: ModelIdentity) -> None:
        self.identity.require_same(identity, f"generation {self.name}")

    def upsert(
        self,
        ids: Sequence[int | str],
        vectors: Matrix,
        text_hashes: Sequence[str],
        identity: ModelIdentity,
    ) -> int:
        """Upsert rows (never plain insert); raises :class:`ModelMismatch` for another model."""
        self.require_model(identity)
        if not (len(ids) == len(text_hashes) == vectors.shape[0]):
            raise VectorStoreError(
                f"upsert into {self.name}: {len(ids)} ids, {vectors.shape[0]} vectors, "
                f"{len(text_hashes)} hashes"
            )
        if vectors.shape[0] and vectors.shape[1] != self.identity.dimension:
            raise ModelMismatch(
                f"vectors of dimension {vectors.shape[1]} for generation {self.name} "
                f"(dimension {self.identity.dimension})",
                hint="the model's dimension setting must match the generation",
            )
        if not ids:
            return 0
        now_ms = int(time.time() * 1000)
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        sender = self._sender if _columns["usable"] else None
        if sender is not None:
            # the request pymilvus would build from rows, built from the columns (~100x less
            # CPU: backfleet/vectorstore/request.py)
            request = build_upsert(self.name, ids, matrix, self.identity.tag, text_hashes, now_ms)
            try:
                stored = call(f"upsert into {self.name}", lambda: sender.send(request, TIMEOUT))
            except ColumnsUnsupported as exc:
                _columns["usable"] = False
                log.warning("upsert_columns_unsupported", generation=self.name, error=str(exc))
            else:
                if stored != len(ids):
                    raise VectorStoreError(
                        f"upsert into {self.name}: Milvus acknowledged {stored} of {len(ids)} rows"
                    )
                return stored
        return self._upsert_rows(ids, matrix, text_hashes, now_ms)

    def _upsert_rows(
        self,
        ids: Sequence[int | str],
        matrix: np.ndarray[Any, Any],
        text_hashes: Sequence[str],
        now_ms: int,
    ) -> int:
        """``MilvusClient.upsert`` with one dict per row (where columns cannot be sent)."""
        tag = self.identity.tag
        rows = [
            {
                "id": ident,
                "vector": vec,
                "model": tag,
                "text_hash": th,
                "embedded_at": now_ms,
            }
            for ident, vec, th in zip(ids, matrix, text_hashes, strict=True)
        ]
        call(
            f"upsert into {self.name}", lambda: self.client.upsert(self.name, rows, timeout=TIMEOUT)
        )
        return len(rows)

    def delete(self, ids: Sequence[int | str]) -> None:
        if not ids:
            return
        expr = f"id in [{', '.join(id_literal(i) for i in ids)}]"
        call(
            f"delete from {self.name}",
            lambda: self.client.delete(self.name, filter=expr, timeout=TIMEOUT),
        )

    def count(self, lo: int | str | None = None, hi: int | str | None = None) -> int:
        """``count(*)`` at Strong consistency (never collection statistics)."""
        res = self._read(
            f"count {self.name}",
            lambda: self.client.query(
                self.name,
                filter=range_filter(lo, hi),
                output_fields=["count(*)"],
                consistency_level="Strong",
                timeout=TIMEOUT,
            ),
        )
        return int(res[0]["count(*)"])

    def scan(
        self,
        lo: int | str | None,
        hi: int | str | None,
        fields: Sequence[str] = ("id", "text_hash", "model"),
        batch_size: int = 2000,
    ) -> Iterator[list[dict[str, Any]]]:
        """Rows of ``[lo, hi)`` in batches, streamed with a query iterator (Strong)."""
        expr = range_filter(lo, hi) or (
            "id >= -9223372036854775807" if self.id_type == "int" else 'id >= ""'
        )
        iterator = self._read(
            f"scan {self.name}",
            lambda: self.client.query_iterator(
                self.name,
                batch_size=batch_size,
                filter=expr,
                output_fields=list(fields),
                consistency_level="Strong",
                timeout=TIMEOUT,
            ),
        )
        try:
            while True:
                rows = call(f"scan {self.name}", iterator.next)
                if not rows:
                    return
                yield [dict(r) for r in rows]
        finally:
            iterator.close()

    def get(self, ids: Sequence[int | str], fields: Sequence[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        return list(
            self._read(
                f"get from {self.name}",
                lambda: self.client.get(
                    self.name, ids=list(ids), output_fields=list(fields), timeout=TIMEOUT
                ),
            )
        )

    def search(
        self,
        vectors: Matrix,
        limit: int,
        fields: Sequence[str] = ("model",),
        filter: str = "",
        *,
        ef: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Top ``limit`` hits per vector; ``ef`` (HNSW, raised to ``limit``) and ``nprobe``
        (IVF) widen the search, else Milvus's defaults apply (``ef`` about ``limit``: poor
        recall). The index ignores the parameter that is not its own."""
        params: dict[str, int] = {}
        if ef is not None:
            params["ef"] = max(ef, limit)
        if nprobe is not None:
            params["nprobe"] = nprobe
        search_params = {"metric_type": self.identity.metric, "params": params} if params else None
        res = self._read(
            f"search {self.name}",
            lambda: self.client.search(
                self.name,
                data=vectors.astype(np.float32).tolist(),
                limit=limit,
                filter=filter,
                output_fields=list(fields),
                search_params=search_params,
                timeout=TIMEOUT,
            ),
        )
        return [list(hits) for hits in res]
