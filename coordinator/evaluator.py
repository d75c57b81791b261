"""Prove the shadow retrieves at least as well as live on *this* corpus: golden-set metrics.

Metrics (pure functions, mean over queries):

* recall@k — share of a query's relevant ids (grade > 0) found in the top k;
* nDCG@10 — graded gains (the grade itself, linear), discount ``1 / log2(rank + 1)``,
  normalised by the ideal ordering of the query's grades;
* MRR@10 — ``1 / rank`` of the first relevant id in the top 10, else 0.

Each query is embedded with its own generation's model. The shadow's index search is also
checked against exact (brute-force) search on a sample of queries, so an index that drops
neighbours is caught even when the model is good. The verdict is GO when the shadow is within
the configured tolerances of live (``[cutover]``), the index recall is high enough and the
set is large enough; the evaluation is stored (``bf_evaluations``) for the cutover gate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from backfleet.db.checkpoint import record_event, utcnow
from backfleet.db.models import Evaluation, Migration
from backfleet.db.queries import latest_of_migration
from backfleet.db.session import Database
from backfleet.embedding.base import Embedder, Matrix
from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import NotFound
from backfleet.logs import get_logger
from backfleet.router import embedder_for_identity
from backfleet.settings import CutoverSettings, Settings
from backfleet.source import Source, SourceId
from backfleet.vectorstore import Generation, VectorStore
from backfleet.vectorstore.expr import range_filter
from coordinator.golden import GoldenSet

log = get_logger("backfleet.evaluator")

NDCG_K = 10
MRR_K = 10
EMBED_BATCH = 64
METRICS = ("recall", "ndcg", "mrr")

# --- metrics (pure) ----------------------------------------------------------------------


def recall_at_k(ranked: Sequence[SourceId], relevant: Iterable[SourceId], k: int) -> float:
    rel = set(relevant)
    if not rel:
        return 0.0
    return len(rel.intersection(ranked[:k])) / len(rel)


def dcg(gains: Sequence[float]) -> float:
    """``sum(gain_i / log2(i + 1))`` for ranks i = 1, 2, …"""
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1))


def ndcg_at_k(
    ranked: Sequence[SourceId], grades: Mapping[SourceId, float], k: int = NDCG_K
) -> float:
    ideal = dcg(sorted((g for g in grades.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([grades.get(i, 0.0) for i in ranked[:k]]) / ideal


def mrr_at_k(ranked: Sequence[SourceId], relevant: Iterable[SourceId], k: int = MRR_K) -> float:
    rel = set(relevant)
    for rank, i in enumerate(ranked[:k], start=1):
        if i in rel:
            return 1.0 / rank
    return 0.0


def overlap(found: Sequence[SourceId], exact: Sequence[SourceId]) -> float:
    """Share of the exact top k the index search found."""
    if not exact:
        return 1.0
    return len(set(found).intersection(exact)) / len(exact)


#: scores this close to the exact k-th (float32 round-off between Milvus and numpy) are ties
TIE_TOLERANCE = 1e-5


def index_overlap(
    found: Sequence[tuple[SourceId, float]], exact: Sequence[SourceId], kth_score: float
) -> float:
    """Share of the exact top k the index found, counting a tie as found.

    ``found`` is ``(id, score)`` with scores as :func:`exact_top_k_scored` ranks them (higher is
    better). A hit outside the exact list that scores as well as the exact k-th is a neighbour
    just as near (a duplicate text, an equal-score document): which of the ties the exact sort
    kept is arbitrary, so it is not a miss.
    """
    if not exact:
        return 1.0
    wanted = set(exact)
    tol = TIE_TOLERANCE * max(1.0, abs(kth_score))
    good = {i for i, s in found if i in wanted or s >= kth_score - tol}
    return min(len(exact), len(good)) / len(exact)


@dataclass(frozen=True)
class Scores:
    recall: float
    ndcg: float
    mrr: float


def score(ranked: Sequence[SourceId], grades: Mapping[SourceId, float], k: int) -> Scores:
    relevant = [i for i, g in grades.items() if g > 0]
    return Scores(
        recall=recall_at_k(ranked, relevant, k),
        ndcg=ndcg_at_k(ranked, grades, NDCG_K),
        mrr=mrr_at_k(ranked, relevant, MRR_K),
    )


def mean_scores(scores: Sequence[Scores]) -> dict[str, float]:
    n = max(1, len(scores))
    return {m: sum(getattr(s, m) for s in scores) / n for m in METRICS}


def verdict(
    live: Mapping[str, float] | None,
    shadow: Mapping[str, float],
    index_recall: float | None,
    queries: int,
    tol: CutoverSettings,
) -> tuple[str, list[str]]:
    """``("GO" | "NO-GO", reasons)``: every failed tolerance is a reason."""
    reasons: list[str] = []
    if queries < tol.min_queries:
        reasons.append(f"only {queries} queries (cutover.min_queries is {tol.min_queries})")
    if live is not None:
        for metric, allowed, name in (
            ("recall", tol.max_recall_drop, "recall@k"),
            ("ndcg", tol.max_ndcg_drop, "nDCG@10"),
            ("mrr", tol.max_mrr_drop, "MRR@10"),
        ):
            if shadow[metric] < live[metric] - allowed - 1e-12:
                reasons.append(
                    f"shadow {name} {shadow[metric]:.4f} is below live {live[metric]:.4f} "
                    f"by more than {allowed} (cutover.max_{metric}_drop)"
                )
    if index_recall is not None and index_recall < tol.min_index_recall:
        reasons.append(
            f"shadow index recall {index_recall:.4f} < {tol.min_index_recall} "
            "(cutover.min_index_recall)"
        )
    return ("NO-GO" if reasons else "GO"), reasons


# --- exact search ------------------------------------------------------------------------


def _prepare(matrix: Matrix, metric: str) -> Matrix:
    m = matrix.astype(np.float32)
    if metric == "COSINE":
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        m = (m / np.where(norms == 0, 1, norms)).astype(np.float32)
    return m


def exact_top_k(
    queries: Matrix, batches: Iterable[tuple[list[SourceId], Matrix]], metric: str, k: int
) -> list[list[SourceId]]:
    """Brute-force top ``k`` ids per query over streamed ``(ids, vectors)`` batches."""
    return [ids for ids, _ in exact_top_k_scored(queries, batches, metric, k)]


def exact_top_k_scored(
    queries: Matrix, batches: Iterable[tuple[list[SourceId], Matrix]], metric: str, k: int
) -> list[tuple[list[SourceId], list[float]]]:
    """Brute-force top ``k`` per query as ``(ids, scores)``; a score is higher when nearer
    (similarity for COSINE and IP, minus the squared distance for L2, as Milvus reports it)."""
    q = _prepare(queries, metric)
    best_scores = np.full((q.shape[0], 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((q.shape[0], 0), dtype=object)
    for ids, vectors in batches:
        if not ids:
            continue
        v = _prepare(vectors, metric)
        if metric == "L2":
            s = -((q * q).sum(axis=1, keepdims=True) - 2 * q @ v.T + (v * v).sum(axis=1)[None, :])
        else:
            s = q @ v.T
        id_row = np.empty(len(ids), dtype=object)
        id_row[:] = ids
        all_scores = np.concatenate([best_scores, s.astype(np.float32)], axis=1)
        all_ids = np.concatenate([best_ids, np.tile(id_row, (q.shape[0], 1))], axis=1)
        keep = min(k, all_scores.shape[1])
        top = np.argsort(-all_scores, axis=1, kind="stable")[:, :keep]
        best_scores = np.take_along_axis(all_scores, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    return [
        (list(ids), [float(x) for x in scores])
        for ids, scores in zip(best_ids, best_scores, strict=True)
    ]


def hit_score(hit: Mapping[str, Any], metric: str) -> float:
    """A Milvus hit's distance as :func:`exact_top_k_scored` scores it (higher is nearer)."""
    distance = float(hit["distance"])
    return -distance if metric == "L2" else distance


def _vector_batches(gen: Generation, hi: SourceId | None) -> Iterable[tuple[list[Any], Matrix]]:
    for rows in gen.scan(None, hi, fields=("id", "vector")):
        ids = [r["id"] for r in rows]
        yield ids, np.asarray([r["vector"] for r in rows], dtype=np.float32)


def index_recall(
    gen: Generation,
    vectors: Matrix,
    k: int,
    source: Source,
    max_rows: int,
    *,
    ef: int | None = None,
    nprobe: int | None = None,
) -> tuple[float, str]:
    """Mean share of the exact top ``k`` that the index search finds, and what was scanned.

    The index is searched with ``ef`` / ``nprobe`` (``cutover.search_ef`` / ``search_nprobe``,
    what the Router uses); a hit tied with the exact k-th counts (:func:`index_overlap`).
    Exact search scans every row when the generation holds at most ``max_rows``; beyond that,
    the first ``max_rows`` ids (an id slice, searched with the same filter), so it stays bounded.
    """
    rows = gen.count()
    hi: SourceId | None = None
    scope = f"all {rows:,} rows"
    if rows > max_rows:
        points = source.split_points(max_rows)
        if points:
            hi = points[0]
            scope = f"the first {max_rows:,} ids of {rows:,} rows (cutover.exact_scan_max_rows)"
    id_filter = range_filter(None, hi, gen.id_type) if hi is not None else ""
    found = gen.search(vectors, k, fields=(), filter=id_filter, ef=ef, nprobe=nprobe)
    metric = gen.identity.metric
    exact = exact_top_k_scored(vectors, _vector_batches(gen, hi), metric, k)
    shares = [
        index_overlap([(h["id"], hit_score(h, metric)) for h in f], ids, scores[-1]) if ids else 1.0
        for f, (ids, scores) in zip(found, exact, strict=True)
    ]
    return sum(shares) / max(1, len(shares)), scope


# --- the evaluation ----------------------------------------------------------------------


@dataclass
class Side:
    generation: str
    model: str
    means: dict[str, float]
    per_query: list[Scores] = field(repr=False)


@dataclass
class EvalReport:
    migration_id: int
    evaluation_id: int
    golden: str
    pseudo: bool
    queries: int
    k: int
    live: Side | None
    shadow: Side
    wins: int
    losses: int
    ties: int
    worst: list[dict[str, Any]]
    index_recall: float
    index_recall_scope: str
    index_recall_queries: int
    verdict: str
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for side in ("live", "shadow"):
            if data[side] is not None:
                data[side].pop("per_query", None)
        return data


def _ranked(
    gen: Generation, embedder: Embedder, texts: list[str], limit: int, tol: CutoverSettings
) -> list[list[Any]]:
    out: list[list[Any]] = []
    for start in range(0, len(texts), EMBED_BATCH):
        vectors = np.asarray(embedder.embed(texts[start : start + EMBED_BATCH]).vectors)
        hits = gen.search(vectors, limit, fields=(), ef=tol.search_ef, nprobe=tol.search_nprobe)
        out.extend([h["id"] for h in row] for row in hits)
    return out


def _side(
    settings: Settings, store: VectorStore, name: str, golden: GoldenSet, k: int
) -> tuple[Side, Generation, Embedder]:
    gen = store.open_generation(name)
    embedder = embedder_for_identity(settings, gen.identity, f"generation {name}")
    texts = [q.text for q in golden.queries]
    ranked = _ranked(gen, embedder, texts, max(k, NDCG_K, MRR_K), settings.cutover)
    per_query = [score(r, q.grades, k) for r, q in zip(ranked, golden.queries, strict=True)]
    return Side(name, gen.identity.tag, mean_scores(per_query), per_query), gen, embedder


def live_generation(store: VectorStore, migration: Migration) -> str | None:
    """What the shadow is compared with: the generation live at plan time, else the alias's."""
    for name in (migration.source_generation, store.resolve_alias(migration.alias)):
        if name and name != migration.target_generation and store.has(name):
            return name
    return None


def evaluate(
    settings: Settings,
    db: Database,
    store: VectorStore,
    source: Source,
    golden: GoldenSet,
    migration: Migration,
    *,
    actor: str,
) -> EvalReport:
    """Run the golden set against live and shadow, decide GO / NO-GO, store the evaluation."""
    tol = settings.cutover
    k = tol.recall_k
    if not store.has(migration.target_generation):
        raise NotFound(
            f"shadow generation {migration.target_generation} of migration {migration.id} "
            "does not exist in Milvus",
            hint="`backfleet start` creates it",
        )
    shadow, shadow_gen, shadow_embedder = _side(
        settings, store, migration.target_generation, golden, k
    )
    shadow_gen.require_model(ModelIdentity.from_json(migration.target_identity))
    live_name = live_generation(store, migration)
    live = _side(settings, store, live_name, golden, k)[0] if live_name else None

    wins = losses = ties = 0
    deltas: list[dict[str, Any]] = []
    for i, q in enumerate(golden.queries):
        s = shadow.per_query[i].ndcg
        lv = live.per_query[i].ndcg if live else s
        if s > lv + 1e-9:
            wins += 1
        elif s < lv - 1e-9:
            losses += 1
        else:
            ties += 1
        deltas.append({"id": q.qid, "line": q.line, "query": q.text, "live": lv, "shadow": s})
    worst = sorted(
        (d for d in deltas if d["shadow"] < d["live"]), key=lambda d: d["shadow"] - d["live"]
    )

    n = len(golden.queries)
    sample = min(n, tol.index_recall_sample)
    picks = [round(i * (n - 1) / max(1, sample - 1)) for i in range(sample)] if n > 1 else [0]
    sample_vectors = np.asarray(
        shadow_embedder.embed([golden.queries[i].text for i in sorted(set(picks))]).vectors
    )
    ir, scope = index_recall(
        shadow_gen,
        sample_vectors,
        k,
        source,
        tol.exact_scan_max_rows,
        ef=tol.search_ef,
        nprobe=tol.search_nprobe,
    )

    decision, reasons = verdict(live.means if live else None, shadow.means, ir, n, tol)
    metrics: dict[str, Any] = {
        "k": k,
        "pseudo": golden.pseudo,
        "live": {"generation": live.generation, "model": live.model, **live.means}
        if live
        else None,
        "shadow": {"generation": shadow.generation, "model": shadow.model, **shadow.means},
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "worst": worst[:20],
        "index_recall": ir,
        "index_recall_scope": scope,
        "index_recall_queries": len(sample_vectors),
        "reasons": reasons,
        "tolerances": tol.model_dump(
            include={
                "max_recall_drop",
                "max_ndcg_drop",
                "max_mrr_drop",
                "min_index_recall",
                "min_queries",
                "search_ef",
                "search_nprobe",
            }
        ),
    }
    with db.session() as session:
        row = Evaluation(
            migration_id=migration.id,
            golden=golden.name + (" (pseudo-queries)" if golden.pseudo else ""),
            queries=n,
            verdict=decision,
            metrics=metrics,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        evaluation_id = row.id
        record_event(
            session,
            migration.id,
            "evaluation",
            actor=actor,
            reason=f"{decision}: " + ("; ".join(reasons) or "within tolerances"),
            details={"evaluation": evaluation_id, "golden": golden.name, "queries": n},
        )
    log.info(
        "evaluation_done",
        migration=migration.id,
        evaluation=evaluation_id,
        verdict=decision,
        queries=n,
        shadow_ndcg=round(shadow.means["ndcg"], 4),
        live_ndcg=round(live.means["ndcg"], 4) if live else None,
        index_recall=round(ir, 4),
    )
    return EvalReport(
        migration_id=migration.id,
        evaluation_id=evaluation_id,
        golden=golden.name,
        pseudo=golden.pseudo,
        queries=n,
        k=k,
        live=live,
        shadow=shadow,
        wins=wins,
        losses=losses,
        ties=ties,
        worst=worst[:10],
        index_recall=ir,
        index_recall_scope=scope,
        index_recall_queries=len(sample_vectors),
        verdict=decision,
        reasons=reasons,
    )


def latest_evaluation(db: Database, migration_id: int) -> Evaluation | None:
    return latest_of_migration(db, Evaluation, migration_id, Evaluation.id)
