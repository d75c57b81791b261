"""Model identity: who produced a vector, recorded on every generation and every row."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from backfleet.errors import ModelMismatch

#: Fixed probe texts: the fingerprint is a hash of the model's vectors for these.
PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Invoices are payable within thirty days of receipt.",
    "How do I reset my password?",
    "Résumé: naïve café owner, 42 years, Zürich.",
    "SELECT id FROM documents WHERE updated_at > now() - interval '1 day'",
)


@dataclass(frozen=True)
class ModelIdentity:
    """provider + name + version + dimension + metric + fingerprint."""

    provider: str
    name: str
    version: str
    dimension: int
    metric: str
    fingerprint: str

    @property
    def tag(self) -> str:
        """The model tag stored on every row: short, unique per identity."""
        return (
            f"{self.provider}:{self.name}@{self.version}/{self.dimension}#{self.fingerprint[:12]}"
        )

    @property
    def slug(self) -> str:
        """A Milvus-safe name part naming the model once, e.g. ``hash_ngrams_v2``.

        ``name_v<version>``, except: a hub prefix (``org/``) is dropped; a version already
        in the name, or a version that holds the whole name, is not repeated
        (``mpnet-base`` @ ``all-mpnet-base-v2`` → ``all_mpnet_base_v2``). Longer than
        :data:`SLUG_MAX` characters, it is cut and ends with a hash of the whole.
        """
        name = _words(self.name.rsplit("/", 1)[-1])
        version = _words(self.version)
        bare = version[1:] if re.fullmatch(r"v\d.*", version) else version
        numeric = bare.replace("_", "").isdigit()  # "3" in "text_embedding_3" is no version
        if not version or _contains(name, f"v{bare}") or (_contains(name, version) and not numeric):
            slug = name
        elif _contains(version, name):
            slug = version
        else:
            slug = f"{name}_v{bare}" if name else f"v{bare}"
        slug = slug or "model"
        if len(slug) > SLUG_MAX:
            digest = hashlib.sha256(f"{self.name}\0{self.version}".encode()).hexdigest()[:8]
            slug = f"{slug[: SLUG_MAX - 9].rstrip('_')}_{digest}"
        return slug

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelIdentity:
        data: dict[str, Any] = json.loads(text)
        return cls(
            provider=str(data["provider"]),
            name=str(data["name"]),
            version=str(data["version"]),
            dimension=int(data["dimension"]),
            metric=str(data["metric"]),
            fingerprint=str(data["fingerprint"]),
        )

    def require_same(self, other: ModelIdentity, where: str) -> None:
        """Raise :class:`ModelMismatch` unless ``other`` is exactly this model."""
        if self == other:
            return
        diffs = [
            f"{key}: {mine!r} != {theirs!r}"
            for key, mine, theirs in (
                (k, getattr(self, k), getattr(other, k))
                for k in ("provider", "name", "version", "dimension", "metric", "fingerprint")
            )
            if mine != theirs
        ]
        raise ModelMismatch(
            f"{where} is bound to model {self.tag}, the embedder is {other.tag} "
            f"({'; '.join(diffs)})",
            hint="use the model configuration the generation was built with, "
            "or plan a new migration",
        )


#: The longest model slug in a generation name (``<alias>__<slug>__g<N>``).
SLUG_MAX = 48


def _words(text: str) -> str:
    """Lower-case words of ``text`` joined by ``_`` (a Milvus-safe name part)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _contains(outer: str, inner: str) -> bool:
    """Whether the ``_``-words of ``inner`` occur, in order and whole, within ``outer``."""
    return f"_{inner}_" in f"_{outer}_"


def fingerprint_vectors(rows: list[list[float]]) -> str:
    """sha256 of vectors rounded to 4 decimals (stable across float noise)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(",".join(f"{round(float(x), 4):.4f}" for x in row).encode())
        digest.update(b"\n")
    return digest.hexdigest()
