"""A real-text corpus with no download: the paragraphs of the standard library's docstrings."""

from __future__ import annotations

import importlib
import inspect

STDLIB = [
    "argparse",
    "asyncio",
    "collections",
    "concurrent.futures",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "email",
    "email.message",
    "enum",
    "functools",
    "http.client",
    "http.server",
    "inspect",
    "json",
    "logging",
    "multiprocessing",
    "os",
    "pathlib",
    "pickle",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "zipfile",
]


def stdlib_paragraphs() -> list[str]:
    """Real English technical prose: the paragraphs of the standard library's docstrings."""
    seen: set[str] = set()
    out: list[str] = []
    for name in STDLIB:
        module = importlib.import_module(name)
        objects = [module, *(v for _, v in inspect.getmembers(module) if callable(v))]
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            for para in doc.split("\n\n"):
                para = para.strip()
                if len(para) >= 40 and para not in seen:
                    seen.add(para)
                    out.append(para)
    return out
