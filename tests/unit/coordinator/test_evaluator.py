"""Golden-set metrics against a hand-computed case; the verdict; exact search."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backfleet.settings import CutoverSettings
from coordinator.evaluator import (
    dcg,
    exact_top_k,
    exact_top_k_scored,
    hit_score,
    index_overlap,
    mean_scores,
    mrr_at_k,
    ndcg_at_k,
    overlap,
    recall_at_k,
    score,
    verdict,
)

# ranking returned for one query, and its judged grades (5 is relevant but not retrieved)
RANKED = [3, 1, 7, 2, 9]
GRADES = {1: 3.0, 2: 1.0, 5: 2.0}


def test_recall_at_k_by_hand() -> None:
    relevant = {1, 2, 5}
    assert recall_at_k(RANKED, relevant, 1) == 0.0
    assert recall_at_k(RANKED, relevant, 3) == pytest.approx(1 / 3)  # {1}
    assert recall_at_k(RANKED, relevant, 5) == pytest.approx(2 / 3)  # {1, 2}
    assert recall_at_k(RANKED, set(), 5) == 0.0


def test_ndcg_at_10_by_hand() -> None:
    # DCG: id 1 (gain 3) at rank 2, id 2 (gain 1) at rank 4: 3/log2(3) + 1/log2(5)
    #     = 1.892789 + 0.430677 = 2.323466
    # ideal: gains 3, 2, 1 at ranks 1-3: 3/1 + 2/log2(3) + 1/log2(4) = 3 + 1.261860 + 0.5
    #     = 4.761860
    assert dcg([3.0, 2.0, 1.0]) == pytest.approx(4.761860, abs=1e-6)
    assert ndcg_at_k(RANKED, GRADES, 10) == pytest.approx(2.323466 / 4.761860, abs=1e-6)
    assert ndcg_at_k(RANKED, GRADES, 10) == pytest.approx(0.487932, abs=1e-6)
    # perfect ranking is 1, nothing relevant retrieved is 0, no gains at all is 0
    assert ndcg_at_k([1, 5, 2], GRADES) == pytest.approx(1.0)
    assert ndcg_at_k([8, 9], GRADES) == 0.0
    assert ndcg_at_k([1], {1: 0.0}) == 0.0
    # only the top 10 count
    assert ndcg_at_k([0] * 10 + [1], {1: 1.0}) == 0.0
    assert ndcg_at_k([0] * 9 + [1], {1: 1.0}) == pytest.approx(1 / math.log2(11))


def test_mrr_at_10_by_hand() -> None:
    assert mrr_at_k(RANKED, {1, 2, 5}) == 0.5
    assert mrr_at_k(RANKED, {9}) == pytest.approx(1 / 5)
    assert mrr_at_k(RANKED, {1}, k=1) == 0.0
    assert mrr_at_k([0] * 10 + [4], {4}) == 0.0


def test_score_and_means() -> None:
    s = score(RANKED, GRADES, k=5)
    assert (s.recall, s.mrr) == (pytest.approx(2 / 3), 0.5)
    perfect = score([1, 5, 2], GRADES, k=5)
    means = mean_scores([s, perfect])
    assert means["recall"] == pytest.approx((2 / 3 + 1) / 2)
    assert means["mrr"] == pytest.approx(0.75)
    assert means["ndcg"] == pytest.approx((0.487932 + 1) / 2, abs=1e-6)


def test_verdict_tolerances() -> None:
    tol = CutoverSettings(max_ndcg_drop=0.02, max_recall_drop=0.02, max_mrr_drop=0.02)
    live = {"recall": 0.80, "ndcg": 0.70, "mrr": 0.60}
    ok = {"recall": 0.79, "ndcg": 0.685, "mrr": 0.65}
    assert verdict(live, ok, 0.99, 50, tol) == ("GO", [])
    worse = {**ok, "ndcg": 0.67}
    decision, reasons = verdict(live, worse, 0.99, 50, tol)
    assert decision == "NO-GO" and len(reasons) == 1 and "nDCG@10" in reasons[0]
    decision, reasons = verdict(live, ok, 0.90, 5, tol)
    assert decision == "NO-GO"
    assert any("only 5 queries" in r for r in reasons)
    assert any("index recall 0.9000" in r for r in reasons)
    # no live generation (first build): only the set size and the index are judged
    assert verdict(None, worse, 0.99, 50, tol) == ("GO", [])


def test_exact_top_k_and_overlap() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    batches = [
        ([10, 11], np.array([[0.9, 0.1], [0.1, 0.9]], dtype=np.float32)),
        ([12, 13], np.array([[5.0, 0.0], [-1.0, 0.2]], dtype=np.float32)),
    ]
    # cosine: 12 is exactly aligned with the first query, despite its norm
    assert exact_top_k(q, batches, "COSINE", 2) == [[12, 10], [11, 13]]
    # inner product: the norm counts
    assert exact_top_k(q, batches, "IP", 1) == [[12], [11]]
    # L2: nearest point
    assert exact_top_k(q, batches, "L2", 1) == [[10], [11]]
    assert overlap([12, 99], [12, 10]) == 0.5
    assert overlap([], []) == 1.0


def test_exact_scores_are_what_milvus_reports_higher_nearer() -> None:
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    batches = [([10, 11], np.array([[3.0, 0.0], [0.0, 2.0]], dtype=np.float32))]
    [(ids, scores)] = exact_top_k_scored(q, batches, "L2", 2)
    assert ids == [10, 11] and scores == pytest.approx([-4.0, -5.0])  # minus squared distance
    assert hit_score({"id": 10, "distance": 4.0}, "L2") == -4.0
    [(ids, scores)] = exact_top_k_scored(q, batches, "COSINE", 2)
    assert ids == [10, 11] and scores == pytest.approx([1.0, 0.0])
    assert hit_score({"id": 10, "distance": 0.5}, "COSINE") == 0.5


def test_index_overlap_counts_a_tie_with_the_kth_as_found() -> None:
    # three documents at the same distance: the exact sort kept 1 and 2, the index 1 and 3
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    same = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    [(ids, scores)] = exact_top_k_scored(q, [([1, 2, 3, 4], same)], "COSINE", 2)
    assert ids == [1, 2]
    found = [(1, scores[0]), (3, scores[1] + 1e-7)]  # float32 round-off from the server
    assert overlap([1, 3], ids) == 0.5  # by id alone: a false miss
    assert index_overlap(found, ids, scores[-1]) == 1.0
    # a truly farther document is a miss, and nothing counts twice
    assert index_overlap([(1, scores[0]), (4, 0.0)], ids, scores[-1]) == 0.5
    assert index_overlap([(1, scores[0]), (1, scores[0])], ids, scores[-1]) == 0.5
    assert index_overlap([], [], 0.0) == 1.0
