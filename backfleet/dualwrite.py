"""Dual write: an application's changed documents go into every active generation of the alias.

While a migration runs, the alias has a live generation (model A) and a shadow (model B). An
application that changes documents calls :meth:`DualWriter.index_documents` (after committing
the change to the source table) or :meth:`DualWriter.delete_documents`; each document is read
from the source, embedded *once per generation with that generation's own model*, under the
fleet-wide rate limit of that model, and upserted (or deleted) in each.

Which generations are written, by the alias's newest migration:

* ``backfilling``, ``catching_up``, ``verified``, ``canary``, ``paused``, ``rolled_back`` and
  ``live`` (the holdover, so a rollback loses nothing): the alias's current collection, the
  migration's source generation and its shadow;
* ``planned``, or no migration at all: the collection the alias points at only (the shadow
  does not exist yet, and the backfill will read the current source);
* first build (no live collection): the shadow only.

A live collection that backfleet did not create has no recorded model: dual write refuses it
(``catchup.foreign_live = "refuse"``) or leaves it to the application (``"skip"``). A document
absent from the source, or whose text is blank, is deleted from every generation (the backfill
never indexes blank text). Writes are upserts, so repeating a call is harmless.

This is kernel code: it imports neither ``coordinator`` nor ``workers``; the Celery tasks that
wrap it are in ``workers/dual_write.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from backfleet.db.models import Migration, MigrationState
from backfleet.db.session import Database, make_engine
from backfleet.embedding.base import Embedder, validate_vectors
from backfleet.embedding.factory import embedder_for
from backfleet.embedding.identity import ModelIdentity
from backfleet.embedding.packing import PackLimits, pack
from backfleet.embedding.retry import call_provider
from backfleet.errors import BackfleetError, ConfigError, NotFound
from backfleet.lifecycle import DUAL_WRITING
from backfleet.limits import build_throttle
from backfleet.logs import get_logger
from backfleet.settings import Settings
from backfleet.source import Doc, Source, SourceId, text_hash
from backfleet.throttle import Throttle
from backfleet.vectorstore import Generation, VectorStore

log = get_logger("backfleet.dualwrite")


def label_for_identity(
    settings: Settings, identity: ModelIdentity, embedder: Callable[[str], Embedder], where: str
) -> str:
    """The configured model label whose embedder is exactly ``identity`` (fingerprint too)."""
    for label, model in settings.models.items():
        if (model.provider, model.name, model.version, model.dimension, model.metric) != (
            identity.provider,
            identity.name,
            identity.version,
            identity.dimension,
            identity.metric,
        ):
            continue
        if embedder(label).identity == identity:
            return label
    raise ConfigError(
        f"no configured model matches {where} ({identity.tag}): dual write cannot embed for it",
        hint="add a [models.<label>] table with that provider, name, version and dimension",
    )


@dataclass(frozen=True)
class Target:
    """One generation a dual write goes to, and the model label that embeds for it."""

    name: str
    role: str  # "live" | "shadow" | "previous"
    label: str


@dataclass
class GenerationWrite:
    role: str
    model: str
    upserted: int = 0
    deleted: int = 0


@dataclass
class DualWriteResult:
    """What one call wrote, per generation; ``skipped`` names collections left alone."""

    migration_id: int | None
    state: str | None
    generations: dict[str, GenerationWrite] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class DualWriter:
    """Writes changed documents into every active generation of one alias.

    Build it once per process (``DualWriter.from_settings(settings)``) and call it from the
    application's write path after the source row is committed. Thread-safe for concurrent
    calls as far as its collaborators are (SQLAlchemy engine, pymilvus client, limiter).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        store: VectorStore,
        source: Source,
        alias: str | None = None,
        embedder: Callable[[str], Embedder] | None = None,
        throttle: Callable[[str], Throttle] | None = None,
        generation: Callable[[str], Generation] | None = None,
    ) -> None:
        self.settings = settings
        self.alias = alias or settings.alias
        self.db = db
        self.store = store
        self.source = source
        self._embedders: dict[str, Embedder] = {}
        self._throttles: dict[str, Throttle] = {}
        self._embedder = embedder or self._own_embedder
        self._throttle = throttle or self._own_throttle
        self._generation = generation or store.open_generation
        self._labels: dict[str, str] = {}
        self._owned: dict[str, bool] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, alias: str | None = None) -> DualWriter:
        """A writer with its own connections (checkpoint DB, source, Milvus, limiter)."""
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
        return cls(
            settings,
            db=Database(settings.database_url),
            store=VectorStore(settings.milvus_uri, token),
            source=Source(make_engine(settings.source.url, what="source.url"), settings.source),
            alias=alias,
        )

    def close(self) -> None:
        self.store.close()
        self.db.dispose()
        self.source.engine.dispose()

    def _own_embedder(self, label: str) -> Embedder:
        if label not in self._embedders:
            self._embedders[label] = embedder_for(self.settings, label)
        return self._embedders[label]

    def _own_throttle(self, label: str) -> Throttle:
        if label not in self._throttles:
            self._throttles[label] = build_throttle(self.settings, label)
        return self._throttles[label]

    # --- where writes go ----------------------------------------------------------------

    def _migration(self) -> Migration | None:
        with self.db.session() as session:
            row = (
                session.execute(
                    select(Migration)
                    .where(Migration.alias == self.alias)
                    .order_by(Migration.id.desc())
                    .limit(1)
                )
                .scalars()
                .first()
            )
            if row is not None:
                session.expunge(row)
            return row

    def _is_owned(self, name: str) -> bool:
        if name not in self._owned:
            self._owned[name] = self.store.is_generation(name)
        return self._owned[name]

    def targets(self) -> tuple[Migration | None, list[Target], list[str]]:
        """``(migration, targets, skipped)`` for a write right now.

        Raises :class:`NotFound` when the alias has neither a collection nor a running
        migration, :class:`ConfigError` for a foreign live collection (unless
        ``catchup.foreign_live = "skip"``) or a generation no configured model matches.
        """
        migration = self._migration()
        live = self.store.resolve_alias(self.alias)
        running = migration is not None and migration.state in DUAL_WRITING
        names: list[tuple[str, str]] = []
        if live is not None:
            names.append((live, "live"))
        if running:
            assert migration is not None
            if migration.target_generation != live:
                names.append((migration.target_generation, "shadow"))
            previous = migration.source_generation
            if (
                previous is not None
                and previous not in (live, migration.target_generation)
                and self.store.has(previous)  # dropped after finalize: nothing to keep fresh
            ):
                names.append((previous, "previous"))
        if not names and (migration is None or migration.state != MigrationState.PLANNED):
            raise NotFound(
                f"alias {self.alias!r} points at no collection and has no running migration: "
                "there is nothing to write to",
                hint="check the alias setting, or plan and start a migration",
            )
        targets: list[Target] = []
        skipped: list[str] = []
        for name, role in names:
            if not self._is_owned(name):
                if self.settings.catchup.foreign_live == "skip":
                    skipped.append(name)
                    continue
                raise ConfigError(
                    f"alias {self.alias!r} serves {name}, which backfleet did not create: its "
                    "model is unknown, so dual write cannot embed documents for it",
                    hint='keep writing it in the application and set catchup.foreign_live = "skip"'
                    " (env BACKFLEET_CATCHUP__FOREIGN_LIVE=skip)",
                )
            targets.append(Target(name, role, self._label(name, migration)))
        return migration, targets, skipped

    def _label(self, name: str, migration: Migration | None) -> str:
        if name not in self._labels:
            gen = self._generation(name)
            if migration is not None and name == migration.target_generation:
                label = migration.target_model
                gen.require_model(self._embedder(label).identity)
            else:
                label = label_for_identity(
                    self.settings, gen.identity, self._embedder, f"generation {name}"
                )
            self._labels[name] = label
        return self._labels[name]

    # --- writes -------------------------------------------------------------------------

    def index_documents(self, ids: Sequence[SourceId]) -> DualWriteResult:
        """Read ``ids`` from the source and write them into every active generation.

        Ids absent from the source, or with blank text, are deleted from every generation.
        Every generation is attempted; if one fails, the first error is raised afterwards
        (its type says whether a retry can help; the upserts make a retry harmless).
        """
        migration, targets, skipped = self.targets()
        result = self._result(migration, targets, skipped)
        wanted = list(dict.fromkeys(self.source.decode_id(str(i)) for i in ids))
        docs = self.source.fetch(wanted) if wanted else []
        keep = [d for d in docs if d.text is not None and d.text.strip()]
        kept = {d.id for d in keep}
        gone = [i for i in wanted if i not in kept]
        errors: list[BackfleetError] = []
        for target in targets:
            try:
                gen = self._generation(target.name)
                if gone:
                    gen.delete(gone)
                    result.generations[target.name].deleted = len(gone)
                if keep:
                    written, tokens = self._embed_upsert(keep, target.label, gen)
                    result.generations[target.name].upserted = written
                    result.tokens += tokens
            except BackfleetError as exc:
                log.warning(
                    "dual_write_failed", alias=self.alias, generation=target.name, error=str(exc)
                )
                errors.append(exc)
        if errors:
            raise errors[0]
        log.info(
            "dual_write",
            alias=self.alias,
            migration=result.migration_id,
            generations=list(result.generations),
            upserted=len(keep),
            deleted=len(gone),
        )
        return result

    def delete_documents(self, ids: Sequence[SourceId]) -> DualWriteResult:
        """Delete ``ids`` from every active generation (whatever the source says)."""
        migration, targets, skipped = self.targets()
        result = self._result(migration, targets, skipped)
        wanted = list(dict.fromkeys(self.source.decode_id(str(i)) for i in ids))
        errors: list[BackfleetError] = []
        for target in targets:
            try:
                if wanted:
                    self._generation(target.name).delete(wanted)
                result.generations[target.name].deleted = len(wanted)
            except BackfleetError as exc:
                log.warning(
                    "dual_delete_failed", alias=self.alias, generation=target.name, error=str(exc)
                )
                errors.append(exc)
        if errors:
            raise errors[0]
        log.info(
            "dual_delete",
            alias=self.alias,
            migration=result.migration_id,
            generations=list(result.generations),
            deleted=len(wanted),
        )
        return result

    def _result(
        self, migration: Migration | None, targets: list[Target], skipped: list[str]
    ) -> DualWriteResult:
        if not targets and not skipped:
            log.info("dual_write_nothing", alias=self.alias, reason="migration planned, no live")
        return DualWriteResult(
            migration_id=migration.id if migration is not None else None,
            state=migration.state if migration is not None else None,
            generations={
                t.name: GenerationWrite(t.role, self._embedder(t.label).identity.tag)
                for t in targets
            },
            skipped=skipped,
        )

    def _embed_upsert(self, docs: list[Doc], label: str, gen: Generation) -> tuple[int, int]:
        """Embed ``docs`` with ``label``'s model under its fleet limiter; upsert into ``gen``."""
        embedder = self._embedder(label)
        gen.require_model(embedder.identity)
        model_cfg = self.settings.model(label)
        texts = [d.text or "" for d in docs]
        counter = getattr(embedder, "token_counter", None)
        if counter is not None:
            packed = pack(
                texts, counter, PackLimits.from_settings(model_cfg), model_cfg.oversize_policy
            )
            requests, send = packed.requests, packed.texts
            refused = {i for i, _ in packed.rejected}
            if refused:  # too long for the model: never indexed (as in the backfill)
                gen.delete([docs[i].id for i in sorted(refused)])
                log.warning(
                    "dual_write_oversize", generation=gen.name, docs=len(refused), label=label
                )
        else:
            requests, send = [list(range(len(docs)))], texts
        throttle = self._throttle(label)
        written = tokens = 0
        for request in requests:
            part = [send[i] for i in request]
            res = call_provider(embedder, throttle, part)
            validate_vectors(res.vectors, len(part), embedder.identity.dimension)
            gen.upsert(
                [docs[i].id for i in request],
                res.vectors,
                [text_hash(texts[i]) for i in request],
                embedder.identity,
            )
            written += len(request)
            tokens += res.tokens
        return written, tokens
