"""The source a migration records and a worker compares (issue 13 #2)."""

from __future__ import annotations

import pytest

from backfleet.errors import SourceMismatch
from backfleet.settings import SourceSettings
from backfleet.source_identity import require_same_source, source_fingerprint, source_identity

URL = "postgresql+psycopg://app:s3cret@db.internal:5432/corpus"


def test_identity_has_no_credentials_and_names_table_columns_and_id_type() -> None:
    ident = source_identity(SourceSettings(url=URL, table="docs"), "str")
    assert "s3cret" not in str(ident) and "app" not in str(ident.values())
    assert ident == {
        "dialect": "postgresql",
        "host": "db.internal",
        "port": 5432,
        "database": "corpus",
        "table": "docs",
        "id_column": "id",
        "text_column": "text",
        "updated_at_column": None,
        "id_type": "str",
    }
    assert len(source_fingerprint(ident)) == 16


def test_host_port_and_password_do_not_count_the_database_table_and_columns_do() -> None:
    recorded = source_identity(SourceSettings(url=URL, table="docs"), "int")
    same_db_other_route = source_identity(
        SourceSettings(url="postgresql+psycopg://other:pw@postgres:6432/corpus", table="docs"),
        "int",
    )
    require_same_source(recorded, same_db_other_route, "migration 1")  # compose vs host
    for other in (
        SourceSettings(url=URL, table="docs_a"),
        SourceSettings(url=URL.replace("/corpus", "/other"), table="docs"),
        SourceSettings(url=URL, table="docs", text_column="body"),
        SourceSettings(url=URL, table="docs", id_column="doc_id"),
    ):
        with pytest.raises(SourceMismatch) as err:
            require_same_source(recorded, source_identity(other, "int"), "migration 1")
        assert str(err.value).startswith("migration 1 was planned on table 'docs'")
        assert "s3cret" not in str(err.value) and "source.table" in str(err.value)
    with pytest.raises(SourceMismatch, match="id_type 'int' != 'str'"):
        require_same_source(
            recorded, source_identity(SourceSettings(url=URL, table="docs"), "str"), "m"
        )


def test_a_migration_planned_before_0004_has_no_source_and_is_accepted() -> None:
    require_same_source(None, source_identity(SourceSettings(table="x"), "int"), "migration 1")
