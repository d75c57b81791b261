"""Shared fixtures. Integration tests use real Postgres, Redis and a Milvus server subprocess.

BACKFLEET_TEST_MILVUS=server (default: the real C++ engine from the `milvus` package) or
`lite` (milvus-lite server) picks the Milvus the integration suite starts; BACKFLEET_TEST_MILVUS_URI
points it at one already running instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest

# the run must leave the checkout as it found it: checked when the session ends
from tests.support.clean_tree import pytest_sessionfinish, pytest_sessionstart  # noqa: F401
from tests.support.services import MilvusServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The chaos suite runs last: it stops and restarts the session's Milvus server."""
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)


def _to_terminal(config: pytest.Config) -> Callable[[str], None]:
    """Write past pytest's output capture: a waiting session must say why it waits."""
    capman = config.pluginmanager.get_plugin("capturemanager")

    def notify(message: str) -> None:
        if capman is None:
            sys.stderr.write(message + "\n")
            return
        with capman.global_and_fixture_disabled():
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    return notify


@pytest.fixture(scope="session")
def milvus_server(pytestconfig: pytest.Config) -> Iterator[MilvusServer | None]:
    if os.environ.get("BACKFLEET_TEST_MILVUS_URI"):
        yield None
        return
    server = MilvusServer(
        os.environ.get("BACKFLEET_TEST_MILVUS", "server"), notify=_to_terminal(pytestconfig)
    )
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
