"""The ``backfleet`` command: the composition root (it alone wires coordinator and workers)."""
