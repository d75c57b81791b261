"""Query routing for applications: the canary share, and the right model per generation.

``Router.search(text, k, key=…)`` picks one generation for the query — the shadow for a
sticky share of keys while the alias's migration is in canary, otherwise the generation the
alias points at — embeds the text with *that* generation's model, searches that generation
only, and says which one answered. One result list never mixes generations.

The canary share and the migration's generations come from the checkpoint database, the
alias target from Milvus; both are cached for ``cutover.router_refresh_seconds`` and re-read
after that, so a new percentage, an alias swap or a rollback is picked up without a restart.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from backfleet.db.models import Migration, MigrationState
from backfleet.db.session import Database
from backfleet.embedding.base import Embedder
from backfleet.embedding.factory import embedder_for
from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import ConfigError, ModelMismatch, NotFound, VectorStoreError
from backfleet.logs import get_logger
from backfleet.settings import Settings
from backfleet.vectorstore import Generation, VectorStore

log = get_logger("backfleet.router")

#: Keys are hashed into this many buckets; a percentage maps to ``percent * 100`` of them.
BUCKETS = 10_000


def bucket(key: str) -> int:
    """The key's stable bucket in ``[0, BUCKETS)``: sha256, so every process agrees."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_canary(key: str, percent: float) -> bool:
    """Whether ``key`` belongs to the canary share ``percent`` (0 to 100); sticky per key.

    Raising the percentage only adds keys: a key in the 5% share stays in the 25% share.
    """
    return bucket(key) < round(percent * BUCKETS / 100)


def embedder_for_identity(settings: Settings, identity: ModelIdentity, where: str) -> Embedder:
    """The configured embedder whose model is exactly ``identity`` (fingerprint included)."""
    for label, model in settings.models.items():
        if (model.provider, model.name, model.version, model.dimension, model.metric) != (
            identity.provider,
            identity.name,
            identity.version,
            identity.dimension,
            identity.metric,
        ):
            continue
        embedder = embedder_for(settings, label)
        embedder.identity.require_same(identity, where)
        return embedder
    raise ConfigError(
        f"no configured model matches {where} ({identity.tag})",
        hint="add a [models.<label>] table with that provider, name, version and dimension",
    )


@dataclass(frozen=True)
class Routing:
    """What the router believes now: the live generation and, in canary, the shadow."""

    alias: str
    live: str
    shadow: str | None
    percent: float
    migration_id: int | None
    state: str | None


@dataclass(frozen=True)
class Answer:
    """One search answered by exactly one generation."""

    generation: str
    model: str
    shadow: bool
    hits: list[dict[str, Any]]

    @property
    def ids(self) -> list[Any]:
        return [h["id"] for h in self.hits]


class Router:
    """Route application queries between the live generation and a canary shadow."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database | None = None,
        store: VectorStore | None = None,
        refresh_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.alias = settings.alias
        self._own_db = db is None
        self._own_store = store is None
        self.db = db or Database(settings.database_url)
        if store is None:
            token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
            store = VectorStore(settings.milvus_uri, token)
        self.store = store
        self.refresh_seconds = (
            settings.cutover.router_refresh_seconds if refresh_seconds is None else refresh_seconds
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._routing: Routing | None = None
        self._loaded_at = float("-inf")
        self._generations: dict[str, tuple[Generation, Embedder]] = {}

    # --- state --------------------------------------------------------------------------

    def routing(self, *, refresh: bool = False) -> Routing:
        """The current routing, re-read when older than ``refresh_seconds``."""
        with self._lock:
            now = self._clock()
            if refresh or self._routing is None or now - self._loaded_at >= self.refresh_seconds:
                self._routing = self._read_routing()
                self._loaded_at = now
            return self._routing

    def _read_routing(self) -> Routing:
        with self.db.session() as session:
            row = session.execute(
                select(
                    Migration.id,
                    Migration.state,
                    Migration.canary_percent,
                    Migration.target_generation,
                )
                .where(Migration.alias == self.alias)
                .order_by(Migration.id.desc())
                .limit(1)
            ).first()
        live = self.store.resolve_alias(self.alias)
        if live is None:
            raise NotFound(
                f"alias {self.alias!r} does not exist in Milvus",
                hint="point the alias at a generation first (settings: alias)",
            )
        shadow: str | None = None
        percent = 0.0
        if (
            row is not None
            and row.state == MigrationState.CANARY
            and row.canary_percent > 0
            and row.target_generation != live
        ):
            shadow, percent = row.target_generation, float(row.canary_percent)
        routing = Routing(
            alias=self.alias,
            live=live,
            shadow=shadow,
            percent=percent,
            migration_id=row.id if row is not None else None,
            state=row.state if row is not None else None,
        )
        if routing != self._routing:
            log.info(
                "router_routing",
                alias=self.alias,
                live=live,
                shadow=shadow,
                percent=percent,
                migration=routing.migration_id,
                state=routing.state,
            )
        return routing

    def _generation(self, name: str) -> tuple[Generation, Embedder]:
        cached = self._generations.get(name)
        if cached is None:
            gen = self.store.open_generation(name)
            embedder = embedder_for_identity(self.settings, gen.identity, f"generation {name}")
            cached = (gen, embedder)
            self._generations[name] = cached
        return cached

    # --- queries ------------------------------------------------------------------------

    def choose(self, key: str) -> tuple[str, bool]:
        """``(generation, is_shadow)`` that answers queries of ``key`` right now."""
        r = self.routing()
        if r.shadow is not None and in_canary(key, r.percent):
            return r.shadow, True
        return r.live, False

    def search(
        self,
        text: str,
        k: int = 10,
        *,
        key: str | None = None,
        fields: Sequence[str] = (),
    ) -> Answer:
        """Search one generation for ``text``; ``key`` (a user or session id) makes the choice
        sticky; without one, the query text is the key."""
        if not text or not text.strip():
            raise ConfigError("the query text is empty", hint="pass a non-empty query")
        if k <= 0:
            raise ConfigError(f"k must be positive, got {k}", hint="pass k >= 1")
        try:
            return self._search(text, k, key if key is not None else text, fields)
        except (VectorStoreError, NotFound):
            # the generation may have been dropped or the alias moved since the last read:
            # re-read once, then answer from whatever is current
            self.routing(refresh=True)
            self._generations.clear()
            return self._search(text, k, key if key is not None else text, fields)

    def _search(self, text: str, k: int, key: str, fields: Sequence[str]) -> Answer:
        name, shadow = self.choose(key)
        gen, embedder = self._generation(name)
        vectors = np.asarray(embedder.embed([text]).vectors, dtype=np.float32)
        cut = self.settings.cutover
        hits = gen.search(
            vectors, k, fields=("model", *fields), ef=cut.search_ef, nprobe=cut.search_nprobe
        )[0]
        tag = gen.identity.tag
        for hit in hits:
            model = (hit.get("entity") or {}).get("model", tag)
            if model != tag:
                raise ModelMismatch(
                    f"generation {name} returned a row of model {model}, it is bound to {tag}",
                    hint="reconcile the generation; it holds vectors of another model",
                )
        return Answer(
            generation=name,
            model=tag,
            shadow=shadow,
            hits=[
                {"id": h["id"], "distance": float(h["distance"]), **(h.get("entity") or {})}
                for h in hits
            ],
        )

    def close(self) -> None:
        if self._own_store:
            self.store.close()
        if self._own_db:
            self.db.dispose()
