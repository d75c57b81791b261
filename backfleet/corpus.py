"""A deterministic synthetic corpus for the demo, tests and benchmarks (no downloads)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
)

TOPICS: dict[str, list[str]] = {
    "billing": ["invoice", "payment", "refund", "charge", "receipt", "subscription", "card"],
    "security": ["password", "login", "token", "breach", "encryption", "firewall", "access"],
    "shipping": ["delivery", "parcel", "courier", "tracking", "warehouse", "customs", "freight"],
    "hardware": ["battery", "screen", "keyboard", "charger", "sensor", "firmware", "cable"],
    "travel": ["flight", "hotel", "booking", "luggage", "visa", "airport", "itinerary"],
    "cooking": ["recipe", "oven", "flour", "spice", "simmer", "garlic", "pastry"],
    "gardening": ["soil", "compost", "seedling", "pruning", "irrigation", "mulch", "harvest"],
    "finance": ["portfolio", "dividend", "interest", "mortgage", "budget", "savings", "pension"],
    "health": ["symptom", "vaccine", "clinic", "dosage", "allergy", "therapy", "nutrition"],
    "legal": ["contract", "clause", "liability", "warranty", "dispute", "compliance", "license"],
    "databases": ["index", "query", "replica", "vacuum", "transaction", "schema", "partition"],
    "networking": ["router", "latency", "packet", "bandwidth", "dns", "proxy", "subnet"],
}
FILLER = ["the", "a", "our", "this", "every", "new", "old", "quick", "detailed", "common"]
VERBS = ["explains", "covers", "describes", "fixes", "reviews", "compares", "lists", "updates"]


def make_text(rng: random.Random, topic: str, words: int = 40) -> str:
    vocab = TOPICS[topic]
    parts = []
    for _ in range(max(3, words // 8)):
        parts.append(
            f"{rng.choice(FILLER)} {rng.choice(vocab)} {rng.choice(VERBS)} "
            f"{rng.choice(FILLER)} {rng.choice(vocab)} and {rng.choice(vocab)}."
        )
    return " ".join(parts)


def documents(n: int, seed: int = 7, start_id: int = 1) -> Iterator[tuple[int, str, str]]:
    """``(id, topic, text)`` for ``n`` documents; the same ``seed`` gives the same corpus."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    for i in range(n):
        topic = names[rng.randrange(len(names))]
        yield start_id + i, topic, make_text(rng, topic, words=rng.randint(24, 72))


def source_table(name: str = "documents", id_type: str = "int") -> Table:
    id_col = (
        Column("id", Integer, primary_key=True, autoincrement=False)
        if id_type == "int"
        else Column("id", String(64), primary_key=True)
    )
    return Table(
        name,
        MetaData(),
        id_col,
        Column("topic", String(32)),
        Column("text", Text),
        Column("updated_at", DateTime(timezone=True)),
    )


def seed_source(
    engine: Engine,
    n: int,
    *,
    table: str = "documents",
    id_type: str = "int",
    seed: int = 7,
    replace: bool = True,
    chunk: int = 5000,
) -> Table:
    """Create ``table`` and fill it with ``n`` synthetic documents."""
    tbl = source_table(table, id_type)
    if replace:
        tbl.drop(engine, checkfirst=True)
    tbl.create(engine, checkfirst=True)
    now = datetime.now(UTC)
    batch: list[dict[str, object]] = []
    with engine.begin() as conn:
        for ident, topic, text in documents(n, seed):
            key: object = ident if id_type == "int" else f"doc-{ident:09d}"
            batch.append({"id": key, "topic": topic, "text": text, "updated_at": now})
            if len(batch) >= chunk:
                conn.execute(insert(tbl), batch)
                batch = []
        if batch:
            conn.execute(insert(tbl), batch)
    return tbl
