"""Shared fixtures. Integration tests use real Postgres, Redis and a Milvus server subprocess.

BACKFLEET_TEST_MILVUS=server (default: the real C++ engine from the `milvus` package) or
`lite` (milvus-lite server) picks the Milvus the integration suite starts; BACKFLEET_TEST_MILVUS_URI
points it at one already running instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.services import MilvusServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The chaos suite runs last: it stops and restarts the session's Milvus server."""
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[MilvusServer | None]:
    if os.environ.get("BACKFLEET_TEST_MILVUS_URI"):
        yield None
        return
    server = MilvusServer(os.environ.get("BACKFLEET_TEST_MILVUS", "server"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def milvus_uri(milvus_server: MilvusServer | None) -> str:
    if milvus_server is None:
        return os.environ["BACKFLEET_TEST_MILVUS_URI"]
    return milvus_server.uri
