"""backfleet: zero-downtime embedding-model migrations for Milvus, run by a Celery fleet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Router", "__version__"]

if TYPE_CHECKING:
    from backfleet.router import Router


def __getattr__(name: str) -> Any:
    # imported on first use: `import backfleet.settings` stays light for every entry point
    if name == "Router":
        from backfleet.router import Router

        return Router
    raise AttributeError(f"module 'backfleet' has no attribute {name!r}")
