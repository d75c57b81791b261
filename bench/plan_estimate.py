"""How close `plan`'s token estimate comes to the exact count (no services: SQLite sources).

Two corpora: the demo's synthetic one (3,000 documents, local-v2's counter) and real English
prose (the standard library's docstring paragraphs, OpenAI cl100k). For each: the exact sum
over every document, the old estimate (characters / 4) and the sampled one (coordinator/
estimate.py: up to 1,000 documents counted with the model's counter, scaled by characters).

    PYTHONPATH=. .venv/bin/python bench/plan_estimate.py
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backfleet.corpus import seed_source, source_table
from backfleet.db.session import make_engine
from backfleet.embedding.factory import build_embedder
from backfleet.settings import ModelSettings, Settings, SourceSettings
from backfleet.source import Source
from coordinator.estimate import estimate
from tests.support.realtext import stdlib_paragraphs


def run(name: str, url: str, model: ModelSettings) -> None:
    settings = Settings(models={"m": model}, target_model="m", source=SourceSettings(url=url))
    model.resolve_api_key({"OPENAI_API_KEY": "unused: no request is sent"})
    source = Source(make_engine(url), settings.source)
    embedder = build_embedder(model, "m")
    texts = [d.text or "" for b in source.iter_batches(None, None, None, 5000) for d in b]
    exact = sum(embedder.count_tokens(t) for t in texts)
    docs, chars = source.stats()
    started = time.perf_counter()
    est = estimate(
        settings, source, embedder, label="m", docs=docs, chars=chars, ranges=1, with_probe=False
    )
    seconds = time.perf_counter() - started
    old = math.ceil(chars / 4)
    print(
        f"{name}: {docs:,} docs, exact {exact:,} tokens; chars/4 {old:,} "
        f"({100 * (old - exact) / exact:+.1f} %); sampled {est.tokens:,} "
        f"({100 * (est.tokens - exact) / exact:+.1f} %, {est.sample_docs:,} docs, {seconds:.2f} s)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        demo = f"sqlite:///{tmp}/demo.db"
        seed_source(make_engine(demo), 3000)
        run("demo corpus, local-v2", demo, ModelSettings(name="hash-ngrams", dimension=384))
        real = f"sqlite:///{tmp}/real.db"
        engine = make_engine(real)
        table = source_table()
        table.create(engine)
        with engine.begin() as conn:
            rows = [{"id": i + 1, "text": t} for i, t in enumerate(stdlib_paragraphs())]
            conn.execute(insert(table), rows)
        small = ModelSettings(provider="openai", name="text-embedding-3-small", dimension=1536)
        run("stdlib docstrings, text-embedding-3-small (cl100k)", real, small)


if __name__ == "__main__":
    main()
