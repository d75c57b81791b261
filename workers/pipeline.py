"""The range pipeline: claim → (read → embed → validate → upsert → advance)* → complete.

Per batch the cursor moves only after the vectors are durably upserted, and only while this
worker's lease token still holds. A crash between the two repeats one batch, which the
upsert makes harmless. A heartbeat thread renews the lease while a batch is in flight.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from backfleet import metrics
from backfleet.db import checkpoint
from backfleet.db.checkpoint import Claim
from backfleet.db.session import Database
from backfleet.embedding.base import Embedder, EmbedResult, Matrix, validate_vectors
from backfleet.embedding.identity import ModelIdentity
from backfleet.embedding.packing import OversizePolicy, PackLimits, pack
from backfleet.embedding.retry import call_provider
from backfleet.embedding.sizing import sizer_for
from backfleet.errors import (
    BackfleetError,
    InvalidEmbedding,
    LeaseLost,
    ModelMismatch,
    ProviderRejected,
    ProviderTimeout,
    Retryable,
    ServiceUnavailable,
    SourceMismatch,
    VectorStoreUnavailable,
)
from backfleet.lifecycle import RangeState
from backfleet.limits import Throttle
from backfleet.logs import get_logger
from backfleet.readahead import ReadAhead
from backfleet.source import Doc, Source, SourceId, id_too_long, text_hash
from backfleet.source_identity import require_same_source, source_identity
from backfleet.vectorstore import Generation
from backfleet.vectorstore.generation import STR_ID_MAX
from workers import readiness
from workers.context import WorkerContext

log = get_logger("backfleet.pipeline")

Outcome = Literal[
    "done", "skipped", "released", "retry", "failed", "lease_lost", "refused", "paused"
]


class BatchWriter:
    """Upserts batch N and then commits its checkpoint while batch N+1 is read and embedded.

    One background writer, one batch at a time: a batch's cursor advance runs right after its
    own upsert returned, and the next batch is handed over only once the previous one is
    upserted *and* committed. So the per-batch contract is the sequential one: the cursor
    never runs ahead of Milvus, and a crash repeats at most one upserted batch. An error
    (a failed upsert, a lost lease, a database outage) is raised by the next ``submit`` or
    ``flush``, and nothing after it is written. With ``background=False`` each ``submit``
    upserts and commits before it returns.
    """

    def __init__(self, *, background: bool) -> None:
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix="batch-writer") if background else None
        )
        self._pending: Future[None] | None = None

    def submit(self, upsert: Callable[[], object], advance: Callable[[], object]) -> None:
        if self._executor is None:
            upsert()
            advance()
            return
        self.flush()
        self._pending = self._executor.submit(self._write, upsert, advance)

    @staticmethod
    def _write(upsert: Callable[[], object], advance: Callable[[], object]) -> None:
        upsert()
        advance()

    def flush(self) -> bool:
        """Wait until the batch handed over is upserted and committed (raising its error);
        True if one was in flight."""
        pending, self._pending = self._pending, None
        if pending is None:
            return False
        pending.result()
        return True

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        # leaving early (an error, a pause): still finish the batch already handed over
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if et is None:
            self.flush()
        else:
            with contextlib.suppress(Exception):
                self.flush()


class Heartbeat:
    """Renews a lease every ``interval`` seconds; remembers if the lease was lost."""

    def __init__(self, db: Database, claim: Claim, lease_seconds: float, interval: float) -> None:
        self.db = db
        self.claim = claim
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not checkpoint.heartbeat(self.db, self.claim, self.lease_seconds):
                    self.lost = True
                    log.warning("lease_lost", range=self.claim.range_id, owner=self.claim.owner)
                    return
            except BackfleetError as exc:  # database blip: the next beat may succeed
                log.warning("heartbeat_failed", range=self.claim.range_id, error=str(exc))

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"range {self.claim.range_id}: lease lost (heartbeat)")


@dataclass(frozen=True)
class DeadDoc:
    """A document isolated from its batch: ``rejected`` by the provider, or ``skipped``."""

    doc_id: str
    kind: str
    reason: str


@dataclass(frozen=True)
class EmbeddedPart:
    """Vectors of one provider request, ready to upsert."""

    ids: list[SourceId]
    vectors: Matrix
    hashes: list[str]


@dataclass
class BatchResult:
    docs: int
    tokens: int
    embedded: int
    skipped: int
    dead: list[DeadDoc] = field(default_factory=list)
    #: what ``embed_batch`` did not upsert itself (it was given no generation)
    parts: list[EmbeddedPart] = field(default_factory=list, repr=False)

    def upsert_into(self, generation: Generation, identity: ModelIdentity) -> None:
        for part in self.parts:
            generation.upsert(part.ids, part.vectors, part.hashes, identity)


#: A single document that fails this many times in a row is a poison document.
SINGLE_DOC_TRIES = 3


def embed_batch(
    docs: list[Doc],
    embedder: Embedder,
    throttle: Throttle,
    generation: Generation | None,
    *,
    limits: PackLimits | None = None,
    oversize_policy: OversizePolicy = "truncate",
    max_attempts: int = 6,
    max_wait: float = 60.0,
) -> BatchResult:
    """Embed and upsert one batch; isolate poison documents instead of failing the batch.

    Documents with no text are skipped (recorded, not embedded). With ``limits`` the batch is
    packed into requests within the provider's per-request limits; an input over the
    per-input limit is truncated (recorded) or rejected to dead letters, by policy. When the
    provider rejects a request or answers something invalid for it, the request is bisected
    until the bad documents are alone; each is tried a few times, then dead-lettered. If every
    document of a batch fails, the provider is the problem, not the documents: it raises.
    The stored text hash is always the hash of the source text, truncated or not.
    With ``generation=None`` nothing is upserted: the vectors are returned in ``parts``
    for the caller to write (:meth:`BatchResult.upsert_into`).
    """
    keep: list[Doc] = []
    dead: list[DeadDoc] = []
    unusable: list[DeadDoc] = []
    for doc in docs:
        # a row that cannot be read (not UTF-8) or whose id the generation cannot hold
        problem = doc.error or id_too_long(doc.id, STR_ID_MAX)
        if problem is not None:
            unusable.append(DeadDoc(str(doc.id), "rejected", problem))
        elif doc.text and not doc.text.isspace():
            keep.append(doc)
        else:
            dead.append(DeadDoc(str(doc.id), "skipped", "empty text"))
    if dead:
        log.info("docs_skipped_empty", count=len(dead), first=dead[0].doc_id)
    if unusable:
        log.warning(
            "docs_rejected_unusable",
            count=len(unusable),
            first=unusable[0].doc_id[:80],
            reason=unusable[0].reason,
        )
        dead.extend(unusable)
    tokens = 0
    embedded = 0
    rejected: list[DeadDoc] = []
    errors: list[BackfleetError] = []
    parts: list[EmbeddedPart] = []

    sizer = sizer_for(embedder.identity.tag, getattr(embedder, "timeout_seconds", None))

    def run(part: list[tuple[Doc, str]]) -> None:
        nonlocal tokens, embedded
        if (step := sizer.limit(len(part))) < len(part):  # a slow model: smaller requests
            for start in range(0, len(part), step):
                run(part[start : start + step])
            return
        texts = [t for _, t in part]
        result: EmbedResult | None = None
        failure: BackfleetError | None = None
        for _ in range(SINGLE_DOC_TRIES if len(part) == 1 else 1):
            try:
                started = time.monotonic()
                result = call_provider(
                    embedder,
                    throttle,
                    texts,
                    max_attempts=max_attempts,
                    max_wait=max_wait,
                    split_timeouts=len(part) > 1,
                )
                sizer.succeeded(len(part), time.monotonic() - started)
                validate_vectors(result.vectors, len(texts), embedder.identity.dimension)
                break
            except ProviderTimeout:
                if len(part) == 1:
                    raise
                sizer.timed_out(len(part))  # too slow for one request: split it
                mid = len(part) // 2
                run(part[:mid])
                run(part[mid:])
                return
            except InvalidEmbedding as exc:
                result, failure = None, exc
                if exc.bad_indexes and len(part) > 1:  # the response names the bad inputs
                    bad = set(exc.bad_indexes)
                    for i in sorted(bad):
                        run([part[i]])
                    run([p for i, p in enumerate(part) if i not in bad])
                    return
            except ProviderRejected as exc:
                result, failure = None, exc
        if result is None:
            if len(part) > 1:
                mid = len(part) // 2
                run(part[:mid])
                run(part[mid:])
                return
            assert failure is not None
            errors.append(failure)
            rejected.append(DeadDoc(str(part[0][0].id), "rejected", str(failure)))
            return
        ready = EmbeddedPart(
            [d.id for d, _ in part], result.vectors, [text_hash(d.text or "") for d, _ in part]
        )
        if generation is None:
            parts.append(ready)
        else:
            generation.upsert(ready.ids, ready.vectors, ready.hashes, embedder.identity)
        tokens += result.tokens
        embedded += len(part)

    counter = getattr(embedder, "token_counter", None)
    if keep and limits is not None and counter is not None:
        packed = pack([d.text or "" for d in keep], counter, limits, oversize_policy)
        for i in packed.truncated:
            dead.append(
                DeadDoc(
                    str(keep[i].id), "truncated", f"truncated to {limits.max_input_tokens} tokens"
                )
            )
        for i, reason in packed.rejected:
            dead.append(DeadDoc(str(keep[i].id), "rejected", reason))
        for request in packed.requests:
            run([(keep[i], packed.texts[i]) for i in request])
    elif keep:
        run([(d, d.text or "") for d in keep])
    if rejected and embedded == 0 and len(keep) > 1:
        raise errors[-1]
    if rejected:
        log.warning(
            "docs_dead_lettered",
            count=len(rejected),
            first=rejected[0].doc_id,
            reason=rejected[0].reason[:200],
        )
    tag = embedder.identity.tag
    metrics.DOCS.labels(tag).inc(embedded)
    metrics.TOKENS.labels(tag).inc(tokens)
    for dd in dead + rejected:
        metrics.DEAD_LETTERED.labels(dd.kind).inc()
    return BatchResult(
        docs=len(docs),
        tokens=tokens,
        embedded=embedded,
        skipped=sum(1 for d in dead if d.kind == "skipped"),
        dead=dead + rejected,
        parts=parts,
    )


class RangePipeline:
    """Runs one range of one migration to completion (or hands it back)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    def _over_budget(
        self,
        migration_id: int,
        docs: list[Doc],
        embedder: Embedder,
        price: float,
        owner: str,
        flush: Callable[[], bool],
    ) -> bool:
        """Pause the migration if the batches in flight could take spend over its budget.

        Every running range may spend one batch before the others see it, so the check
        reserves one batch (of this size) per running range: the cap holds under concurrency.
        Under a budget, this range's last batch is committed first (``flush``), so the spend
        read back includes it.
        """
        budget, tokens, running = checkpoint.budget_and_spend(self.ctx.db, migration_id)
        if budget is None:
            return False
        if flush():
            budget, tokens, running = checkpoint.budget_and_spend(self.ctx.db, migration_id)
            if budget is None:
                return False
        spent = tokens / 1_000_000 * price
        batch_tokens = sum(embedder.count_tokens(d.text) for d in docs if d.text)
        upcoming = batch_tokens / 1_000_000 * price * max(1, running)
        if spent + upcoming <= budget:
            return False
        reason = (
            f"budget: spent ${spent:,.4f} of ${budget:,.2f}; the batches in flight "
            f"(~${upcoming:,.4f}) could exceed it — raise it with `backfleet budget --set USD`, "
            "then `backfleet resume`"
        )
        if checkpoint.pause_for_budget(self.ctx.db, migration_id, actor=owner, reason=reason):
            log.warning(
                "budget_paused", migration=migration_id, spent=round(spent, 6), budget=budget
            )
        return True

    def _not_ready(
        self, migration_id: int, range_id: int, kind: str, exc: BackfleetError
    ) -> Outcome:
        """A task that cannot get to its claim: recorded for ``status``, the range untouched.

        Retryable (a provider or service outage): "released", re-sent with the countdown.
        Permanent (an unknown label, another model): "refused", the reaper re-sends it.
        """
        error = f"{type(exc).__name__}: {exc}"
        log.error(kind, migration=migration_id, range=range_id, error=error)
        if isinstance(exc, VectorStoreUnavailable):
            self.ctx.reset_store()
        readiness.report_not_ready(
            self.ctx.db,
            migration_id,
            range_id,
            actor=self.ctx.process_owner,
            kind=kind,
            error=error,
        )
        return "released" if isinstance(exc, Retryable) else "refused"

    def run(self, migration_id: int, range_id: int) -> Outcome:
        ctx = self.ctx
        cfg = ctx.settings.backfill
        migration = ctx.migration(migration_id)
        try:
            embedder = ctx.embedder(migration.target_model)
        except BackfleetError as exc:  # no claim, no attempt: say so in status, try again
            return self._not_ready(migration_id, range_id, readiness.MODEL_UNAVAILABLE, exc)
        target = ModelIdentity.from_json(migration.target_identity)
        try:
            target.require_same(embedder.identity, f"migration {migration_id}")
        except ModelMismatch as exc:
            log.error(
                "worker_model_mismatch", migration=migration_id, range=range_id, error=str(exc)
            )
            checkpoint.note_refusal(ctx.db, migration_id, range_id, ctx.owner, str(exc))
            return "refused"
        try:
            generation = ctx.generation(migration.target_generation)
            generation.require_model(embedder.identity)
        except BackfleetError as exc:
            return self._not_ready(migration_id, range_id, readiness.CANNOT_SERVE, exc)
        source = ctx.source
        owner = ctx.owner
        try:
            require_same_source(
                migration.source_identity,
                source_identity(ctx.settings.source, source.id_type),
                f"migration {migration_id}",
            )
        except SourceMismatch as exc:
            # before the claim: no attempt counted; the range stays pending for a worker
            # configured with the migration's source, and `status` shows why
            log.error(
                "worker_source_mismatch", migration=migration_id, range=range_id, error=str(exc)
            )
            checkpoint.note_refusal(ctx.db, migration_id, range_id, owner, str(exc))
            return "refused"
        claim = checkpoint.claim(
            ctx.db, range_id, owner, cfg.lease_seconds, max_attempts=cfg.max_attempts
        )
        if claim is None:
            log.info(
                "range_skipped", migration=migration_id, range=range_id, reason="not claimable"
            )
            return "skipped"
        log.info(
            "range_claimed",
            migration=migration_id,
            range=range_id,
            cursor=claim.cursor,
            owner=owner,
        )
        throttle = ctx.throttle(migration.target_model)
        model_cfg = ctx.settings.model(migration.target_model)
        limits = PackLimits.from_settings(model_cfg)
        price = model_cfg.price_per_million_tokens
        docs_total = 0
        try:
            with (
                Heartbeat(ctx.db, claim, cfg.lease_seconds, cfg.heartbeat_seconds) as beat,
                contextlib.ExitStack() as stack,
            ):
                if claim.cursor is None:
                    checkpoint.mark_read_started(ctx.db, claim, checkpoint.utcnow())
                batches = source.iter_batches(claim.lo, claim.hi, claim.cursor, cfg.batch_size)
                if cfg.overlap:
                    batches = stack.enter_context(ReadAhead(batches, name="source-read-ahead"))
                # the range's advances share one connection: no checkout and ping per batch;
                # their commits do not wait for the disk (a lost one only moves the cursor
                # back: the batches after it are upserted again); claim and complete do
                pinned = stack.enter_context(ctx.db.connection(async_commit=True))
                writer = stack.enter_context(BatchWriter(background=cfg.overlap))
                for docs in batches:
                    beat.check()
                    if price and self._over_budget(
                        migration_id, docs, embedder, price, owner, writer.flush
                    ):
                        return "paused"
                    res = embed_batch(
                        docs,
                        embedder,
                        throttle,
                        None,  # upserted by the writer, while the next batch is embedded
                        limits=limits,
                        oversize_policy=model_cfg.oversize_policy,
                    )
                    beat.check()
                    writer.submit(
                        functools.partial(res.upsert_into, generation, embedder.identity),
                        functools.partial(
                            checkpoint.advance,
                            ctx.db,
                            claim,
                            Source.encode_id(docs[-1].id),
                            res.docs,
                            res.tokens,
                            cfg.lease_seconds,
                            dead_letters=[(d.doc_id, d.kind, d.reason) for d in res.dead],
                            conn=pinned,
                        ),
                    )
                    docs_total += res.docs
                writer.flush()
                checkpoint.complete(ctx.db, claim)
        except LeaseLost as exc:
            log.warning("range_lease_lost", migration=migration_id, range=range_id, error=str(exc))
            return "lease_lost"
        except ServiceUnavailable as exc:
            log.warning("range_released", migration=migration_id, range=range_id, error=str(exc))
            if isinstance(exc, VectorStoreUnavailable):
                ctx.reset_store()
            # if even that fails, the lease expires and the reaper re-sends the range
            with contextlib.suppress(BackfleetError):
                checkpoint.release(ctx.db, claim, str(exc))
            return "released"
        except BackfleetError as exc:
            state = checkpoint.fail(ctx.db, claim, f"{type(exc).__name__}: {exc}", cfg.max_attempts)
            log.error(
                "range_error", migration=migration_id, range=range_id, state=state, error=str(exc)
            )
            return "failed" if state == RangeState.FAILED else "retry"
        except Exception as exc:  # a bug, a driver error not converted: counted all the same
            log.error(
                "range_unexpected_error",
                migration=migration_id,
                range=range_id,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=True,
            )
            # if the checkpoint database is down too, the lease expires and the takeover
            # counts the attempt instead
            state = None
            with contextlib.suppress(BackfleetError):
                state = checkpoint.fail(
                    ctx.db, claim, f"{type(exc).__name__}: {exc}", cfg.max_attempts
                )
            return "failed" if state == RangeState.FAILED else "retry"
        log.info("range_done", migration=migration_id, range=range_id, docs=docs_total)
        return "done"


def reembed_documents(ctx: WorkerContext, migration_id: int, doc_ids: list[str]) -> BatchResult:
    """Embed named documents into a migration's shadow (dead-letter retry, repairs).

    Successes clear their dead letters; failures refresh them. Ids gone from the source are
    deleted from the shadow.
    """
    from sqlalchemy import delete

    from backfleet.db.models import DeadLetter

    migration = ctx.migration(migration_id)
    embedder = ctx.embedder(migration.target_model)
    ModelIdentity.from_json(migration.target_identity).require_same(
        embedder.identity, f"migration {migration_id}"
    )
    generation = ctx.generation(migration.target_generation)
    source = ctx.source
    require_same_source(
        migration.source_identity,
        source_identity(ctx.settings.source, source.id_type),
        f"migration {migration_id}",
    )
    wanted = [source.decode_id(i) for i in doc_ids]
    docs = source.fetch(wanted)
    found = {str(d.id) for d in docs}
    gone = [i for i in wanted if str(i) not in found]
    if gone:
        generation.delete(gone)
    model_cfg = ctx.settings.model(migration.target_model)
    res = embed_batch(
        docs,
        embedder,
        ctx.throttle(migration.target_model),
        generation,
        limits=PackLimits.from_settings(model_cfg),
        oversize_policy=model_cfg.oversize_policy,
    )
    failed = {d.doc_id for d in res.dead}
    cleared = [i for i in doc_ids if i not in failed]
    with ctx.db.session() as session:
        if cleared:
            session.execute(
                delete(DeadLetter).where(
                    DeadLetter.migration_id == migration_id, DeadLetter.doc_id.in_(cleared)
                )
            )
        if res.dead:
            checkpoint.save_dead_letters(
                session, migration_id, None, [(d.doc_id, d.kind, d.reason) for d in res.dead]
            )
    log.info(
        "docs_reembedded",
        migration=migration_id,
        docs=len(docs),
        embedded=res.embedded,
        dead=len(res.dead),
        deleted=len(gone),
    )
    return res
