"""Documents the source alone rules out (id over the primary key, not UTF-8) are dead letters
before any provider call; the rest of the batch is embedded."""

from __future__ import annotations

from backfleet.embedding.local import HashingEmbedder
from backfleet.source import Doc, id_too_long
from backfleet.throttle import NullThrottle
from workers.pipeline import embed_batch


def test_id_length_is_counted_in_utf8_bytes() -> None:
    assert id_too_long("a" * 512, 512) is None
    assert id_too_long("é" * 256, 512) is None  # 512 bytes
    assert id_too_long("€" * 171, 512) == (
        "id is 513 bytes in UTF-8 (171 characters); the generation's primary key holds at most 512"
    )
    assert id_too_long(10**18, 512) is None  # integer ids have no length


def test_unusable_documents_are_rejected_and_the_rest_is_embedded() -> None:
    embedder = HashingEmbedder("hash-words", "1", 16)
    docs = [
        Doc("a", "fine text"),
        Doc("b" * 600, "a fine text with a long id"),
        Doc("c", None, None, "text is not valid UTF-8 at byte 4"),
        Doc("d", "   "),
        Doc("e", "more fine text"),
    ]
    res = embed_batch(docs, embedder, NullThrottle(), None)
    assert res.docs == 5 and res.embedded == 2 and res.skipped == 1
    assert [i for part in res.parts for i in part.ids] == ["a", "e"]
    dead = {d.doc_id: (d.kind, d.reason) for d in res.dead}
    assert dead["b" * 600][0] == "rejected"
    assert dead["b" * 600][1].startswith("id is 600 bytes in UTF-8")
    assert dead["c"] == ("rejected", "text is not valid UTF-8 at byte 4")
    assert dead["d"] == ("skipped", "empty text")


def test_a_batch_of_only_unusable_documents_is_not_a_provider_failure() -> None:
    embedder = HashingEmbedder("hash-words", "1", 16)
    docs = [Doc("x" * 513, "t"), Doc("y", None, None, "id is not valid UTF-8 at byte 0")]
    res = embed_batch(docs, embedder, NullThrottle(), None)
    assert res.embedded == 0 and len(res.dead) == 2
