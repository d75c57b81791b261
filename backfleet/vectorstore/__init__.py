"""Milvus: generations, upsert, delete, id/count scans by range, aliases, search."""

from backfleet.vectorstore.generation import Generation, generation_name, parse_generation_name
from backfleet.vectorstore.store import VectorStore

__all__ = ["Generation", "VectorStore", "generation_name", "parse_generation_name"]
