"""Command modules beyond the core ones in ``app``; importing one registers its commands."""

from backfleet.cli import (
    catchup,  # noqa: F401
    operate,  # noqa: F401
    prove,  # noqa: F401
    switch,  # noqa: F401
)
