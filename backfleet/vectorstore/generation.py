"""A generation: one Milvus collection bound to exactly one model."""

from __future__ import annotations

import itertools
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
from backfleet.vectorstore.expr import id_sort_key, ids_in, range_filter
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
#: Ids per exact-id query (``id in [...]``): bounds the expression and the result.
GET_BATCH = 1000
#: Query parameters that make milvus-server return a page as the *smallest* ids matching the
#: filter, in primary-key order (what pymilvus's own QueryIterator sends); a page may hold
#: more or fewer rows than its limit, and only an empty page ends a scan.
PK_ORDER = {"iterator": "True", "reduce_stop_for_best": "True"}
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
        """Delete exactly these ids (every stored copy of each)."""
        if not ids:
            return
        expr = ids_in(list(ids), self.id_type)
        call(
            f"delete from {self.name}",
            lambda: self.client.delete(self.name, filter=expr, timeout=TIMEOUT),
        )

    def count(self, lo: int | str | None = None, hi: int | str | None = None) -> int:
        """``count(*)`` of ``[lo, hi)`` at Strong consistency (never collection statistics);
        an open bound is no bound."""
        return self._count(range_filter(lo, hi, self.id_type))

    def count_ids(self, ids: Sequence[int | str]) -> int:
        """``count(*)`` of rows with exactly these ids (a duplicated id counts twice)."""
        return self._count(ids_in(list(ids), self.id_type)) if ids else 0

    def _count(self, expr: str) -> int:
        res = self._read(
            f"count {self.name}",
            lambda: self.client.query(
                self.name,
                filter=expr,
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
        """Rows of ``[lo, hi)`` in id order, in checked keyset pages (:func:`scan_pages`)."""
        return scan_pages(
            lambda what, fn: self._read(what, fn),
            self.client,
            self.name,
            self.id_type,
            lo,
            hi,
            fields,
            batch_size,
        )

    def get(self, ids: Sequence[int | str], fields: Sequence[str]) -> list[dict[str, Any]]:
        """Rows with exactly these ids (:func:`get_rows`)."""
        return get_rows(
            lambda what, fn: self._read(what, fn), self.client, self.name, self.id_type, ids, fields
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


Reader = Callable[[str, Callable[[], Any]], Any]


def scan_pages(
    read: Reader,
    client: Any,
    name: str,
    id_type: str,
    lo: int | str | None,
    hi: int | str | None,
    fields: Sequence[str],
    batch_size: int,
    pk: str = "id",
) -> Iterator[list[dict[str, Any]]]:
    """Rows of ``[lo, hi)`` of collection ``name`` in primary-key order, in keyset pages.

    Each page is a ``query`` (Strong) with backfleet's own escaped ``pk > <last id of the
    previous page>`` (no client library builds a filter from an id), in primary-key order
    (:data:`PK_ORDER`). A page is checked before it is yielded: ids in order, after the
    previous page, inside ``[lo, hi)``; a page that is not is refused
    (:class:`VectorStoreError`), never taken as "every row". Only an empty page ends a scan.
    """
    after: int | str | None = None
    while True:
        expr = range_filter(lo, hi, id_type, after=after, field=pk)

        def page(expr: str = expr) -> Any:
            return client.query(
                name,
                filter=expr,
                output_fields=list(fields),
                limit=batch_size,
                consistency_level="Strong",
                timeout=TIMEOUT,
                **PK_ORDER,
            )

        rows = read(f"scan {name}", page)
        if not rows:
            return
        batch = [dict(r) for r in rows]
        _check_page(name, pk, batch, lo, hi, after)
        after = batch[-1][pk]
        yield batch


def _check_page(
    name: str,
    pk: str,
    page: list[dict[str, Any]],
    lo: int | str | None,
    hi: int | str | None,
    after: int | str | None,
) -> None:
    keys: list[Any] = [id_sort_key(r[pk]) for r in page]
    key: Callable[[int | str], Any] = id_sort_key
    problem = None
    if any(b < a for a, b in itertools.pairwise(keys)):
        problem = "ids out of order"
    elif after is not None and keys[0] <= key(after):
        problem = f"id {page[0][pk]!r} not after the previous page's last id {after!r}"
    elif lo is not None and keys[0] < key(lo):
        problem = f"id {page[0][pk]!r} below the range's lower bound {lo!r}"
    elif hi is not None and keys[-1] >= key(hi):
        problem = f"id {page[-1][pk]!r} not below the range's upper bound {hi!r}"
    if problem is not None:
        log.warning("scan_page_refused", collection=name, lo=lo, hi=hi, error=problem)
        raise VectorStoreError(
            f"scan of {name} [{lo!r}, {hi!r}): Milvus returned a page with {problem}; "
            "nothing was changed",
            hint="check the Milvus server (backfleet expects pk-ordered query pages), "
            "then re-run the command",
        )


def get_rows(
    read: Reader,
    client: Any,
    name: str,
    id_type: str,
    ids: Sequence[int | str],
    fields: Sequence[str],
    pk: str = "id",
) -> list[dict[str, Any]]:
    """Rows of collection ``name`` with exactly these ids: ``query`` with backfleet's own
    escaped ``pk in [...]``, :data:`GET_BATCH` ids at a time; a row that was not asked for
    is refused (:class:`VectorStoreError`)."""
    wanted = list(dict.fromkeys(ids))
    out: list[dict[str, Any]] = []
    for i in range(0, len(wanted), GET_BATCH):
        part = wanted[i : i + GET_BATCH]
        expr = ids_in(part, id_type, field=pk)

        def lookup(expr: str = expr) -> Any:
            return client.query(
                name,
                filter=expr,
                output_fields=list(fields),
                consistency_level="Strong",
                timeout=TIMEOUT,
            )

        rows = read(f"get from {name}", lookup)
        asked = set(part)
        for r in rows:
            if r[pk] not in asked:
                raise VectorStoreError(
                    f"get from {name}: Milvus returned id {r[pk]!r}, which was not asked for; "
                    "nothing was changed",
                    hint="check the Milvus server, then re-run the command",
                )
            out.append(dict(r))
    return out
