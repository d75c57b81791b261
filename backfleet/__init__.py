"""backfleet: zero-downtime embedding-model migrations for Milvus, run by a Celery fleet."""

__version__ = "0.1.0"
