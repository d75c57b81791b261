"""Audit any Milvus collection for mixed models, dimensions or vector norms.

Works on collections backfleet did not create: the model comes from a model-tag-like VARCHAR
field (``model``, ``model_tag``, ``embedding_model``, …; in the schema or, with a dynamic
schema, as a dynamic key) or is ``unknown``. Rows are grouped into cohorts of
``(model, effective dimension, norm class)``:

* *effective dimension*: the schema dimension, unless a vector is zero over its last quarter
  (at least 8 coordinates), the mark of a smaller model's vectors zero-padded into the field;
  then the position of its last non-zero coordinate rounded up to a multiple of 32;
* *norm class*: ``unit`` (|norm - 1| <= 0.01), ``zero``, or ``other`` (min/max kept).

The scan streams (memory holds the cohorts, not the rows). With ``sample`` the whole
collection is scanned for ids and model tags only (exact model counts), and the vectors of a
uniform reservoir sample of ``sample`` ids are fetched and grouped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import ConfigError, VectorStoreError
from backfleet.vectorstore.errors import call
from backfleet.vectorstore.expr import everything
from backfleet.vectorstore.generation import (
    OWNER,
    PROP_MODEL,
    PROP_OWNER,
    get_rows,
    scan_pages,
)
from backfleet.vectorstore.store import VectorStore

MODEL_FIELDS = (
    "model",
    "model_tag",
    "embedding_model",
    "model_name",
    "model_id",
    "embedder",
    "model_version",
)
UNKNOWN = "unknown"
UNIT_TOLERANCE = 0.01
EXAMPLES = 5

#: pymilvus DataType values (kept numeric: the schema dict carries the enum or its value).
_VARCHAR = 21
_FLOAT_VECTOR = 101


@dataclass
class Cohort:
    model: str
    dimension: int
    norm: str
    count: int = 0
    norm_min: float = math.inf
    norm_max: float = 0.0
    example_ids: list[str] = field(default_factory=list)

    def add(self, ident: Any, norm: float) -> None:
        self.count += 1
        self.norm_min = min(self.norm_min, norm)
        self.norm_max = max(self.norm_max, norm)
        if len(self.example_ids) < EXAMPLES:
            self.example_ids.append(str(ident))


@dataclass
class AuditReport:
    collection: str
    vector_field: str
    schema_dimension: int
    model_field: str | None
    declared_model: str | None
    rows: int
    scanned: int
    vectors_examined: int
    sampled: bool
    models: dict[str, int]
    cohorts: list[Cohort]
    mixed: bool
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for c in data["cohorts"]:
            c["norm_min"] = round(float(c["norm_min"]), 6) if c["count"] else None
            c["norm_max"] = round(float(c["norm_max"]), 6)
        return data


def norm_class(norm: float) -> str:
    if norm < 1e-9:
        return "zero"
    if abs(norm - 1.0) <= UNIT_TOLERANCE:
        return "unit"
    return "other"


def effective_dimension(vec: np.ndarray[Any, Any]) -> int:
    """The schema dimension, or the padded-in dimension of a vector zero over its tail."""
    dim = int(vec.shape[0])
    nonzero = np.flatnonzero(vec)
    last = int(nonzero[-1]) + 1 if nonzero.size else 0
    if dim - last < max(8, dim // 4):
        return dim
    return min(dim, max(32, -(-last // 32) * 32))


def _type_code(value: Any) -> int:
    return int(getattr(value, "value", value))


def _schema(
    desc: dict[str, Any], vector_field: str | None
) -> tuple[str, str, str, int, str | None]:
    """``(primary key, its id type, vector field, dimension, model field)``."""
    fields = list(desc.get("fields") or [])
    pk_field = next((f for f in fields if f.get("is_primary")), None)
    pk = pk_field["name"] if pk_field is not None else None
    vectors = [f for f in fields if _type_code(f.get("type")) == _FLOAT_VECTOR]
    name = desc.get("collection_name", "?")
    if pk is None:
        raise VectorStoreError(f"collection {name!r} has no primary key field")
    if vector_field is not None:
        chosen = next((f for f in vectors if f["name"] == vector_field), None)
        if chosen is None:
            known = ", ".join(f["name"] for f in vectors) or "none"
            raise ConfigError(
                f"collection {name!r} has no float vector field {vector_field!r} (float vector "
                f"fields: {known})",
                hint="pass --field with one of those names",
            )
    elif vectors:
        chosen = vectors[0]
    else:
        raise ConfigError(
            f"collection {name!r} has no float vector field to audit",
            hint="audit a collection with a FLOAT_VECTOR field",
        )
    dim = int((chosen.get("params") or {}).get("dim", 0))
    varchar = {f["name"] for f in fields if _type_code(f.get("type")) == _VARCHAR}
    model_field = next((m for m in MODEL_FIELDS if m in varchar), None)
    if model_field is None and desc.get("enable_dynamic_field"):
        model_field = "$dynamic"
    assert pk_field is not None
    id_type = "str" if _type_code(pk_field.get("type")) == _VARCHAR else "int"
    return str(pk), id_type, str(chosen["name"]), dim, model_field


def _declared(desc: dict[str, Any]) -> str | None:
    props = VectorStore.marks(desc)
    if props.get(PROP_OWNER) == OWNER and PROP_MODEL in props:
        return ModelIdentity.from_json(props[PROP_MODEL]).tag
    return None


class _Scanner:
    def __init__(
        self, store: VectorStore, name: str, pk: str, id_type: str, model_field: str | None
    ) -> None:
        self.client = store.client
        self.name = name
        self.pk = pk
        self.id_type = id_type
        self.model_field = model_field

    def fields(self, *extra: str) -> list[str]:
        out = [self.pk, *extra]
        if self.model_field == "$dynamic":
            out.extend(MODEL_FIELDS)
        elif self.model_field is not None:
            out.append(self.model_field)
        return out

    def model_of(self, row: dict[str, Any]) -> str:
        if self.model_field == "$dynamic":
            for key in MODEL_FIELDS:
                value = row.get(key)
                if isinstance(value, str) and value:
                    return value
            return UNKNOWN
        if self.model_field is None:
            return UNKNOWN
        value = row.get(self.model_field)
        return str(value) if value not in (None, "") else UNKNOWN

    def rows(self, fields: list[str], batch_size: int) -> Iterator[list[dict[str, Any]]]:
        """Every row, in checked keyset pages with backfleet's own escaped filters."""
        return scan_pages(
            call, self.client, self.name, self.id_type, None, None, fields, batch_size, pk=self.pk
        )

    def get(self, ids: list[Any], fields: list[str]) -> list[dict[str, Any]]:
        return get_rows(call, self.client, self.name, self.id_type, ids, fields, pk=self.pk)


def audit_collection(
    store: VectorStore,
    name: str,
    *,
    sample: int | None = None,
    vector_field: str | None = None,
    batch_size: int = 1000,
    seed: int | None = None,
) -> AuditReport:
    """Group the rows of collection ``name`` into cohorts; ``mixed`` when there is more than one."""
    if sample is not None and sample <= 0:
        raise ConfigError(f"sample size {sample} is not positive", hint="pass --sample N > 0")
    desc = store.describe(name)
    desc.setdefault("collection_name", name)
    pk, id_type, vfield, dim, model_field = _schema(desc, vector_field)
    declared = _declared(desc)
    scanner = _Scanner(store, name, pk, id_type, model_field)
    rows_total = int(
        call(
            f"count {name}",
            lambda: store.client.query(
                name,
                filter=everything(id_type, pk),
                output_fields=["count(*)"],
                consistency_level="Strong",
            ),
        )[0]["count(*)"]
    )
    cohorts: dict[tuple[str, int, str], Cohort] = {}
    models: dict[str, int] = {}
    scanned = 0
    examined = 0

    def group(ident: Any, model: str, vector: Any) -> None:
        nonlocal examined
        vec = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(vec))
        key = (model, effective_dimension(vec), norm_class(norm))
        cohort = cohorts.get(key)
        if cohort is None:
            cohort = cohorts[key] = Cohort(*key)
        cohort.add(ident, norm)
        examined += 1

    if sample is None:
        for batch in scanner.rows(scanner.fields(vfield), batch_size):
            for row in batch:
                model = scanner.model_of(row)
                models[model] = models.get(model, 0) + 1
                group(row[pk], model, row[vfield])
            scanned += len(batch)
    else:
        rng = random.Random(seed)
        reservoir: list[tuple[Any, str]] = []
        for batch in scanner.rows(scanner.fields(), batch_size):
            for row in batch:
                scanned += 1
                model = scanner.model_of(row)
                models[model] = models.get(model, 0) + 1
                if len(reservoir) < sample:
                    reservoir.append((row[pk], model))
                else:
                    j = rng.randrange(scanned)
                    if j < sample:
                        reservoir[j] = (row[pk], model)
        for i in range(0, len(reservoir), batch_size):
            part = reservoir[i : i + batch_size]
            got = {r[pk]: r[vfield] for r in scanner.get([p for p, _ in part], [pk, vfield])}
            for ident, model in part:
                if ident in got:
                    group(ident, model, got[ident])

    ordered = sorted(cohorts.values(), key=lambda c: (-c.count, c.model, c.dimension, c.norm))
    reasons: list[str] = []
    if len(models) > 1:
        reasons.append(
            f"{len(models)} models: " + ", ".join(f"{m} ({n})" for m, n in models.items())
        )
    dims = sorted({c.dimension for c in ordered})
    if len(dims) > 1:
        reasons.append(f"{len(dims)} effective dimensions: {', '.join(map(str, dims))}")
    norms = sorted({c.norm for c in ordered})
    if len(norms) > 1:
        reasons.append(f"{len(norms)} norm classes: {', '.join(norms)}")
    if declared is not None:
        foreign = sum(n for m, n in models.items() if m != declared)
        if foreign:
            reasons.append(f"{foreign} rows not tagged with the declared model {declared}")
    return AuditReport(
        collection=name,
        vector_field=vfield,
        schema_dimension=dim,
        model_field=model_field,
        declared_model=declared,
        rows=rows_total,
        scanned=scanned,
        vectors_examined=examined,
        sampled=sample is not None,
        models=models,
        cohorts=ordered,
        mixed=bool(reasons),
        reasons=reasons,
    )
