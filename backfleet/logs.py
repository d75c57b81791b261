"""Event-style logging with structlog: ``log.info("range_done", range=7, docs=5000)``."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure_logging(fmt: str = "console", level: str = "INFO", *, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger once per entry point."""
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=stream or sys.stderr)
    for noisy in ("pymilvus", "httpx", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(
            logging.CRITICAL if noisy == "pymilvus" else logging.WARNING
        )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
