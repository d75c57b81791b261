"""Celery workers: the app factory, thin tasks, and the range pipeline."""
