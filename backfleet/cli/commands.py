"""Command modules beyond the core ones in ``app``; importing one registers its commands."""

from backfleet.cli import operate  # noqa: F401
from backfleet.cli import prove  # noqa: F401
